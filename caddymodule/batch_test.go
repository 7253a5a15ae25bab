package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/authtap/authtap/rules"
)

const batchHandlerRules = `version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users, status: 201}
    lookup: {get: "/api/users/{response.body.id}", as: user}
    emit: {type: user.created, subject: "{response.body.id}", data: {email: "{user.body.email}"}}
  - name: user-action
    match: {method: POST, path: "/api/users/{id}/actions"}
    emit: {type: "user.{request.body.action}", types: [user.suspended], subject: "{path.id}"}
  - name: users-imported
    match: {method: POST, path: /api/import}
    emit: {type: user.imported, each: "{request.body.users}", subject: "{item.id}"}
  - name: batch
    match: {method: POST, path: /api/batch}
    batch:
      request: {items: "{request.body.requests}", method: "{item.method}", url: "{item.url}", body: "{item.body}"}
      response: {items: "{response.body}", status: "{item.status}", body: "{item.body}"}
`

// serveBatch sends one batch envelope through the handler; the upstream
// answers it with respBody.
func serveBatch(t *testing.T, e *testEnv, path, reqBody, respBody string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(reqBody))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer caller")
	rec := httptest.NewRecorder()
	err := e.serve(rec, req, func(w http.ResponseWriter, r *http.Request) error {
		io.Copy(io.Discard, r.Body) //nolint:errcheck
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, respBody) //nolint:errcheck
		return nil
	})
	if err != nil || rec.Code != http.StatusOK || rec.Body.String() != respBody {
		t.Fatalf("the client got %d %q (err %v), want the upstream's answer untouched", rec.Code, rec.Body.String(), err)
	}
}

// batchOf builds a batch of n sub-requests and the upstream's answers.
func batchOf(n int, op func(i int) (req, resp string)) (string, string) {
	var rq, rs strings.Builder
	rq.WriteString(`{"requests":[`)
	rs.WriteString(`[`)
	for i := range n {
		if i > 0 {
			rq.WriteString(",")
			rs.WriteString(",")
		}
		a, b := op(i)
		rq.WriteString(a)
		rs.WriteString(b)
	}
	rq.WriteString("]}")
	rs.WriteString("]")
	return rq.String(), rs.String()
}

