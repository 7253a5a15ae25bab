package caddymodule

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
)

const reloadRulesV1 = `version: 1
rules:
  - name: logged-out
    match: {method: POST, path: /api/logout}
    emit: {type: session.ended}
`

const reloadRulesV2 = `version: 1
rules:
  - name: logged-out
    match: {method: POST, path: /api/logout}
    emit: {type: session.closed}
`

// broken has an unknown status class on line 4.
const reloadRulesBroken = `version: 1
rules:
  - name: logged-out
    match: {method: POST, path: /api/logout, status: 9xx}
    emit: {type: session.closed}
`

func logout(t *testing.T, e *testEnv) {
	t.Helper()
	err := e.serve(httptest.NewRecorder(), httptest.NewRequest(http.MethodPost, "/api/logout", nil),
		func(w http.ResponseWriter, r *http.Request) error { _, err := io.WriteString(w, "ok"); return err })
	if err != nil {
		t.Fatal(err)
	}
}

func lastType(e *testEnv) string {
	ts := e.q.types()
	if len(ts) == 0 {
		return ""
	}
	return ts[len(ts)-1]
}

// rewrite replaces a file's content so that a poll sees it changed even
// within one mtime tick (the content is hashed too).
func rewrite(t *testing.T, name, text string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestReloadKeepsLastGoodSet(t *testing.T) {
	e := newTestHandler(t, reloadRulesV1, nil)
	logout(t, e)
	if got := lastType(e); got != "session.ended" {
		t.Fatalf("v1 emitted %q", got)
	}
	if e.h.watch.check() {
		t.Fatal("unchanged files must not reload")
	}

	rewrite(t, e.file, reloadRulesV2)
	if !e.h.watch.check() {
		t.Fatal("a changed file must reload")
	}
	logout(t, e)
	if got := lastType(e); got != "session.closed" {
		t.Fatalf("after reload emitted %q, want session.closed", got)
	}

	rewrite(t, e.file, reloadRulesBroken)
	if e.h.watch.check() {
		t.Fatal("a broken file must not be put in force")
	}
	logout(t, e)
	if got := lastType(e); got != "session.closed" {
		t.Errorf("after a broken change emitted %q; the last good set must stay", got)
	}
	errs := e.logs.FilterLevelExact(zapcore.ErrorLevel).All()
	if len(errs) != 1 {
		t.Fatalf("want one error log line, got %d", len(errs))
	}
	problems, _ := errs[0].ContextMap()["problems"].([]any)
	if len(problems) != 1 || !strings.HasPrefix(problems[0].(string), e.file+":4:") {
		t.Errorf("problems = %v, want one naming %s:4:col", problems, e.file)
	}
	// the same broken state is not logged again on every poll
	e.h.watch.check()
	if n := e.logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 1 {
		t.Errorf("the same broken files were logged %d times", n)
	}
}

func TestReloadSeesNewGlobMatches(t *testing.T) {
	dir := t.TempDir()
	rewrite(t, filepath.Join(dir, "a.yaml"), reloadRulesV1)
	e := newTestHandler(t, reloadRulesV1, func(h *Handler) { h.Rules = []string{filepath.Join(dir, "*.yaml")} })
	rewrite(t, filepath.Join(dir, "b.yaml"), `version: 1
rules:
  - name: signed-in
    match: {method: POST, path: /api/login}
    emit: {type: session.started}
`)
	if !e.h.watch.check() {
		t.Fatal("a new file matching the glob must reload")
	}
	if !e.h.set.Load().CanMatch(http.MethodPost, "/api/login") {
		t.Error("the new file's rule is not in force")
	}
}

// The watcher runs on its own, tied to the caddy.Context.
func TestReloadPollsInBackground(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "r.yaml")
	rewrite(t, file, reloadRulesV1)
	h := &Handler{Rules: []string{file}, ReloadInterval: caddy.Duration(20 * time.Millisecond)}
	ctx, cancel := newCaddyContext()
	defer cancel()
	q := &fakeQueue{}
	if err := h.provision(ctx, q); err != nil {
		t.Fatal(err)
	}
	env := &testEnv{h: h, q: q}
	rewrite(t, file, reloadRulesV2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		logout(t, env)
		if lastType(env) == "session.closed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the change was not picked up by the background watcher")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatcherStopsWithContext(t *testing.T) {
	e := newTestHandler(t, reloadRulesV1, nil)
	ctx, cancel := newCaddyContext()
	w := newWatcher(e.h.Rules, time.Millisecond, e.h.logger, e.h.swapRules)
	done := make(chan struct{})
	go func() { w.run(ctx); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("watcher did not return when its context ended")
	}
}
