package caddymodule

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/worker"
)

func TestGlobalOptionCaddyfile(t *testing.T) {
	for i, tc := range []struct {
		input string
		want  string // JSON of the app
		err   string // substring of the error
	}{
		{input: `authtap`, want: `{}`},
		{input: `authtap {
			redis redis://127.0.0.1:6379/0
		}`, want: `{"redis":"redis://127.0.0.1:6379/0"}`},
		{input: `authtap {
			redis {env.REDIS_URL}
			worker {
				concurrency 20
				delivery_timeout 10s
				shutdown_timeout 5s
				allow 10.0.0.0/8 fd00::/8
			}
			spool_dir /var/lib/authtap/spool
			spool_max_size 512MiB
			enqueue_timeout 250ms
			endpoint crm {
				url https://crm.example.com/hooks
				events user.* tenant.deleted
				mode test
				tenant org_1
				secret {env.CRM_SECRET}
				bearer_token {env.CRM_TOKEN}
				event_header X-Crm-Event
				format data
				description "CRM sync"
				rate_limit 2.5
				max_concurrency 3
				disabled
			}
			endpoint audit {
				url https://audit.example.com/in
				secret whsec_abc
			}
		}`, want: `{"redis":"{env.REDIS_URL}",` +
			`"worker":{"concurrency":20,"delivery_timeout":10000000000,"shutdown_timeout":5000000000,"allowlist":["10.0.0.0/8","fd00::/8"]},` +
			`"endpoints":[{"id":"crm","url":"https://crm.example.com/hooks","description":"CRM sync","events":["user.*","tenant.deleted"],"mode":"test","tenant":"org_1","secret":"{env.CRM_SECRET}","bearer_token":"{env.CRM_TOKEN}","event_header":"X-Crm-Event","format":"data","rate_limit":2.5,"max_concurrency":3,"disabled":true},` +
			`{"id":"audit","url":"https://audit.example.com/in","secret":"whsec_abc"}],` +
			`"spool_dir":"/var/lib/authtap/spool","spool_max_size":536870912,"enqueue_timeout":250000000}`},
		{input: `authtap {
			worker off
		}`, want: `{"worker":{"enabled":false}}`},
		{input: `authtap {
			worker on
		}`, want: `{"worker":{"enabled":true}}`},
		{input: `authtap {
			worker
		}`, want: `{"worker":{}}`},

		{input: `authtap extra`, err: "wrong argument count"},
		{input: `authtap {
			redis
		}`, err: "wrong argument count"},
		{input: `authtap {
			redis a b
		}`, err: "wrong argument count"},
		{input: `authtap {
			reddis redis://x
		}`, err: `unrecognized authtap option "reddis"`},
		{input: `authtap {
			enqueue_timeout soon
		}`, err: `enqueue_timeout: invalid duration "soon"`},
		{input: `authtap {
			spool_max_size lots
		}`, err: `spool_max_size: invalid size "lots"`},
		{input: `authtap {
			worker maybe
		}`, err: `worker: unexpected argument "maybe"`},
		{input: `authtap {
			worker {
				concurrency -1
			}
		}`, err: `worker concurrency: want a positive number, got "-1"`},
		{input: `authtap {
			worker {
				allow 10.0.0.0
			}
		}`, err: `worker allow: "10.0.0.0" is not an address range`},
		{input: `authtap {
			worker {
				threads 3
			}
		}`, err: `unrecognized worker option "threads"`},
		{input: `authtap {
			endpoint {
				url https://x
			}
		}`, err: "endpoint: missing id"},
		{input: `authtap {
			endpoint crm {
				url https://x
				tenant "org 1"
			}
		}`, err: `endpoint crm tenant: tenant "org 1" has byte ' ' at 3`},
		{input: `authtap {
			endpoint crm {
				url https://x
			}
		}`, err: "endpoint crm: missing secret"},
		{input: `authtap {
			endpoint crm {
				secret whsec_x
			}
		}`, err: "endpoint crm: missing url"},
		{input: `authtap {
			endpoint crm {
				url https://x
				secret whsec_x
				mode staging
			}
		}`, err: `endpoint crm mode: want live or test, got "staging"`},
		{input: `authtap {
			endpoint crm {
				url https://x https://y
			}
		}`, err: `endpoint crm url: want one value, got another: "https://y"`},
		{input: `authtap {
			endpoint crm {
				format xml
			}
		}`, err: `endpoint crm format: want envelope or data, got "xml"`},
		{input: `authtap {
			endpoint crm {
				retries 3
			}
		}`, err: `unrecognized endpoint option "retries"`},
		{input: `authtap {
			endpoint crm {
				max_concurrency 0
			}
		}`, err: `endpoint crm max_concurrency: want 1 to 1000, got "0"`},
	} {
		d := caddyfile.NewTestDispenser(tc.input)
		v, err := parseGlobalOption(d, nil)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("case %d: error = %v, want one containing %q", i, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("case %d: %v", i, err)
			continue
		}
		app, ok := v.(httpcaddyfile.App)
		if !ok || app.Name != "authtap" {
			t.Errorf("case %d: got %#v", i, v)
			continue
		}
		if string(app.Value) != tc.want {
			t.Errorf("case %d:\n got %s\nwant %s", i, app.Value, tc.want)
		}
		// Every Caddyfile form has a JSON form that loads back into the same app.
		var back App
		if err := json.Unmarshal(app.Value, &back); err != nil {
			t.Errorf("case %d: JSON does not load: %v", i, err)
		} else if again := caddyconfig.JSON(&back, nil); string(again) != tc.want {
			t.Errorf("case %d: JSON round trip %s", i, again)
		}
	}
}

