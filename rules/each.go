package rules

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/tidwall/gjson"
	"gopkg.in/yaml.v3"
)

// elemScope says, while a template is parsed, that it belongs to an emit
// with each (or to a batch), so {item}, {index} and {where.<name>} are known.
type elemScope struct {
	// what names the construct for messages: "each" or "batch".
	what string
	// captures are the named groups of the each's where regexes.
	captures map[string]bool
	// secret are the password-like keys the list is read through
	// ({request.body.tokens}): every {item…} reads through them too.
	secret []string
}

// elemCtx is the element an emit's each or a batch is rendering for. The
// exchange holds it (Exchange.elem) while one element's templates render.
type elemCtx struct {
	raw   string  // the element's JSON
	index int     // its position in its list (with then: in the inner list)
	where []Param // named captures of the where regexes
	// pos and sub are its place: the position in items and, with then, in
	// the inner list (-1 without then); they tell elements apart in
	// dedupe ids and order the events of emits over the same list
	pos, sub int
	// members are the element's top-level members, read in one pass the
	// first time a placeholder names one ({item.id}), so that the next ones
	// do not scan the element again; indexed says they were read.
	members []member
	indexed bool
	own     []member // el's own buffer for members, reused element to element
	// outer and inner are forEach's buffers for the members of the
	// elements of its list and of their then lists
	outer, inner []member
}

// elemPool holds the elements forEach walks a list with: their members
// buffer is reused from element to element and from list to list. fn
// never keeps the element past its call (events copy what they read).
var elemPool = sync.Pool{New: func() any { return new(elemCtx) }}

func getElem() *elemCtx { return elemPool.Get().(*elemCtx) }

// putElem forgets what el views (an element of a body) and pools it,
// unless a wide element made its buffer too large to keep.
func putElem(el *elemCtx) {
	own, outer, inner := el.own[:0], el.outer[:0], el.inner[:0]
	*el = elemCtx{}
	if cap(own) <= 4*maxIndexedMembers && cap(outer) <= 4*maxIndexedMembers && cap(inner) <= 4*maxIndexedMembers {
		el.own, el.outer, el.inner = own, outer, inner
		elemPool.Put(el)
	}
}

// set makes el the element raw at position pos (and sub), keeping the
// members buffer for reuse.
func (el *elemCtx) set(raw string, index, pos, sub int) {
	el.raw, el.index, el.pos, el.sub = raw, index, pos, sub
	el.members, el.indexed = el.own[:0], false
}

// setMembers gives el the members already found for it (scanListInto,
// walkList, the indexer).
func (el *elemCtx) setMembers(m []member) { el.members, el.indexed = m, true }

// get is gjson.Get(el.raw, path), answered from the element's members when
// path is one plain key and the element an object. The result's Index is
// the value's offset in el.raw.
func (el *elemCtx) get(path string) gjson.Result {
	if !plainKey(path) {
		return gjson.Get(el.raw, path)
	}
	el.readMembers()
	for i := range el.members {
		if m := &el.members[i]; m.hasKey(el.raw, path) {
			r := gjson.Parse(el.raw[m.valStart:m.valEnd])
			r.Index = int(m.valStart)
			return r
		}
	}
	if len(el.members) == maxIndexedMembers {
		return gjson.Get(el.raw, path) // past the members kept
	}
	return gjson.Result{}
}

// readMembers reads the element's members, the first time one is asked for.
func (el *elemCtx) readMembers() {
	if !el.indexed {
		el.indexed = true
		el.own, _ = scanObject(el.own[:0], el.raw, skipWS(el.raw, 0), maxIndexedMembers)
		el.members = el.own
	}
}

// member returns the raw value of the element's member key (a plainKey),
// read from its members; ok is false when the element has no such member
// as far as they tell (see get for what they do not).
func (el *elemCtx) member(key string) (raw string, start int, found, known bool) {
	el.readMembers()
	for i := range el.members {
		if m := &el.members[i]; m.hasKey(el.raw, key) {
			return el.raw[m.valStart:m.valEnd], int(m.valStart), true, true
		}
	}
	return "", 0, false, len(el.members) < maxIndexedMembers
}