// TestBatchLookupBudget: a batch of 70 creates whose rule looks each user up
// sends rules.MaxExchangeLookups lookups (with the envelope's credentials),
// not 70; the other events are still queued and list what is missing, and
// one warning says why.
func TestBatchLookupBudget(t *testing.T) {
	var lookups atomic.Int64
	var badAuth atomic.Int64
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lookups.Add(1)
		if r.Header.Get("Authorization") != "Bearer caller" {
			badAuth.Add(1)
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"email":"%s@x.test"}`, strings.TrimPrefix(r.URL.Path, "/api/users/"))
	}))
	defer upstream.Close()
	e := newTestHandler(t, batchHandlerRules, func(h *Handler) { h.LookupUpstream = upstream.URL })
	const n = 70
	req, resp := batchOf(n, func(i int) (string, string) {
		return `{"method":"POST","url":"/api/users","body":{}}`, fmt.Sprintf(`{"status":201,"body":{"id":"u_%d"}}`, i)
	})
	serveBatch(t, e, "/api/batch", req, resp)
	if got := lookups.Load(); got != rules.MaxExchangeLookups {
		t.Errorf("%d lookups sent, want %d (rules.MaxExchangeLookups)", got, rules.MaxExchangeLookups)
	}
	if badAuth.Load() != 0 {
		t.Errorf("%d lookups without the envelope's credentials", badAuth.Load())
	}
	evs := e.q.got()
	if len(evs) != n {
		t.Fatalf("%d events, want %d", len(evs), n)
	}
	for i, ev := range evs {
		missing := len(ev.Source.Missing) > 0
		if missing != (i >= rules.MaxExchangeLookups) {
			t.Errorf("event %d (%s): missing %v", i, ev.Data, ev.Source.Missing)
		}
		if ev.Source.Rule != "user-created" || ev.Subject != fmt.Sprintf("u_%d", i) {
			t.Errorf("event %d: rule %q subject %q", i, ev.Source.Rule, ev.Subject)
		}
	}
	if got := counterValue(e.h.metrics.lookupFailures.WithLabelValues("user-created")); got != n-rules.MaxExchangeLookups {
		t.Errorf("lookup_failures_total = %v, want %d", got, n-rules.MaxExchangeLookups)
	}
	if got := e.logs.FilterMessageSnippet("lookup not sent").Len(); got != 1 {
		t.Errorf("%d warnings about the lookup budget, want 1", got)
	}
	assertNoSecrets(t, e.logs, "Bearer caller")
}

// TestBatchRefusalsCountedLogsBounded: a thousand sub-requests each asking
// for an undeclared type are counted one by one and logged a few times.
func TestBatchRefusalsCountedLogsBounded(t *testing.T) {
	e := newTestHandler(t, batchHandlerRules, nil)
	const n = 1000
	req, resp := batchOf(n, func(i int) (string, string) {
		return fmt.Sprintf(`{"method":"POST","url":"/api/users/u_%d/actions","body":{"action":"evil%d"}}`, i, i), `{"status":200}`
	})
	serveBatch(t, e, "/api/batch", req, resp)
	if len(e.q.got()) != 0 {
		t.Errorf("%d events queued, want none", len(e.q.got()))
	}
	if got := counterValue(e.h.metrics.refused.WithLabelValues("user-action", rules.RefusedUndeclared)); got != n {
		t.Errorf("refused = %v, want %d", got, n)
	}
	if got := e.logs.FilterMessage("cannot build event").Len(); got != maxExchangeWarnings {
		t.Errorf("%d refusals logged, want %d", got, maxExchangeWarnings)
	}
	sum := e.logs.FilterMessageSnippet("were not logged").All()
	if len(sum) != 1 || sum[0].ContextMap()["not_logged"] != int64(n-maxExchangeWarnings) {
		t.Errorf("want one summary counting %d lines not logged, got %+v", n-maxExchangeWarnings, sum)
	}
	for _, l := range e.logs.FilterMessage("cannot build event").All() {
		if l.ContextMap()["batch"] != "batch" {
			t.Errorf("a sub-exchange's refusal does not name its batch rule: %v", l.ContextMap())
		}
	}
}

// TestEachTooManyItemsCounted: 5,000 elements build rules.MaxEachItems
// events; the rest are counted as refused (too_many_items) by one log line.
func TestEachTooManyItemsCounted(t *testing.T) {
	e := newTestHandler(t, batchHandlerRules, nil)
	var b strings.Builder
	b.WriteString(`{"users":[`)
	for i := range 5000 {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"id":"u_%d"}`, i)
	}
	b.WriteString("]}")
	serveBatch(t, e, "/api/import", b.String(), `{"ok":true}`)
	if got := len(e.q.got()); got != rules.MaxEachItems {
		t.Errorf("%d events, want %d", got, rules.MaxEachItems)
	}
	if got := counterValue(e.h.metrics.refused.WithLabelValues("users-imported", rules.RefusedTooManyItems)); got != 5000-rules.MaxEachItems {
		t.Errorf("refused = %v, want %d", got, 5000-rules.MaxEachItems)
	}
	if l := e.logs.FilterMessage("cannot build event").All(); len(l) != 1 || !strings.Contains(fmt.Sprint(l[0].ContextMap()["error"]), "rules.MaxEachItems") {
		t.Errorf("want one log line naming rules.MaxEachItems, got %v", l)
	}
}

// TestBatchTooManyOpsCounted: sub-requests past rules.MaxBatchOps are
// counted as refused and named in one warning.
func TestBatchTooManyOpsCounted(t *testing.T) {
	e := newTestHandler(t, batchHandlerRules, nil)
	req, resp := batchOf(rules.MaxBatchOps+7, func(i int) (string, string) {
		return `{"method":"POST","url":"/api/users/u/actions","body":{"action":"suspended"}}`, `{"status":200}`
	})
	serveBatch(t, e, "/api/batch", req, resp)
	if got := len(e.q.got()); got != rules.MaxBatchOps {
		t.Errorf("%d events, want %d", got, rules.MaxBatchOps)
	}
	if got := counterValue(e.h.metrics.refused.WithLabelValues("batch", rules.RefusedTooManyOps)); got != 7 {
		t.Errorf("refused = %v, want 7", got)
	}
	if got := e.logs.FilterMessage("batch cut short").Len(); got != 1 {
		t.Errorf("%d warnings, want 1", got)
	}
}