func TestGlobalOptionOnlyOnce(t *testing.T) {
	d := caddyfile.NewTestDispenser(`authtap`)
	if _, err := parseGlobalOption(d, httpcaddyfile.App{Name: "authtap"}); err == nil || !strings.Contains(err.Error(), "only once") {
		t.Fatalf("second authtap global option: %v", err)
	}
}

// The whole Caddyfile adapts into apps.authtap.
func TestGlobalOptionAdapts(t *testing.T) {
	input := `{
	authtap {
		redis redis://127.0.0.1:6379/0
		worker {
			concurrency 4
		}
	}
}
:8080 {
	respond ok
}
`
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) > 0 {
		t.Fatalf("warnings %v", warnings)
	}
	var cfg struct {
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	if got, want := string(cfg.Apps["authtap"]), `{"redis":"redis://127.0.0.1:6379/0","worker":{"concurrency":4}}`; got != want {
		t.Fatalf("apps.authtap = %s, want %s", got, want)
	}
}

func TestValidateApp(t *testing.T) {
	for i, tc := range []struct {
		app App
		ok  bool
	}{
		{App{}, true},
		{App{EnqueueTimeout: -1}, false},
		{App{SpoolMaxSize: -1}, false},
		{App{Worker: &WorkerConfig{Concurrency: -2}}, false},
		{App{SpoolProbeInterval: caddy.Duration(MinSpoolProbeInterval)}, true},
		{App{SpoolProbeInterval: caddy.Duration(time.Hour)}, true},
		// A probe dials Redis: never at a rate a typo chose.
		{App{SpoolProbeInterval: 1}, false},
		{App{SpoolProbeInterval: caddy.Duration(MinSpoolProbeInterval - 1)}, false},
		{App{SpoolProbeInterval: -1}, false},
		// Recovery and fan-out retry options, in JSON too, within the worker's bounds.
		{App{Worker: &WorkerConfig{RecoveryInterval: caddy.Duration(worker.MaxRecoveryInterval), RunLease: caddy.Duration(worker.MaxRunLease)}}, true},
		{App{Worker: &WorkerConfig{FanoutRetryFirst: caddy.Duration(time.Second), FanoutRetryMax: caddy.Duration(worker.MaxFanoutRetry)}}, true},
		{App{Worker: &WorkerConfig{RecoveryInterval: -1}}, false},
		{App{Worker: &WorkerConfig{RunLease: -1}}, false},
		{App{Worker: &WorkerConfig{RecoveryInterval: 1}}, false},
		{App{Worker: &WorkerConfig{RecoveryInterval: caddy.Duration(time.Hour), RunLease: caddy.Duration(3 * time.Hour)}}, false},
		{App{Worker: &WorkerConfig{RunLease: 1<<63 - 1}}, false},
		{App{Worker: &WorkerConfig{RecoveryInterval: caddy.Duration(2 * time.Second)}}, false}, // the default lease is 3s
		{App{Worker: &WorkerConfig{FanoutRetryFirst: -1}}, false},
		{App{Worker: &WorkerConfig{FanoutRetryFirst: caddy.Duration(time.Minute)}}, false}, // the default cap is 30s
		{App{Worker: &WorkerConfig{FanoutRetryFirst: 1 << 62, FanoutRetryMax: 1<<63 - 1}}, false},
		{App{Worker: &WorkerConfig{ProbeInterval: caddy.Duration(worker.MinProbeInterval)}}, true},
		{App{Worker: &WorkerConfig{ProbeInterval: caddy.Duration(worker.MaxProbeInterval)}}, true},
		{App{Worker: &WorkerConfig{ProbeInterval: -1}}, false},
		{App{Worker: &WorkerConfig{ProbeInterval: caddy.Duration(worker.MinProbeInterval - 1)}}, false},
		{App{Worker: &WorkerConfig{ProbeInterval: caddy.Duration(worker.MaxProbeInterval + 1)}}, false},
		{App{Worker: &WorkerConfig{ProbeInterval: 1<<63 - 1}}, false},
		// Off, the worker's options are still checked.
		{App{Worker: &WorkerConfig{Enabled: new(false), RunLease: -1}}, false},
	} {
		if err := tc.app.Validate(); (err == nil) != tc.ok {
			t.Errorf("case %d: Validate() = %v", i, err)
		}
	}
}

