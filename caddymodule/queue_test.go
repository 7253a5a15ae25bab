package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
	"github.com/authtap/authtap/worker/tasks"
)

func init() {
	// Tests wait for the replay loop to look at a spool another app wrote to;
	// production looks every 10s. (The probe interval is the production one,
	// or the test's own spool_probe_interval.)
	spoolIdleCheck = 200 * time.Millisecond
	workerRetryWait = 50 * time.Millisecond
}

// testEvent returns a live user.created event with a fresh id.
func testEvent(mode string) rules.Event {
	now := time.Now().UTC()
	return rules.Event{
		ID: rules.NewEventID(now), Type: "user.created", Timestamp: now,
		Data:   json.RawMessage(`{"id":"u_1","email":"a@x.test"}`),
		Source: rules.Source{Name: "legacy-auth", Rule: "user-created"}, Mode: mode,
	}
}

// startApp provisions and starts a, with logs observed at Debug, and cleans it up with the test.
func startApp(t *testing.T, a *App) *observer.ObservedLogs {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	a.logger = zap.New(core)
	if a.SpoolDir == "" {
		a.SpoolDir = t.TempDir()
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := a.Provision(ctx); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	t.Cleanup(func() {
		if err := a.Cleanup(); err != nil {
			t.Errorf("Cleanup: %v", err)
		}
	})
	if err := a.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if err := a.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = a.Stop() })
	return logs
}

// waitFor polls cond until it holds or within passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fanoutTask returns the event:fanout task with id in srv, or nil.
func fanoutTask(t *testing.T, insp *asynq.Inspector, id string) *asynq.TaskInfo {
	t.Helper()
	ti, err := insp.GetTaskInfo(tasks.QueueFanout, id)
	if err != nil {
		if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
			return nil
		}
		t.Logf("GetTaskInfo(%s): %v", id, err)
		return nil
	}
	return ti
}

func spoolFiles(t *testing.T, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	return m
}

func TestEnqueueQueuesFanoutTask(t *testing.T) {
	srv := redistest.Start(t)
	a := &App{Redis: srv.URL}
	startApp(t, a)
	if a.be.embedded || a.be.mini != nil {
		t.Fatal("an embedded redis started although redis is configured")
	}
	if a.InProcessWorker() != nil {
		t.Fatal("the in-process worker is on by default with a configured redis")
	}
	insp := asynq.NewInspector(a.RedisOpt())
	defer insp.Close()

	ev := testEvent(rules.ModeLive)
	out, err := a.Enqueue(context.Background(), ev)
	if err != nil || out != Queued {
		t.Fatalf("Enqueue = %v, %v; want queued", out, err)
	}
	ti := fanoutTask(t, insp, ev.ID)
	if ti == nil || ti.Type != tasks.TypeFanout || ti.ID != ev.ID {
		t.Fatalf("task = %+v, want %s with id %s in %s", ti, tasks.TypeFanout, ev.ID, tasks.QueueFanout)
	}
	p, err := tasks.ParseFanout(asynq.NewTask(ti.Type, ti.Payload))
	if err != nil || p.Event.ID != ev.ID || p.Event.Type != ev.Type {
		t.Fatalf("payload %+v, %v", p, err)
	}

	out, err = a.Enqueue(context.Background(), ev)
	if err != nil || out != Duplicate {
		t.Fatalf("second Enqueue = %v, %v; want duplicate", out, err)
	}
	// A cancelled request context does not lose the event.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ev2 := testEvent(rules.ModeLive)
	if out, err := a.Enqueue(ctx, ev2); err != nil || out != Queued {
		t.Fatalf("Enqueue with cancelled ctx = %v, %v", out, err)
	}
	if _, err := a.Enqueue(context.Background(), rules.Event{Type: "x"}); err == nil {
		t.Fatal("an event without id was accepted")
	}
	if n := len(spoolFiles(t, a.SpoolDir)); n != 0 {
		t.Fatalf("%d spool files although redis is up", n)
	}
}