// plainKey reports whether a gjson path is one object key and nothing else
// (no nesting, wildcard, modifier, escape or query): "id", "user_name".
func plainKey(p string) bool {
	if p == "" {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// ordinal renders the element's place for a dedupe id: "3", or "3.1" with then.
func (el *elemCtx) ordinal() string {
	if el.sub < 0 {
		return strconv.Itoa(el.pos)
	}
	return strconv.Itoa(el.pos) + "." + strconv.Itoa(el.sub)
}

func (el *elemCtx) resolve(ph *placeholder) value {
	if el == nil {
		return value{}
	}
	switch ph.kind {
	case phItem:
		if ph.gpath == "" {
			return value{found: true, isJSON: true, raw: el.raw}
		}
		return jsonResult(el.get(ph.gpath))
	case phIndex:
		return value{found: true, isJSON: true, raw: strconv.Itoa(el.index)}
	case phWhere:
		for _, c := range el.where {
			if c.Name == ph.name {
				return textValue(c.Value, true)
			}
		}
	}
	return value{}
}

// parseElemPlaceholder reads {item}, {item.<path>}, {index} and {where.<name>}.
func parseElemPlaceholder(ph *placeholder, head, rest string, sc *scope) (*placeholder, error) {
	if sc == nil || sc.elem == nil {
		return nil, fmt.Errorf("placeholder {%s}: {item…}, {index} and {where.…} stand for the element of a list, so they are known only in an emit with each: (or in batch:)", ph.raw)
	}
	switch head {
	case "item":
		ph.kind, ph.gpath = phItem, rest
	case "index":
		if rest != "" {
			return nil, fmt.Errorf("unknown placeholder {%s}: {index} is a number and has no fields", ph.raw)
		}
		ph.kind = phIndex
	case "where":
		if rest == "" || !sc.elem.captures[rest] {
			have := "none"
			if len(sc.elem.captures) > 0 {
				have = strings.Join(sortedKeys(sc.elem.captures), ", ")
			}
			return nil, fmt.Errorf("placeholder {%s}: want the name of a capture group (?P<name>…) of a regex in %s.where (this one has: %s)", ph.raw, sc.elem.what, have)
		}
		ph.kind, ph.name = phWhere, rest
	}
	ph.secretKeys = secretElements(ph)
	for _, k := range sc.elem.secret {
		if !containsStr(ph.secretKeys, k) {
			ph.secretKeys = append(ph.secretKeys, k)
		}
	}
	return ph, nil
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// eachSpec is an emit's each: one event per element of a list.
type eachSpec struct {
	// items is the list: a whole placeholder of a body or a lookup's body.
	items *placeholder
	// where are conditions on each element (gjson paths into it, "@this"
	// for the element itself); an element that fails one emits nothing.
	where []namedCond
	// captures are the where regexes with named groups, in order.
	captures []captureSpec
	// then, when set, is {item.<path>}: an element that passes where stands
	// for the elements of the list found there (an add operation for each
	// member it adds).
	then *placeholder
	// group is the index of the rule's first emit whose each reads the same
	// list: the events of such emits come in the list's order.
	group int
}

type captureSpec struct {
	cond  int // index in where
	re    *regexp.Regexp
	names []string // the named groups, by submatch index ("" for unnamed)
}

// parseEach reads emit.each: a placeholder naming a list, or a mapping of
// items, where and then. It returns the spec and the scope the emit's other
// templates are parsed in.
func (d *dec) parseEach(n *yaml.Node, path string, sc *scope) (*eachSpec, *scope) {
	es := &eachSpec{}
	var itemsNode, whereNode, thenNode *yaml.Node
	itemsPath := path
	if v := resolve(n); v.Kind == yaml.MappingNode {
		d.mapping(v, path,
			field{name: "items", required: true, fn: func(v *yaml.Node, p string) { itemsNode, itemsPath = v, p }},
			field{name: "where", fn: func(v *yaml.Node, p string) { whereNode = v }},
			field{name: "then", fn: func(v *yaml.Node, p string) { thenNode = v }},
		)
	} else {
		itemsNode = n
	}
	if itemsNode == nil {
		return nil, nil
	}
	es.items = d.listPlaceholder(itemsNode, itemsPath, sc)
	if es.items == nil {
		return nil, nil
	}
	elem := &elemScope{what: path, captures: map[string]bool{}, secret: append([]string(nil), es.items.secretKeys...)}
	if whereNode != nil {
		wp := join(path, "where")
		keys, vals := d.pairs(whereNode, wp)
		if len(keys) == 0 && resolve(whereNode).Kind == yaml.MappingNode {
			d.errf(whereNode, wp, "want conditions on the element such as {op: add}, got an empty mapping")
		}
		for i, k := range keys {
			if strings.TrimSpace(k.Value) == "" {
				d.errf(k, wp, "want a gjson path into the element such as op (or @this for the element itself), got an empty key")
				continue
			}
			cp := join(wp, k.Value)
			c := d.parseCond(vals[i], cp)
			if c == nil {
				continue
			}
			for _, o := range c.ops {
				if o.kind != opRegex {
					continue
				}
				cs := captureSpec{cond: len(es.where), re: o.re, names: o.re.SubexpNames()}
				named := false
				for _, name := range cs.names {
					switch {
					case name == "":
					case !validParamName(name):
						d.errf(vals[i], cp, "want a capture name of letters, digits and _ such as member, got %q", name)
					case elem.captures[name]:
						d.errf(vals[i], cp, "capture group %q is named twice in %s", name, wp)
					default:
						elem.captures[name] = true
						named = true
					}
				}
				if named {
					es.captures = append(es.captures, cs)
				}
			}
			es.where = append(es.where, namedCond{name: k.Value, c: c})
		}
	}
	esc := *sc
	esc.elem = elem
	if thenNode != nil {
		tp := join(path, "then")
		if t := d.tmplField(thenNode, tp, &esc); t != nil {
			if t.whole == nil || t.whole.kind != phItem || t.whole.call != nil || t.whole.gpath == "" {
				d.errf(thenNode, tp, "want one placeholder naming a list inside the element, such as \"{item.value}\", got %q", t.raw)
			} else {
				es.then = t.whole
				// the inner elements are read through the then path too
				for _, k := range t.whole.secretKeys {
					if !containsStr(elem.secret, k) {
						elem.secret = append(elem.secret, k)
					}
				}
			}
		}
	}
	return es, &esc
}

// listPlaceholder reads a template that must be one placeholder naming a
// JSON value that holds a list: a body or a lookup's body (or an element).
func (d *dec) listPlaceholder(n *yaml.Node, path string, sc *scope) *placeholder {
	t := d.tmplField(n, path, sc)
	if t == nil {
		return nil
	}
	if t.whole != nil {
		switch t.whole.kind {
		case phRequestBody, phResponseBody, phLookupBody:
			return t.whole
		case phItem:
			if sc.elem != nil {
				return t.whole
			}
		}
	}
	d.errf(n, path, "want one placeholder naming a list, such as \"{request.body.users}\" or \"{response.body.Operations}\", got %q", t.raw)
	return nil
}

// passes reports whether the element passes the where conditions, and
// appends the named captures of its where regexes to caps.
func (es *eachSpec) passes(el *elemCtx, caps []Param) ([]Param, bool) {
	for _, nc := range es.where {
		r := el.get(nc.name)
		if !nc.c.eval(subject{present: r.Exists(), isJSON: true, r: r}) {
			return caps, false
		}
	}
	for _, cs := range es.captures {
		r := el.get(es.where[cs.cond].name)
		text := subject{present: true, isJSON: true, r: r}.asText()
		m := cs.re.FindStringSubmatchIndex(text)
		for i, name := range cs.names {
			// a group that took no part in the match captured nothing: missing
			if name != "" && 2*i+1 < len(m) && m[2*i] >= 0 {
				caps = append(caps, Param{Name: name, Value: text[m[2*i]:m[2*i+1]]})
			}
		}
	}
	return caps, true
}

// forEach calls fn with each element the spec yields from v, what its
// items resolved to for the exchange, in order, until fn returns false. el
// is reused from call to call. A list that is missing, or is not a JSON
// array, yields nothing.
func (es *eachSpec) forEach(v value, fn func(el *elemCtx) bool) {
	if !v.found || !v.isJSON {
		return
	}
	el := getElem()
	defer putElem(el)
	var caps []Param
	i := -1
	// each element's members are read as the list is walked: a where or
	// an {item.x} looks them up without reading the element again
	el.outer, _ = walkList(v.raw, el.outer[:0], func(raw string, members []member) bool {
		i++
		el.set(raw, i, i, -1)
		el.setMembers(members)
		var ok bool
		if caps, ok = es.passes(el, caps[:0]); !ok {
			return true
		}
		el.where = caps
		if es.then == nil {
			return fn(el)
		}
		inner := el.get(es.then.gpath)
		if !inner.IsArray() {
			return true
		}
		more := true
		j := -1
		el.inner, _ = walkList(inner.Raw, el.inner[:0], func(raw string, members []member) bool {
			j++
			el.set(raw, j, i, j)
			el.setMembers(members)
			more = fn(el)
			return more
		})
		return more
	})
}
