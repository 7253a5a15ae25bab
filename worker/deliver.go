package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker/tasks"
)

// EventEndpointDisabled is the type of the event authtap emits when it
// disables an endpoint (410 Gone, or failing for Config.DisableAfter).
const EventEndpointDisabled = "endpoint.disabled"

// SourceName is the Source.Name of the events authtap emits itself.
const SourceName = "authtap"

// Delivery outcomes, as recorded in metrics.
const (
	outcomeSuccess   = "success"
	outcomeFailure   = "failure"
	outcomeGone      = "gone"
	outcomePermanent = "permanent"
	outcomeThrottled = "throttled"
	outcomeSkipped   = "skipped"
)

// deliverHandler processes webhook:deliver tasks.
type deliverHandler struct {
	store   *Store
	sender  *Sender
	limiter *limiter
	q       enqueuer
	// timeout bounds one attempt.
	timeout time.Duration
	// disableAfter disables an endpoint that has failed without a success for this long.
	disableAfter time.Duration
	log          *zap.Logger
	metrics      *metrics
	now          func() time.Time
	// drain indexes the deliveries waiting for each endpoint and pulls them
	// forward once it answers again (drain.go); nil: no index.
	drain *drainer
}

// acquireSlot takes one of the endpoint's delivery slots. A throttled
// delivery normally goes back to the queue without costing a retry, waiting
// in the endpoint's line for a drain to hand it a slot (drain.go), but
// asynq archives a task whose retries are used up before
// asking whether the error was a failure: so on the last attempt it waits
// here for a slot instead (at most one attempt's timeout), and only a
// delivery that still finds none is archived, where it stays retryable.
//
// A recovered run (its generation above 0) takes back its delivery's earlier
// slot at once (limits.go).
func (h *deliverHandler) acquireSlot(ctx context.Context, r *endpointRecord, taskID string, lastAttempt bool, gen int) (slot, error) {
	token := func() string { return taskID + "@" + strconv.FormatInt(time.Now().UnixNano(), 36) }
	held, q, err := h.limiter.acquireIn(ctx, r, token(), h.drain != nil && !lastAttempt, gen > 0)
	if err == nil || !lastAttempt {
		if err != nil && q.rank >= 0 {
			h.waitInLine(ctx, r.ID, q)
		}
		return held, err
	}
	deadline := time.Now().Add(h.timeout)
	for {
		te, throttled := errors.AsType[*ThrottledError](err)
		if !throttled || time.Now().After(deadline) {
			return held, err
		}
		wait := min(max(te.Wait, 10*time.Millisecond), time.Until(deadline), time.Second)
		select {
		case <-ctx.Done():
			return held, err
		case <-time.After(wait):
		}
		if held, err = h.limiter.acquire(ctx, r, token()); err == nil {
			return held, nil
		}
	}
}

// waitInLine makes sure that a delivery that now waits in line for endpoint
// id gets a slot handed out: the endpoint is listed as having deliveries
// waiting (the probe round's safety net), and a drain starts unless one runs.
func (h *deliverHandler) waitInLine(ctx context.Context, id string, q queued) {
	if q.added {
		if err := h.drain.rdb.SAdd(ctx, keyWaitingEndpoints, id).Err(); err != nil {
			h.log.Debug("listing endpoint with waiting deliveries", zap.String("endpoint_id", id), zap.Error(err))
		}
	}
	if !q.draining {
		h.drain.kick(id)
	}
}

