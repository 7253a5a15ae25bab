package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/authtap/authtap/caddymodule/spool"
	"github.com/authtap/authtap/worker"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("authtap", parseGlobalOption)
}

// App defaults.
const (
	// DefaultEnqueueTimeout bounds one enqueue before the event is spooled instead.
	DefaultEnqueueTimeout = 250 * time.Millisecond
	// DefaultSpoolMaxSize bounds the on-disk spool.
	DefaultSpoolMaxSize = spool.DefaultMaxBytes
	// MinSpoolProbeInterval is the shortest spool_probe_interval accepted: a
	// probe dials Redis afresh, and a Redis that is down should not be dialled
	// at a rate a typo chose.
	MinSpoolProbeInterval = 50 * time.Millisecond
)

// App is the Caddy app "authtap": it owns the connection to Redis (shared by
// every authtap handler), the on-disk spool that keeps events while Redis does
// not answer, and optionally a worker that delivers webhooks from inside this
// Caddy process. Its connections, spool and worker are shared across config
// reloads, so that a reload never drops an event.
//
// The app is provisioned automatically when an authtap handler is configured
// without a global authtap option; it then uses an embedded in-memory Redis
// and an in-process worker, which is meant for trying authtap out only.
type App struct {
	// Redis is the Redis URL (redis://, rediss://, redis-socket://, redis-sentinel://, redis-cluster://).
	// Placeholders such as {env.REDIS_URL} are replaced at provision time.
	// Empty: an embedded in-memory Redis for trying authtap out only (logged loudly at WARN):
	// its events are lost when Caddy stops.
	Redis string `json:"redis,omitempty"`
	// Worker runs deliveries inside this Caddy process. Default: on with the
	// embedded Redis, off otherwise (run `authtap worker` next to Redis instead).
	Worker *WorkerConfig `json:"worker,omitempty"`
	// Endpoints declared in config (GitOps), read-only through the API; passed to
	// the in-process worker. Placeholders in url, secret and bearer_token (e.g.
	// {env.WEBHOOK_SECRET}) are replaced at provision time. Default none.
	Endpoints []worker.EndpointConfig `json:"endpoints,omitempty"`
	// SpoolDir is where events go when Redis does not answer in time. Default: caddy.AppDataDir()/authtap/spool.
	SpoolDir string `json:"spool_dir,omitempty"`
	// SpoolMaxSize bounds the spool in bytes; when it is full, events that Redis
	// does not take are lost (and counted and logged). Default 1 GiB.
	SpoolMaxSize int64 `json:"spool_max_size,omitempty"`
	// EnqueueTimeout bounds one enqueue before the event is spooled instead. Default 250ms.
	EnqueueTimeout caddy.Duration `json:"enqueue_timeout,omitempty"`
	// SpoolProbeInterval is how often, while Redis is taken for down or events
	// wait in the spool, a PING on a fresh connection asks Redis whether it
	// answers (within EnqueueTimeout) again; once it does, new events go to
	// Redis and the spool is replayed. At least 50ms. Default 1s.
	SpoolProbeInterval caddy.Duration `json:"spool_probe_interval,omitempty"`

	ctx           caddy.Context
	logger        *zap.Logger
	timeout       time.Duration
	probeInterval time.Duration
	metrics       *appMetrics

	backendKey string
	be         *backend
	spoolKey   string
	sp         *spool.Spool
	workerKey  string
	pw         *pooledWorker

	// The replay loop. Caddy calls Start, Stop and Cleanup one at a time.
	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// WorkerConfig configures the in-process worker.
type WorkerConfig struct {
	// Enabled turns the in-process worker on or off. Default true when the
	// worker object is present (and, without it, true only with the embedded Redis).
	Enabled *bool `json:"enabled,omitempty"`
	// Concurrency is how many tasks (fan-outs and deliveries) the worker processes at once. Default 20.
	Concurrency int `json:"concurrency,omitempty"`
	// DeliveryTimeout bounds one delivery attempt, response included. Default 15s.
	DeliveryTimeout caddy.Duration `json:"delivery_timeout,omitempty"`
	// ShutdownTimeout is how long stopping the worker waits for deliveries in
	// flight before it puts them back in the queue. Default 20s.
	ShutdownTimeout caddy.Duration `json:"shutdown_timeout,omitempty"`
	// Allowlist lists address ranges (CIDR, e.g. "10.0.0.0/8") that endpoints
	// (live and test) may reach although they are loopback, private or
	// link-local; test endpoints may reach loopback without it. Default none.
	Allowlist []string `json:"allowlist,omitempty"`
	// RecoveryInterval is how often the worker refreshes the run locks of its
	// tasks and looks for tasks whose worker is gone, which it puts back in
	// their queue after two such rounds. Default 1s; 10ms to 30s.
	RecoveryInterval caddy.Duration `json:"recovery_interval,omitempty"`
	// RunLease is how long a task's run lock outlives a worker that stopped
	// refreshing it (a delivery whose worker died is recovered about this
	// plus two RecoveryIntervals after); an attempt that is sending holds it
	// for its whole timeout.
	// Default 3s; at least twice RecoveryInterval, at most 2m.
	RunLease caddy.Duration `json:"run_lease,omitempty"`
	// FanoutRetryFirst is the delay before the first retry of a failed
	// fan-out; each further retry waits twice as long, up to FanoutRetryMax.
	// Default 1s; at most FanoutRetryMax.
	FanoutRetryFirst caddy.Duration `json:"fanout_retry_first,omitempty"`
	// FanoutRetryMax caps the delay between fan-out retries. Default 30s; at
	// most 1h.
	FanoutRetryMax caddy.Duration `json:"fanout_retry_max,omitempty"`
	// ProbeInterval is how often the worker looks at the endpoints that have
	// deliveries waiting on the retry schedule: a failing one is probed by
	// re-sending its oldest waiting delivery early (one probe per endpoint in
	// flight across all workers; a failed probe costs no schedule step), and
	// one that answers 2xx again has its waiting deliveries pulled forward.
	// Default 2s; 100ms to 5m.
	ProbeInterval caddy.Duration `json:"probe_interval,omitempty"`
}

// check reports whether the recovery, fan-out retry and probe options are
// within the worker's bounds.
func (wc *WorkerConfig) check() error {
	if err := worker.CheckRecovery(time.Duration(wc.RecoveryInterval), time.Duration(wc.RunLease)); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	if err := worker.CheckFanoutRetry(time.Duration(wc.FanoutRetryFirst), time.Duration(wc.FanoutRetryMax)); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	if err := worker.CheckProbe(time.Duration(wc.ProbeInterval)); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	return nil
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "authtap", New: func() caddy.Module { return new(App) }}
}

