package worker

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker/tasks"
)

// fastRetry is a retry schedule for tests: quick retries, then archive.
var fastRetry = RetryPolicy{Schedule: []time.Duration{0, 100 * time.Millisecond, 100 * time.Millisecond}, Jitter: -1}

// startWorker starts a worker on srv with fast polling; it is shut down when the test ends.
func startWorker(t *testing.T, srv *redistest.Server, cfg Config) *Worker {
	t.Helper()
	opt, err := ParseRedisURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Redis = opt
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	}
	if cfg.DelayedTaskCheckInterval == 0 {
		cfg.DelayedTaskCheckInterval = 100 * time.Millisecond
	}
	if len(cfg.Retry.Schedule) == 0 {
		cfg.Retry = fastRetry
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
	return w
}

// enqueueEvents enqueues n events of typ and returns their ids; each event's
// data carries its enqueue time in unix nanoseconds.
func enqueueEvents(t *testing.T, srv *redistest.Server, typ, mode string, n int) []string {
	t.Helper()
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer c.Close()
	ids := make([]string, n)
	for i := range n {
		now := time.Now()
		ev := rules.Event{
			ID: rules.NewEventID(now), Type: typ, Timestamp: now.UTC().Truncate(time.Millisecond),
			Data:   json.RawMessage(fmt.Sprintf(`{"i":%d,"enqueued":%d}`, i, now.UnixNano())),
			Source: rules.Source{Name: "test", Rule: "r"}, Mode: mode,
		}
		task, err := tasks.NewFanoutTask(ev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Enqueue(task); err != nil {
			t.Fatal(err)
		}
		ids[i] = ev.ID
	}
	return ids
}

// hit is one request seen by a recorder.
type hit struct {
	webhookID string
	eventID   string
	enqueued  time.Time
	received  time.Time
}

// recorder is a webhook receiver that records every request.
type recorder struct {
	mu   sync.Mutex
	hits []hit
	seen chan struct{} // one value per request, buffered
}

func newRecorder(t *testing.T, delay time.Duration, status int) (*recorder, *httptest.Server) {
	rec := &recorder{seen: make(chan struct{}, 100000)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received := time.Now()
		body, _ := io.ReadAll(r.Body)
		var ev struct {
			ID   string `json:"id"`
			Data struct {
				Enqueued int64 `json:"enqueued"`
			} `json:"data"`
		}
		_ = json.Unmarshal(body, &ev)
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-r.Context().Done():
				return
			}
		}
		rec.mu.Lock()
		rec.hits = append(rec.hits, hit{webhookID: r.Header.Get("webhook-id"), eventID: ev.ID,
			enqueued: time.Unix(0, ev.Data.Enqueued), received: received})
		rec.mu.Unlock()
		w.WriteHeader(status)
		rec.seen <- struct{}{}
	}))
	t.Cleanup(srv.Close)
	return rec, srv
}

