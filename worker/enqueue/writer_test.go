package enqueue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/internal/redistest"
)

func client(t testing.TB, srv *redistest.Server, db int) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr, DB: db})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func writer(t testing.TB, rdb redis.UniversalClient) *Writer {
	t.Helper()
	w := New(rdb, Options{})
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// What a Writer writes is, byte for byte, what asynq.Client writes for the same
// task (apart from the pending_since clock).
func TestWritesWhatAsynqWrites(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	viaAsynq, viaWriter := client(t, srv, 0), client(t, srv, 1)
	ac := asynq.NewClientFromRedisClient(viaAsynq)
	w := writer(t, viaWriter)

	msgs := []Message{
		{Type: "event:fanout", ID: "evt_01", Queue: "authtap_fanout", Payload: []byte(`{"event":{"id":"evt_01"}}`), MaxRetry: 25, Retention: 24 * time.Hour},
		{Type: "webhook:deliver", ID: "evt_01:ep_1", Queue: "authtap_deliver", Payload: bytes.Repeat([]byte("x"), 70000), MaxRetry: 3, Timeout: 90 * time.Second},
		{Type: "plain", ID: "p1"}, // default queue, no payload, no retries, default timeout
		{Type: "neg", ID: "n1", Queue: "q", MaxRetry: -4, Retention: 1500 * time.Millisecond},
	}
	before := time.Now().UnixNano()
	for _, m := range msgs {
		if _, err := ac.EnqueueContext(ctx, m.Task()); err != nil {
			t.Fatalf("asynq enqueue %s: %v", m.ID, err)
		}
		if err := w.Enqueue(ctx, m, 0); err != nil {
			t.Fatalf("writer enqueue %s: %v", m.ID, err)
		}
	}
	after := time.Now().UnixNano()
	for _, m := range msgs {
		key := "asynq:{" + m.queue() + "}:t:" + m.ID
		want, err := viaAsynq.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		got, err := viaWriter.HGetAll(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(want) != 3 || len(got) != len(want) {
			t.Fatalf("%s: asynq wrote fields %v, the writer %v", m.ID, keysOf(want), keysOf(got))
		}
		if got["msg"] != want["msg"] {
			t.Errorf("%s: message differs:\n asynq  %x\n writer %x", m.ID, want["msg"], got["msg"])
		}
		if got["state"] != "pending" || want["state"] != "pending" {
			t.Errorf("%s: state asynq %q writer %q", m.ID, want["state"], got["state"])
		}
		since, err := strconv.ParseInt(got["pending_since"], 10, 64)
		if err != nil || since < before || since > after {
			t.Errorf("%s: pending_since %q not between %d and %d", m.ID, got["pending_since"], before, after)
		}
	}
	for _, q := range []string{"authtap_fanout", "authtap_deliver", "default", "q"} {
		want := viaAsynq.LRange(ctx, "asynq:{"+q+"}:pending", 0, -1).Val()
		got := viaWriter.LRange(ctx, "asynq:{"+q+"}:pending", 0, -1).Val()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("pending list of %s: asynq %v writer %v", q, want, got)
		}
	}
	want := viaAsynq.SMembers(ctx, allQueues).Val()
	got := viaWriter.SMembers(ctx, allQueues).Val()
	if len(got) != 4 || len(got) != len(want) {
		t.Errorf("%s: asynq %v writer %v", allQueues, want, got)
	}

	// asynq's Inspector reads the writer's tasks back with every option.
	ins := asynq.NewInspectorFromRedisClient(viaWriter)
	info, err := ins.GetTaskInfo("authtap_deliver", "evt_01:ep_1")
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != "webhook:deliver" || len(info.Payload) != 70000 || info.MaxRetry != 3 || info.Timeout != 90*time.Second ||
		info.State != asynq.TaskStatePending || info.Queue != "authtap_deliver" {
		t.Fatalf("inspector read %+v", info)
	}
	info, err = ins.GetTaskInfo("authtap_fanout", "evt_01")
	if err != nil {
		t.Fatal(err)
	}
	if info.Retention != 24*time.Hour || info.MaxRetry != 25 || info.Timeout != DefaultTimeout {
		t.Fatalf("inspector read %+v", info)
	}
}

func keysOf(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// A task id that exists is refused like asynq refuses it, alone or twice in one batch.
func TestDuplicateIDIsRefused(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	rdb := client(t, srv, 0)
	w := writer(t, rdb)
	m := Message{Type: "t", ID: "same", Queue: "q", Payload: []byte("1")}
	if err := w.Enqueue(ctx, m, 0); err != nil {
		t.Fatal(err)
	}
	m.Payload = []byte("2")
	if err := w.Enqueue(ctx, m, 0); !errors.Is(err, asynq.ErrTaskIDConflict) {
		t.Fatalf("second enqueue: %v, want ErrTaskIDConflict", err)
	}
	// Many callers at once with one id: exactly one writes it.
	var ok, conflict atomic.Int32
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := w.Enqueue(ctx, Message{Type: "t", ID: "race", Queue: "q"}, 0)
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, asynq.ErrTaskIDConflict):
				conflict.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 || conflict.Load() != 49 {
		t.Fatalf("%d written, %d refused; want 1 and 49", ok.Load(), conflict.Load())
	}
	if n := rdb.LLen(ctx, "asynq:{q}:pending").Val(); n != 2 {
		t.Fatalf("pending list holds %d ids, want 2", n)
	}
	if got := rdb.HGet(ctx, "asynq:{q}:t:same", "msg").Val(); !bytes.Contains([]byte(got), []byte("1")) {
		t.Fatal("a refused duplicate overwrote the first task")
	}
}

type pipelineCounter struct{ n atomic.Int64 }

func (c *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (c *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmds)
	}
}

