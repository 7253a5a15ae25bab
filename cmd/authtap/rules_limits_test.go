package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestRulesCheckRefusesHostileFiles(t *testing.T) {
	dir := t.TempDir()
	var bomb strings.Builder
	bomb.WriteString("version: 1\nlol:\n")
	bomb.WriteString(`  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]` + "\n")
	for c := 'b'; c <= 'i'; c++ {
		p := string(c - 1)
		fmt.Fprintf(&bomb, "  %c: &%c [*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s,*%s]\n", c, c, p, p, p, p, p, p, p, p, p)
	}
	bomb.WriteString("rules:\n  - {name: bomb, match: {method: POST, path: /x}, emit: {type: a.b, data: *i}}\n")
	deep := "version: 1\nrules:\n  - {name: deep, match: {method: POST, path: /x}, emit: {type: a.b, data: " +
		strings.Repeat(`{"a":`, 5000) + "1" + strings.Repeat("}", 5000) + "}}\n"
	huge := filepath.Join(dir, "huge.yaml")
	f, err := os.Create(huge)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(100 << 20); err != nil { // sparse: no disk space
		t.Fatal(err)
	}
	f.Close()
	for _, tc := range []struct {
		name, file, want string
	}{
		{"billion laughs", write(t, dir, "bomb.yaml", bomb.String()), `bomb\.yaml:\d+:\d+: .*rules\.MaxAliases`},
		{"deep nesting", write(t, dir, "deep.json", deep), `deep\.json:\d+:\d+: .*rules\.MaxDepth`},
		{"100 MB file", huge, `huge\.yaml: the file is 104857600 bytes; rule files may be at most 1 MiB \(rules\.MaxFileSize\)`},
		{"glob with a bomb", filepath.Join(dir, "*.yaml"), `bomb\.yaml:\d+:\d+: .*rules\.MaxAliases`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			code := run([]string{"rules", "check", tc.file}, &out, &errb)
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			if code != 1 || !regexp.MustCompile(tc.want).MatchString(errb.String()) || !strings.Contains(errb.String(), "rules are invalid") {
				t.Fatalf("exit %d, stderr:\n%.500s\nwant %s", code, errb.String(), tc.want)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 || took > 5*time.Second {
				t.Errorf("refusing took %v and %d bytes", took, alloc)
			}
		})
	}
}

func TestRulesTestRefusesHugeExchangeFile(t *testing.T) {
	dir := t.TempDir()
	rulesFile := write(t, dir, "r.yaml", packYAML)
	req := filepath.Join(dir, "req.json")
	f, err := os.Create(req)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(100 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var out, errb bytes.Buffer
	if code := run([]string{"rules", "test", rulesFile, "--request", req}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "at most 8 MiB") {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
}