// With a redis-cluster:// URL, events go to the cluster like to a single Redis.
func TestEnqueueOnRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	a := &App{Redis: cl.URL}
	startApp(t, a)
	insp := asynq.NewInspector(a.RedisOpt())
	defer insp.Close()
	ev := testEvent(rules.ModeLive)
	if out, err := a.Enqueue(context.Background(), ev); err != nil || out != Queued {
		t.Fatalf("Enqueue = %v, %v; want queued", out, err)
	}
	if out, err := a.Enqueue(context.Background(), ev); err != nil || out != Duplicate {
		t.Fatalf("second Enqueue = %v, %v; want duplicate", out, err)
	}
	if ti := fanoutTask(t, insp, ev.ID); ti == nil || ti.Type != tasks.TypeFanout {
		t.Fatalf("task = %+v", ti)
	}
	if n := len(spoolFiles(t, a.SpoolDir)); n != 0 {
		t.Fatalf("%d spool files although the cluster is up", n)
	}
}

func TestRedisDownSpoolsThenReplays(t *testing.T) {
	srv := redistest.Start(t)
	timeout := 300 * time.Millisecond
	a := &App{Redis: srv.URL, EnqueueTimeout: caddy.Duration(timeout)}
	logs := startApp(t, a)
	insp := asynq.NewInspector(a.RedisOpt())
	defer insp.Close()
	before := counterValue(a.metrics.spooled)

	srv.Stop()
	var evs []rules.Event
	for i := range 5 {
		ev := testEvent(rules.ModeLive)
		evs = append(evs, ev)
		start := time.Now()
		out, err := a.Enqueue(context.Background(), ev)
		took := time.Since(start)
		if err != nil || out != Spooled {
			t.Fatalf("Enqueue %d with redis down = %v, %v; want spooled", i, out, err)
		}
		if took > timeout+time.Second {
			t.Fatalf("Enqueue %d took %s, want about %s at most", i, took, timeout)
		}
	}
	if len(spoolFiles(t, a.SpoolDir)) == 0 {
		t.Fatal("no spool file")
	}
	if got := counterValue(a.metrics.spooled) - before; got != 5 {
		t.Fatalf("events_spooled_total grew by %v, want 5", got)
	}
	if logs.FilterMessageSnippet("spooling events to disk").Len() != 1 {
		t.Fatalf("want one warning about spooling, got %v", logs.All())
	}
	pctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = a.be.rdb.Ping(pctx).Err() // go-redis logs its failed dials
	cancel()

	srv.Restart()
	waitFor(t, 15*time.Second, "the spool to be replayed", func() bool {
		for _, ev := range evs {
			if fanoutTask(t, insp, ev.ID) == nil {
				return false
			}
		}
		return true
	})
	waitFor(t, 5*time.Second, "the spool to be empty", func() bool { return a.sp.Empty() && !a.be.down.Load() })
	if n := len(spoolFiles(t, a.SpoolDir)); n != 0 {
		t.Fatalf("%d spool files left", n)
	}
	// Back to normal: straight into Redis.
	if out, err := a.Enqueue(context.Background(), testEvent(rules.ModeLive)); err != nil || out != Queued {
		t.Fatalf("Enqueue after recovery = %v, %v", out, err)
	}
	// go-redis's failed dials came through the app's logger, each message once
	// (not to stderr, once per dial).
	seen := map[string]bool{}
	for _, e := range logs.AllUntimed() {
		if e.LoggerName != "redis" {
			continue
		}
		if e.Level != zap.WarnLevel || seen[e.Message] {
			t.Errorf("go-redis message logged again or not as a warning: %s %q", e.Level, e.Message)
		}
		seen[e.Message] = true
	}
	if len(seen) == 0 {
		t.Errorf("no go-redis message reached the app's logger while Redis was down: %v", logs.AllUntimed())
	}
}

