package rules

import (
	"bytes"
	"mime"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"time"
	"unsafe"

	"github.com/tidwall/gjson"
)

// Exchange is one observed HTTP request and its response. Fill the fields you
// have; bodies may be nil when no rule needs them (see Set.Plan).
type Exchange struct {
	Method string
	// Host is the request host, with or without a port.
	Host string
	// Path is the URL path without the query string.
	Path string
	// RawQuery is the query string without "?".
	RawQuery      string
	RequestHeader http.Header
	RequestBody   []byte
	Status        int
	// ResponseHeader is the response's header. A sub-exchange of a batch
	// (Match.Batch) leaves it nil until ResponseHeaders is called: rules
	// read its synthesized headers without building a map.
	ResponseHeader http.Header
	// ResponseBody is the decoded (not compressed) response body.
	ResponseBody []byte
	// Lookups holds lookup results by their `as` name; see Match.Lookups.
	Lookups map[string]LookupResult

	bodies [2]parsedBody
	// memo holds what the exchange works out only when a rule needs it;
	// nil until then (see exchangeMemo)
	memo *exchangeMemo

	// elem is the element an each or a batch is rendering for; nil otherwise.
	elem *elemCtx
	// parent is the batch envelope of a sub-exchange (see Match.Batch); nil
	// for an exchange of its own. Batch rules never match a sub-exchange.
	parent *Exchange
	// subIndex is a sub-exchange's position among its envelope's
	// sub-requests (at most MaxBatchOps: an int32 keeps Exchange small).
	subIndex int32
	// eachBuilt counts the events emits with each built for this exchange
	// (the envelope's count serves its sub-exchanges): at most MaxEachItems.
	eachBuilt int32
	// synthResp says ResponseHeader is a sub-exchange's synthesized header,
	// not built yet: Content-Type (application/json) when ResponseBody is
	// set, and Location (subLoc) when the sub-response names one.
	synthResp bool
	// seen is when the exchange was observed, in Unix nanoseconds: read at
	// its first Events call without EmitOptions.Now, so that all its events
	// (and its sub-exchanges', kept on the envelope) share it; 0 until then.
	seen int64

	subLoc []string // a sub-exchange's Location, when it has one (see synthResp)
}

// exchangeMemo is what an exchange works out the first time a rule needs
// it, kept out of Exchange so that Exchange stays small: a batch allocates
// one per sub-request, and few rules read a query, a cookie or a token.
type exchangeMemo struct {
	query   url.Values        // the parsed RawQuery
	cookies map[string]string // the request's cookies by name
	jwt     jwtMemo
	// split is the request side of a batch envelope as BatchRequests read
	// it, for Batch to reuse (see reqSplit); nil until then.
	split *reqSplit
	// events holds the events of a batch envelope's sub-exchanges (on the
	// envelope's memo; see eventArena).
	events eventArena
}

// memoOf returns the exchange's memo, made on the first call.
func (ex *Exchange) memoOf() *exchangeMemo {
	if ex.memo == nil {
		ex.memo = &exchangeMemo{}
	}
	return ex.memo
}

// batchSplit is the request side BatchRequests kept on ex; nil for none.
func (ex *Exchange) batchSplit() *reqSplit {
	if ex.memo == nil {
		return nil
	}
	return ex.memo.split
}

// ResponseHeaders returns ResponseHeader; for a sub-exchange of a batch,
// whose ResponseHeader is nil until then, it first builds it from the
// sub-response: Content-Type application/json when it has a body, and
// Location when the sub-response names one.
func (ex *Exchange) ResponseHeaders() http.Header {
	if ex.synthResp {
		ex.synthResp = false
		h := make(http.Header, 2)
		if ex.ResponseBody != nil {
			h["Content-Type"] = jsonContentType
		}
		if ex.subLoc != nil {
			h["Location"] = ex.subLoc
		}
		ex.ResponseHeader = h
	}
	return ex.ResponseHeader
}

// headerValues returns the values of the request or response header name
// (canonical), without building a sub-exchange's synthesized header.
func (ex *Exchange) headerValues(response bool, name string) []string {
	if !response {
		return ex.RequestHeader[name]
	}
	if !ex.synthResp {
		return ex.ResponseHeader[name]
	}
	switch name {
	case "Content-Type":
		if ex.ResponseBody != nil {
			return jsonContentType
		}
	case "Location":
		return ex.subLoc
	}
	return nil
}

// responseValues is headerValues(true, name).
func (ex *Exchange) responseValues(name string) []string { return ex.headerValues(true, name) }

