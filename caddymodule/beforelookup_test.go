package caddymodule

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// beforeRules exercise before-lookups and lookup headers in the handler.
const beforeRules = `version: 1
rules:
  - name: member-removed
    match: {method: DELETE, path: "/memberships/{id}", status: 204, request: {header: {X-Admin: exists}}}
    lookup: {get: "/memberships/{path.id}", as: old, when: before, timeout: 300ms}
    emit:
      type: organization.member_removed
      subject: "{old.body.organization_id}"
      data: {organization_id: "{old.body.organization_id}", user_id: "{old.body.user_id}"}
  - name: membership-audited
    match: {method: DELETE, path: "/memberships/{id}", status: 204, request: {header: {X-Admin: exists}}}
    lookup: {get: "/memberships/{path.id}", as: row, when: before}
    emit: {type: membership.audited, data: "{row.body.role}"}
  - name: user-deleted
    match: {method: DELETE, path: "/users/{id}", request: {body: {confirm: true}}}
    lookup: {get: "/users/{path.id}", as: old, when: before, timeout: 1s}
    emit: {type: user.deleted, subject: "{path.id}", data: "{old.body}"}
  - name: password-changed
    match: {method: POST, path: /me/password}
    lookup:
      - {get: /me, as: me, header: {Authorization: "Bearer {response.body.token}"}}
      - {get: /me/sessions, as: sessions}
    emit: {type: user.password_changed, subject: "{me.body.id}", data: {sessions: "{sessions.body.count}"}}
`

// rowStore is an upstream with rows that DELETE removes, and a lookup log.
type rowStore struct {
	mu      sync.Mutex
	rows    map[string]string
	seen    []string // "METHOD path" of every request, in order
	headers []http.Header
	delay   time.Duration
	fail    int
}

func (s *rowStore) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.seen = append(s.seen, r.Method+" "+r.URL.RequestURI())
	s.headers = append(s.headers, r.Header.Clone())
	delay, fail := s.delay, s.fail
	row, ok := s.rows[r.URL.Path]
	if r.Method == http.MethodDelete {
		delete(s.rows, r.URL.Path)
	}
	s.mu.Unlock()
	if delay > 0 && r.Method == http.MethodGet {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	}
	switch {
	case fail != 0 && r.Method == http.MethodGet:
		w.WriteHeader(fail)
	case r.Method == http.MethodDelete && ok:
		w.WriteHeader(http.StatusNoContent)
	case !ok:
		http.NotFound(w, r)
	default:
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, row) //nolint:errcheck
	}
}

func (s *rowStore) requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.seen)
}

func newRowStore() *rowStore {
	return &rowStore{rows: map[string]string{
		"/memberships/m_1": `{"organization_id":"org_1","user_id":"usr_2","role":"admin"}`,
		"/users/u_1":       `{"id":"u_1","email":"ada@acme.test","password_hash":"$2y$x"}`,
	}}
}

