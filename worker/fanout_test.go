package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker/enqueue"
	"github.com/authtap/authtap/worker/tasks"
)

func testEvent(id, typ, mode string) rules.Event {
	return rules.Event{
		ID: id, Type: typ, Timestamp: time.Date(2026, 11, 23, 10, 0, 0, 123e6, time.UTC),
		Data: json.RawMessage(`{"id":"u_1","email":"a@x.test"}`), Source: rules.Source{Name: "legacy-auth", Rule: "r"}, Mode: mode,
	}
}

func TestFanout(t *testing.T) {
	ctx := context.Background()
	s, rdb := newTestStore(t, StoreOptions{})
	for _, c := range []EndpointConfig{
		{ID: "env", URL: "https://a.example", Events: []string{"user.*"}},
		{ID: "data", URL: "https://b.example", Events: []string{"user.created"}, Format: FormatData},
		{ID: "other", URL: "https://c.example", Events: []string{"tenant.*"}},
		{ID: "off", URL: "https://d.example", Disabled: true},
		{ID: "test", URL: "http://127.0.0.1:9", Mode: "test"},
	} {
		if _, err := s.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	writer := enqueue.New(rdb, enqueue.Options{})
	t.Cleanup(func() { _ = writer.Close() })
	insp := asynq.NewInspectorFromRedisClient(rdb)
	policy := RetryPolicy{Schedule: []time.Duration{0, time.Second, time.Second}}
	h := &fanoutHandler{store: s, w: writer, maxRetry: policy.MaxRetry(), dedupe: time.Hour, log: zap.NewNop()}

	ev := testEvent("evt_1", "user.created", "live")
	task, err := tasks.NewFanoutTask(ev)
	if err != nil {
		t.Fatal(err)
	}
	// A repeated fan-out (a retry after a partial failure) never doubles a delivery.
	for range 2 {
		if err := h.ProcessTask(ctx, task); err != nil {
			t.Fatalf("fan-out: %v", err)
		}
	}
	pending, err := insp.ListPendingTasks(tasks.QueueDeliver)
	if err != nil {
		t.Fatal(err)
	}
	if len(pending) != 2 {
		t.Fatalf("%d deliveries queued, want 2 (env, data)", len(pending))
	}
	env, _ := ev.Envelope()
	for _, ti := range pending {
		p, err := tasks.ParseDeliver(asynq.NewTask(ti.Type, ti.Payload))
		if err != nil {
			t.Fatal(err)
		}
		if ti.ID != tasks.DeliverTaskID(ev.ID, p.EndpointID) || ti.MaxRetry != 2 || ti.Type != tasks.TypeDeliver {
			t.Errorf("task %s: id/max retry/type = %s/%d/%s", p.EndpointID, ti.ID, ti.MaxRetry, ti.Type)
		}
		if ti.Retention != time.Hour {
			t.Errorf("task %s: retention %v, want 1h", p.EndpointID, ti.Retention)
		}
		want := string(env)
		if p.EndpointID == "data" {
			want = string(ev.Data)
		}
		if string(p.Body) != want {
			t.Errorf("task %s body = %s, want %s", p.EndpointID, p.Body, want)
		}
		if p.EventID != ev.ID || p.EventType != ev.Type {
			t.Errorf("task %s payload = %+v", p.EndpointID, p)
		}
	}
	// The payload never holds a secret.
	for _, ti := range pending {
		for _, id := range []string{"env", "data"} {
			e, _ := s.Get(ctx, id)
			if strings.Contains(string(ti.Payload), e.Secret()) {
				t.Errorf("payload holds the secret of %s", id)
			}
		}
	}

	// A test event goes only to test endpoints; the event is kept for replay.
	tev := testEvent("evt_2", "user.created", "test")
	task, _ = tasks.NewFanoutTask(tev)
	if err := h.ProcessTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	ti, err := insp.GetTaskInfo(tasks.QueueDeliver, tasks.DeliverTaskID("evt_2", "test"))
	if err != nil {
		t.Fatalf("test delivery not queued: %v", err)
	}
	if ti.State != asynq.TaskStatePending {
		t.Errorf("test delivery state %v", ti.State)
	}
	if n, _ := insp.ListPendingTasks(tasks.QueueDeliver); len(n) != 3 {
		t.Errorf("%d deliveries queued after the test event, want 3", len(n))
	}
	if got, err := s.GetEvent(ctx, "evt_2"); err != nil || got.Mode != "test" {
		t.Errorf("event not kept: %+v, %v", got, err)
	}
	if evs, _ := s.EndpointEventsBetween(ctx, "env", ev.Timestamp, ev.Timestamp.Add(time.Second)); len(evs) != 1 {
		t.Errorf("endpoint event index has %d events, want 1", len(evs))
	}

	// A malformed payload is not retried.
	if err := h.ProcessTask(ctx, asynq.NewTask(tasks.TypeFanout, []byte("{"))); err == nil || !isSkipRetry(err) {
		t.Errorf("malformed fan-out: %v, want SkipRetry", err)
	}
}

// A fan-out to many endpoints enqueues every delivery (concurrently, through
// the batching writer), and names the deliver queue in asynq's queue list
// again once Redis has lost it.
func TestFanoutManyEndpoints(t *testing.T) {
	ctx := context.Background()
	s, rdb := newTestStore(t, StoreOptions{})
	const n = 60
	for i := range n {
		if _, err := s.Create(ctx, EndpointConfig{ID: fmt.Sprintf("ep%02d", i), URL: "https://a.example", Events: []string{"user.*"}}); err != nil {
			t.Fatal(err)
		}
	}
	writer := enqueue.New(rdb, enqueue.Options{MaxBatch: 16})
	t.Cleanup(func() { _ = writer.Close() })
	h := &fanoutHandler{store: s, w: writer, maxRetry: 3, dedupe: time.Hour, log: zap.NewNop()}
	insp := asynq.NewInspectorFromRedisClient(rdb)
	fanout := func(id string) {
		t.Helper()
		task, err := tasks.NewFanoutTask(testEvent(id, "user.created", "live"))
		if err != nil {
			t.Fatal(err)
		}
		if err := h.ProcessTask(ctx, task); err != nil {
			t.Fatalf("fan-out %s: %v", id, err)
		}
	}
	fanout("evt_a")
	pending, err := insp.ListPendingTasks(tasks.QueueDeliver, asynq.PageSize(1000))
	if err != nil || len(pending) != n {
		t.Fatalf("%d deliveries queued, want %d (%v)", len(pending), n, err)
	}
	seen := map[string]bool{}
	for _, ti := range pending {
		seen[ti.ID] = true
	}
	for i := range n {
		if id := tasks.DeliverTaskID("evt_a", fmt.Sprintf("ep%02d", i)); !seen[id] {
			t.Errorf("no delivery %s", id)
		}
	}

	// Redis lost asynq's queue list (a restart without persistence).
	if err := rdb.SRem(ctx, "asynq:queues", tasks.QueueDeliver).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // the writer names its queues at most once a second
	fanout("evt_b")
	if ok, err := rdb.SIsMember(ctx, "asynq:queues", tasks.QueueDeliver).Result(); err != nil || !ok {
		t.Errorf("deliver queue not named again in asynq:queues: %v, %v", ok, err)
	}
	if got, err := insp.ListPendingTasks(tasks.QueueDeliver, asynq.PageSize(1000)); err != nil || len(got) != 2*n {
		t.Errorf("%d deliveries queued after the second event, want %d (%v)", len(got), 2*n, err)
	}
}
