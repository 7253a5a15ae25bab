package rules

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/tidwall/gjson"
)

// scanList is scanListInto into new buffers.
func scanList(s string, max int) (elems []listElem, total int, ok bool) {
	elems, _, total, ok = scanListInto(nil, nil, s, max)
	return elems, total, ok
}

// checkScanAgainstGJSON holds scanList to gjson on a valid JSON list: the
// same elements, and for each object the same first value per key.
func checkScanAgainstGJSON(t *testing.T, s string) {
	t.Helper()
	elems, total, ok := scanList(s, MaxBatchOps)
	list := gjson.Parse(s)
	if ok != list.IsArray() {
		t.Fatalf("%q: scanList says array=%v, gjson %v", s, ok, list.IsArray())
	}
	if !ok {
		return
	}
	var want []gjson.Result
	list.ForEach(func(_, v gjson.Result) bool { want = append(want, v); return true })
	// walkList streams the same elements with the same members
	n := 0
	if _, isList := walkList(s, nil, func(raw string, members []member) bool {
		if n < len(elems) && (raw != elems[n].raw || fmt.Sprint(members) != fmt.Sprint(elems[n].members)) {
			t.Fatalf("%q: walkList element %d is %q %v, scanList %q %v", s, n, raw, members, elems[n].raw, elems[n].members)
		}
		n++
		return true
	}); !isList || n != total {
		t.Fatalf("%q: walkList walks %d elements (list %v), scanList counts %d", s, n, isList, total)
	}
	if total != len(want) || len(elems) != min(total, MaxBatchOps) {
		t.Fatalf("%q: %d elements (%d kept), gjson finds %d", s, total, len(elems), len(want))
	}
	for i, e := range elems {
		if e.raw != want[i].Raw || s[e.off:e.off+len(e.raw)] != e.raw {
			t.Fatalf("%q: element %d is %q at %d, gjson says %q", s, i, e.raw, e.off, want[i].Raw)
		}
		var el elemCtx
		el.set(e.raw, i, i, -1)
		el.setMembers(e.members)
		if !want[i].IsObject() {
			continue
		}
		want[i].ForEach(func(k, v gjson.Result) bool {
			if !plainKey(k.Str) {
				return true
			}
			if got := el.get(k.Str); got.Raw != gjson.Get(e.raw, k.Str).Raw {
				t.Fatalf("%q: element %d key %q: %q, gjson says %q", s, i, k.Str, got.Raw, gjson.Get(e.raw, k.Str).Raw)
			}
			return true
		})
	}
}

func TestScanList(t *testing.T) {
	for _, s := range []string{
		`[]`, ` [ ] `, `[1]`, `[1,2,3]`, `["a","b\"c","d\\"]`, `[{"a":1},{"a":2,"b":[1,{"c":"]}"}]}]`,
		`[{"k\"ey":1,"plain":"x"}]`, `[{"a":1,"a":2}]`, `[null,true,false,-1.5e3,"",{},[]]`,
		"[\n\t{ \"method\" : \"POST\" ,\n \"path\":\"/Users\" }\r\n]", `[{"a":"\u005d"}]`,
		`[[[[[]]]]]`, `{"a":1}`, `"x"`, `7`, ``,
		`[{"data":{"x":[1,2,{"y":"}"}]},"method":"PATCH"}]`,
	} {
		checkScanAgainstGJSON(t, s)
	}
}

