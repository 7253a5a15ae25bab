package rules

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"
)

// phKind is what a placeholder reads.
type phKind uint8

const (
	phRequestBody phKind = iota + 1
	phResponseBody
	phPath
	phQuery
	phRequestHeader
	phRequestCookie
	phResponseHeader
	phStatus
	phMethod
	phRequestPath
	phHost
	phLookupBody
	phLookupStatus
	phItem  // {item}, {item.<gjson path>}: the element of an each or a batch
	phIndex // {index}: the element's position
	phWhere // {where.<name>}: a named capture of an each's where regex
)

// placeholder is one {…} reference.
type placeholder struct {
	raw   string // as written, without braces
	kind  phKind
	name  string // path param, query/header/cookie name, or lookup name
	gpath string // gjson path into a body; "" for the whole body
	// secretKeys are the normalized password-like elements of the reference
	// (its value is redacted unless keep_secrets names each of them): the
	// header, query, cookie or path parameter name, or any key of the gjson
	// path, since copying the whole body would redact the value under that key.
	secretKeys []string
	// call is set when the placeholder is a function around another one,
	// {jwt(request.body.token).sub}: resolve applies it to what call.arg
	// resolves to. kind, name and gpath are then those of the innermost
	// placeholder (source), so that whatever asks what a placeholder reads
	// (needs, lookupNames) sees through functions. Read the value with
	// resolve, or with resolveWith where the innermost placeholder's value
	// comes from elsewhere: never by switching on kind alone.
	call *phCall
}

// tmpl is a string with placeholders. When the string is exactly one
// placeholder, whole is set and the value keeps its JSON type.
type tmpl struct {
	raw   string
	lits  []string       // lits[i] precedes phs[i]; len(lits) == len(phs)+1
	phs   []*placeholder // in order
	whole *placeholder
}

// scope says which placeholders a template may use.
type scope struct {
	params  []map[string]bool // per path template: its parameter names
	lookups map[string]bool   // lookups declared so far
	elem    *elemScope        // inside an emit with each, or a batch: {item}, {index}, {where.x}
	before  map[string]bool   // those of them that run before the request (when: before)
}

// parseTmpl parses s; errors describe the problem without position (the caller adds it).
func parseTmpl(s string, sc *scope) (*tmpl, error) {
	t := &tmpl{raw: s}
	var lit strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '{' && i+1 < len(s) && s[i+1] == '{':
			lit.WriteByte('{')
			i += 2
		case c == '}' && i+1 < len(s) && s[i+1] == '}':
			lit.WriteByte('}')
			i += 2
		case c == '}':
			return nil, fmt.Errorf("unmatched \"}\" at offset %d (write \"}}\" for a literal brace)", i)
		case c == '{':
			end, openString := placeholderEnd(s, i)
			if openString {
				return nil, fmt.Errorf("unterminated string in placeholder %q: close the regex with \" (write \\\" for a quote inside it)", s[i:])
			}
			if end < 0 {
				return nil, fmt.Errorf("unclosed placeholder %q: want {…} (write \"{{\" for a literal brace)", s[i:])
			}
			ph, err := parsePlaceholder(strings.TrimSpace(s[i+1:end]), sc)
			if err != nil {
				return nil, err
			}
			t.lits = append(t.lits, lit.String())
			lit.Reset()
			t.phs = append(t.phs, ph)
			i = end + 1
		default:
			lit.WriteByte(c)
			i++
		}
	}
	t.lits = append(t.lits, lit.String())
	if len(t.phs) == 1 && t.lits[0] == "" && t.lits[1] == "" {
		t.whole = t.phs[0]
	}
	return t, nil
}

