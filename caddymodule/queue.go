package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"

	"github.com/authtap/authtap/caddymodule/spool"
	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
	"github.com/authtap/authtap/worker/enqueue"
	"github.com/authtap/authtap/worker/tasks"
)

// Shared across config reloads: a new config acquires these before the old one
// releases them, so connections, the spool and the worker live on through a reload.
var (
	backends = caddy.NewUsagePool() // "redis:"+URL → *backend
	spools   = caddy.NewUsagePool() // absolute dir → spoolDestructor
	workers  = caddy.NewUsagePool() // "worker:"+hash of its config → *pooledWorker
)

// payloadPool holds fan-out payload buffers (*[]byte); ones that grew past
// maxPooledPayload are left to the GC.
var payloadPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

const maxPooledPayload = 64 << 10

// Replay loop and worker start timing.
var (
	replayMinWait = time.Second
	replayMaxWait = 10 * time.Second
	// workerRetryWait is how often a worker that could not reach Redis at start tries again.
	workerRetryWait = 2 * time.Second
)

// backend is one Redis (configured or embedded) with its clients.
type backend struct {
	opt      asynq.RedisConnOpt
	rdb      redis.UniversalClient
	writer   *enqueue.Writer // batches the enqueues of concurrent requests
	embedded bool
	mini     *miniredis.Miniredis // the embedded Redis, nil otherwise

	// down is set when an enqueue failed; while it is set, events go straight
	// to the spool (no waiting for a Redis that does not answer) until the
	// replay loop reaches Redis again and empties the spool.
	down atomic.Bool
}

func newBackend(opt asynq.RedisConnOpt) (*backend, error) {
	rdb, err := worker.RedisClient(opt)
	if err != nil {
		return nil, err
	}
	return &backend{opt: opt, rdb: rdb, writer: enqueue.New(rdb, enqueue.Options{})}, nil
}

func (b *backend) embeddedAddr() string {
	if b.mini == nil {
		return ""
	}
	return b.mini.Addr()
}

// Destruct closes the connection (and stops the embedded Redis).
func (b *backend) Destruct() error {
	_ = b.writer.Close()
	err := b.rdb.Close()
	if b.mini != nil {
		b.mini.Close()
	}
	return err
}

// spoolDestructor lets a spool live in a UsagePool.
type spoolDestructor struct{ *spool.Spool }

func (s spoolDestructor) Destruct() error { return s.Spool.Close() }

// pooledWorker is an in-process worker shared across config reloads.
type pooledWorker struct {
	w          *worker.Worker
	collectors *recordingRegisterer
	log        *zap.Logger

	once sync.Once
	stop chan struct{}
	wg   sync.WaitGroup
}

// start starts the worker, or when Redis does not answer, keeps trying in the
// background: a Redis outage at startup must not keep Caddy from serving (the
// handler spools events meanwhile).
func (p *pooledWorker) start() {
	p.once.Do(func() {
		err := p.w.Start()
		if err == nil {
			return
		}
		p.log.Error("authtap: starting the in-process worker; retrying in the background", zap.Error(err))
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			t := time.NewTicker(workerRetryWait)
			defer t.Stop()
			for {
				select {
				case <-p.stop:
					return
				case <-t.C:
					if err := p.w.Start(); err == nil {
						p.log.Info("authtap: in-process worker started")
						return
					}
				}
			}
		}()
	})
}

// Destruct stops the worker, waiting for deliveries in flight.
func (p *pooledWorker) Destruct() error {
	close(p.stop)
	p.wg.Wait()
	p.w.Shutdown()
	return nil
}

// recordingRegisterer keeps the collectors a pooled worker registers, so that
// each config's metrics registry (Caddy makes a new one per config) gets them.
type recordingRegisterer struct {
	mu sync.Mutex
	cs []prometheus.Collector
}

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cs = append(r.cs, c)
	return nil
}

func (r *recordingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = r.Register(c)
	}
}

