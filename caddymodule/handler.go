package caddymodule

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/authtap/authtap/admin"
	"github.com/authtap/authtap/rules"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults of the handler's options.
const (
	// DefaultSource is the source name of events when the handler sets none.
	DefaultSource = "authtap"
	// DefaultMaxBody is the largest request or response body the handler buffers.
	DefaultMaxBody = 1 << 20
	// DefaultReloadInterval is how often rule files are checked for changes.
	DefaultReloadInterval = 2 * time.Second
	// minReloadInterval keeps a typo from turning the watcher into a busy loop.
	minReloadInterval = 10 * time.Millisecond
	// maxLookupTotal bounds all lookups of one exchange together.
	maxLookupTotal = rules.MaxLookupTimeout
	// DefaultBeforeLookupBudget is how long a request waits, at most, for
	// the before-lookups of its candidate rules, all together.
	DefaultBeforeLookupBudget = 2 * time.Second
	// MaxBeforeLookupBudget is the largest before_lookup_budget.
	MaxBeforeLookupBudget = rules.MaxLookupTimeout
)

// Handler is the HTTP handler "authtap". It watches the exchanges that pass
// through it, matches them against rule files, and queues one event per
// emitted event type through the app "authtap". It never changes what the
// client or the upstream receives and never fails a request because of
// itself: anything that goes wrong inside authtap is logged and counted, and
// the traffic flows as if authtap were absent.
//
// An exchange that no rule can match (by method and path) is handed to the
// next handler untouched, with no buffering and no wrapping; only a mutation
// (POST, PUT, PATCH, DELETE) there gets a pooled status recorder, so that a
// 2xx is counted for coverage (see Coverage and coverage.go: a few samples
// of each route shape read its bodies ahead, up to 4 KiB). For a candidate
// exchange, the request body is buffered (up to max_body) only when a
// candidate rule reads it, and the response is held (up to max_body) until
// its events are queued, so that no accepted mutation goes out before its
// event is safe. (The status is not yet known when holding starts, so a
// candidate's error responses are held too, for the few microseconds it
// takes to find that no rule matches them.) Responses that declare or reach
// more than max_body, responses announcing trailers, server-sent event
// streams, CONNECT tunnels and protocol upgrades stream through as they come;
// their events, if any, are queued after the fact, and rules that read a body
// that was not captured whole emit nothing.
type Handler struct {
	// Rules lists the rule files to load, as file names or glob patterns
	// (e.g. "/etc/authtap/*.yaml"). Required. The files are checked for
	// changes every reload_interval; a changed set that does not load keeps
	// the last good one in force, and the problems are logged with
	// file:line:col.
	Rules []string `json:"rules,omitempty"`

	// Source names the origin in every event (`source.name`), e.g.
	// "legacy-auth". Default: "authtap".
	Source string `json:"source,omitempty"`

	// Mode is "live" or "test": the mode of every event this handler emits,
	// unless a rule's emit.mode overrides it. Test events go only to test
	// endpoints (use it on a staging site). Default: "live".
	Mode string `json:"mode,omitempty"`

	// MaxBody is the largest request or response body, in bytes, that the
	// handler buffers for extraction; a larger body streams through
	// untouched, is counted in authtap_bodies_too_large_total, and the rules
	// that read it emit nothing for that exchange. It also bounds each
	// decoded layer of a compressed response body (and with it each
	// decoder's memory; see decodeBody) and a lookup's answer. Default: 1 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// LookupUpstream is the base URL (scheme://host[:port][/prefix]) that
	// rule lookups are sent to, e.g. "http://127.0.0.1:9000" to ask the
	// upstream directly. Default: empty, which sends each lookup back
	// through this very Caddy server: to the listener address that accepted
	// the request, with the request's own scheme and Host, so that it takes
	// the same route as the caller's requests (and reaches the same
	// upstream). Lookups carry the caller's Cookie and Authorization headers;
	// one sent back through Caddy also carries a one-time marker token that
	// this handler recognises (once, while the lookup is under way) and
	// strips, so lookups never emit events while a client replaying a
	// lookup's headers is still observed.
	LookupUpstream string `json:"lookup_upstream,omitempty"`

	// BeforeLookupBudget bounds how long a request waits for the
	// before-lookups (rule lookups with when: before) of its candidate
	// rules, all of them together. They run before the request is
	// forwarded, one after another, each within its own timeout and what is
	// left of this budget; then the request goes on whatever they answered
	// (a lookup still running is abandoned and its placeholders are listed
	// in source.missing). Default: 2s; at most 10s.
	BeforeLookupBudget caddy.Duration `json:"before_lookup_budget,omitempty"`

	// ReloadInterval is how often the rule files (and the files the globs
	// expand to) are checked for changes. A negative value disables
	// reloading. Default: 2s.
	ReloadInterval caddy.Duration `json:"reload_interval,omitempty"`

	// Coverage counts the successful mutations (POST, PUT, PATCH, DELETE
	// answered 2xx) that no rule matched, per method and route shape, in
	// authtap_unmatched_total{method,route}, and keeps a few redacted sample
	// exchanges of each shape in Redis for GET /unmatched and `authtap rules
	// suggest` (see coverage.go for what it costs). Default: on, 3 samples
	// per shape.
	Coverage *CoverageConfig `json:"coverage,omitempty"`

	set      *atomic.Pointer[rules.Set] // the rules in force; swapped on reload
	enq      enqueuer
	logger   *zap.Logger
	metrics  *handlerMetrics
	lookups  *lookupClient
	upstream *url.URL
	watch    *watcher
	// registryKey names this handler's entry in the rules registry.
	registryKey string
	cov         *coverage // nil: coverage is off
	covKeep     int32     // samples kept per shape; 0: count only
}