// serveThrough runs one request through the handler, with store as both the
// upstream (next) and the lookup server.
func serveThrough(t *testing.T, e *testEnv, store *rowStore, req *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	err := e.serve(rec, req, func(w http.ResponseWriter, r *http.Request) error {
		store.ServeHTTP(w, r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func TestBeforeLookupCarriesTheDeletedRow(t *testing.T) {
	store := newRowStore()
	srv := httptest.NewServer(store)
	defer srv.Close()
	e := newTestHandler(t, beforeRules, func(h *Handler) { h.LookupUpstream = srv.URL })
	req := httptest.NewRequest(http.MethodDelete, "/memberships/m_1", nil)
	req.Header.Set("X-Admin", "1")
	req.Header.Set("Cookie", "session=sekrit-cookie")
	if rec := serveThrough(t, e, store, req); rec.Code != http.StatusNoContent {
		t.Fatalf("client got %d", rec.Code)
	}
	// one lookup for both rules (same path and headers), before the delete
	if got := store.requests(); !slices.Equal(got, []string{"GET /memberships/m_1", "DELETE /memberships/m_1"}) {
		t.Errorf("upstream saw %q, want the lookup once, then the delete", got)
	}
	if c := store.headers[0].Get("Cookie"); c != "session=sekrit-cookie" {
		t.Errorf("the before-lookup carried Cookie %q, want the caller's", c)
	}
	evs := e.q.got()
	if len(evs) != 2 {
		t.Fatalf("events = %+v", evs)
	}
	if evs[0].Subject != "org_1" || string(evs[0].Data) != `{"organization_id":"org_1","user_id":"usr_2"}` || len(evs[0].Source.Missing) > 0 {
		t.Errorf("event = %s %s missing %v", evs[0].Subject, evs[0].Data, evs[0].Source.Missing)
	}
	if string(evs[1].Data) != `"admin"` {
		t.Errorf("second rule's event = %s", evs[1].Data)
	}
	if n := counterValue(e.h.metrics.beforeLookups.WithLabelValues("member-removed")); n != 1 {
		t.Errorf("before_lookups_total{member-removed} = %v, want 1", n)
	}
	if n := counterValue(e.h.metrics.beforeLookups.WithLabelValues("membership-audited")); n != 0 {
		t.Errorf("before_lookups_total{membership-audited} = %v, want 0 (it shared the first rule's)", n)
	}
	assertNoSecrets(t, e.logs, "sekrit-cookie")
}

// A before-lookup slower than its timeout holds the request no longer than
// that: the request is forwarded and answered, and the event lists what is
// missing.
func TestSlowBeforeLookupIsBounded(t *testing.T) {
	store := newRowStore()
	store.delay = 5 * time.Second
	srv := httptest.NewServer(store)
	defer srv.Close()
	e := newTestHandler(t, beforeRules, func(h *Handler) { h.LookupUpstream = srv.URL })
	req := httptest.NewRequest(http.MethodDelete, "/memberships/m_1", nil)
	req.Header.Set("X-Admin", "1")
	var forwardedAfter time.Duration
	start := time.Now()
	rec := httptest.NewRecorder()
	err := e.serve(rec, req, func(w http.ResponseWriter, r *http.Request) error {
		forwardedAfter = time.Since(start)
		store.ServeHTTP(w, r)
		return nil
	})
	if err != nil || rec.Code != http.StatusNoContent {
		t.Fatalf("client got %d, %v", rec.Code, err)
	}
	// the first rule's lookup times out after 300ms; the second rule's
	// identical lookup shares that answer instead of waiting again
	if forwardedAfter < 250*time.Millisecond || forwardedAfter > 2*time.Second {
		t.Errorf("the request was forwarded after %v, want about the lookup's 300ms timeout", forwardedAfter)
	}
	evs := e.q.got()
	if len(evs) != 2 || !slices.Equal(evs[0].Source.Missing, []string{"old.body.organization_id", "old.body.user_id"}) {
		t.Fatalf("events = %+v, want the event with what is missing", evs)
	}
	failed := e.logs.FilterMessage("lookup failed; event will list what is missing").All()
	if len(failed) != 2 || !strings.Contains(failed[0].ContextMap()["error"].(string), "timed out after 300ms") || failed[0].ContextMap()["when"] != "before" {
		t.Errorf("log = %+v", failed)
	}
}

// before_lookup_budget bounds all before-lookups of an exchange together.
func TestBeforeLookupBudget(t *testing.T) {
	store := newRowStore()
	store.delay = 5 * time.Second
	srv := httptest.NewServer(store)
	defer srv.Close()
	e := newTestHandler(t, `version: 1
rules:
  - name: a
    match: {method: DELETE, path: "/users/{id}"}
    lookup:
      - {get: "/users/{path.id}?a", as: one, when: before, timeout: 10s}
      - {get: "/users/{path.id}?b", as: two, when: before, timeout: 10s}
    emit: {type: a.deleted, data: {one: "{one.status}", two: "{two.status}"}}
`, func(h *Handler) {
		h.LookupUpstream = srv.URL
		h.BeforeLookupBudget = caddy.Duration(400 * time.Millisecond)
	})
	start := time.Now()
	rec := serveThrough(t, e, store, httptest.NewRequest(http.MethodDelete, "/users/u_1", nil))
	if d := time.Since(start); rec.Code != http.StatusNoContent || d > 2*time.Second {
		t.Fatalf("client got %d after %v, want 204 within about the 400ms budget", rec.Code, d)
	}
	evs := e.q.got()
	if len(evs) != 1 || !slices.Equal(evs[0].Source.Missing, []string{"one.status", "two.status"}) {
		t.Fatalf("events = %+v", evs)
	}
	errs := e.logs.FilterMessage("lookup failed; event will list what is missing").All()
	if len(errs) != 2 || !strings.Contains(errs[1].ContextMap()["error"].(string), "no time left") {
		t.Errorf("log = %+v, want the second lookup refused for lack of time", errs)
	}
}

// A lookup upstream that fails (an error status, or nothing listening) fails
// no request: it is forwarded and answered, the event lists what is missing.
func TestFailingBeforeLookupUpstream(t *testing.T) {
	for _, tc := range []struct {
		name string
		up   func(store *rowStore) string
	}{
		{"500", func(store *rowStore) string {
			store.fail = http.StatusInternalServerError
			srv := httptest.NewServer(store)
			t.Cleanup(srv.Close)
			return srv.URL
		}},
		{"connection refused", func(*rowStore) string {
			srv := httptest.NewServer(http.NotFoundHandler())
			srv.Close()
			return srv.URL
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := newRowStore()
			up := tc.up(store)
			e := newTestHandler(t, beforeRules, func(h *Handler) { h.LookupUpstream = up })
			req := httptest.NewRequest(http.MethodDelete, "/users/u_1", strings.NewReader(`{"confirm":true}`))
			req.Header.Set("Content-Type", "application/json")
			if rec := serveThrough(t, e, store, req); rec.Code != http.StatusNoContent {
				t.Fatalf("client got %d", rec.Code)
			}
			evs := e.q.got()
			if len(evs) != 1 || string(evs[0].Data) != "null" || !slices.Equal(evs[0].Source.Missing, []string{"old.body"}) {
				t.Fatalf("events = %+v", evs)
			}
			if n := counterValue(e.h.metrics.lookupFailures.WithLabelValues("user-deleted")); n != 1 {
				t.Errorf("lookup_failures_total = %v", n)
			}
		})
	}
}

// No lookup is sent for a request whose conditions no before-lookup rule
// accepts; one is sent (the documented cost) when only the status then fails
// the rule, and nothing is emitted or counted as a failure.
func TestBeforeLookupOnlyForMatchingRequests(t *testing.T) {
	store := newRowStore()
	srv := httptest.NewServer(store)
	defer srv.Close()
	e := newTestHandler(t, beforeRules, func(h *Handler) { h.LookupUpstream = srv.URL })
	// no X-Admin header: the request conditions fail
	serveThrough(t, e, store, httptest.NewRequest(http.MethodDelete, "/memberships/m_1", nil))
	// a body condition fails
	req := httptest.NewRequest(http.MethodDelete, "/users/u_1", strings.NewReader(`{"confirm":false}`))
	req.Header.Set("Content-Type", "application/json")
	serveThrough(t, e, store, req)
	if got := store.requests(); !slices.Equal(got, []string{"DELETE /memberships/m_1", "DELETE /users/u_1"}) {
		t.Errorf("upstream saw %q, want no lookup", got)
	}
	if len(e.q.got()) != 0 {
		t.Errorf("events = %v", e.q.types())
	}
	// the request matches, the upstream refuses it (the row is gone: 404)
	req = httptest.NewRequest(http.MethodDelete, "/memberships/m_1", nil)
	req.Header.Set("X-Admin", "1")
	if rec := serveThrough(t, e, store, req); rec.Code != http.StatusNotFound {
		t.Fatalf("client got %d", rec.Code)
	}
	if got := store.requests(); len(got) != 4 || got[2] != "GET /memberships/m_1" {
		t.Errorf("upstream saw %q, want the lookup before the refused delete", got)
	}
	if len(e.q.got()) != 0 || counterValue(e.h.metrics.lookupFailures.WithLabelValues("member-removed")) != 0 {
		t.Errorf("a refused request emits nothing and counts no failure: %v", e.q.types())
	}
	if n := counterValue(e.h.metrics.beforeLookups.WithLabelValues("member-removed")); n != 1 {
		t.Errorf("before_lookups_total = %v, want 1", n)
	}
}

// A request body larger than max_body is not read for a before-lookup's
// body condition: the rule is not a candidate and nothing is sent.
func TestBeforeLookupSkipsOversizedBody(t *testing.T) {
	store := newRowStore()
	srv := httptest.NewServer(store)
	defer srv.Close()
	e := newTestHandler(t, beforeRules, func(h *Handler) { h.LookupUpstream = srv.URL; h.MaxBody = 64 })
	req := httptest.NewRequest(http.MethodDelete, "/users/u_1", strings.NewReader(`{"confirm":true,"pad":"`+strings.Repeat("x", 100)+`"}`))
	req.Header.Set("Content-Type", "application/json")
	serveThrough(t, e, store, req)
	if got := store.requests(); !slices.Equal(got, []string{"DELETE /users/u_1"}) {
		t.Errorf("upstream saw %q", got)
	}
}

// A client that goes away while a before-lookup runs ends the lookup with it.
func TestBeforeLookupEndsWithTheClient(t *testing.T) {
	store := newRowStore()
	store.delay = 5 * time.Second
	srv := httptest.NewServer(store)
	defer srv.Close()
	e := newTestHandler(t, beforeRules, func(h *Handler) { h.LookupUpstream = srv.URL })
	ctx, cancel := context.WithCancel(context.Background())
	req := httptest.NewRequest(http.MethodDelete, "/users/u_1", strings.NewReader(`{"confirm":true}`)).WithContext(ctx)
	req.Header.Set("Content-Type", "application/json")
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	err := e.serve(httptest.NewRecorder(), req, func(w http.ResponseWriter, r *http.Request) error {
		return r.Context().Err() // a proxy fails a canceled request
	})
	if d := time.Since(start); d > 800*time.Millisecond || err == nil {
		t.Errorf("served in %v (err %v), want the lookup to end with the client after 100ms", d, err)
	}
}

// After-lookups carry the cookies the response set and headers rendered
// from it; a header that does not render is left out (with the caller's
// header of that name) and listed as missing. Logs show no header value.
func TestAfterLookupSeesNewCredentials(t *testing.T) {
	type seen struct{ path, cookie, auth string }
	got := make(chan seen, 8)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.URL.Path, r.Header.Get("Cookie"), r.Header.Get("Authorization")}
		if r.Header.Get("Cookie") != "theme=dark; session=sekrit-new" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"u_1","count":1}`) //nolint:errcheck
	}))
	defer srv.Close()
	e := newTestHandler(t, beforeRules, func(h *Handler) { h.LookupUpstream = srv.URL })
	for _, tc := range []struct {
		name, body, wantAuth string
		wantMissing          []string
	}{
		{"token in the response", `{"token":"tok_sekrit_new"}`, "Bearer tok_sekrit_new", nil},
		{"no token: no Authorization, not the dead one", `{}`, "", []string{"response.body.token"}},
		{"token with CR LF", `{"token":"x\r\nX-Admin: 1"}`, "", []string{"response.body.token"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.q.events = nil
			req := httptest.NewRequest(http.MethodPost, "/me/password", strings.NewReader(`{"password":"n3w"}`))
			req.Header.Set("Cookie", "session=sekrit-old; theme=dark")
			req.Header.Set("Authorization", "Bearer tok_sekrit_old")
			err := e.serve(httptest.NewRecorder(), req, func(w http.ResponseWriter, r *http.Request) error {
				w.Header().Add("Set-Cookie", "session=sekrit-new; Path=/; HttpOnly")
				w.Header().Set("Content-Type", "application/json")
				_, err := io.WriteString(w, tc.body)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			me, sessions := <-got, <-got
			if me.path != "/me" || me.cookie != "theme=dark; session=sekrit-new" || me.auth != tc.wantAuth {
				t.Errorf("/me lookup carried %+v, want the rotated cookie and %q", me, tc.wantAuth)
			}
			if sessions.auth != "Bearer tok_sekrit_old" || sessions.cookie != "theme=dark; session=sekrit-new" {
				t.Errorf("/me/sessions lookup (no lookup.header) carried %+v, want the caller's Authorization and the rotated cookie", sessions)
			}
			evs := e.q.got()
			if len(evs) != 1 || evs[0].Subject != "u_1" || !slices.Equal(evs[0].Source.Missing, tc.wantMissing) {
				t.Fatalf("events = %+v", evs)
			}
		})
	}
	assertNoSecrets(t, e.logs, "sekrit", "tok_sekrit")
}

// With no lookup_upstream, before-lookups go back through this server with
// the one-time marker, pass unobserved, and never reach a rule of their own.
func TestBeforeLookupThroughSelfIsNotObserved(t *testing.T) {
	store := newRowStore()
	e := newTestHandler(t, beforeRules+`  - name: membership-read
    match: {method: GET, path: "/memberships/{id}"}
    emit: {type: membership.read}
`, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = e.serve(w, r, func(w http.ResponseWriter, r *http.Request) error {
			if r.Header.Get(lookupHeader) != "" {
				t.Errorf("the marker header must not reach the upstream")
			}
			store.ServeHTTP(w, r)
			return nil
		})
	}))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodDelete, srv.URL+"/memberships/m_1", nil)
	req.Header.Set("X-Admin", "1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := e.q.types(); !slices.Equal(got, []string{"organization.member_removed", "membership.audited"}) {
		t.Fatalf("events = %v, want the delete's two, not the lookup's membership.read", got)
	}
	var data map[string]string
	_ = json.Unmarshal(e.q.got()[0].Data, &data)
	if data["user_id"] != "usr_2" {
		t.Errorf("data = %s", e.q.got()[0].Data)
	}
	if got := store.requests(); !slices.Equal(got, []string{"GET /memberships/m_1", "DELETE /memberships/m_1"}) {
		t.Errorf("upstream saw %q", got)
	}
}
