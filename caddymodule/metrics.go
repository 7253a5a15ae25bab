package caddymodule

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/authtap/authtap/rules"
)

// handlerMetrics are the handler's Prometheus collectors. Every label value
// comes from the rule files or a fixed set, never from a request or
// response: rule names, event types (a constant type, or one of the types a
// templated type declares: rules refuses any other rendering before an event
// exists), body sides and the fixed refusal reasons. What became of each
// event (queued, spooled, duplicate) is counted by the app, which does the
// queueing (authtap_events_queued_total and friends).
type handlerMetrics struct {
	matched        *prometheus.CounterVec // rule, type
	refused        *prometheus.CounterVec // rule, reason
	unchanged      *prometheus.CounterVec // rule, type
	tooLarge       *prometheus.CounterVec // side
	lookupFailures *prometheus.CounterVec // rule
	beforeLookups  *prometheus.CounterVec // rule
	enqueueErrors  prometheus.Counter
	queueLatency   prometheus.Histogram
}

// newHandlerMetrics registers the collectors on reg (Caddy's registry for the
// running config; nil gives a private one). Several authtap handlers of one
// config share the collectors registered first.
func newHandlerMetrics(reg *prometheus.Registry) (*handlerMetrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	const ns = "authtap"
	m := &handlerMetrics{}
	var err error
	if m.matched, err = register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "events_matched_total",
		Help: "Events built from observed exchanges, by rule and event type.",
	}, []string{"rule", "type"})); err != nil {
		return nil, err
	}
	if m.refused, err = register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "events_refused_total",
		Help: "Events a matching rule did not build, by rule and reason: undeclared_type (a templated type rendered to a type its types list does not declare), invalid_type, type_too_long, too_many_items (elements of an each past rules.MaxEachItems), too_many_operations (sub-requests of a batch past rules.MaxBatchOps), other.",
	}, []string{"rule", "reason"})); err != nil {
		return nil, err
	}
	if m.unchanged, err = register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "events_unchanged_total",
		Help: "Events not built because their rule's previous found that nothing changed and says skip_unchanged, by rule and event type.",
	}, []string{"rule", "type"})); err != nil {
		return nil, err
	}
	if m.tooLarge, err = register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "bodies_too_large_total",
		Help: "Bodies of candidate exchanges larger than max_body (side is request or response); their rules emitted nothing.",
	}, []string{"side"})); err != nil {
		return nil, err
	}
	if m.lookupFailures, err = register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "lookup_failures_total",
		Help: "Rule lookups that failed (error, timeout or non-2xx answer), by rule.",
	}, []string{"rule"})); err != nil {
		return nil, err
	}
	if m.beforeLookups, err = register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: ns, Name: "before_lookups_total",
		Help: "Before-lookups (when: before) sent to the upstream, by rule: they go out for every candidate exchange whose request matches, before its status is known, so also for requests the upstream then refuses. Identical ones of one exchange are sent once.",
	}, []string{"rule"})); err != nil {
		return nil, err
	}
	if m.enqueueErrors, err = register(reg, prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: ns, Name: "enqueue_errors_total",
		Help: "Events that could be neither queued in Redis nor spooled to disk.",
	})); err != nil {
		return nil, err
	}
	if m.queueLatency, err = register(reg, prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: ns, Name: "queue_latency_seconds",
		Help:    "Time the handler waited for one event to be queued or spooled.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})); err != nil {
		return nil, err
	}
	return m, nil
}

// countRefused counts the events that a rule refused to build: one, or as
// many as the error stands for (the elements past rules.MaxEachItems, the
// sub-requests past rules.MaxBatchOps). The reason label is one of rules'
// fixed Refused* values, or "other".
func (m *handlerMetrics) countRefused(rule string, err error) {
	reason, n := "other", 1
	var ee *rules.EmitError
	if errors.As(err, &ee) {
		switch ee.Reason {
		case rules.RefusedUndeclared, rules.RefusedInvalid, rules.RefusedTooLong, rules.RefusedTooManyItems, rules.RefusedTooManyOps:
			reason = ee.Reason
		}
		n = ee.Events()
	}
	m.refused.WithLabelValues(rule, reason).Add(float64(n))
}

// register registers c, or returns the collector of the same description
// that is already registered (another authtap handler of the same config).
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}
