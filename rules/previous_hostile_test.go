package rules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

const previousRule = `version: 1
rules:
  - name: prev
    match: {method: PATCH, path: /x}
    emit: {type: a.b, data: "{response.body}", previous: {before: "{request.body}"}}
`

// renderPrevious builds the event of previousRule, the state before being the
// request body and the state after the response body, as the handler does.
func renderPrevious(tb testing.TB, s *Set, before, after []byte) Event {
	ex := &Exchange{Method: "PATCH", Path: "/x", Status: 200,
		RequestHeader: http.Header{"Content-Type": {"application/json"}}, RequestBody: before,
		ResponseHeader: http.Header{"Content-Type": {"application/json"}}, ResponseBody: after}
	ms := s.Match(ex)
	if len(ms) != 1 {
		tb.Fatalf("%d matches", len(ms))
	}
	evs, errs := ms[0].Events(ex, EmitOptions{Source: "bench"})
	if len(evs) != 1 || len(errs) != 0 {
		tb.Fatalf("events %d errors %v", len(evs), errs)
	}
	return evs[0]
}

// wideReversed is wideBody with its keys in the opposite order and every
// value changed: every member is found through the map, and written.
func wideReversed() []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i := 99_999; i >= 0; i-- {
		fmt.Fprintf(&b, `"%05d":%d,`, i, i%10+1)
	}
	fmt.Fprintf(&b, `"pad":"%s"}`, strings.Repeat("q", 1<<20-b.Len()-10))
	return b.Bytes()
}

// smallObjects is 1 MiB of objects of smallObject keys, in one order before
// and the reverse after: every lookup scans.
func smallObjects(reverse bool) []byte {
	var b bytes.Buffer
	b.WriteString(`{"items":{`)
	for i := 0; b.Len() < 1<<20-400; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"o%d":{`, i)
		for j := 0; j < smallObject; j++ {
			k := j
			if reverse {
				k = smallObject - 1 - j
			}
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"key_%02d":%d`, k, k)
		}
		b.WriteByte('}')
	}
	b.WriteString(`}}`)
	return b.Bytes()
}

