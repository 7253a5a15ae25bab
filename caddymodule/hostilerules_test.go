package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/authtap/authtap/rules"
)

// billionLaughsRules is a 466-byte "billion laughs" rule file: nine levels
// of nine aliases, 9^9 values when expanded.
func billionLaughsRules() string {
	var b strings.Builder
	b.WriteString("version: 1\nlol:\n")
	b.WriteString(`  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]` + "\n")
	for c := 'b'; c <= 'i'; c++ {
		p := string(c - 1)
		fmt.Fprintf(&b, "  %c: &%c [*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s]\n", c, c, p, p, p, p, p, p, p, p, p)
	}
	b.WriteString("rules:\n  - {name: bomb, match: {method: POST, path: /bomb}, emit: {type: a.b, data: *i}}\n")
	return b.String()
}

// deepRules nests data 5,000 lists deep.
func deepRules() string {
	return "version: 1\nrules:\n  - {name: deep, match: {method: POST, path: /deep}, emit: {type: a.b, data: " +
		strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + "}}\n"
}

// sparseFile makes a file of size bytes that takes no disk space.
func sparseFile(t *testing.T, name string, size int64) {
	t.Helper()
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// readCounter counts the rule files the watcher opens to hash.
type readCounter struct {
	n      atomic.Int64
	mu     sync.Mutex
	byName map[string]int
}

func (c *readCounter) Load() int64 { return c.n.Load() }

func (c *readCounter) of(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byName[name]
}

func countReads(t *testing.T) *readCounter {
	c := &readCounter{byName: map[string]int{}}
	prev := openRuleFile
	openRuleFile = func(name string) (*os.File, error) {
		c.n.Add(1)
		c.mu.Lock()
		c.byName[name]++
		c.mu.Unlock()
		return prev(name)
	}
	t.Cleanup(func() { openRuleFile = prev })
	return c
}

func TestWatcherRefusesHostileFilesAndKeepsRules(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "a.yaml")
	rewrite(t, good, reloadRulesV1)
	e := newTestHandler(t, reloadRulesV1, func(h *Handler) { h.Rules = []string{filepath.Join(dir, "*.yaml")} })
	for _, tc := range []struct {
		file, want string
		write      func(name string)
	}{
		{"bomb.yaml", "rules.MaxAliases", func(n string) { rewrite(t, n, billionLaughsRules()) }},
		{"deep.yaml", "rules.MaxDepth", func(n string) { rewrite(t, n, deepRules()) }},
		{"huge.yaml", "rules.MaxFileSize", func(n string) { sparseFile(t, n, 100<<20) }},
	} {
		t.Run(tc.file, func(t *testing.T) {
			name := filepath.Join(dir, tc.file)
			tc.write(name)
			defer os.Remove(name)
			start := time.Now()
			if e.h.watch.check() {
				t.Fatal("a hostile file was put in force")
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("refusing %s took %v", tc.file, d)
			}
			logout(t, e)
			if got := lastType(e); got != "session.ended" {
				t.Fatalf("after %s the handler emitted %q; the last good rules must stay", tc.file, got)
			}
			errs := e.logs.FilterLevelExact(zapcore.ErrorLevel).All()
			problems, _ := errs[len(errs)-1].ContextMap()["problems"].([]any)
			if len(problems) != 1 || !strings.Contains(problems[0].(string), name+":") || !strings.Contains(problems[0].(string), tc.want) {
				t.Errorf("problems = %v, want one naming %s and %s", problems, name, tc.want)
			}
			if tc.file != "huge.yaml" && !strings.HasPrefix(problems[0].(string), name+":") {
				t.Errorf("problem %v has no line:col", problems[0])
			}
		})
	}
	// the handler recovers once the hostile files are gone
	rewrite(t, good, reloadRulesV2)
	if !e.h.watch.check() {
		t.Fatal("a good change after hostile files must reload")
	}
}

func TestWatcherDoesNotRereadFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "a.yaml")
	rewrite(t, good, reloadRulesV1)
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(good, old, old); err != nil {
		t.Fatal(err)
	}
	sparseFile(t, filepath.Join(dir, "huge.yaml"), 100<<20)
	reads := countReads(t)
	w := newWatcher([]string{filepath.Join(dir, "*.yaml")}, time.Second, nil, nil)
	w.prime()
	if n := reads.Load(); n != 1 {
		t.Fatalf("priming opened %d files, want 1 (the 100 MB file is never read)", n)
	}
	start := time.Now()
	for range 50 {
		if fp := w.fingerprint(); fp != w.last {
			t.Fatal("the fingerprint of unchanged files changed")
		}
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("50 polls of unchanged files opened %d files; want none", n-1)
	}
	t.Logf("50 polls of a rule file and a 100 MB file: %v", time.Since(start))

	// a write that keeps size and mtime is still seen (inode/ctime on Linux,
	// else the content of a recently written file)
	rewrite(t, good, strings.Replace(reloadRulesV1, "ended", "endeD", 1))
	if err := os.Chtimes(good, old, old); err != nil {
		t.Fatal(err)
	}
	if w.fingerprint() == w.last {
		t.Error("a same-size write with the old mtime restored went unnoticed")
	}
	// a freshly written file is hashed on every poll until it is older than racyWindow
	rewrite(t, good, reloadRulesV2)
	before := reads.Load()
	w.fingerprint()
	w.fingerprint()
	if reads.Load()-before != 2 {
		t.Errorf("a file written just now was read %d times in 2 polls, want 2", reads.Load()-before)
	}
}

