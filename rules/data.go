package rules

import (
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/tidwall/gjson"
	"gopkg.in/yaml.v3"
)

// dataNode is a compiled data template: a JSON literal, a string template, an
// object or an array. Object keys keep the order they were written in.
type dataNode struct {
	lit   []byte // JSON literal (non-string scalars)
	t     *tmpl  // string template
	keys  []string
	vals  []*dataNode
	items []*dataNode
	kind  byte // 'l' literal, 't' template, 'o' object, 'a' array
	// acts[i] is what the emit's policy does with keys[i] (fixed once the
	// policy is built: the keys and their paths are the rule's).
	acts []action
}

func (d *dec) parseData(n *yaml.Node, path string, sc *scope) *dataNode {
	n = resolve(n)
	switch n.Kind {
	case yaml.MappingNode:
		dn := &dataNode{kind: 'o'}
		keys, vals := d.pairs(n, path)
		for i, k := range keys {
			if v := d.parseData(vals[i], join(path, k.Value), sc); v != nil {
				dn.keys = append(dn.keys, k.Value)
				dn.vals = append(dn.vals, v)
			}
		}
		return dn
	case yaml.SequenceNode:
		dn := &dataNode{kind: 'a'}
		for i, c := range n.Content {
			if v := d.parseData(c, index(path, i), sc); v != nil {
				dn.items = append(dn.items, v)
			}
		}
		return dn
	case yaml.ScalarNode:
		if n.ShortTag() == "!!str" {
			t, err := parseTmpl(n.Value, sc)
			if err != nil {
				d.errf(n, path, "%v", err)
				return nil
			}
			return &dataNode{kind: 't', t: t}
		}
		b, err := scalarJSON(n)
		if err != nil {
			d.errf(n, path, "%v", err)
			return nil
		}
		return &dataNode{kind: 'l', lit: b}
	}
	d.errf(n, path, "want a value, got %s", kindName(n))
	return nil
}

func (dn *dataNode) walkTmpls(fn func(*tmpl)) {
	if dn == nil {
		return
	}
	switch dn.kind {
	case 't':
		fn(dn.t)
	case 'o':
		for _, v := range dn.vals {
			v.walkTmpls(fn)
		}
	case 'a':
		for _, v := range dn.items {
			v.walkTmpls(fn)
		}
	}
}

func (dn *dataNode) needs(n *Need) { dn.walkTmpls(func(t *tmpl) { t.needs(n) }) }

func (dn *dataNode) lookupNames(into map[string]bool) {
	dn.walkTmpls(func(t *tmpl) { t.lookupNames(into) })
}

// renderCtx carries what rendering one event needs.
type renderCtx struct {
	ex     *Exchange
	params []Param
	// missing collects the placeholders that resolved to nothing (a value in
	// the context, not a pointer to the caller's list, so that a context
	// on the stack keeps it there too)
	missing []string
	policy  *sanitizer
	notes   truncNotes // where data was cut at MaxDataDepth
	// scratch is the copiers' buffer for unescaped strings and normalized
	// keys, reused by every JSON value of the event
	scratch []byte
	// last is the value the placeholder written lastRaw resolved to: an
	// event's subject is most often also a field of its data
	// ({response.body.id} twice), read once
	lastRaw string
	last    value
}

// resolve resolves ph for the event: a placeholder written as the last
// one resolved gives the same value without reading it again (the
// exchange, its element and its lookups do not change while one event is
// built, and what a placeholder reads is all in what is written).
func (rc *renderCtx) resolve(ph *placeholder) value {
	if rc.lastRaw != "" && rc.lastRaw == ph.raw {
		return rc.last
	}
	v := ph.resolve(rc.ex, rc.params)
	rc.lastRaw, rc.last = ph.raw, v
	return v
}

// renderData renders the emit's data for one event: into a pooled buffer
// (at least as large as the largest data so far, dataSize), then copied out
// at its exact length, so that an event holds no more memory than its data
// and rendering it never grows a buffer. The copy has room for reserve more
// bytes past the data (for the event's id, see newEventIDIn), returned as
// spare (empty, with that capacity): one allocation for both. The data is
// cut at its length and capacity, so that an append to it never writes there.
func (e *emitSpec) renderData(rc *renderCtx, reserve int, arena *eventArena) (data, spare []byte) {
	bp := dataBufPool.Get().(*[]byte)
	if hint := int(e.dataSize.Load()); cap(*bp) < hint {
		*bp = make([]byte, 0, hint)
	}
	buf := e.data.render((*bp)[:0], rc, make([]string, 0, 8), 0)
	out := arena.alloc(len(buf) + reserve)
	n := copy(out, buf)
	if cap(buf) <= maxPooledData {
		*bp = buf[:0]
		dataBufPool.Put(bp)
	}
	return out[:n:n], out[n:n]
}

