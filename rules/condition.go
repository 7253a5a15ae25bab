package rules

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"

	"github.com/tidwall/gjson"
	"gopkg.in/yaml.v3"
)

type opKind uint8

const (
	opExists opKind = iota + 1
	opAbsent
	opEquals
	opNotEquals
	opOneOf
	opNotOneOf
	opRegex
	opGT
	opGTE
	opLT
	opLTE
)

// scalar is a literal a condition compares with.
type scalar struct {
	kind gjson.Type // String, Number, True, False, Null
	str  string     // text form (for header/query/cookie comparison and strings)
	num  float64
}

type op struct {
	kind opKind
	vals []scalar
	re   *regexp.Regexp
	num  float64
}

// cond is a set of operators that must all hold.
type cond struct {
	ops []op
}

// subject is the value a condition is tested against.
type subject struct {
	present bool
	isJSON  bool
	r       gjson.Result // when isJSON
	text    string       // when !isJSON
}

func (c *cond) eval(s subject) bool {
	for i := range c.ops {
		if !c.ops[i].eval(s) {
			return false
		}
	}
	return true
}

func (o *op) eval(s subject) bool {
	switch o.kind {
	case opExists:
		return s.present
	case opAbsent:
		return !s.present
	case opEquals, opOneOf:
		if !s.present {
			return false
		}
		for _, v := range o.vals {
			if equal(s, v) {
				return true
			}
		}
		return false
	case opNotEquals, opNotOneOf:
		if !s.present {
			return true
		}
		for _, v := range o.vals {
			if equal(s, v) {
				return false
			}
		}
		return true
	case opRegex:
		if !s.present {
			return false
		}
		return o.re.MatchString(s.asText())
	case opGT, opGTE, opLT, opLTE:
		n, ok := s.asNumber()
		if !ok {
			return false
		}
		switch o.kind {
		case opGT:
			return n > o.num
		case opGTE:
			return n >= o.num
		case opLT:
			return n < o.num
		default:
			return n <= o.num
		}
	}
	return false
}

func (s subject) asText() string {
	if !s.isJSON {
		return s.text
	}
	if s.r.Type == gjson.String {
		return s.r.Str
	}
	return s.r.Raw
}

func (s subject) asNumber() (float64, bool) {
	if !s.present {
		return 0, false
	}
	if s.isJSON {
		switch s.r.Type {
		case gjson.Number:
			return s.r.Num, true
		case gjson.String:
			f, err := strconv.ParseFloat(strings.TrimSpace(s.r.Str), 64)
			return f, err == nil
		}
		return 0, false
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(s.text), 64)
	return f, err == nil
}

// equal compares with JSON types for bodies and as text for headers, cookies and queries.
func equal(s subject, v scalar) bool {
	if !s.isJSON {
		if v.kind == gjson.Number {
			f, err := strconv.ParseFloat(strings.TrimSpace(s.text), 64)
			return err == nil && f == v.num
		}
		return v.kind != gjson.Null && s.text == v.str
	}
	switch v.kind {
	case gjson.Number:
		return s.r.Type == gjson.Number && s.r.Num == v.num
	case gjson.String:
		return s.r.Type == gjson.String && s.r.Str == v.str
	default:
		return s.r.Type == v.kind
	}
}

