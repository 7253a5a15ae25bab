package worker

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
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

// abandon does to task id of queue q what asynq's Dequeue does (dequeueCmd in
// internal/rdb) for a worker that never comes back: pending → active, with a
// lease written leaseAge ago.
func abandon(t *testing.T, rdb redis.UniversalClient, q, id string, leaseAge time.Duration) {
	t.Helper()
	ctx := context.Background()
	if n, err := rdb.LRem(ctx, asynqKey(q, "pending"), 0, id).Result(); err != nil || n != 1 {
		t.Fatalf("taking %s off pending: %d, %v", id, n, err)
	}
	rdb.LPush(ctx, asynqKey(q, "active"), id)
	rdb.HSet(ctx, asynqKey(q, "t:"+id), "state", "active")
	rdb.HDel(ctx, asynqKey(q, "t:"+id), "pending_since")
	rdb.ZAdd(ctx, asynqKey(q, "lease"), redis.Z{Score: float64(time.Now().Add(asynqLease - leaseAge).Unix()), Member: id})
}

// After authtap's recovery asynq's Inspector sees the task pending, with every
// field it had, and an asynq server processes it: the recovery writes what
// asynq's own Requeue writes. A task that a run holds, or whose lease was just
// written, stays where it is.
func TestRecoveryWritesWhatAsynqReads(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	c := asynq.NewClientFromRedisClient(rdb)
	q := tasks.QueueDeliver
	for _, id := range []string{"lost", "held", "fresh"} {
		task := asynq.NewTask("test:recover", []byte(`{"id":"`+id+`"}`), asynq.TaskID(id), asynq.Queue(q),
			asynq.MaxRetry(7), asynq.Timeout(90*time.Second), asynq.Retention(time.Hour))
		if _, err := c.Enqueue(task); err != nil {
			t.Fatal(err)
		}
	}
	abandon(t, rdb, q, "lost", 10*time.Second)
	abandon(t, rdb, q, "held", 10*time.Second)
	abandon(t, rdb, q, "fresh", 0)
	rdb.Set(ctx, runKey(q, "held"), "r|other|0", 10*time.Second)

	rs := newRuns(rdb, zaptest.NewLogger(t), 50*time.Millisecond, 150*time.Millisecond)
	if n, err := rs.round(ctx, []string{q}); err != nil || n != 0 {
		t.Fatalf("first round: moved %d, %v; want 0 (not yet confirmed)", n, err)
	}
	time.Sleep(recoveryConfirm(rs.interval) + 20*time.Millisecond)
	if n, err := rs.round(ctx, []string{q}); err != nil || n != 1 {
		t.Fatalf("second round: moved %d, %v; want 1", n, err)
	}

	ins := asynq.NewInspectorFromRedisClient(rdb)
	info, err := ins.GetTaskInfo(q, "lost")
	if err != nil {
		t.Fatal(err)
	}
	if info.State != asynq.TaskStatePending || info.Type != "test:recover" || info.MaxRetry != 7 ||
		info.Timeout != 90*time.Second || info.Retention != time.Hour || info.Retried != 0 || string(info.Payload) != `{"id":"lost"}` {
		t.Fatalf("inspector read %+v", info)
	}
	for _, id := range []string{"held", "fresh"} {
		if info, err := ins.GetTaskInfo(q, id); err != nil || info.State != asynq.TaskStateActive {
			t.Errorf("%s: %+v, %v; want it left active", id, info, err)
		}
	}
	if v := rdb.Get(ctx, runKey(q, "lost")).Val(); v != "x|1" {
		t.Errorf("fence of the recovered task = %q, want x|1", v)
	}

	got := make(chan map[string]string, 1)
	as := asynq.NewServerFromRedisClient(rdb, asynq.Config{Queues: map[string]int{q: 1}, LogLevel: asynq.FatalLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc("test:recover", func(ctx context.Context, t *asynq.Task) error {
		if id, _ := asynq.GetTaskID(ctx); id == "lost" {
			got <- t.Headers()
		}
		return nil
	})
	if err := as.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer as.Shutdown()
	select {
	case h := <-got:
		if h[recoveredHeader] != "1" {
			t.Errorf("headers %v, want %s=1", h, recoveredHeader)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("asynq's server did not process the recovered task")
	}
	waitFor(t, 5*time.Second, "asynq to complete the recovered task", func() bool {
		info, err := ins.GetTaskInfo(q, "lost")
		return err == nil && info.State == asynq.TaskStateCompleted
	})
}

// A gap between rounds (Redis frozen, the worker stalled) restarts the count,
// so that locks that lapsed meanwhile can be refreshed first.
func TestRecoveryRestartsCountAfterGap(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	q := tasks.QueueFanout
	if _, err := asynq.NewClientFromRedisClient(rdb).Enqueue(asynq.NewTask("test:gap", nil, asynq.TaskID("g"), asynq.Queue(q))); err != nil {
		t.Fatal(err)
	}
	abandon(t, rdb, q, "g", 10*time.Second)
	rs := newRuns(rdb, zap.NewNop(), 50*time.Millisecond, 150*time.Millisecond)
	if n, _ := rs.round(ctx, []string{q}); n != 0 {
		t.Fatal("recovered in the first round")
	}
	rs.lastOK -= 5000 // as if the previous round had been 5s ago
	time.Sleep(recoveryConfirm(rs.interval) + 20*time.Millisecond)
	if n, _ := rs.round(ctx, []string{q}); n != 0 {
		t.Fatal("recovered across a gap between rounds")
	}
	time.Sleep(recoveryConfirm(rs.interval) + 20*time.Millisecond)
	if n, _ := rs.round(ctx, []string{q}); n != 1 {
		t.Fatal("not recovered after two rounds without a gap")
	}
}

// The run lock: one run at a time, and a run of a generation a recovery fenced
// off never starts.
func TestRunLockFence(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	key := runKey(tasks.QueueDeliver, "evt:ep")
	acquire := func(value string, gen int) int {
		n, err := acquireRunScript.Run(ctx, rdb, []string{key}, value, gen, 5000).Int()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if acquire("r|a|0", 0) != 1 || acquire("r|b|0", 0) != 0 {
		t.Fatal("a second run took a held lock")
	}
	rdb.Set(ctx, key, "x|2", time.Minute) // recovered twice
	if acquire("r|c|1", 1) != -1 {
		t.Fatal("a run of generation 1 started after the task was recovered to generation 2")
	}
	if acquire("r|d|2", 2) != 1 {
		t.Fatal("the recovered run could not start")
	}
	if err := releaseRunScript.Run(ctx, rdb, []string{key}, "r|d|2", 2, 60000).Err(); err != nil {
		t.Fatal(err)
	}
	if v := rdb.Get(ctx, key).Val(); !strings.HasPrefix(v, "d|2|") {
		t.Fatalf("after release the lock is %q", v)
	}
	if acquire("r|e|1", 1) != -1 || acquire("r|f|2", 2) != 1 {
		t.Fatal("the done marker does not fence older generations off, or blocks the next retry")
	}
	// The keeper finds the lock taken over.
	if n, _ := extendRunScript.Run(ctx, rdb, []string{key}, "r|d|2", 3000).Int(); n != 0 {
		t.Fatal("a run whose lock was taken over could extend it")
	}
}

// withGeneration rewrites only the recovery header of asynq's message, and
// refuses what is not a protobuf message.
func TestWithGeneration(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	task := asynq.NewTaskWithHeaders("test:gen", []byte("p"), map[string]string{"a": "b", recoveredHeader: "4"},
		asynq.TaskID("g"), asynq.Queue("q"))
	if _, err := asynq.NewClientFromRedisClient(rdb).Enqueue(task); err != nil {
		t.Fatal(err)
	}
	msg := rdb.HGet(ctx, "asynq:{q}:t:g", "msg").Val()
	out, gen, err := withGeneration([]byte(msg))
	if err != nil || gen != 4 {
		t.Fatalf("gen %d, %v", gen, err)
	}
	rdb.HSet(ctx, "asynq:{q}:t:g", "msg", string(out))
	info, err := asynq.NewInspectorFromRedisClient(rdb).GetTaskInfo("q", "g")
	if err != nil {
		t.Fatal(err)
	}
	if info.Headers["a"] != "b" || info.Headers[recoveredHeader] != "5" || len(info.Headers) != 2 || string(info.Payload) != "p" {
		t.Fatalf("rewritten message reads %+v", info)
	}
	for _, bad := range []string{"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "\x0a\x7f", "\x0a"} {
		if _, _, err := withGeneration([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	// A header entry that is not a valid map entry is kept as it is.
	if out, gen, err := withGeneration([]byte("\x7a\x02\x0a\x7f")); err != nil || gen != 0 || !strings.HasPrefix(string(out), "\x7a\x02\x0a\x7f") {
		t.Errorf("broken header entry: %q, %d, %v", out, gen, err)
	}
	if g := generation(asynq.NewTaskWithHeaders("x", nil, map[string]string{recoveredHeader: "-3"})); g != 0 {
		t.Errorf("a negative generation header reads %d", g)
	}
}

// Acceptance 3 (b): a fan-out task left active with an expired lease (its
// dequeue reply lost while Redis was frozen) is delivered within seconds, not
// after asynq's 30s cutoff and 1-minute round.
func TestExpiredLeaseRecoveredInSeconds(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rec, recv := newRecorder(t, 0, 200)
	rdb, _ := newTestRedisClient(srv)
	defer rdb.Close()
	s, _ := NewStore(rdb, StoreOptions{})
	if _, err := s.Create(ctx, EndpointConfig{ID: "ep", URL: recv.URL, Mode: "test"}); err != nil {
		t.Fatal(err)
	}
	ids := enqueueEvents(t, srv, "user.created", "test", 1)
	abandon(t, rdb, tasks.QueueFanout, ids[0], 35*time.Second) // expired 5s ago
	start := time.Now()
	startWorker(t, srv, Config{})
	waitFor(t, 10*time.Second, "the abandoned event's delivery", func() bool { return len(rec.snapshot()) == 1 })
	t.Logf("delivered %s after the worker started", time.Since(start).Round(10*time.Millisecond))
}

// Acceptance 3 (c): a worker stopped (SIGSTOP) while its attempt is at the
// receiver loses the task to another worker, which delivers it within
// seconds, but never while the first attempt may still be running: the
// receiver never sees two requests of one webhook-id at once, even when the
// stopped worker continues.
func TestStoppedWorkerNeverOverlaps(t *testing.T) {
	stopMidSend(t, redistest.Start(t), nil)
}

// The same when Redis restarts (with its data) while the worker is stopped:
// the stopped worker's presence connection is gone with the old Redis, and
// client ids start again, but its lock names the old server's run, so the
// new worker waits the lock out all the same.
func TestStoppedWorkerAcrossRedisRestart(t *testing.T) {
	srv := redistest.StartArgs(t, "--appendonly", "yes", "--appendfsync", "always")
	stopMidSend(t, srv, func() {
		srv.Restart()
		// Client ids start at 1 again: past the stopped worker's presence
		// id, that id names a connection that is gone in the new run too.
		for range 300 {
			c, err := net.Dial("tcp", srv.Addr)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.Close()
		}
		waitFor(t, 5*time.Second, "the burnt connections to close", func() bool {
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
			defer rdb.Close()
			return strings.Count(rdb.ClientList(context.Background()).Val(), "\n") < 10
		})
	})
}

// stopMidSend runs a worker process that is SIGSTOPped while the receiver
// holds its attempt (5s), calls during (unless nil), starts a second worker
// process and SIGCONTs the first once the second sent the delivery. The
// receiver must never see two requests of the webhook-id at once, and the
// second must come after the first attempt's 6s timeout.
func stopMidSend(t *testing.T, srv *redistest.Server, during func()) {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	inflight, maxInflight, total := map[string]int{}, 0, 0
	var times []time.Time
	first := make(chan struct{}, 1)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("webhook-id")
		mu.Lock()
		inflight[id]++
		maxInflight = max(maxInflight, inflight[id])
		total++
		n := total
		times = append(times, time.Now())
		mu.Unlock()
		if n == 1 {
			first <- struct{}{}
			time.Sleep(5 * time.Second) // far longer than the run lease, within the timeout
		}
		mu.Lock()
		inflight[id]--
		mu.Unlock()
	}))
	defer recv.Close()
	rdb, _ := newTestRedisClient(srv)
	defer rdb.Close()
	s, _ := NewStore(rdb, StoreOptions{})
	if _, err := s.Create(ctx, EndpointConfig{ID: "ep", URL: recv.URL, Mode: "test"}); err != nil {
		t.Fatal(err)
	}
	// Recovery every 200ms with a 600ms run lease: without the lock stretched
	// over the send, the task would be taken over ~3.5s into the first attempt
	// (staleLeaseAge + RunLease + confirmation), while the receiver is busy.
	env := []string{"AUTHTAP_WORKER_TIMEOUT=6s", "AUTHTAP_WORKER_RECOVERY=200ms"}
	stopped := startHelperWorker(t, srv, env...)
	enqueueEvents(t, srv, "user.created", "test", 1)
	select {
	case <-first:
	case <-time.After(20 * time.Second):
		t.Fatal("the first attempt did not arrive")
	}
	if err := stopped.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stoppedAt := time.Now()
	if during != nil {
		during()
	}
	startHelperWorker(t, srv, env...)
	waitFor(t, 15*time.Second, "the second worker's attempt", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return total >= 2
	})
	t.Logf("taken over and delivered %s after the stop", time.Since(stoppedAt).Round(10*time.Millisecond))
	if err := stopped.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the stopped worker finishes its run
	mu.Lock()
	defer mu.Unlock()
	if maxInflight != 1 {
		t.Fatalf("the receiver saw %d requests of one webhook-id at once", maxInflight)
	}
	// The stopped worker's presence connection stays open (or names another
	// run of Redis): its lock is waited out, so the second attempt comes
	// after the first one's deadline.
	if d := times[1].Sub(times[0]); d < 6*time.Second {
		t.Fatalf("the second attempt came %s after the first, before the stopped one's 6s timeout", d)
	}
}

// killMidSend runs a worker process that is SIGKILLed while the receiver
// holds its attempt (the receiver lets go once the connection closes), with
// a second worker process running, both with env. It returns when the
// attempt was sent the first time, the kill, the second time, and the most
// requests of one webhook-id the receiver had at once.
func killMidSend(t *testing.T, srv *redistest.Server, env ...string) (first, killed, second time.Time, maxInflight int) {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	inflight := map[string]int{}
	type hit struct {
		at time.Time
		id string
	}
	var hits []hit
	arrived := make(chan struct{}, 1)
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body) // so that the server sees the client go away
		id := r.Header.Get("webhook-id")
		mu.Lock()
		inflight[id]++
		maxInflight = max(maxInflight, inflight[id])
		hits = append(hits, hit{time.Now(), id})
		n := len(hits)
		mu.Unlock()
		defer func() {
			mu.Lock()
			inflight[id]--
			mu.Unlock()
		}()
		if n == 1 {
			arrived <- struct{}{}
			select { // held until the sender is gone
			case <-r.Context().Done():
			case <-time.After(30 * time.Second):
			}
		}
	}))
	defer recv.Close()
	rdb, _ := newTestRedisClient(srv)
	defer rdb.Close()
	s, _ := NewStore(rdb, StoreOptions{})
	// One slot: the second attempt must take back the one the killed attempt held.
	if _, err := s.Create(ctx, EndpointConfig{ID: "ep", URL: recv.URL, Mode: "test", MaxConcurrency: 1}); err != nil {
		t.Fatal(err)
	}
	sender := startHelperWorker(t, srv, env...)
	enqueueEvents(t, srv, "user.created", "test", 1)
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("the first attempt did not arrive")
	}
	startHelperWorker(t, srv, env...)
	if err := sender.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = sender.Wait()
	killed = time.Now()
	waitFor(t, 30*time.Second, "the second worker's attempt", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(hits) >= 2
	})
	time.Sleep(500 * time.Millisecond) // no third one
	mu.Lock()
	defer mu.Unlock()
	if len(hits) != 2 || hits[1].id != hits[0].id {
		t.Fatalf("the receiver saw %v, want the one delivery twice, under one webhook-id", hits)
	}
	return hits[0].at, killed, hits[1].at, maxInflight
}

