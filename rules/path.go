package rules

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// segKind is the kind of one path template segment.
type segKind uint8

const (
	segLiteral segKind = iota
	segParam           // {name}: exactly one segment
	segRest            // {name...}: one or more segments, last only
)

type segment struct {
	kind segKind
	text string // literal text or parameter name
}

// pathTmpl is a compiled path template such as /orgs/{org}/members/{user}.
type pathTmpl struct {
	raw    string
	segs   []segment
	params map[string]bool
}

func parsePathTmpl(raw string) (*pathTmpl, error) {
	if !strings.HasPrefix(raw, "/") {
		return nil, fmt.Errorf("want a path starting with \"/\", such as /api/users/{id}, got %q", raw)
	}
	if strings.ContainsAny(raw, "?#") {
		return nil, fmt.Errorf("want a path without query or fragment (match queries with request.query), got %q", raw)
	}
	pt := &pathTmpl{raw: raw, params: map[string]bool{}}
	if raw == "/" {
		return pt, nil
	}
	parts := strings.Split(raw[1:], "/")
	for i, p := range parts {
		switch {
		case strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}"):
			name := p[1 : len(p)-1]
			kind := segParam
			if strings.HasSuffix(name, "...") {
				kind = segRest
				name = strings.TrimSuffix(name, "...")
				if i != len(parts)-1 {
					return nil, fmt.Errorf("{%s...} takes the rest of the path and must be the last segment of %q", name, raw)
				}
			}
			if !validParamName(name) {
				return nil, fmt.Errorf("want a parameter name of letters, digits and _ in {…}, got %q in %q", p, raw)
			}
			if pt.params[name] {
				return nil, fmt.Errorf("parameter {%s} appears twice in %q", name, raw)
			}
			pt.params[name] = true
			pt.segs = append(pt.segs, segment{kind: kind, text: name})
		case strings.ContainsAny(p, "{}"):
			return nil, fmt.Errorf("a parameter must be a whole segment like /{id}/, got %q in %q", p, raw)
		default:
			pt.segs = append(pt.segs, segment{kind: segLiteral, text: p})
		}
	}
	return pt, nil
}

func validParamName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// nextSeg returns the segment of path starting at i (just after a "/") and the
// index after it (the next "/" or len(path)).
func nextSeg(path string, i int) (string, int) {
	j := strings.IndexByte(path[i:], '/')
	if j < 0 {
		return path[i:], len(path)
	}
	return path[i : i+j], i + j
}

// match reports whether path fits the template and returns its parameters.
func (pt *pathTmpl) match(path string, params []Param) ([]Param, bool) {
	if path == "" || path[0] != '/' {
		return params, false
	}
	if len(pt.segs) == 0 {
		return params, path == "/"
	}
	i := 1
	for k, s := range pt.segs {
		if i > len(path) {
			return params, false
		}
		if s.kind == segRest {
			rest := path[i:]
			if rest == "" {
				return params, false
			}
			return append(params, Param{Name: s.text, Value: rest}), true
		}
		seg, next := nextSeg(path, i)
		switch s.kind {
		case segLiteral:
			if seg != s.text {
				return params, false
			}
		case segParam:
			if seg == "" {
				return params, false
			}
			params = append(params, Param{Name: s.text, Value: seg})
		}
		if k == len(pt.segs)-1 {
			return params, next == len(path)
		}
		if next == len(path) {
			return params, false
		}
		i = next + 1
	}
	return params, false
}

// trie indexes path templates by segment so that finding the rules for a path
// costs one walk down the path, not a scan over the rules.
type trie struct {
	static map[string]*trie
	param  *trie
	rest   []int // rule indexes whose template ends with {x...} here
	end    []int // rule indexes whose template ends exactly here
}

func (t *trie) insert(pt *pathTmpl, rule int) {
	n := t
	for _, s := range pt.segs {
		switch s.kind {
		case segLiteral:
			if n.static == nil {
				n.static = map[string]*trie{}
			}
			child := n.static[s.text]
			if child == nil {
				child = &trie{}
				n.static[s.text] = child
			}
			n = child
		case segParam:
			if n.param == nil {
				n.param = &trie{}
			}
			n = n.param
		case segRest:
			n.rest = appendUnique(n.rest, rule)
			return
		}
	}
	n.end = appendUnique(n.end, rule)
}

func appendUnique(s []int, v int) []int {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

// any reports whether some template matches path; i is just after a "/".
func (t *trie) any(path string, i int) bool {
	if i > len(path) {
		return false
	}
	if len(t.rest) > 0 && i < len(path) {
		return true
	}
	seg, next := nextSeg(path, i)
	if next == len(path) {
		// seg is the last segment
		if seg == "" && i == len(path) && len(t.end) > 0 && i == 1 {
			return true // "/" against the root template
		}
		if c := t.static[seg]; c != nil && len(c.end) > 0 {
			return true
		}
		return seg != "" && t.param != nil && len(t.param.end) > 0
	}
	if c := t.static[seg]; c != nil && c.any(path, next+1) {
		return true
	}
	return seg != "" && t.param != nil && t.param.any(path, next+1)
}

// collect appends the rules whose templates may match path.
func (t *trie) collect(path string, i int, out []int) []int {
	if i > len(path) {
		return out
	}
	if i < len(path) {
		out = append(out, t.rest...)
	}
	seg, next := nextSeg(path, i)
	if next == len(path) {
		if seg == "" && i == 1 && len(path) == 1 {
			out = append(out, t.end...)
		}
		if c := t.static[seg]; c != nil {
			out = append(out, c.end...)
		}
		if seg != "" && t.param != nil {
			out = append(out, t.param.end...)
		}
		return out
	}
	if c := t.static[seg]; c != nil {
		out = c.collect(path, next+1, out)
	}
	if seg != "" && t.param != nil {
		out = t.param.collect(path, next+1, out)
	}
	return out
}

// sortUnique sorts rule indexes (file order) and drops repeats.
func sortUnique(s []int) []int {
	if len(s) < 2 {
		return s
	}
	sort.Ints(s)
	j := 1
	for i := 1; i < len(s); i++ {
		if s[i] != s[j-1] {
			s[j] = s[i]
			j++
		}
	}
	return s[:j]
}

// escapePathSegment escapes a placeholder value for a lookup path segment:
// as url.PathEscape does ("/" becomes %2F), and "." and ".." as %2E and
// %2E%2E, which no client, proxy or server resolves as a dot-segment, so a
// value cannot move the lookup to another path (/lk/{x}/end with x=".."
// stays /lk/%2E%2E/end, not /end).
func escapePathSegment(v string) string {
	switch v {
	case ".":
		return "%2E"
	case "..":
		return "%2E%2E"
	}
	return url.PathEscape(v)
}