func (r *recorder) snapshot() []hit {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.hits)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWorkerEndToEnd(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	ok, okSrv := newRecorder(t, 0, 200)
	bad, badSrv := newRecorder(t, 0, 500)
	w := startWorker(t, srv, Config{
		Endpoints: []EndpointConfig{{ID: "gitops", URL: okSrv.URL, Mode: "test", Secret: testSecret(t), Events: []string{"user.*"}}},
	})
	if _, err := w.Store().Create(ctx, EndpointConfig{ID: "bad", URL: badSrv.URL, Mode: "test", Events: []string{"user.created"}}); err != nil {
		t.Fatal(err)
	}
	ids := enqueueEvents(t, srv, "user.created", "test", 3)
	enqueueEvents(t, srv, "user.created", "live", 2) // no live endpoint: not delivered
	waitFor(t, 10*time.Second, "3 deliveries to the good endpoint", func() bool { return len(ok.snapshot()) >= 3 })
	for _, h := range ok.snapshot() {
		if h.webhookID != h.eventID || !slices.Contains(ids, h.eventID) {
			t.Errorf("delivery %+v: webhook-id must be the event id of a test event", h)
		}
	}
	// The failing endpoint gets 3 attempts per event (schedule of 3), then the task is archived.
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	waitFor(t, 15*time.Second, "the failing deliveries to be archived", func() bool {
		archived, _ := insp.ListArchivedTasks(tasks.QueueDeliver)
		return len(archived) == 3
	})
	if n := len(bad.snapshot()); n != 9 {
		t.Errorf("failing endpoint got %d attempts, want 9 (3 events × 3)", n)
	}
	atts, err := w.Store().EventAttempts(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	var badAttempts []int
	for _, a := range atts {
		if a.EndpointID == "bad" {
			badAttempts = append(badAttempts, a.Attempt)
		}
	}
	if !slices.Equal(badAttempts, []int{1, 2, 3}) {
		t.Errorf("attempt numbers of the failing endpoint = %v, want [1 2 3]", badAttempts)
	}
	if time.Sleep(200 * time.Millisecond); len(ok.snapshot()) != 3 {
		t.Errorf("good endpoint got %d deliveries, want exactly 3", len(ok.snapshot()))
	}
}

// Acceptance 7: a subscriber that takes 10 s per delivery does not delay another one.
func TestSlowSubscriberDoesNotDelayOthers(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 11s")
	}
	ctx := context.Background()
	srv := redistest.Start(t)
	slow, slowSrv := newRecorder(t, 10*time.Second, 200)
	fast, fastSrv := newRecorder(t, 0, 200)
	w := startWorker(t, srv, Config{ShutdownTimeout: time.Second}) // default concurrency (20) and timeout (15s)
	for id, u := range map[string]string{"slow": slowSrv.URL, "fast": fastSrv.URL} {
		if _, err := w.Store().Create(ctx, EndpointConfig{ID: id, URL: u, Mode: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	const n = 50
	enqueueEvents(t, srv, "user.created", "test", n)
	waitFor(t, 10*time.Second, "50 fast deliveries", func() bool { return len(fast.snapshot()) >= n })
	if got := len(slow.snapshot()); got > 0 {
		t.Fatalf("slow endpoint already answered %d deliveries; the test needs it busy", got)
	}
	var lat []time.Duration
	for _, h := range fast.snapshot() {
		lat = append(lat, h.received.Sub(h.enqueued))
	}
	slices.Sort(lat)
	p99 := lat[(len(lat)*99+99)/100-1]
	t.Logf("fast endpoint latency from enqueue: p50 %v, p99 %v, max %v", lat[len(lat)/2], p99, lat[len(lat)-1])
	if p99 >= time.Second {
		t.Errorf("fast endpoint p99 = %v while the slow one is busy, want < 1s", p99)
	}
	// The slow endpoint's deliveries succeed after 10 s (they are not cut short).
	waitFor(t, 14*time.Second, "the first slow deliveries", func() bool { return len(slow.snapshot()) >= 1 })
	waitFor(t, 2*time.Second, "a recorded slow success", func() bool {
		atts, _ := w.Store().Attempts(ctx, "slow", 10, time.Time{})
		return len(atts) > 0 && atts[0].Success && atts[0].LatencyMS >= 10000
	})
}

func TestGracefulShutdownWaitsForInFlight(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	var started, finished atomic.Int32
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started.Add(1)
		time.Sleep(time.Second)
		finished.Add(1)
	}))
	defer recv.Close()
	w := startWorker(t, srv, Config{ShutdownTimeout: 10 * time.Second})
	if _, err := w.Store().Create(ctx, EndpointConfig{ID: "ep", URL: recv.URL, Mode: "test"}); err != nil {
		t.Fatal(err)
	}
	enqueueEvents(t, srv, "user.created", "test", 3)
	waitFor(t, 5*time.Second, "3 deliveries in flight", func() bool { return started.Load() == 3 })
	begin := time.Now()
	w.Shutdown()
	if finished.Load() != 3 {
		t.Errorf("Shutdown returned after %v with %d of 3 deliveries finished", time.Since(begin), finished.Load())
	}
	// The attempts were recorded as successes; nothing is left to retry.
	rdb, _ := newTestRedisClient(srv)
	defer rdb.Close()
	s, _ := NewStore(rdb, StoreOptions{})
	atts, err := s.Attempts(ctx, "ep", 10, time.Time{})
	if err != nil || len(atts) != 3 || !atts[0].Success {
		t.Errorf("attempts after shutdown = %+v, %v", atts, err)
	}
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	if q, err := insp.GetQueueInfo(tasks.QueueDeliver); err != nil || q.Pending+q.Active+q.Retry != 0 {
		t.Errorf("deliver queue after shutdown: %+v, %v", q, err)
	}
}