// placeholderEnd returns the index of the '}' that closes the placeholder
// opening at s[i], or -1. Braces nest; inside a function call (a placeholder
// that starts with name( ) a "…" string is skipped whole, so that a regex may
// hold braces. openString reports a string that is never closed.
func placeholderEnd(s string, i int) (end int, openString bool) {
	call := isCall(strings.TrimLeft(s[i+1:], " "))
	depth := 0
	for j := i + 1; j < len(s); j++ {
		switch s[j] {
		case '"':
			if call {
				if j = skipString(s, j); j < 0 {
					return -1, true
				}
			}
		case '{':
			depth++
		case '}':
			if depth == 0 {
				return j, false
			}
			depth--
		}
	}
	return -1, false
}

const placeholderHelp = "want one of request.body…, response.body…, path.<param>, request.query.<name>, request.header.<Name>, request.cookie.<name>, response.header.<Name>, response.status, request.method, request.path, request.host, <lookup>.body…, <lookup>.status, or a function around one: jwt(…), jwt(…).<claim path>, last_segment(…), match(…, \"regex\")"

func parsePlaceholder(raw string, sc *scope) (*placeholder, error) {
	return parsePlaceholderIn(raw, sc, 0)
}

// parsePlaceholderIn parses raw, found inside calls function calls (0 at the top).
func parsePlaceholderIn(raw string, sc *scope, calls int) (*placeholder, error) {
	if raw == "" {
		return nil, fmt.Errorf("empty placeholder {}: %s", placeholderHelp)
	}
	if isCall(raw) {
		return parseCall(raw, sc, calls)
	}
	ph := &placeholder{raw: raw}
	head, rest, _ := strings.Cut(raw, ".")
	switch head {
	case "request", "response":
		sub, rest2, _ := strings.Cut(rest, ".")
		switch {
		case sub == "body":
			ph.kind = phRequestBody
			if head == "response" {
				ph.kind = phResponseBody
			}
			ph.gpath = rest2
		case head == "request" && sub == "query" && rest2 != "":
			ph.kind, ph.name = phQuery, rest2
		case sub == "header" && rest2 != "":
			ph.kind, ph.name = phRequestHeader, canonicalHeader(rest2)
			if head == "response" {
				ph.kind = phResponseHeader
			}
		case head == "request" && sub == "cookie" && rest2 != "":
			ph.kind, ph.name = phRequestCookie, rest2
		case head == "response" && sub == "status" && rest2 == "":
			ph.kind = phStatus
		case head == "request" && sub == "method" && rest2 == "":
			ph.kind = phMethod
		case head == "request" && sub == "path" && rest2 == "":
			ph.kind = phRequestPath
		case head == "request" && sub == "host" && rest2 == "":
			ph.kind = phHost
		default:
			return nil, fmt.Errorf("unknown placeholder {%s}: %s", raw, placeholderHelp)
		}
	case "path":
		if rest == "" {
			return nil, fmt.Errorf("placeholder {path} needs a parameter name, e.g. {path.id}")
		}
		ph.kind, ph.name = phPath, rest
		if sc != nil {
			for _, p := range sc.params {
				if !p[rest] {
					return nil, fmt.Errorf("placeholder {%s}: the path template has no parameter {%s}; it has: %s", raw, rest, paramList(p))
				}
			}
		}
	case "item", "index", "where":
		return parseElemPlaceholder(ph, head, rest, sc)
	default:
		sub, rest2, _ := strings.Cut(rest, ".")
		if sc == nil || !sc.lookups[head] {
			if sc != nil && len(sc.lookups) > 0 {
				return nil, fmt.Errorf("unknown placeholder {%s}: %q is not a lookup of this rule (lookups: %s); %s", raw, head, strings.Join(sortedKeys(sc.lookups), ", "), placeholderHelp)
			}
			return nil, fmt.Errorf("unknown placeholder {%s}: %s", raw, placeholderHelp)
		}
		ph.name = head
		switch {
		case sub == "body":
			ph.kind, ph.gpath = phLookupBody, rest2
		case sub == "status" && rest2 == "":
			ph.kind = phLookupStatus
		default:
			return nil, fmt.Errorf("unknown placeholder {%s}: a lookup offers {%s.body}, {%s.body.<path>} and {%s.status}", raw, head, head, head)
		}
	}
	ph.secretKeys = secretElements(ph)
	return ph, nil
}

