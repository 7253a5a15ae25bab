package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// The built binary reports its version and lists the authtap modules, the
// smoke test xcaddy.md tells users to run.
func TestBinaryListsAuthtapModules(t *testing.T) {
	if testing.Short() {
		t.Skip("builds Caddy (about a minute cold)")
	}
	bin := filepath.Join(t.TempDir(), "caddy")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(strings.TrimSpace(string(out)), "v2.") {
		t.Fatalf("caddy version: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "list-modules").CombinedOutput()
	if err != nil {
		t.Fatalf("caddy list-modules: %v\n%s", err, out)
	}
	listed := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		listed[strings.TrimSpace(line)] = true
	}
	want := []string{"authtap", "http.handlers.authtap"}
	// The admin handler is listed whenever this build registers it.
	for _, id := range []string{"http.handlers.authtap_admin", "http.handlers.authtap_portal"} {
		if _, err := caddy.GetModule(id); err == nil {
			want = append(want, id)
		}
	}
	for _, id := range want {
		if !listed[id] {
			t.Errorf("list-modules does not list %s:\n%s", id, out)
		}
	}
	if !listed["http.handlers.reverse_proxy"] {
		t.Errorf("list-modules lacks the standard modules:\n%s", out)
	}
}
