package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/authtap/authtap/rules"
)

// testRules is the rule file of the handler unit tests.
const testRules = `version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users, response: {body: {"user.id": exists}}}
    emit:
      type: user.created
      subject: "{response.body.user.id}"
      data: {id: "{response.body.user.id}"}
  - name: signed-up
    match: {method: POST, path: /api/signup}
    emit: {type: user.signed_up, data: {email: "{request.body.email}"}}
  - name: logged-out
    match: {method: POST, path: /api/logout}
    emit: {type: session.ended}
  - name: profile-updated
    match: {method: PATCH, path: "/api/users/{id}"}
    lookup: {get: "/api/me?u={path.id}", as: me, timeout: 300ms}
    emit: {type: user.updated, subject: "{path.id}", data: "{me.body}"}
  - name: me-read
    match: {method: GET, path: /api/me}
    emit: {type: me.read}
  - name: feed
    match: {method: GET, path: /api/feed}
    emit: {type: feed.read, data: {first: "{response.body.first}"}}
`

// fakeQueue is an in-memory enqueuer.
type fakeQueue struct {
	mu     sync.Mutex
	events []rules.Event
	err    error
	panic  bool
	hook   func(rules.Event) // runs inside Enqueue, before it returns
}

func (q *fakeQueue) Enqueue(_ context.Context, ev rules.Event) (Outcome, error) {
	if q.panic {
		panic("fake queue exploded")
	}
	if q.hook != nil {
		q.hook(ev)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return 0, q.err
	}
	q.events = append(q.events, ev)
	return Queued, nil
}

func (q *fakeQueue) got() []rules.Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]rules.Event(nil), q.events...)
}

func (q *fakeQueue) types() []string {
	var out []string
	for _, ev := range q.got() {
		out = append(out, ev.Type)
	}
	return out
}

var errQueueDown = errors.New("redis and spool both down")

type testEnv struct {
	h    *Handler
	q    *fakeQueue
	logs *observer.ObservedLogs
	dir  string
	file string
}

// newTestHandler provisions a handler on a rule file holding ruleText, with
// an in-memory queue and an observed logger. mod may change the config
// before provisioning.
func newTestHandler(t testing.TB, ruleText string, mod func(*Handler)) *testEnv {
	t.Helper()
	return newTestHandlerOn(t, ruleText, mod, nil)
}

// newTestHandlerOn is newTestHandler with the queue the handler is
// provisioned on made by wrap from the in-memory one (nil: that one).
func newTestHandlerOn(t testing.TB, ruleText string, mod func(*Handler), wrap func(*fakeQueue) enqueuer) *testEnv {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(file, []byte(ruleText), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &Handler{Rules: []string{file}, ReloadInterval: -1}
	if mod != nil {
		mod(h)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	q := &fakeQueue{}
	var enq enqueuer = q
	if wrap != nil {
		enq = wrap(q)
	}
	if err := h.provision(ctx, enq); err != nil {
		t.Fatalf("provision: %v", err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	h.watch.logger = h.logger
	return &testEnv{h: h, q: q, logs: logs, dir: dir, file: file}
}

// serve runs one request through the handler with next, as Caddy would.
func (e *testEnv) serve(w http.ResponseWriter, r *http.Request, next caddyhttp.HandlerFunc) error {
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	return e.h.ServeHTTP(w, r, next)
}

// assertNoSecrets fails if any logged field or message carries one of the values.
func assertNoSecrets(t *testing.T, logs *observer.ObservedLogs, secrets ...string) {
	t.Helper()
	for _, entry := range logs.All() {
		text := entry.Message
		for k, v := range entry.ContextMap() {
			text += " " + k + "=" + fmt.Sprint(v)
		}
		for _, s := range secrets {
			if s != "" && strings.Contains(text, s) {
				t.Errorf("log line %q carries %q", text, s)
			}
		}
	}
}

func writeFile(name, text string) error { return os.WriteFile(name, []byte(text), 0o600) }

func newCaddyContext() (caddy.Context, context.CancelFunc) {
	return caddy.NewContext(caddy.Context{Context: context.Background()})
}

// counterValue reads a counter.
func counterValue(c prometheus.Metric) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