// coverageSource is the part of the app "authtap" that gives coverage its
// Redis; tests provide one with a fake store.
type coverageSource interface {
	coverage() *coverage
}

// enqueuer is the part of the app "authtap" that the handler uses; tests
// provide an in-memory fake.
type enqueuer interface {
	Enqueue(ctx context.Context, ev rules.Event) (Outcome, error)
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.authtap",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults, loads the rules (an invalid rule file is a
// configuration error naming file:line:col), takes the app "authtap" and
// starts watching the rule files.
func (h *Handler) Provision(ctx caddy.Context) error {
	app, err := authtapApp(ctx)
	if err != nil {
		return err
	}
	return h.provision(ctx, app)
}

// provision is Provision with the enqueuer given, so unit tests can run it
// without a configured app.
func (h *Handler) provision(ctx caddy.Context, enq enqueuer) error {
	h.logger = ctx.Logger()
	h.enq = enq
	h.set = new(atomic.Pointer[rules.Set])
	if h.Source == "" {
		h.Source = DefaultSource
	}
	if h.Mode == "" {
		h.Mode = rules.ModeLive
	}
	if h.MaxBody == 0 {
		h.MaxBody = DefaultMaxBody
	}
	if h.ReloadInterval == 0 {
		h.ReloadInterval = caddy.Duration(DefaultReloadInterval)
	}
	if h.BeforeLookupBudget == 0 {
		h.BeforeLookupBudget = caddy.Duration(DefaultBeforeLookupBudget)
	}
	if err := h.Validate(); err != nil {
		return err
	}
	if h.LookupUpstream != "" {
		u, err := url.Parse(h.LookupUpstream)
		if err != nil {
			return fmt.Errorf("parsing lookup_upstream %q: %w", h.LookupUpstream, err)
		}
		h.upstream = u
	}
	m, err := newHandlerMetrics(ctx.GetMetricsRegistry())
	if err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	h.metrics = m
	h.lookups = newLookupClient(h.upstream)
	if h.Coverage == nil || !h.Coverage.Disabled {
		if cs, ok := enq.(coverageSource); ok {
			h.cov = cs.coverage()
		}
		if err := unmatchedMetrics.registerIn(ctx.GetMetricsRegistry()); err != nil {
			return fmt.Errorf("registering metrics: %w", err)
		}
		h.covKeep = admin.DefaultUnmatchedSamples
		if h.Coverage != nil && h.Coverage.Samples != 0 {
			h.covKeep = int32(max(0, h.Coverage.Samples))
		}
	}

	// note the files' state before loading, so a change made meanwhile is seen
	h.watch = newWatcher(h.Rules, time.Duration(h.ReloadInterval), h.logger, h.swapRules)
	h.watch.prime()
	set, err := rules.Load(h.Rules...)
	if err != nil {
		return fmt.Errorf("loading rules: %w", err)
	}
	h.registryKey = fmt.Sprintf("handler-%p", h)
	h.swapRules(set)
	if h.ReloadInterval > 0 {
		go h.watch.run(ctx)
	}
	return nil
}

// Validate checks the configuration; it is pure.
func (h *Handler) Validate() error {
	if len(h.Rules) == 0 {
		return errors.New("rules: at least one rule file or glob is required")
	}
	for _, p := range h.Rules {
		if strings.TrimSpace(p) == "" {
			return errors.New("rules: empty file name")
		}
	}
	switch h.Mode {
	case "", rules.ModeLive, rules.ModeTest:
	default:
		return fmt.Errorf("mode: want %q or %q, got %q", rules.ModeLive, rules.ModeTest, h.Mode)
	}
	if h.ReloadInterval > 0 && time.Duration(h.ReloadInterval) < minReloadInterval {
		return fmt.Errorf("reload_interval: want at least %s (or a negative value to disable), got %s", minReloadInterval, time.Duration(h.ReloadInterval))
	}
	if h.MaxBody < 0 {
		return fmt.Errorf("max_body: must not be negative, got %d", h.MaxBody)
	}
	if b := time.Duration(h.BeforeLookupBudget); b < 0 || b > MaxBeforeLookupBudget {
		return fmt.Errorf("before_lookup_budget: want a duration from 1ms to %s, got %s", MaxBeforeLookupBudget, b)
	}
	if h.Coverage != nil && h.Coverage.Samples > admin.MaxUnmatchedSamples {
		return fmt.Errorf("coverage: samples: want at most %d, got %d", admin.MaxUnmatchedSamples, h.Coverage.Samples)
	}
	if h.LookupUpstream != "" {
		u, err := url.Parse(h.LookupUpstream)
		if err != nil {
			return fmt.Errorf("lookup_upstream: %w", err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("lookup_upstream: want an http:// or https:// URL with a host, got %q", h.LookupUpstream)
		}
		if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return fmt.Errorf("lookup_upstream: want a base URL without credentials, query or fragment, got %q", u.Redacted())
		}
	}
	return nil
}

// Cleanup stops watching the rule files and closes idle lookup connections.
// It is safe after a partial Provision.
func (h *Handler) Cleanup() error {
	if h.lookups != nil {
		h.lookups.close()
	}
	if h.registryKey != "" {
		unregisterRules(h.registryKey)
	}
	return nil
}

// swapRules puts a newly loaded rule set in force; in-flight requests keep
// the set they started with. The set is also reported to the registry that
// authtap_admin's GET /event-types reads.
func (h *Handler) swapRules(set *rules.Set) {
	h.set.Store(set)
	registerRules(h.registryKey, set)
}

// ServeHTTP observes the exchange and queues its events. See Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if v := r.Header[lookupHeader]; v != nil {
		// the marker is ours: it never reaches the upstream, and only our
		// own lookups coming back through Caddy pass unobserved, each once
		r.Header.Del(lookupHeader)
		if isOwnLookup(v) {
			return next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), ownLookupKey{}, true)))
		}
	}
	if isMarkedLookup(r) {
		return next.ServeHTTP(w, r)
	}
	set := h.set.Load()
	if !set.CanMatch(r.Method, r.URL.Path) {
		if h.cov == nil || !isMutation(r.Method) {
			return next.ServeHTTP(w, r)
		}
		return h.serveUncovered(w, r, next)
	}
	return h.serveCandidate(w, r, next, set)
}