// firstValue is the value of a header's first line; missing without one.
func firstValue(vals []string) value {
	if len(vals) > 0 {
		return textValue(vals[0], true)
	}
	return value{}
}

// root is the exchange that counts against the per-exchange limits: the
// batch envelope of a sub-exchange, or the exchange itself.
func (ex *Exchange) root() *Exchange {
	for ex.parent != nil {
		ex = ex.parent
	}
	return ex
}

// observed returns when the exchange was observed (see seen), reading the
// clock at the first call. Events truncates it to the millisecond in UTC,
// so the monotonic reading time.Now carries is not needed.
func (ex *Exchange) observed() time.Time {
	if ex.seen == 0 {
		ex.seen = time.Now().UnixNano()
	}
	return time.Unix(0, ex.seen)
}

// IsSub reports whether ex is a sub-exchange of a batch envelope (Match.Batch).
func (ex *Exchange) IsSub() bool { return ex.parent != nil }

// SubIndex is a sub-exchange's position among its envelope's sub-requests
// (from 0), the same in Match.BatchRequests and Match.Batch; 0 for an
// exchange of its own.
func (ex *Exchange) SubIndex() int { return int(ex.subIndex) }

type parsedBody struct {
	done bool
	ok   bool
	json []byte
}

// text returns the body JSON as a string, without a copy: a view of its
// bytes, valid as long as they are (see result).
func (pb *parsedBody) text() string {
	return unsafe.String(unsafe.SliceData(pb.json), len(pb.json))
}

// get returns the value at the gjson path of the body JSON, or the whole
// body for path "". The body must be ok.
func (pb *parsedBody) get(path string) value {
	if path == "" {
		return value{found: true, isJSON: true, raw: pb.text()}
	}
	return jsonResult(pb.result(path))
}

// result returns the gjson result at path in the body JSON, without a
// copy: found in a view of the body's bytes. The bytes are never changed
// while the exchange is observed (the handler reuses a body's buffer only
// once it is done with the exchange; a lookup's are its own copy, see
// SetLookup), so the result is valid as long as the exchange is; what
// outlives it copies what it keeps: an event's data is rendered into its own
// buffer, its subject and tenant are copied (ownText), a lookup's path and
// headers and a batch's sub-exchange fields are built anew.
func (pb *parsedBody) result(path string) gjson.Result {
	return gjson.Get(pb.text(), path)
}

// LookupResult is the upstream's answer to a rule's lookup.
type LookupResult struct {
	Status int
	Header http.Header
	Body   []byte
	// Err describes a failed lookup (timeout, connection refused); empty on any HTTP answer.
	Err string
	// Missing lists placeholders of the lookup's own request headers
	// (lookup.header) that did not render, so the header was left out
	// (LookupRequest.HeaderMissing): the events that read the lookup list
	// them in source.missing.
	Missing []string

	parsed parsedBody
}

// SetLookup records the result of the lookup named as.
func (ex *Exchange) SetLookup(as string, r LookupResult) {
	if ex.Lookups == nil {
		ex.Lookups = map[string]LookupResult{}
	}
	// read once here, not at every placeholder that reads it, into a copy
	// of its own: the values read from it view it, and the caller keeps r.Body
	if pb := r.body(); len(pb.json) > 0 {
		pb.json = bytes.Clone(pb.json)
	}
	ex.Lookups[as] = r
}

// Param is a path template parameter and its value.
type Param struct {
	Name, Value string
}

func (ex *Exchange) query() url.Values {
	m := ex.memoOf()
	if m.query == nil {
		q, _ := url.ParseQuery(ex.RawQuery)
		if q == nil {
			q = url.Values{}
		}
		m.query = q
	}
	return m.query
}

func (ex *Exchange) requestCookie(name string) (string, bool) {
	m := ex.memoOf()
	if m.cookies == nil {
		m.cookies = map[string]string{}
		for _, line := range ex.RequestHeader["Cookie"] {
			cs, err := http.ParseCookie(line)
			if err != nil {
				// fall back to lenient splitting so one bad cookie does not hide the rest
				for _, part := range strings.Split(line, ";") {
					k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
					if ok && k != "" {
						if _, dup := m.cookies[k]; !dup {
							m.cookies[k] = strings.Trim(v, `"`)
						}
					}
				}
				continue
			}
			for _, c := range cs {
				if _, dup := m.cookies[c.Name]; !dup {
					m.cookies[c.Name] = c.Value
				}
			}
		}
	}
	v, ok := m.cookies[name]
	return v, ok
}