// Provision sets defaults and acquires the shared Redis connection, spool and
// (when on) worker. With no Redis URL it starts an embedded in-memory Redis.
func (a *App) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	if a.logger == nil { // tests may set one
		a.logger = ctx.Logger()
	}
	a.kick = make(chan struct{}, 1)
	a.timeout = time.Duration(a.EnqueueTimeout)
	if a.timeout <= 0 {
		a.timeout = DefaultEnqueueTimeout
	}
	a.probeInterval = time.Duration(a.SpoolProbeInterval)
	if a.probeInterval <= 0 {
		a.probeInterval = DefaultSpoolProbeInterval
	}
	m, err := newAppMetrics(ctx.GetMetricsRegistry())
	if err != nil {
		return fmt.Errorf("registering authtap metrics: %w", err)
	}
	a.metrics = m

	repl := caddy.NewReplacer()
	redisURL := repl.ReplaceKnown(a.Redis, "")
	if err := a.acquireBackend(redisURL); err != nil {
		return err
	}

	dir := repl.ReplaceKnown(a.SpoolDir, "")
	if dir == "" {
		dir = filepath.Join(caddy.AppDataDir(), "authtap", "spool")
	}
	if err := a.acquireSpool(dir); err != nil {
		return err
	}

	enabled := a.be.embedded
	if a.Worker != nil {
		enabled = a.Worker.Enabled == nil || *a.Worker.Enabled
	}
	if !enabled {
		if len(a.Endpoints) > 0 {
			a.logger.Warn("authtap: endpoints are declared but the in-process worker is off, and only that worker uses them; add a worker block, or declare them to the worker that delivers",
				zap.Int("endpoints", len(a.Endpoints)))
		}
		return nil
	}
	return a.acquireWorker(redisURL, repl)
}

// acquireBackend takes the shared connection to redisURL (or the embedded Redis).
func (a *App) acquireBackend(redisURL string) error {
	key := "redis:" + redisURL
	v, loaded, err := backends.LoadOrNew(key, func() (caddy.Destructor, error) {
		if redisURL == "" {
			return newEmbeddedBackend()
		}
		opt, err := worker.ParseRedisURL(redisURL)
		if err != nil {
			return nil, err
		}
		return newBackend(opt)
	})
	if err != nil {
		return fmt.Errorf("connecting to redis: %w", err)
	}
	a.backendKey, a.be = key, v.(*backend)
	switch {
	case a.be.embedded: // on every config load, so that it is hard to miss
		a.logger.Warn("authtap: no redis configured: using an embedded in-memory Redis; events are lost on restart — for trying authtap out only",
			zap.String("embedded_addr", a.be.embeddedAddr()))
	case !loaded:
		a.logger.Info("authtap: using redis", zap.String("redis", redactURL(redisURL)))
		// Once per Redis, not per reload; in the background, since Provision
		// must be fast and Redis may be down (bounded by worker.RedisCheckTimeout).
		go worker.CheckRedisConfig(a.ctx, a.be.opt, a.logger)
	}
	return nil
}