// serveUncovered handles a mutation on a route no rule can match: a 2xx
// answer is counted for its route shape, and sampled while the shape needs
// samples. The shape is computed and looked up without allocating; once it
// has its samples, nothing is buffered.
func (h *Handler) serveUncovered(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	var kb [256]byte
	key := appendShapeKey(kb[:0], r.Method, r.URL.Path)
	e := h.cov.lookup(key)
	if h.covKeep == 0 || e != nil && !e.wantsSample(h.covKeep) || e == nil && !h.cov.probe() {
		cw := getCovWriter(w, nil)
		err := next.ServeHTTP(cw, r)
		ok := err == nil && cw.succeeded()
		putCovWriter(cw)
		if ok {
			if e == nil {
				e = h.cov.entry(key)
			}
			e.count()
		}
		return err
	}
	return h.serveSampled(w, r, next, key, e)
}

// serveSampled is serveUncovered for a shape that still needs samples (or
// was not seen yet): the request body is read ahead up to
// admin.MaxSampleBody and the response's first bytes are copied as they
// stream by; the redacted sample is written by the coverage goroutine.
func (h *Handler) serveSampled(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, key []byte, e *shapeEntry) error {
	var ps *pendingSample
	h.safely("preparing coverage sample", func() {
		ps = newPendingSample(r)
		ps.reqBody, ps.reqNote = captureSampleBody(r)
	})
	tee := getBuf()
	defer putBuf(tee)
	cw := getCovWriter(w, tee)
	err := next.ServeHTTP(cw, r)
	ok := err == nil && cw.succeeded()
	status, over := cw.status, cw.teeOver
	putCovWriter(cw)
	if !ok {
		return err
	}
	h.safely("recording coverage sample", func() {
		if e == nil {
			e = h.cov.entry(key)
		}
		e.count()
		if ps == nil || !e.reserve(h.covKeep) {
			return
		}
		ps.entry, ps.keep, ps.at = e, int(h.covKeep), time.Now()
		ps.status = cmp.Or(status, http.StatusOK)
		ps.respHeader = w.Header().Clone()
		if over {
			ps.respNote = noteTooLarge
		} else {
			ps.respBody = bytes.Clone(tee.Bytes())
		}
		h.cov.submit(ps)
	})
	return nil
}