// dataBufPool holds the buffers of renderData.
var dataBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// maxPooledData is the largest buffer renderData puts back: one huge event
// must not make the pool hold on to its memory.
const maxPooledData = 64 << 10

// render appends the JSON of the data template. path is the dotted key path
// from the root of data; depth is how many objects and arrays enclose dn.
func (dn *dataNode) render(dst []byte, rc *renderCtx, path []string, depth int) []byte {
	if dn == nil {
		return append(dst, "null"...)
	}
	switch dn.kind {
	case 'l':
		return append(dst, dn.lit...)
	case 't':
		// A value read from a password-like source is redacted whatever key it lands under.
		if dn.t.redacted(rc.policy.keep) {
			if rc.policy.comparing() {
				return appendQuotedMark(dst, markRedacted, []byte(dn.t.renderText(rc.ex, rc.params, &rc.missing)))
			}
			return appendQuote(dst, Redacted) // the value is not even read
		}
		if dn.t.whole != nil {
			v := rc.resolve(dn.t.whole)
			if !v.found {
				addMissing(&rc.missing, dn.t.whole.raw)
				return append(dst, "null"...)
			}
			if rc.policy.redactsTaint(v.taint) {
				if rc.policy.comparing() {
					return appendQuotedMark(dst, markRedacted, v.bytes())
				}
				return appendQuote(dst, Redacted)
			}
			if v.isJSON {
				return rc.appendJSONValue(dst, v.raw, path, depth)
			}
			return rc.policy.appendString(dst, v.text)
		}
		return appendQuote(dst, rc.renderText(dn.t, path))
	case 'o', 'a':
		if depth >= MaxDataDepth {
			if rc.policy.comparing() {
				// only a template nested past MaxDepth gets here: its own nesting is bounded
				start := len(dst)
				return markRendered(dn.render(dst, rc, path, 0), start, markTruncated)
			}
			rc.notes.add(func() string { return cutPath([]byte(strings.Join(path, "."))) })
			return appendQuote(dst, Truncated)
		}
		if dn.kind == 'a' {
			dst = append(dst, '[')
			for i, it := range dn.items {
				if i > 0 {
					dst = append(dst, ',')
				}
				dst = it.render(dst, rc, path, depth+1)
			}
			return append(dst, ']')
		}
		dst = append(dst, '{')
		first := true
		for i, k := range dn.keys {
			p := append(path, k)
			var act action
			if i < len(dn.acts) {
				act = dn.acts[i]
			} else {
				act = rc.policy.action(k, p)
			}
			if act == actRedact && rc.policy.comparing() {
				dst, _ = appendKey(dst, k, actKeep, &first)
				start := len(dst)
				dst = markRendered(dn.vals[i].render(dst, rc, p, depth+1), start, markRedacted)
				continue
			}
			var wantValue bool
			if dst, wantValue = appendKey(dst, k, act, &first); wantValue {
				dst = dn.vals[i].render(dst, rc, p, depth+1)
			}
		}
		return append(dst, '}')
	}
	return append(dst, "null"...)
}

// renderText evaluates t as text for an event (its subject, or a string in
// its data): a template reading a password-like source gives Redacted; each
// value is written as text, a string redacted when it has a secret shape, an
// object or array as the JSON that data would hold (redacted and cut the
// same way). path is where the text lands in data (nil for the subject).
func (rc *renderCtx) renderText(t *tmpl, path []string) string {
	return validText(rc.renderRawText(t, path))
}

// validText returns s with each invalid UTF-8 byte replaced by U+FFFD, as
// the envelope (and encoding/json) writes it: the subject reads back from the
// queue as it was rendered.
func validText(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	b := make([]byte, 0, len(s)+8)
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = utf8.AppendRune(b, utf8.RuneError)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return string(b)
}

