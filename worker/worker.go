package worker

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker/enqueue"
	"github.com/authtap/authtap/worker/tasks"
)

// Worker defaults.
const (
	// DefaultConcurrency is how many tasks one worker processes at once.
	DefaultConcurrency = 20
	// DefaultDisableAfter is how long an endpoint may fail without a success before it is disabled.
	DefaultDisableAfter = 5 * 24 * time.Hour
	// DefaultShutdownTimeout is how long Shutdown waits for deliveries in flight.
	DefaultShutdownTimeout = 20 * time.Second
	// DefaultDedupeRetention is how long a completed delivery task is kept so that a
	// repeated fan-out of the same event cannot enqueue it again.
	DefaultDedupeRetention = 24 * time.Hour
	// DefaultTaskCheckInterval is how often an idle worker polls its queues.
	DefaultTaskCheckInterval = 10 * time.Millisecond
	// DefaultDelayedTaskCheckInterval is how often retries and throttled deliveries that are due are queued again.
	DefaultDelayedTaskCheckInterval = time.Second
	// DefaultThrottleWait is the base of the fallback re-delay of a delivery
	// whose endpoint has all its slots in use (see Config.ThrottleWait).
	DefaultThrottleWait = 500 * time.Millisecond
)

// Config configures a Worker.
type Config struct {
	// Redis says how to reach Redis (see ParseRedisURL). Required.
	Redis asynq.RedisConnOpt
	// Concurrency is how many tasks (fan-outs and deliveries) this worker
	// processes at once. Default 20.
	Concurrency int
	// Endpoints are declared in the configuration: read-only through the API
	// and merged with the endpoints stored in Redis. Default none.
	Endpoints []EndpointConfig
	// Allowlist lists address ranges that endpoints may reach although they
	// are loopback, private, link-local or otherwise denied (test endpoints
	// may reach loopback without it). Default none.
	Allowlist []netip.Prefix
	// DeliveryTimeout bounds one delivery attempt, response included. Default 15s.
	DeliveryTimeout time.Duration
	// Retry is the retry schedule of deliveries and fan-outs. The zero value is
	// the Standard Webhooks schedule (0, 5s, 5m, 30m, 2h, 5h, 10h, 14h, 20h,
	// 24h) for deliveries and 1s doubling up to 30s for fan-outs, with ±10%
	// jitter; FanoutFirst and FanoutMax are bounded by CheckFanoutRetry.
	Retry RetryPolicy
	// DisableAfter disables an endpoint whose deliveries have failed without a
	// success for this long, and emits an endpoint.disabled event. Default 5 days.
	DisableAfter time.Duration
	// Retention is how long delivery attempts and events are kept. Default 14 days.
	Retention time.Duration
	// MaxAttemptsPerEndpoint caps the delivery attempts kept per endpoint. Default 10000.
	MaxAttemptsPerEndpoint int
	// MaxEvents caps the events kept (with their per-event attempts) for listing
	// and replay; the oldest go first. Default 100000.
	MaxEvents int
	// DedupeRetention is how long a completed delivery task stays in Redis so that
	// a repeated fan-out of the same event cannot deliver it twice. Default 24h.
	DedupeRetention time.Duration
	// ShutdownTimeout is how long Shutdown waits for deliveries in flight before
	// it puts them back in the queue. Default 20s.
	ShutdownTimeout time.Duration
	// TaskCheckInterval is how often an idle worker polls the queues; lower means
	// lower latency and more Redis commands while idle (about 550/s at 10ms, see
	// BENCHMARKS.md). Default 10ms.
	TaskCheckInterval time.Duration
	// DelayedTaskCheckInterval is how often due retries (and throttled
	// deliveries that no worker handed a slot) are moved back into their
	// queue. Default 1s.
	DelayedTaskCheckInterval time.Duration
	// ThrottleWait shapes the fallback re-delay of a delivery whose endpoint has
	// reached its MaxConcurrency: such a delivery waits in the endpoint's line
	// and is handed the next free slot, oldest first (see drain.go); only if
	// no worker does, it tries again by itself after ThrottleWait for each
	// MaxConcurrency deliveries before it in line, plus ThrottleWait (at most
	// 30s), plus up to 50% jitter; past the line's cap, after ThrottleWait
	// plus up to 50%. Default 500ms.
	ThrottleWait time.Duration
	// RecoveryInterval is how often the worker refreshes the run locks of the
	// tasks it runs and looks for tasks whose worker is gone (killed, stalled,
	// or whose dequeue reply Redis lost), which it puts back in their queue
	// after two such rounds (see recover.go). Default 1s; from
	// MinRecoveryInterval (10ms) to MaxRecoveryInterval (30s).
	RecoveryInterval time.Duration
	// RunLease is how long a task's run lock outlives a worker that stopped
	// refreshing it; a webhook:deliver attempt holds it for its whole timeout
	// while it sends, unless the worker's presence connection shows that the
	// worker died (its process was killed or crashed: see recover.go). Default
	// 3s; at least twice RecoveryInterval, at most MaxRunLease (2m).
	RunLease time.Duration
	// ProbeInterval is how often a worker looks at the endpoints that have
	// deliveries waiting on the retry schedule: one that is failing is probed
	// by re-sending its oldest waiting delivery early (at most one probe per
	// endpoint in flight, across all workers, and one per ProbeInterval; a
	// failed probe costs no schedule step), and one that answers 2xx again has
	// its waiting deliveries pulled forward (see drain.go). Default 2s; from
	// MinProbeInterval (100ms) to MaxProbeInterval (5m).
	ProbeInterval time.Duration
	// TLSClientConfig is used for HTTPS deliveries. Default nil: the system roots.
	TLSClientConfig *tls.Config
	// Logger receives the worker's logs (asynq's included). Default: no logs.
	Logger *zap.Logger
	// Metrics, when set, receives the worker's Prometheus collectors. Default nil: no metrics.
	Metrics prometheus.Registerer
	// Now returns the current time; tests inject a clock. Default time.Now.
	Now func() time.Time
}

