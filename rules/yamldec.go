package rules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// dec walks a yaml.Node tree (YAML and JSON files both parse to one) and
// collects errors with positions instead of stopping at the first.
type dec struct {
	file string
	errs ErrorList
}

func (d *dec) errf(n *yaml.Node, field, format string, args ...any) {
	// a value quoted back from the file is cut: a hostile file must not turn
	// one error into a megabyte log line
	for i, a := range args {
		if s, ok := a.(string); ok && len(s) > maxErrValue {
			args[i] = runePrefix(s, maxErrValue) + cutNote(s)
		}
	}
	e := &Error{File: d.file, Field: field, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	d.errs = append(d.errs, e)
}

// maxErrValue is how much of a value from the file an error message quotes.
const maxErrValue = 200

// resolve follows aliases.
func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func join(field, key string) string {
	if field == "" {
		return key
	}
	return field + "." + key
}

func index(field string, i int) string { return fmt.Sprintf("%s[%d]", field, i) }

// kindName describes a node for "got …" messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return "null"
		case "!!int", "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		}
		return strconv.Quote(n.Value)
	}
	return "an unexpected value"
}

// field is one key a mapping may hold.
type field struct {
	name     string
	required bool
	fn       func(v *yaml.Node, path string)
}

// mapping checks that n is a mapping whose keys are all known, none repeated,
// the required ones present, and calls each field's fn in document order.
func (d *dec) mapping(n *yaml.Node, path string, fields ...field) bool {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		d.errf(n, path, "want a mapping, got %s", kindName(n))
		return false
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Value == "<<" && k.ShortTag() == "!!merge" {
			d.errf(k, path, "merge keys (<<) are not supported; repeat the keys instead")
			continue
		}
		var f *field
		for j := range fields {
			if fields[j].name == k.Value {
				f = &fields[j]
				break
			}
		}
		if f == nil {
			names := make([]string, len(fields))
			for j, f := range fields {
				names[j] = f.name
			}
			msg := fmt.Sprintf("unknown key %q; want one of: %s", k.Value, strings.Join(names, ", "))
			if s := suggest(k.Value, names); s != "" {
				msg = fmt.Sprintf("unknown key %q (did you mean %q?); want one of: %s", k.Value, s, strings.Join(names, ", "))
			}
			d.errf(k, path, "%s", msg)
			continue
		}
		if seen[k.Value] {
			d.errf(k, join(path, k.Value), "duplicate key %q", k.Value)
			continue
		}
		seen[k.Value] = true
		f.fn(v, join(path, k.Value))
	}
	for _, f := range fields {
		if f.required && !seen[f.name] {
			d.errf(n, path, "missing required key %q", f.name)
		}
	}
	return true
}

// pairs returns the key/value pairs of a free-form mapping (header names, body
// paths), reporting duplicates.
func (d *dec) pairs(n *yaml.Node, path string) (keys []*yaml.Node, vals []*yaml.Node) {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		d.errf(n, path, "want a mapping, got %s", kindName(n))
		return nil, nil
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			d.errf(k, path, "want a text key, got %s", kindName(k))
			continue
		}
		if seen[k.Value] {
			d.errf(k, join(path, k.Value), "duplicate key %q", k.Value)
			continue
		}
		seen[k.Value] = true
		keys = append(keys, k)
		vals = append(vals, v)
	}
	return keys, vals
}

// str reads a text scalar. Numbers and booleans are refused: a value meant as
// text should not silently become "1".
func (d *dec) str(n *yaml.Node, path string) (string, bool) {
	n = resolve(n)
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		d.errf(n, path, "want text, got %s", kindName(n))
		return "", false
	}
	return n.Value, true
}

// text reads any scalar as text (header values in tests may be numbers).
func (d *dec) text(n *yaml.Node, path string) (string, bool) {
	n = resolve(n)
	if n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		d.errf(n, path, "want text, got %s", kindName(n))
		return "", false
	}
	return n.Value, true
}

// strOrList reads "x" or ["x", "y"].
func (d *dec) strOrList(n *yaml.Node, path string) []*yaml.Node {
	n = resolve(n)
	if n.Kind == yaml.SequenceNode {
		if len(n.Content) == 0 {
			d.errf(n, path, "want at least one value, got an empty list")
		}
		out := make([]*yaml.Node, 0, len(n.Content))
		for _, c := range n.Content {
			out = append(out, resolve(c))
		}
		return out
	}
	return []*yaml.Node{n}
}