func TestWatcherStopsLookingPastMaxFiles(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < rules.MaxFiles+20; i++ {
		rewrite(t, filepath.Join(dir, fmt.Sprintf("%04d.yaml", i)), reloadRulesV1)
	}
	reads := countReads(t)
	w := newWatcher([]string{filepath.Join(dir, "*.yaml")}, time.Second, nil, nil)
	w.fingerprint()
	if n := reads.Load(); n > rules.MaxFiles+1 {
		t.Errorf("the watcher read %d files; Load refuses more than %d, so it need not look past %d", n, rules.MaxFiles, rules.MaxFiles+1)
	}
}

// TestRunningCaddyRefusesHostileRuleFiles drops a billion-laughs file, a
// file nested 5,000 deep and a sparse 100 MB file into the glob a running
// Caddy watches: each change is refused and logged with file:line:col naming
// the limit, requests keep flowing, the old rules keep emitting, Caddy's heap
// stays put, the 100 MB file is never read, and a good change afterwards is
// picked up.
func TestRunningCaddyRefusesHostileRuleFiles(t *testing.T) {
	dir := t.TempDir()
	rewrite(t, filepath.Join(dir, "a.yaml"), reloadRulesV1)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	reads := countReads(t) // before Caddy's watcher goroutine starts
	it := startTapCaddy(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok") //nolint:errcheck
	}), map[string]any{"rules": []string{filepath.Join(dir, "*.yaml")}, "reload_interval": "50ms"}, logFile)

	logoutThroughCaddy := func() {
		t.Helper()
		resp, err := it.client.Post(it.base+"/api/logout", "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "ok" {
			t.Fatalf("logout through Caddy: %d %q", resp.StatusCode, b)
		}
	}
	ofType := func(typ string) func(rules.Event) bool {
		return func(ev rules.Event) bool { return ev.Type == typ }
	}
	waitForLog := func(substrs ...string) string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, _ := os.ReadFile(logFile)
			for _, line := range strings.Split(string(b), "\n") {
				ok := line != ""
				for _, s := range substrs {
					ok = ok && strings.Contains(line, s)
				}
				if ok {
					return line
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no log line with %q in:\n%s", substrs, b)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}

	logoutThroughCaddy()
	if n := len(it.waitForEvents(1, 10*time.Second, ofType("session.ended"))); n != 1 {
		t.Fatalf("%d session.ended events before the hostile files, want 1", n)
	}
	heapBefore := heap()
	emitted := 1
	for _, tc := range []struct {
		file, limit string
		write       func(name string)
	}{
		{"bomb.yaml", "rules.MaxAliases", func(n string) { rewrite(t, n, billionLaughsRules()) }},
		{"deep.yaml", "rules.MaxDepth", func(n string) { rewrite(t, n, deepRules()) }},
		{"huge.yaml", "rules.MaxFileSize", func(n string) { sparseFile(t, n, 100<<20) }},
	} {
		name := filepath.Join(dir, tc.file)
		tc.write(name)
		// logged with the file, and for the bomb and the nesting, line:col
		line := waitForLog("do not load", name+":", tc.limit)
		if tc.file != "huge.yaml" && !regexp.MustCompile(regexp.QuoteMeta(name)+`:\d+:\d+: `).MatchString(line) {
			t.Errorf("%s: the log line has no file:line:col: %s", tc.file, line)
		}
		logoutThroughCaddy()
		emitted++
		if n := len(it.waitForEvents(emitted, 10*time.Second, ofType("session.ended"))); n != emitted {
			t.Fatalf("after %s: %d session.ended events, want %d: the last good rules must keep emitting", tc.file, n, emitted)
		}
	}
	grown := int64(heap()) - int64(heapBefore)
	t.Logf("Caddy heap after three hostile rule files: %+d bytes", grown)
	if grown > 32<<20 {
		t.Errorf("Caddy's heap grew by %d bytes refusing the files", grown)
	}
	// polling every 50ms never reads the 100 MB file (the small files
	// written just now are hashed again until they are racyWindow old)
	time.Sleep(500 * time.Millisecond)
	if n := reads.of(filepath.Join(dir, "huge.yaml")); n != 0 {
		t.Errorf("the watcher opened the 100 MB file %d times", n)
	}

	for _, f := range []string{"bomb.yaml", "deep.yaml", "huge.yaml"} {
		os.Remove(filepath.Join(dir, f))
	}
	rewrite(t, filepath.Join(dir, "a.yaml"), reloadRulesV2)
	waitForLog("rules reloaded")
	logoutThroughCaddy()
	if n := len(it.waitForEvents(1, 10*time.Second, ofType("session.closed"))); n != 1 {
		t.Errorf("the good change after the hostile files was not put in force")
	}
}