func (r *recordingRegisterer) Unregister(c prometheus.Collector) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, x := range r.cs {
		if x == c {
			r.cs = append(r.cs[:i], r.cs[i+1:]...)
			return true
		}
	}
	return false
}

// registerIn registers the recorded collectors in reg; ones already there are skipped.
func (r *recordingRegisterer) registerIn(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.cs {
		_ = reg.Register(c) // AlreadyRegisteredError: a second app of the same config
	}
}

// appMetrics are the app's Prometheus collectors. They are process-wide, so that
// counts carry over config reloads, and registered in each config's registry.
type appMetrics struct {
	queued, spooled, replayed, duplicate prometheus.Counter
	spoolBytes                           prometheus.Gauge
	enqueueDuration                      *prometheus.HistogramVec
}

var globalAppMetrics = &appMetrics{
	queued: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "authtap", Name: "events_queued_total",
		Help: "Events put in Redis as event:fanout tasks, replays from the spool included."}),
	spooled: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "authtap", Name: "events_spooled_total",
		Help: "Events written to the on-disk spool because Redis did not answer in time."}),
	replayed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "authtap", Name: "events_replayed_total",
		Help: "Spooled events handed to Redis again (queued or found already queued)."}),
	duplicate: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "authtap", Name: "events_duplicate_total",
		Help: "Events whose id was already queued (asynq task id conflict); not queued again."}),
	spoolBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "authtap", Name: "spool_bytes",
		Help: "Size of the on-disk spool."}),
	enqueueDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "authtap", Name: "enqueue_duration_seconds",
		Help:    "Time one Enqueue took, by outcome (queued, duplicate, spooled, error).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"outcome"}),
}

// newAppMetrics registers the app's collectors in reg (nil: none) and returns them.
func newAppMetrics(reg prometheus.Registerer) (*appMetrics, error) {
	m := globalAppMetrics
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.queued, m.spooled, m.replayed, m.duplicate, m.spoolBytes, m.enqueueDuration} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	return m, nil
}

// Enqueue puts ev in Redis as an event:fanout task (worker/tasks.NewFanoutTask:
// TaskID = ev.ID) within EnqueueTimeout; if Redis does not answer in time or
// errors, it appends ev to the on-disk spool (fsynced) and returns Spooled,
// and the replay loop queues it once Redis answers again. Only when both fail
// does it return an error. Cancelling ctx does not abandon the event: the
// mutation it records has happened.
//
// An enqueue that timed out may still reach Redis later; the event is then
// both queued and spooled, and its replay is refused as a Duplicate, so it is
// delivered once.
func (a *App) Enqueue(ctx context.Context, ev rules.Event) (Outcome, error) {
	if a.be == nil || a.sp == nil {
		return 0, errors.New("enqueuing event: authtap app not provisioned")
	}
	start := time.Now()
	out, err := a.enqueue(ctx, ev)
	label := "error"
	if err == nil {
		label = out.String()
	}
	a.metrics.enqueueDuration.WithLabelValues(label).Observe(time.Since(start).Seconds())
	return out, err
}

func (a *App) enqueue(ctx context.Context, ev rules.Event) (Outcome, error) {
	// The payload buffer is reused: the writer copies it before Enqueue returns.
	bp := payloadPool.Get().(*[]byte)
	task, err := tasks.AppendFanoutMessage((*bp)[:0], ev)
	if err != nil {
		payloadPool.Put(bp)
		return 0, fmt.Errorf("enqueuing event: %w", err)
	}
	defer func() {
		if cap(task.Payload) <= maxPooledPayload {
			*bp = task.Payload[:0]
			payloadPool.Put(bp)
		}
	}()
	var redisErr error
	if a.be.down.Load() {
		redisErr = errors.New("redis is unreachable; spooling until it is back")
	} else {
		redisErr = a.enqueueRedis(ctx, task, a.timeout)
		switch {
		case redisErr == nil:
			a.metrics.queued.Inc()
			return Queued, nil
		case errors.Is(redisErr, asynq.ErrTaskIDConflict):
			a.metrics.duplicate.Inc()
			return Duplicate, nil
		}
		if a.be.down.CompareAndSwap(false, true) {
			a.logger.Warn("authtap: redis did not take an event; spooling events to disk until it answers again",
				zap.String("event_id", ev.ID), zap.String("spool_dir", a.sp.Dir()), errorField(redisErr))
		}
	}
	if err := a.sp.Append(ev); err != nil {
		return 0, fmt.Errorf("enqueuing event %s: %v; and %w", ev.ID, redisErr, err)
	}
	a.metrics.spooled.Inc()
	a.metrics.spoolBytes.Set(float64(a.sp.Bytes()))
	select {
	case a.kick <- struct{}{}:
	default:
	}
	return Spooled, nil
}