// serveCandidate handles an exchange that some rule may match.
func (h *Handler) serveCandidate(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, set *rules.Set) error {
	var (
		need    rules.Need
		ex      *rules.Exchange
		reqOver bool
		cw      *captureWriter
		ok      bool
		plan    *covPlan
	)
	// authtap's own failures must never take the request down with them
	h.safely("preparing exchange", func() {
		need, ok = set.Plan(r.Method, r.URL.Path)
		if !ok {
			return
		}
		ex = &rules.Exchange{
			Method:        r.Method,
			Host:          r.Host,
			Path:          r.URL.Path,
			RawQuery:      r.URL.RawQuery,
			RequestHeader: r.Header.Clone(),
		}
		if need.RequestBody {
			ex.RequestBody, reqOver = h.captureRequest(r)
		}
		plan = h.planCoverage(r, need)
		method, path := r.Method, r.URL.Path
		cw = newCaptureWriter(w, r, h.MaxBody, need.ResponseBody, func(status int) bool {
			return set.StatusCanMatch(method, path, status)
		})
		cw.sampleTee = plan != nil && plan.sample != nil
	})
	if ex == nil || cw == nil {
		return next.ServeHTTP(w, r)
	}
	defer func() { putBuf(cw.buf) }()
	// the held response goes out whatever happens below, even on a panic
	defer h.safely("releasing response", func() { _ = cw.release() })

	var before *beforeRun
	if need.BeforeLookups {
		// the state the request may destroy, read while it still exists;
		// the request waits at most before_lookup_budget for it
		h.safely("running before-lookups", func() { before = h.runBeforeLookups(r, set, ex, reqOver) })
	}
	if err := next.ServeHTTP(cw, r); err != nil {
		// the response is incomplete or will be written by an error handler:
		// nothing was accepted, so nothing is emitted
		return err
	}
	h.safely("observing exchange", func() { h.observe(r, set, ex, cw, reqOver, before, plan) })
	return nil
}

