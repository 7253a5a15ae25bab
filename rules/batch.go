package rules

import (
	"fmt"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"
	"gopkg.in/yaml.v3"
)

// batchSpec is a rule's batch: where a batch envelope's sub-requests and
// sub-responses are, so that each pair is matched as an exchange of its own.
type batchSpec struct {
	// base is prefixed to every sub-request url that is a path ("/Users"
	// under "/scim/v2"); nil for none. It may use the envelope's placeholders.
	base *tmpl
	// atomic: any failed sub-response means none was applied.
	atomic bool

	reqItems *placeholder // the list of sub-requests
	reqID    *tmpl        // with respID: pair by id instead of by position
	method   *tmpl
	url      *tmpl
	reqBody  *tmpl // a whole placeholder; nil for none

	respItems *placeholder // the list of sub-responses
	respID    *tmpl
	status    *tmpl
	respBody  *tmpl // a whole placeholder; nil for none
	location  *tmpl // the sub-response's Location header; nil for none
}

// parseBatch reads a rule's batch mapping.
func (d *dec) parseBatch(n *yaml.Node, sc *scope) *batchSpec {
	b := &batchSpec{}
	before := len(d.errs)
	esc := *sc
	esc.elem = &elemScope{what: "batch", captures: map[string]bool{}}
	wholeBody := func(v *yaml.Node, p string) *tmpl {
		t := d.tmplField(v, p, &esc)
		if t != nil && t.whole == nil {
			d.errf(v, p, "want one placeholder naming the body's JSON, such as \"{item.body}\", got %q", t.raw)
			return nil
		}
		return t
	}
	d.mapping(n, "batch",
		field{name: "base", fn: func(v *yaml.Node, p string) {
			t := d.tmplField(v, p, sc)
			if t == nil {
				return
			}
			if !strings.HasPrefix(t.raw, "/") {
				d.errf(v, p, "want a path prefix starting with \"/\", such as /scim/v2, got %q", t.raw)
				return
			}
			if strings.ContainsAny(t.raw, "?#") {
				d.errf(v, p, "want a path prefix without query or fragment, got %q", t.raw)
				return
			}
			b.base = t
		}},
		field{name: "atomic", fn: func(v *yaml.Node, p string) {
			v = resolve(v)
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" || v.Decode(&b.atomic) != nil {
				d.errf(v, p, "want true or false, got %s", kindName(v))
			}
		}},
		field{name: "request", required: true, fn: func(v *yaml.Node, p string) {
			d.mapping(v, p,
				field{name: "items", required: true, fn: func(v *yaml.Node, p string) { b.reqItems = d.listPlaceholder(v, p, sc) }},
				field{name: "id", fn: func(v *yaml.Node, p string) { b.reqID = d.tmplField(v, p, &esc) }},
				field{name: "method", required: true, fn: func(v *yaml.Node, p string) {
					t := d.tmplField(v, p, &esc)
					if t != nil && len(t.phs) == 0 && !methodRE.MatchString(strings.ToUpper(t.raw)) {
						d.errf(v, p, "want an HTTP method such as POST, or a placeholder such as \"{item.method}\", got %q", t.raw)
						return
					}
					b.method = t
				}},
				field{name: "url", required: true, fn: func(v *yaml.Node, p string) { b.url = d.tmplField(v, p, &esc) }},
				field{name: "body", fn: func(v *yaml.Node, p string) { b.reqBody = wholeBody(v, p) }},
			)
		}},
		field{name: "response", required: true, fn: func(v *yaml.Node, p string) {
			d.mapping(v, p,
				field{name: "items", required: true, fn: func(v *yaml.Node, p string) { b.respItems = d.listPlaceholder(v, p, sc) }},
				field{name: "id", fn: func(v *yaml.Node, p string) { b.respID = d.tmplField(v, p, &esc) }},
				field{name: "status", required: true, fn: func(v *yaml.Node, p string) { b.status = d.tmplField(v, p, &esc) }},
				field{name: "body", fn: func(v *yaml.Node, p string) { b.respBody = wholeBody(v, p) }},
				field{name: "location", fn: func(v *yaml.Node, p string) { b.location = d.tmplField(v, p, &esc) }},
			)
		}},
	)
	if (b.reqID == nil) != (b.respID == nil) && len(d.errs) == before {
		d.errf(n, "batch", "request.id and response.id pair sub-requests with sub-responses by id: give both, or neither to pair them by position")
	}
	if len(d.errs) > before {
		return nil
	}
	return b
}