// acquireSpool takes the shared spool in dir.
func (a *App) acquireSpool(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("opening spool %s: %w", dir, err)
	}
	maxBytes := a.SpoolMaxSize
	if maxBytes <= 0 {
		maxBytes = DefaultSpoolMaxSize
	}
	v, _, err := spools.LoadOrNew(abs, func() (caddy.Destructor, error) {
		sp, err := spool.Open(abs, spool.Options{MaxBytes: maxBytes, Logger: a.logger.Named("spool")})
		if err != nil {
			return nil, err
		}
		return spoolDestructor{sp}, nil
	})
	if err != nil {
		return fmt.Errorf("opening spool: %w", err)
	}
	a.spoolKey, a.sp = abs, v.(spoolDestructor).Spool
	a.metrics.spoolBytes.Set(float64(a.sp.Bytes()))
	return nil
}

// acquireWorker takes the shared in-process worker for this configuration.
func (a *App) acquireWorker(redisURL string, repl *caddy.Replacer) error {
	wc := WorkerConfig{}
	if a.Worker != nil {
		wc = *a.Worker
	}
	cfg := worker.Config{
		Redis:            a.be.opt,
		Concurrency:      wc.Concurrency,
		DeliveryTimeout:  time.Duration(wc.DeliveryTimeout),
		ShutdownTimeout:  time.Duration(wc.ShutdownTimeout),
		RecoveryInterval: time.Duration(wc.RecoveryInterval),
		RunLease:         time.Duration(wc.RunLease),
		ProbeInterval:    time.Duration(wc.ProbeInterval),
		Retry: worker.RetryPolicy{
			FanoutFirst: time.Duration(wc.FanoutRetryFirst),
			FanoutMax:   time.Duration(wc.FanoutRetryMax),
		},
	}
	for _, s := range wc.Allowlist {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("configuring worker: allowlist entry %q: %w", s, err)
		}
		cfg.Allowlist = append(cfg.Allowlist, p)
	}
	cfg.Endpoints = a.resolvedEndpoints(repl)
	// The key covers everything that shapes the worker, so that a reload with a
	// changed worker or endpoint list starts a new worker (the old one stops when
	// the old config is cleaned up). It is a hash: the endpoints carry secrets.
	b, err := json.Marshal(struct {
		Redis     string
		Worker    WorkerConfig
		Endpoints []worker.EndpointConfig
	}{redisURL, wc, cfg.Endpoints})
	if err != nil {
		return fmt.Errorf("configuring worker: %w", err)
	}
	sum := sha256.Sum256(b)
	key := "worker:" + hex.EncodeToString(sum[:])
	v, _, err := workers.LoadOrNew(key, func() (caddy.Destructor, error) {
		rec := &recordingRegisterer{}
		cfg.Logger = a.logger
		cfg.Metrics = rec
		w, err := worker.New(cfg)
		if err != nil {
			return nil, err
		}
		return &pooledWorker{w: w, collectors: rec, log: a.logger, stop: make(chan struct{})}, nil
	})
	if err != nil {
		return fmt.Errorf("configuring worker: %w", err)
	}
	a.workerKey, a.pw = key, v.(*pooledWorker)
	a.pw.collectors.registerIn(a.ctx.GetMetricsRegistry())
	return nil
}

// Validate checks the configuration.
func (a *App) Validate() error {
	if a.EnqueueTimeout < 0 {
		return errors.New("enqueue_timeout must not be negative")
	}
	if a.SpoolProbeInterval != 0 && time.Duration(a.SpoolProbeInterval) < MinSpoolProbeInterval {
		return fmt.Errorf("spool_probe_interval must be at least %s", MinSpoolProbeInterval)
	}
	if a.SpoolMaxSize < 0 {
		return errors.New("spool_max_size must not be negative")
	}
	if a.Worker != nil && a.Worker.Concurrency < 0 {
		return errors.New("worker concurrency must not be negative")
	}
	if a.Worker != nil {
		if err := a.Worker.check(); err != nil {
			return err
		}
	}
	return nil
}

