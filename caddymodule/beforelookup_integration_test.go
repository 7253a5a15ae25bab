package caddymodule

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authtap/authtap/rules"
)

// lookupIntegrationRules: before-lookups of deleted rows, a slow and a
// failing one, one behind a request condition, an after-lookup with the
// credentials the response sets, and a rule on the lookups' own route (which
// the lookups, coming back through Caddy, must not trigger).
const lookupIntegrationRules = `version: 1
rules:
  - name: member-removed
    match: {method: DELETE, path: "/memberships/{id}", status: 204}
    lookup: {get: "/memberships/{path.id}", as: old, when: before, timeout: 300ms}
    emit:
      type: organization.member_removed
      subject: "{old.body.organization_id}"
      data: {organization_id: "{old.body.organization_id}", user_id: "{old.body.user_id}", role: "{old.body.role}"}
  - name: user-deleted
    match: {method: DELETE, path: "/users/{id}", status: 204}
    lookup: {get: "/users/{path.id}", as: old, when: before}
    emit: {type: user.deleted, subject: "{path.id}", data: "{old.body}"}
  - name: guarded-deleted
    match: {method: DELETE, path: "/guarded/{id}", request: {header: {X-Confirm: "yes"}}}
    lookup: {get: "/guarded/{path.id}", as: old, when: before}
    emit: {type: guarded.deleted, subject: "{path.id}", data: "{old.body}"}
  - name: password-changed
    match: {method: POST, path: /me/password}
    lookup: {get: /me, as: me, header: {Authorization: "Bearer {response.body.token}"}}
    emit: {type: user.password_changed, subject: "{me.body.id}"}
  - name: membership-read
    match: {method: GET, path: "/memberships/{id}"}
    emit: {type: membership.read, subject: "{path.id}"}
`

// rowAPI is the upstream of the lookup integration test: rows that DELETE
// removes, readable only with the caller's session cookie, and a password
// change that rotates the session.
type rowAPI struct {
	mu   sync.Mutex
	rows map[string]string
	seen []string
}

func (a *rowAPI) has(path string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, ok := a.rows[path]
	return ok
}

func (a *rowAPI) saw(req string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, s := range a.seen {
		if s == req {
			n++
		}
	}
	return n
}

func (a *rowAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.seen = append(a.seen, r.Method+" "+r.URL.Path)
	row, ok := a.rows[r.URL.Path]
	if r.Method == http.MethodDelete && ok {
		delete(a.rows, r.URL.Path)
	}
	a.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/me/password":
		if r.Header.Get("Cookie") != "session=s1" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		// the old session dies, the client gets a new one and a token
		http.SetCookie(w, &http.Cookie{Name: "session", Value: "s2", Path: "/", HttpOnly: true})
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"token":"tok_s2"}`) //nolint:errcheck
	case r.Method == http.MethodGet && r.URL.Path == "/me":
		if r.Header.Get("Cookie") != "session=s2" || r.Header.Get("Authorization") != "Bearer tok_s2" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"usr_pw"}`) //nolint:errcheck
	case r.Method == http.MethodGet && r.Header.Get("Cookie") != "session=s1":
		w.WriteHeader(http.StatusUnauthorized)
	case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/slow_"):
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	case r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/fail_"):
		w.WriteHeader(http.StatusInternalServerError)
	case !ok:
		http.NotFound(w, r)
	case r.Method == http.MethodDelete:
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, row) //nolint:errcheck
	}
}