func (b *batchSpec) needs(n *Need) {
	// the sub-requests and sub-responses are in the bodies
	n.RequestBody, n.ResponseBody = true, true
}

func (b *batchSpec) lookupNames(into map[string]bool) {
	for _, t := range []*tmpl{b.base, b.reqID, b.method, b.url, b.reqBody, b.respID, b.status, b.respBody, b.location} {
		t.lookupNames(into)
	}
	for _, ph := range []*placeholder{b.reqItems, b.respItems} {
		if ph.kind == phLookupBody {
			into[ph.name] = true
		}
	}
}

// Batch is a batch envelope split into its sub-exchanges (Match.Batch).
type Batch struct {
	// Subs are the sub-exchanges whose sub-response succeeded (2xx), in the
	// order of the sub-requests. Match each with Set.Match, as an exchange
	// of its own.
	Subs []*Exchange
	// Requests is how many sub-requests the envelope holds.
	Requests int
	// Failed counts the sub-requests (of the first MaxBatchOps) without a
	// successful sub-response: a status that is not 2xx or not a status at
	// all ("2O1"), or no sub-response to pair with.
	Failed int
	// RolledBack says the rule is atomic and a sub-request failed: none was
	// applied, so Subs is empty.
	RolledBack bool
}

// IsBatch reports whether the matched rule is a batch rule: it emits
// nothing itself; its sub-exchanges (Batch) are matched instead.
func (m *Match) IsBatch() bool { return m.Rule.batch != nil }

