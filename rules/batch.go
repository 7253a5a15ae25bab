package rules

import (
	"fmt"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"unsafe"

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

	// reqStatic says the request side (base, request.*) reads nothing the
	// response or a lookup sets: what BatchRequests splits before the
	// request is forwarded is what Batch would split after the response.
	reqStatic bool
}

// requestOnly reports whether the templates read only what is known before
// the request is forwarded and does not change after: no response, status
// or lookup.
func requestOnly(ts ...*tmpl) bool {
	for _, t := range ts {
		if t == nil {
			continue
		}
		for _, ph := range t.phs {
			switch ph.kind {
			case phResponseBody, phResponseHeader, phStatus, phLookupBody, phLookupStatus:
				return false
			}
		}
	}
	return true
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
	items := &tmpl{phs: []*placeholder{b.reqItems}}
	b.reqStatic = requestOnly(items, b.base, b.reqID, b.method, b.url, b.reqBody)
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
// sub-response names one (synthesized: read them with ResponseHeaders). At
// most MaxBatchOps sub-requests are read; the error, when there are more,
// is an *EmitError counting the rest.
//
// The sub-exchanges' bodies are slices of the envelope's (not copies), and
// their Location values views of its response body, so they are valid
// while the envelope's bodies are; their other strings are their own.
// When BatchRequests split the same envelope's request side before, Batch
// reuses that work unless the request side reads the response.
func (m *Match) Batch(ex *Exchange) (Batch, error) {
	b := m.Rule.batch
	if b == nil {
		return Batch{}, nil
	}
	sc := getBatchScratch()
	defer putBatchScratch(sc)
	rs := ex.batchSplit()
	if !rs.validFor(b, ex, m.Params) {
		// a split of its own, kept nowhere once the sub-exchanges are
		// built: its sub-requests go back to the scratch after
		rs = m.splitRequests(ex, sc, sc.reqs[:0])
		defer func() { sc.reqs = rs.subs[:0] }()
	}
	out := Batch{Requests: rs.total}
	err := m.tooManyOps(rs.total)
	if len(rs.subs) == 0 {
		return out, err
	}
	var resps batchList
	resps.read(b.respItems, ex, m.Params, MaxBatchOps, sc)
	el := &sc.el
	prev := ex.elem
	defer func() { ex.elem = prev }()
	ex.elem = el
	byID := sc.byID
	if b.respID != nil {
		for i := range resps.elems {
			resps.at(el, i)
			if id := rawText(b.respID, ex, m.Params); id != "" {
				if _, dup := byID[id]; !dup {
					byID[id] = i
				}
			}
		}
	}
	reqHeader := subRequestHeader(ex.RequestHeader)
	root := ex.root()
	// one allocation for all sub-exchanges, one for their Location values
	subs := make([]Exchange, 0, len(rs.subs))
	out.Subs = make([]*Exchange, 0, len(rs.subs))
	var locs []string
	for i := range rs.subs {
		sr := &rs.subs[i]
		ri := i
		if b.respID != nil {
			var ok bool
			if ri, ok = byID[sr.id]; !ok {
				ri = -1
			}
		}
		if ri < 0 || ri >= len(resps.elems) {
			out.Failed++ // never answered: not applied
			continue
		}
		resps.at(el, ri)
		status := subStatus(b.status, ex, m.Params)
		if status < 200 || status > 299 || !sr.placed {
			out.Failed++ // failed, or a sub-request we cannot place: nothing can match it
			continue
		}
		respBody := elemJSON(b.respBody, ex, m.Params, resps.src, resps.off(ri))
		var loc []string
		if b.location != nil {
			// a view of the envelope's response body, like the body: what
			// an event keeps of it is copied (ownText)
			if l := rawText(b.location, ex, m.Params); l != "" {
				if locs == nil {
					locs = make([]string, 0, len(rs.subs)-i) // room for as many as are left
				}
				locs = append(locs, l)
				loc = locs[len(locs)-1 : len(locs) : len(locs)]
			}
		}
		// filled in place: copying a whole Exchange in costs write barriers for every pointer in it
		subs = subs[:len(subs)+1]
		sub := &subs[len(subs)-1]
		sr.fill(sub, ex, root, reqHeader)
		sub.Status, sub.ResponseBody = status, respBody
		sub.synthResp, sub.subLoc = true, loc
		if respBody != nil {
			// a JSON value cut from a valid body: no need to check it again
			sub.bodies[1] = parsedBody{done: true, ok: true, json: respBody}
		}
		out.Subs = append(out.Subs, sub)
	}
	// the sub-requests that were not read past the first MaxBatchOps are
	// reported by err; those read but never placed were counted above
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
// The split is kept on ex for Batch to reuse.
func (m *Match) BatchRequests(ex *Exchange) ([]*Exchange, error) {
	b := m.Rule.batch
	if b == nil {
		return nil, nil
	}
	rs := ex.batchSplit()
	if !rs.validFor(b, ex, m.Params) {
		sc := getBatchScratch()
		rs = m.splitRequests(ex, sc, nil) // kept on ex: its own sub-requests
		putBatchScratch(sc)
		if b.reqStatic {
			ex.memoOf().split = rs
		}
	}
	err := m.tooManyOps(rs.total)
	n := 0
	for i := range rs.subs {
		if rs.subs[i].placed {
			n++
		}
	}
	if n == 0 {
		return nil, err
	}
	reqHeader := subRequestHeader(ex.RequestHeader)
	root := ex.root()
	subs := make([]Exchange, 0, n)
	out := make([]*Exchange, 0, n)
	for i := range rs.subs {
		sr := &rs.subs[i]
		if !sr.placed {
			continue // nothing can match it
		}
		subs = subs[:len(subs)+1]
		sub := &subs[len(subs)-1]
		sr.fill(sub, ex, root, reqHeader)
		out = append(out, sub)
	}
	return out, err
}

// fill gives sub, a sub-exchange of the envelope ex (whose root is root),
// the request side of sr: what Batch and BatchRequests give it alike.
func (sr *subReq) fill(sub, ex, root *Exchange, reqHeader http.Header) {
	sub.Method, sub.Host, sub.Path, sub.RawQuery = sr.method, ex.Host, sr.path, sr.query
	sub.RequestHeader, sub.RequestBody = reqHeader, sr.body
	sub.parent, sub.subIndex = root, int32(sr.index)
	if sr.body != nil {
		// a JSON value cut from a valid body: no need to check it again
		sub.bodies[0] = parsedBody{done: true, ok: true, json: sr.body}
	}
	if len(ex.Lookups) > 0 {
		sub.Lookups = maps.Clone(ex.Lookups) // canned answers of inline tests
	}
}

func (m *Match) tooManyOps(total int) error {
	if total <= MaxBatchOps {
		return nil
	}
	return &EmitError{Rule: m.Rule.Name, Reason: RefusedTooManyOps, Count: total - MaxBatchOps,
		Msg: fmt.Sprintf("the batch holds %d sub-requests; the %d past the first %d (rules.MaxBatchOps) are not matched", total, total-MaxBatchOps, MaxBatchOps)}
}

// subReq is one sub-request of a batch envelope as its request side reads it.
type subReq struct {
	index int // its position among the sub-requests
	// placed says it has a method and a url that can be placed (joinSubURL)
	placed              bool
	method, path, query string
	id                  string // with request.id: its id, to pair it by
	body                []byte // a slice of the envelope's request body, or its own copy
}

// reqSplit is the request side of a batch envelope, split once: by
// BatchRequests before the request is forwarded, and again by Batch after
// the response only when the request side reads what may have changed (see
// batchSpec.reqStatic). Its strings are its own (strArena); its bodies are
// slices of the envelope's.
type reqSplit struct {
	spec   *batchSpec
	body   []byte  // the envelope's request body it was read from
	params []Param // the envelope's path parameters it was read with
	total  int     // how many sub-requests the envelope holds
	subs   []subReq
}

// validFor reports whether rs is the split of spec over ex's request, as
// it is now.
func (rs *reqSplit) validFor(spec *batchSpec, ex *Exchange, params []Param) bool {
	if rs == nil || rs.spec != spec || !spec.reqStatic || !sameBytes(rs.body, ex.RequestBody) || len(rs.params) != len(params) {
		return false
	}
	for i := range params {
		if params[i] != rs.params[i] {
			return false
		}
	}
	return true
}

func sameBytes(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// splitRequests reads the request side of a batch envelope: every one of
// its first MaxBatchOps sub-requests, in one pass over the list, into buf
// (nil for a new slice).
func (m *Match) splitRequests(ex *Exchange, sc *batchScratch, buf []subReq) *reqSplit {
	b := m.Rule.batch
	var reqs batchList
	reqs.read(b.reqItems, ex, m.Params, MaxBatchOps, sc)
	rs := &reqSplit{spec: b, body: ex.RequestBody, params: m.Params, total: reqs.total}
	if len(reqs.elems) == 0 {
		return rs
	}
	var arena strArena
	arena.grow(len(reqs.elems) * 48)
	base := ""
	if b.base != nil {
		base = strings.TrimRight(b.base.renderURL(ex, m.Params, nil), "/")
	}
	el := &sc.el
	prev := ex.elem
	defer func() { ex.elem = prev }()
	ex.elem = el
	if cap(buf) >= len(reqs.elems) {
		rs.subs = buf[:len(reqs.elems)]
		clear(rs.subs)
	} else {
		rs.subs = make([]subReq, len(reqs.elems))
	}
	for i := range reqs.elems {
		reqs.at(el, i)
		sr := &rs.subs[i]
		sr.index = i
		if b.reqID != nil {
			sr.id = arena.str(rawText(b.reqID, ex, m.Params), "")
		}
		method := strings.ToUpper(strings.TrimSpace(rawText(b.method, ex, m.Params)))
		var rawURL string
		if b.url.whole != nil {
			rawURL = rawText(b.url, ex, m.Params)
		} else {
			rawURL = b.url.renderURL(ex, m.Params, nil)
		}
		sr.body = elemJSON(b.reqBody, ex, m.Params, reqs.src, reqs.off(i))
		prefix, p, q, ok := splitSubURL(base, rawURL)
		if !ok || method == "" {
			continue
		}
		sr.placed = true
		sr.method = knownMethod(method, &arena)
		if strings.IndexByte(prefix, '%') >= 0 || strings.IndexByte(p, '%') >= 0 {
			p = prefix + p
			if up, err := url.PathUnescape(p); err == nil {
				p = up
			}
			prefix = ""
		}
		sr.path = arena.str(prefix, p)
		sr.query = arena.str(q, "")
	}
	return rs
}

// knownMethod returns method as a constant when it is a usual one, else as
// a copy in the arena (method may be a view of the envelope's body).
func knownMethod(method string, a *strArena) string {
	switch method {
	case "POST":
		return "POST"
	case "PUT":
		return "PUT"
	case "PATCH":
		return "PATCH"
	case "DELETE":
		return "DELETE"
	case "GET":
		return "GET"
	}
	return a.str(method, "")
}

// strArena holds the strings of a batch's sub-exchanges, appended into a
// few shared buffers instead of one allocation each. A string it returns
// views bytes that are never written again.
type strArena struct{ buf []byte }

func (a *strArena) grow(n int) {
	a.buf = make([]byte, 0, max(n, 256))
}

// str returns x+y as a string of the arena.
func (a *strArena) str(x, y string) string {
	n := len(x) + len(y)
	if n == 0 {
		return ""
	}
	if cap(a.buf)-len(a.buf) < n {
		a.grow(max(n, 2*cap(a.buf)))
	}
	at := len(a.buf)
	a.buf = append(a.buf, x...)
	a.buf = append(a.buf, y...)
	return unsafe.String(&a.buf[at], n)
}

// batchScratch is the working memory of one split, reused from split to
// split (batchPool): the lists' elements and members, the element being
// read, the sub-responses by id.
type batchScratch struct {
	elems []listElem
	flat  []member
	el    elemCtx
	byID  map[string]int
	keys  [maxIndexPath]string // a list's path, split (readIndexing)
	reqs  []subReq             // the sub-requests of a split Batch keeps nowhere
}

var batchPool = sync.Pool{New: func() any { return &batchScratch{byID: map[string]int{}} }}

func getBatchScratch() *batchScratch { return batchPool.Get().(*batchScratch) }

// putBatchScratch forgets what sc points to (views of bodies) and pools it,
// unless a huge list made it too large to keep.
func putBatchScratch(sc *batchScratch) {
	clear(sc.elems[:cap(sc.elems)])
	sc.el = elemCtx{own: sc.el.own[:0]}
	clear(sc.byID)
	clear(sc.keys[:])
	clear(sc.reqs[:cap(sc.reqs)]) // views of the envelope's body and arena strings
	if cap(sc.elems) > 2*MaxBatchOps || cap(sc.reqs) > 2*MaxBatchOps || cap(sc.flat) > 8192 || cap(sc.el.own) > 4*maxIndexedMembers {
		return
	}
	batchPool.Put(sc)
}

// batchList is a list of a batch envelope, split into its elements.
type batchList struct {
	elems []listElem
	total int // how many elements the list holds, read or not
	// src, when the list was read from a body, is the body, and base the
	// list's offset there: an element's value can be sliced from src.
	src  []byte
	base int
}

// at makes el the list's element i.
func (l *batchList) at(el *elemCtx, i int) {
	e := &l.elems[i]
	el.set(e.raw, i, i, -1)
	el.setMembers(e.members)
}

// off is the offset of element i in src.
func (l *batchList) off(i int) int { return l.base + l.elems[i].off }

// read splits the list the placeholder names into its first max elements
// (each with its members, found in the same pass), in sc's buffers: the
// request and response lists are read one after the other, and a list's
// elements are used before the next is read. A missing value or one that
// is not a JSON array holds none. A list read from a body is not copied:
// the elements view the body (sc and the list must not outlive the call
// that reads it; what a sub-exchange keeps is copied, see strArena).
func (l *batchList) read(ph *placeholder, ex *Exchange, params []Param, max int, sc *batchScratch) {
	if l.readIndexing(ph, ex, max, sc) {
		return
	}
	var raw string
	if body, ok := bodyOf(ph, ex); ok && ph.gpath != "" && ph.call == nil && len(body) > 0 {
		// a view of the body, walked once to the list and once through it
		text := unsafe.String(unsafe.SliceData(body), len(body))
		start, found, plain := findPath(text, ph.gpath)
		switch {
		case found:
			raw, l.src, l.base = text[start:], body, start
		case !plain:
			raw = strings.Clone(gjson.Get(text, ph.gpath).Raw)
		}
	} else {
		v := ph.resolve(ex, params)
		if !v.found || !v.isJSON {
			return
		}
		raw = v.raw
	}
	var ok bool
	sc.elems, sc.flat, l.total, ok = scanListInto(sc.elems[:0], sc.flat[:0], raw, max)
	if !ok {
		l.total = 0
		return
	}
	l.elems = sc.elems
}

// readIndexing is read for a list in a body read for the first time: the
// pass that checks the body is JSON splits the list too (jsonIndexer). It
// reports false when it cannot tell (the body was read before, is a form,
// or the path is not plain keys): read the list the usual way then.
func (l *batchList) readIndexing(ph *placeholder, ex *Exchange, max int, sc *batchScratch) bool {
	if ph.kind != phRequestBody && ph.kind != phResponseBody || ph.call != nil || ph.gpath == "" {
		return false
	}
	x, ok := newListIndexer(ph.gpath, max, &sc.keys, sc.elems[:0], sc.flat[:0])
	if !ok {
		return false
	}
	pb := ex.bodyIndexing(ph.kind == phResponseBody, &x)
	switch {
	case pb.done && !pb.ok:
		return true // not JSON: no list
	case x.find == listAbsent:
		return true
	case x.find != listFound:
		return false
	}
	sc.elems, sc.flat = x.elems, x.flat
	l.elems, l.total, l.src, l.base = x.elems, x.total, pb.json, x.start
	return true
}

// jsonContentType is the Content-Type of a sub-exchange's JSON body, shared
// by every sub-exchange: they only read it.
var jsonContentType = []string{"application/json"}

// rawText renders a template as text without redaction (the values go into
// the sub-exchange as the client sent them; rules redact what they emit).
func rawText(t *tmpl, ex *Exchange, params []Param) string {
	if raw, found, known := itemRaw(t, ex); known {
		if !found {
			return ""
		}
		if plainString(raw) {
			return raw[1 : len(raw)-1] // what gjson's Str is
		}
	}
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

// itemRaw reads a template that is one {item.<key>} placeholder of a plain
// key straight from the element's members: the member's raw JSON value, if
// found. known is false for any other template, or when the members kept
// cannot tell (use itemResult then).
func itemRaw(t *tmpl, ex *Exchange) (raw string, found, known bool) {
	if t == nil || t.whole == nil || t.whole.kind != phItem || t.whole.call != nil || ex.elem == nil || !plainKey(t.whole.gpath) {
		return "", false, false
	}
	raw, _, found, known = ex.elem.member(t.whole.gpath)
	return raw, found, known
}

// plainString reports whether raw is a JSON string without escapes: its
// text is raw without the quotes.
func plainString(raw string) bool {
	return len(raw) >= 2 && raw[0] == '"' && raw[len(raw)-1] == '"' && strings.IndexByte(raw, '\\') < 0
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
	if plainKey(t.whole.gpath) {
		raw, start, found, known := ex.elem.member(t.whole.gpath)
		switch {
		case known && !found:
			return nil
		case found && raw == "null":
			return nil
		case found && start > 0 && off+start+len(raw) <= len(src) && string(src[off+start:off+start+len(raw)]) == raw:
			end := off + start + len(raw)
			return src[off+start : end : end]
		}
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

// statusText is the text of a sub-response status: a JSON number as
// written, a JSON string's text, or the template rendered; ok is false for
// anything else (missing, an object, true).
func statusText(t *tmpl, ex *Exchange, params []Param) (string, bool) {
	raw, found, known := itemRaw(t, ex)
	switch {
	case !known:
	case !found:
		return "", false
	case plainString(raw):
		return raw[1 : len(raw)-1], true
	case raw != "" && (raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9'):
		return raw, true // a number: gjson's Raw
	case raw != "" && raw[0] != '"':
		return "", false // true, false, null, an object or a list
	}
	if r, ok := itemResult(t, ex); ok {
		return resultStatus(r)
	}
	if t.whole != nil {
		v := t.whole.resolve(ex, params)
		switch {
		case !v.found:
			return "", false
		case v.isJSON:
			return resultStatus(gjson.Parse(v.raw))
		}
		return v.text, true
	}
	return t.renderText(ex, params, nil), true
}

func resultStatus(r gjson.Result) (string, bool) {
	switch r.Type {
	case gjson.Number:
		return r.Raw, true
	case gjson.String:
		return r.Str, true
	}
	return "", false
}

// subStatus reads a sub-response status: a JSON number, or text such as
// "201" (SCIM writes statuses as strings) or "201 Created". Anything else
// ("2O1", 201.5, 42) is 0, which no status spec accepts.
func subStatus(t *tmpl, ex *Exchange, params []Param) int {
	s, ok := statusText(t, ex, params)
	if !ok {
		return 0
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

// splitSubURL places a sub-request url: a path (with an optional query
// string) is taken relative to base ("/Users" under "/scim/v2", "users" as
// "/users"); an absolute http(s) URL gives its own path and query. The
// path is prefix+p, still to be unescaped as a server's router would (see
// splitRequests); the parts may be views of u.
func splitSubURL(base, u string) (prefix, p, query string, ok bool) {
	u = strings.TrimSpace(u)
	if i := strings.IndexByte(u, '#'); i >= 0 {
		u = u[:i]
	}
	if u == "" {
		return "", "", "", false
	}
	if hasPrefixFold(u, "http://") || hasPrefixFold(u, "https://") {
		pu, err := url.Parse(u)
		if err != nil {
			return "", "", "", false
		}
		u, base = pu.EscapedPath(), ""
		if pu.RawQuery != "" {
			u += "?" + pu.RawQuery
		}
	}
	p, query, _ = strings.Cut(u, "?")
	switch {
	case !strings.HasPrefix(p, "/"):
		prefix = base + "/"
	case base != "":
		prefix = base
	}
	return prefix, p, query, true
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
