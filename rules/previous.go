package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

// PreviousMissing is the entry added to an event's source.missing when its
// emit's previous could not be built although every placeholder resolved:
// the before or the after state is not a JSON object. The event is emitted
// without previous (and, with skip_unchanged, emitted all the same: nobody
// can tell that nothing changed).
const PreviousMissing = "emit.previous"

// previousSpec is an emit's previous: the old values of the fields an update
// changed, for the envelope's previous.
type previousSpec struct {
	before *dataNode
	after  *dataNode // nil: the emit's data
	// skipUnchanged: no event when both states are known and nothing changed.
	skipUnchanged bool
	// ignore: members never compared nor listed (key names at any depth, or
	// dotted paths from the root).
	ignoreKeys, ignorePaths map[string]bool
	maxIgnorePath           int
}

func (d *dec) parsePrevious(n *yaml.Node, path string, sc *scope) *previousSpec {
	p := &previousSpec{}
	d.mapping(n, path,
		field{name: "before", required: true, fn: func(v *yaml.Node, fp string) { p.before = d.parseData(v, fp, sc) }},
		field{name: "after", fn: func(v *yaml.Node, fp string) { p.after = d.parseData(v, fp, sc) }},
		field{name: "skip_unchanged", fn: func(v *yaml.Node, fp string) {
			v = resolve(v)
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" {
				d.errf(v, fp, "want true or false, got %s", kindName(v))
				return
			}
			p.skipUnchanged = v.Value == "true" || v.Value == "True" || v.Value == "TRUE"
		}},
		field{name: "ignore", fn: func(v *yaml.Node, fp string) {
			v = resolve(v)
			if v.Kind != yaml.SequenceNode {
				d.errf(v, fp, "want a list of key names or dotted paths such as [updated_at, meta.version], got %s", kindName(v))
				return
			}
			for i, c := range v.Content {
				s, ok := d.str(c, index(fp, i))
				if !ok {
					continue
				}
				if s == "" || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") {
					d.errf(c, index(fp, i), "want a key name such as updated_at or a dotted path such as meta.version, got %q", s)
					continue
				}
				if strings.Contains(s, ".") {
					if p.ignorePaths == nil {
						p.ignorePaths = map[string]bool{}
					}
					p.ignorePaths[s] = true
					p.maxIgnorePath = max(p.maxIgnorePath, len(s))
				} else {
					if p.ignoreKeys == nil {
						p.ignoreKeys = map[string]bool{}
					}
					p.ignoreKeys[s] = true
				}
			}
		}},
	)
	return p
}

func (p *previousSpec) walkData(fn func(*dataNode)) {
	if p == nil {
		return
	}
	fn(p.before)
	if p.after != nil {
		fn(p.after)
	}
}

// build renders the emit's before and after states in comparison mode and
// diffs them. It returns previous (nil when nothing changed) and whether
// both states were known: every placeholder of both resolved (those that did
// not are added to missing) and both are objects (else PreviousMissing is).
// A cut inside previous is recorded in notes, under "previous.".
func (p *previousSpec) build(e *emitSpec, ex *Exchange, params []Param, missing *[]string, notes *truncNotes, sizeHint int) ([]byte, bool) {
	rc := &renderCtx{ex: ex, params: params, policy: e.cmpPolicy}
	path := make([]string, 0, 8)
	before := p.before.render(make([]byte, 0, sizeHint), rc, path, 0)
	after := p.after
	if after == nil {
		after = e.data
	}
	afterJSON := after.render(make([]byte, 0, sizeHint), rc, path[:0], 0)
	if len(rc.missing) > 0 {
		for _, m := range rc.missing {
			addMissing(missing, m)
		}
		return nil, false
	}
	d := differPool.Get().(*differ)
	n := *notes // the differ's own copy: a pooled differ must not point into the event's render context
	d.spec, d.notes = p, &n
	prev, ok := d.diff(string(before), string(afterJSON))
	d.release()
	*notes = n
	if !ok {
		addMissing(missing, PreviousMissing)
		return nil, false
	}
	return prev, true
}

// differPool keeps differs, their trees' nodes included, for the next event;
// one that held a huge state is left to the GC instead of being kept.
var differPool = sync.Pool{New: func() any { return new(differ) }}

// maxPooledNodes is the most nodes a pooled tree keeps room for (2 MiB).
const maxPooledNodes = 1 << 16

// release drops what d refers to and puts it back in differPool.
func (d *differ) release() {
	if cap(d.a.nodes) > maxPooledNodes || cap(d.b.nodes) > maxPooledNodes {
		return
	}
	for _, t := range []*jtree{&d.a, &d.b} {
		t.text, t.nodes = "", t.nodes[:0]
		clear(t.tables)
		t.tables = t.tables[:0]
	}
	d.spec, d.notes, d.path = nil, nil, d.path[:0]
	differPool.Put(d)
}

// Comparison mode. The before and after states are rendered with the emit's
// policy (omit, redact, password-like keys, secret shapes, MaxDataDepth), as
// data is, except that a value the policy hides is not replaced by Redacted
// or Truncated but by a marker standing for it (markPrefix, a kind, a digest
// of the value), so that a changed secret is seen as changed (and written as
// Redacted in previous) without its value ever being compared in the clear
// or written.

// comparing reports whether s renders for comparison.
func (s *sanitizer) comparing() bool { return s != nil && s.cmp }

// forComparison returns a copy of s that renders for comparison.
func (s *sanitizer) forComparison() *sanitizer {
	c := *s
	c.cmp = true
	return &c
}

// appendMark appends the marker of kind for the hidden value v, unquoted.
func appendMark(dst []byte, kind byte, v []byte) []byte {
	h := sha256.Sum256(v)
	dst = append(dst, markPrefix...)
	dst = append(dst, kind)
	return hex.AppendEncode(dst, h[:markHexLen/2])
}

// appendQuotedMark appends the marker of kind for v as a JSON string.
func appendQuotedMark(dst []byte, kind byte, v []byte) []byte {
	h := sha256.Sum256(v)
	dst = append(dst, '"')
	dst = append(dst, encMarkPrefix...)
	dst = append(dst, kind)
	dst = hex.AppendEncode(dst, h[:markHexLen/2])
	return append(dst, '"')
}

// markRendered replaces what was rendered into dst from start on by the
// marker of kind for it.
func markRendered(dst []byte, start int, kind byte) []byte {
	h := sha256.Sum256(dst[start:])
	dst = append(dst[:start], '"')
	dst = append(dst, encMarkPrefix...)
	dst = append(dst, kind)
	dst = hex.AppendEncode(dst, h[:markHexLen/2])
	return append(dst, '"')
}

// plainOK reports whether str may be written as it is: it has no secret
// shape the policy redacts and, when comparing, cannot pass for a marker.
func (s *sanitizer) plainOK(str string) bool {
	if s.redactsShape(str) {
		return false
	}
	return !s.comparing() || !strings.Contains(str, markPrefix)
}

// hiddenKind is the marker kind for a string plainOK refused.
func (s *sanitizer) hiddenKind(str string) byte {
	if s.redactsShape(str) {
		return markRedacted
	}
	return markOther
}

// bytes is the value as a hidden value's marker stands for it: its JSON, or its text.
func (v value) bytes() []byte {
	if v.isJSON {
		return []byte(v.raw)
	}
	return []byte(v.text)
}
