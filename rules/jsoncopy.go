package rules

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxDataDepth is the deepest nesting of objects and arrays an event's data
// may have, counting the data template's own objects and arrays. A value
// that would open one level deeper is replaced by the string Truncated and
// the event's source.truncated says where.
//
// Why 100: the worker decodes what the handler queued with encoding/json,
// which refuses input nested deeper than 10,000, and the queued payloads wrap
// the data in a few more levels (the event:fanout payload {"event":{"data":…}},
// the webhook:deliver payload {"body":{"data":…}}); 100 leaves that decoder,
// and any subscriber's, a wide margin, while no real API response comes near
// it (protobuf's default recursion limit is 100 too).
const MaxDataDepth = 100

// Truncated replaces a value nested deeper than MaxDataDepth.
const Truncated = "[TRUNCATED]"

// Bounds on source.truncated, whatever the data looks like.
const (
	// MaxTruncatedPaths is how many cut paths source.truncated lists; its count counts them all.
	MaxTruncatedPaths = 5
	// MaxTruncatedPathLen caps each listed path, in bytes; a longer one ends in "…".
	MaxTruncatedPathLen = 256
)

// truncNotes collects where data was cut, for source.truncated.
type truncNotes struct {
	count int
	paths []string
}

// add records one cut, built by path only while fewer than MaxTruncatedPaths are listed.
func (n *truncNotes) add(path func() string) {
	if n == nil {
		return
	}
	n.count++
	if len(n.paths) < MaxTruncatedPaths {
		n.paths = append(n.paths, path())
	}
}

// truncation returns the source.truncated note, nil when nothing was cut.
func (n *truncNotes) truncation() *Truncation {
	if n == nil || n.count == 0 {
		return nil
	}
	return &Truncation{MaxDepth: MaxDataDepth, Count: n.count, Paths: n.paths}
}

// frame is one open object or array of the copier.
type frame struct {
	arr     bool
	n       int // object: members written; array: index of the current element
	pathLen int // len(copier.path) when the container opened
	keyAt   int // object: where the current key starts in copier.path
}

// copier copies one JSON value in a single pass over its bytes, applying the
// policy (omit, redact, password-like keys, secret shapes) to every member at
// any depth, cutting it at MaxDataDepth and writing compact JSON with strings
// re-quoted as appendQuote does. It keeps an explicit stack of at most
// MaxDataDepth frames: its stack and its time do not grow with the input's
// nesting, and it reads each input byte a bounded number of times.
type copier struct {
	pol   *sanitizer
	notes truncNotes // the render context's, given back on release
	in    string
	pos   int
	depth int // nesting of the data template around the value
	// path is the dotted path of object keys from the root of data (array
	// indices are not in it), as omit and redact paths are written.
	path    []byte
	baseLen int // len(path) taken by the data template's keys
	frames  []frame
	scratch []byte // unescaped strings and normalized keys
}

type copyState uint8

const (
	stValue copyState = iota // a value is expected
	stAfter                  // a value just ended
	stKey                    // an object member (its key) is expected
)

// appendJSONValue copies the JSON value raw into dst as event data: base is
// the data path it is placed under, depth the nesting of the data template
// around it. Input that is not JSON is written as null.
func (rc *renderCtx) appendJSONValue(dst []byte, raw string, base []string, depth int) []byte {
	if v := strings.TrimLeft(raw, " \t\r\n"); v == "" || v[0] != '{' && v[0] != '[' {
		return rc.appendJSONScalar(dst, raw) // no path to track: the usual {response.body.user.id}
	}
	cb := copierPool.Get().(*copierBufs)
	defer cb.release(rc)
	c := rc.copier(cb, raw, base, depth)
	start := len(dst)
	dst = slices.Grow(dst, len(raw)) // the copy is about as long as its input: grow once
	out, ok := c.copy(dst)
	if !ok {
		return append(out[:start], "null"...)
	}
	return out
}