// renderRawText is renderText before invalid UTF-8 is mended.
func (rc *renderCtx) renderRawText(t *tmpl, path []string) string {
	if t == nil {
		return ""
	}
	if t.redacted(rc.policy.keep) {
		if rc.policy.comparing() {
			return string(appendMark(nil, markRedacted, []byte(t.renderText(rc.ex, rc.params, &rc.missing))))
		}
		return Redacted
	}
	if len(t.phs) == 0 {
		return t.lits[0]
	}
	if t.whole != nil {
		// the usual subject, "{response.body.user.id}": no buffer to build
		v := rc.resolve(t.whole)
		switch {
		case !v.found:
			addMissing(&rc.missing, t.whole.raw)
			return ""
		case rc.policy.redactsTaint(v.taint):
			if rc.policy.comparing() {
				return string(appendMark(nil, markRedacted, v.bytes()))
			}
			return Redacted
		case !v.isJSON && rc.policy.plainOK(v.text):
			return ownText(t.whole, v.text, rc.ex)
		case v.isJSON && strings.HasPrefix(v.raw, `"`):
			str := gjson.Parse(v.raw).Str
			if rc.policy.plainOK(str) {
				return ownText(t.whole, str, rc.ex)
			}
			return string(rc.policy.appendPlain(nil, str))
		}
		return string(rc.appendText(nil, v, path))
	}
	var b []byte
	for i, ph := range t.phs {
		b = append(b, t.lits[i]...)
		v := rc.resolve(ph)
		if !v.found {
			addMissing(&rc.missing, ph.raw)
			continue
		}
		b = rc.appendText(b, v, path)
	}
	b = append(b, t.lits[len(t.phs)]...)
	return string(b)
}

// ownText returns s, a value ph resolved to for ex, as text an event may
// keep: copied when ph reads a body, or an element of one, since such a
// value views the body's bytes (parsedBody.result), which the handler may
// reuse once the exchange is done, and when it reads the response header
// of a batch's sub-exchange (its Location views the envelope's response
// body, see Match.Batch); as is otherwise (a request header, a path
// parameter, a lookup's body: strings of their own).
func ownText(ph *placeholder, s string, ex *Exchange) string {
	switch ph.source().kind {
	case phRequestBody, phResponseBody, phItem, phWhere:
		return strings.Clone(s)
	case phResponseHeader:
		if ex.parent != nil {
			return strings.Clone(s)
		}
	}
	return s
}

// appendText appends v as text (see renderText).
func (rc *renderCtx) appendText(b []byte, v value, path []string) []byte {
	if rc.policy.redactsTaint(v.taint) {
		if rc.policy.comparing() {
			return appendMark(b, markRedacted, v.bytes())
		}
		return append(b, Redacted...)
	}
	if !v.isJSON {
		return rc.policy.appendPlain(b, v.text)
	}
	raw := strings.TrimLeft(v.raw, " \t\r\n")
	if raw == "" {
		return b
	}
	switch raw[0] {
	case '{', '[':
		// the text holds the JSON, inside a string: no nesting is added to data
		return rc.appendJSONValue(b, raw, path, 0)
	case '"':
		return rc.policy.appendPlain(b, gjson.Parse(raw).Str)
	}
	r := gjson.Parse(raw)
	if r.Type == gjson.Null {
		return b
	}
	return append(b, r.String()...)
}

// Redacted replaces the value of a password-like or redacted key, and a string of a secret shape.
const Redacted = "[REDACTED]"

type action uint8

const (
	actKeep action = iota
	actOmit
	actRedact
)

// sanitizer applies omit, redact, the password-like key rule and the secret shapes.
type sanitizer struct {
	omitKeys, omitPaths     map[string]bool
	redactKeys, redactPaths map[string]bool
	// maxPath is the longest omit or redact path: a longer data path matches
	// none, so it is not looked up (hashing it would cost its length per member).
	maxPath    int
	keep       map[string]bool // normalized keys exempt from the password-like rule
	keepShapes shapeSet        // secret shapes delivered anyway
	// cmp: render for comparison (emit.previous): what the policy hides is
	// written as a marker standing for it (see appendMark), not as Redacted.
	cmp bool
}

