package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker/enqueue"
	"github.com/authtap/authtap/worker/tasks"
)

// enqueuer is the part of *asynq.Client the handlers use.
type enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// taskWriter is the part of *enqueue.Writer the fan-out uses.
type taskWriter interface {
	Enqueue(ctx context.Context, m enqueue.Message, timeout time.Duration) error
}

// DeliverPayloadFor returns the webhook:deliver payload of ev for ep: the body
// is the envelope or, for the "data" format, the event's data alone (its
// previous is not sent). The body is fixed here, so that every retry sends
// the same bytes.
func DeliverPayloadFor(ev rules.Event, ep Endpoint, replay bool) (tasks.DeliverPayload, error) {
	p := tasks.DeliverPayload{EventID: ev.ID, EventType: ev.Type, EndpointID: ep.ID, Tenant: ev.Tenant, Replay: replay}
	if ep.Format == FormatData {
		p.Body = ev.Data
		if len(p.Body) == 0 {
			p.Body = json.RawMessage("null")
		}
		return p, nil
	}
	b, err := ev.Envelope()
	if err != nil {
		return p, fmt.Errorf("encoding event %s: %w", ev.ID, err)
	}
	p.Body = b
	return p, nil
}

// fanoutHandler processes event:fanout tasks: it enqueues one webhook:deliver
// task per enabled endpoint of the event's mode whose filters take the event
// and whose tenant may receive it (TenantTakes: operator endpoints, and the
// endpoints of the event's own tenant).
// The deliveries of one event are enqueued concurrently through the batching
// writer, so they share Redis round trips with each other and with other
// fan-outs; the writer also names the deliver queue in asynq's queue list
// again after Redis lost its data, which asynq's client does once per process.
type fanoutHandler struct {
	store *Store
	w     taskWriter
	// maxRetry is the asynq.MaxRetry of the deliveries (RetryPolicy.MaxRetry).
	maxRetry int
	// dedupe is how long a completed delivery task is kept, refusing a second
	// enqueue of the same event and endpoint.
	dedupe time.Duration
	log    *zap.Logger
}

// ProcessTask implements asynq.Handler.
func (h *fanoutHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	p, err := tasks.ParseFanout(t)
	if err != nil {
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	ev := p.Event
	mode := ev.Mode
	if mode == "" {
		mode = rules.ModeLive
	}
	eps, err := h.store.Match(ctx, ev.Type, mode, ev.Tenant)
	if err != nil {
		return fmt.Errorf("fanning out %s: %w", ev.ID, err)
	}
	envelope, err := ev.Envelope()
	if err != nil {
		return fmt.Errorf("fanning out %s: encoding envelope: %w (%w)", ev.ID, err, asynq.SkipRetry)
	}
	ids := make([]string, len(eps))
	for i, ep := range eps {
		ids[i] = ep.ID
	}
	// Keep the event first, so that it can be replayed even if an enqueue below fails.
	if err := h.store.RecordEvent(ctx, ev, envelope, ids); err != nil {
		return fmt.Errorf("fanning out %s: %w", ev.ID, err)
	}
	// One result per endpoint, each written by its own enqueue.
	results := make([]error, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		dp, err := DeliverPayloadFor(ev, ep, false)
		if err != nil {
			results[i] = err
			continue
		}
		m, err := tasks.DeliverMessage(dp, h.maxRetry, h.dedupe)
		if err != nil {
			results[i] = err
			continue
		}
		enqueueOne := func() {
			if err := h.w.Enqueue(ctx, m, 0); err != nil {
				results[i] = fmt.Errorf("enqueuing delivery to %s: %w", ep.ID, err)
			}
		}
		if len(eps) == 1 {
			enqueueOne()
		} else {
			wg.Go(enqueueOne)
		}
	}
	wg.Wait()
	var errs []error
	queued := 0
	for _, err := range results {
		switch {
		case err == nil:
			queued++
		case errors.Is(err, asynq.ErrTaskIDConflict):
			// Already queued (or done) by an earlier run of this fan-out.
		default:
			errs = append(errs, err)
		}
	}
	if c := h.log.Check(zapcore.DebugLevel, "event fanned out"); c != nil {
		c.Write(zap.String("event_id", ev.ID), zap.String("event_type", ev.Type), zap.String("mode", mode),
			zap.Int("endpoints", len(eps)), zap.Int("queued", queued))
	}
	if len(errs) > 0 {
		return fmt.Errorf("fanning out %s: %w", ev.ID, errors.Join(errs...))
	}
	return nil
}

var _ asynq.Handler = (*fanoutHandler)(nil)
