package rules

import (
	"strings"

	"github.com/tidwall/gjson"
)

// This file splits JSON lists and objects into their elements and members
// in one forward pass, without recursion and without building values: what
// each and batch need from a list of a thousand operations, where walking
// it with gjson would parse every value of every element two or three
// times. The input is a value cut from a body that passed validJSON; on any
// other input the functions stop early and never read out of bounds.

// member is one member of a JSON object, as offsets into the object's
// text (no pointers: a list of a thousand elements costs the garbage
// collector nothing to scan): the key without its quotes, and the value.
type member struct {
	keyStart, keyEnd int32
	valStart, valEnd int32
	escaped          bool // the key holds a backslash escape
}

// key reports whether the member's key, in the object text obj, is k.
func (m *member) hasKey(obj, k string) bool {
	if !m.escaped {
		return obj[m.keyStart:m.keyEnd] == k
	}
	return gjson.Parse(obj[m.keyStart-1:m.keyEnd+1]).Str == k
}

// skipWS returns the index of the first byte at or after s[i] that is not
// JSON whitespace (for a body's bytes or a string of JSON alike).
func skipWS[T ~string | ~[]byte](s T, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index just past the JSON string that starts at
// s[i] (a '"').
func stringEnd(s string, i int) int {
	i++
	for {
		j := strings.IndexByte(s[i:], '"')
		if j < 0 {
			return len(s)
		}
		i += j
		// a quote preceded by an odd number of backslashes is escaped
		n := 0
		for k := i - 1; k >= 0 && s[k] == '\\'; k-- {
			n++
		}
		i++
		if n%2 == 0 {
			return i
		}
	}
}

// valueEnd returns the index just past the JSON value that starts at s[i].
// Containers are skipped with a depth count, strings as strings, so that
// nesting costs nothing more than length.
func valueEnd(s string, i int) int {
	if i >= len(s) {
		return len(s)
	}
	switch s[i] {
	case '"':
		return stringEnd(s, i)
	case '{', '[':
		depth := 0
		for i < len(s) {
			switch s[i] {
			case '"':
				i = stringEnd(s, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(s)
	}
	for i < len(s) {
		switch s[i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return i
		}
		i++
	}
	return i
}

// scanObject appends the members of the JSON object that starts at s[i] to
// dst, at most max of them, and returns the index just past the object
// (past the value, whatever it is, when it is not an object).
func scanObject(dst []member, s string, i, max int) ([]member, int) {
	if i >= len(s) || s[i] != '{' {
		return dst, valueEnd(s, i)
	}
	start := i
	i++
	n := 0
	for {
		i = skipWS(s, i)
		if i >= len(s) || s[i] != '"' {
			if i < len(s) && s[i] == '}' {
				return dst, i + 1
			}
			return dst, valueEnd(s, start)
		}
		ke := stringEnd(s, i)
		if ke-i < 2 {
			return dst, len(s)
		}
		ks := i + 1
		i = skipWS(s, ke)
		if i >= len(s) || s[i] != ':' {
			return dst, valueEnd(s, start)
		}
		i = skipWS(s, i+1)
		ve := valueEnd(s, i)
		if n < max {
			dst = append(dst, member{keyStart: int32(ks - start), keyEnd: int32(ke - 1 - start), valStart: int32(i - start), valEnd: int32(ve - start),
				escaped: strings.IndexByte(s[ks:ke-1], '\\') >= 0})
			n++
		}
		i = skipWS(s, ve)
		if i < len(s) && s[i] == ',' {
			i++
			continue
		}
		if i < len(s) && s[i] == '}' {
			return dst, i + 1
		}
		return dst, len(s)
	}
}

// maxIndexedMembers bounds the members one element keeps for {item.x}
// lookups; a key past them is looked up with gjson, which finds it too.
const maxIndexedMembers = 64

// listElem is an element of a JSON list: its text, its offset in the
// list's text, and its members when it is an object.
type listElem struct {
	raw     string
	off     int
	members []member
}

// listCursor steps through the elements of a JSON list: next gives where
// the next element starts, past moves on from where it ended.
type listCursor struct {
	s    string
	i    int
	done bool // the list ended, or stopped making sense
}

// openList returns a cursor on the JSON list s; false when s is not one.
func openList(s string) (listCursor, bool) {
	i := skipWS(s, 0)
	if i >= len(s) || s[i] != '[' {
		return listCursor{}, false
	}
	return listCursor{s: s, i: i + 1}, true
}

// next returns where the next element starts; false at the list's end.
func (c *listCursor) next() (int, bool) {
	if c.done {
		return 0, false
	}
	c.i = skipWS(c.s, c.i)
	if c.i >= len(c.s) || c.s[c.i] == ']' {
		return 0, false
	}
	return c.i, true
}

// past moves on from an element that ended just before s[end]: past its
// comma, or to the end when there is none.
func (c *listCursor) past(end int) {
	c.i = skipWS(c.s, end)
	if c.i < len(c.s) && c.s[c.i] == ',' {
		c.i++
	} else {
		c.done = true
	}
}

// scanListInto splits the JSON array s into its first max elements, each
// with its members, in one pass, and counts all of them, appending the
// elements to elems and their members to flat (reused buffers; nil for new
// ones). ok is false when s is not an array.
func scanListInto(elems []listElem, flat []member, s string, max int) ([]listElem, []member, int, bool) {
	c, ok := openList(s)
	if !ok {
		return elems, flat, 0, false
	}
	total := 0
	// one allocation for the members of every element, in the usual case
	if flat == nil {
		flat = make([]member, 0, min(len(s)/32+1, max*maxIndexedMembers, 4096))
	}
	if elems == nil {
		elems = make([]listElem, 0, min(len(s)/64+1, max))
	}
	for {
		start, more := c.next()
		if !more {
			return elems, flat, total, true
		}
		var end int
		if total < max {
			before := len(flat)
			flat, end = scanObject(flat, s, start, maxIndexedMembers)
			elems = append(elems, listElem{raw: s[start:end], off: start, members: flat[before:len(flat):len(flat)]})
		} else {
			end = valueEnd(s, start)
		}
		total++
		c.past(end)
	}
}

// walkList calls fn with each element of the JSON list s, in order, and
// the element's members when it is an object (the first
// maxIndexedMembers, see scanObject, read into buf, which is reused from
// element to element: fn must not keep them), until fn returns false. It
// returns buf, grown, and whether s is a list.
func walkList(s string, buf []member, fn func(raw string, members []member) bool) ([]member, bool) {
	c, ok := openList(s)
	if !ok {
		return buf, false
	}
	for {
		start, more := c.next()
		if !more {
			return buf, true
		}
		var end int
		buf, end = scanObject(buf[:0], s, start, maxIndexedMembers)
		if !fn(s[start:end], buf[:len(buf):len(buf)]) {
			return buf, true
		}
		c.past(end)
	}
}

// findPath returns where the value at a gjson path of plain keys ("a" or
// "a.b.c", see plainKey) starts in the JSON text s, walking only the members
// before it; ok is false when a key is missing, s is not made of objects
// along the way, or the path is not plain (use gjson then).
func findPath(s, path string) (start int, ok, plain bool) {
	i := skipWS(s, 0)
	for path != "" {
		key, rest, _ := strings.Cut(path, ".")
		if !plainKey(key) {
			return 0, false, false
		}
		path = rest
		if i >= len(s) || s[i] != '{' {
			// a key into a list is an index (gjson's "0"), and gjson has
			// its own ways with other values: let it decide
			return 0, false, false
		}
		i++
		found := false
		for !found {
			i = skipWS(s, i)
			if i >= len(s) || s[i] != '"' {
				return 0, false, true
			}
			ke := stringEnd(s, i)
			if ke-i < 2 {
				return 0, false, true
			}
			k := s[i+1 : ke-1]
			if strings.IndexByte(k, '\\') >= 0 {
				return 0, false, false // an escaped key: let gjson decide
			}
			i = skipWS(s, ke)
			if i >= len(s) || s[i] != ':' {
				return 0, false, true
			}
			i = skipWS(s, i+1)
			if k == key {
				found = true // gjson takes the first member of a key too
				break
			}
			i = skipWS(s, valueEnd(s, i))
			if i < len(s) && s[i] == ',' {
				i++
				continue
			}
			return 0, false, true
		}
	}
	return i, i < len(s), true
}
