package worker

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/authtap/authtap/worker/tasks"
)

func isSkipRetry(err error) bool { return errors.Is(err, asynq.SkipRetry) }

// fakeQueue records enqueued tasks and refuses a repeated task id, as asynq does.
type fakeQueue struct {
	mu    sync.Mutex
	tasks []*asynq.Task
}

func (q *fakeQueue) EnqueueContext(_ context.Context, t *asynq.Task, _ ...asynq.Option) (*asynq.TaskInfo, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.tasks = append(q.tasks, t)
	return &asynq.TaskInfo{}, nil
}

func (q *fakeQueue) all() []*asynq.Task {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]*asynq.Task(nil), q.tasks...)
}

// deliverFixture is a delivery handler on a private Redis with an adjustable clock.
type deliverFixture struct {
	store *Store
	h     *deliverHandler
	q     *fakeQueue
	clock *testClock
	reg   *prometheus.Registry
}

func newDeliverFixture(t *testing.T) *deliverFixture {
	t.Helper()
	clock := newTestClock()
	s, rdb := newTestStore(t, StoreOptions{Now: clock.Now})
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	q := &fakeQueue{}
	h := &deliverHandler{
		store: s, sender: NewSender(SenderOptions{Now: clock.Now}), q: q, timeout: 5 * time.Second,
		disableAfter: time.Hour, log: zap.NewNop(), metrics: m, now: clock.Now,
		limiter: &limiter{rdb: rdb, now: clock.Now, lease: time.Minute, concurrencyWait: 50 * time.Millisecond},
	}
	return &deliverFixture{store: s, h: h, q: q, clock: clock, reg: reg}
}

func (f *deliverFixture) task(t *testing.T, eventID, endpointID string) *asynq.Task {
	t.Helper()
	ev := testEvent(eventID, "user.created", "test")
	ep, err := f.store.Get(context.Background(), endpointID)
	if err != nil {
		t.Fatal(err)
	}
	p, err := DeliverPayloadFor(ev, ep, false)
	if err != nil {
		t.Fatal(err)
	}
	task, err := tasks.NewDeliverTask(p)
	if err != nil {
		t.Fatal(err)
	}
	return task
}

func TestDeliverSignsWithAllValidSecrets(t *testing.T) {
	ctx := context.Background()
	f := newDeliverFixture(t)
	got := make(chan *http.Request, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r
		_, _ = w.Write([]byte("thanks"))
	}))
	defer srv.Close()
	ep, err := f.store.Create(ctx, EndpointConfig{
		ID: "ep", URL: srv.URL, Mode: "test", BearerToken: "tok", EventHeader: "X-Defguard-Event",
	})
	if err != nil {
		t.Fatal(err)
	}
	oldKey, _ := DecodeSecret(ep.Secret())
	newSecret, err := f.store.RotateSecret(ctx, "ep", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	newKey, _ := DecodeSecret(newSecret)
	if err := f.h.ProcessTask(ctx, f.task(t, "evt_1", "ep")); err != nil {
		t.Fatalf("delivery: %v", err)
	}
	r := <-got
	if r.Header.Get("webhook-id") != "evt_1" || r.Header.Get("Authorization") != "Bearer tok" ||
		r.Header.Get("X-Defguard-Event") != "user.created" {
		t.Errorf("headers = %v", r.Header)
	}
	sigs := strings.Fields(r.Header.Get("webhook-signature"))
	ts, _ := time.Parse(time.RFC3339, f.clock.Now().Format(time.RFC3339))
	body, _ := testEvent("evt_1", "user.created", "test").Envelope()
	want := []string{}
	for _, k := range [][]byte{newKey, oldKey} {
		s, err := Sign([][]byte{k}, "evt_1", ts, body)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, s)
	}
	if len(sigs) != 2 || sigs[0] != want[0] || sigs[1] != want[1] {
		t.Errorf("signatures = %v, want new then old %v", sigs, want)
	}
	// An hour later the old secret no longer signs.
	f.clock.Add(time.Hour + time.Second)
	if err := f.h.ProcessTask(ctx, f.task(t, "evt_2", "ep")); err != nil {
		t.Fatal(err)
	}
	if sigs := strings.Fields((<-got).Header.Get("webhook-signature")); len(sigs) != 1 {
		t.Errorf("%d signatures after the overlap, want 1", len(sigs))
	}
	atts, err := f.store.Attempts(ctx, "ep", 10, time.Time{})
	if err != nil || len(atts) != 2 {
		t.Fatalf("attempts = %+v, %v", atts, err)
	}
	a := atts[1]
	if !a.Success || a.Status != 200 || a.ResponseExcerpt != "thanks" || a.Attempt != 1 ||
		a.DeliveryID != tasks.DeliverTaskID("evt_1", "ep") || a.EventType != "user.created" {
		t.Errorf("attempt = %+v", a)
	}
	if n := counterValue(t, f.reg, "authtap_worker_deliveries_total", outcomeSuccess); n != 2 {
		t.Errorf("success metric = %v, want 2", n)
	}
}