// appendJSONScalar copies a JSON string, number, true, false or null, or writes null.
func (rc *renderCtx) appendJSONScalar(dst []byte, raw string) []byte {
	c := copier{in: raw, scratch: rc.scratch}
	c.skipWS()
	var s string
	var ok bool
	isStr := c.pos < len(c.in) && c.in[c.pos] == '"'
	if isStr {
		s, ok = c.str()
	} else {
		s, ok = c.scalar()
	}
	if c.skipWS(); !ok || c.pos != len(c.in) {
		return append(dst, "null"...)
	}
	rc.scratch = c.scratch
	if isStr {
		return rc.policy.appendString(dst, s)
	}
	return append(dst, s...)
}

// copierBufs is a copier with its first buffers, taken from copierPool for
// one JSON value: rendering an event allocates no copier of its own.
type copierBufs struct {
	c      copier
	path   [96]byte
	frames [6]frame
}

var copierPool = sync.Pool{New: func() any {
	cb := new(copierBufs)
	cb.c.path, cb.c.frames = cb.path[:0], cb.frames[:0]
	return cb
}}

// maxPooledPath is the largest path buffer a pooled copier keeps: a value
// with longer keys must not make the pool hold on to its memory.
const maxPooledPath = 4 << 10

// copier returns cb's copier set up for raw, with the render context's
// scratch buffer.
func (rc *renderCtx) copier(cb *copierBufs, raw string, base []string, depth int) *copier {
	c := &cb.c
	c.pol, c.notes, c.in, c.pos, c.depth = rc.policy, rc.notes, raw, 0, depth
	c.scratch = rc.scratch
	c.path = c.path[:0]
	for i, k := range base {
		if i > 0 {
			c.path = append(c.path, '.')
		}
		c.path = append(c.path, k...)
	}
	c.baseLen = len(c.path)
	c.frames = c.frames[:0]
	return c
}

// release gives the scratch buffer back to the render context and cb back
// to the pool, holding nothing of the value or the event.
func (cb *copierBufs) release(rc *renderCtx) {
	c := &cb.c
	rc.scratch, rc.notes = c.scratch, c.notes
	c.pol, c.notes, c.in, c.scratch = nil, truncNotes{}, "", nil
	if cap(c.path) > maxPooledPath {
		c.path = cb.path[:0]
	}
	copierPool.Put(cb)
}

