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

	"github.com/authtap/authtap/admin"
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

// DefaultSpoolProbeInterval is how often the app asks a Redis it took for down
// (or whose events wait in the spool) whether it answers again: one PING on a
// fresh connection, which must be answered within the enqueue timeout.
const DefaultSpoolProbeInterval = time.Second

// Replay loop and worker start timing.
var (
	// spoolIdleCheck is how often the replay loop looks at a spool that this
	// app did not write to (another config's handler may have, across a reload).
	spoolIdleCheck = 10 * time.Second
	// workerRetryWait is how often a worker that could not reach Redis at start tries again.
	workerRetryWait = 2 * time.Second
)

// Replay: events handed to Redis per batch (one round trip, in spool order),
// and how long one batch may take.
const (
	replayBatch   = enqueue.DefaultMaxBatch
	replayTimeout = time.Second
)

// errRedisDown is why an event goes straight to the spool while the circuit is open.
var errRedisDown = errors.New("redis is unreachable; spooling until it answers again")

// backend is one Redis (configured or embedded) with its clients, and the
// circuit that says whether events go to it or straight to the spool.
type backend struct {
	opt      asynq.RedisConnOpt
	rdb      redis.UniversalClient // worker.FailFastRedisClient: every wait ends at the caller's deadline
	writer   *enqueue.Writer       // batches the enqueues of concurrent requests
	embedded bool
	mini     *miniredis.Miniredis // the embedded Redis, nil otherwise

	// down is the circuit: set when an enqueue failed; while it is set, events
	// go straight to the spool (no waiting for a Redis that does not answer)
	// until the replay loop's probe finds Redis answering again.
	down atomic.Bool
	// up is cancelled when the circuit opens, so that enqueues still waiting
	// for Redis give up at once and spool too; a new one is made when it closes.
	up atomic.Pointer[upEpoch]
	mu sync.Mutex // serializes trip and reset
	// answered is signalled when a round trip succeeds while down is set (a
	// Redis that was frozen answers the commands it had been sent), so that
	// the replay loop probes at once instead of at its next tick.
	answered chan struct{}
	// kick is signalled when an event was spooled, waking the replay loop of
	// whichever config is running.
	kick chan struct{}
	// cov counts and samples the mutations no rule matched (coverage.go),
	// into this Redis.
	cov *coverage
}

// upEpoch is one stretch of time in which the circuit is closed.
type upEpoch struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func newUpEpoch() *upEpoch {
	ctx, cancel := context.WithCancel(context.Background())
	return &upEpoch{ctx: ctx, cancel: cancel}
}

func newBackend(opt asynq.RedisConnOpt) (*backend, error) {
	rdb, err := worker.FailFastRedisClient(opt)
	if err != nil {
		return nil, err
	}
	b := &backend{opt: opt, rdb: rdb, answered: make(chan struct{}, 1), kick: make(chan struct{}, 1)}
	b.up.Store(newUpEpoch())
	b.writer = enqueue.New(rdb, enqueue.Options{OnRoundTrip: func(err error) {
		if err == nil && b.down.Load() {
			signal(b.answered)
		}
	}})
	b.cov = newCoverage(admin.NewCoverage(rdb, admin.CoverageOptions{}), b.down.Load)
	return b, nil
}

// signal wakes whoever waits on c, without blocking.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// trip opens the circuit; it reports whether it was closed.
func (b *backend) trip() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.down.CompareAndSwap(false, true) {
		return false
	}
	b.up.Load().cancel()
	return true
}

// reset closes the circuit; it reports whether it was open.
func (b *backend) reset() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.down.Load() {
		return false
	}
	// A new epoch before the circuit closes: an enqueue that sees it closed
	// never takes the cancelled one.
	b.up.Store(newUpEpoch())
	b.down.Store(false)
	return true
}

// probe asks Redis for a PING answered within timeout, on a connection of its
// own: a client whose pool saw many failed dials waits a second between
// redials (go-redis), which must not delay noticing that Redis is back.
func (b *backend) probe(ctx context.Context, timeout time.Duration) error {
	c, err := worker.FailFastRedisClient(b.opt)
	if err != nil {
		return fmt.Errorf("probing redis: %w", err)
	}
	defer c.Close()
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		return fmt.Errorf("probing redis: %w", err)
	}
	return nil
}

func (b *backend) embeddedAddr() string {
	if b.mini == nil {
		return ""
	}
	return b.mini.Addr()
}