// repeatedKeys is one object whose 100,000 members share a few keys.
func repeatedKeys(n int) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i := 0; b.Len() < 1<<20-32; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"k%d":%d`, i%n, i)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// numbers is 1 MiB of equal numbers written two ways.
func numbers(form string) []byte {
	var b bytes.Buffer
	b.WriteString(`{"n":[`)
	for range 1 << 20 / 8 {
		b.WriteString(form + ",")
	}
	b.WriteString(form + `]}`)
	return b.Bytes()
}

// longNumber is one number of 1 MiB of digits, or the same number with an exponent.
func longNumber(exp bool) []byte {
	if exp {
		return []byte(fmt.Sprintf(`{"n":1e%d}`, 1<<20-12))
	}
	return []byte(`{"n":1` + strings.Repeat("0", 1<<20-12) + `}`)
}

// deepChanged is deepBody with another leaf, far below MaxDataDepth.
func deepChanged(obj bool) []byte {
	b := deepBody(100_000, obj)
	if i := bytes.LastIndexByte(b, 'm'); i > 0 {
		b[i] = 'n'
	}
	return b
}

// previousPairs are the 1 MiB before/after pairs of the hostile test and the
// benchmarks: every shape of bodies against itself (a full comparison that
// finds nothing) and the pairs built to make the diff work hardest.
var previousPairs = func() []struct {
	name          string
	before, after func() []byte
} {
	type pair = struct {
		name          string
		before, after func() []byte
	}
	var out []pair
	for _, bb := range bodies {
		out = append(out, pair{bb.name + "-same", bb.body, bb.body})
	}
	out = append(out,
		pair{"object-100k-keys-reversed-all-changed", wideBody, wideReversed},
		pair{"small-objects-reversed", func() []byte { return smallObjects(false) }, func() []byte { return smallObjects(true) }},
		pair{"repeated-keys", func() []byte { return repeatedKeys(7) }, func() []byte { return repeatedKeys(5) }},
		pair{"one-key-100k-times", func() []byte { return repeatedKeys(1) }, func() []byte { return repeatedKeys(1) }},
		pair{"equal-numbers-two-ways", func() []byte { return numbers("1.0") }, func() []byte { return numbers("10e-1") }},
		pair{"long-number-two-ways", func() []byte { return longNumber(false) }, func() []byte { return longNumber(true) }},
		pair{"array-nested-100k-leaf-changed", func() []byte { return deepBody(100_000, false) }, func() []byte { return deepChanged(false) }},
		pair{"object-nested-100k-leaf-changed", func() []byte { return deepBody(100_000, true) }, func() []byte { return deepChanged(true) }},
		pair{"flat-vs-wide", flatBody, wideBody},
	)
	return out
}()

// TestPreviousHostileDeadline: every 1 MiB pair diffs well within a deadline
// generous for a loaded box, and what comes out is valid, compact, no deeper
// than MaxDataDepth, and never shows a redacted value.
func TestPreviousHostileDeadline(t *testing.T) {
	s := mustSet(t, previousRule)
	for _, p := range previousPairs {
		t.Run(p.name, func(t *testing.T) {
			before, after := p.before(), p.after()
			start := time.Now()
			ev := renderPrevious(t, s, before, after)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %s", d)
			}
			if ev.Previous != nil {
				checkCompact(t, ev.Previous)
				if d := jsonDepth(ev.Previous); d > MaxDataDepth {
					t.Errorf("previous depth %d", d)
				}
				if bytes.Contains(ev.Previous, []byte("$2b$")) || bytes.Contains(ev.Previous, []byte(`\u0000\u0001`)) {
					t.Errorf("previous shows a hidden value or a marker")
				}
			}
			if top := bytes.TrimLeft(before, " "); top[0] != '{' { // not an object: nothing to diff
				if ev.Previous != nil || !sameStrings(ev.Source.Missing, []string{PreviousMissing}) {
					t.Errorf("previous %.40s, missing %q", ev.Previous, ev.Source.Missing)
				}
			} else if len(ev.Source.Missing) > 0 {
				t.Errorf("missing %q", ev.Source.Missing)
			}
			if !strings.HasPrefix(p.name, "long-number") { // encoding/json reads no float64 of 1e1048564
				checkEnvelope(t, ev)
			}
		})
	}
}

// TestPreviousHostileResults: what the hardest pairs must give.
func TestPreviousHostileResults(t *testing.T) {
	s := mustSet(t, previousRule)
	for _, p := range previousPairs {
		ev := renderPrevious(t, s, p.before(), p.after())
		var want string
		switch {
		case strings.HasPrefix(p.name, "array-nested"):
			continue // not objects (TestPreviousHostileDeadline)
		case strings.HasSuffix(p.name, "-same"), p.name == "small-objects-reversed", p.name == "equal-numbers-two-ways",
			p.name == "long-number-two-ways", p.name == "one-key-100k-times":
			want = "" // nothing changed
		default:
			want = "{" // something changed
		}
		switch {
		case want == "" && ev.Previous != nil:
			t.Errorf("%s: want no previous, got %.80s", p.name, ev.Previous)
		case want != "" && !bytes.HasPrefix(ev.Previous, []byte(want)):
			t.Errorf("%s: want a previous, got %.80s", p.name, ev.Previous)
		}
	}
	// the changed deep leaf is seen below the cut
	ev := renderPrevious(t, s, deepBody(100_000, true), deepChanged(true))
	if !bytes.Contains(ev.Previous, []byte(`"`+Truncated+`"`)) || ev.Source.Truncated == nil ||
		!strings.HasPrefix(ev.Source.Truncated.Paths[len(ev.Source.Truncated.Paths)-1], "previous.") {
		t.Errorf("deep leaf: previous %.80s, truncated %+v", ev.Previous, ev.Source.Truncated)
	}
	// every member of the wide object changed: previous holds every old value
	ev = renderPrevious(t, s, wideBody(), wideReversed())
	var prev map[string]json.RawMessage
	if err := json.Unmarshal(ev.Previous, &prev); err != nil || len(prev) != 100_001 || string(prev["00042"]) != "2" {
		t.Errorf("wide: %d members (%v), 00042 = %s", len(prev), err, prev["00042"])
	}
}

// TestPreviousLinear: the diff's CPU time grows linearly with its input. The
// pairs that make it work hardest are diffed at 1/8 and at full size; a
// quadratic diff would take 64 times as long, a linear one 8.
func TestPreviousLinear(t *testing.T) {
	if testing.Short() {
		t.Skip("timing")
	}
	s := mustSet(t, previousRule)
	scale := func(b []byte, n int) []byte { // the first n members of a wide object
		i := bytes.IndexByte(b, ',')
		for k := 1; k < n && i >= 0; k++ {
			j := bytes.IndexByte(b[i+1:], ',')
			if j < 0 {
				break
			}
			i += j + 1
		}
		return append(append([]byte(nil), b[:i]...), '}')
	}
	measure := func(before, after []byte) time.Duration {
		best := time.Duration(1 << 62)
		for range 3 {
			start := processCPU()
			renderPrevious(t, s, before, after)
			best = min(best, processCPU()-start)
		}
		return best
	}
	wide, rev := wideBody(), wideReversed()
	small := measure(scale(wide, 12_500), scale(rev, 12_500))
	full := measure(scale(wide, 100_000), scale(rev, 100_000))
	if small > 0 && full > 24*small {
		t.Errorf("8x the input took %.1fx the CPU time (%s vs %s): not linear", float64(full)/float64(small), full, small)
	}
}

// BenchmarkPrevious builds the event of previousRule for each 1 MiB pair
// (data and previous), beside the yardsticks BENCHMARKS.md divides by,
// measured in the same run: encoding/json's Compact over the same bytes
// (before and after) where encoding/json accepts them, and the same event
// without previous (BenchmarkWholeData's rule) over the after bytes.
func BenchmarkPrevious(b *testing.B) {
	s := mustSet(b, previousRule)
	whole := mustSet(b, wholeDataRule)
	for _, p := range previousPairs {
		before, after := p.before(), p.after()
		b.Run(p.name, func(b *testing.B) {
			b.SetBytes(int64(len(before) + len(after)))
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				renderPrevious(b, s, before, after)
			}
		})
		b.Run(p.name+"-baseline-data-only", func(b *testing.B) {
			b.SetBytes(int64(len(after)))
			defer reportCPU(b)()
			for b.Loop() {
				renderWhole(b, whole, after)
			}
		})
		if json.Valid(before) && json.Valid(after) {
			b.Run(p.name+"-baseline-json.Compact", func(b *testing.B) {
				b.SetBytes(int64(len(before) + len(after)))
				var buf bytes.Buffer
				defer reportCPU(b)()
				for b.Loop() {
					for _, body := range [][]byte{before, after} {
						buf.Reset()
						if err := json.Compact(&buf, body); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}

// BenchmarkPreviousUser is the usual case: a user.updated event whose data is
// the user the PATCH answered with (benchResponse, 0.5 KiB) and whose before
// state is a canned before-lookup of the user, one field changed. The
// baseline is the same rule without previous, in the same run.
func BenchmarkPreviousUser(b *testing.B) {
	const rule = `version: 1