// copy runs the copier over its whole input. It reports false when the input
// is not one JSON value (then what it appended is to be dropped).
func (c *copier) copy(dst []byte) ([]byte, bool) {
	st := stValue
	for {
		c.skipWS()
		switch st {
		case stValue:
			if c.pos >= len(c.in) {
				return dst, false
			}
			switch ch := c.in[c.pos]; ch {
			case '{', '[':
				if c.depth+len(c.frames) >= MaxDataDepth {
					start := c.pos
					if !c.skip() {
						return dst, false
					}
					if c.pol.comparing() {
						dst = appendQuotedMark(dst, markTruncated, []byte(c.in[start:c.pos]))
					} else {
						c.notes.add(c.notePath)
						dst = appendQuote(dst, Truncated)
					}
					st = stAfter
					continue
				}
				c.pos++
				dst = append(dst, ch)
				c.frames = append(c.frames, frame{arr: ch == '[', pathLen: len(c.path)})
				c.skipWS()
				if c.pos < len(c.in) && c.in[c.pos] == ch+2 { // '{'+2 is '}', '['+2 is ']'
					c.pos++
					dst = append(dst, ch+2)
					c.frames = c.frames[:len(c.frames)-1]
					st = stAfter
				} else if ch == '{' {
					st = stKey
				}
			case '"':
				s, ok := c.str()
				if !ok {
					return dst, false
				}
				dst = c.pol.appendString(dst, s)
				st = stAfter
			default:
				lit, ok := c.scalar()
				if !ok {
					return dst, false
				}
				dst = append(dst, lit...)
				st = stAfter
			}
		case stAfter:
			if len(c.frames) == 0 {
				return dst, c.pos == len(c.in)
			}
			if c.pos >= len(c.in) {
				return dst, false
			}
			f := &c.frames[len(c.frames)-1]
			ch := c.in[c.pos]
			c.pos++
			switch {
			case ch == ',' && f.arr:
				dst = append(dst, ',')
				f.n++
				st = stValue
			case ch == ',':
				st = stKey
			case ch == ']' && f.arr, ch == '}' && !f.arr:
				dst = append(dst, ch)
				c.path = c.path[:f.pathLen]
				c.frames = c.frames[:len(c.frames)-1]
			default:
				return dst, false
			}
		case stKey:
			f := &c.frames[len(c.frames)-1]
			if c.pos >= len(c.in) || c.in[c.pos] != '"' {
				return dst, false
			}
			key, ok := c.str()
			if !ok {
				return dst, false
			}
			c.skipWS()
			if c.pos >= len(c.in) || c.in[c.pos] != ':' {
				return dst, false
			}
			c.pos++
			c.skipWS()
			c.path = c.path[:f.pathLen]
			if len(c.path) > 0 {
				c.path = append(c.path, '.')
			}
			f.keyAt = len(c.path)
			c.path = append(c.path, key...)
			act := c.pol.actionAt(key, c.path, &c.scratch)
			if act == actOmit {
				if !c.skip() {
					return dst, false
				}
				st = stAfter
				continue
			}
			if f.n > 0 {
				dst = append(dst, ',')
			}
			f.n++
			dst = appendQuote(dst, key)
			dst = append(dst, ':')
			if act == actRedact {
				if c.pol.comparing() {
					var ok bool
					if dst, ok = c.markHidden(dst); !ok {
						return dst, false
					}
					st = stAfter
					continue
				}
				dst = appendQuote(dst, Redacted)
				if !c.skip() {
					return dst, false
				}
				st = stAfter
				continue
			}
			st = stValue
		}
	}
}

// markHidden moves past the value at c.pos, which the policy redacts, and
// writes the marker standing for it (comparison mode): a string stands for
// its text, anything else for its JSON as written.
func (c *copier) markHidden(dst []byte) ([]byte, bool) {
	if c.pos < len(c.in) && c.in[c.pos] == '"' {
		s, ok := c.str()
		return appendQuotedMark(dst, markRedacted, []byte(s)), ok
	}
	start := c.pos
	if !c.skip() {
		return dst, false
	}
	return appendQuotedMark(dst, markRedacted, []byte(c.in[start:c.pos])), true
}

// skipWS moves past whitespace.
func (c *copier) skipWS() { c.pos = skipWS(c.in, c.pos) }

