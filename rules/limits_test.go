package rules

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// billionLaughs is the classic nested-alias bomb (nine levels of nine),
// shaped as a rule file whose data uses the last level: a naive walk expands
// it to 9^9 scalars.
func billionLaughs() string {
	var b strings.Builder
	b.WriteString("version: 1\nanchors:\n")
	b.WriteString(`  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]` + "\n")
	for c := 'b'; c <= 'i'; c++ {
		p := string(c - 1)
		fmt.Fprintf(&b, "  %c: &%c [*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s]\n", c, c, p, p, p, p, p, p, p, p, p)
	}
	b.WriteString("rules:\n  - {name: bomb, match: {method: POST, path: /x}, emit: {type: a.b, data: *i}}\n")
	return b.String()
}

// measure runs f and returns the bytes it allocated and how long it took.
func measure(f func()) (uint64, time.Duration) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	f()
	d := time.Since(start)
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc, d
}

func TestBillionLaughsIsRefused(t *testing.T) {
	src := billionLaughs()
	if len(src) > 700 {
		t.Fatalf("the bomb is %d bytes; keep it small", len(src))
	}
	var err error
	alloc, took := measure(func() { _, err = Parse("bomb.yaml", []byte(src)) })
	t.Logf("%d-byte billion laughs: refused in %v, %d bytes allocated", len(src), took, alloc)
	// the file's third level of aliases (line 5) crosses MaxAliases first
	if err == nil || !strings.Contains(err.Error(), "bomb.yaml:") || !strings.Contains(err.Error(), "rules.MaxAliases") {
		t.Fatalf("err = %v, want a file:line:col error naming rules.MaxAliases", err)
	}
	if l := err.(ErrorList); len(l) != 1 || l[0].Line == 0 || l[0].Column == 0 {
		t.Fatalf("want one positioned error, got %#v", l)
	}
	if alloc > 8<<20 || took > 2*time.Second {
		t.Errorf("refusing the bomb took %v and %d bytes; want it cheap", took, alloc)
	}
}

