package worker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/worker/tasks"
)

// slowReceiver takes delay over each request and records, per endpoint path,
// the webhook-ids it answered in order, when, and the most requests it had in
// flight at once per path.
type slowReceiver struct {
	delay time.Duration
	mu    sync.Mutex
	got   map[string][]string
	at    map[string][]time.Time
	now   map[string]int
	most  map[string]int
	total atomic.Int64
}

func newSlowReceiver(t *testing.T, delay time.Duration) (*slowReceiver, *httptest.Server) {
	sr := &slowReceiver{delay: delay, got: map[string][]string{}, at: map[string][]time.Time{}, now: map[string]int{}, most: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		path := r.URL.Path
		sr.mu.Lock()
		sr.now[path]++
		sr.most[path] = max(sr.most[path], sr.now[path])
		sr.mu.Unlock()
		time.Sleep(sr.delay)
		sr.mu.Lock()
		sr.now[path]--
		sr.got[path] = append(sr.got[path], r.Header.Get("webhook-id"))
		sr.at[path] = append(sr.at[path], time.Now())
		sr.mu.Unlock()
		sr.total.Add(1)
	}))
	t.Cleanup(srv.Close)
	return sr, srv
}

func (sr *slowReceiver) snapshot(path string) ([]string, []time.Time, int) {
	sr.mu.Lock()
	defer sr.mu.Unlock()
	return append([]string(nil), sr.got[path]...), append([]time.Time(nil), sr.at[path]...), sr.most[path]
}

// enqueueDeliveries queues n deliveries of new events to endpoint id directly
// (no fan-out), one after another, and returns their event ids in that order.
func enqueueDeliveries(t *testing.T, srv *redistest.Server, store *Store, id string, n int) []string {
	t.Helper()
	ctx := context.Background()
	ep, err := store.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer c.Close()
	ids := make([]string, n)
	for i := range n {
		ev := testEvent(fmt.Sprintf("evt_%s_%05d", id, i), "user.created", "test")
		p, err := DeliverPayloadFor(ev, ep, false)
		if err != nil {
			t.Fatal(err)
		}
		task, err := tasks.NewDeliverTask(p, asynq.MaxRetry(fastRetry.MaxRetry()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.EnqueueContext(ctx, task); err != nil {
			t.Fatal(err)
		}
		ids[i] = ev.ID
	}
	return ids
}

// checkBacklog checks that each of ids arrived once, none out of its place in
// want by more than window, and no more than maxc at once.
func checkBacklog(t *testing.T, want, got []string, most, maxc, window int) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d deliveries, want %d", len(got), len(want))
	}
	pos := map[string]int{}
	for i, id := range want {
		pos[id] = i
	}
	seen := map[string]bool{}
	worst := 0
	for i, id := range got {
		if seen[id] {
			t.Errorf("%s delivered twice", id)
		}
		seen[id] = true
		p, ok := pos[id]
		if !ok {
			t.Errorf("unexpected delivery %s", id)
			continue
		}
		worst = max(worst, abs(i-p))
	}
	t.Logf("out of place by at most %d", worst)
	if worst > window {
		t.Errorf("a delivery arrived %d places from its place in the queue, want at most %d", worst, window)
	}
	if most > maxc {
		t.Errorf("%d deliveries in flight at once, MaxConcurrency is %d", most, maxc)
	}
}

func abs(n int) int {
	if n < 0 {
		return -n
	}
	return n
}

// A backlog for one endpoint, behind its concurrency limit, drains at about
// MaxConcurrency × receiver speed instead of waiting out a re-delay per
// attempt: 300 deliveries queued before the worker starts, a receiver that
// takes 20 ms, 5 slots (250/s at best; before the deliveries waited in line,
// 3–15/s). Each arrives once, in queue order within the window of the
// worker's concurrency, never more than 5 at once; another endpoint's
// deliveries queued behind the backlog are not held up by it. With two
// workers sharing the Redis, the slots one frees are handed out by it while
// the other drains.
func TestThrottledBacklogDrainsAtConcurrency(t *testing.T) {
	for _, workers := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d workers", workers), func(t *testing.T) { testThrottledBacklog(t, workers) })
	}
}

