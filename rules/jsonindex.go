package rules

import (
	"strings"
	"unsafe"
)

// This file checks a body is JSON and, in the same pass, splits the list a
// batch (or each) reads from it: a batch envelope's body is read once, not
// once to check it and again to find its operations.

// listFind is what a jsonIndexer found at its path.
type listFind uint8

const (
	// listUndecided: the path crosses what findPath leaves to gjson (a
	// root that is not an object, an escaped key, a key into a value that
	// is not an object), or the indexer did not run: read the list the
	// usual way (findPath, gjson, scanListInto).
	listUndecided listFind = iota
	// listAbsent: a key of the path is missing, or its value is not an
	// array: there is no list.
	listAbsent
	// listFound: the list was split.
	listFound
)

// maxIndexPath is the most keys a path the indexer follows may have; a
// longer one is read the usual way.
const maxIndexPath = 8

// jsonIndexer is a validJSON pass that also splits the array at a path of
// plain keys ("Operations", "batch.requests") into its first max elements,
// each with its members, exactly as findPath and scanListInto would: the
// first member of a key is the one followed, as gjson does.
type jsonIndexer struct {
	keys []string // the path; none: only check
	max  int

	// results, once run returns true
	find  listFind
	start int // the list's offset in the text
	total int // how many elements the list holds
	elems []listElem
	flat  []member

	text string // the text being read (a view of the body)
	// the walk: the deepest object on the path (its depth: 1 for the
	// root), whether its key is still sought, and whether the next value
	// there is the key's; the list's depth once it is open
	pathDepth int
	seeking   bool
	pending   bool
	listDepth int
	// watch is the deepest nesting whose values, keys and ends the walk
	// looks at (the object on the path, or the list's elements' members);
	// -1 once it is done. Deeper values are only checked.
	watch int

	// the element being split
	elemStart int
	elemObj   bool
	keep      bool // the element is among the first max
	before    int  // its first member in flat
	member    bool // a member's value is pending (flat's last)
}

// newListIndexer returns an indexer for the list at the gjson path gpath,
// using elems and flat as buffers (as scanListInto does); ok is false when
// gpath is not plain keys (see findPath), and the list must be read the
// usual way.
func newListIndexer(gpath string, max int, keyBuf *[maxIndexPath]string, elems []listElem, flat []member) (jsonIndexer, bool) {
	keys := keyBuf[:0]
	for p := gpath; ; {
		k, rest, more := strings.Cut(p, ".")
		if !plainKey(k) || len(keys) == maxIndexPath {
			return jsonIndexer{}, false
		}
		keys = append(keys, k)
		if !more {
			break
		}
		p = rest
	}
	return jsonIndexer{keys: keys, max: max, elems: elems, flat: flat}, true
}

// run reports whether b is one JSON value (RFC 8259, as encoding/json's
// Valid, without its nesting limit) and, when the indexer has a path,
// splits the list there (see find). It keeps its own stack, one byte per
// open container, where gjson.Valid recurses: 1 MiB of "[" took gjson
// 64 MiB of goroutine stack. b must not change while the elements are in
// use: they view it.
func (x *jsonIndexer) run(b []byte) bool {
	if len(x.keys) > 0 && len(b) > 0 {
		x.text = unsafe.String(unsafe.SliceData(b), len(b))
		x.watch = 0
	} else {
		x.watch = -1
	}
	var stack []byte // '{' or '[' per open container
	i := 0
	for {
		// a value
		i = skipWS(b, i)
		if i >= len(b) {
			return false
		}
		c := b[i]
		if len(stack) <= x.watch {
			x.valueStart(len(stack), i, c)
		}
		switch {
		case c == '{' || c == '[':
			i = skipWS(b, i+1)
			if i < len(b) && b[i] == c+2 {
				i++
				break
			}
			stack = append(stack, c)
			if c == '{' && !x.readKey(b, &i, len(stack)) {
				return false
			}
			continue
		case c == '"':
			if !validString(b, &i) {
				return false
			}
		default:
			if !validScalar(b, &i) {
				return false
			}
		}
		// after a value: close containers, or go on to the next member
		for {
			if len(stack) <= x.watch {
				x.valueEnd(len(stack), i)
			}
			i = skipWS(b, i)
			if len(stack) == 0 {
				return i == len(b)
			}
			if i >= len(b) {
				return false
			}
			top := stack[len(stack)-1]
			if b[i] == top+2 {
				i++
				stack = stack[:len(stack)-1]
				continue
			}
			if b[i] != ',' {
				return false
			}
			i++
			if top == '{' && !x.readKey(b, &i, len(stack)) {
				return false
			}
			break
		}
	}
}