// Concurrent callers share round trips, and an asynq server processes every
// task once.
func TestConcurrentEnqueuesAreBatchedAndProcessed(t *testing.T) {
	srv := redistest.Start(t)
	rdb := client(t, srv, 0)
	var pipes pipelineCounter
	rdb.AddHook(&pipes)
	w := writer(t, rdb)

	const callers, each = 32, 100
	enqueueConcurrently(t, w, callers, each, 0, func(g, i int) Message {
		q := "qa"
		if i%3 == 0 {
			q = "qb" // two queues in one batch: one script call each
		}
		return Message{Type: "job", ID: fmt.Sprintf("%d-%d", g, i), Queue: q, Payload: []byte(strconv.Itoa(g*each + i)), MaxRetry: 1}
	})
	total := callers * each
	if n := pipes.n.Load(); n >= int64(total) {
		t.Fatalf("%d round trips for %d tasks: no batching", n, total)
	} else {
		t.Logf("%d tasks in %d round trips", total, n)
	}

	processAll(t, rdb, []string{"qa", "qb"}, total)
}

// enqueueConcurrently has callers goroutines enqueue each message msg(g, i)
// gives them, and waits for all; errors fail the test.
func enqueueConcurrently(t *testing.T, w *Writer, callers, each int, timeout time.Duration, msg func(g, i int) Message) {
	t.Helper()
	var wg sync.WaitGroup
	for g := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := w.Enqueue(context.Background(), msg(g, i), timeout); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// processAll runs an asynq server on queues until it has processed total
// "job" tasks, and fails the test if one runs twice or some never run.
func processAll(t *testing.T, rdb redis.UniversalClient, queues []string, total int) {
	t.Helper()
	var mu sync.Mutex
	seen := map[string]int{}
	done := make(chan struct{})
	weights := map[string]int{}
	for _, q := range queues {
		weights[q] = 1
	}
	asrv := asynq.NewServerFromRedisClient(rdb, asynq.Config{Concurrency: 8, Queues: weights, LogLevel: asynq.ErrorLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc("job", func(_ context.Context, task *asynq.Task) error {
		mu.Lock()
		defer mu.Unlock()
		seen[task.ResultWriter().TaskID()]++
		if len(seen) == total {
			select {
			case <-done:
			default:
				close(done)
			}
		}
		return nil
	})
	if err := asrv.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer asrv.Shutdown()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("asynq processed %d of %d tasks", len(seen), total)
	}
	mu.Lock()
	defer mu.Unlock()
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("task %s processed %d times", id, n)
		}
	}
}

// A flushed script cache (a restarted Redis) is reloaded without the caller noticing.
func TestScriptCacheFlushed(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	rdb := client(t, srv, 0)
	w := writer(t, rdb)
	if err := w.Enqueue(ctx, Message{Type: "t", ID: "1"}, 0); err != nil {
		t.Fatal(err)
	}
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := w.Enqueue(ctx, Message{Type: "t", ID: "2"}, 0); err != nil {
		t.Fatalf("after SCRIPT FLUSH: %v", err)
	}
	if n := rdb.LLen(ctx, "asynq:{default}:pending").Val(); n != 2 {
		t.Fatalf("%d pending, want 2", n)
	}
}