// Worker processes authtap's event:fanout and webhook:deliver tasks.
type Worker struct {
	cfg    Config
	rdb    redis.UniversalClient
	srv    *asynq.Server
	client *asynq.Client
	writer *enqueue.Writer // the fan-out's enqueues
	store  *Store
	sender *Sender
	mux    *asynq.ServeMux
	log    *zap.Logger
	runs   *runs    // run locks and recovery of abandoned tasks
	drain  *drainer // pulls the backlog of recovered endpoints forward
	// stopRecovery ends the recovery loop started by Start.
	stopRecovery context.CancelFunc
	recoveryDone chan struct{}

	once    sync.Once
	started bool
	mu      sync.Mutex
	// inflight counts running handlers: after asynq gives up waiting at
	// shutdown (and requeues their tasks), they still write their attempt.
	inflight sync.WaitGroup
}

// New builds a worker from cfg; Start starts it.
func New(cfg Config) (*Worker, error) {
	if cfg.Redis == nil {
		return nil, errors.New("configuring worker: no redis connection options")
	}
	orDefault(&cfg.Concurrency, DefaultConcurrency)
	orDefault(&cfg.DeliveryTimeout, DefaultTimeout)
	orDefault(&cfg.DisableAfter, DefaultDisableAfter)
	orDefault(&cfg.Retention, DefaultRetention)
	orDefault(&cfg.DedupeRetention, DefaultDedupeRetention)
	orDefault(&cfg.ShutdownTimeout, DefaultShutdownTimeout)
	orDefault(&cfg.TaskCheckInterval, DefaultTaskCheckInterval)
	orDefault(&cfg.DelayedTaskCheckInterval, DefaultDelayedTaskCheckInterval)
	orDefault(&cfg.ThrottleWait, DefaultThrottleWait)
	if err := CheckRecovery(cfg.RecoveryInterval, cfg.RunLease); err != nil {
		return nil, fmt.Errorf("configuring worker: %w", err)
	}
	if err := CheckFanoutRetry(cfg.Retry.FanoutFirst, cfg.Retry.FanoutMax); err != nil {
		return nil, fmt.Errorf("configuring worker: %w", err)
	}
	if err := CheckProbe(cfg.ProbeInterval); err != nil {
		return nil, fmt.Errorf("configuring worker: %w", err)
	}
	orDefault(&cfg.RecoveryInterval, DefaultRecoveryInterval)
	orDefault(&cfg.RunLease, DefaultRunLease)
	orDefault(&cfg.ProbeInterval, DefaultProbeInterval)
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	sender := NewSender(SenderOptions{
		Allowlist: cfg.Allowlist, MaxRetryAfter: cfg.Retry.MaxRetryAfter, Now: cfg.Now,
		TLSClientConfig: cfg.TLSClientConfig, MaxIdleConnsPerHost: max(cfg.Concurrency, 16),
	})
	for i, c := range cfg.Endpoints {
		if err := sender.CheckURL(c.URL, c.Mode != rules.ModeTest); err != nil {
			return nil, fmt.Errorf("configuring worker: endpoints[%d] (%s): %w", i, c.ID, addressError(c.URL, c.Mode, err))
		}
	}
	// Each task may hold a connection while the store and limiter use others.
	if o, ok := cfg.Redis.(asynq.RedisClientOpt); ok && o.PoolSize == 0 {
		o.PoolSize = 2*cfg.Concurrency + 10
		cfg.Redis = o
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	rdb, err := RedisClient(cfg.Redis)
	if err != nil {
		return nil, err
	}
	store, err := NewStore(rdb, StoreOptions{
		Endpoints: cfg.Endpoints, Retention: cfg.Retention, MaxAttemptsPerEndpoint: cfg.MaxAttemptsPerEndpoint,
		MaxEvents: cfg.MaxEvents, Now: cfg.Now,
	})
	if err != nil {
		_ = rdb.Close()
		return nil, fmt.Errorf("configuring worker: %w", err)
	}
	log := cfg.Logger.Named("worker")
	w := &Worker{cfg: cfg, rdb: rdb, store: store, sender: sender, log: log, client: asynq.NewClientFromRedisClient(rdb),
		writer: enqueue.New(rdb, enqueue.Options{})}
	w.srv = asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:              cfg.Concurrency,
		Queues:                   tasks.Queues,
		RetryDelayFunc:           cfg.Retry.Delay,
		IsFailure:                IsFailure,
		ShutdownTimeout:          cfg.ShutdownTimeout,
		TaskCheckInterval:        cfg.TaskCheckInterval,
		DelayedTaskCheckInterval: cfg.DelayedTaskCheckInterval,
		Logger:                   log.Named("asynq").Sugar(),
		LogLevel:                 asynq.WarnLevel,
		ErrorHandler:             asynq.ErrorHandlerFunc(w.taskError),
	})
	w.mux = asynq.NewServeMux()
	w.mux.Use(func(h asynq.Handler) asynq.Handler {
		return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
			w.inflight.Add(1)
			defer w.inflight.Done()
			return h.ProcessTask(ctx, t)
		})
	})
	w.runs = newRuns(rdb, log, cfg.RecoveryInterval, cfg.RunLease)
	// A lock outlives its last write by the run lease, or by a send's timeout.
	w.runs.withPresence(max(cfg.RunLease, cfg.DeliveryTimeout+sendLockMargin))
	w.mux.Use(w.runs.middleware)
	w.mux.Handle(tasks.TypeFanout, &fanoutHandler{
		store: store, w: w.writer, maxRetry: cfg.Retry.MaxRetry(), dedupe: cfg.DedupeRetention, log: log,
	})
	w.drain = newDrainer(rdb, store, log, cfg.ProbeInterval, cfg.DeliveryTimeout)
	w.mux.Handle(tasks.TypeDeliver, &deliverHandler{
		store: store, sender: w.sender, q: w.client, timeout: cfg.DeliveryTimeout, disableAfter: cfg.DisableAfter,
		log: log, metrics: m, now: cfg.Now, drain: w.drain,
		limiter: &limiter{
			rdb: rdb, now: cfg.Now, lease: cfg.DeliveryTimeout + 30*time.Second, concurrencyWait: cfg.ThrottleWait,
		},
	})
	return w, nil
}

