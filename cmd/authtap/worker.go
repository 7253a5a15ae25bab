package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"gopkg.in/yaml.v3"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

func init() {
	register("worker", command{
		usage:   "worker --redis URL [--concurrency N] [--endpoints FILE] [--admin ADDR] [--recovery-interval D] [--run-lease D] [--probe-interval D]",
		summary: "deliver queued events to their endpoints until SIGINT or SIGTERM",
		run:     runWorker,
	})
}

// workerContext returns the context that ends the worker; tests replace it.
var workerContext = func() (context.Context, context.CancelFunc) { return signalContext(context.Background()) }

// signalContext ends on SIGINT or SIGTERM.
func signalContext(parent context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(parent, os.Interrupt, syscall.SIGTERM)
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func runWorker(args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, `usage: authtap worker --redis URL [flags]

Processes authtap's event:fanout and webhook:deliver tasks: signs and delivers
each event to its subscribed endpoints, with retries. Stops gracefully on
SIGINT or SIGTERM, waiting for deliveries in flight.

Flags:`)
		fs.PrintDefaults()
	}
	// Not the flag's default: -h would print a password held in $AUTHTAP_REDIS.
	redisURL := fs.String("redis", "",
		"Redis URL: redis://, rediss://, redis-socket://, redis-sentinel:// or redis-cluster:// (default $AUTHTAP_REDIS)")
	concurrency := fs.Int("concurrency", worker.DefaultConcurrency, "tasks processed at once")
	endpointsFile := fs.String("endpoints", "",
		"YAML or JSON file of read-only endpoints (a list, or {endpoints: [...]}); values \"{env.NAME}\" are read from the environment")
	timeout := fs.Duration("timeout", worker.DefaultTimeout, "timeout of one delivery attempt")
	shutdown := fs.Duration("shutdown-timeout", worker.DefaultShutdownTimeout, "how long to wait for deliveries in flight when stopping")
	recoveryInterval := fs.Duration("recovery-interval", worker.DefaultRecoveryInterval,
		fmt.Sprintf("how often the worker refreshes its run locks and looks for tasks whose worker is gone (%s to %s)",
			worker.MinRecoveryInterval, worker.MaxRecoveryInterval))
	runLease := fs.Duration("run-lease", worker.DefaultRunLease,
		fmt.Sprintf("how long a task's run lock outlives a worker that stopped: a dead worker's task is back about this long after (at least twice --recovery-interval, at most %s)",
			worker.MaxRunLease))
	fanoutFirst := fs.Duration("fanout-retry-first", worker.DefaultFanoutFirstRetry,
		"delay before the first retry of a failed fan-out; each further retry waits twice as long, up to --fanout-retry-max")
	fanoutMax := fs.Duration("fanout-retry-max", worker.DefaultFanoutMaxRetry,
		fmt.Sprintf("cap of the delay between fan-out retries (at most %s)", worker.MaxFanoutRetry))
	probeInterval := fs.Duration("probe-interval", worker.DefaultProbeInterval,
		fmt.Sprintf("how often the worker probes failing endpoints that have deliveries waiting (re-sending the oldest early) and pulls recovered ones' deliveries forward (%s to %s)",
			worker.MinProbeInterval, worker.MaxProbeInterval))
	debug := fs.Bool("debug", false, "log every fan-out and delivery")
	adminAddr := fs.String("admin", "",
		"serve the management API (and asynqmon at /monitor/) on this address; a bare port (8081 or :8081) means 127.0.0.1:8081, "+
			"any other host (0.0.0.0:8081) is used as given and logged as a warning unless it is loopback; needs --admin-token")
	// Not the flag's default either: -h would print the token held in $AUTHTAP_ADMIN_TOKEN.
	adminToken := fs.String("admin-token", "",
		"bearer token the management API requires (default $AUTHTAP_ADMIN_TOKEN); browsers use it as the Basic auth password")
	var rulesFiles listFlag
	portalURL := fs.String("portal-url", "",
		"with --admin: the portal's URL as customers reach it, for the links POST /portal-links issues (default http://<admin host>/portal/)")
	var frameAncestors listFlag
	fs.Var(&frameAncestors, "portal-frame-ancestors", "with --admin: an origin that may embed the portal page in a frame (CSP frame-ancestors, e.g. https://app.example.com); repeatable; default none")
	portalTest := fs.Bool("portal-test-endpoints", false,
		"with --admin: portal users may make test endpoints, which may be plain http and reach this host's loopback (for demos and staging)")
	fs.Var(&rulesFiles, "rules", "rule file or glob whose event catalog GET /event-types serves; repeatable")
	var allow listFlag
	fs.Var(&allow, "allow", "address range (CIDR) endpoints may reach although it is private or local (test endpoints may reach loopback without it); repeatable")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "authtap worker: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *redisURL == "" {
		*redisURL = os.Getenv("AUTHTAP_REDIS")
	}
	if *redisURL == "" {
		fmt.Fprintln(stderr, "authtap worker: --redis URL (or AUTHTAP_REDIS) is required")
		return 2
	}
	opt, err := worker.ParseRedisURL(*redisURL)
	if err != nil {
		fmt.Fprintf(stderr, "authtap worker: %v\n", err)
		return 2
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{{"recovery-interval", *recoveryInterval}, {"run-lease", *runLease}, {"fanout-retry-first", *fanoutFirst}, {"fanout-retry-max", *fanoutMax}, {"probe-interval", *probeInterval}} {
		if f.v <= 0 {
			fmt.Fprintf(stderr, "authtap worker: --%s %s: want a positive duration\n", f.name, f.v)
			return 2
		}
	}
	if err := worker.CheckRecovery(*recoveryInterval, *runLease); err != nil {
		fmt.Fprintf(stderr, "authtap worker: --recovery-interval, --run-lease: %v\n", err)
		return 2
	}
	if err := worker.CheckFanoutRetry(*fanoutFirst, *fanoutMax); err != nil {
		fmt.Fprintf(stderr, "authtap worker: --fanout-retry-first, --fanout-retry-max: %v\n", err)
		return 2
	}
	if err := worker.CheckProbe(*probeInterval); err != nil {
		fmt.Fprintf(stderr, "authtap worker: --probe-interval: %v\n", err)
		return 2
	}
	cfg := worker.Config{
		Redis: opt, Concurrency: *concurrency, DeliveryTimeout: *timeout, ShutdownTimeout: *shutdown,
		RecoveryInterval: *recoveryInterval, RunLease: *runLease, ProbeInterval: *probeInterval,
		Retry: worker.RetryPolicy{FanoutFirst: *fanoutFirst, FanoutMax: *fanoutMax},
	}
	for _, a := range allow {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			fmt.Fprintf(stderr, "authtap worker: --allow %q: %v\n", a, err)
			return 2
		}
		cfg.Allowlist = append(cfg.Allowlist, p)
	}
	if *endpointsFile != "" {
		if cfg.Endpoints, err = loadEndpoints(*endpointsFile); err != nil {
			fmt.Fprintf(stderr, "authtap worker: %v\n", err)
			return 1
		}
	}
	level := zapcore.InfoLevel
	if *debug {
		level = zapcore.DebugLevel
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.Logger = zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(stderr), level))
	worker.SetRedisLogger(cfg.Logger)

	if !flagSet(fs, "admin-token") {
		*adminToken = os.Getenv("AUTHTAP_ADMIN_TOKEN")
	}
	if *adminAddr != "" && strings.TrimSpace(*adminToken) == "" {
		fmt.Fprintln(stderr, "authtap worker: --admin needs --admin-token (or AUTHTAP_ADMIN_TOKEN): the management API is never served without authentication")
		return 2
	}
	if *adminAddr != "" {
		if _, err := adminListenAddr(*adminAddr); err != nil {
			fmt.Fprintf(stderr, "authtap worker: %v\n", err)
			return 2
		}
	}
	var eventTypes func() []rules.EventType
	if len(rulesFiles) > 0 {
		set, err := rules.Load(rulesFiles...)
		if err != nil {
			fmt.Fprintf(stderr, "authtap worker: %v\n", err)
			return 1
		}
		eventTypes = set.EventTypes
	}

	w, err := worker.New(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "authtap worker: %v\n", err)
		return 1
	}
	ctx, stop := workerContext()
	defer stop()
	if err := w.Start(); err != nil {
		w.Shutdown()
		fmt.Fprintf(stderr, "authtap worker: %v\n", err)
		return 1
	}
	worker.CheckRedisConfig(ctx, opt, cfg.Logger) // warns when Redis would lose or evict tasks
	var admin *adminServer
	if *adminAddr != "" {
		admin, err = startAdmin(*adminAddr, *adminToken, opt, w, cfg, eventTypes,
			portalOptions{url: *portalURL, frameAncestors: frameAncestors, testEndpoints: *portalTest})
		if err != nil {
			w.Shutdown()
			fmt.Fprintf(stderr, "authtap worker: %v\n", err)
			return 1
		}
		cfg.Logger.Info("management API listening", zap.String("addr", admin.addr), zap.String("monitor", "http://"+admin.addr+"/monitor/"),
			zap.String("portal", "http://"+admin.addr+"/portal/"))
	}
	<-ctx.Done()
	cfg.Logger.Info("stopping: waiting for deliveries in flight", zap.Duration("up_to", *shutdown))
	begin := time.Now()
	if admin != nil {
		admin.stop()
	}
	w.Shutdown()
	cfg.Logger.Info("stopped", zap.Duration("took", time.Since(begin)))
	return 0
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// loadEndpoints reads endpoint declarations from a YAML or JSON file: a list,
// or an object with an "endpoints" list. A string value of the form
// "{env.NAME}" is replaced by the environment variable NAME, so that secrets
// need not be written in the file.
func loadEndpoints(path string) ([]worker.EndpointConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading endpoints: %w", err)
	}
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("parsing endpoints file %s: %w", path, err)
	}
	if m, ok := doc.(map[string]any); ok {
		doc = m["endpoints"]
	}
	if doc == nil {
		return nil, fmt.Errorf("endpoints file %s: want a list of endpoints or {endpoints: [...]}", path)
	}
	doc, err = expandEnv(doc)
	if err != nil {
		return nil, fmt.Errorf("endpoints file %s: %w", path, err)
	}
	j, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("endpoints file %s: %w", path, err)
	}
	dec := json.NewDecoder(strings.NewReader(string(j)))
	dec.DisallowUnknownFields()
	var eps []worker.EndpointConfig
	if err := dec.Decode(&eps); err != nil {
		return nil, fmt.Errorf("endpoints file %s: %w", path, err)
	}
	return eps, nil
}

// expandEnv replaces "{env.NAME}" string values in a decoded YAML tree.
func expandEnv(v any) (any, error) {
	switch x := v.(type) {
	case string:
		if name, ok := strings.CutPrefix(x, "{env."); ok && strings.HasSuffix(name, "}") {
			name = strings.TrimSuffix(name, "}")
			val, ok := os.LookupEnv(name)
			if !ok {
				return nil, fmt.Errorf("environment variable %s is not set", name)
			}
			return val, nil
		}
		return x, nil
	case []any:
		for i := range x {
			var err error
			if x[i], err = expandEnv(x[i]); err != nil {
				return nil, err
			}
		}
		return x, nil
	case map[string]any:
		for k := range x {
			var err error
			if x[k], err = expandEnv(x[k]); err != nil {
				return nil, err
			}
		}
		return x, nil
	default:
		return v, nil
	}
}
