package rules_test

import (
	"os"
	"strings"
	"testing"

	"github.com/authtap/authtap/rules"
)

// TestReadmePreviousExample runs the example of README.md's "What changed"
// section: the schema and the parser accept it and its inline tests pass.
func TestReadmePreviousExample(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## What changed: previous\n")
	if !ok {
		t.Fatal(`README.md has no "## What changed: previous"`)
	}
	_, block, ok := strings.Cut(section, "```yaml\n")
	block, _, ok2 := strings.Cut(block, "```\n")
	if !ok || !ok2 {
		t.Fatal("no yaml block in the section")
	}
	src := []byte("version: 1\nrules:\n" + block)
	if err := validate(schema(t), src); err != nil {
		t.Errorf("schema rejects:\n%v", err)
	}
	f, err := rules.Parse("README.md", src)
	if err != nil {
		t.Fatalf("parser rejects:\n%s\n%v", src, err)
	}
	set, err := rules.NewSet(f)
	if err != nil {
		t.Fatal(err)
	}
	results := set.RunTests()
	if len(results) != 3 {
		t.Fatalf("%d inline tests, want 3", len(results))
	}
	for _, r := range results {
		if !r.Passed {
			t.Errorf("test %q failed: %s", r.Name, r.Failure)
		}
	}
}