// taskError logs failed fan-outs; deliveries log their own outcome.
func (w *Worker) taskError(ctx context.Context, t *asynq.Task, err error) {
	if t.Type() != tasks.TypeFanout {
		return
	}
	id, _ := asynq.GetTaskID(ctx)
	retried, _ := asynq.GetRetryCount(ctx)
	maxRetry, known := asynq.GetMaxRetry(ctx)
	if errors.Is(err, asynq.SkipRetry) || (known && retried >= maxRetry) {
		// asynq archives it now: say so, since no retry will follow.
		w.log.Error("fan-out failed for good; the task is archived (retry it in asynqmon)",
			zap.String("event_id", id), zap.Int("retries", retried), zap.Error(err))
		return
	}
	w.log.Error("fan-out failed", zap.String("event_id", id), zap.Int("retries", retried), zap.Error(err))
}

// Start starts processing in the background; it fails when Redis cannot be reached.
func (w *Worker) Start() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started {
		return errors.New("starting worker: already started")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("starting worker: reaching redis: %w", err)
	}
	if err := w.srv.Start(w.mux); err != nil {
		return fmt.Errorf("starting worker: %w", err)
	}
	w.started = true
	if w.runs.presence != nil {
		w.runs.presence.start()
	}
	rctx, cancel := context.WithCancel(context.Background())
	w.stopRecovery, w.recoveryDone = cancel, make(chan struct{})
	go func() {
		defer close(w.recoveryDone)
		w.runs.loop(rctx, authtapQueues)
	}()
	w.drain.loop()
	w.log.Info("worker started", zap.Int("concurrency", w.cfg.Concurrency), zap.Int("configured_endpoints", len(w.cfg.Endpoints)))
	return nil
}