func TestDeliverOutcomes(t *testing.T) {
	ctx := context.Background()
	f := newDeliverFixture(t)
	var status sync.Map // path → handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h, ok := status.Load(r.URL.Path); ok {
			h.(http.HandlerFunc)(w, r)
		}
	}))
	defer srv.Close()
	mk := func(id string, h http.HandlerFunc) {
		status.Store("/"+id, h)
		if _, err := f.store.Create(ctx, EndpointConfig{ID: id, URL: srv.URL + "/" + id, Mode: "test"}); err != nil {
			t.Fatal(err)
		}
	}
	mk("fail", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "boom", 500) })
	mk("later", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(503)
	})
	mk("gone", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(410) })
	mk("deleted", nil)
	mk("off", nil)

	err := f.h.ProcessTask(ctx, f.task(t, "evt_1", "fail"))
	if err == nil || isSkipRetry(err) || !IsFailure(err) || !strings.Contains(err.Error(), "500") {
		t.Errorf("500: %v, want a retryable failure", err)
	}
	err = f.h.ProcessTask(ctx, f.task(t, "evt_1", "later"))
	var ra *RetryAfterError
	if !errors.As(err, &ra) || ra.After != 120*time.Second {
		t.Errorf("503 with Retry-After: %v, want RetryAfterError of 2m", err)
	}

	err = f.h.ProcessTask(ctx, f.task(t, "evt_1", "gone"))
	if !isSkipRetry(err) {
		t.Errorf("410: %v, want SkipRetry", err)
	}
	if ep, _ := f.store.Get(ctx, "gone"); ep.Enabled || ep.DisabledReason != "410 Gone" {
		t.Errorf("after 410 endpoint = %+v, want disabled", ep)
	}
	if qs := f.q.all(); len(qs) != 1 || qs[0].Type() != tasks.TypeFanout {
		t.Fatalf("410 enqueued %d tasks, want one endpoint.disabled fan-out", len(qs))
	}

	delTask := f.task(t, "evt_1", "deleted")
	if err := f.store.Delete(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	if err := f.h.ProcessTask(ctx, delTask); !isSkipRetry(err) || !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted endpoint: %v, want SkipRetry", err)
	}
	offTask := f.task(t, "evt_1", "off")
	if _, err := f.store.SetEnabled(ctx, "off", false, "manual"); err != nil {
		t.Fatal(err)
	}
	if err := f.h.ProcessTask(ctx, offTask); !isSkipRetry(err) {
		t.Errorf("disabled endpoint: %v, want SkipRetry", err)
	}

	// A live endpoint on a loopback address fails permanently (the dial guard).
	if _, err := f.store.Create(ctx, EndpointConfig{ID: "blocked", URL: "https://127.0.0.1:1/x"}); err != nil {
		t.Fatal(err)
	}
	if err := f.h.ProcessTask(ctx, f.task(t, "evt_1", "blocked")); !isSkipRetry(err) {
		t.Errorf("blocked live endpoint: %v, want SkipRetry", err)
	}
	// Malformed payloads are not retried.
	if err := f.h.ProcessTask(ctx, asynq.NewTask(tasks.TypeDeliver, []byte(`{}`))); !isSkipRetry(err) {
		t.Errorf("empty payload: %v, want SkipRetry", err)
	}
	evs, _ := f.store.EventAttempts(ctx, "evt_1")
	if len(evs) != 4 {
		t.Errorf("%d attempts recorded for evt_1, want 4 (fail, later, gone, blocked)", len(evs))
	}
}