// A Redis that accepts connections and never answers: the enqueue must give up
// after EnqueueTimeout and spool.
func TestHangingRedisSpoolsWithinTimeout(t *testing.T) {
	addr := redistest.Hanging(t)
	timeout := 150 * time.Millisecond
	a := &App{Redis: "redis://" + addr + "/0", EnqueueTimeout: caddy.Duration(timeout)}
	startApp(t, a)
	start := time.Now()
	out, err := a.Enqueue(context.Background(), testEvent(rules.ModeLive))
	if took := time.Since(start); took > timeout+700*time.Millisecond {
		t.Fatalf("Enqueue took %s with a %s timeout", took, timeout)
	}
	if err != nil || out != Spooled {
		t.Fatalf("Enqueue = %v, %v; want spooled", out, err)
	}
	// While Redis is marked down, events go to the spool without waiting.
	start = time.Now()
	if out, err := a.Enqueue(context.Background(), testEvent(rules.ModeLive)); err != nil || out != Spooled {
		t.Fatalf("second Enqueue = %v, %v", out, err)
	}
	if took := time.Since(start); took > timeout {
		t.Fatalf("second Enqueue took %s; want no wait for a Redis known to be down", took)
	}
}

func TestRestartWithSpoolReplays(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	srv.Stop()

	a1 := &App{Redis: srv.URL, SpoolDir: dir, EnqueueTimeout: caddy.Duration(200 * time.Millisecond)}
	startApp(t, a1)
	var evs []rules.Event
	for range 3 {
		ev := testEvent(rules.ModeLive)
		evs = append(evs, ev)
		if out, err := a1.Enqueue(context.Background(), ev); err != nil || out != Spooled {
			t.Fatalf("Enqueue = %v, %v", out, err)
		}
	}
	// Caddy stops with events in the spool.
	if err := a1.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := a1.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, ok := spools.References(dir); ok {
		t.Fatal("spool still held after Cleanup")
	}
	if len(spoolFiles(t, dir)) == 0 {
		t.Fatal("spool files gone after Cleanup")
	}

	srv.Restart()
	a2 := &App{Redis: srv.URL, SpoolDir: dir}
	startApp(t, a2)
	insp := asynq.NewInspector(a2.RedisOpt())
	defer insp.Close()
	waitFor(t, 15*time.Second, "the old spool to be replayed", func() bool {
		for _, ev := range evs {
			ti := fanoutTask(t, insp, ev.ID)
			if ti == nil {
				return false
			}
			// The replayed event keeps its id and content.
			p, err := tasks.ParseFanout(asynq.NewTask(ti.Type, ti.Payload))
			if err != nil || p.Event.ID != ev.ID || string(p.Event.Data) != string(ev.Data) || !p.Event.Timestamp.Equal(ev.Timestamp.Truncate(time.Millisecond)) {
				t.Fatalf("replayed %+v (%v), want %+v", p.Event, err, ev)
			}
		}
		return true
	})
}

func TestSpoolFullIsAnError(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	a := &App{Redis: srv.URL, SpoolMaxSize: 600, EnqueueTimeout: caddy.Duration(100 * time.Millisecond)}
	startApp(t, a)
	var err error
	for i := 0; i < 20 && err == nil; i++ {
		_, err = a.Enqueue(context.Background(), testEvent(rules.ModeLive))
	}
	if err == nil || !strings.Contains(err.Error(), "spool is full") {
		t.Fatalf("want a spool-full error, got %v", err)
	}
}

