package worker

import (
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
)

func TestNewConfig(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "redis") {
		t.Errorf("New without Redis: %v", err)
	}
	opt := asynq.RedisClientOpt{Addr: "127.0.0.1:1"}
	_, err := New(Config{Redis: opt, Endpoints: []EndpointConfig{{ID: "x", URL: "http://x.example", Secret: testSecret(t)}}})
	if err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("New with a plain-HTTP live endpoint: %v", err)
	}
	// Two workers on one registry (a Caddy config reload) share the collectors.
	reg := prometheus.NewRegistry()
	for i := range 2 {
		w, err := New(Config{Redis: opt, Metrics: reg})
		if err != nil {
			t.Fatalf("worker %d: %v", i, err)
		}
		if w.cfg.Concurrency != DefaultConcurrency || w.cfg.ShutdownTimeout != DefaultShutdownTimeout ||
			w.cfg.DisableAfter != DefaultDisableAfter || w.cfg.Retention != DefaultRetention ||
			w.cfg.TaskCheckInterval != DefaultTaskCheckInterval {
			t.Errorf("defaults not applied: %+v", w.cfg)
		}
		if i == 0 {
			if err := w.Start(); err == nil || !strings.Contains(err.Error(), "reaching redis") {
				t.Errorf("Start without a reachable Redis: %v", err)
			}
		}
		w.Shutdown()
		w.Shutdown() // idempotent
	}
	// A conflicting collector of the same name is an error, not a panic.
	bad := prometheus.NewRegistry()
	bad.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "authtap_worker_deliveries_total", Help: "x"}))
	if _, err := New(Config{Redis: opt, Metrics: bad}); err == nil {
		t.Error("New with a conflicting metric succeeded")
	}
}