// safely runs f and turns a panic inside authtap's own code into a log line.
func (h *Handler) safely(what string, f func()) {
	defer func() {
		if v := recover(); v != nil {
			h.logger.Error("authtap failed; request passed through",
				zap.String("during", what), zap.String("panic", clip(fmt.Sprint(v), logErrorMax)),
				zap.ByteString("stack", debug.Stack()))
		}
	}()
	f()
}

// observe matches the finished exchange, runs lookups and queues the events.
// It runs before a held response is released.
func (h *Handler) observe(r *http.Request, set *rules.Set, ex *rules.Exchange, cw *captureWriter, reqOver bool, before *beforeRun, plan *covPlan) {
	if cw.upgraded() {
		return // a protocol switch: nothing to observe
	}
	ex.Status = cw.status
	if ex.Status == 0 {
		ex.Status = http.StatusOK // what the server sends for a handler that wrote nothing
	}
	ex.ResponseHeader = cw.Header()
	var respOver, countOver bool
	if cw.capture {
		if body, complete := cw.body(); !complete {
			respOver = true
			countOver = cw.mode == modeTee // larger than max_body (not a stream)
		} else {
			decoded, err := decodeBody(ex.ResponseHeader.Values("Content-Encoding"), body, h.MaxBody)
			switch {
			case errors.Is(err, errTooLarge):
				respOver, countOver = true, true
			case err != nil:
				respOver = true
				if c := h.logger.Check(zapcore.WarnLevel, "cannot decode response body for extraction"); c != nil {
					c.Write(valueField("path", r.URL.Path), errorField(err))
				}
			default:
				ex.ResponseBody = decoded
			}
		}
	}
	if countOver {
		h.metrics.tooLarge.WithLabelValues("response").Inc()
	}
	matches := set.Match(ex)
	if len(matches) == 0 {
		h.uncoveredCandidate(plan, ex, cw, reqOver)
		return
	}
	// the before-lookups sent ahead of the request count against the same bound
	b := &exchangeBudget{lookupsLeft: rules.MaxExchangeLookups - before.lookupsSent()}
	defer b.flush(h.logger)
	covered := false // a rule other than a batch rule matched, or a sub-exchange did
	for _, m := range matches {
		n := m.Rule.Need()
		if n.RequestBody && reqOver || n.ResponseBody && respOver {
			if c := h.logger.Check(zapcore.DebugLevel, "body larger than max_body; rule skipped"); c != nil {
				c.Write(zap.String("rule", m.Rule.Name), zap.Int64("max_body", h.MaxBody),
					zap.Bool("request", n.RequestBody && reqOver), zap.Bool("response", n.ResponseBody && respOver))
			}
			covered = true // a rule is there; authtap_too_large_total tells why it saw nothing
			continue
		}
		if m.IsBatch() {
			if h.observeBatch(r, set, ex, m, b, before) {
				covered = true
			}
			continue
		}
		covered = true
		h.emitMatch(r, ex, m, b, before, "")
	}
	if !covered {
		// only batch rules matched, and none of the envelope's sub-exchanges
		// matched a rule: a successful mutation no rule covered, counted
		// under the envelope's own route shape
		h.uncoveredCandidate(plan, ex, cw, reqOver)
	}
}

// emitMatch runs a match's lookups, builds its events and queues them.
// batch names the batch rule whose sub-exchange ex is ("" for none);
// before holds the answers its before-lookups got before forwarding.
func (h *Handler) emitMatch(r *http.Request, ex *rules.Exchange, m *rules.Match, b *exchangeBudget, before *beforeRun, batch string) {
	if m.NumLookups() > 0 {
		h.runLookups(r, ex, m, b, before)
	}
	events, errs := m.Events(ex, rules.EmitOptions{Source: h.Source, Mode: h.Mode, Unchanged: h.unchanged})
	for _, err := range errs {
		// the error quotes request values only cut short (rules.QuoteCut, clipped again here)
		h.metrics.countRefused(m.Rule.Name, err)
		if b.warn() {
			h.logger.Warn("cannot build event", zap.String("rule", m.Rule.Name), batchField(batch), errorField(err))
		}
	}
	for _, ev := range events {
		h.metrics.matched.WithLabelValues(m.Rule.Name, ev.Type).Inc()
		h.enqueue(r.Context(), ev, batch)
	}
}