// str reads the string at c.pos (its opening quote). A string without escapes
// is returned as a slice of the input; otherwise it is unescaped through
// c.scratch into a new string.
func (c *copier) str() (string, bool) {
	start := c.pos + 1
	end := strings.IndexByte(c.in[start:], '"')
	if end < 0 {
		return "", false
	}
	end += start
	if strings.IndexByte(c.in[start:end], '\\') < 0 {
		c.pos = end + 1
		return c.in[start:end], true
	}
	b := c.scratch[:0]
	i := start
	for {
		j := strings.IndexAny(c.in[i:], `"\`)
		if j < 0 {
			return "", false
		}
		b = append(b, c.in[i:i+j]...)
		i += j
		if c.in[i] == '"' {
			c.pos = i + 1
			c.scratch = b
			return string(b), true
		}
		if i+1 >= len(c.in) {
			return "", false
		}
		switch e := c.in[i+1]; e {
		case '"', '\\', '/':
			b = append(b, e)
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r, ok := hex4(c.in, i+2)
			if !ok {
				return "", false
			}
			i += 4
			if utf16.IsSurrogate(r) {
				r2, ok2 := rune(0), false
				if i+7 < len(c.in) && c.in[i+2] == '\\' && c.in[i+3] == 'u' {
					r2, ok2 = hex4(c.in, i+4)
				}
				if dec := utf16.DecodeRune(r, r2); ok2 && dec != utf8.RuneError {
					r = dec
					i += 6
				} else {
					r = utf8.RuneError // a lone surrogate, as encoding/json reads it
				}
			}
			b = utf8.AppendRune(b, r)
		default:
			return "", false
		}
		i += 2
	}
}

// hex4 reads four hex digits at s[i:].
func hex4(s string, i int) (rune, bool) {
	if i+4 > len(s) {
		return 0, false
	}
	v, err := strconv.ParseUint(s[i:i+4], 16, 16)
	return rune(v), err == nil
}

// scalar reads a number, true, false or null at c.pos, checking its grammar.
func (c *copier) scalar() (string, bool) {
	start := c.pos
	s := c.in
	switch {
	case strings.HasPrefix(s[start:], "true"):
		c.pos += 4
	case strings.HasPrefix(s[start:], "false"):
		c.pos += 5
	case strings.HasPrefix(s[start:], "null"):
		c.pos += 4
	default:
		i := start
		if i < len(s) && s[i] == '-' {
			i++
		}
		switch {
		case i < len(s) && s[i] == '0':
			i++
		case i < len(s) && s[i] >= '1' && s[i] <= '9':
			i = digits(s, i)
		default:
			return "", false
		}
		if i < len(s) && s[i] == '.' {
			if j := digits(s, i+1); j > i+1 {
				i = j
			} else {
				return "", false
			}
		}
		if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
			i++
			if i < len(s) && (s[i] == '+' || s[i] == '-') {
				i++
			}
			if j := digits(s, i); j > i {
				i = j
			} else {
				return "", false
			}
		}
		c.pos = i
	}
	return s[start:c.pos], true
}

func digits(s string, i int) int {
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}

// skip moves past the value at c.pos without writing it, checking only that
// its brackets and strings are closed. It keeps a counter, not a stack.
func (c *copier) skip() bool {
	if c.pos >= len(c.in) {
		return false
	}
	switch c.in[c.pos] {
	case '"':
		return c.skipStr()
	case '{', '[':
	default:
		_, ok := c.scalar()
		return ok
	}
	depth := 0
	for c.pos < len(c.in) {
		switch c.in[c.pos] {
		case '"':
			if !c.skipStr() {
				return false
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth == 0 {
				c.pos++
				return true
			}
		}
		c.pos++
	}
	return false
}

// skipStr moves past the string at c.pos.
func (c *copier) skipStr() bool {
	i := c.pos + 1
	for {
		j := strings.IndexAny(c.in[i:], `"\`)
		if j < 0 {
			return false
		}
		i += j
		if c.in[i] == '"' {
			c.pos = i + 1
			return true
		}
		i += 2
		if i > len(c.in) {
			return false
		}
	}
}

// notePath renders the path of the value at c.pos for source.truncated: the
// data template's keys, then object keys and array indices, dotted, cut to
// MaxTruncatedPathLen bytes.
func (c *copier) notePath() string {
	b := make([]byte, 0, 64)
	b = append(b, c.path[:c.baseLen]...)
	for i, f := range c.frames {
		if len(b) > MaxTruncatedPathLen {
			break
		}
		if len(b) > 0 {
			b = append(b, '.')
		}
		if f.arr {
			b = strconv.AppendInt(b, int64(f.n), 10)
			continue
		}
		end := len(c.path)
		if i+1 < len(c.frames) {
			end = c.frames[i+1].pathLen
		}
		b = append(b, c.path[f.keyAt:end]...)
	}
	return cutPath(b)
}

// cutPath caps a note path at MaxTruncatedPathLen bytes, invalid UTF-8 (a
// key's, or a rune the cut splits) mended as the envelope writes it.
func cutPath(b []byte) string {
	if len(b) <= MaxTruncatedPathLen {
		return validText(string(b))
	}
	return validText(string(b[:MaxTruncatedPathLen])) + "…"
}

// validJSON reports whether b is one JSON value (RFC 8259, as encoding/json's
// Valid, without its nesting limit; see jsonIndexer.run).
func validJSON(b []byte) bool {
	var x jsonIndexer
	return x.run(b)
}

// validString reads the string at b[*i:] (its opening quote): no control
// characters, only JSON escapes.
func validString(b []byte, i *int) bool {
	j := *i + 1
	for {
		j = stringRun(b, j)
		if j >= len(b) {
			return false
		}
		switch b[j] {
		case '"':
			*i = j + 1
			return true
		case '\\':
			if j+1 >= len(b) {
				return false
			}
			switch b[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j += 2
			case 'u':
				if j+6 > len(b) {
					return false
				}
				for _, h := range b[j+2 : j+6] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return false
					}
				}
				j += 6
			default:
				return false
			}
		default:
			return false // a control character
		}
	}
}