// parseCond reads a condition: exists, absent, a scalar, a list, or an operator mapping.
func (d *dec) parseCond(n *yaml.Node, path string) *cond {
	n = resolve(n)
	switch n.Kind {
	case yaml.ScalarNode:
		if n.ShortTag() == "!!str" { // quoted too: JSON files quote every string
			switch n.Value {
			case "exists":
				return &cond{ops: []op{{kind: opExists}}}
			case "absent":
				return &cond{ops: []op{{kind: opAbsent}}}
			}
		}
		v, ok := d.scalarLit(n, path)
		if !ok {
			return nil
		}
		return &cond{ops: []op{{kind: opEquals, vals: []scalar{v}}}}
	case yaml.SequenceNode:
		vals, ok := d.scalarList(n, path)
		if !ok {
			return nil
		}
		return &cond{ops: []op{{kind: opOneOf, vals: vals}}}
	case yaml.MappingNode:
		c := &cond{}
		numOp := func(k opKind) func(v *yaml.Node, p string) {
			return func(v *yaml.Node, p string) {
				v = resolve(v)
				f, ok := numberOf(v)
				if !ok {
					d.errf(v, p, "want a number, got %s", kindName(v))
					return
				}
				c.ops = append(c.ops, op{kind: k, num: f})
			}
		}
		one := func(k opKind) func(v *yaml.Node, p string) {
			return func(v *yaml.Node, p string) {
				if s, ok := d.scalarLit(v, p); ok {
					c.ops = append(c.ops, op{kind: k, vals: []scalar{s}})
				}
			}
		}
		many := func(k opKind) func(v *yaml.Node, p string) {
			return func(v *yaml.Node, p string) {
				v = resolve(v)
				if v.Kind != yaml.SequenceNode {
					d.errf(v, p, "want a list of values, got %s", kindName(v))
					return
				}
				if vals, ok := d.scalarList(v, p); ok {
					c.ops = append(c.ops, op{kind: k, vals: vals})
				}
			}
		}
		d.mapping(n, path,
			field{name: "equals", fn: one(opEquals)},
			field{name: "not_equals", fn: one(opNotEquals)},
			field{name: "one_of", fn: many(opOneOf)},
			field{name: "not_one_of", fn: many(opNotOneOf)},
			field{name: "regex", fn: func(v *yaml.Node, p string) {
				s, ok := d.str(v, p)
				if !ok {
					return
				}
				if len(s) > MaxRegexLen {
					d.errf(v, p, "the regex is %d bytes; a regex may be at most %d (rules.MaxRegexLen)", len(s), MaxRegexLen)
					return
				}
				re, err := regexp.Compile(s)
				if err != nil {
					d.errf(v, p, "want an RE2 regular expression: %v", err)
					return
				}
				c.ops = append(c.ops, op{kind: opRegex, re: re})
			}},
			field{name: "gt", fn: numOp(opGT)},
			field{name: "gte", fn: numOp(opGTE)},
			field{name: "lt", fn: numOp(opLT)},
			field{name: "lte", fn: numOp(opLTE)},
			field{name: "exists", fn: func(v *yaml.Node, p string) {
				v = resolve(v)
				var b bool
				if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" || v.Decode(&b) != nil {
					d.errf(v, p, "want true or false, got %s", kindName(v))
					return
				}
				k := opExists
				if !b {
					k = opAbsent
				}
				c.ops = append(c.ops, op{kind: k})
			}},
		)
		if len(n.Content) == 0 {
			d.errf(n, path, "want a condition: exists, absent, a value, a list of values, or a mapping of equals, not_equals, one_of, not_one_of, regex, gt, gte, lt, lte, exists")
			return nil
		}
		return c
	}
	d.errf(n, path, "want a condition, got %s", kindName(n))
	return nil
}

func (d *dec) scalarList(n *yaml.Node, path string) ([]scalar, bool) {
	if len(n.Content) == 0 {
		d.errf(n, path, "want at least one value, got an empty list")
		return nil, false
	}
	out := make([]scalar, 0, len(n.Content))
	ok := true
	for i, c := range n.Content {
		v, good := d.scalarLit(c, index(path, i))
		ok = ok && good
		out = append(out, v)
	}
	return out, ok
}

func (d *dec) scalarLit(n *yaml.Node, path string) (scalar, bool) {
	n = resolve(n)
	if n.Kind != yaml.ScalarNode {
		d.errf(n, path, "want a single value (text, number, true, false or null), got %s", kindName(n))
		return scalar{}, false
	}
	switch n.ShortTag() {
	case "!!null":
		return scalar{kind: gjson.Null}, true
	case "!!bool":
		var b bool
		_ = n.Decode(&b)
		if b {
			return scalar{kind: gjson.True, str: "true"}, true
		}
		return scalar{kind: gjson.False, str: "false"}, true
	case "!!int", "!!float":
		f, ok := numberOf(n)
		if !ok {
			d.errf(n, path, "want a finite number, got %s", n.Value)
			return scalar{}, false
		}
		return scalar{kind: gjson.Number, num: f, str: n.Value}, true
	}
	return scalar{kind: gjson.String, str: n.Value}, true
}

func numberOf(n *yaml.Node) (float64, bool) {
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") {
		return 0, false
	}
	var f float64
	if err := n.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, false
	}
	return f, true
}

// condSet is the conditions on one part of a request or response.
type condSet struct {
	headers []namedCond // canonical header names
	cookies []namedCond
	query   []namedCond
	body    []namedCond // gjson paths
}

type namedCond struct {
	name string
	c    *cond
}

func (cs *condSet) empty() bool {
	return cs == nil || len(cs.headers)+len(cs.cookies)+len(cs.query)+len(cs.body) == 0
}