// ProcessTask implements asynq.Handler.
func (h *deliverHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	p, err := tasks.ParseDeliver(t)
	if err != nil {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	taskID, _ := asynq.GetTaskID(ctx)
	if taskID == "" {
		taskID = tasks.DeliverTaskID(p.EventID, p.EndpointID)
	}
	r, err := h.store.lookup(ctx, p.EndpointID)
	if err != nil {
		return fmt.Errorf("delivering %s: %w", taskID, err)
	}
	if r == nil {
		h.metrics.observe(outcomeSkipped, 0)
		h.log.Info("skipping delivery: endpoint was deleted", zap.String("delivery_id", taskID), zap.String("endpoint_id", p.EndpointID))
		return fmt.Errorf("delivering %s: endpoint %s: %w: %w", taskID, p.EndpointID, ErrNotFound, asynq.SkipRetry)
	}
	if !r.Enabled {
		h.metrics.observe(outcomeSkipped, 0)
		h.log.Info("skipping delivery: endpoint is disabled", zap.String("delivery_id", taskID),
			zap.String("endpoint_id", r.ID), zap.String("reason", r.DisabledReason))
		return fmt.Errorf("delivering %s: endpoint %s is disabled (%s): %w", taskID, r.ID, r.DisabledReason, asynq.SkipRetry)
	}
	keys, err := r.signingKeys(h.now())
	if err != nil {
		return fmt.Errorf("delivering %s: %w: %w", taskID, err, asynq.SkipRetry)
	}
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, known := asynq.GetMaxRetry(ctx)
	held, err := h.acquireSlot(ctx, r, taskID, known && retried >= maxRetry, generation(t))
	if err != nil {
		if _, ok := errors.AsType[*ThrottledError](err); ok {
			h.metrics.observe(outcomeThrottled, 0)
		}
		return err
	}
	// No second attempt of this delivery may send until this one is over (recover.go).
	sctx, sent, err := holdForSend(ctx, h.timeout)
	if err != nil {
		h.limiter.release(ctx, held)
		return fmt.Errorf("delivering %s: %w", taskID, err)
	}
	res := h.sender.Send(sctx, SendRequest{
		URL: r.URL, MsgID: p.EventID, EventType: p.EventType, Body: p.Body, Secrets: keys,
		BearerToken: r.BearerToken, EventHeader: r.EventHeader, Timeout: h.timeout, Live: r.Mode == rules.ModeLive,
	})
	sent()

	a := Attempt{
		DeliveryID: taskID, EventID: p.EventID, EventType: p.EventType, EndpointID: r.ID, Tenant: p.Tenant, Attempt: retried + 1,
		Time: res.AttemptedAt.UTC(), Status: res.StatusCode, LatencyMS: float64(res.Latency.Microseconds()) / 1000,
		ResponseExcerpt: res.ResponseExcerpt, Error: res.Err, Success: res.Success, Replay: p.Replay,
	}
	if a.Time.IsZero() {
		a.Time = h.now().UTC()
	}
	// Record even when the task's context ended (shutdown, deadline).
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if res.StaleConn != nil {
		// The first try failed on a keep-alive connection the receiver had
		// closed; it is logged as a row of this attempt, which the re-send on a
		// fresh connection completes.
		st := a
		st.Time, st.Status, st.Success = res.StaleConn.AttemptedAt.UTC(), 0, false
		st.LatencyMS, st.ResponseExcerpt = float64(res.StaleConn.Latency.Microseconds())/1000, ""
		st.Error = res.StaleConn.Err + " (on a reused keep-alive connection the receiver had closed; re-sent at once on a fresh connection)"
		if _, err := h.store.recordAttempt(rctx, st, nil); err != nil {
			h.log.Error("recording delivery attempt", zap.String("delivery_id", taskID), zap.Error(err))
		}
	}
	o := outcomeDone
	if !res.Success && !res.Gone && !res.Permanent && !(known && retried >= maxRetry) {
		o = outcomeWaits
	}
	var idx indexCmds
	// One that waited in line or on the schedule and fails again keeps its place.
	place := a.Time
	if held.place > 0 {
		place = time.UnixMilli(int64(held.place))
	}
	failingSince, logErr := h.store.recordAttempt(rctx, a, func(p redis.Pipeliner) {
		held.releaseIn(rctx, p)
		if h.drain != nil {
			idx = h.drain.indexIn(rctx, p, r.ID, taskID, o, res.Success, place)
		}
	})
	if logErr != nil {
		h.limiter.release(rctx, held)
		h.log.Error("recording delivery attempt", zap.String("delivery_id", taskID), zap.Error(logErr))
	}
	var probeDue time.Time
	probed := false
	if h.drain != nil && logErr == nil {
		probeDue, probed = h.drain.probeDue(rctx, r.ID, taskID, idx)
		if res.Success && idx.waiting() {
			h.drain.kick(r.ID)
		}
	}

	fields := func() []zap.Field {
		return []zap.Field{
			zap.String("delivery_id", taskID), zap.String("event_type", p.EventType), zap.Int("attempt", a.Attempt),
			zap.Int("status", res.StatusCode), zap.Duration("latency", res.Latency), zap.String("error", res.Err),
		}
	}
	switch {
	case res.Success:
		h.metrics.observe(outcomeSuccess, res.Latency)
		if c := h.log.Check(zapcore.DebugLevel, "delivered"); c != nil {
			c.Write(fields()...)
		}
		return nil
	case res.Gone:
		h.metrics.observe(outcomeGone, res.Latency)
		h.log.Warn("endpoint answered 410 Gone; disabling it", append(fields(), zap.String("endpoint_id", r.ID))...)
		h.disable(rctx, r, "410 Gone", a.Time)
		return fmt.Errorf("delivering %s: endpoint %s answered 410 Gone and was disabled: %w", taskID, r.ID, asynq.SkipRetry)
	case res.Permanent:
		h.metrics.observe(outcomePermanent, res.Latency)
		h.log.Warn("delivery failed permanently", append(fields(), zap.String("endpoint_id", r.ID))...)
		return fmt.Errorf("delivering %s: %s: %w", taskID, res.Err, asynq.SkipRetry)
	}
	h.metrics.observe(outcomeFailure, res.Latency)
	if c := h.log.Check(zapcore.InfoLevel, "delivery failed"); c != nil {
		c.Write(fields()...)
	}
	if !failingSince.IsZero() && h.disableAfter > 0 && a.Time.Sub(failingSince) >= h.disableAfter {
		reason := fmt.Sprintf("deliveries failed without a success since %s", failingSince.UTC().Format(time.RFC3339))
		h.log.Warn("disabling failing endpoint", zap.String("endpoint_id", r.ID), zap.Time("failing_since", failingSince))
		h.disable(rctx, r, reason, failingSince)
		return fmt.Errorf("delivering %s: endpoint %s disabled after failing since %s: %w",
			taskID, r.ID, failingSince.UTC().Format(time.RFC3339), asynq.SkipRetry)
	}
	var err2 error
	if res.StatusCode != 0 {
		err2 = fmt.Errorf("delivering %s: endpoint answered %d", taskID, res.StatusCode)
	} else {
		err2 = fmt.Errorf("delivering %s: %s", taskID, res.Err)
	}
	if now := time.Now(); probed && probeDue.After(now) {
		// An early probe of a failing endpoint costs the delivery no step of
		// its schedule: it goes back to the retry set for the time it was due
		// (a *ThrottledError is not counted as a failure by asynq).
		wait := max(probeDue.Sub(now), res.RetryAfter)
		return fmt.Errorf("%w (early probe of a failing endpoint; the delivery keeps its scheduled retry): %w",
			err2, &ThrottledError{Wait: wait, Reason: "probe of failing endpoint " + r.ID})
	}
	if res.RetryAfter > 0 {
		return &RetryAfterError{After: res.RetryAfter, Err: err2}
	}
	return err2
}

// disable disables r and, when that changed its state, announces it with an
// endpoint.disabled event fanned out like any other.
func (h *deliverHandler) disable(ctx context.Context, r *endpointRecord, reason string, failingSince time.Time) {
	changed, err := h.store.SetEnabled(ctx, r.ID, false, reason)
	if err != nil {
		h.log.Error("disabling endpoint", zap.String("endpoint_id", r.ID), zap.Error(err))
		return
	}
	if !changed {
		return
	}
	data, err := json.Marshal(map[string]string{
		"endpoint_id": r.ID, "url": r.URL, "reason": reason,
		"failing_since": failingSince.UTC().Format(rules.TimestampFormat),
	})
	if err != nil {
		h.log.Error("encoding endpoint.disabled event", zap.Error(err))
		return
	}
	now := h.now().UTC()
	ev := rules.Event{
		ID:        rules.DedupeEventID(SourceName, EventEndpointDisabled, r.ID+"@"+strconv.FormatInt(now.UnixMilli(), 10)),
		Type:      EventEndpointDisabled,
		Timestamp: now.Truncate(time.Millisecond),
		Subject:   r.ID,
		// A tenant endpoint's disabling is news for its tenant (its other
		// endpoints) and for the operator, and for no other tenant.
		Tenant: r.Tenant,
		Data:   data,
		Source: rules.Source{Name: SourceName, Rule: EventEndpointDisabled},
		Mode:   r.Mode,
	}
	task, err := tasks.NewFanoutTask(ev)
	if err == nil {
		_, err = h.q.EnqueueContext(ctx, task)
	}
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		h.log.Error("enqueuing endpoint.disabled event", zap.String("endpoint_id", r.ID), zap.Error(err))
	}
}

// metrics are the worker's Prometheus collectors; a nil *metrics records nothing.
type metrics struct {
	deliveries *prometheus.CounterVec
	latency    prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	deliveries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "authtap", Subsystem: "worker", Name: "deliveries_total",
		Help: "Webhook delivery attempts by outcome (success, failure, gone, permanent, throttled, skipped).",
	}, []string{"outcome"})
	latency := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "authtap", Subsystem: "worker", Name: "delivery_duration_seconds",
		Help:    "Time from sending a webhook to having read the response.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
	})
	// A new worker on the same registry (a Caddy config reload) shares the collectors.
	var err error
	m := &metrics{}
	if m.deliveries, err = register(reg, deliveries); err != nil {
		return nil, err
	}
	if m.latency, err = register(reg, latency); err != nil {
		return nil, err
	}
	return m, nil
}

// register registers c, or returns the collector already registered in its place.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("registering worker metrics: %w", err)
}

func (m *metrics) observe(outcome string, latency time.Duration) {
	if m == nil {
		return
	}
	m.deliveries.WithLabelValues(outcome).Inc()
	if latency > 0 {
		m.latency.Observe(latency.Seconds())
	}
}

var _ asynq.Handler = (*deliverHandler)(nil)