// stringRun returns the index of the first byte at or after b[j] that ends
// a run of plain string bytes: a quote, a backslash or a control character
// (below 0x20); len(b) when there is none. It tests eight bytes at a time.
func stringRun(b []byte, j int) int {
	for j+8 <= len(b) {
		if m := stringStops(binary.LittleEndian.Uint64(b[j:])); m != 0 {
			return j + bits.TrailingZeros64(m)>>3
		}
		j += 8
	}
	for j < len(b) && b[j] != '"' && b[j] != '\\' && b[j] >= 0x20 {
		j++
	}
	return j
}

// Bytes of a word, for stringStops.
const (
	ones8  = 0x0101010101010101
	highs8 = 0x8080808080808080
)

// stringStops flags the bytes of w (eight string bytes, the first in the
// low byte) that are a quote, a backslash or below 0x20: the high bit of
// each such byte is set. Bytes above the lowest flagged one may be flagged
// wrongly (a borrow runs up the word), so only the lowest is exact: use
// bits.TrailingZeros64. Bytes of 0x80 and above (UTF-8) are never flagged
// before a flagged byte.
func stringStops(w uint64) uint64 {
	q := w ^ (ones8 * '"')
	bs := w ^ (ones8 * '\\')
	return ((q-ones8)&^q | (bs-ones8)&^bs | (w-ones8*0x20)&^w) & highs8
}

// validScalar reads a number, true, false or null at b[*i:].
func validScalar(b []byte, i *int) bool {
	s := b[*i:]
	if len(s) > 0 && (s[0] == 't' || s[0] == 'f' || s[0] == 'n') {
		for _, lit := range []string{"true", "false", "null"} {
			if bytes.HasPrefix(s, []byte(lit)) {
				*i += len(lit)
				return true
			}
		}
		return false
	}
	j := 0
	if j < len(s) && s[j] == '-' {
		j++
	}
	switch {
	case j < len(s) && s[j] == '0':
		j++
	case j < len(s) && s[j] >= '1' && s[j] <= '9':
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
	default:
		return false
	}
	if j < len(s) && s[j] == '.' {
		k := j + 1
		for k < len(s) && s[k] >= '0' && s[k] <= '9' {
			k++
		}
		if k == j+1 {
			return false
		}
		j = k
	}
	if j < len(s) && (s[j] == 'e' || s[j] == 'E') {
		j++
		if j < len(s) && (s[j] == '+' || s[j] == '-') {
			j++
		}
		k := j
		for k < len(s) && s[k] >= '0' && s[k] <= '9' {
			k++
		}
		if k == j {
			return false
		}
		j = k
	}
	*i += j
	return true
}
