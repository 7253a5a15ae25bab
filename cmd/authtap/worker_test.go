package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
	"github.com/authtap/authtap/worker/tasks"
)

// syncBuffer is a bytes.Buffer safe for the worker's logger and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestWorkerCommandFlags(t *testing.T) {
	dir := t.TempDir()
	badFile := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badFile, []byte("- id: x\n  url: https://x.example\n  colour: red\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args     []string
		env      string
		code     int
		wantErr  string
		hideText string
	}{
		{args: []string{}, code: 2, wantErr: "--redis"},
		{args: []string{"--redis", "http://:s3cret@x:1"}, code: 2, wantErr: "unsupported scheme", hideText: "s3cret"},
		{args: []string{"--redis", "redis://:s3cret@x:99999"}, code: 2, wantErr: "port", hideText: "s3cret"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--allow", "nope"}, code: 2, wantErr: "--allow"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--endpoints", badFile}, code: 1, wantErr: "colour"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "extra"}, code: 2, wantErr: "unexpected argument"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--recovery-interval", "soon"}, code: 2, wantErr: "recovery-interval"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--recovery-interval", "1ns"}, code: 2, wantErr: "below the minimum 10ms"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--recovery-interval", "100000h", "--run-lease", "200000h"}, code: 2, wantErr: "above the maximum 30s"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--recovery-interval", "2s"}, code: 2, wantErr: "at least twice"}, // the default lease is 3s
		{args: []string{"--redis", "redis://127.0.0.1:1", "--run-lease", "2562047h"}, code: 2, wantErr: "above the maximum 2m0s"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--run-lease", "0s"}, code: 2, wantErr: "--run-lease 0s: want a positive duration"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--fanout-retry-first", "-1s"}, code: 2, wantErr: "--fanout-retry-first -1s: want a positive duration"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--fanout-retry-first", "1m"}, code: 2, wantErr: "longer than the fan-out retry cap 30s"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--fanout-retry-max", "1000h"}, code: 2, wantErr: "above the maximum 1h0m0s"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--probe-interval", "often"}, code: 2, wantErr: "probe-interval"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--probe-interval", "0s"}, code: 2, wantErr: "--probe-interval 0s: want a positive duration"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--probe-interval", "10ms"}, code: 2, wantErr: "below the minimum 100ms"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--probe-interval", "2562047h"}, code: 2, wantErr: "--probe-interval: probe interval 2562047h0m0s is above the maximum 5m0s"},
		// Within the bounds, the worker is built and fails only on Redis.
		{args: []string{"--redis", "redis://127.0.0.1:1", "--recovery-interval", "30s", "--run-lease", "2m", "--fanout-retry-first", "1h", "--fanout-retry-max", "1h"}, code: 1, wantErr: "reaching redis"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--probe-interval", "100ms"}, code: 1, wantErr: "reaching redis"},
		{args: []string{"--redis", "redis://127.0.0.1:1", "--probe-interval", "5m"}, code: 1, wantErr: "reaching redis"},
		{args: []string{"--redis", "redis://127.0.0.1:1"}, code: 1, wantErr: "reaching redis"},
		{args: []string{"-h"}, env: "redis://:s3cret@127.0.0.1:1/0", code: 0, wantErr: "AUTHTAP_REDIS", hideText: "s3cret"},
		{args: []string{}, env: "redis://:s3cret@127.0.0.1:1/0", code: 1, wantErr: "reaching redis", hideText: "s3cret"},
	} {
		t.Setenv("AUTHTAP_REDIS", tc.env)
		var stderr syncBuffer
		code := run(append([]string{"worker"}, tc.args...), &stderr, &stderr)
		if code != tc.code || !strings.Contains(stderr.String(), tc.wantErr) {
			t.Errorf("worker %v: exit %d, stderr %q; want exit %d mentioning %q", tc.args, code, stderr.String(), tc.code, tc.wantErr)
		}
		if tc.hideText != "" && strings.Contains(stderr.String(), tc.hideText) {
			t.Errorf("worker %v: stderr repeats the password", tc.args)
		}
	}
}

func TestLoadEndpoints(t *testing.T) {
	dir := t.TempDir()
	secret, _ := worker.NewSecret()
	t.Setenv("HOOK_SECRET", secret)
	file := filepath.Join(dir, "endpoints.yaml")
	body := `endpoints:
  - id: crm
    url: https://crm.example.com/hooks
    events: ["user.*"]
    secret: "{env.HOOK_SECRET}"
    event_header: X-Authtap-Event
    format: data
    max_concurrency: 3
    tenant: org_1
`
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	eps, err := loadEndpoints(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 1 || eps[0].Secret != secret || eps[0].Format != "data" || eps[0].MaxConcurrency != 3 || eps[0].Events[0] != "user.*" || eps[0].Tenant != "org_1" {
		t.Errorf("loadEndpoints = %+v", eps)
	}
	jsonFile := filepath.Join(dir, "e.json")
	_ = os.WriteFile(jsonFile, []byte(`[{"id":"a","url":"https://a.example","secret":"{env.NOPE_NOT_SET}"}]`), 0o600)
	if _, err := loadEndpoints(jsonFile); err == nil || !strings.Contains(err.Error(), "NOPE_NOT_SET") {
		t.Errorf("unset variable: %v", err)
	}
}

// The standalone worker delivers the events of a configured endpoint and
// stops gracefully on SIGTERM.
func TestWorkerCommandDeliversAndStopsOnSIGTERM(t *testing.T) {
	srv := redistest.Start(t)
	got := make(chan string, 10)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("webhook-id")
	}))
	defer recv.Close()
	secret, _ := worker.NewSecret()
	file := filepath.Join(t.TempDir(), "endpoints.json")
	b, _ := json.Marshal([]worker.EndpointConfig{{ID: "local", URL: recv.URL, Mode: "test", Secret: secret}})
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// Stop on SIGTERM only (as in production), so the test can send one to itself.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	ready := make(chan struct{})
	workerContext = func() (context.Context, context.CancelFunc) {
		c, cancel := signalContext(ctx)
		close(ready)
		return c, cancel
	}
	defer func() {
		workerContext = func() (context.Context, context.CancelFunc) { return signalContext(context.Background()) }
	}()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"worker", "--redis", srv.URL, "--endpoints", file, "--concurrency", "4"}, &stderr, &stderr)
	}()
	<-ready

	c := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer c.Close()
	ev := rules.Event{ID: rules.NewEventID(time.Now()), Type: "user.created", Timestamp: time.Now().UTC(),
		Data: json.RawMessage(`{}`), Source: rules.Source{Name: "t"}, Mode: "test"}
	task, _ := tasks.NewFanoutTask(ev)
	if _, err := c.Enqueue(task); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-got:
		if id != ev.ID {
			t.Errorf("webhook-id %q, want %q", id, ev.ID)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no delivery within 15s; log:\n%s", stderr.String())
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit code %d; log:\n%s", code, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("worker did not stop within 30s of SIGTERM")
	}
	if !strings.Contains(stderr.String(), "stopped") {
		t.Errorf("log lacks the shutdown message:\n%s", stderr.String())
	}
	if strings.Contains(stderr.String(), secret) {
		t.Error("log contains the endpoint secret")
	}
	// redistest's Redis persists nothing: the worker says so at start, naming the setting.
	if !strings.Contains(stderr.String(), `redis appendonly is "no"`) {
		t.Errorf("log lacks the warning about appendonly:\n%s", stderr.String())
	}
}