func (d *dec) parseCondSet(n *yaml.Node, path string, request bool) *condSet {
	cs := &condSet{}
	named := func(into *[]namedCond, canon bool) func(v *yaml.Node, p string) {
		return func(v *yaml.Node, p string) {
			keys, vals := d.pairs(v, p)
			for i, k := range keys {
				name := k.Value
				if canon {
					name = canonicalHeader(name)
				}
				if name == "" {
					d.errf(k, p, "want a name, got an empty key")
					continue
				}
				if c := d.parseCond(vals[i], join(p, k.Value)); c != nil {
					*into = append(*into, namedCond{name: name, c: c})
				}
			}
		}
	}
	fields := []field{
		{name: "header", fn: named(&cs.headers, true)},
		{name: "cookie", fn: named(&cs.cookies, false)},
		{name: "body", fn: func(v *yaml.Node, p string) {
			keys, vals := d.pairs(v, p)
			for i, k := range keys {
				if strings.TrimSpace(k.Value) == "" {
					d.errf(k, p, "want a gjson path such as user.id, got an empty key")
					continue
				}
				if c := d.parseCond(vals[i], join(p, k.Value)); c != nil {
					cs.body = append(cs.body, namedCond{name: k.Value, c: c})
				}
			}
		}},
	}
	if request {
		fields = append(fields, field{name: "query", fn: named(&cs.query, false)})
	}
	d.mapping(n, path, fields...)
	return cs
}

// eval tests the conditions against the request (response=false) or response side.
func (cs *condSet) eval(ex *Exchange, response bool) bool {
	if cs.empty() {
		return true
	}
	for _, nc := range cs.headers {
		vals := ex.headerValues(response, nc.name)
		s := subject{present: len(vals) > 0}
		if s.present {
			s.text = vals[0]
		}
		if !nc.c.eval(s) {
			return false
		}
	}
	for _, nc := range cs.cookies {
		var v string
		var ok bool
		if response {
			v, ok = ex.responseCookie(nc.name)
		} else {
			v, ok = ex.requestCookie(nc.name)
		}
		if !nc.c.eval(subject{present: ok, text: v}) {
			return false
		}
	}
	for _, nc := range cs.query {
		vals, ok := ex.query()[nc.name]
		s := subject{present: ok}
		if ok && len(vals) > 0 {
			s.text = vals[0]
		}
		if !nc.c.eval(s) {
			return false
		}
	}
	if len(cs.body) > 0 {
		pb := ex.body(response)
		for _, nc := range cs.body {
			s := subject{isJSON: true}
			if pb.ok {
				s.r = pb.result(nc.name)
				s.present = s.r.Exists()
			}
			if !nc.c.eval(s) {
				return false
			}
		}
	}
	return true
}

// statusSpec is a set of status ranges.
type statusSpec [][2]int

func (s statusSpec) match(code int) bool {
	for _, r := range s {
		if code >= r[0] && code <= r[1] {
			return true
		}
	}
	return false
}

const statusHelp = "want a code like 201, a class like 2xx or a range like 200-204"

func (d *dec) parseStatus(n *yaml.Node, path string) statusSpec {
	var out statusSpec
	for i, item := range d.strOrList(n, path) {
		p := path
		if resolve(n).Kind == yaml.SequenceNode {
			p = index(path, i)
		}
		r, err := parseStatusItem(item)
		if err != nil {
			d.errf(item, p, "%s, got %s", statusHelp, kindName(item))
			continue
		}
		out = append(out, r)
	}
	return out
}

func parseStatusItem(n *yaml.Node) ([2]int, error) {
	if n.Kind != yaml.ScalarNode {
		return [2]int{}, fmt.Errorf("not a scalar")
	}
	v := strings.TrimSpace(n.Value)
	code := func(s string) (int, bool) {
		c, err := strconv.Atoi(s)
		return c, err == nil && c >= 100 && c <= 599
	}
	switch {
	case n.ShortTag() == "!!int":
		if c, ok := code(v); ok {
			return [2]int{c, c}, nil
		}
	case len(v) == 3 && (v[1] == 'x' || v[1] == 'X') && (v[2] == 'x' || v[2] == 'X') && v[0] >= '1' && v[0] <= '5':
		base := int(v[0]-'0') * 100
		return [2]int{base, base + 99}, nil
	case strings.Contains(v, "-"):
		a, b, _ := strings.Cut(v, "-")
		lo, ok1 := code(strings.TrimSpace(a))
		hi, ok2 := code(strings.TrimSpace(b))
		if ok1 && ok2 && lo <= hi {
			return [2]int{lo, hi}, nil
		}
	default:
		if c, ok := code(v); ok {
			return [2]int{c, c}, nil
		}
	}
	return [2]int{}, fmt.Errorf("bad status")
}