// unchanged counts (and logs at debug level) an event not built because its
// emit's previous found that nothing changed (skip_unchanged).
func (h *Handler) unchanged(rule, typ string) {
	h.metrics.unchanged.WithLabelValues(rule, typ).Inc()
	if c := h.logger.Check(zapcore.DebugLevel, "nothing changed; no event (skip_unchanged)"); c != nil {
		c.Write(zap.String("rule", rule), zap.String("type", typ))
	}
}

// observeBatch splits a batch envelope into its sub-exchanges and matches
// each against the set as an exchange of its own (batch rules aside), its
// rules' lookups sent within the exchange's one lookup budget. It reports
// whether any sub-exchange matched a rule (the envelope is covered).
func (h *Handler) observeBatch(r *http.Request, set *rules.Set, ex *rules.Exchange, m *rules.Match, b *exchangeBudget, before *beforeRun) bool {
	bt, err := m.Batch(ex)
	if err != nil {
		h.metrics.countRefused(m.Rule.Name, err)
		if b.warn() {
			h.logger.Warn("batch cut short", zap.String("rule", m.Rule.Name), errorField(err))
		}
	}
	if c := h.logger.Check(zapcore.DebugLevel, "batch envelope split"); c != nil {
		c.Write(zap.String("rule", m.Rule.Name), zap.Int("requests", bt.Requests), zap.Int("succeeded", len(bt.Subs)),
			zap.Int("failed", bt.Failed), zap.Bool("rolled_back", bt.RolledBack))
	}
	matched := false
	for _, sub := range bt.Subs {
		for _, sm := range set.Match(sub) {
			matched = true
			h.emitMatch(r, sub, sm, b, before.sub(m.Rule, sub.SubIndex()), m.Rule.Name)
		}
	}
	return matched
}

// maxExchangeWarnings bounds the warnings one exchange logs (events refused,
// lookups failed): a batch of a thousand bad operations logs this many and a
// count of the rest, which its metrics still count one by one.
const maxExchangeWarnings = 10

// exchangeBudget is what one exchange (a batch envelope with all its
// sub-exchanges) may still spend: lookups, their time, warnings.
type exchangeBudget struct {
	deadline     time.Time // of all lookups; set when the first one starts
	lookupsLeft  int       // rules.MaxExchangeLookups at first
	lookupCapped bool      // a lookup was not sent for want of budget
	warnings     int
}

// warn reports whether one more warning may be logged for the exchange.
func (b *exchangeBudget) warn() bool {
	b.warnings++
	return b.warnings <= maxExchangeWarnings
}

// flush logs how many warnings were left out.
func (b *exchangeBudget) flush(l *zap.Logger) {
	if n := b.warnings - maxExchangeWarnings; n > 0 {
		l.Warn("more problems with this exchange were not logged; the metrics count them",
			zap.Int("not_logged", n), zap.String("metrics", "authtap_events_refused_total, authtap_lookup_failures_total"))
	}
}

// batchField names the batch rule of a sub-exchange's event in a log line.
func batchField(batch string) zap.Field {
	if batch == "" {
		return zap.Skip()
	}
	return zap.String("batch", batch)
}

// planCoverage decides, before a candidate mutation is forwarded, whether
// it is sampled should no rule match it; a sample then needs the request
// body, read ahead up to admin.MaxSampleBody when no rule reads it. It
// returns nil for anything but a mutation, or with coverage off.
func (h *Handler) planCoverage(r *http.Request, need rules.Need) *covPlan {
	if h.cov == nil || !isMutation(r.Method) {
		return nil
	}
	plan := &covPlan{key: appendShapeKey(nil, r.Method, r.URL.Path)}
	e := h.cov.lookup(plan.key)
	if h.covKeep == 0 || e != nil && !e.wantsSample(h.covKeep) || e == nil && !h.cov.probe() {
		return plan
	}
	plan.sample = newPendingSample(r)
	if !need.RequestBody {
		plan.sample.reqBody, plan.sample.reqNote = captureSampleBody(r)
	}
	return plan
}