func newSanitizer(e *emitSpec) *sanitizer {
	s := &sanitizer{keep: e.keepSecrets, keepShapes: e.keepShapes}
	split := func(list []string) (keys, paths map[string]bool) {
		for _, x := range list {
			if strings.Contains(x, ".") {
				if paths == nil {
					paths = map[string]bool{}
				}
				paths[x] = true
				s.maxPath = max(s.maxPath, len(x))
			} else {
				if keys == nil {
					keys = map[string]bool{}
				}
				keys[x] = true
			}
		}
		return keys, paths
	}
	s.omitKeys, s.omitPaths = split(e.omit)
	s.redactKeys, s.redactPaths = split(e.redact)
	s.fixActions(e.data, nil)
	e.previous.walkData(func(dn *dataNode) { s.fixActions(dn, nil) })
	return s
}

// fixActions records in each object of the data template what the policy
// does with its keys.
func (s *sanitizer) fixActions(dn *dataNode, path []string) {
	if dn == nil {
		return
	}
	switch dn.kind {
	case 'o':
		dn.acts = make([]action, len(dn.keys))
		for i, k := range dn.keys {
			p := append(path[:len(path):len(path)], k)
			dn.acts[i] = s.action(k, p)
			s.fixActions(dn.vals[i], p)
		}
	case 'a':
		for _, it := range dn.items {
			s.fixActions(it, path)
		}
	}
}

// action says what to do with a member of the data template.
func (s *sanitizer) action(key string, path []string) action {
	var p string
	if s != nil && s.maxPath > 0 {
		p = strings.Join(path, ".")
	}
	var scratch []byte
	return s.actionAt(key, []byte(p), &scratch)
}

// actionAt says what to do with the member key at the dotted data path path;
// scratch is a buffer for the normalized key.
func (s *sanitizer) actionAt(key string, path []byte, scratch *[]byte) action {
	*scratch = appendNormKey((*scratch)[:0], key)
	n := *scratch
	if s == nil {
		if secretNormBytes(n) {
			return actRedact
		}
		return actKeep
	}
	atPath := func(paths map[string]bool) bool {
		return paths != nil && len(path) <= s.maxPath && paths[string(path)]
	}
	if s.omitKeys != nil && s.omitKeys[key] || atPath(s.omitPaths) {
		return actOmit
	}
	if s.redactKeys != nil && s.redactKeys[key] || atPath(s.redactPaths) {
		return actRedact
	}
	if secretNormBytes(n) && (s.keep == nil || !s.keep[string(n)]) {
		return actRedact
	}
	return actKeep
}

// appendKey writes one object member's key (after a comma unless it is the
// first) as act says: nothing for an omitted key, the key and a redacted
// value for a redacted one. It reports whether the caller still has to write
// the value.
func appendKey(dst []byte, key string, act action, first *bool) ([]byte, bool) {
	if act == actOmit {
		return dst, false
	}
	if !*first {
		dst = append(dst, ',')
	}
	*first = false
	dst = appendQuote(dst, key)
	dst = append(dst, ':')
	if act == actRedact {
		return appendQuote(dst, Redacted), false
	}
	return dst, true
}

// redactsShape reports whether str has a secret shape the policy does not keep.
func (s *sanitizer) redactsShape(str string) bool {
	keep := shapeSet(0)
	if s != nil {
		keep = s.keepShapes
	}
	return secretShape(str)&^keep != 0
}

// redactsTaint reports whether a value cut from a string of the secret
// shapes taint (by match or last_segment) is redacted: unless the policy keeps
// every one of those shapes, a part of a secret is as secret as the whole.
func (s *sanitizer) redactsTaint(taint shapeSet) bool {
	if taint == 0 {
		return false
	}
	keep := shapeSet(0)
	if s != nil {
		keep = s.keepShapes
	}
	return taint&^keep != 0
}

// appendString appends str as a JSON string, or Redacted when it has a
// secret shape (when comparing: a marker for it; see plainOK).
func (s *sanitizer) appendString(dst []byte, str string) []byte {
	if !s.plainOK(str) {
		if s.comparing() {
			return appendQuotedMark(dst, s.hiddenKind(str), []byte(str))
		}
		return appendQuote(dst, Redacted)
	}
	return appendQuote(dst, str)
}

// appendPlain appends str as text, or Redacted when it has a secret shape
// (when comparing: a marker for it).
func (s *sanitizer) appendPlain(dst []byte, str string) []byte {
	if !s.plainOK(str) {
		if s.comparing() {
			return appendMark(dst, s.hiddenKind(str), []byte(str))
		}
		return append(dst, Redacted...)
	}
	return append(dst, str...)
}
