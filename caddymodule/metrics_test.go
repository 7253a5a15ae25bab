package caddymodule

import (
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetricsSharedWithinOneRegistry(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	a, err := newHandlerMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newHandlerMetrics(reg) // a second authtap handler of the same config
	if err != nil {
		t.Fatalf("second registration: %v", err)
	}
	if a.matched != b.matched || a.enqueueErrors != b.enqueueErrors || a.queueLatency != b.queueLatency {
		t.Error("handlers of one config must share the registered collectors")
	}
	a.matched.WithLabelValues("r", "user.created").Inc()
	a.tooLarge.WithLabelValues("request").Inc()
	a.lookupFailures.WithLabelValues("r").Inc()
	a.beforeLookups.WithLabelValues("r").Inc()
	a.enqueueErrors.Inc()
	a.queueLatency.Observe(0.001)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	sort.Strings(names)
	want := "authtap_before_lookups_total authtap_bodies_too_large_total authtap_enqueue_errors_total authtap_events_matched_total authtap_lookup_failures_total authtap_queue_latency_seconds"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("metrics = %s\nwant      %s", got, want)
	}
}

// A fresh registry (a reloaded config) gets working collectors too.
func TestMetricsOnNewRegistry(t *testing.T) {
	for range 2 {
		if _, err := newHandlerMetrics(prometheus.NewPedanticRegistry()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := newHandlerMetrics(nil); err != nil {
		t.Fatal(err)
	}
}