// Acceptance 3 (d): a worker SIGKILLed while its attempt is at the receiver
// (default 15s delivery timeout) — Redis sees its presence connection close —
// loses the delivery to another worker within seconds, not after the attempt's
// timeout, under the same webhook-id and never while the first may still be
// sending; the new attempt takes back the endpoint's one concurrency slot.
func TestKilledSenderRecoveredInSeconds(t *testing.T) {
	srv := redistest.Start(t)
	first, killed, second, maxInflight := killMidSend(t, srv)
	took := second.Sub(killed)
	t.Logf("killed %s into the attempt; sent again %s after the kill", killed.Sub(first).Round(10*time.Millisecond), took.Round(10*time.Millisecond))
	if maxInflight != 1 {
		t.Errorf("the receiver saw %d requests of one webhook-id at once", maxInflight)
	}
	// Without the presence connection: the lock, 16s from the send.
	if took > 10*time.Second {
		t.Errorf("sent again %s after the kill, want within seconds", took)
	}
}

// Without the CLIENT command (renamed away, as on some managed Redis) a
// killed worker's send is waited out, as a stopped one's: the new attempt
// comes after the killed attempt's timeout.
func TestKilledSenderWithoutClientCommand(t *testing.T) {
	srv := redistest.StartArgs(t, "--rename-command", "CLIENT", "")
	first, killed, second, maxInflight := killMidSend(t, srv, "AUTHTAP_WORKER_TIMEOUT=4s")
	t.Logf("killed %s into the attempt; sent again %s after the kill", killed.Sub(first).Round(10*time.Millisecond), second.Sub(killed).Round(10*time.Millisecond))
	if maxInflight != 1 {
		t.Errorf("the receiver saw %d requests of one webhook-id at once", maxInflight)
	}
	if d := second.Sub(first); d < 4*time.Second {
		t.Errorf("sent again %s after the first attempt, before its 4s timeout", d)
	}
}