// enqueueRedis enqueues task through the backend's batching writer and gives
// up after timeout (the task may still reach Redis with the round trip it
// joined; a replay of it is then refused as a duplicate). Cancelling ctx does
// not cut the wait short.
func (a *App) enqueueRedis(ctx context.Context, task enqueue.Message, timeout time.Duration) error {
	err := a.be.writer.Enqueue(context.WithoutCancel(ctx), task, timeout)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("redis did not answer within %s", timeout)
	}
	return err
}

// replayLoop empties the spool into Redis: whenever the spool holds events (or
// Redis was marked down), it pings Redis every second, backing off to every
// 10 seconds, and replays once Redis answers. It returns when ctx is done.
func (a *App) replayLoop(ctx context.Context, done chan struct{}) {
	defer close(done)
	wait := replayMinWait
	for {
		if a.sp.Empty() && !a.be.down.Load() {
			wait = replayMinWait
			// Woken by this app's spooling, or now and then in case another
			// config's app (a handler finishing a request across a reload)
			// spooled into the shared spool.
			idle := time.NewTimer(replayMaxWait)
			select {
			case <-ctx.Done():
				idle.Stop()
				return
			case <-a.kick:
				// Let a burst of spooled events gather before the first ping.
				idle.Stop()
			case <-idle.C:
				continue
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := a.replayOnce(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			if c := a.logger.Check(zap.DebugLevel, "authtap: spool replay postponed"); c != nil {
				c.Write(errorField(err), zap.Duration("next_try", min(wait*2, replayMaxWait)))
			}
			wait = min(wait*2, replayMaxWait)
			continue
		}
		wait = replayMinWait
	}
}

// replayOnce pings Redis and, when it answers, replays the whole spool.
func (a *App) replayOnce(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, max(a.timeout, time.Second))
	err := a.be.rdb.Ping(pctx).Err()
	cancel()
	if err != nil {
		return fmt.Errorf("pinging redis: %w", err)
	}
	var dups int
	n, err := a.sp.Replay(ctx, func(ctx context.Context, ev rules.Event) error {
		task, err := tasks.FanoutMessage(ev)
		if err != nil {
			a.logger.Error("authtap: dropping a spooled event that cannot be queued", zap.String("event_id", ev.ID), errorField(err))
			return nil
		}
		err = a.enqueueRedis(ctx, task, max(a.timeout, time.Second))
		switch {
		case err == nil:
			a.metrics.queued.Inc()
		case errors.Is(err, asynq.ErrTaskIDConflict):
			a.metrics.duplicate.Inc()
			dups++
		default:
			return fmt.Errorf("replaying event %s: %w", ev.ID, err)
		}
		a.metrics.replayed.Inc()
		return nil
	})
	a.metrics.spoolBytes.Set(float64(a.sp.Bytes()))
	if n > 0 {
		a.logger.Info("authtap: replayed spooled events into redis", zap.Int("events", n), zap.Int("already_queued", dups))
	}
	if err != nil {
		return err
	}
	if a.be.down.CompareAndSwap(true, false) {
		a.logger.Info("authtap: redis answers again; events go to redis directly")
	}
	return nil
}
