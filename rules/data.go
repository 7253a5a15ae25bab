package rules

import (
	"strings"

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

// renderCtx carries what rendering needs.
type renderCtx struct {
	ex      *Exchange
	params  []Param
	missing *[]string
	policy  *sanitizer
}

// render appends the JSON of the data template. key is the object key it sits
// under ("" at the root or in arrays); path is the dotted path from the root.
func (dn *dataNode) render(dst []byte, rc *renderCtx, path []string) []byte {
	if dn == nil {
		return append(dst, "null"...)
	}
	switch dn.kind {
	case 'l':
		return append(dst, dn.lit...)
	case 't':
		// A value read from a password-like source is redacted whatever key it lands under.
		if dn.t.redacted(rc.policy.keep) {
			return appendQuote(dst, Redacted) // the value is not even read
		}
		if dn.t.whole != nil {
			v := dn.t.whole.resolve(rc.ex, rc.params)
			if !v.found {
				addMissing(rc.missing, dn.t.whole.raw)
				return append(dst, "null"...)
			}
			if v.isJSON {
				return rc.policy.appendValue(dst, gjson.Parse(v.raw), path)
			}
			return appendQuote(dst, v.text)
		}
		return appendQuote(dst, dn.t.renderText(rc.ex, rc.params, rc.missing))
	case 'o':
		dst = append(dst, '{')
		first := true
		for i, k := range dn.keys {
			p := append(path, k)
			var wantValue bool
			if dst, wantValue = rc.policy.appendKey(dst, k, p, &first); wantValue {
				dst = dn.vals[i].render(dst, rc, p)
			}
		}
		return append(dst, '}')
	case 'a':
		dst = append(dst, '[')
		for i, it := range dn.items {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = it.render(dst, rc, path)
		}
		return append(dst, ']')
	}
	return append(dst, "null"...)
}

// Redacted replaces the value of a password-like or redacted key.
const Redacted = "[REDACTED]"

type action uint8

const (
	actKeep action = iota
	actOmit
	actRedact
)

// sanitizer applies omit, redact and the password-like key rule.
type sanitizer struct {
	omitKeys, omitPaths     map[string]bool
	redactKeys, redactPaths map[string]bool
	keep                    map[string]bool // normalized keys exempt from the password-like rule
}

func newSanitizer(e *emitSpec) *sanitizer {
	s := &sanitizer{keep: e.keepSecrets}
	split := func(list []string) (keys, paths map[string]bool) {
		for _, x := range list {
			if strings.Contains(x, ".") {
				if paths == nil {
					paths = map[string]bool{}
				}
				paths[x] = true
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
	return s
}

func (s *sanitizer) action(key string, path []string) action {
	if s.omitKeys[key] || (s.omitPaths != nil && s.omitPaths[strings.Join(path, ".")]) {
		return actOmit
	}
	if s.redactKeys[key] || (s.redactPaths != nil && s.redactPaths[strings.Join(path, ".")]) {
		return actRedact
	}
	if n := normKey(key); !s.keep[n] && secretNorm(n) {
		return actRedact
	}
	return actKeep
}

// appendKey writes one object member's key (after a comma unless it is the
// first) as the policy says: nothing for an omitted key, the key and a
// redacted value for a redacted one. It reports whether the caller still has
// to write the value.
func (s *sanitizer) appendKey(dst []byte, key string, path []string, first *bool) ([]byte, bool) {
	act := s.action(key, path)
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

// appendValue copies a JSON value, applying the policy to every object key at any depth.
func (s *sanitizer) appendValue(dst []byte, r gjson.Result, path []string) []byte {
	switch {
	case r.IsObject():
		dst = append(dst, '{')
		first := true
		r.ForEach(func(k, v gjson.Result) bool {
			key := k.String()
			p := append(path, key)
			var wantValue bool
			if dst, wantValue = s.appendKey(dst, key, p, &first); wantValue {
				dst = s.appendValue(dst, v, p)
			}
			return true
		})
		return append(dst, '}')
	case r.IsArray():
		dst = append(dst, '[')
		i := 0
		r.ForEach(func(_, v gjson.Result) bool {
			if i > 0 {
				dst = append(dst, ',')
			}
			i++
			dst = s.appendValue(dst, v, path)
			return true
		})
		return append(dst, ']')
	case r.Type == gjson.String:
		return appendQuote(dst, r.Str)
	case !r.Exists():
		return append(dst, "null"...)
	}
	return append(dst, r.Raw...)
}

// normKey lower-cases a key and drops '_', '-', '.' and spaces.
func normKey(k string) string {
	i := 0
	for i < len(k) && (k[i] < 'A' || k[i] > 'Z') && k[i] != '_' && k[i] != '-' && k[i] != '.' && k[i] != ' ' {
		i++
	}
	if i == len(k) {
		return k // already normal: the usual JSON key, no copy
	}
	var b strings.Builder
	b.Grow(len(k))
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c == '_' || c == '-' || c == '.' || c == ' ':
		case c >= 'A' && c <= 'Z':
			b.WriteByte(c + 'a' - 'A')
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

var (
	secretParts = []string{"password", "passwd", "passphrase", "secret", "token", "apikey", "privatekey", "credential", "cookie", "authorization"}
	secretExact = map[string]bool{"otp": true, "pin": true, "cvv": true, "ssn": true, "mfacode": true, "totp": true, "recoverycodes": true, "pwd": true}
)

func secretNorm(n string) bool {
	if secretExact[n] {
		return true
	}
	for _, p := range secretParts {
		if strings.Contains(n, p) {
			return true
		}
	}
	return false
}
