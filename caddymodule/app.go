package caddymodule

import (
	"context"
	"errors"

	"github.com/hibiken/asynq"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("authtap", parseGlobalOption)
}

// App is the Caddy app "authtap": it owns the connection to Redis, the on-disk
// spool that catches events while Redis does not answer, and optionally a
// worker that delivers webhooks from inside this Caddy process.
type App struct {
	// Redis is the Redis URL (redis://, rediss://, redis-socket://, redis-sentinel://, redis-cluster://).
	// Empty: an embedded in-memory Redis for trying authtap out only (logged loudly at WARN).
	Redis string `json:"redis,omitempty"`
	// Worker runs deliveries inside this Caddy process. Default: on with the embedded Redis, off otherwise.
	Worker *WorkerConfig `json:"worker,omitempty"`
	// Endpoints declared in config (GitOps), read-only through the API; passed to the worker.
	Endpoints []worker.EndpointConfig `json:"endpoints,omitempty"`
	// SpoolDir is where events go when Redis does not answer in time. Default: caddy.AppDataDir()/authtap/spool.
	SpoolDir string `json:"spool_dir,omitempty"`
	// EnqueueTimeout bounds one enqueue before the event is spooled instead. Default 250ms.
	EnqueueTimeout caddy.Duration `json:"enqueue_timeout,omitempty"`
}

// WorkerConfig configures the in-process worker.
type WorkerConfig struct {
	// Enabled turns the in-process worker on or off. Default: on with the embedded Redis, off otherwise.
	Enabled *bool `json:"enabled,omitempty"`
	// Concurrency is how many tasks the worker processes at once. Default 20.
	Concurrency int `json:"concurrency,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "authtap", New: func() caddy.Module { return new(App) }}
}

// Provision sets up the app.
func (a *App) Provision(ctx caddy.Context) error { return nil }

// Start starts the app.
func (a *App) Start() error { return nil }

// Stop stops the app.
func (a *App) Stop() error { return nil }

// Outcome says what Enqueue did with an event.
type Outcome int

// Outcomes of Enqueue.
const (
	// Queued: the event is in Redis as an event:fanout task.
	Queued Outcome = iota + 1
	// Duplicate: a task with the same event id is already queued (asynq.ErrTaskIDConflict).
	Duplicate
	// Spooled: Redis did not answer in time; the event is in the on-disk spool.
	Spooled
)

// Enqueue puts ev in Redis as an event:fanout task.
func (a *App) Enqueue(ctx context.Context, ev rules.Event) (Outcome, error) {
	return 0, errors.New("enqueuing event: authtap app not provisioned")
}

// InProcessWorker returns the in-process worker, nil when it is off. (It is not
// called Worker because that is the config field.)
func (a *App) InProcessWorker() *worker.Worker { return nil }

// RedisOpt returns the Redis connection options.
func (a *App) RedisOpt() asynq.RedisConnOpt { return nil }