// readKey reads `"key" :` at b[*i:], a member's key in the object that
// depth open containers hold.
func (x *jsonIndexer) readKey(b []byte, i *int, depth int) bool {
	j := skipWS(b, *i)
	ks := j
	if j >= len(b) || b[j] != '"' || !validString(b, &j) {
		return false
	}
	if depth <= x.watch {
		x.key(depth, ks+1, j-1)
	}
	j = skipWS(b, j)
	if j >= len(b) || b[j] != ':' {
		return false
	}
	*i = j + 1
	return true
}

// stop ends the walk with what it found.
func (x *jsonIndexer) stop(f listFind) {
	x.find, x.watch = f, -1
}

// valueStart sees a value start at b[i] (c), inside depth open containers.
func (x *jsonIndexer) valueStart(depth, i int, c byte) {
	switch {
	case depth == 0:
		if c != '{' {
			x.stop(listUndecided) // a path into a list or a scalar: gjson's to answer
			return
		}
		x.pathDepth, x.seeking, x.watch = 1, true, 1
	case x.pending && depth == x.pathDepth:
		x.pending = false
		if x.pathDepth < len(x.keys) {
			if c != '{' {
				x.stop(listUndecided)
				return
			}
			x.pathDepth++
			x.seeking, x.watch = true, x.pathDepth
			return
		}
		if c != '[' {
			x.stop(listAbsent) // as scanListInto: not an array, no list
			return
		}
		x.listDepth, x.start, x.watch = depth+1, i, depth+2
	case x.listDepth == 0:
	case depth == x.listDepth:
		x.elemStart, x.elemObj, x.member = i, c == '{', false
		if x.keep = x.total < x.max; x.keep {
			x.before = len(x.flat)
		}
	case depth == x.listDepth+1 && x.member:
		x.flat[len(x.flat)-1].valStart = int32(i - x.elemStart)
	}
}

// key sees an object member's key, the text between its quotes at
// b[ks:ke], in the object that depth open containers hold (its own depth).
func (x *jsonIndexer) key(depth, ks, ke int) {
	switch {
	case x.seeking && depth == x.pathDepth:
		k := x.text[ks:ke]
		if strings.IndexByte(k, '\\') >= 0 {
			x.stop(listUndecided) // an escaped key: gjson's to answer
			return
		}
		if k == x.keys[x.pathDepth-1] {
			x.seeking, x.pending = false, true // the first member of the key, as gjson
		}
	case x.listDepth != 0 && depth == x.listDepth+1 && x.keep && x.elemObj && len(x.flat)-x.before < maxIndexedMembers:
		x.flat = append(x.flat, member{keyStart: int32(ks - x.elemStart), keyEnd: int32(ke - x.elemStart),
			escaped: strings.IndexByte(x.text[ks:ke], '\\') >= 0})
		x.member = true
	}
}

// valueEnd sees a value end just before b[i], inside depth open containers.
func (x *jsonIndexer) valueEnd(depth, i int) {
	switch {
	case x.listDepth == 0:
		if x.seeking && depth == x.pathDepth-1 {
			x.stop(listAbsent) // the object on the path ended without the key
		}
	case depth == x.listDepth+1:
		if x.member {
			x.flat[len(x.flat)-1].valEnd = int32(i - x.elemStart)
			x.member = false
		}
	case depth == x.listDepth:
		if x.keep {
			x.elems = append(x.elems, listElem{raw: x.text[x.elemStart:i], off: x.elemStart - x.start,
				members: x.flat[x.before:len(x.flat):len(x.flat)]})
		}
		x.total++
	case depth == x.listDepth-1:
		x.stop(listFound)
	}
}

const keyFast = false