// Batch splits a batch envelope that a batch rule matched into its
// sub-exchanges, pairing sub-requests with sub-responses by position (or by
// id when the rule says so). A sub-exchange inherits the envelope's host and
// request headers (credentials included); its response has a Content-Type
// (application/json) when it has a body and a Location header when the
// sub-response names one. At most MaxBatchOps sub-requests are read; the
// error, when there are more, is an *EmitError counting the rest.
func (m *Match) Batch(ex *Exchange) (Batch, error) {
	b := m.Rule.batch
	if b == nil {
		return Batch{}, nil
	}
	var out Batch
	reqs, total, reqSrc := batchItems(b.reqItems, ex, m.Params, MaxBatchOps)
	out.Requests = total
	var err error
	if total > MaxBatchOps {
		err = &EmitError{Rule: m.Rule.Name, Reason: RefusedTooManyOps, Count: total - MaxBatchOps,
			Msg: fmt.Sprintf("the batch holds %d sub-requests; the %d past the first %d (rules.MaxBatchOps) are not matched", total, total-MaxBatchOps, MaxBatchOps)}
	}
	if len(reqs) == 0 {
		return out, err
	}
	resps, _, respSrc := batchItems(b.respItems, ex, m.Params, MaxBatchOps)
	base := ""
	if b.base != nil {
		base = strings.TrimRight(b.base.renderURL(ex, m.Params, nil), "/")
	}
	var el elemCtx
	prev := ex.elem
	defer func() { ex.elem = prev }()
	ex.elem = &el
	at := func(e *listElem, i int) {
		el.set(e.raw, i, i, -1)
		el.setMembers(e.members)
	}
	var byID map[string]int
	if b.respID != nil {
		byID = make(map[string]int, len(resps))
		for i := range resps {
			at(&resps[i], i)
			if id := rawText(b.respID, ex, m.Params); id != "" {
				if _, dup := byID[id]; !dup {
					byID[id] = i
				}
			}
		}
	}
	reqHeader := subRequestHeader(ex.RequestHeader)
	root := ex.root()
	// one allocation for all sub-exchanges, and one response header for
	// all of them without a Location
	subs := make([]Exchange, 0, len(reqs))
	out.Subs = make([]*Exchange, 0, len(reqs))
	var jsonHeader http.Header
	locs := make([]string, 0, len(reqs)) // the Location values, one allocation
	for i := range reqs {
		at(&reqs[i], i)
		ri := i
		if byID != nil {
			var ok bool
			if ri, ok = byID[rawText(b.reqID, ex, m.Params)]; !ok {
				ri = -1
			}
		}
		if ri < 0 || ri >= len(resps) {
			out.Failed++ // never answered: not applied
			continue
		}
		method := strings.ToUpper(strings.TrimSpace(rawText(b.method, ex, m.Params)))
		var rawURL string
		if b.url.whole != nil {
			rawURL = rawText(b.url, ex, m.Params)
		} else {
			rawURL = b.url.renderURL(ex, m.Params, nil)
		}
		reqBody := elemJSON(b.reqBody, ex, m.Params, reqSrc, reqs[i].off)
		at(&resps[ri], ri)
		status := subStatus(b.status, ex, m.Params)
		if status < 200 || status > 299 {
			out.Failed++
			continue
		}
		path, query, ok := joinSubURL(base, rawURL)
		if !ok || method == "" {
			out.Failed++ // a sub-request we cannot place: nothing can match it
			continue
		}
		respBody := elemJSON(b.respBody, ex, m.Params, respSrc, resps[ri].off)
		loc := ""
		if b.location != nil {
			loc = rawText(b.location, ex, m.Params)
		}
		var respHeader http.Header
		switch {
		case loc != "":
			locs = append(locs, loc)
			respHeader = http.Header{"Location": locs[len(locs)-1 : len(locs) : len(locs)]}
			if respBody != nil {
				respHeader["Content-Type"] = jsonContentType
			}
		case respBody != nil:
			if jsonHeader == nil {
				jsonHeader = http.Header{"Content-Type": jsonContentType}
			}
			respHeader = jsonHeader // shared: sub-exchanges only read it
		default:
			respHeader = http.Header{}
		}
		subs = append(subs, Exchange{
			Method: method, Host: ex.Host, Path: path, RawQuery: query,
			RequestHeader: reqHeader, RequestBody: reqBody,
			Status: status, ResponseHeader: respHeader, ResponseBody: respBody,
			parent: root, subIndex: i,
		})
		sub := &subs[len(subs)-1]
		// the bodies are JSON values cut from a valid body: no need to check them again
		if reqBody != nil {
			sub.bodies[0] = parsedBody{done: true, ok: true, json: reqBody}
		}
		if respBody != nil {
			sub.bodies[1] = parsedBody{done: true, ok: true, json: respBody}
		}
		if len(ex.Lookups) > 0 {
			sub.Lookups = maps.Clone(ex.Lookups) // canned answers of inline tests
		}
		out.Subs = append(out.Subs, sub)
	}
	if b.atomic && out.Failed > 0 {
		out.Subs, out.RolledBack = nil, true
	}
	return out, err
}

// BatchRequests splits the request side of a batch envelope that a batch
// rule's request side matched (Set.MatchBefore), before it is forwarded:
// one sub-exchange per sub-request that can be placed (a method and a url),
// in order, each with the method, path, query, host, request headers and
// body that Batch gives the sub-exchange of the same SubIndex after the
// response, and no status or response yet. Match them with
// Set.MatchBefore. At most MaxBatchOps sub-requests are read, as in Batch.
func (m *Match) BatchRequests(ex *Exchange) ([]*Exchange, error) {
	b := m.Rule.batch
	if b == nil {
		return nil, nil
	}
	reqs, total, reqSrc := batchItems(b.reqItems, ex, m.Params, MaxBatchOps)
	var err error
	if total > MaxBatchOps {
		err = &EmitError{Rule: m.Rule.Name, Reason: RefusedTooManyOps, Count: total - MaxBatchOps,
			Msg: fmt.Sprintf("the batch holds %d sub-requests; the %d past the first %d (rules.MaxBatchOps) are not matched", total, total-MaxBatchOps, MaxBatchOps)}
	}
	if len(reqs) == 0 {
		return nil, err
	}
	base := ""
	if b.base != nil {
		base = strings.TrimRight(b.base.renderURL(ex, m.Params, nil), "/")
	}
	var el elemCtx
	prev := ex.elem
	defer func() { ex.elem = prev }()
	ex.elem = &el
	reqHeader := subRequestHeader(ex.RequestHeader)
	root := ex.root()
	subs := make([]Exchange, 0, len(reqs))
	out := make([]*Exchange, 0, len(reqs))
	for i := range reqs {
		el.set(reqs[i].raw, i, i, -1)
		el.setMembers(reqs[i].members)
		method := strings.ToUpper(strings.TrimSpace(rawText(b.method, ex, m.Params)))
		var rawURL string
		if b.url.whole != nil {
			rawURL = rawText(b.url, ex, m.Params)
		} else {
			rawURL = b.url.renderURL(ex, m.Params, nil)
		}
		path, query, ok := joinSubURL(base, rawURL)
		if !ok || method == "" {
			continue // nothing can match it
		}
		reqBody := elemJSON(b.reqBody, ex, m.Params, reqSrc, reqs[i].off)
		subs = append(subs, Exchange{
			Method: method, Host: ex.Host, Path: path, RawQuery: query,
			RequestHeader: reqHeader, RequestBody: reqBody,
			parent: root, subIndex: i,
		})
		sub := &subs[len(subs)-1]
		if reqBody != nil {
			sub.bodies[0] = parsedBody{done: true, ok: true, json: reqBody}
		}
		if len(ex.Lookups) > 0 {
			sub.Lookups = maps.Clone(ex.Lookups) // canned answers of inline tests
		}
		out = append(out, sub)
	}
	return out, err
}

