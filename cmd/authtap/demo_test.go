package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDemoTraffic runs `authtap demo --traffic --exit` for a few seconds: the
// legacy API, Caddy with authtap, the embedded Redis, the in-process worker and
// the verifying receiver, all real, in this process.
func TestDemoTraffic(t *testing.T) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	err := demo(ctx, demoOptions{traffic: true, listen: "127.0.0.1:0", exit: true, wait: 45 * time.Second}, &out)
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{
		"through Caddy + authtap",
		"demo: 10 of 10 events delivered and verified, 0 deliveries rejected",
		"receiver  ✔ verified user.created",
		"receiver  ✔ verified tenant.deleted",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	// secrets from the API's answers must never reach a subscriber
	if strings.Contains(s, "$2y$") || strings.Contains(s, "ak_live_") || strings.Contains(s, "correct horse") {
		t.Errorf("a secret reached the receiver:\n%s", s)
	}
}

// The demo's admin API has no login: it answers only requests addressed to
// its own listener (127.0.0.1:port, localhost:port, [::1]:port), so a page
// whose host name is rebound to 127.0.0.1 cannot reach it (DNS rebinding).
func TestDemoAdminAnswersOnlyItsOwnHost(t *testing.T) {
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- demo(ctx, demoOptions{listen: "127.0.0.1:0"}, &out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the demo did not stop")
		}
	})
	re := regexp.MustCompile(`through Caddy \+ authtap\s+http://(\S+)/api/users`)
	var addr string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if m := re.FindStringSubmatch(out.String()); m != nil && strings.Contains(out.String(), "Ctrl-C stops the demo") {
			addr = m[1]
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the demo did not start:\n%s", out.String())
		}
	}
	_, port, _ := net.SplitHostPort(addr)
	do := func(method, host, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
		req.Host = host
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s (Host %s): %v", method, path, host, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, host := range []string{"127.0.0.1:" + port, "localhost:" + port} {
		if status, body := do("GET", host, "/_authtap/webhooks", ""); status != http.StatusOK || !strings.Contains(body, "demo-receiver") {
			t.Errorf("Host %s: %d %.200s", host, status, body)
		}
	}
	for _, host := range []string{
		"evil.test:" + port, "evil.test", "127.0.0.1", "127.0.0.1:1", "localhost.evil.test:" + port,
		"127.0.0.1." + ":" + port, "2130706433:" + port,
	} {
		for _, path := range []string{"/_authtap/webhooks", "/_authtap/monitor/", "/_authtap"} {
			if status, body := do("GET", host, path, ""); status != http.StatusMisdirectedRequest {
				t.Errorf("GET %s with Host %s: %d %.200s, want 421", path, host, status, body)
			}
		}
		status, body := do("POST", host, "/_authtap/webhooks", `{"id":"rebound","url":"http://127.0.0.1:9/","mode":"test"}`)
		if status != http.StatusMisdirectedRequest {
			t.Errorf("POST with Host %s: %d %.200s, want 421", host, status, body)
		}
	}
	if status, body := do("GET", "127.0.0.1:"+port, "/_authtap/webhooks/rebound", ""); status != http.StatusNotFound {
		t.Errorf("a rebound POST created an endpoint: %d %.200s", status, body)
	}
}

// The demo prints a portal link of its first tenant; the portal it opens
// makes an endpoint that then receives that tenant's events and no other's.
func TestDemoPortalLink(t *testing.T) {
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- demo(ctx, demoOptions{listen: "127.0.0.1:0"}, &out) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the demo did not stop")
		}
	})
	re := regexp.MustCompile(`tenant portal of t_1 \(Acme\)\s+(http://(\S+?)/portal/#token=(\S+))`)
	var m []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if m = re.FindStringSubmatch(out.String()); m != nil && strings.Contains(out.String(), "Ctrl-C stops the demo") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the demo printed no portal link:\n%s", out.String())
		}
	}
	base, token := "http://"+m[2], m[3]
	call := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if status, body := call("GET", "/portal/", ""); status != http.StatusOK || !strings.Contains(body, "portal.js") {
		t.Fatalf("the portal page: %d %.200s", status, body)
	}
	if status, body := call("GET", "/portal/api/session", ""); status != http.StatusOK || !strings.Contains(body, `"tenant":"t_1"`) {
		t.Fatalf("the link's session: %d %s", status, body)
	}
	got := make(chan string, 10)
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- string(b)
	}))
	defer rcv.Close()
	if status, body := call("POST", "/portal/api/webhooks", `{"url":"`+rcv.URL+`","mode":"test","events":["tenant.*"]}`); status != http.StatusCreated {
		t.Fatalf("creating an endpoint in the portal: %d %s", status, body)
	}
	// Two tenants through the proxy: t_1 (Acme) and t_2; only t_1's event reaches the endpoint.
	for _, name := range []string{"Acme", "Globex"} {
		resp, err := http.Post(base+"/api/tenants", "application/json", strings.NewReader(`{"name":"`+name+`"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	select {
	case b := <-got:
		if !strings.Contains(b, `"tenant":"t_1"`) || !strings.Contains(b, `"type":"tenant.created"`) || !strings.Contains(b, "Acme") {
			t.Errorf("the portal endpoint got %s", b)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the portal endpoint got nothing")
	}
	select {
	case b := <-got:
		t.Errorf("the portal endpoint also got %s", b)
	case <-time.After(time.Second):
	}
}