// Acceptance 4: a fan-out that fails (here the endpoint store answers an
// error) runs again after about 1s, not the 5s and 5min of the webhook schedule.
func TestFanoutRetriesWithinSeconds(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rec, recv := newRecorder(t, 0, 200)
	rdb, _ := newTestRedisClient(srv)
	defer rdb.Close()
	s, _ := NewStore(rdb, StoreOptions{})
	if _, err := s.Create(ctx, EndpointConfig{ID: "ep", URL: recv.URL, Mode: "test"}); err != nil {
		t.Fatal(err)
	}
	// The endpoint version of the wrong type: every read of the store fails.
	rdb.Del(ctx, keyEndpointVersion)
	rdb.HSet(ctx, keyEndpointVersion, "broken", "1")
	startWorker(t, srv, Config{Retry: RetryPolicy{Schedule: DefaultSchedule}})
	ids := enqueueEvents(t, srv, "user.created", "test", 1)
	enqueued := time.Now()
	ins := asynq.NewInspectorFromRedisClient(rdb)
	waitFor(t, 5*time.Second, "the fan-out to fail", func() bool {
		info, err := ins.GetTaskInfo(tasks.QueueFanout, ids[0])
		return err == nil && info.Retried == 1
	})
	rdb.Del(ctx, keyEndpointVersion)
	waitFor(t, 5*time.Second, "the delivery after the fan-out's retry", func() bool { return len(rec.snapshot()) == 1 })
	took := time.Since(enqueued)
	// asynq keeps retry times in whole seconds: a 1s delay is due at the next
	// second or the one after.
	if took > 3*time.Second {
		t.Fatalf("delivered %s after the enqueue, want the ~1s fan-out retry", took)
	}
	t.Logf("a failed fan-out was delivered %s after the enqueue (first retry ~1s)", took.Round(10*time.Millisecond))
}

