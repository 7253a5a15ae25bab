package rules

import (
	"encoding/json"
	"hash/maphash"
	"strconv"
	"strings"
)

// The diff behind an event's previous (emit.previous). It compares two JSON
// texts the renderer wrote in comparison mode (see sanitizer.cmp): compact,
// valid, nested at most MaxDataDepth deep, every value the policy hides
// replaced by a marker string that stands for it. Both texts are read once
// into a flat tree (jtree, no recursion: an explicit stack of at most
// MaxDataDepth+1 frames), then the trees are walked pairwise. Every node of
// the before tree is compared with at most one node of the after tree and
// written at most once, objects' members are found by key in a map (large
// objects) or by a bounded scan (small ones), so the whole diff is linear in
// the size of the two texts. The walk recurses once per nesting level, so its
// depth is bounded by MaxDataDepth+1 whatever the input: the renderer cut
// everything deeper, and the tree refuses anything deeper still.

// Markers: in comparison mode a value the policy redacts (or cuts at
// MaxDataDepth) is written as markPrefix, a kind byte and the hex of 16 bytes
// of its SHA-256, so that the two sides compare equal exactly when the hidden
// values are equal, and a marker never shows the value. A string that itself
// contains markPrefix is replaced by a markOther marker, so no value from a
// request can pass for a marker.
const (
	markPrefix    = "\x00\x01"
	encMarkPrefix = `\u0000\u0001` // markPrefix as appendQuote writes it
	markRedacted  = 'R'
	markTruncated = 'T'
	markOther     = 'U'
	markHexLen    = 32
)

// jnode is one value of a jtree, in document (pre-)order: a container's
// members follow it, and skip is the index after its last descendant.
type jnode struct {
	start, end int32 // the value's bytes in the text
	key        int32 // an object member's key starts here, its quotes included, and ends at start-1 (the ':')
	skip       int32 // the index after this node's subtree
	parent     int32 // the enclosing container, -1 for the root
	n          int32 // object: members that count (repeated keys once); array: elements
	index      int32 // object: its key table in jtree.tables, -1 when it has none
	kind       byte  // '{', '[', '"', '0' (number) or 'l' (true, false, null)
	dead       bool  // an object member whose key occurs again later: the last one counts
	dups       bool  // object: some key occurs more than once
}

// jtree is a JSON text read into jnodes.
type jtree struct {
	text  string
	nodes []jnode
	// tables are the key tables of objects of more than smallObject
	// members: open addressing, a slot holding a member's index plus one
	// (0 is empty), hashed with a per-process seed.
	tables [][]int32
}

// keySeed seeds the key tables' hash: a request cannot choose keys that collide.
var keySeed = maphash.MakeSeed()

// smallObject is how many members an object may have and still be searched
// by a scan of its keys (at most smallObject² key comparisons) instead of a map.
const smallObject = 16

// parse reads text, which must be compact JSON nested at most
// MaxDataDepth+1 deep, as the renderer writes it. It reports false for
// anything else (then no previous is built).
func (t *jtree) parse(text string) bool {
	if len(text) >= 1<<31-1 {
		return false
	}
	t.text, t.nodes, t.tables = text, t.nodes[:0], t.tables[:0]
	if want := jsonValues(text); cap(t.nodes) < want {
		t.nodes = make([]jnode, 0, want)
	}
	var stack [MaxDataDepth + 2]int32
	sp := 0
	i := 0
	var key int32
	// readKey reads `"key":` at i.
	readKey := func() bool {
		if i >= len(text) || text[i] != '"' {
			return false
		}
		j := endOfString(text, i)
		if j < 0 || j >= len(text) || text[j] != ':' {
			return false
		}
		key = int32(i)
		i = j + 1
		return true
	}
	for {
		// a value starts at i
		if i >= len(text) {
			return false
		}
		idx := int32(len(t.nodes))
		parent := int32(-1)
		if sp > 0 {
			parent = stack[sp-1]
		}
		nd := jnode{start: int32(i), key: key, parent: parent, index: -1}
		key = 0
		switch c := text[i]; {
		case c == '{' || c == '[':
			nd.kind = c
			i++
			if i < len(text) && text[i] == c+2 { // '{'+2 is '}', '['+2 is ']'
				i++
				nd.end, nd.skip = int32(i), idx+1
				t.nodes = append(t.nodes, nd)
				break
			}
			if sp == len(stack) {
				return false
			}
			t.nodes = append(t.nodes, nd)
			stack[sp] = idx
			sp++
			if c == '{' && !readKey() {
				return false
			}
			continue
		case c == '"':
			j := endOfString(text, i)
			if j < 0 {
				return false
			}
			nd.kind, i = '"', j
		default:
			j := i
			for j < len(text) && text[j] != ',' && text[j] != '}' && text[j] != ']' {
				j++
			}
			if j == i {
				return false
			}
			nd.kind = 'l'
			if c == '-' || c >= '0' && c <= '9' {
				nd.kind = '0'
			}
			i = j
		}
		if nd.kind != '{' && nd.kind != '[' {
			nd.end, nd.skip = int32(i), idx+1
			t.nodes = append(t.nodes, nd)
		}
		// after a value: close containers, or go on to the next member
		for next := false; !next; {
			if sp == 0 {
				return i == len(text)
			}
			if i >= len(text) {
				return false
			}
			top := stack[sp-1]
			tn := &t.nodes[top]
			switch text[i] {
			case ',':
				i++
				tn.n++
				if tn.kind == '{' && !readKey() {
					return false
				}
				next = true
			case tn.kind + 2:
				i++
				tn.n++
				tn.end, tn.skip = int32(i), int32(len(t.nodes))
				if tn.kind == '{' {
					t.dedupe(top)
				}
				sp--
			default:
				return false
			}
		}
	}
}