// Destruct closes the connection (and stops the embedded Redis).
func (b *backend) Destruct() error {
	b.cov.close()
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
// A failed enqueue opens the backend's circuit: enqueues still waiting for
// Redis then spool at once, and later ones spool without trying Redis, until
// the replay loop's probe finds Redis answering (see replayLoop).
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
		redisErr = errRedisDown
	} else {
		redisErr = a.enqueueRedis(a.be.up.Load().ctx, task, a.timeout)
		switch {
		case redisErr == nil:
			a.metrics.queued.Inc()
			return Queued, nil
		case errors.Is(redisErr, asynq.ErrTaskIDConflict):
			a.metrics.duplicate.Inc()
			return Duplicate, nil
		}
		if a.be.trip() {
			a.logger.Warn("authtap: redis did not take an event; spooling events to disk until it answers again",
				zap.String("event_id", ev.ID), zap.String("spool_dir", a.sp.Dir()), errorField(redisErr))
		}
	}
	if err := a.sp.Append(ev); err != nil {
		return 0, fmt.Errorf("enqueuing event %s: %v; and %w", ev.ID, redisErr, err)
	}
	a.metrics.spooled.Inc()
	a.metrics.spoolBytes.Set(float64(a.sp.Bytes()))
	signal(a.kick)
	signal(a.be.kick)
	return Spooled, nil
}

// enqueueRedis enqueues task through the backend's batching writer and gives
// up after timeout, or when ctx ends (an enqueue of the live path passes the
// circuit's epoch, which ends when another enqueue found Redis down). The
// task may still reach Redis with the round trip it joined; a replay of it is
// then refused as a duplicate.
func (a *App) enqueueRedis(ctx context.Context, task enqueue.Message, timeout time.Duration) error {
	err := a.be.writer.Enqueue(ctx, task, timeout)
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("redis did not answer within %s", timeout)
	case errors.Is(err, context.Canceled):
		return errRedisDown
	}
	return err
}

// replayLoop watches the circuit and the spool. While Redis is taken for down
// or the spool holds events, it probes Redis every probe interval — at once
// when a round trip to Redis succeeds meanwhile — and as soon as Redis
// answers, closes the circuit (new events go to Redis again) and replays the
// spool. Otherwise it sleeps until an event is spooled. It returns when ctx is done.
func (a *App) replayLoop(ctx context.Context, done chan struct{}) {
	defer close(done)
	for {
		if a.sp.Empty() && !a.be.down.Load() {
			// Woken by spooling, or now and then in case another config's
			// app spooled into a spool this one shares.
			idle := time.NewTimer(spoolIdleCheck)
			select {
			case <-ctx.Done():
				idle.Stop()
				return
			case <-a.kick:
			case <-a.be.kick:
			case <-idle.C:
				continue
			}
			idle.Stop()
		}
		begin := time.Now()
		err := a.replayOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			continue
		}
		if c := a.logger.Check(zap.DebugLevel, "authtap: spool replay postponed"); c != nil {
			c.Write(errorField(err), zap.Duration("next_try", a.probeInterval))
		}
		t := time.NewTimer(a.probeInterval - time.Since(begin))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		case <-a.be.answered:
			t.Stop()
		}
	}
}

// replayOnce probes Redis and, when it answers, closes the circuit and
// replays the whole spool. A replay that Redis does not take opens the
// circuit again.
func (a *App) replayOnce(ctx context.Context) error {
	if err := a.be.probe(ctx, a.timeout); err != nil {
		if ctx.Err() == nil && a.be.trip() { // events wait in the spool and Redis is gone
			a.logger.Warn("authtap: redis does not answer; spooling events to disk until it answers again",
				zap.String("spool_dir", a.sp.Dir()), errorField(err))
		}
		return err
	}
	if a.be.reset() {
		a.logger.Info("authtap: redis answers again; events go to redis directly")
	}
	var dups int
	n, err := a.sp.ReplayBatch(ctx, replayBatch, func(ctx context.Context, evs []rules.Event) (int, error) {
		msgs := make([]enqueue.Message, 0, len(evs))
		at := make([]int, 0, len(evs)) // msgs[i] is evs[at[i]]
		for i, ev := range evs {
			task, err := tasks.FanoutMessage(ev)
			if err != nil {
				a.logger.Error("authtap: dropping a spooled event that cannot be queued", zap.String("event_id", ev.ID), errorField(err))
				continue
			}
			msgs = append(msgs, task)
			at = append(at, i)
		}
		for i, err := range a.be.writer.EnqueueBatch(ctx, msgs, max(a.timeout, replayTimeout)) {
			switch {
			case err == nil:
				a.metrics.queued.Inc()
			case errors.Is(err, asynq.ErrTaskIDConflict):
				a.metrics.duplicate.Inc()
				dups++
			default:
				// The ones before it are in Redis; this one and the rest
				// come again with the segment on the next replay.
				return at[i], fmt.Errorf("replaying event %s: %w", msgs[i].ID, err)
			}
			a.metrics.replayed.Inc()
		}
		return len(evs), nil
	})
	a.metrics.spoolBytes.Set(float64(a.sp.Bytes()))
	if n > 0 {
		a.logger.Info("authtap: replayed spooled events into redis", zap.Int("events", n), zap.Int("already_queued", dups))
	}
	if err != nil {
		if ctx.Err() == nil && a.be.trip() {
			a.logger.Warn("authtap: redis did not take a replayed event; spooling events to disk until it answers again",
				zap.String("spool_dir", a.sp.Dir()), errorField(err))
		}
		return err
	}
	return nil
}