func TestFanoutDelay(t *testing.T) {
	fan := asynq.NewTask(tasks.TypeFanout, nil)
	del := asynq.NewTask(tasks.TypeDeliver, nil)
	p := RetryPolicy{Jitter: -1}
	for i, tc := range []struct {
		n    int
		task *asynq.Task
		err  error
		want time.Duration
	}{
		{0, fan, errFail, time.Second},
		{1, fan, errFail, 2 * time.Second},
		{4, fan, errFail, 16 * time.Second},
		{5, fan, errFail, 30 * time.Second},
		{1 << 30, fan, errFail, 30 * time.Second}, // hostile count: no overflow, no endless loop
		{-5, fan, errFail, time.Second},
		{0, del, errFail, 5 * time.Second},
		{1, del, errFail, 5 * time.Minute},
		{3, del, asynq.ErrLeaseExpired, 0},
		{3, fan, asynq.ErrLeaseExpired, 0},
		{0, fan, &ThrottledError{Wait: 300 * time.Millisecond}, 300 * time.Millisecond},
	} {
		if got := p.Delay(tc.n, tc.err, tc.task); got != tc.want {
			t.Errorf("%d: Delay(%d, %v, %s) = %s, want %s", i, tc.n, tc.err, tc.task.Type(), got, tc.want)
		}
	}
	q := RetryPolicy{Jitter: -1, FanoutFirst: 100 * time.Millisecond, FanoutMax: 250 * time.Millisecond}
	if d := q.Delay(0, errFail, fan); d != 100*time.Millisecond {
		t.Errorf("FanoutFirst: %s", d)
	}
	if d := q.Delay(3, errFail, fan); d != 250*time.Millisecond {
		t.Errorf("FanoutMax: %s", d)
	}
}