// jsonContentType is the Content-Type of a sub-exchange's JSON body, shared
// by every sub-exchange: they only read it.
var jsonContentType = []string{"application/json"}

// rawText renders a template as text without redaction (the values go into
// the sub-exchange as the client sent them; rules redact what they emit).
func rawText(t *tmpl, ex *Exchange, params []Param) string {
	if r, ok := itemResult(t, ex); ok {
		if r.Type == gjson.Null {
			return ""
		}
		return r.String()
	}
	if t.whole != nil {
		return t.whole.resolve(ex, params).String()
	}
	return t.renderText(ex, params, nil)
}

// itemResult reads a template that is one {item.<key>} placeholder
// straight from the element, without going through a value and parsing it
// again; ok is false for any other template.
func itemResult(t *tmpl, ex *Exchange) (gjson.Result, bool) {
	if t.whole == nil || t.whole.kind != phItem || t.whole.call != nil || t.whole.gpath == "" || ex.elem == nil {
		return gjson.Result{}, false
	}
	return ex.elem.get(t.whole.gpath), true
}

// batchItems returns the first max elements of the list the placeholder
// names (each with its members, found in the same pass), and how many
// elements it holds. A missing value or one that is not a JSON array holds
// none. Read from a body, the list is one copy of its text, and src is the
// body, shifted so that an element's off is its offset there.
func batchItems(ph *placeholder, ex *Exchange, params []Param, max int) (elems []listElem, total int, src []byte) {
	var raw string
	base := 0
	if body, ok := bodyOf(ph, ex); ok && ph.gpath != "" && ph.call == nil {
		// one copy of the body, walked once to the list and once through it
		text := string(body)
		start, found, plain := findPath(text, ph.gpath)
		switch {
		case found:
			raw, src, base = text[start:], body, start
		case !plain:
			raw = gjson.Get(text, ph.gpath).Raw
		}
	} else {
		v := ph.resolve(ex, params)
		if !v.found || !v.isJSON {
			return nil, 0, nil
		}
		raw = v.raw
	}
	elems, total, ok := scanList(raw, max)
	if !ok {
		return nil, 0, nil
	}
	if src != nil {
		for i := range elems {
			elems[i].off += base
		}
	}
	return elems, total, src
}

// bodyOf returns the JSON of the request or response body a placeholder
// names.
func bodyOf(ph *placeholder, ex *Exchange) ([]byte, bool) {
	switch ph.kind {
	case phRequestBody, phResponseBody:
		return ex.jsonBody(ph.kind == phResponseBody)
	}
	return nil, false
}

