package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/worker"
	"github.com/authtap/authtap/worker/tasks"
)

// redisOpt parses a Redis URL for the test's own clients.
func redisOpt(t *testing.T, u string) asynq.RedisConnOpt {
	t.Helper()
	opt, err := worker.ParseRedisURL(u)
	if err != nil {
		t.Fatal(err)
	}
	return opt
}

// The --admin address rule: a bare port is loopback, anything else is as
// given, and a listener that is not on loopback is logged as a warning.
func TestAdminListenAddr(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{in: "8081", want: "127.0.0.1:8081"},
		{in: ":8081", want: "127.0.0.1:8081"},
		{in: "127.0.0.1:8081", want: "127.0.0.1:8081"},
		{in: "localhost:8081", want: "localhost:8081"},
		{in: "[::1]:8081", want: "[::1]:8081"},
		{in: "0.0.0.0:8081", want: "0.0.0.0:8081"},
		{in: "[::]:8081", want: "[::]:8081"},
		{in: "", err: "want a port"},
		{in: "8081x", err: "want a port"},
		{in: "host:", err: "want a port"},
		{in: "host:99999", err: "want a port"},
		{in: "127.0.0.1", err: "want a port"},
	} {
		got, err := adminListenAddr(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %q, %v; want error %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}

	for _, tc := range []struct {
		addr     string
		loopback bool
	}{
		{":0", true},
		{"0", true},
		{"127.0.0.1:0", true},
		{"0.0.0.0:0", false},
	} {
		core, logs := observer.New(zap.WarnLevel)
		ln, err := listenAdmin(tc.addr, zap.New(core))
		if err != nil {
			t.Fatalf("%s: %v", tc.addr, err)
		}
		ip := ln.Addr().(*net.TCPAddr).IP
		ln.Close()
		if ip.IsLoopback() != tc.loopback {
			t.Errorf("%s bound %s, want loopback=%v", tc.addr, ip, tc.loopback)
		}
		warned := logs.FilterMessageSnippet("non-loopback").Len() > 0
		if warned == tc.loopback {
			t.Errorf("%s (bound %s): warned=%v", tc.addr, ip, warned)
		}
	}
}

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

	// Every answer forbids framing, refusals and 401s included.
	for _, path := range []string{"/webhooks", "/monitor/"} {
		for _, auth := range []func(*http.Request){nil, bearer} {
			resp := get(path, auth)
			if resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("Content-Security-Policy") != "frame-ancestors 'none'" {
				t.Errorf("GET %s (%d): X-Frame-Options %q, CSP %q: may be framed", path, resp.StatusCode,
					resp.Header.Get("X-Frame-Options"), resp.Header.Get("Content-Security-Policy"))
			}
		}
	}

	// A script with the bearer token (no Origin, no Sec-Fetch-Site) changes state.
	send := func(method, path, body string, header map[string]string, auth func(*http.Request)) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		auth(req)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	basic := func(r *http.Request) { r.SetBasicAuth("admin", "t0ken-for-tests") }
	status, body := send("POST", "/webhooks", `{"id":"ep_csrf","url":"http://127.0.0.1:9/in","mode":"test"}`, nil, bearer)
	if status != http.StatusCreated {
		t.Fatalf("bearer POST /webhooks: %d %s", status, body)
	}
	// A page on another site, with the browser's Basic credentials, is refused:
	// no rotation, no paused queue, no replay, no deletion.
	evil := map[string]string{"Origin": "https://evil.test", "Sec-Fetch-Site": "cross-site"}
	for _, tc := range []struct {
		method, path string
		header       map[string]string
	}{
		{"POST", "/webhooks/ep_csrf/rotate-secret", evil},
		{"POST", "/monitor/api/queues/" + tasks.QueueDeliver + ":pause", evil},
		{"POST", "/webhooks/ep_csrf/replay?since=2026-01-01T00:00:00Z", evil},
		{"DELETE", "/webhooks/ep_csrf", evil},
		{"POST", "/webhooks/ep_csrf/rotate-secret", map[string]string{"Origin": "https://evil.test"}}, // older browser
		{"POST", "/webhooks/ep_csrf/rotate-secret", map[string]string{"Sec-Fetch-Site": "same-site"}}, // a sibling subdomain
	} {
		status, body := send(tc.method, tc.path, "", tc.header, basic)
		if status != http.StatusForbidden || !strings.Contains(body, `"code":"cross_origin"`) {
			t.Errorf("%s %s with %v: %d %s, want 403 cross_origin", tc.method, tc.path, tc.header, status, body)
		}
	}
	insp := asynq.NewInspector(redisOpt(t, srv.URL))
	defer insp.Close()
	if qi, err := insp.GetQueueInfo(tasks.QueueDeliver); err == nil && qi.Paused {
		t.Error("a cross-site POST paused the deliver queue")
	}
	status, body = send("GET", "/webhooks/ep_csrf", "", nil, bearer)
	if status != http.StatusOK || strings.Contains(body, "previous_secrets_expire_at") {
		t.Errorf("after the refused requests: %d %s (deleted or rotated)", status, body)
	}
	// The operator's own page (same origin) still works with Basic credentials.
	status, body = send("POST", "/webhooks/ep_csrf/rotate-secret", "",
		map[string]string{"Origin": "http://" + addr, "Sec-Fetch-Site": "same-origin"}, basic)
	if status != http.StatusOK || !strings.Contains(body, "whsec_") {
		t.Errorf("same-origin rotate-secret: %d %s", status, body)
	}

	// The portal, under /portal/, takes portal links only.
	status, body = send("POST", "/portal-links", `{"tenant":"acme","read_only":true}`, nil, bearer)
	var link struct{ URL, Token string }
	if status != http.StatusCreated || json.Unmarshal([]byte(body), &link) != nil || link.URL != "http://"+addr+"/portal/#token="+link.Token {
		t.Fatalf("POST /portal-links: %d %s", status, body)
	}
	portalBearer := func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+link.Token) }
	if resp := get("/portal/", nil); resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "default-src 'none'") {
		t.Errorf("GET /portal/: %d %v", resp.StatusCode, resp.Header)
	}
	if resp := get("/portal", nil); resp.StatusCode != http.StatusOK { // redirected to /portal/
		t.Errorf("GET /portal: %d", resp.StatusCode)
	}
	if status, body := send("GET", "/portal/api/session", "", nil, portalBearer); status != http.StatusOK || !strings.Contains(body, `"tenant":"acme"`) {
		t.Errorf("portal session: %d %s", status, body)
	}
	if status, body := send("GET", "/portal/api/webhooks", "", nil, bearer); status != http.StatusUnauthorized {
		t.Errorf("the admin token at the portal: %d %s", status, body)
	}
	if status, body := send("GET", "/webhooks", "", nil, portalBearer); status != http.StatusUnauthorized {
		t.Errorf("a portal token at the management API: %d %s", status, body)
	}
	if status, body := send("POST", "/portal/api/webhooks", `{"url":"https://a.example/"}`, nil, portalBearer); status != http.StatusForbidden ||
		!strings.Contains(body, "read_only_token") {
		t.Errorf("a read-only link's POST: %d %s", status, body)
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
	if strings.Contains(errb.String(), link.Token) {
		t.Fatal("a portal token reached the log")
	}
}
