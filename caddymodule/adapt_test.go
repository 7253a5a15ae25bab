package caddymodule

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
)

var update = flag.Bool("update", false, "rewrite the expected JSON of testdata/*.caddyfiletest from the adapter's output")

// TestCaddyfileAdapt adapts every testdata/*.caddyfiletest (a Caddyfile, a
// line "----------", then the expected JSON or a substring of the expected
// error) as caddy's own adapt tests do.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt tests found: %v", err)
	}
	for _, name := range files {
		t.Run(filepath.Base(name), func(t *testing.T) {
			data, err := os.ReadFile(name)
			if err != nil {
				t.Fatal(err)
			}
			caddyfileText, expected, ok := strings.Cut(string(data), "----------")
			if !ok {
				t.Fatalf("%s: no ---------- separator", name)
			}
			caddyfileText = strings.TrimSpace(caddyfileText) + "\n"
			expected = strings.TrimSpace(expected)

			if strings.HasPrefix(expected, "{") {
				if *update {
					out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileText), nil)
					if err != nil {
						t.Fatalf("adapting: %v", err)
					}
					var pretty bytes.Buffer
					if err := json.Indent(&pretty, out, "", "\t"); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(name, []byte(caddyfileText+"----------\n"+pretty.String()+"\n"), 0o644); err != nil {
						t.Fatal(err)
					}
					return
				}
				if !caddytest.CompareAdapt(t, name, caddyfileText, "caddyfile", expected) {
					t.Errorf("adapted JSON differs from %s (run go test -run TestCaddyfileAdapt -update to accept)", name)
				}
				return
			}
			_, _, err = caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileText), nil)
			if err == nil || !strings.Contains(err.Error(), expected) {
				t.Errorf("error = %v, want one containing %q", err, expected)
			}
		})
	}
}
