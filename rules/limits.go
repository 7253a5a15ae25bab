package rules

import (
	"fmt"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Limits on what rule files may hold. Anyone who can write a file the
// handler's glob matches controls its content, so every quantity a file can
// grow is bounded here, checked where the file enters (Load, Parse), and a
// file past a limit is refused with an error that names the limit. A running
// Caddy keeps its last good rules when a changed file is refused.
const (
	// MaxFileSize is the largest rule file, in bytes, that Load reads or
	// Parse accepts (1 MiB; real rule files are a few KiB). Load checks the
	// size with stat before reading a byte, and reads at most this much.
	// yaml.v3 builds its node tree before authtap can count the nodes, and
	// that tree takes up to ~130 bytes per input byte, so this also bounds
	// the memory one hostile file can take while it is refused.
	MaxFileSize = 1 << 20
	// MaxFiles is how many files one Load (all patterns and globs together)
	// may read.
	MaxFiles = 256
	// MaxTotalSize is the sum of the sizes of the files of one Load.
	MaxTotalSize = 16 << 20
	// MaxNodes is how many YAML/JSON values (mappings, lists, keys and
	// scalars) one file may hold, counting an alias (*name) as all the
	// values it stands for. A "billion laughs" file of nested aliases is
	// refused here, before anything walks it.
	MaxNodes = 200_000
	// MaxAliases is how many aliases one file may resolve, counting an alias
	// inside an anchored value once per time that value is used.
	MaxAliases = 10_000
	// MaxDepth is how deeply mappings and lists may nest in one file
	// (aliases expanded); the document's top-level mapping is depth 1.
	MaxDepth = 64
	// MaxRules is how many rules one Set (all files together) may hold.
	MaxRules = 10_000
	// MaxEmits is how many events one rule may emit per exchange: each
	// is one more task in Redis for every matching request.
	MaxEmits = 32
	// MaxLookups is how many lookups one rule may declare: each is one
	// more request to the upstream for every matching exchange.
	MaxLookups = 8
	// MaxLookupHeaders is how many request headers one lookup may set
	// (lookup.header).
	MaxLookupHeaders = 16
	// MaxLookupHeaderValue is the longest value, in bytes, a lookup.header
	// template may render to; a longer one is left out (and listed in
	// source.missing), as an empty one or one with a control character is.
	MaxLookupHeaderValue = 8 << 10
	// MaxLookupSetCookies is how many of a response's Set-Cookie lines are
	// applied to the cookies an after-lookup sends; later ones are ignored.
	MaxLookupSetCookies = 64
	// MaxRegexLen is the longest regex condition, in bytes. Go's RE2
	// engine matches in linear time and refuses huge repeat counts itself;
	// this keeps each compiled program small.
	MaxRegexLen = 1024
	// MaxEventTypeLen is the longest event type, in bytes, whether written
	// in the rule or rendered from a templated type at run time.
	MaxEventTypeLen = 128
	// MaxDescriptionLen is the longest description of a rule or an emit, in
	// bytes: it is served to every subscriber in the event catalog.
	MaxDescriptionLen = 1024
	// MaxEachItems is how many events the emits with `each` may build for one
	// exchange, all rules together (a batch envelope and its sub-exchanges
	// share the count): one request of 100,000 elements must not queue
	// 100,000 tasks. The rest are not built, and are counted as refused
	// (reason too_many_items).
	MaxEachItems = 1000
	// MaxBatchOps is how many sub-exchanges one batch envelope is split into
	// (SCIM services commonly advertise maxOperations 1000). The sub-requests
	// past it are not matched, and are counted as refused (reason
	// too_many_operations).
	MaxBatchOps = 1000
	// MaxExchangeLookups is how many lookups the handler sends for one
	// exchange, all matching rules and all sub-exchanges of a batch together,
	// before-lookups (those of sub-requests included) and after-lookups
	// (MaxLookups bounds one rule). A lookup past it is not sent: its
	// placeholders are missing, as for a failed lookup. The time of all of
	// them together is bounded too: the after-lookups' by MaxLookupTimeout,
	// the before-lookups' by the handler's before_lookup_budget.
	MaxExchangeLookups = 64
	// MaxFuncNesting is how many placeholder functions may wrap one another
	// in one placeholder: {match(last_segment(request.header.Location), "…")}
	// nests two.
	MaxFuncNesting = 4
)

// Limits on what one request or response can make authtap do, beyond the
// handler's max_body (which bounds every body it reads). A value past one of
// them is not read: its placeholders are missing, the request is unaffected.
const (
	// MaxJWTClaims is the largest JWT payload, in decoded bytes, that jwt(…)
	// reads (real claims are well under 4 KiB). A longer payload segment is
	// refused on its length, before anything is decoded.
	MaxJWTClaims = 64 << 10
	// MaxMultipartParts is how many parts (fields and files together) a
	// multipart/form-data body may have to be read; one with more is not read.
	MaxMultipartParts = 1000
	// MaxMultipartHeaderSize is the largest header block of one part, in
	// bytes; a body with a larger one is not read.
	MaxMultipartHeaderSize = 8 << 10
	// MaxMultipartFieldSize is the largest text field read from a multipart
	// body, in bytes; a larger field is skipped like a file.
	MaxMultipartFieldSize = 64 << 10
)

// Limits on route shapes (RouteShape), which name the routes no rule covers
// in a metric label and in Redis: a hostile client picks the path, so a
// shape's length is bounded whatever the path is.
const (
	// MaxShapeSegments is how many segments of a path a route shape keeps;
	// the rest of a longer path becomes ShapeRest.
	MaxShapeSegments = 16
	// MaxShapeSegmentLen is the longest segment a shape keeps as literal
	// text; a longer one is collapsed to ShapeParam. With MaxShapeSegments it
	// bounds a shape to about 1 KiB.
	MaxShapeSegmentLen = 64
)

// sizeMiB renders a byte count for messages: "1 MiB", "512 KiB", "700 bytes".
func sizeMiB(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + " KiB"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// tooLargeError says a file of size bytes exceeds MaxFileSize. When data
// (the bytes read) is given, the error points at the line and column where
// the limit is crossed.
func tooLargeError(file string, size int64, data []byte) *Error {
	e := &Error{File: file, Msg: fmt.Sprintf("the file is %d bytes; rule files may be at most %s (rules.MaxFileSize)", size, sizeMiB(MaxFileSize))}
	if len(data) > MaxFileSize {
		head := data[:MaxFileSize]
		e.Line = 1 + strings.Count(string(head), "\n")
		e.Column = 1 + len(head) - (strings.LastIndexByte(string(head), '\n') + 1)
		e.Msg = fmt.Sprintf("the file is longer than %s (rules.MaxFileSize) from here on; split it into several files", sizeMiB(MaxFileSize))
	}
	return e
}

// nodeStats is what a value costs once its aliases are expanded.
type nodeStats struct {
	nodes, aliases int64
	height         int // nesting levels of mappings and lists, 0 for a scalar
}

// limitWalk measures a document with its aliases expanded, without
// expanding them: each anchored value is measured once and remembered, so
// the check is linear in the file whatever its aliases do.
type limitWalk struct {
	d     *dec
	memo  map[*yaml.Node]nodeStats
	doing map[*yaml.Node]bool // values being measured: an alias to one is a cycle
	// failed is set once a limit is reported; the walk then unwinds.
	failed bool
}

// checkLimits reports whether the document rooted at n stays within
// MaxNodes, MaxAliases and MaxDepth with its aliases expanded; if not, it
// records one error at the value where the limit is crossed.
func (d *dec) checkLimits(n *yaml.Node) bool {
	w := &limitWalk{d: d, memo: map[*yaml.Node]nodeStats{}, doing: map[*yaml.Node]bool{}}
	w.measure(n, 0)
	return !w.failed
}

// measure returns the stats of n, which sits at nesting depth depth.
func (w *limitWalk) measure(n *yaml.Node, depth int) nodeStats {
	if n == nil || w.failed {
		return nodeStats{}
	}
	if n.Kind == yaml.DocumentNode {
		var st nodeStats
		for _, c := range n.Content {
			cs := w.measure(c, depth)
			st.nodes += cs.nodes
			st.aliases += cs.aliases
			st.height = max(st.height, cs.height)
		}
		return st
	}
	if n.Kind == yaml.AliasNode {
		t := n.Alias
		if t == nil {
			return nodeStats{nodes: 1, aliases: 1}
		}
		if w.doing[t] {
			w.fail(n, "alias *%s is used inside the value it names; an alias may only repeat a value defined before and outside it", n.Value)
			return nodeStats{}
		}
		ts, ok := w.memo[t]
		if !ok {
			ts = w.measure(t, depth)
			if w.failed {
				return nodeStats{}
			}
		}
		st := nodeStats{nodes: ts.nodes, aliases: ts.aliases + 1, height: ts.height}
		if depth+st.height > MaxDepth {
			w.failDepth(n)
		}
		return st
	}
	st := nodeStats{nodes: 1}
	if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
		if depth+1 > MaxDepth {
			w.failDepth(n)
			return nodeStats{}
		}
		st.height = 1
		if n.Anchor != "" {
			w.doing[n] = true
		}
		for _, c := range n.Content {
			cs := w.measure(c, depth+1)
			if w.failed {
				return nodeStats{}
			}
			st.nodes += cs.nodes
			st.aliases += cs.aliases
			st.height = max(st.height, cs.height+1)
			// report at the value whose expansion crosses the limit (for a
			// billion-laughs file, the first alias that does)
			if st.nodes > MaxNodes {
				w.fail(c, "the file holds more than %d values with its aliases expanded (rules.MaxNodes); write the rules out, or split the file", MaxNodes)
				return nodeStats{}
			}
			if st.aliases > MaxAliases {
				w.fail(c, "the file resolves more than %d aliases (rules.MaxAliases), counting each use of an anchored value that contains aliases", MaxAliases)
				return nodeStats{}
			}
		}
		delete(w.doing, n)
	}
	if n.Anchor != "" {
		w.memo[n] = st // only anchored values are reached twice
	}
	return st
}

func (w *limitWalk) failDepth(n *yaml.Node) {
	w.fail(n, "values nest more than %d levels deep here (rules.MaxDepth), aliases expanded", MaxDepth)
}

func (w *limitWalk) fail(n *yaml.Node, format string, args ...any) {
	if w.failed {
		return
	}
	w.failed = true
	w.d.errf(n, "", format, args...)
}