// eachStr reads "x" or ["x", "y"] and calls fn with each text value, its node
// and its field path ("match.path" or "match.path[1]").
func (d *dec) eachStr(n *yaml.Node, path string, fn func(s string, item *yaml.Node, itemPath string)) {
	isList := resolve(n).Kind == yaml.SequenceNode
	for i, item := range d.strOrList(n, path) {
		ip := path
		if isList {
			ip = index(path, i)
		}
		if s, ok := d.str(item, ip); ok {
			fn(s, item, ip)
		}
	}
}

// listOrOne reads a sequence, or a single mapping standing for a list of one.
func (d *dec) listOrOne(n *yaml.Node) []*yaml.Node {
	n = resolve(n)
	if n.Kind == yaml.SequenceNode {
		out := make([]*yaml.Node, 0, len(n.Content))
		for _, c := range n.Content {
			out = append(out, resolve(c))
		}
		return out
	}
	return []*yaml.Node{n}
}

func (d *dec) intVal(n *yaml.Node, path string) (int, bool) {
	n = resolve(n)
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		d.errf(n, path, "want a whole number, got %s", kindName(n))
		return 0, false
	}
	var v int
	if err := n.Decode(&v); err != nil {
		d.errf(n, path, "want a whole number, got %s", kindName(n))
		return 0, false
	}
	return v, true
}

// jsonValue converts a YAML value to JSON text, keeping mapping key order.
func (d *dec) jsonValue(n *yaml.Node, path string) ([]byte, bool) {
	var buf bytes.Buffer
	ok := d.appendJSON(&buf, resolve(n), path)
	return buf.Bytes(), ok
}

func (d *dec) appendJSON(buf *bytes.Buffer, n *yaml.Node, path string) bool {
	n = resolve(n)
	switch n.Kind {
	case yaml.MappingNode:
		buf.WriteByte('{')
		keys, vals := d.pairs(n, path)
		for i, k := range keys {
			if i > 0 {
				buf.WriteByte(',')
			}
			buf.Write(appendQuote(nil, k.Value))
			buf.WriteByte(':')
			if !d.appendJSON(buf, vals[i], join(path, k.Value)) {
				return false
			}
		}
		buf.WriteByte('}')
	case yaml.SequenceNode:
		buf.WriteByte('[')
		for i, c := range n.Content {
			if i > 0 {
				buf.WriteByte(',')
			}
			if !d.appendJSON(buf, c, index(path, i)) {
				return false
			}
		}
		buf.WriteByte(']')
	case yaml.ScalarNode:
		b, err := scalarJSON(n)
		if err != nil {
			d.errf(n, path, "%v", err)
			return false
		}
		buf.Write(b)
	default:
		d.errf(n, path, "want a value, got %s", kindName(n))
		return false
	}
	return true
}

// scalarJSON renders a YAML scalar as JSON, following its resolved tag.
func scalarJSON(n *yaml.Node) ([]byte, error) {
	switch n.ShortTag() {
	case "!!null":
		return []byte("null"), nil
	case "!!bool":
		var b bool
		if err := n.Decode(&b); err != nil {
			return nil, err
		}
		return strconv.AppendBool(nil, b), nil
	case "!!int":
		var i int64
		if err := n.Decode(&i); err == nil {
			return strconv.AppendInt(nil, i, 10), nil
		}
		var u uint64
		if err := n.Decode(&u); err != nil {
			return nil, fmt.Errorf("number %s is out of range", n.Value)
		}
		return strconv.AppendUint(nil, u, 10), nil
	case "!!float":
		var f float64
		if err := n.Decode(&f); err != nil {
			return nil, err
		}
		if math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, fmt.Errorf("want a finite number, got %s", n.Value)
		}
		return json.Marshal(f)
	case "!!binary", "!!timestamp":
		return appendQuote(nil, n.Value), nil
	}
	return appendQuote(nil, n.Value), nil
}

// suggest returns the candidate closest to s when it is a plausible typo.
func suggest(s string, candidates []string) string {
	best, bestD := "", 3
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// sortedKeys is a helper for stable messages.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