var errFail = json.Unmarshal([]byte("x"), new(int))

// The recovery's scripts touch one slot per queue: they run on Redis Cluster.
func TestRecoveryOnRedisCluster(t *testing.T) {
	ctx := context.Background()
	cl := redistest.StartCluster(t, 3)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs})
	defer rdb.Close()
	for _, q := range authtapQueues {
		task := asynq.NewTask("test:cluster", nil, asynq.TaskID("c-"+q), asynq.Queue(q))
		if _, err := asynq.NewClientFromRedisClient(rdb).Enqueue(task); err != nil {
			t.Fatal(err)
		}
		abandon(t, rdb, q, "c-"+q, 10*time.Second)
	}
	rs := newRuns(rdb, zaptest.NewLogger(t), 50*time.Millisecond, 150*time.Millisecond)
	if _, err := rs.round(ctx, authtapQueues); err != nil {
		t.Fatal(err)
	}
	time.Sleep(recoveryConfirm(rs.interval) + 20*time.Millisecond)
	if n, err := rs.round(ctx, authtapQueues); err != nil || n != len(authtapQueues) {
		t.Fatalf("moved %d, %v; want %d", n, err, len(authtapQueues))
	}
	ins := asynq.NewInspectorFromRedisClient(rdb)
	for _, q := range authtapQueues {
		if info, err := ins.GetTaskInfo(q, "c-"+q); err != nil || info.State != asynq.TaskStatePending {
			t.Errorf("%s: %+v, %v", q, info, err)
		}
		key := runKey(q, "c-"+q)
		if n, err := acquireRunScript.Run(ctx, rdb, []string{key}, "r|z|1", 1, 1000).Int(); err != nil || n != 1 {
			t.Errorf("%s: acquiring the run lock: %d, %v", q, n, err)
		}
		if err := releaseRunScript.Run(ctx, rdb, []string{key}, "r|z|1", 1, 1000).Err(); err != nil {
			t.Errorf("%s: releasing: %v", q, err)
		}
	}
}

