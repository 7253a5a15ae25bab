package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The README is run, not just read: its first lines are the two commands of
// the set-up contract, CI calls exactly the test one, and its rule example is
// valid with passing inline tests.

func readme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestReadmeStartsWithTheTwoCommands(t *testing.T) {
	s := readme(t)
	first := regexp.MustCompile("(?s)^# authtap\n\n```sh\n(.*?)\n```").FindStringSubmatch(s)
	if first == nil {
		t.Fatal("README must begin with a sh block holding the run and test commands")
	}
	lines := strings.Split(first[1], "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "go run ./cmd/authtap demo") || !strings.HasPrefix(lines[1], "./test.sh") {
		t.Fatalf("README's first commands: %q", lines)
	}
	ci, err := os.ReadFile("../../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^exec \./test\.sh$`).Match(ci) {
		t.Fatalf(".ci/run must call exactly the README's test command (./test.sh):\n%s", ci)
	}
}

func TestReadmeRuleExample(t *testing.T) {
	blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(readme(t), -1)
	if len(blocks) == 0 {
		t.Fatal("README has no yaml rule example")
	}
	path := filepath.Join(t.TempDir(), "readme.yaml")
	if err := os.WriteFile(path, []byte(blocks[0][1]), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run([]string{"rules", "check", path}, &out, &errb); code != 0 {
		t.Fatalf("the README's rule example fails `authtap rules check`:\n%s%s", out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "1 passed, 0 failed") {
		t.Fatalf("output:\n%s", out.String())
	}
}
