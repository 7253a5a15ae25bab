package rules_test

import (
	"os"
	"strings"
	"testing"

	"github.com/authtap/authtap/rules"
)

// TestReadmeValuesExamples runs the examples of README.md's "Functions" and
// "multipart/form-data bodies" sections: the schema and the parser accept
// them, and their inline tests pass.
func TestReadmeValuesExamples(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ heading, prefix string }{
		{"### multipart/form-data bodies", "version: 1\nrules:\n"},
		{"### Functions", "version: 1\n"},
	} {
		t.Run(tc.heading, func(t *testing.T) {
			_, section, ok := strings.Cut(string(readme), "\n"+tc.heading+"\n")
			if !ok {
				t.Fatalf("README.md has no %q", tc.heading)
			}
			_, block, ok := strings.Cut(section, "```yaml\n")
			block, _, ok2 := strings.Cut(block, "```\n")
			if !ok || !ok2 {
				t.Fatalf("no yaml block under %q", tc.heading)
			}
			src := []byte(tc.prefix + block)
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
			if len(results) == 0 {
				t.Fatal("no inline tests")
			}
			for _, r := range results {
				if !r.Passed {
					t.Errorf("test %q failed: %s", r.Name, r.Failure)
				}
			}
		})
	}
}