// Acceptance 3 (b), for real: Redis frozen (SIGSTOP) for AUTHTAP_FREEZE (e.g.
// 15s, or 35s to outlast asynq's lease) while events flow at 50/s; reports
// how long after SIGCONT every event was delivered. Env-gated: it takes the
// freeze plus ~10s.
//
//	AUTHTAP_FREEZE=35s go test ./worker -run TestFrozenRedisDrains -v
func TestFrozenRedisDrains(t *testing.T) {
	freeze, err := time.ParseDuration(os.Getenv("AUTHTAP_FREEZE"))
	if err != nil {
		t.Skip("set AUTHTAP_FREEZE=15s (or 35s) to freeze a real Redis")
	}
	srv := redistest.Start(t)
	ctx := context.Background()
	rec, recv := newRecorder(t, 5*time.Millisecond, 200)
	rdb, _ := newTestRedisClient(srv)
	defer rdb.Close()
	s, _ := NewStore(rdb, StoreOptions{})
	if _, err := s.Create(ctx, EndpointConfig{ID: "ep", URL: recv.URL, Mode: "test", MaxConcurrency: 20}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Retry: RetryPolicy{Schedule: DefaultSchedule}}
	if os.Getenv("AUTHTAP_NO_RECOVERY") == "1" { // the "before" figure: asynq's recoverer alone
		cfg.RecoveryInterval, cfg.RunLease = time.Hour, 2*time.Hour
	}
	startWorker(t, srv, cfg)
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: srv.Addr})
	defer c.Close()
	var mu sync.Mutex
	var queued []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			now := time.Now()
			ev := rules.Event{ID: rules.NewEventID(now), Type: "user.created", Timestamp: now.UTC().Truncate(time.Millisecond),
				Data: json.RawMessage(`{}`), Source: rules.Source{Name: "test", Rule: "r"}, Mode: "test"}
			task, _ := tasks.NewFanoutTask(ev)
			ectx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			if _, err := c.EnqueueContext(ectx, task); err == nil {
				mu.Lock()
				queued = append(queued, ev.ID)
				mu.Unlock()
			}
			cancel()
		}
	})
	time.Sleep(3 * time.Second)
	p, _ := os.FindProcess(srv.Pid())
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(freeze)
	if err := p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	mu.Lock()
	before := slices.Clone(queued)
	mu.Unlock()
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()
	mu.Lock()
	want := slices.Clone(queued)
	mu.Unlock()
	waitFor(t, 3*time.Minute, "every queued event", func() bool {
		got := map[string]bool{}
		for _, h := range rec.snapshot() {
			got[h.webhookID] = true
		}
		for _, id := range want {
			if !got[id] {
				return false
			}
		}
		return true
	})
	last := time.Time{}
	first := map[string]time.Time{}
	for _, h := range rec.snapshot() {
		if f, ok := first[h.webhookID]; !ok || h.received.Before(f) {
			first[h.webhookID] = h.received
		}
	}
	for _, id := range before {
		last = maxTime(last, first[id])
	}
	t.Logf("Redis frozen %s: the %d events queued before SIGCONT were all delivered %s after it; %d events, %d requests in all",
		freeze, len(before), last.Sub(resumed).Round(100*time.Millisecond), len(want), len(rec.snapshot()))
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Hostile recovery options are refused when the worker is configured.
func TestRecoveryOptionsBounded(t *testing.T) {
	opt := asynq.RedisClientOpt{Addr: "127.0.0.1:1"}
	for i, tc := range []struct {
		interval, lease time.Duration
		want            string
	}{
		{time.Nanosecond, time.Second, "below the minimum"},
		{time.Second, 1500 * time.Millisecond, "at least twice"},
		{10 * time.Second, 0, "at least twice"}, // the default lease is 3s
		{-time.Second, 0, "must not be negative"},
		{0, -time.Second, "must not be negative"},
		{MaxRecoveryInterval + time.Millisecond, time.Hour, "above the maximum"},
		{time.Second, MaxRunLease + time.Millisecond, "above the maximum"},
		{time.Second, 1<<63 - 1, "above the maximum"}, // hostile: would overflow Redis's PX
	} {
		w, err := New(Config{Redis: opt, RecoveryInterval: tc.interval, RunLease: tc.lease})
		if err == nil {
			w.Shutdown()
			t.Errorf("%d: interval %s lease %s accepted", i, tc.interval, tc.lease)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%d: %v, want %q", i, err, tc.want)
		}
	}
	for i, tc := range []struct {
		first, limit time.Duration
		want         string
	}{
		{-time.Second, 0, "must not be negative"},
		{0, -time.Second, "must not be negative"},
		{time.Minute, 0, "longer than"}, // the default cap is 30s
		{2 * time.Second, time.Second, "longer than"},
		{time.Second, MaxFanoutRetry + 1, "above the maximum"},
		{1 << 62, 1<<63 - 1, "above the maximum"}, // hostile: doubling would overflow
	} {
		w, err := New(Config{Redis: opt, Retry: RetryPolicy{FanoutFirst: tc.first, FanoutMax: tc.limit}})
		if err == nil {
			w.Shutdown()
			t.Errorf("fan-out %d: first %s cap %s accepted", i, tc.first, tc.limit)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("fan-out %d: %v, want %q", i, err, tc.want)
		}
	}
	for i, tc := range []struct {
		interval time.Duration
		want     string
	}{
		{-time.Second, "must not be negative"},
		{time.Nanosecond, "below the minimum 100ms"},
		{MinProbeInterval - 1, "below the minimum"},
		{MaxProbeInterval + time.Millisecond, "above the maximum 5m0s"},
		{1<<63 - 1, "above the maximum"}, // hostile: a failing endpoint would never be probed
	} {
		w, err := New(Config{Redis: opt, ProbeInterval: tc.interval})
		if err == nil {
			w.Shutdown()
			t.Errorf("probe %d: interval %s accepted", i, tc.interval)
		} else if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("probe %d: %v, want %q", i, err, tc.want)
		}
	}
	// The bounds themselves are accepted.
	for _, c := range []Config{
		{Redis: opt, ProbeInterval: MinProbeInterval},
		{Redis: opt, ProbeInterval: MaxProbeInterval},
		{Redis: opt, RecoveryInterval: MinRecoveryInterval, RunLease: 2 * MinRecoveryInterval},
		{Redis: opt, RecoveryInterval: MaxRecoveryInterval, RunLease: MaxRunLease},
		{Redis: opt, Retry: RetryPolicy{FanoutFirst: MaxFanoutRetry, FanoutMax: MaxFanoutRetry}},
	} {
		w, err := New(c)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		w.Shutdown()
	}
	w, err := New(Config{Redis: opt})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Shutdown()
	if w.cfg.RecoveryInterval != DefaultRecoveryInterval || w.cfg.RunLease != DefaultRunLease || w.cfg.ProbeInterval != DefaultProbeInterval {
		t.Errorf("defaults: %s, %s, %s", w.cfg.RecoveryInterval, w.cfg.RunLease, w.cfg.ProbeInterval)
	}
}
