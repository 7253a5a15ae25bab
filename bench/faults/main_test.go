package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// The bench itself needs redis-server, Caddy and minutes; these tests cover
// its bookkeeping and its receiver, which decide what the table says.

func TestSummarizeCountsEveryFailure(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	start, end := t0.Add(10*time.Second), t0.Add(20*time.Second)
	l := newLedger()
	// u_1: before the fault, delivered before it: no backlog.
	l.create("u_1", t0)
	l.deliver("u_1", "evt_1", t0.Add(time.Second))
	// u_2: created during the fault, delivered 4 s after its end, twice under one id.
	l.create("u_2", t0.Add(15*time.Second))
	l.deliver("u_2", "evt_2", end.Add(4*time.Second))
	l.deliver("u_2", "evt_2", end.Add(5*time.Second))
	// u_3: created before the fault began, delivered after it began, under two ids.
	l.create("u_3", t0.Add(9*time.Second))
	l.deliver("u_3", "evt_3", end.Add(2*time.Second))
	l.deliver("u_3", "evt_3b", end.Add(3*time.Second))
	o := l.summarize(start, end, end.Add(time.Minute))
	if o.created != 3 || o.atStart != 1 || o.backlog != 2 || o.lost != 0 || !o.drained {
		t.Fatalf("outcome %+v", o)
	}
	if o.drain != 4*time.Second || o.secondID != 1 || o.redelivered != 1 || o.slowest != 13*time.Second {
		t.Fatalf("drain %s, second id %d, redelivered %d, slowest %s", o.drain, o.secondID, o.redelivered, o.slowest)
	}
	if o.ok(drainGoal) {
		t.Fatal("an event under a second webhook-id met the goal")
	}

	// one event of the backlog never arrives: not drained, counted as waiting
	l.create("u_4", t0.Add(19*time.Second))
	// one arrives after traffic went on past the end: lost, but the backlog drained
	l.create("u_5", end.Add(time.Second))
	// a delivery of a user nobody created
	l.deliver("u_x", "evt_x", end)
	o = l.summarize(start, end, end.Add(time.Minute))
	if o.drained || o.lost != 2 || o.lostBacklog != 1 || o.unexpected != 1 || o.backlog != 3 {
		t.Fatalf("outcome %+v", o)
	}
	if got := o.drainText(2 * time.Minute); got != "not drained within 2m0s, 1 waiting" {
		t.Fatalf("drain text %q", got)
	}
	// u_4 has waited from t0+19 s to until = t0+80 s: 61 s, the slowest so far
	if got := o.slowestText(); got != "≥ 61.0 s" {
		t.Fatalf("slowest %q", got)
	}
}

func TestOutcomeGoal(t *testing.T) {
	good := outcome{created: 10, drained: true, drain: drainGoal}
	if !good.ok(drainGoal) {
		t.Fatal("a clean outcome at exactly the goal missed it")
	}
	for name, bad := range map[string]func(*outcome){
		"slow":          func(o *outcome) { o.drain = drainGoal + time.Millisecond },
		"not drained":   func(o *outcome) { o.drained = false },
		"lost":          func(o *outcome) { o.lost = 1 },
		"second id":     func(o *outcome) { o.secondID = 1 },
		"bad signature": func(o *outcome) { o.badSig = 1 },
		"bad body":      func(o *outcome) { o.badBody = 1 },
		"id mismatch":   func(o *outcome) { o.mismatch = 1 },
		"unexpected":    func(o *outcome) { o.unexpected = 1 },
	} {
		o := good
		bad(&o)
		if o.ok(drainGoal) {
			t.Errorf("%s: met the goal", name)
		}
	}
}

func TestParseScenarios(t *testing.T) {
	got, err := parseScenarios(" redis-freeze,worker-kill,redis-freeze")
	if err != nil || strings.Join(got, ",") != "redis-freeze,worker-kill" {
		t.Fatalf("got %v, %v", got, err)
	}
	if got, _ := parseScenarios("all"); len(got) != len(allScenarios) {
		t.Fatalf("all: %v", got)
	}
	for _, bad := range []string{"", "redis-stop,", "redis-stop;rm -rf /", "REDIS-STOP", strings.Repeat("x", 1<<16)} {
		if _, err := parseScenarios(bad); err == nil {
			t.Errorf("%.40q accepted", bad)
		}
	}
}