// Start starts the in-process worker (when on) and the loop that replays the
// spool into Redis whenever the spool holds events and Redis answers.
func (a *App) Start() error {
	// go-redis's own messages (failed dials while Redis is down) join Caddy's
	// logs, sampled, instead of going to stderr unstructured. Set on Start,
	// which only a config that loaded reaches, so a failed reload leaves the
	// running config's logger in place.
	worker.SetRedisLogger(a.logger)
	a.be.cov.logger.Store(a.logger)
	if a.pw != nil {
		a.pw.start()
	}
	if a.cancel != nil {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan struct{})
	go a.replayLoop(ctx, a.done)
	return nil
}

// Stop stops the replay loop. The shared connections, spool and worker stay up
// for the next configuration; Cleanup releases them.
func (a *App) Stop() error {
	cancel, done := a.cancel, a.done
	a.cancel, a.done = nil, nil
	if cancel != nil {
		cancel()
		<-done
	}
	return nil
}

// Cleanup releases this configuration's hold on the shared worker, spool and
// Redis connection; the last configuration to let go closes them.
func (a *App) Cleanup() error {
	_ = a.Stop()
	var errs []error
	if a.workerKey != "" {
		if _, err := workers.Delete(a.workerKey); err != nil {
			errs = append(errs, fmt.Errorf("stopping worker: %w", err))
		}
		a.workerKey, a.pw = "", nil
	}
	if a.spoolKey != "" {
		if _, err := spools.Delete(a.spoolKey); err != nil {
			errs = append(errs, fmt.Errorf("closing spool: %w", err))
		}
		a.spoolKey = ""
	}
	if a.backendKey != "" {
		if _, err := backends.Delete(a.backendKey); err != nil {
			errs = append(errs, fmt.Errorf("closing redis connection: %w", err))
		}
		a.backendKey = ""
	}
	return errors.Join(errs...)
}

// InProcessWorker returns the in-process worker, nil when it is off. (It is not
// called Worker because that is the name of the config field.)
func (a *App) InProcessWorker() *worker.Worker {
	if a.pw == nil {
		return nil
	}
	return a.pw.w
}

// RedisOpt returns the options of the Redis connection (the embedded Redis's
// when no URL is configured); nil before Provision.
func (a *App) RedisOpt() asynq.RedisConnOpt {
	if a.be == nil {
		return nil
	}
	return a.be.opt
}

// RedisClient returns the shared go-redis client; nil before Provision. Do not close it.
func (a *App) RedisClient() redis.UniversalClient {
	if a.be == nil {
		return nil
	}
	return a.be.rdb
}

// coverage returns the coverage of the app's Redis (shared by every handler
// on it, across reloads); nil before Provision.
func (a *App) coverage() *coverage {
	if a.be == nil {
		return nil
	}
	return a.be.cov
}

// redactURL renders a Redis URL without its password, for logs.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// Outcome says what Enqueue did with an event.
type Outcome int

// Outcomes of Enqueue.
const (
	// Queued means the event is in Redis as an event:fanout task.
	Queued Outcome = iota + 1
	// Duplicate means a task with the same event id is already queued (asynq.ErrTaskIDConflict).
	Duplicate
	// Spooled means Redis did not answer in time or failed; the event is in the on-disk spool.
	Spooled
)

// String returns "queued", "duplicate" or "spooled".
func (o Outcome) String() string {
	switch o {
	case Queued:
		return "queued"
	case Duplicate:
		return "duplicate"
	case Spooled:
		return "spooled"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// authtapApp returns the app "authtap" of ctx's config, provisioning it (with
// its defaults: the embedded Redis) when the config has no global authtap block.
func authtapApp(ctx caddy.Context) (*App, error) {
	a, err := ctx.App("authtap")
	if err != nil {
		return nil, fmt.Errorf("getting authtap app: %w", err)
	}
	app, ok := a.(*App)
	if !ok {
		return nil, fmt.Errorf("getting authtap app: unexpected module type %T", a)
	}
	return app, nil
}

// resolvedEndpoints returns the configured endpoints with their {env.X}
// placeholders (url, secret, bearer token) filled in.
func (a *App) resolvedEndpoints(repl *caddy.Replacer) []worker.EndpointConfig {
	eps := make([]worker.EndpointConfig, 0, len(a.Endpoints))
	for _, ep := range a.Endpoints {
		ep.URL = repl.ReplaceKnown(ep.URL, "")
		ep.Secret = repl.ReplaceKnown(ep.Secret, "")
		ep.BearerToken = repl.ReplaceKnown(ep.BearerToken, "")
		eps = append(eps, ep)
	}
	return eps
}

// Interface guards.
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