// uncoveredCandidate counts (and samples) a candidate mutation that no rule
// matched, when it was answered 2xx. The bodies come from what the exchange
// captured, copied: the response buffer goes back to its pool.
func (h *Handler) uncoveredCandidate(plan *covPlan, ex *rules.Exchange, cw *captureWriter, reqOver bool) {
	if plan == nil || cw.own || ex.Status < 200 || ex.Status > 299 {
		return
	}
	e := h.cov.entry(plan.key)
	e.count()
	ps := plan.sample
	if ps == nil || !e.reserve(h.covKeep) {
		return
	}
	ps.entry, ps.keep, ps.at = e, int(h.covKeep), time.Now()
	if ps.reqBody == nil && ps.reqNote == "" && ex.RequestBody != nil { // a rule read it
		if len(ex.RequestBody) > admin.MaxSampleBody {
			ps.reqNote = noteTooLarge
		} else {
			ps.reqBody = ex.RequestBody // not pooled (captureRequest)
		}
	} else if reqOver && ps.reqBody == nil && ps.reqNote == "" {
		ps.reqNote = noteMaxBody
	}
	ps.status = ex.Status
	ps.respHeader = ex.ResponseHeader.Clone()
	switch raw, complete := cw.body(); {
	case ex.ResponseBody != nil:
		if len(ex.ResponseBody) > admin.MaxSampleBody {
			ps.respNote = noteTooLarge
		} else {
			ps.respBody, ps.respDecoded = bytes.Clone(ex.ResponseBody), true
		}
	case !complete && cw.mode == modePass:
		ps.respNote = "streamed through: not kept"
	case !complete:
		ps.respNote = noteTooLarge
	case len(raw) > admin.MaxSampleBody:
		ps.respNote = noteTooLarge
	default:
		ps.respBody = bytes.Clone(raw)
	}
	h.cov.submit(ps)
}

// enqueue hands one event to the app and records the outcome. The app bounds
// the wait itself (Redis within enqueue_timeout, else the on-disk spool).
func (h *Handler) enqueue(ctx context.Context, ev rules.Event, batch string) {
	start := time.Now()
	out, err := h.enq.Enqueue(ctx, ev)
	h.metrics.queueLatency.Observe(time.Since(start).Seconds())
	if err != nil {
		h.metrics.enqueueErrors.Inc()
		h.logger.Error("event lost: cannot queue or spool it",
			zap.String("event_id", ev.ID), valueField("type", ev.Type), zap.String("rule", ev.Source.Rule), errorField(err))
		return
	}
	if c := h.logger.Check(zapcore.DebugLevel, "event queued"); c != nil {
		c.Write(zap.String("event_id", ev.ID), valueField("type", ev.Type), zap.String("rule", ev.Source.Rule),
			batchField(batch), zap.Stringer("outcome", out))
	}
}

// captureRequest buffers the request body up to MaxBody (readAhead). over
// reports a body larger than MaxBody (or one that failed to read); such a
// body is not returned.
func (h *Handler) captureRequest(r *http.Request) (body []byte, over bool) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, false
	}
	if r.ContentLength > h.MaxBody {
		// known to be too large: do not read a byte of it
		h.metrics.tooLarge.WithLabelValues("request").Inc()
		return nil, true
	}
	buf, err := readAhead(r, h.MaxBody)
	if err != nil || int64(buf.Len()) > h.MaxBody {
		if err == nil {
			h.metrics.tooLarge.WithLabelValues("request").Inc()
		}
		return nil, true
	}
	return buf.Bytes(), false
}

// replayBody is a request body that first yields buffered bytes, then the
// rest of the original body, and closes the original.
type replayBody struct {
	io.Reader
	closer io.Closer
}

func (b *replayBody) Close() error { return b.closer.Close() }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// bufPool holds body buffers. Buffers that grew far past the default body
// limit are dropped rather than pooled.
var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func getBuf() *bytes.Buffer {
	b := bufPool.Get().(*bytes.Buffer)
	b.Reset()
	return b
}

func putBuf(b *bytes.Buffer) {
	if b == nil || b.Cap() > 4*DefaultMaxBody {
		return
	}
	bufPool.Put(b)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
