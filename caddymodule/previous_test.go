package caddymodule

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
)

const previousHandlerRules = `version: 1
rules:
  - name: user-updated
    match: {method: PATCH, path: "/api/users/{id}"}
    emit:
      type: user.updated
      subject: "{path.id}"
      data: "{response.body}"
      previous: {before: "{request.body.was}", skip_unchanged: true}
`

// TestHandlerPrevious: the handler queues an update with its previous, and
// for an update that changed nothing queues nothing, counts it in
// authtap_events_unchanged_total{rule,type} and says so at debug level.
func TestHandlerPrevious(t *testing.T) {
	e := newTestHandler(t, previousHandlerRules, nil)
	patch := func(was, now string) {
		t.Helper()
		req := httptest.NewRequest(http.MethodPatch, "/api/users/u_1", strings.NewReader(`{"was":`+was+`}`))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		err := e.serve(rec, req, func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "application/json")
			_, err := io.WriteString(w, now)
			return err
		})
		if err != nil || rec.Body.String() != now {
			t.Fatalf("client got %q (%v)", rec.Body.String(), err)
		}
	}
	patch(`{"name":"Ada","secret":"s1"}`, `{"name":"Ada L","secret":"s2"}`)
	evs := e.q.got()
	if len(evs) != 1 || string(evs[0].Previous) != `{"name":"Ada","secret":"[REDACTED]"}` {
		t.Fatalf("events %+v", evs)
	}
	patch(`{"name":"Ada"}`, `{"name":"Ada"}`)
	if n := len(e.q.got()); n != 1 {
		t.Fatalf("an unchanged update queued an event (%d events)", n)
	}
	if n := counterValue(e.h.metrics.unchanged.WithLabelValues("user-updated", "user.updated")); n != 1 {
		t.Errorf("events_unchanged_total = %v", n)
	}
	if logs := e.logs.FilterMessage("nothing changed; no event (skip_unchanged)").All(); len(logs) != 1 ||
		logs[0].ContextMap()["rule"] != "user-updated" || logs[0].ContextMap()["type"] != "user.updated" {
		t.Errorf("debug log %+v", logs)
	}
	// no state before: the event still goes out, saying so
	patch(`null`, `{"name":"Ada"}`)
	evs = e.q.got()
	if len(evs) != 2 || evs[1].Previous != nil || len(evs[1].Source.Missing) != 1 || evs[1].Source.Missing[0] != "emit.previous" {
		t.Fatalf("events %+v", evs)
	}
	assertNoSecrets(t, e.logs, "s1", "s2")
}

// usersAPI is an upstream that keeps users: GET reads one, PATCH changes
// some of its fields and answers with the user as it is now.
type usersAPI struct {
	mu    sync.Mutex
	users map[string]map[string]any
	down  bool // GET answers 503
}

func (a *usersAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	id := strings.TrimPrefix(r.URL.Path, "/api/users/")
	switch {
	case r.Method == http.MethodGet && a.users[id] != nil:
		if a.down {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, `{"error":"unavailable"}`)
			return
		}
		_ = json.NewEncoder(w).Encode(a.users[id])
	case r.Method == http.MethodPatch:
		var patch map[string]any
		if err := json.NewDecoder(r.Body).Decode(&patch); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		old := a.users[id]
		now := map[string]any{}
		for k, v := range old {
			now[k] = v
		}
		for k, v := range patch {
			now[k] = v
		}
		now["version"] = old["version"].(float64) + 1
		a.users[id] = now
		_ = json.NewEncoder(w).Encode(now)
	default:
		http.NotFound(w, r)
	}
}

const previousIntegrationRules = `version: 1
rules:
  - name: user-updated
    match: {method: PATCH, path: "/api/users/{id}"}
    lookup: {get: "/api/users/{path.id}", as: old, when: before}
    emit:
      type: user.updated
      subject: "{path.id}"
      data: "{response.body}"
      previous: {before: "{old.body}", ignore: [version], skip_unchanged: true}
`

// TestPreviousThroughCaddy runs real Caddy (in process), a private Redis and
// an upstream: the before-lookup reads the user just before the PATCH is
// forwarded, and the update's event:fanout task in Redis carries previous
// with the old values of what changed (the password hash redacted); an
// update that changed nothing queues no task; one whose old state cannot be
// read is queued without previous, listing what is missing. Not parallel:
// caddytest drives one global Caddy.
func TestPreviousThroughCaddy(t *testing.T) {
	api := &usersAPI{users: map[string]map[string]any{"u_1": {"id": "u_1", "name": "Ada", "city": "Paris", "password_hash": "$2b$old", "version": 1.0}}}
	it := newIntegration(t, api)
	it.rulesFile = filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(it.rulesFile, []byte(previousIntegrationRules), 0o600); err != nil {
		t.Fatal(err)
	}
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{
		AdminPort: it.adminPort, LoadRequestTimeout: 30 * time.Second, TestRequestTimeout: 30 * time.Second,
	})
	tester.InitServer(it.config("legacy-auth"), "json")
	if t.Failed() {
		t.FailNow()
	}
	t.Cleanup(func() { _ = it.load(`{"admin":{"listen":"localhost:` + strconv.Itoa(it.adminPort) + `"}}`) })

	patch := func(body string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPatch, it.base+"/api/users/u_1", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := it.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("PATCH through Caddy: %d %s", resp.StatusCode, b)
		}
	}
	queued := func() []map[string]json.RawMessage {
		t.Helper()
		var out []map[string]json.RawMessage
		infos, _ := it.insp.ListPendingTasks("authtap_fanout")
		for _, ti := range infos {
			var p struct{ Event map[string]json.RawMessage }
			if err := json.Unmarshal(ti.Payload, &p); err != nil {
				t.Fatal(err)
			}
			out = append(out, p.Event)
		}
		return out
	}

	patch(`{"name":"Ada Lovelace","password_hash":"$2b$new"}`)
	waitFor(t, 10*time.Second, "the first update's task", func() bool { return len(queued()) == 1 })
	ev := queued()[0]
	if string(ev["previous"]) != `{"name":"Ada","password_hash":"[REDACTED]"}` || ev["source"] == nil || strings.Contains(string(ev["source"]), "missing") {
		t.Fatalf("queued event %s / %s", ev["previous"], ev["source"])
	}

	patch(`{"city":"Paris"}`) // the city it already has: only the version moves, and it is ignored
	time.Sleep(300 * time.Millisecond)
	if n := len(queued()); n != 1 {
		t.Fatalf("an update that changed nothing queued a task (%d tasks)", n)
	}

	api.mu.Lock()
	api.down = true
	api.mu.Unlock()
	patch(`{"city":"London"}`)
	waitFor(t, 10*time.Second, "the third update's task", func() bool { return len(queued()) == 2 })
	for _, ev := range queued() {
		if strings.Contains(string(ev["data"]), "London") {
			if ev["previous"] != nil || !strings.Contains(string(ev["source"]), `"missing":["old.body"]`) {
				t.Fatalf("old state unknown: previous %s, source %s", ev["previous"], ev["source"])
			}
			return
		}
	}
	t.Fatal("no task for the third update")
}