func TestDeliverAutoDisable(t *testing.T) {
	ctx := context.Background()
	f := newDeliverFixture(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(502) }))
	defer srv.Close()
	if _, err := f.store.Create(ctx, EndpointConfig{ID: "bad", URL: srv.URL, Mode: "test", Tenant: "org_1"}); err != nil {
		t.Fatal(err)
	}
	start := f.clock.Now()
	if err := f.h.ProcessTask(ctx, f.task(t, "evt_1", "bad")); err == nil || isSkipRetry(err) {
		t.Fatalf("first failure: %v", err)
	}
	f.clock.Add(30 * time.Minute)
	if err := f.h.ProcessTask(ctx, f.task(t, "evt_2", "bad")); err == nil || isSkipRetry(err) {
		t.Fatalf("failure within DisableAfter: %v", err)
	}
	if len(f.q.all()) != 0 {
		t.Fatal("endpoint disabled too early")
	}
	f.clock.Add(31 * time.Minute)
	if err := f.h.ProcessTask(ctx, f.task(t, "evt_3", "bad")); !isSkipRetry(err) {
		t.Fatalf("failure after DisableAfter: %v, want SkipRetry", err)
	}
	ep, _ := f.store.Get(ctx, "bad")
	if ep.Enabled || !strings.Contains(ep.DisabledReason, "failed") {
		t.Errorf("endpoint = %+v, want disabled", ep)
	}
	qs := f.q.all()
	if len(qs) != 1 {
		t.Fatalf("%d tasks enqueued, want one endpoint.disabled event", len(qs))
	}
	p, err := tasks.ParseFanout(qs[0])
	if err != nil {
		t.Fatal(err)
	}
	var data map[string]string
	_ = json.Unmarshal(p.Event.Data, &data)
	if p.Event.Type != EventEndpointDisabled || p.Event.Source.Name != "authtap" || data["endpoint_id"] != "bad" ||
		p.Event.Tenant != "org_1" || data["url"] != srv.URL || data["reason"] == "" || data["failing_since"] != start.Format("2006-01-02T15:04:05.000Z07:00") {
		t.Errorf("endpoint.disabled event = %+v, data %v", p.Event, data)
	}
	// Re-enabling starts a fresh failure period.
	if _, err := f.store.SetEnabled(ctx, "bad", true, ""); err != nil {
		t.Fatal(err)
	}
	if err := f.h.ProcessTask(ctx, f.task(t, "evt_4", "bad")); err == nil || isSkipRetry(err) {
		t.Errorf("first failure after re-enabling: %v, want a retryable failure", err)
	}
}

func TestDeliverThrottled(t *testing.T) {
	ctx := context.Background()
	f := newDeliverFixture(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}))
	defer srv.Close()
	if _, err := f.store.Create(ctx, EndpointConfig{ID: "one", URL: srv.URL, Mode: "test", MaxConcurrency: 1}); err != nil {
		t.Fatal(err)
	}
	r, _ := f.store.load(ctx, "one")
	held, err := f.h.limiter.acquire(ctx, r, "held")
	if err != nil {
		t.Fatal(err)
	}
	err = f.h.ProcessTask(ctx, f.task(t, "evt_1", "one"))
	var te *ThrottledError
	if !errors.As(err, &te) || IsFailure(err) {
		t.Fatalf("delivery over the limit: %v, want a ThrottledError", err)
	}
	if atts, _ := f.store.Attempts(ctx, "one", 10, time.Time{}); len(atts) != 0 {
		t.Errorf("a throttled delivery was recorded as an attempt")
	}
	f.h.limiter.release(ctx, held)
	if err := f.h.ProcessTask(ctx, f.task(t, "evt_1", "one")); err != nil {
		t.Errorf("delivery after release: %v", err)
	}
	if n, _ := f.h.limiter.rdb.ZCard(ctx, inflightKey("one")).Result(); n != 0 {
		t.Errorf("%d slots still held after the delivery", n)
	}
}

// counterValue reads one outcome of a counter vector from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name, outcome string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