func TestCheckOptionsRefusesHostileValues(t *testing.T) {
	good := options{rate: 80, outage: 15 * time.Second, receiverShort: 4 * time.Second, receiverLong: 10 * time.Second,
		workerGap: 2 * time.Second, burst: 200, before: 5 * time.Second, after: 3 * time.Second, maxDrain: 2 * time.Minute,
		settle: 3 * time.Second, redisSignal: "term", receiver: "go"}
	if err := checkOptions(good); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]func(*options){
		"rate 0":          func(o *options) { o.rate = 0 },
		"rate huge":       func(o *options) { o.rate = 1e9 },
		"negative outage": func(o *options) { o.outage = -time.Second },
		"burst too big":   func(o *options) { o.burst = maxInFlight + 1 },
		"max-drain 0":     func(o *options) { o.maxDrain = 0 },
		"max-drain year":  func(o *options) { o.maxDrain = 365 * 24 * time.Hour },
		"signal":          func(o *options) { o.redisSignal = "stop" },
		"before 0":        func(o *options) { o.before = 0 },
		"receiver":        func(o *options) { o.receiver = "../node" },
		"timeout":         func(o *options) { o.timeout = -time.Second },
	} {
		o := good
		bad(&o)
		if err := checkOptions(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestReceiverVerifies sends the receiver a correctly signed delivery, one
// signed with another secret, one whose webhook-id differs from the event's
// id, an oversized body, and one that is not a user.created event; each is
// counted where the table shows it.
func TestReceiverVerifies(t *testing.T) {
	secret, err := newSecret()
	if err != nil {
		t.Fatal(err)
	}
	other, _ := newSecret()
	led := newLedger()
	r, err := newReceiver(secret, led, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.down()
	post := func(secret, id string, body []byte) int { return postSigned(t, r.url(), secret, id, body) }
	if s := post(secret, "evt_1", event("evt_1", "u_1")); s != http.StatusNoContent {
		t.Fatalf("good delivery: status %d", s)
	}
	if s := post(other, "evt_2", event("evt_2", "u_2")); s != http.StatusUnauthorized {
		t.Fatalf("foreign signature: status %d", s)
	}
	post(secret, "evt_other", event("evt_3", "u_3"))
	post(secret, "evt_4", append(event("evt_4", "u_4"), bytes.Repeat([]byte(" "), maxDeliveryBody)...))
	post(secret, "evt_5", []byte(`{"id":"evt_5","type":"tenant.created","data":{"id":"t_1"}}`))
	led.create("u_1", time.Now())
	if _, d := led.counts(); d != 1 {
		t.Fatalf("%d delivered, want u_1 only", d)
	}
	if led.badSig != 1 || led.mismatch != 1 || led.badBody != 2 || led.delivered["u_2"] != nil {
		t.Fatalf("bad signatures %d, mismatches %d, bad bodies %d", led.badSig, led.mismatch, led.badBody)
	}

	// down: refused; up again on the same port: delivered
	r.down()
	if _, err := http.Post(r.url(), "application/json", strings.NewReader("{}")); err == nil {
		t.Fatal("receiver answered while down")
	}
	if err := r.up(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := post(secret, "evt_6", event("evt_6", "u_6")); s != http.StatusNoContent {
		t.Fatalf("after up: status %d", s)
	}
}

func event(id, user string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"type":"user.created","data":{"id":%q}}`, id, user)
}

// postSigned POSTs body to url signed with secret under webhook-id id and
// returns the status.
func postSigned(t *testing.T, url, secret, id string, body []byte) int {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sig, err := wh.Sign(id, now, body)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestNodeReceiverVerifies is TestReceiverVerifies for the Node.js receiver
// (skipped without node): its own signature check must refuse a foreign
// secret and a stale timestamp, and no delivery it answered may be missed
// when it is killed right after.
func TestNodeReceiverVerifies(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node not on PATH")
	}
	secret, _ := newSecret()
	other, _ := newSecret()
	led := newLedger()
	r, err := newNodeReceiver(context.Background(), t.TempDir(), secret, led)
	if err != nil {
		t.Fatal(err)
	}
	defer r.down()
	if s := postSigned(t, r.url(), secret, "evt_1", event("evt_1", "u_1")); s != http.StatusNoContent {
		t.Fatalf("good delivery: status %d", s)
	}
	if s := postSigned(t, r.url(), other, "evt_2", event("evt_2", "u_2")); s != http.StatusUnauthorized {
		t.Fatalf("foreign signature: status %d", s)
	}
	// a correct signature over a timestamp an hour old
	wh, _ := standardwebhooks.NewWebhook(secret)
	old := time.Now().Add(-time.Hour)
	body := event("evt_3", "u_3")
	sig, _ := wh.Sign("evt_3", old, body)
	req, _ := http.NewRequest(http.MethodPost, r.url(), bytes.NewReader(body))
	req.Header.Set("webhook-id", "evt_3")
	req.Header.Set("webhook-timestamp", strconv.FormatInt(old.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("stale timestamp: status %d", resp.StatusCode)
	}
	postSigned(t, r.url(), secret, "evt_4", event("evt_4", "u_4"))
	r.down() // killed right after answering: its last line must still be read
	if err := r.up(context.Background()); err != nil {
		t.Fatal(err)
	}
	postSigned(t, r.url(), secret, "evt_5", event("evt_5", "u_5"))
	deadline := time.Now().Add(5 * time.Second)
	for {
		led.mu.Lock()
		n, bad := len(led.delivered), led.badSig
		led.mu.Unlock()
		if n == 3 && bad == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d delivered (want u_1, u_4, u_5), %d bad signatures (want 2)", n, bad)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, u := range []string{"u_1", "u_4", "u_5"} {
		if led.delivered[u] == nil {
			t.Errorf("%s not recorded", u)
		}
	}
}
