package worker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
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

// longStep has a quick first retry schedule step nobody waits for in a test:
// a delivery that failed once waits 10 minutes unless it is pulled forward.
var longStep = RetryPolicy{Schedule: []time.Duration{0, 10 * time.Minute, 10 * time.Minute, 10 * time.Minute}, Jitter: -1}

// flakyReceiver answers 503 while down and 200 otherwise; it records the
// 2xx per webhook-id in order, every request, and the most requests it had
// in flight at once.
type flakyReceiver struct {
	down      atomic.Bool
	requests  atomic.Int64
	inflight  atomic.Int64
	maxFlight atomic.Int64
	mu        sync.Mutex
	ok        []string
	okAt      []time.Time
}

func newFlakyReceiver(t *testing.T, delay time.Duration) (*flakyReceiver, *httptest.Server) {
	fr := &flakyReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fr.requests.Add(1)
		n := fr.inflight.Add(1)
		defer fr.inflight.Add(-1)
		for {
			m := fr.maxFlight.Load()
			if n <= m || fr.maxFlight.CompareAndSwap(m, n) {
				break
			}
		}
		time.Sleep(delay)
		if fr.down.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fr.mu.Lock()
		fr.ok = append(fr.ok, r.Header.Get("webhook-id"))
		fr.okAt = append(fr.okAt, time.Now())
		fr.mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	return fr, srv
}

func (fr *flakyReceiver) delivered() ([]string, []time.Time) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return append([]string(nil), fr.ok...), append([]time.Time(nil), fr.okAt...)
}