// TestWorkerHelperProcess is not a test: TestKilledWorkerLosesNothing runs the
// test binary with AUTHTAP_WORKER_HELPER=1 to get a worker process it can SIGKILL.
func TestWorkerHelperProcess(t *testing.T) {
	if os.Getenv("AUTHTAP_WORKER_HELPER") != "1" {
		t.Skip("helper process for TestKilledWorkerLosesNothing")
	}
	opt, err := ParseRedisURL(os.Getenv("AUTHTAP_WORKER_REDIS"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Redis: opt, Retry: fastRetry, DelayedTaskCheckInterval: 100 * time.Millisecond}
	if d, err := time.ParseDuration(os.Getenv("AUTHTAP_WORKER_TIMEOUT")); err == nil {
		cfg.DeliveryTimeout = d
	}
	if d, err := time.ParseDuration(os.Getenv("AUTHTAP_WORKER_RECOVERY")); err == nil {
		cfg.RecoveryInterval, cfg.RunLease = d, 3*d
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("worker ready")
	select {} // until killed
}

// Acceptance 8: a worker killed with SIGKILL mid-burst loses nothing.
func TestKilledWorkerLosesNothing(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rec, recv := newRecorder(t, 20*time.Millisecond, 200)
	rdb, _ := newTestRedisClient(srv)
	defer rdb.Close()
	s, _ := NewStore(rdb, StoreOptions{})
	if _, err := s.Create(ctx, EndpointConfig{ID: "ep", URL: recv.URL, Mode: "test", MaxConcurrency: 100}); err != nil {
		t.Fatal(err)
	}
	const n = 200
	ids := enqueueEvents(t, srv, "user.created", "test", n)

	first := startHelperWorker(t, srv, "AUTHTAP_WORKER_TIMEOUT=2s")
	waitFor(t, 20*time.Second, "the first deliveries", func() bool { return len(rec.snapshot()) >= 40 })
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	killedAt := len(rec.snapshot())
	t.Logf("killed the worker after %d deliveries", killedAt)
	if killedAt >= n {
		t.Fatalf("all deliveries were done before the kill; the test proves nothing")
	}

	// A 2s attempt timeout: an attempt killed while it was sending keeps its
	// delivery locked for that long (recover.go).
	started := time.Now()
	startHelperWorker(t, srv, "AUTHTAP_WORKER_TIMEOUT=2s")
	all := func() bool {
		got := map[string]bool{}
		for _, h := range rec.snapshot() {
			got[h.eventID] = true
		}
		return len(got) == n
	}
	waitFor(t, 85*time.Second, "every event to be delivered after the restart", all)
	// Acceptance 3 of issue 11: seconds, not asynq's 60–120s.
	if took := time.Since(started); took > 10*time.Second {
		t.Errorf("the new worker took %s to deliver the killed worker's tasks, want under 10s", took)
	} else {
		t.Logf("the new worker delivered everything %s after its start", took.Round(10*time.Millisecond))
	}
	hits := rec.snapshot()
	count := map[string]int{}
	for _, h := range hits {
		count[h.eventID]++
		if h.webhookID != h.eventID {
			t.Errorf("a delivery of %s carries webhook-id %s", h.eventID, h.webhookID)
		}
	}
	for _, id := range ids {
		if count[id] == 0 {
			t.Errorf("event %s was lost", id)
		}
	}
	t.Logf("%d deliveries for %d events (%d duplicates from the killed worker)", len(hits), n, len(hits)-n)
}

// startHelperWorker runs TestWorkerHelperProcess in a child process, killed when the test ends.
func startHelperWorker(t *testing.T, srv *redistest.Server, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestWorkerHelperProcess$", "-test.v")
	cmd.Env = append(append(os.Environ(), "AUTHTAP_WORKER_HELPER=1", "AUTHTAP_WORKER_REDIS="+srv.URL), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "worker ready" {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatal("helper worker did not start within 20s")
	}
	return cmd
}

func newTestRedisClient(srv *redistest.Server) (redis.UniversalClient, error) {
	return RedisClient(asynq.RedisClientOpt{Addr: srv.Addr})
}

// A delivery still running when ShutdownTimeout ends goes back to the queue and
// is delivered by the next worker, with the same webhook-id.
func TestShutdownTimeoutRequeues(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	var calls atomic.Int32
	ids := make(chan string, 10)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body) // so that the server notices when the client goes away
		if calls.Add(1) == 1 {
			select { // the first attempt hangs until the worker gives up on it
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
			return
		}
		ids <- r.Header.Get("webhook-id")
	}))
	defer recv.Close()
	first := startWorker(t, srv, Config{ShutdownTimeout: 300 * time.Millisecond})
	if _, err := first.Store().Create(ctx, EndpointConfig{ID: "ep", URL: recv.URL, Mode: "test"}); err != nil {
		t.Fatal(err)
	}
	evIDs := enqueueEvents(t, srv, "user.created", "test", 1)
	waitFor(t, 5*time.Second, "the first attempt", func() bool { return calls.Load() == 1 })
	begin := time.Now()
	first.Shutdown()
	if took := time.Since(begin); took > 3*time.Second {
		t.Errorf("Shutdown took %v with a 300ms ShutdownTimeout", took)
	}
	startWorker(t, srv, Config{})
	select {
	case id := <-ids:
		if id != evIDs[0] {
			t.Errorf("redelivery carries webhook-id %s, want %s", id, evIDs[0])
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the requeued delivery never arrived")
	}
}

// The worker and its store work on a real 3-node Redis Cluster: every
// multi-key command stays in one slot, and batched enqueues reach the nodes
// that own their queues.
func TestWorkerOnRedisCluster(t *testing.T) {
	ctx := context.Background()
	cl := redistest.StartCluster(t, 3)
	opt, err := ParseRedisURL(cl.URL)
	if err != nil {
		t.Fatal(err)
	}
	ok, okSrv := newRecorder(t, 0, 200)
	w, err := New(Config{
		Redis: opt, Retry: fastRetry, DelayedTaskCheckInterval: 100 * time.Millisecond,
		Logger:    zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Endpoints: []EndpointConfig{{ID: "gitops", URL: okSrv.URL, Mode: "test", Secret: testSecret(t)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
	if w.runs.presence != nil {
		t.Error("a worker on a cluster keeps a presence connection; CLIENT LIST answers for one node")
	}
	s := w.Store()
	ep, err := s.Create(ctx, EndpointConfig{URL: okSrv.URL + "/b", Mode: "test", RateLimit: 100})
	if err != nil {
		t.Fatal(err)
	}
	desc := "x"
	if _, err := s.Update(ctx, ep.ID, EndpointPatch{Description: &desc}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateSecret(ctx, ep.ID, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetEnabled(ctx, "gitops", true, ""); err != nil {
		t.Fatal(err)
	}
	if list, err := s.List(ctx); err != nil || len(list) != 2 {
		t.Fatalf("List = %v, %v", list, err)
	}

	c := asynq.NewClient(opt)
	defer c.Close()
	var ids []string
	for i := range 3 {
		now := time.Now()
		ev := rules.Event{ID: rules.NewEventID(now), Type: "user.created", Timestamp: now.UTC(),
			Data: json.RawMessage(fmt.Sprint(i)), Source: rules.Source{Name: "t"}, Mode: "test"}
		task, _ := tasks.NewFanoutTask(ev)
		if _, err := c.Enqueue(task); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, ev.ID)
	}
	waitFor(t, 15*time.Second, "6 deliveries on the cluster", func() bool { return len(ok.snapshot()) >= 6 })
	waitFor(t, 5*time.Second, "6 recorded attempts", func() bool {
		n := 0
		for _, id := range ids {
			atts, _ := s.EventAttempts(ctx, id)
			n += len(atts)
		}
		return n == 6
	})
	if evs, err := s.EventsBetween(ctx, time.Now().Add(-time.Minute), time.Now().Add(time.Minute)); err != nil || len(evs) != 3 {
		t.Errorf("EventsBetween = %d events, %v", len(evs), err)
	}
	if atts, err := s.Attempts(ctx, ep.ID, 10, time.Time{}); err != nil || len(atts) != 3 {
		t.Errorf("Attempts = %d, %v", len(atts), err)
	}
	if err := s.Delete(ctx, ep.ID); err != nil {
		t.Errorf("Delete on the cluster: %v", err)
	}
}

// An endpoint that keeps failing for DisableAfter is disabled, and endpoints
// subscribed to endpoint.disabled hear about it.
func TestAutoDisableAnnouncesEndpointDisabled(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	_, badSrv := newRecorder(t, 0, 503)
	got := make(chan rules.Event, 4)
	watch := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev rules.Event
		if err := json.NewDecoder(r.Body).Decode(&ev); err == nil {
			got <- ev
		}
	}))
	defer watch.Close()
	w := startWorker(t, srv, Config{
		DisableAfter: 150 * time.Millisecond,
		Retry:        RetryPolicy{Schedule: []time.Duration{0, 200 * time.Millisecond, 200 * time.Millisecond, 200 * time.Millisecond}, Jitter: -1},
	})
	s := w.Store()
	if _, err := s.Create(ctx, EndpointConfig{ID: "bad", URL: badSrv.URL, Mode: "test", Events: []string{"user.*"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, EndpointConfig{ID: "ops", URL: watch.URL, Mode: "test", Events: []string{"endpoint.disabled"}}); err != nil {
		t.Fatal(err)
	}
	enqueueEvents(t, srv, "user.created", "test", 1)
	select {
	case ev := <-got:
		var data map[string]string
		_ = json.Unmarshal(ev.Data, &data)
		if ev.Type != EventEndpointDisabled || ev.Source.Name != "authtap" || data["endpoint_id"] != "bad" || data["url"] != badSrv.URL {
			t.Errorf("announcement = %+v, data %v", ev, data)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no endpoint.disabled event within 10s")
	}
	ep, err := s.Get(ctx, "bad")
	if err != nil || ep.Enabled || ep.DisabledReason == "" {
		t.Errorf("bad endpoint = %+v, %v; want disabled with a reason", ep, err)
	}
}

// An endpoint's rate limit spreads deliveries out without failing them.
func TestRateLimitSpreadsDeliveries(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rec, recv := newRecorder(t, 0, 200)
	w := startWorker(t, srv, Config{})
	if _, err := w.Store().Create(ctx, EndpointConfig{ID: "ep", URL: recv.URL, Mode: "test", RateLimit: 5}); err != nil {
		t.Fatal(err)
	}
	enqueueEvents(t, srv, "user.created", "test", 10)
	waitFor(t, 15*time.Second, "10 deliveries", func() bool { return len(rec.snapshot()) == 10 })
	hits := rec.snapshot()
	first, last := hits[0].received, hits[0].received
	for _, h := range hits {
		if h.received.Before(first) {
			first = h.received
		}
		if h.received.After(last) {
			last = h.received
		}
	}
	// A burst of 5, then 5 more at 5/s: at least ~1s from the first to the last.
	if spread := last.Sub(first); spread < 800*time.Millisecond {
		t.Errorf("10 deliveries at 5/s arrived within %v", spread)
	}
	atts, _ := w.Store().Attempts(ctx, "ep", 100, time.Time{})
	for _, a := range atts {
		if !a.Success || a.Attempt != 1 {
			t.Errorf("attempt %+v: throttling must not count as a failed attempt", a)
		}
	}
}

// A delivery the address guard refuses at dial time (a host name that
// resolves to a private or metadata address) is a permanent failure: one
// attempt, recorded in the delivery log with the reason, then archived by a
// real asynq server, never retried. Both modes: a test endpoint may reach
// loopback, not a private address.
func TestGuardRefusalArchivesAfterOneAttempt(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	// Many retries, so that a retried refusal would show.
	retry := RetryPolicy{Schedule: []time.Duration{0, 50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond}, Jitter: -1}
	w := startWorker(t, srv, Config{Retry: retry})
	names := fakeLookup(map[string][]string{
		"internal.test": {"10.0.0.1"},
		"meta.test":     {"169.254.169.254"},
	})
	w.sender.liveDial.lookup = names
	w.sender.testDial.lookup = names
	for _, c := range []EndpointConfig{
		{ID: "live-private", URL: "https://internal.test/hook", Mode: "live", Events: []string{"user.*"}},
		{ID: "test-private", URL: "http://internal.test:8080/hook", Mode: "test", Events: []string{"user.*"}},
		{ID: "test-metadata", URL: "http://meta.test/latest/meta-data/", Mode: "test", Events: []string{"user.*"}},
	} {
		if _, err := w.Store().Create(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	liveIDs := enqueueEvents(t, srv, "user.created", "live", 1)
	testIDs := enqueueEvents(t, srv, "user.created", "test", 1)

	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	var archived []*asynq.TaskInfo
	waitFor(t, 15*time.Second, "the refused deliveries to be archived", func() bool {
		archived, _ = insp.ListArchivedTasks(tasks.QueueDeliver)
		return len(archived) == 3
	})
	time.Sleep(300 * time.Millisecond) // a retry would run within this
	for _, ti := range archived {
		if ti.Retried != 0 {
			t.Errorf("archived %s after %d retries, want 0", ti.ID, ti.Retried)
		}
	}
	for _, tc := range []struct{ event, endpoint, want string }{
		{liveIDs[0], "live-private", "10.0.0.0/8"},
		{testIDs[0], "test-private", "10.0.0.0/8"},
		{testIDs[0], "test-metadata", "169.254.0.0/16"},
	} {
		atts, err := w.Store().EventAttempts(ctx, tc.event)
		if err != nil {
			t.Fatal(err)
		}
		var mine []Attempt
		for _, a := range atts {
			if a.EndpointID == tc.endpoint {
				mine = append(mine, a)
			}
		}
		if len(mine) != 1 || mine[0].Attempt != 1 || mine[0].Success || !strings.Contains(mine[0].Error, tc.want) ||
			!strings.Contains(mine[0].Error, ErrBlockedAddress.Error()) {
			t.Errorf("%s: attempts %+v, want one recorded refusal naming %s", tc.endpoint, mine, tc.want)
		}
	}
	if qs, err := insp.ListRetryTasks(tasks.QueueDeliver); err != nil || len(qs) != 0 {
		t.Errorf("%d deliveries waiting for a retry (%v)", len(qs), err)
	}
}