rules:
  - name: user-updated
    match: {method: PATCH, path: "/api/users/{id}"}
    lookup: {get: "/api/users/{path.id}", as: old}
    emit:
      type: user.updated
      subject: "{path.id}"
      data: "{response.body.item}"
      previous: {before: "{old.body.item}", skip_unchanged: true}
  - name: baseline
    match: {method: PATCH, path: "/base/{id}"}
    emit: {type: user.updated, subject: "{path.id}", data: "{response.body.item}"}
`
	s := mustSet(b, rule)
	oldBody := []byte(strings.Replace(benchResponse, `"name":"Ann Example"`, `"name":"Ann"`, 1))
	respH := http.Header{"Content-Type": {"application/json"}}
	run := func(path, want string) func(*testing.B) {
		return func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPUus(b)()
			for b.Loop() {
				ex := &Exchange{Method: "PATCH", Path: path, Status: 200, ResponseHeader: respH, ResponseBody: []byte(benchResponse)}
				ex.SetLookup("old", LookupResult{Status: 200, Header: respH, Body: oldBody})
				ms := s.Match(ex)
				evs, _ := ms[0].Events(ex, EmitOptions{Source: "bench"})
				if len(evs) != 1 || string(evs[0].Previous) != want {
					b.Fatalf("previous %s", evs[0].Previous)
				}
			}
		}
	}
	b.Run("previous", run("/api/users/u_1", `{"name":"Ann"}`))
	b.Run("baseline-no-previous", run("/base/u_1", ""))
}

// reportCPUus is reportCPU in microseconds, for operations of a few.
func reportCPUus(b *testing.B) func() {
	start := processCPU()
	return func() {
		if d := processCPU() - start; d > 0 && b.N > 0 {
			b.ReportMetric(float64(d)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
		}
	}
}