// With Redis gone, Enqueue answers by the caller's deadline; with Redis back
// (its data lost), tasks are written and the queue is named in asynq:queues again.
func TestRedisDownAndBack(t *testing.T) {
	srv := redistest.Start(t)
	rdb := client(t, srv, 0)
	w := writer(t, rdb)
	ctx := context.Background()
	if err := w.Enqueue(ctx, Message{Type: "t", ID: "before", Queue: "q"}, 0); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err := w.Enqueue(dctx, Message{Type: "t", ID: "during", Queue: "q"}, 0)
	cancel()
	if err == nil {
		t.Fatal("enqueue with Redis stopped succeeded")
	}
	if d := time.Since(start); d > time.Second || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("enqueue with Redis stopped took %s (%v), past its 200ms deadline", d, err)
	}
	start = time.Now()
	err = w.Enqueue(ctx, Message{Type: "t", ID: "during2", Queue: "q"}, 200*time.Millisecond)
	if d := time.Since(start); err == nil || d > time.Second || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("enqueue with Redis stopped and a 200ms timeout: %v after %s", err, d)
	}
	srv.Restart()
	time.Sleep(republish)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err = w.Enqueue(ctx, Message{Type: "t", ID: "after", Queue: "q"}, 0)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("enqueue after Redis came back: %v", err)
	}
	if !rdb.SIsMember(ctx, allQueues, "q").Val() {
		t.Fatal("queue q not named in asynq:queues after Redis lost its data")
	}
	// "during" and "during2" may have been written by the round trip it joined, once Redis was
	// back (its caller had given up by then); "before" went with the data.
	if got := fmt.Sprint(rdb.LRange(ctx, "asynq:{q}:pending", 0, -1).Val()); got != "[after]" && got != "[after during]" && got != "[after during2]" && got != "[after during2 during]" {
		t.Fatalf("pending %v", got)
	}
}

func TestInvalidMessagesAndClose(t *testing.T) {
	srv := redistest.Start(t)
	rdb := client(t, srv, 0)
	w := New(rdb, Options{MaxBatch: 4})
	ctx := context.Background()
	for _, m := range []Message{{ID: "x"}, {Type: " ", ID: "x"}, {Type: "t"}, {Type: "t", ID: "x", Queue: "  "}} {
		if err := w.Enqueue(ctx, m, 0); err == nil {
			t.Errorf("%+v accepted", m)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Enqueue(ctx, Message{Type: "t", ID: "late"}, 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	_ = w.Close() // idempotent
	if n := rdb.Exists(ctx, "asynq:{default}:t:late").Val(); n != 0 {
		t.Fatal("a task enqueued after Close was written")
	}
}

// EnqueueBatch writes its messages in their order, in few round trips, and
// answers each as Enqueue would: a duplicate id is a conflict, an invalid
// message an error of its own, the others written.
func TestEnqueueBatch(t *testing.T) {
	srv := redistest.Start(t)
	ctx := context.Background()
	rdb := client(t, srv, 0)
	var trips atomic.Int32
	w := New(rdb, Options{OnRoundTrip: func(error) { trips.Add(1) }})
	t.Cleanup(func() { _ = w.Close() })
	if err := w.Enqueue(ctx, Message{Type: "t", ID: "m0007", Queue: "q"}, 0); err != nil {
		t.Fatal(err)
	}
	trips.Store(0)
	ms := make([]Message, 300)
	for i := range ms {
		ms[i] = Message{Type: "t", ID: fmt.Sprintf("m%04d", i), Queue: "q", Payload: []byte("{}")}
	}
	ms[11].ID = " " // hostile: a blank id
	errs := w.EnqueueBatch(ctx, ms, 5*time.Second)
	for i, err := range errs {
		switch i {
		case 7:
			if !errors.Is(err, asynq.ErrTaskIDConflict) {
				t.Errorf("message 7: %v, want a task id conflict", err)
			}
		case 11:
			if err == nil {
				t.Error("a blank id was enqueued")
			}
		default:
			if err != nil {
				t.Errorf("message %d: %v", i, err)
			}
		}
	}
	if n := trips.Load(); n > 6 {
		t.Errorf("%d round trips for 300 messages (MaxBatch %d)", n, DefaultMaxBatch)
	}
	// asynq dequeues from the right of the pending list: oldest first.
	ids, err := rdb.LRange(ctx, "asynq:{q}:pending", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := len(ms) - 1; i >= 0; i-- {
		if i != 11 && i != 7 {
			want = append(want, ms[i].ID)
		}
	}
	want = append(want, "m0007")
	if fmt.Sprint(ids) != fmt.Sprint(want) {
		t.Errorf("pending list out of order:\n got %v\nwant %v", ids, want)
	}

	// A batch that Redis does not answer within its timeout: every message
	// times out, within the timeout.
	w.Close()
	w2 := New(rdb, Options{})
	t.Cleanup(func() { _ = w2.Close() })
	if err := rdb.Do(ctx, "CLIENT", "PAUSE", "1000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	errs = w2.EnqueueBatch(ctx, ms[:50], 200*time.Millisecond)
	if took := time.Since(start); took > 600*time.Millisecond {
		t.Errorf("EnqueueBatch took %s with a 200ms timeout", took)
	}
	for i, err := range errs {
		if i != 11 && !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("message %d: %v, want a deadline error", i, err)
		}
	}
	// Once Redis writes again, the writer carries on (these ids exist).
	time.Sleep(time.Second)
	for i, err := range w2.EnqueueBatch(ctx, ms[:3], 0) {
		if !errors.Is(err, asynq.ErrTaskIDConflict) {
			t.Errorf("after the pause, message %d: %v, want a conflict", i, err)
		}
	}
}