func paramList(p map[string]bool) string {
	if len(p) == 0 {
		return "none"
	}
	keys := sortedKeys(p)
	for i, k := range keys {
		keys[i] = "{" + k + "}"
	}
	return strings.Join(keys, ", ")
}

// secretElements returns the normalized password-like names a placeholder reads through.
func secretElements(ph *placeholder) []string {
	if c := ph.call; c != nil {
		if c.fn == fnJWT {
			// the token is the secret, not its claims: what is read is the
			// claim path (a claim named password is still redacted)
			return secretNames(strings.FieldsFunc(c.path, func(r rune) bool { return r == '.' || r == '|' }))
		}
		return c.arg.secretKeys // a part of a secret is a secret
	}
	var elems []string
	switch ph.kind {
	case phRequestBody, phResponseBody, phLookupBody, phItem:
		elems = strings.FieldsFunc(ph.gpath, func(r rune) bool { return r == '.' || r == '|' })
	case phQuery, phRequestHeader, phResponseHeader, phRequestCookie, phPath, phWhere:
		elems = []string{ph.name, lastElement(ph.name)}
	}
	return secretNames(elems)
}

// secretNames returns the normalized password-like names among elems.
func secretNames(elems []string) []string {
	var out []string
	for _, e := range elems {
		if k := normKey(strings.TrimLeft(e, "@#")); secretNorm(k) && !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

// lastElement returns the last dotted element of a reference, ignoring gjson modifiers.
func lastElement(ref string) string {
	if i := strings.LastIndexByte(ref, '.'); i >= 0 {
		ref = ref[i+1:]
	}
	return strings.TrimLeft(ref, "@#")
}

// needs reports which bodies a template reads.
func (t *tmpl) needs(n *Need) {
	if t == nil {
		return
	}
	for _, ph := range t.phs {
		switch ph.kind {
		case phRequestBody:
			n.RequestBody = true
		case phResponseBody:
			n.ResponseBody = true
		}
	}
}

// usesLookup reports whether any placeholder reads a lookup.
func (t *tmpl) lookupNames(into map[string]bool) {
	if t == nil {
		return
	}
	for _, ph := range t.phs {
		if ph.kind == phLookupBody || ph.kind == phLookupStatus {
			into[ph.name] = true
		}
	}
}

// value is a resolved placeholder.
type value struct {
	found  bool
	isJSON bool   // raw holds JSON; otherwise text holds a plain string
	raw    string // JSON text
	text   string
	// taint is the secret shapes of the value a function took this one
	// from (match, last_segment): a part of a secret is redacted like the
	// secret, though it no longer has its shape.
	taint shapeSet
}

func (v value) String() string {
	if !v.isJSON {
		return v.text
	}
	r := gjson.Parse(v.raw)
	if r.Type == gjson.Null {
		return ""
	}
	return r.String()
}

func textValue(s string, ok bool) value { return value{found: ok, text: s} }

func jsonResult(r gjson.Result) value {
	if !r.Exists() {
		return value{}
	}
	return value{found: true, isJSON: true, raw: r.Raw}
}

// source returns the innermost placeholder of ph: ph itself unless ph is a function call.
func (ph *placeholder) source() *placeholder {
	for ph.call != nil {
		ph = ph.call.arg
	}
	return ph
}

// resolveWith resolves ph with read giving the value of its innermost
// placeholder, and the functions around it applied: a kind of placeholder
// whose value is not in the exchange (an element being iterated over, say)
// is wrapped in functions like any other.
func (ph *placeholder) resolveWith(ex *Exchange, read func(src *placeholder) value) value {
	if c := ph.call; c != nil {
		return c.apply(ex, c.arg.resolveWith(ex, read))
	}
	return read(ph)
}

// resolve reads ph from the exchange.
func (ph *placeholder) resolve(ex *Exchange, params []Param) value {
	if ph.call != nil {
		return ph.call.apply(ex, ph.call.arg.resolve(ex, params))
	}
	switch ph.kind {
	case phRequestBody, phResponseBody:
		pb := ex.body(ph.kind == phResponseBody)
		if !pb.ok {
			return value{}
		}
		return pb.get(ph.gpath)
	case phPath:
		for _, p := range params {
			if p.Name == ph.name {
				return textValue(p.Value, true)
			}
		}
		return value{}
	case phQuery:
		vals, ok := ex.query()[ph.name]
		if !ok || len(vals) == 0 {
			return value{}
		}
		return textValue(vals[0], true)
	case phRequestHeader:
		return headerValue(ex.RequestHeader, ph.name)
	case phResponseHeader:
		return firstValue(ex.responseValues(ph.name)) // a sub-exchange's are synthesized
	case phRequestCookie:
		v, ok := ex.requestCookie(ph.name)
		return textValue(v, ok)
	case phStatus:
		return value{found: true, isJSON: true, raw: strconv.Itoa(ex.Status)}
	case phMethod:
		return textValue(ex.Method, true)
	case phRequestPath:
		return textValue(ex.Path, true)
	case phHost:
		return textValue(ex.Host, ex.Host != "")
	case phLookupBody, phLookupStatus:
		lr, ok := ex.Lookups[ph.name]
		if !ok || lr.Err != "" || lr.Status < 200 || lr.Status > 299 {
			if ph.kind == phLookupStatus && ok && lr.Status != 0 {
				return value{found: true, isJSON: true, raw: strconv.Itoa(lr.Status)}
			}
			return value{}
		}
		if ph.kind == phLookupStatus {
			return value{found: true, isJSON: true, raw: strconv.Itoa(lr.Status)}
		}
		pb := lr.body()
		if !pb.ok {
			return value{}
		}
		return pb.get(ph.gpath)
	case phItem, phIndex, phWhere:
		return ex.elem.resolve(ph)
	}
	return value{}
}

func headerValue(h map[string][]string, name string) value {
	if vals := h[name]; len(vals) > 0 {
		return textValue(vals[0], true)
	}
	return value{}
}

// renderText evaluates the template as raw text, without redaction: for
// what never reaches an event as written (the event type, the dedupe key).
// Subjects and data go through renderCtx.renderText.
func (t *tmpl) renderText(ex *Exchange, params []Param, missing *[]string) string {
	if len(t.phs) == 0 {
		return t.lits[0]
	}
	var b strings.Builder
	for i, ph := range t.phs {
		b.WriteString(t.lits[i])
		v := ph.resolve(ex, params)
		if !v.found {
			addMissing(missing, ph.raw)
		}
		b.WriteString(v.String())
	}
	b.WriteString(t.lits[len(t.phs)])
	return b.String()
}

// renderURL evaluates a lookup path template, escaping each value for where it
// lands: as a path segment before "?", as a query value after it.
func (t *tmpl) renderURL(ex *Exchange, params []Param, missing *[]string) string {
	var b strings.Builder
	inQuery := false
	for i, ph := range t.phs {
		b.WriteString(t.lits[i])
		inQuery = inQuery || strings.Contains(t.lits[i], "?")
		v := ph.resolve(ex, params)
		if !v.found {
			addMissing(missing, ph.raw)
		}
		if inQuery {
			b.WriteString(url.QueryEscape(v.String()))
		} else {
			b.WriteString(escapePathSegment(v.String()))
		}
	}
	b.WriteString(t.lits[len(t.phs)])
	return b.String()
}

// redacted reports whether the template reads a password-like value that
// keep (normalized key names from keep_secrets) does not exempt.
func (t *tmpl) redacted(keep map[string]bool) bool {
	for _, ph := range t.phs {
		for _, k := range ph.secretKeys {
			if !keep[k] {
				return true
			}
		}
	}
	return false
}

func addMissing(missing *[]string, raw string) {
	if missing == nil {
		return
	}
	for _, m := range *missing {
		if m == raw {
			return
		}
	}
	*missing = append(*missing, raw)
}