func TestProvisionErrors(t *testing.T) {
	for i, tc := range []struct {
		app  App
		want string
	}{
		{App{Redis: "http://127.0.0.1:6379"}, `unsupported scheme "http"`},
		{App{Redis: "redis://:hunter2@127.0.0.1:99999/0"}, "port must be 1 to 65535"},
		{App{Redis: "redis://127.0.0.1:1/0", Worker: &WorkerConfig{Allowlist: []string{"nope"}}}, `allowlist entry "nope"`},
		{App{Worker: &WorkerConfig{}, Endpoints: []worker.EndpointConfig{{ID: "x", URL: "https://x.test"}}}, "needs a secret"},
		// Each recovery option reaches the worker, which refuses it.
		{App{Redis: "redis://127.0.0.1:1/0", Worker: &WorkerConfig{RecoveryInterval: caddy.Duration(time.Minute)}}, "recovery interval 1m0s is above"},
		{App{Redis: "redis://127.0.0.1:1/0", Worker: &WorkerConfig{RunLease: caddy.Duration(time.Hour)}}, "run lease 1h0m0s is above"},
		{App{Redis: "redis://127.0.0.1:1/0", Worker: &WorkerConfig{FanoutRetryFirst: caddy.Duration(time.Minute)}}, "first fan-out retry delay 1m0s"},
		{App{Redis: "redis://127.0.0.1:1/0", Worker: &WorkerConfig{FanoutRetryMax: caddy.Duration(2 * time.Hour)}}, "fan-out retry cap 2h0m0s"},
		{App{Redis: "redis://127.0.0.1:1/0", Worker: &WorkerConfig{ProbeInterval: caddy.Duration(time.Hour)}}, "probe interval 1h0m0s is above"},
	} {
		a := tc.app
		a.SpoolDir = t.TempDir()
		a.logger = zap.NewNop()
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		err := a.Provision(ctx)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("case %d: Provision error = %v, want %q", i, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("case %d: error repeats the password: %v", i, err)
		}
		// Cleanup after a partial Provision releases whatever was taken.
		keys := map[*caddy.UsagePool]string{backends: a.backendKey, spools: a.spoolKey, workers: a.workerKey}
		if err := a.Cleanup(); err != nil {
			t.Errorf("case %d: Cleanup: %v", i, err)
		}
		cancel()
		for pool, k := range keys {
			if _, ok := pool.References(k); k != "" && ok {
				t.Errorf("case %d: %s still pooled after Cleanup", i, k)
			}
		}
	}
}

