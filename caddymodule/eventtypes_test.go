package caddymodule

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
)

const templatedTypeRules = `version: 1
rules:
  - name: user-action
    match: {method: POST, path: "/api/users/{id}/actions"}
    emit:
      type: "user.{request.body.action}"
      types: [user.suspended, user.restored]
      subject: "{path.id}"
`

// metricsPage renders a registry as Caddy's /metrics endpoint does.
func metricsPage(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d", rec.Code)
	}
	return rec.Body.String()
}

// series returns the sample lines of a metrics page without their values.
func series(page string) []string {
	var out []string
	for _, l := range strings.Split(page, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if i := strings.LastIndexByte(l, ' '); i > 0 {
			l = l[:i]
		}
		out = append(out, l)
	}
	sort.Strings(out)
	return out
}

// TestClientChosenTypesDoNotGrowMetrics sends 10,000 distinct action values
// (some of them 100 KiB) through the handler, with the metrics registry a
// Caddy config gives it, and checks that the metrics page keeps its series
// and its size, that no value reaches a label, an event or a log line, and
// that the refusals are counted.
func TestClientChosenTypesDoNotGrowMetrics(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(file, []byte(templatedTypeRules), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	h := &Handler{Rules: []string{file}, ReloadInterval: -1}
	q := &fakeQueue{}
	if err := h.provision(ctx, q); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	env := &testEnv{h: h, q: q, logs: logs}
	metrics := promhttp.HandlerFor(ctx.GetMetricsRegistry(), promhttp.HandlerOpts{})

	send := func(action string) {
		t.Helper()
		body := fmt.Sprintf(`{"action":%q}`, action)
		r := httptest.NewRequest(http.MethodPost, "/api/users/u_1/actions", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		err := env.serve(httptest.NewRecorder(), r, func(w http.ResponseWriter, r *http.Request) error {
			_, err := io.Copy(io.Discard, r.Body)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// warm up every series the test can create: a declared type, and one
	// refusal of each reason
	send("suspended")
	send("deleted")
	send("not a name")
	send(strings.Repeat("x", 200))
	before := metricsPage(t, metrics)

	const n = 10_000
	var sent []string
	for i := range n {
		v := fmt.Sprintf("deleted%05d", i) // a valid, undeclared name: each distinct
		switch i % 100 {
		case 1:
			v = fmt.Sprintf("admin %d", i) // not a name
		case 2:
			v = fmt.Sprintf("%d%s", i, strings.Repeat("z", 100<<10)) // 100 KiB
		case 3:
			v = "suspended" // declared: still emits
		}
		sent = append(sent, v)
		send(v)
	}
	after := metricsPage(t, metrics)

	if b, a := series(before), series(after); strings.Join(b, "\n") != strings.Join(a, "\n") {
		t.Errorf("the series changed after %d distinct values:\nbefore:\n%s\nafter:\n%s", n, strings.Join(b, "\n"), strings.Join(a, "\n"))
	}
	// only the counter values may grow, by a few digits each
	if d := len(after) - len(before); d < 0 || d > 200 {
		t.Errorf("/metrics grew from %d to %d bytes", len(before), len(after))
	}
	t.Logf("/metrics: %d bytes before, %d after %d distinct client-chosen types", len(before), len(after), n)
	for _, want := range []string{
		`authtap_events_refused_total{reason="undeclared_type",rule="user-action"} 9701`,
		`authtap_events_refused_total{reason="invalid_type",rule="user-action"} 101`,
		`authtap_events_refused_total{reason="type_too_long",rule="user-action"} 101`,
		`authtap_events_matched_total{rule="user-action",type="user.suspended"} 101`,
	} {
		if !strings.Contains(after, want) {
			t.Errorf("want %s in:\n%s", want, grepLines(after, "authtap_events"))
		}
	}
	for _, ev := range q.got() {
		if ev.Type != "user.suspended" {
			t.Fatalf("an event of type %q was queued", ev.Type)
		}
	}
	if got := len(q.got()); got != 101 {
		t.Errorf("%d events queued, want 101", got)
	}
	// log lines quote a value only cut short
	var logged int
	for _, e := range logs.All() {
		var b bytes.Buffer
		b.WriteString(e.Message)
		for k, v := range e.ContextMap() {
			fmt.Fprintf(&b, " %s=%v", k, v)
		}
		logged += b.Len()
		if b.Len() > 600 {
			t.Fatalf("a log line of %d bytes: %.300s", b.Len(), b.String())
		}
	}
	for _, v := range sent {
		if len(v) > 1000 && strings.Contains(after, v[:100]) {
			t.Fatal("a request value reached /metrics")
		}
	}
	t.Logf("%d log lines, %d bytes in all", logs.Len(), logged)
}

func TestEventTypesListDeclaredTypes(t *testing.T) {
	newTestHandler(t, templatedTypeRules, nil) // registers its set
	var tpl, suspended bool
	for _, et := range loadedEventTypes() {
		switch et.Type {
		case "user.{request.body.action}":
			tpl = et.Templated && strings.Join(et.Types, ",") == "user.restored,user.suspended"
		case "user.suspended":
			suspended = !et.Templated && strings.Join(et.Rules, ",") == "user-action"
		}
	}
	if !tpl || !suspended {
		t.Errorf("event types %+v: want the template with its declared types, and each declared type", loadedEventTypes())
	}
}
