package rules

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// checkIndexer holds the one-pass indexer to the two passes it replaces:
// validJSON's answer, then findPath and scanListInto at the same path.
func checkIndexer(t *testing.T, s, path string, max int) {
	t.Helper()
	var keys [maxIndexPath]string
	x, ok := newListIndexer(path, max, &keys, nil, nil)
	if !ok {
		if plainPath(path) {
			t.Fatalf("%q: no indexer for a plain path", path)
		}
		return
	}
	valid := x.run([]byte(s))
	if valid != json.Valid([]byte(s)) && len(s) < 10000 {
		t.Fatalf("%q: valid %v, encoding/json says %v", s, valid, !valid)
	}
	if !valid {
		return
	}
	start, found, plain := findPath(s, path)
	switch x.find {
	case listUndecided:
		if plain {
			t.Fatalf("%q at %q: the indexer cannot tell, findPath can (found %v)", s, path, found)
		}
		return
	case listAbsent:
		if !plain {
			t.Fatalf("%q at %q: the indexer says absent, findPath leaves it to gjson", s, path)
		}
		if found {
			if _, _, _, isList := scanListInto(nil, nil, s[start:], max); isList {
				t.Fatalf("%q at %q: the indexer says absent, findPath finds a list", s, path)
			}
		}
		return
	}
	if !plain || !found || start != x.start {
		t.Fatalf("%q at %q: the indexer finds a list at %d, findPath %d (found %v, plain %v)", s, path, x.start, start, found, plain)
	}
	elems, _, total, isList := scanListInto(nil, nil, s[start:], max)
	if !isList || total != x.total || len(elems) != len(x.elems) {
		t.Fatalf("%q at %q: the indexer finds %d elements (%d kept), scanListInto %d (%d kept)", s, path, x.total, len(x.elems), total, len(elems))
	}
	for i := range elems {
		a, b := elems[i], x.elems[i]
		if a.raw != b.raw || a.off != b.off || !reflect.DeepEqual(append([]member{}, a.members...), append([]member{}, b.members...)) {
			t.Fatalf("%q at %q: element %d: indexer %+v, scanListInto %+v", s, path, i, b, a)
		}
	}
}

// plainPath reports whether a gjson path is dotted plain keys (at most
// maxIndexPath of them), the paths the indexer follows.
func plainPath(p string) bool {
	keys := strings.Split(p, ".")
	if len(keys) > maxIndexPath {
		return false
	}
	for _, k := range keys {
		if !plainKey(k) {
			return false
		}
	}
	return true
}

var indexPaths = []string{"Operations", "a", "a.b", "a.b.c", "0", "a.0", "x_y-z", "a.*", ""}

func TestJSONIndexer(t *testing.T) {
	for _, s := range []string{
		`{"schemas":["x"],"Operations":[{"method":"POST","path":"/Users","data":{"a":[1,{"b":"]"}]}},{"method":"DELETE"}]}`,
		`{"a":[]}`, ` { "a" : [ 1 , "x" , { } , [ ] , {"k":1} ] } `, `{"a":[{"k\"ey":1,"plain":"x"}]}`,
		`{"a":[{"a":1,"a":2}]}`, `{"a":1,"a":[1]}`, `{"a":{"b":[1]},"a":{"b":[2]}}`, `{"x\"":1,"a":[1]}`,
		`{"a":[1],"x\"":1}`, `{"a":{"b":{"c":[{"d":null}]}}}`, `{"a":{"c":[1]}}`, `{"a":{}}`, `{}`, `[]`, `[{"a":[1]}]`,
		`"x"`, `7`, ``, `{"a":[1]`, `{"a":[1]}x`, `{"a":[1,]}`, `{"a":"\u005d"}`, `{"a":["\u005d",{"q":"\\"}]}`,
		"{\"a\":[\n\t{ \"method\" : \"POST\" ,\n \"path\":\"/Users\" }\r\n]}", `{"b":[1],"a":{"b":2}}`, `{"a":{"b":2},"c":[1]}`,
		`{"a":[{"` + strings.Repeat(`k":1,"`, 100) + `last":2}]}`,
	} {
		for _, p := range indexPaths {
			for _, max := range []int{1, 2, MaxBatchOps} {
				checkIndexer(t, s, p, max)
			}
		}
	}
}

