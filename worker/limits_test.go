package worker

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestLimiterConcurrency(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	_, rdb := newTestRedis(t)
	l := &limiter{rdb: rdb, now: clock.Now, lease: time.Minute, concurrencyWait: 100 * time.Millisecond}
	r := &endpointRecord{ID: "ep", MaxConcurrency: 2}
	var held []slot
	for i := range 2 {
		s, err := l.acquire(ctx, r, fmt.Sprint(i))
		if err != nil {
			t.Fatalf("slot %d: %v", i, err)
		}
		held = append(held, s)
	}
	_, err := l.acquire(ctx, r, "3")
	var te *ThrottledError
	if !errors.As(err, &te) || te.Wait < 100*time.Millisecond || te.Wait > 150*time.Millisecond {
		t.Fatalf("third slot: %v, want a ThrottledError of 100–150ms", err)
	}
	if IsFailure(err) {
		t.Error("throttling counts as a failure")
	}
	l.release(ctx, held[0])
	if _, err := l.acquire(ctx, r, "4"); err != nil {
		t.Fatalf("slot after release: %v", err)
	}
	// A slot held by a worker that died frees itself when its lease ends.
	clock.Add(time.Minute + time.Millisecond)
	for i := range 2 {
		if _, err := l.acquire(ctx, r, fmt.Sprint("late", i)); err != nil {
			t.Fatalf("slot %d after lease expiry: %v", i, err)
		}
	}
}

// A delivery's new run takes back, when every slot is taken, the slots its
// earlier runs left (a worker killed while sending), and no other.
func TestLimiterTakesBackOwnSlot(t *testing.T) {
	ctx := context.Background()
	_, rdb := newTestRedis(t)
	l := &limiter{rdb: rdb, now: time.Now, lease: time.Minute, concurrencyWait: 100 * time.Millisecond}
	r := &endpointRecord{ID: "ep", MaxConcurrency: 2}
	for _, tok := range []string{"evt_1:ep@a", "evt_2:ep@a"} {
		if _, err := l.acquire(ctx, r, tok); err != nil {
			t.Fatal(err)
		}
	}
	var te *ThrottledError
	for _, tok := range []string{"evt_3:ep@b", "evt_1:e@b", "evt_1:ep", "@x"} {
		if _, err := l.acquire(ctx, r, tok); !errors.As(err, &te) {
			t.Fatalf("%s took a slot of another delivery: %v", tok, err)
		}
	}
	if _, err := l.acquire(ctx, r, "evt_1:ep@b"); err != nil {
		t.Fatalf("a new run of evt_1:ep: %v", err)
	}
	got := rdb.ZRange(ctx, inflightKey("ep"), 0, -1).Val()
	if len(got) != 2 || got[0] == "evt_1:ep@a" || got[1] == "evt_1:ep@a" {
		t.Fatalf("slots %v, want evt_2:ep@a and evt_1:ep@b", got)
	}
}

func TestLimiterRate(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	_, rdb := newTestRedis(t)
	l := &limiter{rdb: rdb, now: clock.Now, lease: time.Minute, concurrencyWait: time.Second}
	r := &endpointRecord{ID: "ep", RateLimit: 10, MaxConcurrency: 1000}
	granted := 0
	for i := range 20 {
		s, err := l.acquire(ctx, r, fmt.Sprint(i))
		if err == nil {
			granted++
			l.release(ctx, s)
			continue
		}
		var te *ThrottledError
		if !errors.As(err, &te) || te.Wait <= 0 || te.Wait > 200*time.Millisecond {
			t.Fatalf("acquire %d: %v", i, err)
		}
	}
	if granted != 10 {
		t.Errorf("granted %d of 20 at once, want the burst of 10", granted)
	}
	clock.Add(500 * time.Millisecond)
	granted = 0
	for i := range 10 {
		if s, err := l.acquire(ctx, r, fmt.Sprint("b", i)); err == nil {
			granted++
			l.release(ctx, s)
		}
	}
	if granted != 5 {
		t.Errorf("granted %d after 500ms at 10/s, want 5", granted)
	}
}

// On its last attempt a throttled delivery waits for a slot instead of going
// back to asynq, which would archive it without trying (its retries are used up).
func TestLastAttemptWaitsForASlot(t *testing.T) {
	ctx := context.Background()
	_, rdb := newTestRedis(t)
	l := &limiter{rdb: rdb, now: time.Now, lease: time.Minute, concurrencyWait: 20 * time.Millisecond}
	h := &deliverHandler{limiter: l, timeout: 2 * time.Second}
	r := &endpointRecord{ID: "ep", MaxConcurrency: 1}
	busy, err := l.acquire(ctx, r, "busy")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.acquireSlot(ctx, r, "evt:ep", false, 0); err == nil {
		t.Fatal("a throttled delivery that has retries left must go back to the queue")
	}
	go func() {
		time.Sleep(150 * time.Millisecond)
		l.release(ctx, busy)
	}()
	start := time.Now()
	if _, err := h.acquireSlot(ctx, r, "evt:ep", true, 0); err != nil {
		t.Fatalf("last attempt: %v", err)
	}
	if waited := time.Since(start); waited < 100*time.Millisecond {
		t.Fatalf("the last attempt got a slot after %s although it was busy", waited)
	}
	// still throttled after a whole attempt's timeout: give up, to be archived (and retryable)
	h.timeout = 100 * time.Millisecond
	if _, err := h.acquireSlot(ctx, r, "evt:ep2", true, 0); err == nil {
		t.Fatal("want a ThrottledError when no slot frees up within the timeout")
	}
}
