package main

import (
	"bytes"
	"context"
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
