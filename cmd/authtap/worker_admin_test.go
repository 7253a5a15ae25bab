package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/authtap/authtap/internal/redistest"
)

func TestWorkerAdminRequiresToken(t *testing.T) {
	t.Setenv("AUTHTAP_ADMIN_TOKEN", "")
	var out, errb syncBuffer
	code := run([]string{"worker", "--redis", "redis://127.0.0.1:1", "--admin", "127.0.0.1:0"}, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), "--admin needs --admin-token") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

func TestWorkerAdminServesAPIAndMonitor(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	pack := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(pack, []byte(packYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	workerContext = func() (context.Context, context.CancelFunc) { return ctx, cancel }
	t.Cleanup(func() {
		workerContext = func() (context.Context, context.CancelFunc) { return signalContext(context.Background()) }
	})
	var out, errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"worker", "--redis", srv.URL, "--admin", addr, "--admin-token", "t0ken-for-tests", "--rules", pack}, &out, &errb)
	}()

	get := func(path string, auth func(*http.Request)) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+addr+path, nil)
		if auth != nil {
			auth(req)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	bearer := func(r *http.Request) { r.Header.Set("Authorization", "Bearer t0ken-for-tests") }
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the management API did not come up on %s\n%s", addr, errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resp := get("/webhooks", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: %d", resp.StatusCode)
	}
	if resp := get("/monitor/", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("monitor without credentials: %d", resp.StatusCode)
	}
	if resp := get("/webhooks", bearer); resp.StatusCode != http.StatusOK {
		t.Fatalf("with token: %d", resp.StatusCode)
	}
	resp := get("/event-types", bearer)
	var et struct {
		EventTypes []struct{ Type string } `json:"event_types"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&et); err != nil || len(et.EventTypes) != 1 || et.EventTypes[0].Type != "user.created" {
		t.Fatalf("event types %+v (%v)", et, err)
	}
	resp = get("/monitor/", func(r *http.Request) { r.SetBasicAuth("admin", "t0ken-for-tests") })
	if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("monitor with basic auth: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, errb.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("worker did not stop")
	}
	if strings.Contains(errb.String(), "t0ken-for-tests") {
		t.Fatal("the admin token reached the log")
	}
}