func TestAliasLimits(t *testing.T) {
	rule := func(data string) string {
		return "version: 1\nrules:\n  - {name: r, match: {method: POST, path: /x}, emit: {type: a.b, data: " + data + "}}\n"
	}
	// wide: one anchored list of 1,000 scalars used 300 times is 300,000
	// values with few aliases: MaxNodes refuses it
	wide := "version: 1\nx: &w [" + strings.TrimSuffix(strings.Repeat("1,", 1000), ",") + "]\n" +
		"y: &y [" + strings.TrimSuffix(strings.Repeat("*w,", 300), ",") + "]\n" +
		"rules:\n  - {name: r, match: {method: POST, path: /x}, emit: {type: a.b, data: *y}}\n"
	// a chain of aliases 100 deep: each level nests one list deeper
	var chain strings.Builder
	chain.WriteString("version: 1\nx:\n  l0: &l0 [1]\n")
	for i := 1; i <= 100; i++ {
		fmt.Fprintf(&chain, "  l%d: &l%d [*l%d]\n", i, i, i-1)
	}
	chain.WriteString("rules:\n  - {name: r, match: {method: POST, path: /x}, emit: {type: a.b, data: *l100}}\n")
	for _, tc := range []struct {
		name, src, want string
	}{
		{"wide expansion", wide, "r.yaml:3:"},
		{"deep through aliases", chain.String(), "rules.MaxDepth"},
		{"alias cycle", rule(`&c [1, *c]`), "alias *c is used inside the value it names"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("r.yaml", []byte(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := Parse("r.yaml", []byte(wide)); !strings.Contains(err.Error(), "rules.MaxNodes") {
		t.Errorf("wide: %v, want rules.MaxNodes", err)
	}
	// a friendly file that reuses a value stays fine
	ok := "version: 1\nrules:\n" +
		"  - {name: a, match: {method: POST, path: /a}, emit: {type: a.b, data: &d {id: \"{response.body.id}\"}}}\n" +
		"  - {name: b, match: {method: POST, path: /b}, emit: {type: a.c, data: *d}}\n"
	if _, err := Parse("r.yaml", []byte(ok)); err != nil {
		t.Errorf("a reused anchor must stay allowed: %v", err)
	}
}

func TestDeepNestingIsRefused(t *testing.T) {
	const depth = 5000
	yamlSrc := "version: 1\nrules:\n  - {name: r, match: {method: POST, path: /x}, emit: {type: a.b, data: " +
		strings.Repeat("[", depth) + strings.Repeat("]", depth) + "}}\n"
	jsonSrc := `{"version": 1, "rules": [{"name": "r", "match": {"method": "POST", "path": "/x"}, "emit": {"type": "a.b", "data": ` +
		strings.Repeat(`{"a":`, depth) + "1" + strings.Repeat("}", depth) + `}}]}`
	blockSrc := "version: 1\nrules:\n  - name: r\n    match: {method: POST, path: /x}\n    emit:\n      type: a.b\n      data:\n"
	for i := 0; i < 200; i++ {
		blockSrc += strings.Repeat("  ", i+4) + "k:\n"
	}
	blockSrc += strings.Repeat("  ", 204) + "k: 1\n"
	for name, src := range map[string]string{"yaml flow": yamlSrc, "json": jsonSrc, "yaml block": blockSrc} {
		t.Run(name, func(t *testing.T) {
			_, err := Parse("deep.json", []byte(src))
			if err == nil || !strings.Contains(err.Error(), "rules.MaxDepth") || !strings.Contains(err.Error(), "deep.json:") {
				t.Fatalf("err = %.300v, want a file:line:col error naming rules.MaxDepth", err)
			}
			e := err.(ErrorList)[0]
			if e.Line == 0 || e.Column == 0 {
				t.Errorf("no position: %v", e)
			}
		})
	}
	// MaxDepth levels are fine: rules: [ {emit: {data: ...}} ] uses 4 levels
	ok := "version: 1\nrules:\n  - {name: r, match: {method: POST, path: /x}, emit: {type: a.b, data: " +
		strings.Repeat("[", MaxDepth-4) + strings.Repeat("]", MaxDepth-4) + "}}\n"
	if _, err := Parse("ok.yaml", []byte(ok)); err != nil {
		t.Errorf("nesting of exactly MaxDepth must parse: %v", err)
	}
	over := "version: 1\nrules:\n  - {name: r, match: {method: POST, path: /x}, emit: {type: a.b, data: " +
		strings.Repeat("[", MaxDepth-3) + strings.Repeat("]", MaxDepth-3) + "}}\n"
	if _, err := Parse("ok.yaml", []byte(over)); err == nil {
		t.Errorf("nesting of MaxDepth+1 must be refused")
	}
}

func TestFileSizeLimit(t *testing.T) {
	dir := t.TempDir()
	// a 100 MB file, sparse: Load must refuse it without reading it
	huge := filepath.Join(dir, "huge.yaml")
	f, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(100 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	good := filepath.Join(dir, "good.yaml")
	if err := writeFile(good, ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b}")); err != nil {
		t.Fatal(err)
	}
	for _, pattern := range []string{huge, filepath.Join(dir, "*.yaml")} {
		var err error
		alloc, took := measure(func() { _, err = Load(pattern) })
		if err == nil || !strings.Contains(err.Error(), huge+": the file is 104857600 bytes; rule files may be at most 1 MiB (rules.MaxFileSize)") {
			t.Fatalf("Load(%s) = %v", pattern, err)
		}
		if alloc > 1<<20 {
			t.Errorf("Load(%s) allocated %d bytes refusing a 100 MB file: it must not read it", pattern, alloc)
		}
		t.Logf("Load(%s): refused in %v, %d bytes allocated", pattern, took, alloc)
	}
	// handed directly to Parse, the error points where the limit is crossed
	data := []byte(ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b}") + "# " + strings.Repeat("x", MaxFileSize) + "\n")
	_, err = Parse("big.yaml", data)
	if err == nil || !strings.Contains(err.Error(), "big.yaml:6:") || !strings.Contains(err.Error(), "rules.MaxFileSize") {
		t.Errorf("Parse of %d bytes = %.200v", len(data), err)
	}
	// a file of MaxFileSize bytes is still read
	pad := ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b}")
	pad += "#" + strings.Repeat("x", MaxFileSize-len(pad)-2) + "\n"
	if err := writeFile(good, pad); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(good); err != nil {
		t.Errorf("a file of exactly MaxFileSize bytes: %v", err)
	}
}

func TestGlobFileCountLimit(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i <= MaxFiles; i++ {
		body := ruleFile(fmt.Sprintf("name: r%d\nmatch: {method: POST, path: /x%d}\nemit: {type: a.b}", i, i))
		if err := writeFile(filepath.Join(dir, fmt.Sprintf("%04d.yaml", i)), body); err != nil {
			t.Fatal(err)
		}
	}
	_, err := Load(filepath.Join(dir, "*.yaml"))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("match %d files", MaxFiles+1)) || !strings.Contains(err.Error(), "rules.MaxFiles") {
		t.Fatalf("err = %v", err)
	}
	os.Remove(filepath.Join(dir, "0000.yaml"))
	if _, err := Load(filepath.Join(dir, "*.yaml")); err != nil {
		t.Fatalf("MaxFiles files must load: %v", err)
	}
}

func TestFIFOInGlobDoesNotBlock(t *testing.T) {
	dir := t.TempDir()
	if err := writeFile(filepath.Join(dir, "a.yaml"), ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b}")); err != nil {
		t.Fatal(err)
	}
	if err := mkfifo(filepath.Join(dir, "b.yaml")); err != nil {
		t.Skip("no FIFOs here:", err)
	}
	done := make(chan error, 1)
	go func() { _, err := Load(filepath.Join(dir, "*.yaml")); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Load blocked on a FIFO")
	}
}

func TestRegexLengthLimit(t *testing.T) {
	long := strings.Repeat("a", MaxRegexLen+1)
	_, err := Parse("r.yaml", []byte(ruleFile("name: a\nmatch: {method: POST, path: /x, request: {body: {x: {regex: "+long+"}}}}\nemit: {type: a.b}")))
	if err == nil || !strings.Contains(err.Error(), "r.yaml:4:") || !strings.Contains(err.Error(), "rules.MaxRegexLen") {
		t.Fatalf("err = %.200v", err)
	}
}

func TestRuleCountLimit(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nrules:\n")
	for i := 0; i <= MaxRules; i++ {
		fmt.Fprintf(&b, "  - {name: r%d, match: {method: POST, path: /x}, emit: {type: a.b}}\n", i)
	}
	dir := t.TempDir()
	name := filepath.Join(dir, "many.yaml")
	if err := writeFile(name, b.String()); err != nil {
		t.Fatal(err)
	}
	_, err := Load(name)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("many.yaml:%d:5", MaxRules+3)) || !strings.Contains(err.Error(), "rules.MaxRules") {
		t.Fatalf("err = %.300v", err)
	}
}