// elemJSON is wholeJSON for a placeholder into the current element, which
// starts at offset off of src: a value gjson located is sliced from src
// instead of copied (the sub-exchange only reads it, while its envelope is
// observed).
func elemJSON(t *tmpl, ex *Exchange, params []Param, src []byte, off int) []byte {
	if t == nil || t.whole == nil || t.whole.kind != phItem || t.whole.call != nil || src == nil || ex.elem == nil {
		return wholeJSON(t, ex, params)
	}
	var r gjson.Result
	if t.whole.gpath == "" {
		r = gjson.Result{Type: gjson.JSON, Raw: ex.elem.raw}
	} else if r = ex.elem.get(t.whole.gpath); !r.Exists() {
		return nil
	}
	if r.Type == gjson.Null {
		return nil
	}
	start, end := off+r.Index, off+r.Index+len(r.Raw)
	if (t.whole.gpath != "" && r.Index <= 0) || start < 0 || end > len(src) || string(src[start:end]) != r.Raw {
		return wholeJSON(t, ex, params)
	}
	return src[start:end:end]
}

// wholeJSON resolves a whole-placeholder template to JSON bytes; nil when
// it is unset, finds nothing or finds null.
func wholeJSON(t *tmpl, ex *Exchange, params []Param) []byte {
	if t == nil || t.whole == nil {
		return nil
	}
	v := t.whole.resolve(ex, params)
	if !v.found {
		return nil
	}
	if !v.isJSON {
		return appendQuote(nil, v.text)
	}
	if raw := strings.TrimSpace(v.raw); raw != "" && raw != "null" {
		return []byte(raw)
	}
	return nil
}

// subStatus reads a sub-response status: a JSON number, or text such as
// "201" (SCIM writes statuses as strings) or "201 Created". Anything else
// ("2O1", 201.5, 42) is 0, which no status spec accepts.
func subStatus(t *tmpl, ex *Exchange, params []Param) int {
	var s string
	if r, ok := itemResult(t, ex); ok {
		switch r.Type {
		case gjson.Number:
			s = r.Raw
		case gjson.String:
			s = r.Str
		default:
			return 0
		}
	} else if t.whole != nil {
		v := t.whole.resolve(ex, params)
		if !v.found {
			return 0
		}
		if v.isJSON {
			r := gjson.Parse(v.raw)
			switch r.Type {
			case gjson.Number:
				s = r.Raw
			case gjson.String:
				s = r.Str
			default:
				return 0
			}
		} else {
			s = v.text
		}
	} else {
		s = t.renderText(ex, params, nil)
	}
	s = strings.TrimSpace(s)
	if len(s) > 3 && s[3] == ' ' {
		s = s[:3] // "201 Created"
	}
	if len(s) != 3 {
		return 0
	}
	for i := 0; i < 3; i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0
		}
	}
	c, _ := strconv.Atoi(s)
	if c < 100 || c > 599 {
		return 0
	}
	return c
}

// joinSubURL places a sub-request url: a path (with an optional query
// string) is taken relative to base ("/Users" under "/scim/v2", "users" as
// "/users"); an absolute http(s) URL gives its own path and query. The path
// is unescaped, as a server's router sees it.
func joinSubURL(base, u string) (path, query string, ok bool) {
	u = strings.TrimSpace(u)
	if i := strings.IndexByte(u, '#'); i >= 0 {
		u = u[:i]
	}
	if u == "" {
		return "", "", false
	}
	if hasPrefixFold(u, "http://") || hasPrefixFold(u, "https://") {
		pu, err := url.Parse(u)
		if err != nil {
			return "", "", false
		}
		u, base = pu.EscapedPath(), ""
		if pu.RawQuery != "" {
			u += "?" + pu.RawQuery
		}
	}
	p, q, _ := strings.Cut(u, "?")
	switch {
	case !strings.HasPrefix(p, "/"):
		p = base + "/" + p
	case base != "":
		p = base + p
	}
	if up, err := url.PathUnescape(p); err == nil {
		p = up
	}
	return p, q, true
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// subRequestHeader is the request header of every sub-exchange: the
// envelope's, so rules see its credentials, with a JSON Content-Type (the
// sub-request bodies are JSON values cut from the envelope).
func subRequestHeader(h http.Header) http.Header {
	if ct := h.Get("Content-Type"); ct != "" {
		if mt, _, _ := mime.ParseMediaType(ct); mt == "application/json" || strings.HasSuffix(mt, "+json") {
			return h // shared: sub-exchanges only read it
		}
	}
	c := h.Clone()
	if c == nil {
		c = http.Header{}
	}
	c["Content-Type"] = []string{"application/json"}
	return c
}
