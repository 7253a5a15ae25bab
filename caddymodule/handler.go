package caddymodule

import (
	"bytes"
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
)

// Handler is the HTTP handler "authtap". It watches the exchanges that pass
// through it, matches them against rule files, and queues one event per
// emitted event type through the app "authtap". It never changes what the
// client or the upstream receives and never fails a request because of
// itself: anything that goes wrong inside authtap is logged and counted, and
// the traffic flows as if authtap were absent.
//
// An exchange that no rule can match (by method and path) is handed to the
// next handler untouched, with no buffering and no wrapping. For a candidate
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

	// ReloadInterval is how often the rule files (and the files the globs
	// expand to) are checked for changes. A negative value disables
	// reloading. Default: 2s.
	ReloadInterval caddy.Duration `json:"reload_interval,omitempty"`

	set      *atomic.Pointer[rules.Set] // the rules in force; swapped on reload
	enq      enqueuer
	logger   *zap.Logger
	metrics  *handlerMetrics
	lookups  *lookupClient
	upstream *url.URL
	watch    *watcher
	// registryKey names this handler's entry in the rules registry.
	registryKey string
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
		return next.ServeHTTP(w, r)
	}
	return h.serveCandidate(w, r, next, set)
}

// serveCandidate handles an exchange that some rule may match.
func (h *Handler) serveCandidate(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, set *rules.Set) error {
	var (
		need    rules.Need
		ex      *rules.Exchange
		reqOver bool
		cw      *captureWriter
		ok      bool
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
		method, path := r.Method, r.URL.Path
		cw = newCaptureWriter(w, r, h.MaxBody, need.ResponseBody, func(status int) bool {
			return set.StatusCanMatch(method, path, status)
		})
	})
	if ex == nil || cw == nil {
		return next.ServeHTTP(w, r)
	}
	defer func() { putBuf(cw.buf) }()
	// the held response goes out whatever happens below, even on a panic
	defer h.safely("releasing response", func() { _ = cw.release() })

	if err := next.ServeHTTP(cw, r); err != nil {
		// the response is incomplete or will be written by an error handler:
		// nothing was accepted, so nothing is emitted
		return err
	}
	h.safely("observing exchange", func() { h.observe(r, set, ex, cw, reqOver) })
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
func (h *Handler) observe(r *http.Request, set *rules.Set, ex *rules.Exchange, cw *captureWriter, reqOver bool) {
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
		return
	}
	b := &exchangeBudget{lookupsLeft: rules.MaxExchangeLookups}
	defer b.flush(h.logger)
	for _, m := range matches {
		n := m.Rule.Need()
		if n.RequestBody && reqOver || n.ResponseBody && respOver {
			if c := h.logger.Check(zapcore.DebugLevel, "body larger than max_body; rule skipped"); c != nil {
				c.Write(zap.String("rule", m.Rule.Name), zap.Int64("max_body", h.MaxBody),
					zap.Bool("request", n.RequestBody && reqOver), zap.Bool("response", n.ResponseBody && respOver))
			}
			continue
		}
		if m.IsBatch() {
			h.observeBatch(r, set, ex, m, b)
			continue
		}
		h.emitMatch(r, ex, m, b, "")
	}
}

// emitMatch runs a match's lookups, builds its events and queues them.
// batch names the batch rule whose sub-exchange ex is ("" for none).
func (h *Handler) emitMatch(r *http.Request, ex *rules.Exchange, m *rules.Match, b *exchangeBudget, batch string) {
	if m.NumLookups() > 0 {
		h.runLookups(r, ex, m, b)
	}
	events, errs := m.Events(ex, rules.EmitOptions{Source: h.Source, Mode: h.Mode})
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

// observeBatch splits a batch envelope into its sub-exchanges and matches
// each against the set as an exchange of its own (batch rules aside), its
// rules' lookups sent within the exchange's one lookup budget.
func (h *Handler) observeBatch(r *http.Request, set *rules.Set, ex *rules.Exchange, m *rules.Match, b *exchangeBudget) {
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
	for _, sub := range bt.Subs {
		for _, sm := range set.Match(sub) {
			h.emitMatch(r, sub, sm, b, m.Rule.Name)
		}
	}
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

// captureRequest buffers the request body up to MaxBody and puts a reader
// back that yields exactly the bytes (and the error) the original would have.
// over reports a body larger than MaxBody (or one that failed to read); such
// a body is not returned.
//
// The buffer is not pooled: the proxy transport may still read the replayed
// body from its own goroutine after the handler chain has returned.
func (h *Handler) captureRequest(r *http.Request) (body []byte, over bool) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, false
	}
	if r.ContentLength > h.MaxBody {
		// known to be too large: do not read a byte of it
		h.metrics.tooLarge.WithLabelValues("request").Inc()
		return nil, true
	}
	buf := new(bytes.Buffer)
	if r.ContentLength > 0 {
		// trust the declared length only as far as the default limit
		buf.Grow(int(min(r.ContentLength+1, DefaultMaxBody)))
	}
	_, err := io.CopyN(buf, r.Body, h.MaxBody+1)
	rest := io.Reader(r.Body)
	switch {
	case err == io.EOF:
		err = nil
	case err != nil:
		// hand the same error on to whoever reads the body next
		rest = errReader{err}
	}
	r.Body = &replayBody{Reader: io.MultiReader(bytes.NewReader(buf.Bytes()), rest), closer: r.Body}
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