// A reload: the new config acquires the pooled clients before the old one
// releases them, and enqueues keep working throughout.
func TestReloadSharesConnections(t *testing.T) {
	srv := redistest.Start(t)
	dir := t.TempDir()
	a1 := &App{Redis: srv.URL, SpoolDir: dir, Worker: &WorkerConfig{Concurrency: 2}}
	startApp(t, a1)
	a2 := &App{Redis: srv.URL, SpoolDir: dir, Worker: &WorkerConfig{Concurrency: 2}}
	startApp(t, a2)
	if a1.be != a2.be || a1.sp != a2.sp || a1.pw != a2.pw || a2.pw == nil {
		t.Fatal("a reload with the same redis, spool and worker config made new ones")
	}
	if n, _ := backends.References(a1.backendKey); n != 2 {
		t.Fatalf("backend references = %d, want 2", n)
	}
	// The old config goes away.
	if err := a1.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := a1.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if out, err := a2.Enqueue(context.Background(), testEvent(rules.ModeLive)); err != nil || out != Queued {
		t.Fatalf("Enqueue after the old config left = %v, %v", out, err)
	}
	// A changed worker config makes a new worker.
	a3 := &App{Redis: srv.URL, SpoolDir: dir, Worker: &WorkerConfig{Concurrency: 3}}
	startApp(t, a3)
	if a3.pw == a2.pw || a3.be != a2.be {
		t.Fatal("worker shared across different worker configs, or backend not shared")
	}
}

func TestPasswordNeverLogged(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop() // a port where nothing listens: the enqueue fails and is logged
	const pw = "s3cret-pass"
	a := &App{Redis: fmt.Sprintf("redis://:%s@%s/0", pw, srv.Addr), EnqueueTimeout: caddy.Duration(200 * time.Millisecond)}
	logs := startApp(t, a)
	out, err := a.Enqueue(context.Background(), testEvent(rules.ModeLive))
	if err != nil || out != Spooled {
		t.Fatalf("Enqueue = %v, %v", out, err)
	}
	if logs.FilterMessageSnippet("using redis").Len() != 1 || logs.FilterMessageSnippet("spooling events").Len() != 1 {
		t.Fatalf("logs %v", logs.All())
	}
	for _, e := range logs.All() {
		b, _ := json.Marshal(e.ContextMap())
		if strings.Contains(e.Message+string(b), pw) {
			t.Fatalf("password logged: %s %s", e.Message, b)
		}
	}
}