// waitingFor returns the task ids indexed as waiting for endpoint id, oldest first.
func waitingFor(t *testing.T, rdb redis.UniversalClient, id string) []string {
	t.Helper()
	ids, err := rdb.ZRange(context.Background(), waitingKey(id), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// Acceptance 5: a receiver that was down, with 60 deliveries waiting on a
// 10-minute step, gets all of them within seconds of answering again, oldest
// first within its concurrency window, each webhook-id once, never more than
// its MaxConcurrency at once, from two workers sharing one Redis.
func TestRecoveredEndpointDrainsBacklog(t *testing.T) {
	const n, maxc = 60, 3
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	fr, recv := newFlakyReceiver(t, 5*time.Millisecond)
	fr.down.Store(true)
	cfg := Config{
		Retry: longStep, ProbeInterval: 200 * time.Millisecond,
		Endpoints: []EndpointConfig{{ID: "ep", URL: recv.URL, Mode: "test", Secret: testSecret(t), MaxConcurrency: maxc}},
		Logger:    zap.NewNop(),
	}
	startWorker(t, srv, cfg)
	startWorker(t, srv, cfg)
	ids := enqueueEvents(t, srv, "user.created", "test", n)
	waitFor(t, 20*time.Second, "every delivery to wait on its 10-minute step", func() bool {
		return len(waitingFor(t, rdb, "ep")) == n
	})
	order := waitingFor(t, rdb, "ep")
	// Nothing is pulled forward while the receiver stays down.
	time.Sleep(time.Second)
	if got := waitingFor(t, rdb, "ep"); len(got) != n {
		t.Fatalf("%d deliveries waiting while the receiver is down, want %d", len(got), n)
	}

	fr.down.Store(false)
	up := time.Now()
	waitFor(t, 10*time.Second, "the backlog to be delivered", func() bool {
		got, _ := fr.delivered()
		return len(got) >= n
	})
	took := time.Since(up)
	t.Logf("receiver back: %d deliveries waiting on a 10-minute step delivered in %s", n, took.Round(time.Millisecond))
	if took > 5*time.Second {
		t.Errorf("draining took %s, want a few seconds", took)
	}
	time.Sleep(300 * time.Millisecond)
	got, _ := fr.delivered()
	seen := map[string]int{}
	for _, id := range got {
		seen[id]++
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("event %s got %d successful deliveries, want 1", id, seen[id])
		}
	}
	if len(got) != n {
		t.Errorf("%d successful deliveries, want %d", len(got), n)
	}
	// Oldest first: each delivery arrives within the concurrency window of
	// its place among the waiting ones.
	rank := map[string]int{}
	for i, id := range order {
		rank[id] = i
	}
	for _, id := range ids {
		if _, ok := rank[tasks.DeliverTaskID(id, "ep")]; !ok {
			t.Fatalf("event %s not indexed as waiting", id)
		}
	}
	for i, id := range got {
		if d := i - rank[tasks.DeliverTaskID(id, "ep")]; d > maxc || d < -maxc {
			t.Errorf("delivery %d was %s, waiting #%d: out of order by more than the window of %d", i, id, rank[tasks.DeliverTaskID(id, "ep")], maxc)
		}
	}
	if m := fr.maxFlight.Load(); m > maxc {
		t.Errorf("receiver had %d requests in flight, MaxConcurrency is %d", m, maxc)
	}
	if left := waitingFor(t, rdb, "ep"); len(left) != 0 {
		t.Errorf("%d deliveries still indexed as waiting", len(left))
	}
	if ok, _ := rdb.SIsMember(context.Background(), keyWaitingEndpoints, "ep").Result(); ok {
		t.Error("endpoint still listed as having waiting deliveries")
	}
}

// Acceptance 5: an endpoint that stays down keeps its schedule. Probes reach
// it one at a time and at most once per ProbeInterval (across two workers),
// and a failed probe costs its delivery no retry: every delivery still has
// one failed attempt counted and its retry 10 minutes after its first try.
func TestFailingEndpointKeepsSchedule(t *testing.T) {
	const n = 20
	probe := 200 * time.Millisecond
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	fr, recv := newFlakyReceiver(t, 20*time.Millisecond)
	fr.down.Store(true)
	cfg := Config{
		Retry: longStep, ProbeInterval: probe,
		Endpoints: []EndpointConfig{{ID: "ep", URL: recv.URL, Mode: "test", Secret: testSecret(t)}},
		Logger:    zap.NewNop(),
	}
	w := startWorker(t, srv, cfg)
	startWorker(t, srv, cfg)
	enqueueEvents(t, srv, "user.created", "test", n)
	waitFor(t, 20*time.Second, "every delivery to wait", func() bool { return len(waitingFor(t, rdb, "ep")) == n })
	before := fr.requests.Load()
	fr.maxFlight.Store(0)
	window := 3 * time.Second
	time.Sleep(window)
	probes := fr.requests.Load() - before
	t.Logf("%d probes in %s at a probe interval of %s", probes, window, probe)
	// One probe per interval at most, plus the one that may straddle the start.
	if limit := int64(window/probe) + 1; probes > limit {
		t.Errorf("%d requests while down in %s, want at most %d (one probe per %s)", probes, window, limit, probe)
	}
	if probes < 2 {
		t.Errorf("%d probes in %s: the failing endpoint was not probed", probes, window)
	}
	if m := fr.maxFlight.Load(); m > 1 {
		t.Errorf("%d probes in flight at once, want 1", m)
	}
	ins := asynq.NewInspectorFromRedisClient(rdb)
	retries, err := ins.ListRetryTasks(tasks.QueueDeliver, asynq.PageSize(100))
	if err != nil {
		t.Fatal(err)
	}
	// A probe in flight is not in the retry set.
	if len(retries) < n-1 {
		t.Fatalf("%d deliveries in the retry set, want at least %d", len(retries), n-1)
	}
	for _, ti := range retries {
		if ti.Retried != 1 {
			t.Errorf("delivery %s has %d retries counted after probes, want 1", ti.ID, ti.Retried)
		}
		if until := time.Until(ti.NextProcessAt); until < 10*time.Minute-window-5*time.Second {
			t.Errorf("delivery %s retries in %s: a probe moved its schedule forward", ti.ID, until)
		}
	}
	// The probes are in the delivery log as failed attempts #2 at most.
	atts, err := w.Store().Attempts(context.Background(), "ep", 1000, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(atts)) != before+probes && int64(len(atts)) != before+probes-1 {
		t.Errorf("%d attempts logged, want %d (first attempts and probes)", len(atts), before+probes)
	}
}

// The index of one endpoint is bounded: past maxWaiting the newest failures
// are not indexed (they keep their schedule), and the oldest stay.
func TestWaitingIndexIsBounded(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	d := newDrainer(rdb, nil, zap.NewNop(), time.Second, time.Second)
	d.maxWaiting = 3
	base := time.Now()
	for i := range 1000 {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			d.indexIn(ctx, p, "ep", "t"+string(rune('a'+i%26))+time.Duration(i).String(), outcomeWaits, false, base.Add(time.Duration(i)*time.Millisecond))
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	got := waitingFor(t, rdb, "ep")
	if len(got) != 3 || got[0] != "ta0s" {
		t.Fatalf("index holds %v, want the 3 oldest", got)
	}
	if ttl := rdb.PTTL(ctx, waitingKey("ep")).Val(); ttl <= 0 || ttl > waitingTTL {
		t.Errorf("index TTL %s, want (0, %s]", ttl, waitingTTL)
	}
}

// Acceptance 5: the 2xx of a new delivery (no probe: the interval is long)
// pulls the backlog of its endpoint forward.
func TestSuccessOfNewDeliveryDrainsBacklog(t *testing.T) {
	const n = 20
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	fr, recv := newFlakyReceiver(t, 0)
	fr.down.Store(true)
	startWorker(t, srv, Config{
		Retry: longStep, ProbeInterval: MaxProbeInterval, // no probe within the test: only the new delivery can drain
		Endpoints: []EndpointConfig{{ID: "ep", URL: recv.URL, Mode: "test", Secret: testSecret(t)}},
		Logger:    zap.NewNop(),
	})
	ids := enqueueEvents(t, srv, "user.created", "test", n)
	waitFor(t, 20*time.Second, "every delivery to wait", func() bool { return len(waitingFor(t, rdb, "ep")) == n })
	time.Sleep(500 * time.Millisecond)
	if got, _ := fr.delivered(); len(got) != 0 {
		t.Fatalf("%d deliveries while down", len(got))
	}
	fr.down.Store(false)
	ids = append(ids, enqueueEvents(t, srv, "user.created", "test", 1)...)
	waitFor(t, 5*time.Second, "the backlog to follow the new delivery", func() bool {
		got, _ := fr.delivered()
		return len(got) >= n+1
	})
	got, _ := fr.delivered()
	if got[0] != ids[n] {
		t.Errorf("first delivery after the outage was %s, want the new event %s", got[0], ids[n])
	}
}

// A hostile or stale index (ids of tasks that do not exist, of an endpoint
// that was deleted) neither stalls a drain nor a probe: the entries are
// dropped, and the endpoint leaves the list.
func TestDrainAndProbeDropStaleEntries(t *testing.T) {
	ctx := context.Background()
	s, rdb := newTestStore(t, StoreOptions{})
	if _, err := s.Create(ctx, EndpointConfig{ID: "ep", URL: "http://127.0.0.1:1/", Mode: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, EndpointConfig{ID: "gone", URL: "http://127.0.0.1:1/", Mode: "test"}); err != nil {
		t.Fatal(err)
	}
	d := newDrainer(rdb, s, zap.NewNop(), 100*time.Millisecond, time.Second)
	defer d.stop()
	for _, ep := range []string{"ep", "gone"} {
		for i := range 50 {
			rdb.ZAdd(ctx, waitingKey(ep), redis.Z{Score: float64(i), Member: "bogus\x00" + strings.Repeat("x", i) + ":" + ep})
		}
		rdb.SAdd(ctx, keyWaitingEndpoints, ep)
	}
	if err := s.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	// "ep" is not failing: the round drains it; "gone" is forgotten.
	if err := d.round(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the stale entries to be dropped", func() bool {
		return rdb.Exists(ctx, waitingKey("ep"), waitingKey("gone")).Val() == 0 && rdb.SCard(ctx, keyWaitingEndpoints).Val() == 0
	})
	// A failing endpoint whose index holds only stale entries is probed
	// without a send and its entries dropped, at most maxProbeCandidates per probe.
	rdb.Set(ctx, failingKey("ep"), time.Now().UnixMilli(), time.Hour)
	for i := range 40 {
		rdb.ZAdd(ctx, waitingKey("ep"), redis.Z{Score: float64(i), Member: "bogus" + strings.Repeat("y", i)})
	}
	rdb.SAdd(ctx, keyWaitingEndpoints, "ep")
	if err := d.probe(ctx, "ep"); err != nil {
		t.Fatal(err)
	}
	if n := rdb.ZCard(ctx, waitingKey("ep")).Val(); n != 40-maxProbeCandidates {
		t.Errorf("%d entries left after one probe, want %d", n, 40-maxProbeCandidates)
	}
	// The probe claim holds off a second probe within the interval.
	if err := d.probe(ctx, "ep"); err != nil {
		t.Fatal(err)
	}
	if n := rdb.ZCard(ctx, waitingKey("ep")).Val(); n != 40-maxProbeCandidates {
		t.Errorf("a second probe within the interval ran: %d entries left", n)
	}
}