// TestBeforeLookupsThroughCaddy runs real Caddy (in process), a private
// Redis and an httptest upstream. The lookups go back through Caddy (no
// lookup_upstream), marked with their one-time token.
func TestBeforeLookupsThroughCaddy(t *testing.T) {
	api := &rowAPI{rows: map[string]string{
		"/memberships/m_1":    `{"organization_id":"org_1","user_id":"usr_2","role":"admin"}`,
		"/memberships/slow_1": `{"organization_id":"org_slow"}`,
		"/memberships/fail_1": `{"organization_id":"org_fail"}`,
		"/users/u_1":          `{"id":"u_1","email":"ada@acme.test","password_hash":"$2y$10$abc"}`,
		"/guarded/g_1":        `{"id":"g_1"}`,
		"/guarded/g_2":        `{"id":"g_2"}`,
	}}
	rulesFile := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rulesFile, []byte(lookupIntegrationRules), 0o600); err != nil {
		t.Fatal(err)
	}
	it := startTapCaddy(t, api, map[string]any{"rules": []string{rulesFile}, "source": "lookups", "reload_interval": -1}, "")

	send := func(method, path string, h http.Header) (int, time.Duration) {
		t.Helper()
		req, _ := http.NewRequest(method, it.base+path, nil)
		req.Header.Set("Cookie", "session=s1")
		for k, v := range h {
			req.Header[k] = v
		}
		start := time.Now()
		resp, err := it.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body) //nolint:errcheck
		resp.Body.Close()
		return resp.StatusCode, time.Since(start)
	}
	event := func(typ, subject string) rules.Event {
		t.Helper()
		evs := it.waitForEvents(1, 10*time.Second, func(ev rules.Event) bool { return ev.Type == typ && ev.Subject == subject })
		if len(evs) != 1 {
			t.Fatalf("want one %s %s event in Redis, got %d", typ, subject, len(evs))
		}
		return evs[0]
	}

	t.Run("the deleted membership is in organization.member_removed", func(t *testing.T) {
		it.t = t
		if status, _ := send(http.MethodDelete, "/memberships/m_1", nil); status != http.StatusNoContent {
			t.Fatalf("DELETE answered %d", status)
		}
		if api.has("/memberships/m_1") {
			t.Fatal("the row is still there: the test would prove nothing")
		}
		ev := event("organization.member_removed", "org_1")
		if string(ev.Data) != `{"organization_id":"org_1","user_id":"usr_2","role":"admin"}` || len(ev.Source.Missing) > 0 {
			t.Errorf("event data %s, missing %v", ev.Data, ev.Source.Missing)
		}
	})

	t.Run("the deleted user is in user.deleted", func(t *testing.T) {
		it.t = t
		if status, _ := send(http.MethodDelete, "/users/u_1", nil); status != http.StatusNoContent || api.has("/users/u_1") {
			t.Fatalf("DELETE answered %d", status)
		}
		ev := event("user.deleted", "u_1")
		if string(ev.Data) != `{"id":"u_1","email":"ada@acme.test","password_hash":"[REDACTED]"}` {
			t.Errorf("event data %s", ev.Data)
		}
	})

	t.Run("a slow before-lookup holds the request no longer than its timeout", func(t *testing.T) {
		it.t = t
		status, took := send(http.MethodDelete, "/memberships/slow_1", nil)
		if status != http.StatusNoContent || took > 2*time.Second {
			t.Fatalf("DELETE answered %d after %v, want 204 within about the 300ms timeout (the lookup takes 3s)", status, took)
		}
		evs := it.waitForEvents(1, 10*time.Second, func(ev rules.Event) bool {
			return ev.Type == "organization.member_removed" && ev.Subject == ""
		})
		if len(evs) != 1 || !slices.Equal(evs[0].Source.Missing, []string{"old.body.organization_id", "old.body.user_id", "old.body.role"}) {
			t.Fatalf("events = %+v, want one listing what is missing", evs)
		}
	})

	t.Run("a failing lookup upstream fails no request", func(t *testing.T) {
		it.t = t
		if status, _ := send(http.MethodDelete, "/memberships/fail_1", nil); status != http.StatusNoContent || api.has("/memberships/fail_1") {
			t.Fatalf("DELETE answered %d", status)
		}
		if api.saw("GET /memberships/fail_1") != 1 {
			t.Fatal("the lookup never reached the upstream")
		}
		evs := it.waitForEvents(2, 10*time.Second, func(ev rules.Event) bool {
			return ev.Type == "organization.member_removed" && ev.Subject == ""
		})
		if len(evs) != 2 {
			t.Fatalf("events = %+v, want the slow and the failed one, both incomplete", evs)
		}
	})

	t.Run("no lookup for a request whose conditions do not match", func(t *testing.T) {
		it.t = t
		send(http.MethodDelete, "/guarded/g_1", nil)
		send(http.MethodDelete, "/guarded/g_2", http.Header{"X-Confirm": {"yes"}})
		ev := event("guarded.deleted", "g_2")
		if string(ev.Data) != `{"id":"g_2"}` {
			t.Errorf("event data %s", ev.Data)
		}
		if n := api.saw("GET /guarded/g_1"); n != 0 {
			t.Errorf("a lookup was sent for a request no rule accepts (%d)", n)
		}
		if n := api.saw("GET /guarded/g_2"); n != 1 {
			t.Errorf("GET /guarded/g_2 seen %d times, want 1", n)
		}
		if got := it.waitForEvents(1, 200*time.Millisecond, func(ev rules.Event) bool { return ev.Subject == "g_1" }); len(got) != 0 {
			t.Errorf("g_1 emitted %+v", got)
		}
	})

	t.Run("an after-lookup sees the rotated session and the new token", func(t *testing.T) {
		it.t = t
		if status, _ := send(http.MethodPost, "/me/password", nil); status != http.StatusOK {
			t.Fatalf("POST answered %d", status)
		}
		ev := event("user.password_changed", "usr_pw")
		if len(ev.Source.Missing) > 0 {
			t.Errorf("missing %v", ev.Source.Missing)
		}
	})

	t.Run("lookups coming back through Caddy are not observed", func(t *testing.T) {
		it.t = t
		if n := api.saw("GET /memberships/m_1"); n != 1 {
			t.Errorf("the before-lookup reached the upstream %d times, want once", n)
		}
		for _, ev := range it.pendingEvents() {
			if ev.Type == "membership.read" {
				b, _ := json.Marshal(ev)
				t.Errorf("a lookup was observed as a client request: %s", b)
			}
		}
	})
}