func TestEmbeddedWorkerDelivers(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", t.TempDir()) // the default spool dir
	type delivery struct {
		id, sig string
		body    []byte
	}
	got := make(chan delivery, 4)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- delivery{r.Header.Get("webhook-id"), r.Header.Get("webhook-signature"), b}
	}))
	defer recv.Close()

	a := &App{} // zero config: what a handler without a global option gets
	core, logs := observer.New(zap.InfoLevel)
	a.logger = zap.New(core)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := a.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Cleanup()
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	if !a.be.embedded || a.be.mini == nil {
		t.Fatal("zero config did not start the embedded redis")
	}
	if !strings.HasPrefix(a.sp.Dir(), filepath.Join(os.Getenv("XDG_DATA_HOME"), "caddy")) {
		t.Fatalf("default spool dir %s not under caddy's data dir", a.sp.Dir())
	}
	warn := logs.FilterMessage("authtap: no redis configured: using an embedded in-memory Redis; events are lost on restart — for trying authtap out only")
	if warn.Len() != 1 || warn.All()[0].Level != zap.WarnLevel {
		t.Fatalf("want the embedded-redis warning, got %v", logs.All())
	}
	w := a.InProcessWorker()
	if w == nil {
		t.Fatal("no in-process worker with the embedded redis")
	}
	ep, err := w.Store().Create(context.Background(), worker.EndpointConfig{URL: recv.URL + "/hook", Mode: rules.ModeTest, Events: []string{"user.*"}})
	if err != nil {
		t.Fatal(err)
	}
	ev := testEvent(rules.ModeTest)
	if out, err := a.Enqueue(context.Background(), ev); err != nil || out != Queued {
		t.Fatalf("Enqueue = %v, %v", out, err)
	}
	// Task-id dedupe works on the embedded Redis too.
	if out, err := a.Enqueue(context.Background(), ev); err != nil || out != Duplicate {
		t.Fatalf("second Enqueue = %v, %v; want duplicate", out, err)
	}
	select {
	case d := <-got:
		if d.id != ev.ID || !strings.HasPrefix(d.sig, "v1,") {
			t.Fatalf("delivery id=%q sig=%q, want id %s signed", d.id, d.sig, ev.ID)
		}
		var env rules.Event
		if err := json.Unmarshal(d.body, &env); err != nil || env.ID != ev.ID || env.Type != ev.Type {
			t.Fatalf("body %s (%v)", d.body, err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("no delivery to endpoint %s within 15s", ep.ID)
	}
	// The pooled worker's metrics are in this config's registry.
	waitFor(t, 5*time.Second, "the worker's delivery metric", func() bool {
		mfs, _ := ctx.GetMetricsRegistry().Gather()
		for _, mf := range mfs {
			if mf.GetName() == "authtap_worker_deliveries_total" {
				return true
			}
		}
		return false
	})
}

func TestEmbeddedRedisExpiresKeys(t *testing.T) {
	b, err := newEmbeddedBackend()
	if err != nil {
		t.Fatal(err)
	}
	defer b.Destruct()
	ctx := context.Background()
	if err := b.rdb.Set(ctx, "k", "v", 100*time.Millisecond).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a key with a TTL to expire", func() bool {
		n, err := b.rdb.Exists(ctx, "k").Result()
		return err == nil && n == 0
	})
	// asynq: retry and archive work on the embedded Redis.
	c := asynq.NewClientFromRedisClient(b.rdb)
	srv := asynq.NewServerFromRedisClient(b.rdb, asynq.Config{
		Concurrency: 1, TaskCheckInterval: 10 * time.Millisecond, DelayedTaskCheckInterval: 50 * time.Millisecond,
		RetryDelayFunc: func(int, error, *asynq.Task) time.Duration { return 50 * time.Millisecond },
		LogLevel:       asynq.FatalLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc("fail", func(context.Context, *asynq.Task) error { return errors.New("always") })
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	if _, err := c.Enqueue(asynq.NewTask("fail", nil), asynq.TaskID("f1"), asynq.MaxRetry(2)); err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspectorFromRedisClient(b.rdb)
	waitFor(t, 10*time.Second, "the failing task to be retried and archived", func() bool {
		ti, err := insp.GetTaskInfo("default", "f1")
		return err == nil && ti.State == asynq.TaskStateArchived && ti.Retried == 2
	})
}

// activeApp returns the authtap app of Caddy's running config.
func activeApp(t *testing.T) *App {
	t.Helper()
	v, err := caddy.ActiveContext().App("authtap")
	if err != nil {
		t.Fatal(err)
	}
	return v.(*App)
}

// `caddy reload` (caddy.Load of a changed config): the new config takes over the
// connection, spool and worker of the old one; events enqueued before, during
// and after the switch, through either config's app, are all queued, and the
// worker keeps processing.
func TestCaddyReloadKeepsClientsAndEvents(t *testing.T) {
	srv := redistest.Start(t)
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	dir := t.TempDir()
	config := func(timeout string) []byte {
		b, _ := json.Marshal(map[string]any{
			"admin":   map[string]any{"disabled": true},
			"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "ERROR"}}},
			"apps": map[string]any{"authtap": map[string]any{
				"redis": srv.URL, "spool_dir": dir, "enqueue_timeout": timeout, "worker": map[string]any{"concurrency": 2},
			}},
		})
		return b
	}
	if err := caddy.Load(config("1s"), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	old := activeApp(t)
	oldWorker := old.pw // Cleanup forgets it

	type result struct {
		id  string
		out Outcome
		err error
	}
	results := make(chan result, 10000)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() { // a handler of the old config, still finishing requests
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ev := testEvent(rules.ModeLive)
			out, err := old.Enqueue(context.Background(), ev)
			results <- result{ev.ID, out, err}
		}
	}()
	waitFor(t, 5*time.Second, "events before the reload", func() bool { return len(results) >= 20 })
	if err := caddy.Load(config("900ms"), true); err != nil {
		t.Fatal(err)
	}
	cur := activeApp(t)
	if cur == old {
		t.Fatal("reload kept the old app")
	}
	n := len(results)
	waitFor(t, 5*time.Second, "events after the reload", func() bool { return len(results) >= n+20 })
	close(stop)
	<-done
	for range 20 {
		ev := testEvent(rules.ModeLive)
		out, err := cur.Enqueue(context.Background(), ev)
		results <- result{ev.ID, out, err}
	}
	close(results)

	if cur.be != old.be || cur.pw != oldWorker || cur.sp != old.sp {
		t.Fatalf("the reload replaced the shared redis connection (%v), worker (%v) or spool (%v)", cur.be != old.be, cur.pw != oldWorker, cur.sp != old.sp)
	}
	insp := asynq.NewInspector(cur.RedisOpt())
	defer insp.Close()
	var last string
	for r := range results {
		if r.err != nil || r.out != Queued {
			t.Fatalf("event %s: %v, %v; want queued (no outage happened)", r.id, r.out, r.err)
		}
		if fanoutTask(t, insp, r.id) == nil {
			t.Fatalf("event %s is not in redis", r.id)
		}
		last = r.id
	}
	// The shared worker is still running: it completes the last fan-out.
	waitFor(t, 10*time.Second, "the worker to process a fan-out after the reload", func() bool {
		ti := fanoutTask(t, insp, last)
		return ti != nil && ti.State == asynq.TaskStateCompleted
	})
	if len(spoolFiles(t, dir)) != 0 {
		t.Fatal("events were spooled although redis stayed up")
	}
}

// BenchmarkEnqueue measures one Enqueue into a local redis-server, and into the
// spool while Redis is down (one fsync shared by concurrent appends).
func BenchmarkEnqueue(b *testing.B) {
	srv := redistest.Start(b)
	for _, bc := range []struct {
		name string
		down bool
		want Outcome
	}{{"redis", false, Queued}, {"spool", true, Spooled}} {
		b.Run(bc.name, func(b *testing.B) {
			a := &App{Redis: srv.URL, SpoolDir: b.TempDir(), logger: zap.NewNop()}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			if err := a.Provision(ctx); err != nil {
				b.Fatal(err)
			}
			defer a.Cleanup()
			a.be.down.Store(bc.down) // no replay loop: Start is not called
			defer a.be.down.Store(false)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if out, err := a.Enqueue(context.Background(), testEvent(rules.ModeLive)); err != nil || out != bc.want {
						b.Errorf("Enqueue = %v, %v", out, err)
						return
					}
				}
			})
		})
	}
}

// Redis down when Caddy starts: the app starts anyway (events are spooled), and
// the in-process worker starts once Redis answers, then processes the replayed events.
func TestWorkerStartsWhenRedisComesBack(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	a := &App{Redis: srv.URL, Worker: &WorkerConfig{Concurrency: 2}, EnqueueTimeout: caddy.Duration(200 * time.Millisecond)}
	logs := startApp(t, a)
	if logs.FilterMessageSnippet("starting the in-process worker; retrying").Len() != 1 {
		t.Fatalf("logs %v", logs.All())
	}
	ev := testEvent(rules.ModeLive)
	if out, err := a.Enqueue(context.Background(), ev); err != nil || out != Spooled {
		t.Fatalf("Enqueue = %v, %v", out, err)
	}
	srv.Restart()
	insp := asynq.NewInspector(a.RedisOpt())
	defer insp.Close()
	waitFor(t, 15*time.Second, "the replayed event to be processed by the worker", func() bool {
		ti := fanoutTask(t, insp, ev.ID)
		return ti != nil && ti.State == asynq.TaskStateCompleted
	})
}