// Caddy makes a new metrics registry per config: the app's collectors go into
// each, keep counting across them, and a second app of one config is fine.
func TestAppMetricsAcrossRegistries(t *testing.T) {
	r1, r2 := prometheus.NewPedanticRegistry(), prometheus.NewPedanticRegistry()
	m1, err := newAppMetrics(r1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newAppMetrics(r1); err != nil {
		t.Fatalf("second registration in one registry: %v", err)
	}
	m2, err := newAppMetrics(r2)
	if err != nil || m1 != m2 {
		t.Fatalf("second registry: %v", err)
	}
	m1.queued.Inc()
	for _, reg := range []*prometheus.Registry{r1, r2} {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		names := map[string]bool{}
		for _, mf := range mfs {
			names[mf.GetName()] = true
		}
		for _, n := range []string{"authtap_events_queued_total", "authtap_events_spooled_total", "authtap_events_replayed_total",
			"authtap_events_duplicate_total", "authtap_spool_bytes"} {
			if !names[n] {
				t.Errorf("%s not gathered (have %v)", n, names)
			}
		}
	}
}

// With an external Redis, the app checks once at start that Redis persists and
// never evicts (worker.CheckRedisConfig), warning by setting name; a
// well-configured Redis gives no warning, and the embedded one is not checked.
func TestAppChecksRedisConfig(t *testing.T) {
	checkLogs := func(logs *observer.ObservedLogs) *observer.ObservedLogs {
		return logs.Filter(func(e observer.LoggedEntry) bool {
			return strings.Contains(e.Message, "authtap: redis ") && e.ContextMap()["setting"] != nil ||
				strings.Contains(e.Message, "could not check redis")
		})
	}
	t.Run("loses and evicts", func(t *testing.T) {
		srv := redistest.StartArgs(t, "--appendonly", "no", "--save", "", "--maxmemory-policy", "allkeys-lru")
		logs := startApp(t, &App{Redis: srv.URL})
		waitFor(t, 10*time.Second, "the redis config warnings", func() bool { return checkLogs(logs).Len() >= 2 })
		var settings []string
		for _, e := range checkLogs(logs).All() {
			if e.Level != zap.WarnLevel {
				t.Errorf("%s %q", e.Level, e.Message)
			}
			settings = append(settings, e.ContextMap()["setting"].(string))
		}
		if strings.Join(settings, ",") != "appendonly,maxmemory-policy" {
			t.Errorf("warned about %v", settings)
		}
		// A reload (the same Redis) does not check again.
		startApp(t, &App{Redis: srv.URL})
		time.Sleep(300 * time.Millisecond)
		if n := checkLogs(logs).Len(); n != 2 {
			t.Errorf("%d check messages after a second config, want 2", n)
		}
	})
	t.Run("well configured", func(t *testing.T) {
		srv := redistest.StartArgs(t, "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction")
		a := &App{Redis: srv.URL}
		logs := startApp(t, a)
		waitFor(t, 10*time.Second, "the redis config check", func() bool {
			return logs.FilterMessageSnippet("redis keeps queued tasks").Len() == 1
		})
		if n := checkLogs(logs).Len(); n != 0 {
			t.Errorf("check messages for a well-configured Redis: %v", checkLogs(logs).All())
		}
	})
	t.Run("embedded", func(t *testing.T) {
		logs := startApp(t, &App{})
		time.Sleep(300 * time.Millisecond)
		if n := checkLogs(logs).Len(); n != 0 {
			t.Errorf("the embedded Redis was checked: %v", checkLogs(logs).All())
		}
	})
}