func (ex *Exchange) responseCookie(name string) (string, bool) {
	for _, line := range ex.responseValues("Set-Cookie") {
		if c, err := http.ParseSetCookie(line); err == nil && c.Name == name {
			return c.Value, true
		}
	}
	return "", false
}

// jsonBody returns the request or response body as JSON (see bodyAsJSON).
func (ex *Exchange) jsonBody(response bool) ([]byte, bool) {
	pb := ex.body(response)
	return pb.json, pb.ok
}

// body returns the request or response body read as JSON (see bodyAsJSON),
// parsed on the first call.
func (ex *Exchange) body(response bool) *parsedBody { return ex.bodyIndexing(response, nil) }

// bodyIndexing is body, except that when it reads the body for the first
// time and the body is JSON, x checks it and splits the list it asks for in
// the same pass (see jsonIndexer); x.find is listUndecided when it did not.
func (ex *Exchange) bodyIndexing(response bool, x *jsonIndexer) *parsedBody {
	i, body := 0, ex.RequestBody
	if response {
		i, body = 1, ex.ResponseBody
	}
	pb := &ex.bodies[i]
	if !pb.done {
		pb.done = true
		ct := ""
		if vals := ex.headerValues(response, "Content-Type"); len(vals) > 0 {
			ct = vals[0]
		}
		pb.json, pb.ok = bodyAsJSONIndexing(body, ct, x)
	}
	return pb
}

// body returns the lookup's body read as JSON, parsed on the first call.
// SetLookup parses it: a LookupResult read back from Exchange.Lookups is a
// copy, whose own parse would be lost.
func (lr *LookupResult) body() *parsedBody {
	if !lr.parsed.done {
		lr.parsed.done = true
		lr.parsed.json, lr.parsed.ok = bodyAsJSON(lr.Body, lr.Header.Get("Content-Type"))
	}
	return &lr.parsed
}

// bodyAsJSON reads a body as JSON: as is when it is valid JSON, as an object
// of its fields when it is form-encoded (application/x-www-form-urlencoded)
// or multipart/form-data (text fields only, see multipartJSON).
func bodyAsJSON(body []byte, contentType string) ([]byte, bool) {
	return bodyAsJSONIndexing(body, contentType, nil)
}

// bodyAsJSONIndexing is bodyAsJSON checking a JSON body with x (nil: only
// check it), which splits the list it asks for in the same pass.
func bodyAsJSONIndexing(body []byte, contentType string, x *jsonIndexer) ([]byte, bool) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, false
	}
	mt, params := formMediaType(contentType)
	if mt == "multipart/form-data" {
		return multipartJSON(body, params["boundary"])
	}
	if mt == "application/x-www-form-urlencoded" {
		vals, err := url.ParseQuery(string(trimmed))
		if err != nil {
			return nil, false
		}
		return formJSON(vals), true
	}
	if x == nil {
		x = &jsonIndexer{}
	}
	if x.run(trimmed) { // not gjson.ValidBytes: it recurses once per nesting level
		return trimmed, true
	}
	return nil, false
}

// formMediaType returns what mime.ParseMediaType returns for contentType
// when that is one of the form types bodyAsJSON reads, and "" otherwise,
// without the parameter map ParseMediaType allocates for any other type.
// ParseMediaType's media type is the part before ";" lower-cased and
// trimmed, or "" when that is not valid: when this part is not a form type,
// neither is its answer.
func formMediaType(contentType string) (string, map[string]string) {
	base, _, _ := strings.Cut(contentType, ";")
	if mt := strings.TrimSpace(strings.ToLower(base)); mt != "multipart/form-data" && mt != "application/x-www-form-urlencoded" {
		return "", nil
	}
	mt, params, _ := mime.ParseMediaType(contentType)
	return mt, params
}

// formJSON renders form fields as a JSON object; repeated fields become lists.
func formJSON(vals url.Values) []byte {
	out := []byte{'{'}
	for i, k := range sortedKeys(vals) {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendQuote(out, k)
		out = append(out, ':')
		vs := vals[k]
		if len(vs) == 1 {
			out = appendQuote(out, vs[0])
			continue
		}
		out = append(out, '[')
		for j, v := range vs {
			if j > 0 {
				out = append(out, ',')
			}
			out = appendQuote(out, v)
		}
		out = append(out, ']')
	}
	return append(out, '}')
}

func canonicalHeader(name string) string { return textproto.CanonicalMIMEHeaderKey(name) }

// hostOnly lower-cases a host and strips its port.
func hostOnly(h string) string {
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		h = h[:i]
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.ToLower(strings.TrimSuffix(h, "."))
}