func testThrottledBacklog(t *testing.T, workers int) {
	const n, others, maxc, concurrency = 300, 50, 5, 20
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	sr, recv := newSlowReceiver(t, 20*time.Millisecond)
	eps := []EndpointConfig{
		{ID: "slow", URL: recv.URL + "/slow", Mode: "test", Secret: testSecret(t), MaxConcurrency: maxc},
		{ID: "other", URL: recv.URL + "/other", Mode: "test", Secret: testSecret(t)},
	}
	store, err := NewStore(rdb, StoreOptions{Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	want := enqueueDeliveries(t, srv, store, "slow", n)
	wantOthers := enqueueDeliveries(t, srv, store, "other", others)
	start := time.Now()
	for range workers {
		startWorker(t, srv, Config{
			Concurrency: concurrency, Endpoints: eps, Logger: zap.NewNop(),
			DelayedTaskCheckInterval: DefaultDelayedTaskCheckInterval, // as in production: the re-delay is what made it slow
		})
	}
	waitFor(t, 30*time.Second, "the backlog to be delivered", func() bool {
		got, _, _ := sr.snapshot("/slow")
		return len(got) >= n
	})
	took := time.Since(start)
	time.Sleep(200 * time.Millisecond)
	got, at, most := sr.snapshot("/slow")
	gotOthers, atOthers, _ := sr.snapshot("/other")
	rate := float64(n-1) / at[len(at)-1].Sub(at[0]).Seconds()
	t.Logf("%d deliveries for one endpoint (%d slots, receiver 20 ms) in %s from the worker's start: %.0f/s between the first and the last; %d in flight at most",
		n, maxc, took.Round(time.Millisecond), rate, most)
	// Order: a delivery can be overtaken by what every worker goroutine had
	// already dequeued when it joined the line, and, with several workers,
	// by as many again handed a slot while its own worker's goroutines were
	// busy (seen: 52 places with 2 workers of 20 on a loaded 2-core box).
	window := 2*workers*concurrency + maxc
	checkBacklog(t, want, got, most, maxc, window)
	checkBacklog(t, wantOthers, gotOthers, 0, maxc, window)
	if took > 10*time.Second {
		t.Errorf("the backlog took %s, want a few seconds (about %s at 5 × 50/s)", took, time.Duration(n)*4*time.Millisecond)
	}
	if len(atOthers) == others {
		othersDone := atOthers[len(atOthers)-1].Sub(start)
		t.Logf("the other endpoint's %d deliveries, queued behind the backlog, arrived within %s", others, othersDone.Round(time.Millisecond))
		if othersDone > took/2 {
			t.Errorf("the other endpoint's deliveries took %s of the backlog's %s: held up behind it", othersDone, took)
		}
	}
	if left := rdb.Exists(context.Background(), lineKey("slow"), waitingKey("slow"), reservedKey("slow"), inflightKey("slow")).Val(); left != 0 {
		t.Errorf("%d of the endpoint's line, waiting list, reservations and slots left in Redis", left)
	}
}

// With a rate limit, a backlog drains at that rate (after its burst), in
// order, not slower.
func TestRateLimitedBacklogDrainsAtRate(t *testing.T) {
	const n, rateLimit, concurrency = 120, 40, 20
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	sr, recv := newSlowReceiver(t, 5*time.Millisecond)
	eps := []EndpointConfig{{ID: "rated", URL: recv.URL + "/rated", Mode: "test", Secret: testSecret(t), RateLimit: rateLimit, MaxConcurrency: 10}}
	store, err := NewStore(rdb, StoreOptions{Endpoints: eps})
	if err != nil {
		t.Fatal(err)
	}
	want := enqueueDeliveries(t, srv, store, "rated", n)
	startWorker(t, srv, Config{Concurrency: concurrency, Endpoints: eps, Logger: zap.NewNop(), DelayedTaskCheckInterval: DefaultDelayedTaskCheckInterval})
	waitFor(t, 30*time.Second, "the backlog to be delivered", func() bool {
		got, _, _ := sr.snapshot("/rated")
		return len(got) >= n
	})
	got, at, most := sr.snapshot("/rated")
	// The burst (one second's worth) goes at once, the rest at the rate.
	span := at[len(at)-1].Sub(at[0])
	floor := time.Duration(float64(n-rateLimit-1) / rateLimit * float64(time.Second))
	t.Logf("%d deliveries at a rate limit of %d/s (burst %d) in %s; the limit allows no less than %s", n, rateLimit, rateLimit, span.Round(time.Millisecond), floor.Round(time.Millisecond))
	if span < floor*9/10 {
		t.Errorf("delivered in %s: faster than the rate limit allows (%s)", span, floor)
	}
	if span > floor+3*time.Second {
		t.Errorf("delivered in %s, want about %s: slower than the rate limit", span, floor)
	}
	checkBacklog(t, want, got, most, 10, concurrency+10)
}

// The line of an endpoint: a refused delivery joins it once (keeping its
// place), a drain's lock makes a delivery with others before it wait although
// a slot is free (but for one whose earlier run held a slot), a reservation is
// taken by its delivery only and counts as a taken slot, one that lapses puts
// its delivery back in its place, and the line is capped.
func TestLimiterLine(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	_, rdb := newTestRedis(t)
	l := &limiter{rdb: rdb, now: clock.Now, lease: time.Minute, concurrencyWait: 100 * time.Millisecond, maxWaiting: 4}
	r := &endpointRecord{ID: "ep", MaxConcurrency: 1}
	busy, _, err := l.acquireIn(ctx, r, "a:ep@1", true, false)
	if err != nil {
		t.Fatal(err)
	}
	var te *ThrottledError
	bPlace := clock.Now().UnixMilli()
	for i, tok := range []string{"b:ep@1", "c:ep@1", "b:ep@2"} {
		clock.Add(time.Millisecond * time.Duration(min(i, 1)))
		_, q, err := l.acquireIn(ctx, r, tok, true, false)
		if !errors.As(err, &te) {
			t.Fatalf("%s: %v, want throttled", tok, err)
		}
		if wantRank := []int64{0, 1, 0}[i]; q.rank != wantRank || q.added != (i < 2) || q.draining {
			t.Errorf("%s: %+v, want rank %d, added %v", tok, q, wantRank, i < 2)
		}
	}
	// The wait grows with the place: c waits behind b.
	_, _, errC := l.acquireIn(ctx, r, "c:ep@2", true, false)
	if !errors.As(errC, &te) || te.Wait < 200*time.Millisecond || te.Wait > 300*time.Millisecond {
		t.Errorf("second in line waits %v, want 100ms + 100ms per slot-full ahead (+50%%)", errC)
	}
	if got := rdb.ZRange(ctx, lineKey("ep"), 0, -1).Val(); len(got) != 2 || got[0] != "b:ep" || got[1] != "c:ep" {
		t.Fatalf("line %v, want [b:ep c:ep]", got)
	}
	l.release(ctx, busy)
	// A drain hands the slots out: c, with b before it, waits although the slot is free.
	rdb.Set(ctx, drainKey("ep"), "token", time.Minute)
	if _, q, err := l.acquireIn(ctx, r, "c:ep@3", true, false); !errors.As(err, &te) || !q.draining {
		t.Fatalf("c jumped the line: %v %+v", err, q)
	}
	if _, _, err := l.acquireIn(ctx, r, "new:ep@1", true, false); !errors.As(err, &te) {
		t.Fatalf("a new delivery jumped the line: %v", err)
	}
	// Not waiting in line (the last attempt) it may take the free slot.
	if s, err := l.acquire(ctx, r, "last:ep@1"); err != nil {
		t.Fatalf("last attempt: %v", err)
	} else {
		l.release(ctx, s)
	}
	// b, the oldest, takes it, leaving the line with its place.
	s, _, err := l.acquireIn(ctx, r, "b:ep@3", true, false)
	if err != nil {
		t.Fatalf("head of the line: %v", err)
	}
	if s.place != float64(bPlace) {
		t.Errorf("place %v, want the time b first waited", s.place)
	}
	l.release(ctx, s)
	rdb.Del(ctx, drainKey("ep"))

	// A reservation: c is handed the slot; others are refused, c takes it.
	keys := limitKeys("ep")
	now := clock.Now().UnixMilli()
	out, err := reserveScript.Run(ctx, rdb, keys, now, reserveLease.Milliseconds(), 1, 0, 1, "0", 0, "c:ep", "new:ep").Slice()
	if err != nil || len(out) != 4 || out[3] != "c:ep" {
		t.Fatalf("reserve: %v %v, want c:ep reserved", out, err)
	}
	if _, _, err := l.acquireIn(ctx, r, "x:ep@1", false, false); !errors.As(err, &te) {
		t.Fatalf("a reserved slot was taken by another delivery: %v", err)
	}
	if s, _, err := l.acquireIn(ctx, r, "c:ep@4", true, false); err != nil {
		t.Fatalf("c did not take its reservation: %v", err)
	} else {
		l.release(ctx, s)
	}
	// A reservation that lapses puts its delivery back in line, in its place.
	out, err = reserveScript.Run(ctx, rdb, keys, now, reserveLease.Milliseconds(), 1, 0, 1, "0", 0, "new:ep").Slice()
	if err != nil || len(out) != 4 {
		t.Fatalf("reserve: %v %v", out, err)
	}
	clock.Add(reserveLease + time.Millisecond)
	if _, _, err := l.acquireIn(ctx, r, "y:ep@1", true, false); err != nil {
		t.Fatalf("the lapsed reservation still holds the slot: %v", err)
	}
	if got := rdb.ZRange(ctx, lineKey("ep"), 0, -1).Val(); len(got) != 1 || got[0] != "new:ep" {
		t.Fatalf("line %v, want new:ep back", got)
	}
	// The line is capped; past the cap a refused delivery is not in line.
	for i := range 10 {
		_, q, err := l.acquireIn(ctx, r, fmt.Sprintf("z%d:ep@1", i), true, false)
		if !errors.As(err, &te) {
			t.Fatalf("z%d: %v", i, err)
		}
		if i >= 3 && q.rank != -1 {
			t.Errorf("z%d past the cap of 4: rank %d", i, q.rank)
		}
		if q.rank == -1 && te.Wait > 150*time.Millisecond {
			t.Errorf("z%d not in line waits %s, want ThrottleWait (+50%%)", i, te.Wait)
		}
	}
	if n := rdb.ZCard(ctx, lineKey("ep")).Val(); n != 4 {
		t.Errorf("line holds %d, cap is 4", n)
	}
	// y's run died while sending; its new run takes its slot back and goes on
	// although a drain runs and others wait in line: that run was sending.
	rdb.Set(ctx, drainKey("ep"), "token", time.Minute)
	if _, _, err := l.acquireIn(ctx, r, "y:ep@2", true, false); err != nil {
		t.Fatalf("the new run of a delivery that held a slot: %v", err)
	}
}

// A recovered run takes back the slot its dead run held even when another
// slot is free, and goes on although others wait in line before it: without
// that, one refused for its place would leave the dead slot taken for the
// whole lease (a worker killed while sending drained at one slot in five).
func TestLimiterRecoveredRunTakesBackItsSlot(t *testing.T) {
	ctx := context.Background()
	_, rdb := newTestRedis(t)
	l := &limiter{rdb: rdb, now: time.Now, lease: time.Minute, concurrencyWait: 100 * time.Millisecond}
	r := &endpointRecord{ID: "ep", MaxConcurrency: 2}
	if _, err := l.acquire(ctx, r, "d:ep@dead"); err != nil {
		t.Fatal(err)
	}
	rdb.ZAdd(ctx, lineKey("ep"), redis.Z{Score: 1, Member: "older:ep"})
	rdb.Set(ctx, drainKey("ep"), "token", time.Minute)
	var te *ThrottledError
	if _, _, err := l.acquireIn(ctx, r, "d:ep@second", true, false); !errors.As(err, &te) {
		t.Fatalf("a run that is not a recovered one jumped the line: %v", err)
	}
	if got := rdb.ZRange(ctx, inflightKey("ep"), 0, -1).Val(); len(got) != 1 || got[0] != "d:ep@dead" {
		t.Fatalf("slots %v, want the dead run's left (slots were free)", got)
	}
	rdb.ZRem(ctx, lineKey("ep"), "d:ep")
	s, _, err := l.acquireIn(ctx, r, "d:ep@recovered", true, true)
	if err != nil {
		t.Fatalf("the recovered run: %v", err)
	}
	if got := rdb.ZRange(ctx, inflightKey("ep"), 0, -1).Val(); len(got) != 1 || got[0] != s.token {
		t.Fatalf("slots %v, want only the recovered run's %s", got, s.token)
	}
}