// jsonValues is how many values compact JSON text holds at most: one per
// comma, plus one per container and one for the root.
func jsonValues(text string) int {
	return strings.Count(text, ",") + strings.Count(text, "{") + strings.Count(text, "[") + 1
}

// endOfString returns the index after the string that starts at text[i], or -1.
func endOfString(text string, i int) int {
	j := i + 1
	for {
		k := strings.IndexAny(text[j:], `"\`)
		if k < 0 {
			return -1
		}
		j += k
		if text[j] == '"' {
			return j + 1
		}
		j += 2
		if j > len(text) {
			return -1
		}
	}
}

// keyOf is the key of member i, quoted as written.
func (t *jtree) keyOf(i int32) string { return t.text[t.nodes[i].key : t.nodes[i].start-1] }

// dedupe marks the members of object o whose key occurs again later in it
// (a JSON reader keeps the last one), and gives a large object its key map.
func (t *jtree) dedupe(o int32) {
	on := &t.nodes[o]
	if on.n <= smallObject {
		var members [smallObject]int32
		k := 0
		for c := o + 1; c < on.skip; c = t.nodes[c].skip {
			members[k] = c
			k++
		}
		for x := 0; x < k; x++ {
			kx := t.keyOf(members[x])
			for y := x + 1; y < k; y++ {
				if t.keyOf(members[y]) == kx {
					t.nodes[members[x]].dead = true
					on.n--
					on.dups = true
					break
				}
			}
		}
		return
	}
	size := 1
	for size < 2*int(on.n) {
		size <<= 1
	}
	tab := make([]int32, size)
	mask := uint64(size - 1)
	for c := o + 1; c < on.skip; c = t.nodes[c].skip {
		k := t.keyOf(c)
		for i := maphash.String(keySeed, k) & mask; ; i = (i + 1) & mask {
			if tab[i] == 0 {
				tab[i] = c + 1
				break
			}
			if prev := tab[i] - 1; t.keyOf(prev) == k {
				t.nodes[prev].dead = true // the later one counts
				on.n--
				on.dups = true
				tab[i] = c + 1
				break
			}
		}
	}
	on.index = int32(len(t.tables))
	t.tables = append(t.tables, tab)
}

// lookup returns the member of object o with key (quoted, as written) that
// counts, or -1.
func (t *jtree) lookup(o int32, key string) int32 {
	on := &t.nodes[o]
	if on.index >= 0 {
		tab := t.tables[on.index]
		mask := uint64(len(tab) - 1)
		for i := maphash.String(keySeed, key) & mask; tab[i] != 0; i = (i + 1) & mask {
			if c := tab[i] - 1; t.keyOf(c) == key {
				return c
			}
		}
		return -1
	}
	for c := o + 1; c < on.skip; c = t.nodes[c].skip {
		if !t.nodes[c].dead && t.keyOf(c) == key {
			return c
		}
	}
	return -1
}

// mates finds, member by member of an object x of the before tree, its mate
// in object y of the after tree: while both keep the same keys in the same
// order (neither has a duplicate key) the next member of y is the mate and
// no lookup is made; after the first mismatch every key is looked up.
type mates struct {
	t         *jtree
	y, c, end int32 // the object, the member expected next, the end of y
	lock      bool
}

func newMates(A, B *jtree, x, y int32) mates {
	return mates{t: B, y: y, c: y + 1, end: B.nodes[y].skip, lock: !A.nodes[x].dups && !B.nodes[y].dups}
}

// of returns the mate of the member with key (quoted, as written), or -1.
func (m *mates) of(key string) int32 {
	if m.lock && m.c < m.end && m.t.keyOf(m.c) == key {
		c := m.c
		m.c = m.t.nodes[c].skip
		return c
	}
	m.lock = false
	return m.t.lookup(m.y, key)
}

// differ compares a before tree with an after tree.
type differ struct {
	a, b  jtree
	spec  *previousSpec
	notes *truncNotes
	path  []byte // dotted keys from the root, kept only for ignore paths
}

// diff returns the previous object of before and after (nil when nothing
// changed) and whether both are JSON objects.
func (d *differ) diff(before, after string) ([]byte, bool) {
	if !d.a.parse(before) || !d.b.parse(after) || d.a.nodes[0].kind != '{' || d.b.nodes[0].kind != '{' {
		return nil, false
	}
	out := make([]byte, 1, 64)
	out[0] = '{'
	out = d.diffObj(out, 0, 0)
	if len(out) == 1 {
		return nil, true
	}
	return append(out, '}'), true
}

// diffObj appends the members of previous for object x of the before tree
// and object y of the after tree, each after a comma but the first when
// dst ends in '{'.
func (d *differ) diffObj(dst []byte, x, y int32) []byte {
	A, B := &d.a, &d.b
	xn, yn := &A.nodes[x], &B.nodes[y]
	ms := newMates(A, B, x, y)
	found := int32(0)
	for xc := x + 1; xc < xn.skip; xc = A.nodes[xc].skip {
		if A.nodes[xc].dead {
			continue
		}
		key := A.keyOf(xc)
		mate := ms.of(key)
		if mate >= 0 {
			found++
		}
		pathLen := len(d.path)
		if d.ignored(key) {
			d.path = d.path[:pathLen]
			continue
		}
		switch {
		case mate < 0: // removed: its old value
			dst = d.appendMember(dst, key)
			dst = d.appendValue(dst, xc)
		case A.nodes[xc].kind == '{' && B.nodes[mate].kind == '{':
			start := len(dst)
			dst = d.appendMember(dst, key)
			dst = append(dst, '{')
			open := len(dst)
			dst = d.diffObj(dst, xc, mate)
			if len(dst) == open {
				dst = dst[:start]
			} else {
				dst = append(dst, '}')
			}
		case !d.equal(xc, mate):
			dst = d.appendMember(dst, key)
			dst = d.appendValue(dst, xc)
		}
		d.path = d.path[:pathLen]
	}
	if found == yn.n {
		return dst // every member of after has its mate before
	}
	for yc := y + 1; yc < yn.skip; yc = B.nodes[yc].skip {
		if B.nodes[yc].dead {
			continue
		}
		key := B.keyOf(yc)
		if A.lookup(x, key) >= 0 {
			continue
		}
		pathLen := len(d.path)
		if !d.ignored(key) { // added: it had no value
			dst = d.appendMember(dst, key)
			dst = append(dst, "null"...)
		}
		d.path = d.path[:pathLen]
	}
	return dst
}

// appendMember writes `"key":` after a comma unless dst ends in '{'.
func (d *differ) appendMember(dst []byte, key string) []byte {
	if dst[len(dst)-1] != '{' {
		dst = append(dst, ',')
	}
	dst = append(dst, key...)
	return append(dst, ':')
}

// ignored reports whether previous.ignore names the member key (quoted) at
// the current path; it leaves the member's path in d.path when the spec has
// ignore paths.
func (d *differ) ignored(key string) bool {
	p := d.spec
	if p == nil || p.ignoreKeys == nil && p.ignorePaths == nil {
		return false
	}
	k := keyText(key)
	if p.ignoreKeys[k] {
		return true
	}
	if p.ignorePaths == nil {
		return false
	}
	if len(d.path) > 0 {
		d.path = append(d.path, '.')
	}
	d.path = append(d.path, k...)
	return len(d.path) <= p.maxIgnorePath && p.ignorePaths[string(d.path)]
}

// keyText is the text of a quoted key as written by appendQuote.
func keyText(key string) string {
	s := key[1 : len(key)-1]
	if strings.IndexByte(s, '\\') < 0 {
		return s
	}
	var out string
	if json.Unmarshal([]byte(key), &out) != nil {
		return s
	}
	return out
}

// equal reports whether node x of the before tree and node y of the after
// tree hold the same value: strings and literals as written (the renderer
// writes equal strings alike), numbers by value, arrays element by element,
// objects member by member whatever their order.
func (d *differ) equal(x, y int32) bool {
	A, B := &d.a, &d.b
	xn, yn := &A.nodes[x], &B.nodes[y]
	if xn.kind != yn.kind || xn.n != yn.n {
		return false
	}
	switch xn.kind {
	case '"', 'l':
		return A.text[xn.start:xn.end] == B.text[yn.start:yn.end]
	case '0':
		return numEqual(A.text[xn.start:xn.end], B.text[yn.start:yn.end])
	case '[':
		for xc, yc := x+1, y+1; xc < xn.skip; xc, yc = A.nodes[xc].skip, B.nodes[yc].skip {
			if !d.equal(xc, yc) {
				return false
			}
		}
		return true
	}
	ms := newMates(A, B, x, y)
	for xc := x + 1; xc < xn.skip; xc = A.nodes[xc].skip {
		if A.nodes[xc].dead {
			continue
		}
		if mate := ms.of(A.keyOf(xc)); mate < 0 || !d.equal(xc, mate) {
			return false
		}
	}
	return true // as many members on each side, each found and equal
}

// appendValue copies node x of the before tree into dst, each marker
// written as what it stands for: Truncated (noted in source.truncated, under
// "previous.") or Redacted.
func (d *differ) appendValue(dst []byte, x int32) []byte {
	A := &d.a
	xn := &A.nodes[x]
	span := A.text[xn.start:xn.end]
	if !strings.Contains(span, encMarkPrefix) {
		return append(dst, span...)
	}
	pos := xn.start
	for i := x; i < xn.skip; i++ {
		n := &A.nodes[i]
		if n.kind != '"' || !strings.Contains(A.text[n.start:n.end], encMarkPrefix) {
			continue
		}
		dst = append(dst, A.text[pos:n.start]...)
		if s := A.text[n.start:n.end]; len(s) == len(`""`)+len(encMarkPrefix)+1+markHexLen && s[1+len(encMarkPrefix)] == markTruncated {
			d.notes.add(func() string { return d.notePath(i) })
			dst = appendQuote(dst, Truncated)
		} else {
			dst = appendQuote(dst, Redacted)
		}
		pos = n.end
	}
	return append(dst, A.text[pos:xn.end]...)
}

// notePath is the path of node i of the before tree, which is its path in
// previous, for source.truncated: "previous." then object keys and array
// indices, dotted, cut to MaxTruncatedPathLen bytes.
func (d *differ) notePath(i int32) string {
	A := &d.a
	var elems []string
	for n := i; A.nodes[n].parent >= 0; n = A.nodes[n].parent {
		p := A.nodes[n].parent
		if A.nodes[p].kind == '{' {
			elems = append(elems, keyText(A.keyOf(n)))
			continue
		}
		k := 0
		for c := p + 1; c != n; c = A.nodes[c].skip {
			k++
		}
		elems = append(elems, strconv.Itoa(k))
	}
	b := []byte("previous")
	for j := len(elems) - 1; j >= 0 && len(b) <= MaxTruncatedPathLen; j-- {
		b = append(b, '.')
		b = append(b, elems[j]...)
	}
	return cutPath(b)
}

// numEqual reports whether two JSON numbers are equal as decimal numbers,
// exactly: 1, 1.0, 10e-1 and 0.1e1 are one number, 0 and -0 too, while
// 12345678901234567890 and 12345678901234567891 are two (float64 would
// merge them). A number whose exponent has more than maxExpDigits digits
// equals only the same text: comparing it would cost more than it is worth,
// and calling it changed is the safe side.
func numEqual(a, b string) bool {
	if a == b {
		return true
	}
	na, ea, oka := decimal(a)
	nb, eb, okb := decimal(b)
	if !oka || !okb {
		return false
	}
	if na == "" || nb == "" {
		return na == nb // zero only equals zero, whatever its sign and exponent
	}
	return na == nb && ea == eb
}

// maxExpDigits bounds the exponents numEqual compares by value.
const maxExpDigits = 15

// decimal splits a JSON number into its sign and significant digits, without
// leading or trailing zeros ("" for zero), and the exponent of 10 that makes
// 0.<digits> its value.
func decimal(s string) (string, int64, bool) {
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	mant, exp := s, ""
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		mant, exp = s[:i], s[i+1:]
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	all := intPart + frac
	digits := strings.TrimLeft(all, "0")
	lead := len(all) - len(digits) // zeros before the first significant digit
	digits = strings.TrimRight(digits, "0")
	if digits == "" {
		return "", 0, true
	}
	var e int64
	if exp != "" {
		sign := int64(1)
		switch exp[0] {
		case '-':
			sign, exp = -1, exp[1:]
		case '+':
			exp = exp[1:]
		}
		exp = strings.TrimLeft(exp, "0")
		if len(exp) > maxExpDigits {
			return "", 0, false
		}
		if exp != "" {
			v, err := strconv.ParseInt(exp, 10, 64)
			if err != nil {
				return "", 0, false
			}
			e = sign * v
		}
	}
	e += int64(len(intPart) - lead)
	if neg {
		digits = "-" + digits
	}
	return digits, e, true
}
