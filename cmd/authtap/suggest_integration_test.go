package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/authtap/authtap/internal/redistest"
)

// suggestCaddyfile: authtap in front of the upstream and of authtap_admin
// (basic_auth), rules from a directory, reloaded quickly. Arguments: port,
// storage dir, Redis URL, spool dir, rules glob, upstream, bcrypt hash.
const suggestCaddyfile = `{
	admin off
	persist_config off
	auto_https off
	http_port %[1]d
	storage file_system %[2]s
	log {
		level ERROR
	}
	authtap {
		redis %[3]s
		spool_dir %[4]s
	}
}
http://127.0.0.1:%[1]d {
	authtap {
		rules %[5]s
		reload_interval 100ms
	}
	handle /metrics {
		metrics
	}
	handle_path /_authtap/* {
		basic_auth {
			admin %[7]s
		}
		authtap_admin
	}
	reverse_proxy %[6]s
}
`

// TestSuggestEndToEnd: real Caddy, Redis and upstream. Mutations no rule
// covers are counted and sampled; `rules suggest` drafts rules from GET
// /unmatched that `rules check` accepts; loaded into the running Caddy, the
// draft turns the same mutations into events, and they are no longer
// counted as unmatched.
func TestSuggestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: runs Caddy, Redis and an upstream")
	}
	const password, bearer = "hunter2-correct-horse", "tok_live_9f8e7d6c5b4a3928"
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		switch {
		case r.Method == "PUT" && strings.HasSuffix(r.URL.Path, "/password"):
			w.WriteHeader(204)
		case r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/members"):
			w.WriteHeader(201)
			org := strings.Split(r.URL.Path, "/")[3]
			fmt.Fprintf(w, `{"member":{"id":"m_%d","org_id":%q,"role":"admin","invite_token":"inv_secret_4711"}}`, time.Now().UnixNano()%1000, org)
		case r.Method == "DELETE":
			w.WriteHeader(204)
		case r.Method == "POST" && r.URL.Path == "/api/seed":
			_, _ = io.WriteString(w, `{"ok":true}`)
		default:
			w.WriteHeader(404)
		}
	}))
	defer up.Close()
	rs := redistest.Start(t)
	dir := t.TempDir()
	rulesDir := filepath.Join(dir, "rules")
	if err := os.Mkdir(rulesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// a rule for something else, so that the other routes are uncovered
	write(t, rulesDir, "base.yaml", "version: 1\nrules:\n  - name: seeded\n    match: {method: POST, path: /api/seed}\n    emit: {type: seed.done}\n")
	pass := "correct horse"
	hash, _ := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	text := fmt.Sprintf(suggestCaddyfile, port, filepath.Join(dir, "storage"), rs.URL, filepath.Join(dir, "spool"),
		filepath.Join(rulesDir, "*.yaml"), strings.TrimPrefix(up.URL, "http://"), hash)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), nil)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading: %v", err)
	}
	defer func() { _ = caddy.Stop() }()
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	send := func(method, path, body string) int {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+bearer)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode
	}
	metric := func(series string) float64 {
		res, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, series+" "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		return 0
	}
	traffic := func() {
		for i := range 3 {
			send("PUT", fmt.Sprintf("/api/users/u_%d/password", i), fmt.Sprintf(`{"current_password":%q,"new_password":"n-%d"}`, password, i))
			send("POST", fmt.Sprintf("/api/orgs/org_%d/members", i), `{"email":"a@x.test","role":"admin"}`)
		}
		send("DELETE", "/api/orgs/org_1/members/m_77", "")
	}
	traffic()

	api := "http://admin:" + url.PathEscape(pass) + "@127.0.0.1:" + strconv.Itoa(port) + "/_authtap"
	// wait until the counts (reported every 2s) and samples are listed
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, _ := newAPIClient("test", api, "")
		var l unmatchedList
		err := c.do("GET", "/unmatched", nil, &l)
		done := err == nil && len(l.Unmatched) == 3
		for _, sh := range l.Unmatched {
			done = done && len(sh.Samples) >= 1 && sh.Count >= 1
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /unmatched: %v %+v", err, l.Unmatched)
		}
		time.Sleep(100 * time.Millisecond)
	}

	draft := filepath.Join(dir, "draft.yaml")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"rules", "suggest", "--api", api, "-o", draft}, &stdout, &stderr); code != 0 {
		t.Fatalf("rules suggest: exit %d: %s", code, stderr.String())
	}
	b, _ := os.ReadFile(draft)
	for _, secret := range []string{password, bearer, "inv_secret_4711"} {
		if strings.Contains(string(b), secret) {
			t.Errorf("the draft holds %q", secret)
		}
	}
	stdout.Reset()
	if code := run([]string{"rules", "check", draft}, &stdout, &stderr); code != 0 {
		t.Fatalf("rules check of the draft: exit %d\n%s\n%s", code, stdout.String(), b)
	}
	if !strings.Contains(stdout.String(), "3 rules in 1 files") || strings.Contains(stdout.String(), "tests: 0 passed") {
		t.Errorf("rules check:\n%s", stdout.String())
	}
	t.Logf("draft:\n%s", b)

	// put the draft in force: the same traffic now emits events and is covered
	before := metric(`authtap_unmatched_total{method="PUT",route="/api/users/{id}/password"}`)
	if before != 3 {
		t.Errorf("PUT password counted %v before the draft", before)
	}
	if err := os.WriteFile(filepath.Join(rulesDir, "suggested.yaml"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for metric(`authtap_events_matched_total{rule="put-api-users-user-id-password",type="user.password_updated"}`) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the drafted rules never matched")
		}
		time.Sleep(200 * time.Millisecond)
		send("PUT", "/api/users/u_9/password", `{"new_password":"x"}`)
	}
	traffic()
	if after := metric(`authtap_unmatched_total{method="PUT",route="/api/users/{id}/password"}`); after != before {
		t.Errorf("PUT password still counted as unmatched: %v → %v", before, after)
	}
	if n := metric(`authtap_events_matched_total{rule="post-api-orgs-org-id-members",type="member.created"}`); n < 3 {
		t.Errorf("member.created matched %v times", n)
	}
}