// Shutdown stops taking tasks, waits up to Config.ShutdownTimeout for those in
// flight (then puts the rest back in their queue) and closes the connections.
// It is safe to call more than once and without Start.
func (w *Worker) Shutdown() {
	w.once.Do(func() {
		w.mu.Lock()
		started := w.started
		w.mu.Unlock()
		if started {
			w.srv.Shutdown()
			// Handlers cut off by ShutdownTimeout see their context canceled;
			// give them a moment to record the attempt before closing Redis.
			done := make(chan struct{})
			go func() { w.inflight.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				w.log.Warn("closing with task handlers still running")
			}
			w.stopRecovery()
			<-w.recoveryDone
		}
		w.runs.presence.stop()
		w.drain.stop()
		w.sender.CloseIdleConnections()
		_ = w.writer.Close()
		_ = w.rdb.Close()
		w.log.Info("worker stopped")
	})
}

// Store returns the endpoint store and delivery log, for the management API.
func (w *Worker) Store() *Store { return w.store }

// CheckEndpointURL reports whether this worker would refuse to dial an
// endpoint URL of mode (live, the default, or test) for its literal IP
// address (see Sender.CheckURL), in words for whoever configures it; the
// management API asks it so that such an endpoint is refused when it is
// created or changed, not on every delivery.
func (w *Worker) CheckEndpointURL(raw, mode string) error {
	if err := w.sender.CheckURL(raw, mode != rules.ModeTest); err != nil {
		return addressError(raw, mode, err)
	}
	return nil
}

// Client returns the asynq client on the worker's Redis connection, for
// enqueuing replays and test deliveries.
func (w *Worker) Client() *asynq.Client { return w.client }