func TestEmitAndLookupCountLimits(t *testing.T) {
	emits := strings.TrimSuffix(strings.Repeat("{type: a.b}, ", MaxEmits+1), ", ")
	_, err := Parse("r.yaml", []byte("version: 1\nrules:\n  - {name: r, match: {method: POST, path: /x}, emit: ["+emits+"]}\n"))
	if err == nil || !strings.Contains(err.Error(), "r.yaml:3:") || !strings.Contains(err.Error(), "rules.MaxEmits") {
		t.Errorf("err = %v", err)
	}
	var lks []string
	var data []string
	for i := 0; i <= MaxLookups; i++ {
		lks = append(lks, fmt.Sprintf("{get: /me, as: l%d}", i))
		data = append(data, fmt.Sprintf("l%d: \"{l%d.body}\"", i, i))
	}
	_, err = Parse("r.yaml", []byte("version: 1\nrules:\n  - {name: r, match: {method: POST, path: /x}, lookup: ["+strings.Join(lks, ", ")+"], emit: {type: a.b, data: {"+strings.Join(data, ", ")+"}}}\n"))
	if err == nil || !strings.Contains(err.Error(), "r.yaml:3:") || !strings.Contains(err.Error(), "rules.MaxLookups") {
		t.Errorf("err = %v", err)
	}
}