// TestJSONIndexerHostile: deep nesting costs no stack, a long list keeps
// only max elements, a wide element only maxIndexedMembers members.
func TestJSONIndexerHostile(t *testing.T) {
	deep := `{"a":` + strings.Repeat("[", 1<<20) + strings.Repeat("]", 1<<20) + "}"
	var keys [maxIndexPath]string
	x, _ := newListIndexer("a", 10, &keys, nil, nil)
	if !x.run([]byte(deep)) || x.find != listFound || x.total != 1 || len(x.elems[0].raw) != 1<<21-2 {
		t.Fatalf("deep list: find %d, %d elements", x.find, x.total)
	}
	many := `{"a":[` + strings.Repeat(`{"a":1,"b":2},`, 200000) + "0]}"
	x, _ = newListIndexer("a", MaxBatchOps, &keys, nil, nil)
	if !x.run([]byte(many)) || x.total != 200001 || len(x.elems) != MaxBatchOps {
		t.Fatalf("many: total %d, kept %d", x.total, len(x.elems))
	}
	wide := `{"a":[{` + strings.Repeat(`"k":1,`, 10000) + `"last":2}]}`
	x, _ = newListIndexer("a", 1, &keys, nil, nil)
	if !x.run([]byte(wide)) || len(x.elems[0].members) != maxIndexedMembers {
		t.Fatalf("wide: %d members", len(x.elems[0].members))
	}
	if _, ok := newListIndexer(strings.Repeat("a.", maxIndexPath)+"a", 1, &keys, nil, nil); ok {
		t.Fatal("a path of more than maxIndexPath keys must be read the usual way")
	}
	checkIndexer(t, `{"a":`+strings.Repeat(`{"a":`, 100000)+"1"+strings.Repeat("}", 100001), "a.a.a", 10)
}

// FuzzJSONIndexer holds the indexer to validJSON's two-pass predecessor
// (encoding/json, findPath, scanListInto) on any input.
func FuzzJSONIndexer(f *testing.F) {
	for _, s := range []string{`{"Operations":[{"method":"POST","path":"/Users","data":{"a":[1,{"b":"]"}]}}]}`, `{"a":[1,"\"",{"k\\":2}]}`, `{"a":{"b":[[],{}]}}`, `{"a":[`, `{"a\"":["\u0022"]}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 1<<16 {
			return
		}
		for _, p := range indexPaths {
			checkIndexer(t, s, p, 3)
		}
	})
}

// TestBatchIndexedAsScanned: a batch split from bodies read for the first
// time (one pass, jsonIndexer) equals the split of bodies read before
// (validJSON, then findPath and scanListInto).
func TestBatchIndexedAsScanned(t *testing.T) {
	s, envelope, _ := benchBatch(t)
	split := func(readFirst bool) Batch {
		ex := envelope()
		if readFirst {
			ex.body(false)
			ex.body(true)
		}
		b, err := s.Match(ex)[0].Batch(ex)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	one, two := split(false), split(true)
	if len(one.Subs) != 50 || len(one.Subs) != len(two.Subs) || one.Failed != two.Failed || one.Requests != two.Requests {
		t.Fatalf("indexed: %d subs, %d failed; scanned: %d subs, %d failed", len(one.Subs), one.Failed, len(two.Subs), two.Failed)
	}
	for i := range one.Subs {
		a, b := one.Subs[i], two.Subs[i]
		if a.Method != b.Method || a.Path != b.Path || a.RawQuery != b.RawQuery || a.Status != b.Status ||
			string(a.RequestBody) != string(b.RequestBody) || string(a.ResponseBody) != string(b.ResponseBody) ||
			!reflect.DeepEqual(a.ResponseHeaders(), b.ResponseHeaders()) || a.SubIndex() != b.SubIndex() {
			t.Fatalf("sub %d: indexed %+v, scanned %+v", i, a, b)
		}
	}
}
