package caddymodule

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker/tasks"
)

// startTapCaddy runs real Caddy (in process, through caddytest) with one
// route: the authtap handler configured by tap (its "handler" key is added),
// then a reverse proxy to upstream, on a private Redis. Caddy's log goes, at
// INFO, to logFile when it is not empty. The integration helpers
// (fanouts, load) work on what it returns. Not parallel: caddytest drives
// one global Caddy.
func startTapCaddy(t *testing.T, upstream http.Handler, tap map[string]any, logFile string) *integration {
	t.Helper()
	it := newIntegration(t, upstream)
	handler := map[string]any{"handler": "authtap"}
	for k, v := range tap {
		handler[k] = v
	}
	writer := map[string]any{"output": "stderr"}
	level := "ERROR"
	if logFile != "" {
		writer = map[string]any{"output": "file", "filename": logFile}
		level = "INFO"
	}
	cfg := map[string]any{
		"admin": map[string]any{"listen": "localhost:" + strconv.Itoa(it.adminPort)},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"level": level, "writer": writer, "encoder": map[string]any{"format": "json"},
		}}},
		"apps": map[string]any{
			"authtap": map[string]any{"redis": it.redis.URL, "spool_dir": it.spoolDir, "enqueue_timeout": "2s"},
			"http": map[string]any{
				"http_port": it.httpPort,
				"servers": map[string]any{"srv0": map[string]any{
					"listen":          []string{"127.0.0.1:" + strconv.Itoa(it.httpPort)},
					"automatic_https": map[string]any{"disable": true},
					"metrics":         map[string]any{},
					"routes": []any{map[string]any{"handle": []any{
						handler,
						map[string]any{"handler": "reverse_proxy", "upstreams": []any{map[string]any{"dial": it.upstream}}},
					}}},
				}},
			},
		},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{
		AdminPort: it.adminPort, LoadRequestTimeout: 30 * time.Second, TestRequestTimeout: 30 * time.Second,
	})
	tester.InitServer(string(b), "json")
	if t.Failed() {
		t.FailNow()
	}
	t.Cleanup(func() { _ = it.load(`{"admin":{"listen":"localhost:` + strconv.Itoa(it.adminPort) + `"}}`) })
	return it
}

// pendingEvents returns the events waiting in the fan-out queue.
func (it *integration) pendingEvents() []rules.Event {
	it.t.Helper()
	var out []rules.Event
	for page := 1; ; page++ {
		infos, err := it.insp.ListPendingTasks(tasks.QueueFanout, asynq.Page(page), asynq.PageSize(500))
		if errors.Is(err, asynq.ErrQueueNotFound) {
			return out
		}
		if err != nil {
			it.t.Fatalf("listing fan-out tasks: %v", err)
		}
		for _, ti := range infos {
			p, err := tasks.ParseFanout(asynq.NewTask(ti.Type, ti.Payload))
			if err != nil {
				it.t.Fatalf("task %s: %v", ti.ID, err)
			}
			out = append(out, p.Event)
		}
		if len(infos) < 500 {
			return out
		}
	}
}

// waitForEvents waits until the fan-out queue holds n events for which
// keep is true, and returns them.
func (it *integration) waitForEvents(n int, within time.Duration, keep func(rules.Event) bool) []rules.Event {
	it.t.Helper()
	deadline := time.Now().Add(within)
	for {
		var got []rules.Event
		for _, ev := range it.pendingEvents() {
			if keep(ev) {
				got = append(got, ev)
			}
		}
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}