// TestScanListHostile: whatever the bytes, scanning ends, stays in bounds
// and is linear; deep nesting costs no stack.
func TestScanListHostile(t *testing.T) {
	deep := strings.Repeat("[", 1<<20) + strings.Repeat("]", 1<<20)
	if elems, total, ok := scanList(deep, 10); !ok || total != 1 || len(elems) != 1 || len(elems[0].raw) != len(deep)-2 {
		t.Errorf("deep list: %d elements, ok %v", total, ok)
	}
	objs := "[" + strings.Repeat(`{"a":`, 100000) + "1" + strings.Repeat("}", 100000) + "]"
	if _, total, ok := scanList(objs, 10); !ok || total != 1 {
		t.Errorf("deep objects: %d elements", total)
	}
	many := "[" + strings.Repeat(`{"a":1,"b":2},`, 200000) + "0]"
	elems, total, _ := scanList(many, MaxBatchOps)
	if total != 200001 || len(elems) != MaxBatchOps {
		t.Errorf("many: total %d, kept %d", total, len(elems))
	}
	wide := "[{" + strings.Repeat(`"k":1,`, 10000) + `"last":2}]`
	elems, _, _ = scanList(wide, 1)
	if len(elems[0].members) != maxIndexedMembers {
		t.Errorf("wide: %d members kept, want %d", len(elems[0].members), maxIndexedMembers)
	}
	var el elemCtx
	el.set(elems[0].raw, 0, 0, -1)
	el.setMembers(elems[0].members)
	if el.get("last").Raw != "2" {
		t.Error("a key past the members kept must still be found")
	}
	for _, s := range []string{`[`, `[{`, `[{"a`, `[{"a":`, `[{"a":1`, `[{"a":1,`, `["\`, `[{"a"1}]`, `[}`, `[,,,]`, `[{"":}]`, `[{"a":"\\"}`, `[1 2]`, `[{"a":1 "b":2}]`} {
		scanList(s, 10) // must not panic or loop
	}
}

// FuzzScanList holds the one-pass splitter to gjson on every input that
// encoding/json accepts as a list, and to termination on any other.
func FuzzScanList(f *testing.F) {
	for _, s := range []string{`[{"method":"POST","path":"/Users","data":{"a":[1,{"b":"]"}]}}]`, `[1,"\"",{"k\\":2}]`, `[[],{}]`, `[`, `["\u0022"]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 1<<16 {
			return
		}
		elems, total, _ := scanList(s, 8)
		if len(elems) > 8 || total < len(elems) {
			t.Fatalf("%d elements of %d", len(elems), total)
		}
		var v []any
		if json.Unmarshal([]byte(s), &v) == nil && validJSON([]byte(s)) {
			checkScanAgainstGJSON(t, s)
		}
		if validJSON([]byte(s)) {
			for _, p := range []string{"a", "a.b", "Operations", "0", "a.0", "x_y-z"} {
				checkFindPath(t, s, p)
			}
		}
	})
}

// checkFindPath holds findPath to gjson: where it finds a value, gjson finds
// the same one; where it says the path is missing, so does gjson.
func checkFindPath(t *testing.T, s, path string) {
	t.Helper()
	start, found, plain := findPath(s, path)
	if !plain {
		return
	}
	want := gjson.Get(s, path)
	switch {
	case found && !strings.HasPrefix(s[start:], want.Raw):
		t.Fatalf("%q at %q: findPath finds %.40q, gjson %q", s, path, s[start:], want.Raw)
	case found && want.Raw == "":
		t.Fatalf("%q at %q: findPath finds %.40q, gjson nothing", s, path, s[start:])
	case !found && want.Exists():
		t.Fatalf("%q at %q: findPath finds nothing, gjson %q", s, path, want.Raw)
	}
}

func TestFindPath(t *testing.T) {
	for _, tc := range []struct{ s, path string }{
		{`{"schemas":["x"],"Operations":[1,2]}`, "Operations"},
		{`{"a":{"b":{"c":[1]}}}`, "a.b.c"}, {`{"a":{"b":1}}`, "a.c"}, {`{"a":1,"a":2}`, "a"},
		{`[{"a":1}]`, "0"}, {`{"a":[{"b":1}]}`, "a.0.b"}, {` { "a" : [ ] } `, "a"}, {`{"a\"b":1,"a":2}`, "a"},
		{`{"x":"}","a":3}`, "a"}, {`{"x":{"a":9},"a":3}`, "a"}, {`7`, "a"}, {`{`, "a"}, {`{"a"`, "a"},
	} {
		checkFindPath(t, tc.s, tc.path)
	}
}
