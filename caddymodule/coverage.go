package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/authtap/authtap/admin"
	"github.com/authtap/authtap/rules"
)

// Coverage: successful mutations (POST, PUT, PATCH, DELETE answered 2xx) that
// no rule matched are counted per method and route shape (rules.RouteShape)
// in authtap_unmatched_total{method,route}, and a few redacted sample
// exchanges of each shape are kept in Redis (admin.Coverage), for GET
// /unmatched and `authtap rules suggest`.
//
// What it costs, by route:
//
//   - GET, HEAD, OPTIONS (and any other method) on a route no rule can match:
//     nothing; they pass untouched, unwrapped, as without coverage.
//   - A mutation on a route no rule can match, whose shape has its samples:
//     the shape is computed and looked up before forwarding (no allocation),
//     the response writer is wrapped by a pooled status recorder, and a 2xx
//     adds one to a counter. Nothing is buffered.
//   - A mutation of a shape that still needs samples: its request body is
//     read ahead up to admin.MaxSampleBody (4 KiB; a larger body is not
//     sampled) and the first 4 KiB of a 2xx response are copied as they
//     stream by; the response is never held. Redaction and the Redis write
//     happen later, on the coverage goroutine. Shapes not seen yet are
//     sampled at most coverageProbeRate times a second, so that a flood of
//     mutations to ever new paths (which mostly answer 404) is counted only.
//   - A candidate route (some rule can match it) that no rule matched: the
//     handler already holds the exchange; a sample costs a copy of up to 4
//     KiB per body, and a read ahead of the request body when no rule reads it.
//
// Samples go through a bounded queue (coverageQueueSize); when it is full, or
// Redis is down or slow (coverageWriteTimeout), the sample is dropped and
// counted in authtap_unmatched_samples_dropped_total{reason}; the request is
// never slowed or failed by it. Counts are added up in memory and reported to
// Redis every coverageFlushInterval (kept while Redis is down).
//
// Label cardinality is bounded whatever the client sends: a route shape is at
// most rules.MaxShapeSegments segments of at most rules.MaxShapeSegmentLen
// plain ASCII bytes, the method is one of four, and after maxUnmatchedSeries
// distinct series new shapes are counted under route="other" (and are not
// sampled). The handler's own traffic (authtap_admin behind the same
// handler, lookups coming back through Caddy) is never counted.

// CoverageConfig configures the coverage of the handler (see Handler.Coverage).
type CoverageConfig struct {
	// Disabled turns coverage off: unmatched mutations are neither counted
	// nor sampled, and every route no rule can match passes untouched.
	// Default false.
	Disabled bool `json:"disabled,omitempty"`
	// Samples is how many redacted sample exchanges of each route shape are
	// kept in Redis, at most 10 (admin.MaxUnmatchedSamples). A negative
	// value keeps none: shapes are counted only. Default 3.
	Samples int `json:"samples,omitempty"`
}

// Coverage tuning. Variables so tests can shorten them.
var (
	// coverageFlushInterval is how often counts are reported to Redis.
	coverageFlushInterval = 2 * time.Second
	// coverageWriteTimeout bounds one Redis write of coverage.
	coverageWriteTimeout = time.Second
)

const (
	// coverageQueueSize bounds the samples waiting for the coverage goroutine.
	coverageQueueSize = 64
	// coverageProbeRate is how many exchanges per second of shapes not seen
	// yet may be sampled (their bodies read ahead) by one Redis's handlers.
	coverageProbeRate = 20
	// maxUnmatchedSeries bounds the series of authtap_unmatched_total; the
	// shapes past it are counted as route "other".
	maxUnmatchedSeries = admin.MaxUnmatchedShapes
	// routeOther is the route label of the shapes past the cap.
	routeOther = "other"
	// coverageReportBatch is how many shapes one report script carries.
	coverageReportBatch = 100
)

// Reasons of authtap_unmatched_samples_dropped_total.
const (
	dropQueueFull = "queue_full"
	dropRedis     = "redis"
	dropTooLarge  = "too_large"
	dropShapes    = "shapes_full"
)

// isMutation reports the methods coverage counts.
func isMutation(method string) bool {
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return true
	}
	return false
}

// appendShapeKey appends "METHOD route-shape", the key of a shape.
func appendShapeKey(dst []byte, method, path string) []byte {
	dst = append(dst, method...)
	dst = append(dst, ' ')
	return rules.AppendRouteShape(dst, path)
}

// unmatchedMetricSet holds the coverage metrics. They are process-wide, so
// that the series cap holds across reloads and backends, and are registered
// in each config's registry.
type unmatchedMetricSet struct {
	total   *prometheus.CounterVec // method, route
	dropped *prometheus.CounterVec // reason

	mu     sync.Mutex
	series map[[2]string]prometheus.Counter
}

var unmatchedMetrics = newUnmatchedMetricSet()

func newUnmatchedMetricSet() *unmatchedMetricSet {
	return &unmatchedMetricSet{
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "authtap", Name: "unmatched_total",
			Help: "Successful mutations (POST, PUT, PATCH, DELETE answered 2xx) that no rule matched, by method and route shape (id-like segments as {id}); past 500 shapes, route=\"other\".",
		}, []string{"method", "route"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "authtap", Name: "unmatched_samples_dropped_total",
			Help: "Coverage samples not kept, by reason: queue_full (the sample queue was full), redis (Redis down, slow or failing), too_large, shapes_full (Redis keeps the most shapes already).",
		}, []string{"reason"}),
		series: map[[2]string]prometheus.Counter{},
	}
}

// registerIn registers the coverage metrics in reg (nil: none).
func (m *unmatchedMetricSet) registerIn(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{m.total, m.dropped} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// counter returns the counter of a shape, or of route "other" once
// maxUnmatchedSeries series exist.
func (m *unmatchedMetricSet) counter(method, route string) prometheus.Counter {
	m.mu.Lock()
	defer m.mu.Unlock()
	k := [2]string{method, route}
	if c := m.series[k]; c != nil {
		return c
	}
	if len(m.series) >= maxUnmatchedSeries {
		k[1] = routeOther
		if c := m.series[k]; c != nil {
			return c
		}
	}
	c := m.total.WithLabelValues(k[0], k[1])
	m.series[k] = c
	return c
}

func (m *unmatchedMetricSet) drop(reason string) { m.dropped.WithLabelValues(reason).Inc() }

// shapeEntry is one route shape a backend's handlers have seen.
type shapeEntry struct {
	method, route string
	counter       prometheus.Counter
	other         bool // the overflow entry of a method: counted only

	pending  atomic.Int64 // counted since the last report
	samples  atomic.Int32 // samples kept in Redis or on their way
	inflight atomic.Int32 // samples on their way
	refused  atomic.Bool  // Redis keeps the most shapes and not this one
}

// count records one uncovered exchange.
func (e *shapeEntry) count() {
	e.counter.Inc()
	if !e.other {
		e.pending.Add(1)
	}
}

// wantsSample reports whether the shape has fewer than keep samples.
func (e *shapeEntry) wantsSample(keep int32) bool {
	return !e.other && !e.refused.Load() && e.samples.Load() < keep
}

// reserve takes one of the shape's keep sample slots.
func (e *shapeEntry) reserve(keep int32) bool {
	for {
		n := e.samples.Load()
		if e.other || e.refused.Load() || n >= keep {
			return false
		}
		if e.samples.CompareAndSwap(n, n+1) {
			e.inflight.Add(1)
			return true
		}
	}
}

// settle ends a reserved sample: kept, or dropped (its slot is free again).
func (e *shapeEntry) settle(kept bool) {
	if !kept {
		e.samples.Add(-1)
	}
	e.inflight.Add(-1)
}

// unmatchedStore is the part of admin.Coverage the coverage goroutine uses.
type unmatchedStore interface {
	Report(ctx context.Context, counts []admin.UnmatchedCount) ([]int, error)
	AddSample(ctx context.Context, method, route string, s admin.UnmatchedSample, keep int) (int, error)
}

// coverage is one Redis's coverage: the shapes its handlers have seen and
// the goroutine that reports them. It lives in the backend, so it outlives
// config reloads.
type coverage struct {
	store  unmatchedStore
	down   func() bool // the backend's circuit: Redis taken for down
	logger atomic.Pointer[zap.Logger]

	mu     sync.RWMutex
	shapes map[string]*shapeEntry // "METHOD route"
	other  map[string]*shapeEntry // by method: the shapes past the cap

	probeSec  atomic.Int64
	probeUsed atomic.Int32

	queue chan *pendingSample
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
}

// newCoverage starts the coverage goroutine of store.
func newCoverage(store unmatchedStore, down func() bool) *coverage {
	c := &coverage{
		store: store, down: down,
		shapes: map[string]*shapeEntry{}, other: map[string]*shapeEntry{},
		queue: make(chan *pendingSample, coverageQueueSize),
		stop:  make(chan struct{}), done: make(chan struct{}),
	}
	c.logger.Store(zap.NewNop())
	go c.run()
	return c
}

// close reports what is counted (within coverageWriteTimeout) and stops the
// goroutine; samples still queued are dropped.
func (c *coverage) close() {
	c.once.Do(func() { close(c.stop) })
	<-c.done
}

// lookup returns the shape of key, nil when it was not seen yet. It does not
// allocate.
func (c *coverage) lookup(key []byte) *shapeEntry {
	c.mu.RLock()
	e := c.shapes[string(key)]
	c.mu.RUnlock()
	return e
}

// entry returns the shape of key, making it (the first 2xx of a shape); past
// admin.MaxUnmatchedShapes shapes, the method's overflow entry.
func (c *coverage) entry(key []byte) *shapeEntry {
	if e := c.lookup(key); e != nil {
		return e
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.shapes[string(key)]; e != nil {
		return e
	}
	k := string(key)
	method, route, _ := strings.Cut(k, " ")
	if len(c.shapes) >= admin.MaxUnmatchedShapes {
		e := c.other[method]
		if e == nil {
			e = &shapeEntry{method: method, route: routeOther, counter: unmatchedMetrics.counter(method, routeOther), other: true}
			c.other[method] = e
		}
		return e
	}
	e := &shapeEntry{method: method, route: route, counter: unmatchedMetrics.counter(method, route)}
	c.shapes[k] = e
	return e
}

// probe reports whether an exchange of a shape not seen yet may be sampled:
// at most coverageProbeRate a second.
func (c *coverage) probe() bool {
	now := time.Now().Unix()
	if sec := c.probeSec.Load(); sec != now && c.probeSec.CompareAndSwap(sec, now) {
		c.probeUsed.Store(0)
	}
	return c.probeUsed.Add(1) <= coverageProbeRate
}

// submit queues a sample for the coverage goroutine, or drops it at once
// when the queue is full.
func (c *coverage) submit(ps *pendingSample) {
	select {
	case c.queue <- ps:
	default:
		ps.entry.settle(false)
		unmatchedMetrics.drop(dropQueueFull)
	}
}

// run reports counts every coverageFlushInterval and writes samples as they come.
func (c *coverage) run() {
	defer close(c.done)
	t := time.NewTicker(coverageFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			c.flush()
			for {
				select {
				case ps := <-c.queue:
					ps.entry.settle(false)
				default:
					return
				}
			}
		case ps := <-c.queue:
			c.write(ps)
		case <-t.C:
			c.flush()
		}
	}
}

// flush reports the counts of every shape seen since the last report. What
// Redis does not take is counted again next time. Redis's answer says how
// many samples each shape keeps: a shape whose samples were deleted (DELETE
// /unmatched) or expired is sampled again.
func (c *coverage) flush() {
	var entries []*shapeEntry
	var counts []admin.UnmatchedCount
	c.mu.RLock()
	for _, e := range c.shapes {
		if n := e.pending.Swap(0); n > 0 {
			entries = append(entries, e)
			counts = append(counts, admin.UnmatchedCount{Method: e.method, Route: e.route, Count: n})
		}
	}
	c.mu.RUnlock()
	for len(entries) > 0 {
		n := min(len(entries), coverageReportBatch)
		c.report(entries[:n], counts[:n])
		entries, counts = entries[n:], counts[n:]
	}
}

func (c *coverage) report(entries []*shapeEntry, counts []admin.UnmatchedCount) {
	var res []int
	err := errRedisDown
	if !c.down() {
		ctx, cancel := context.WithTimeout(context.Background(), coverageWriteTimeout)
		res, err = c.store.Report(ctx, counts)
		cancel()
	}
	if err != nil || len(res) != len(entries) {
		for i, e := range entries {
			e.pending.Add(counts[i].Count)
		}
		if l := c.logger.Load(); l != nil {
			l.Debug("authtap: coverage counts not reported to redis; kept for the next report", errorField(err))
		}
		return
	}
	for i, e := range entries {
		kept := res[i]
		e.refused.Store(kept < 0)
		if kept >= 0 && e.inflight.Load() == 0 && int(e.samples.Load()) > kept {
			e.samples.Store(int32(kept))
		}
	}
}

// write redacts one sample and keeps it in Redis.
func (c *coverage) write(ps *pendingSample) {
	if c.down() {
		ps.entry.settle(false)
		unmatchedMetrics.drop(dropRedis)
		return
	}
	s := ps.build()
	ctx, cancel := context.WithTimeout(context.Background(), coverageWriteTimeout)
	n, err := c.store.AddSample(ctx, ps.entry.method, ps.entry.route, s, ps.keep)
	cancel()
	switch {
	case errors.Is(err, admin.ErrSampleTooLarge):
		ps.entry.settle(false)
		unmatchedMetrics.drop(dropTooLarge)
	case err != nil:
		ps.entry.settle(false)
		unmatchedMetrics.drop(dropRedis)
		if l := c.logger.Load(); l != nil {
			l.Debug("authtap: coverage sample dropped", errorField(err))
		}
	case n < 0:
		ps.entry.refused.Store(true)
		ps.entry.settle(false)
		unmatchedMetrics.drop(dropShapes)
	default:
		ps.entry.settle(true)
	}
}

// pendingSample is one exchange to sample, as captured on the request's
// goroutine: raw and unredacted, so it never leaves memory as it is; build
// redacts it on the coverage goroutine.
type pendingSample struct {
	entry *shapeEntry
	keep  int
	at    time.Time

	method, path, query string
	reqHeader           http.Header
	reqBody             []byte
	reqNote             string

	status      int
	respHeader  http.Header
	respBody    []byte
	respDecoded bool // respBody is already decoded (Content-Encoding undone)
	respNote    string
}

// Notes of a body a sample does not keep.
var (
	noteTooLarge = fmt.Sprintf("larger than %d KiB: not kept", admin.MaxSampleBody>>10)
	noteMaxBody  = "larger than max_body: not kept"
)

// newPendingSample starts a sample of r: the request line and a copy of its
// headers.
func newPendingSample(r *http.Request) *pendingSample {
	return &pendingSample{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery, reqHeader: r.Header.Clone()}
}

// build redacts the sample: paths, queries, headers and bodies go through
// rules' redaction; bodies that are not JSON (or form-encoded) are not kept.
func (ps *pendingSample) build() admin.UnmatchedSample {
	s := admin.UnmatchedSample{At: ps.at.UTC()}
	s.Request = admin.SampleRequest{
		Method: ps.method,
		Path:   cutText(rules.RedactPath(ps.path), admin.MaxSamplePathLen),
		Query:  cutText(rules.RedactQuery(cutText(ps.query, admin.MaxSamplePathLen)), admin.MaxSamplePathLen),
		Header: sampleHeader(ps.reqHeader),
	}
	s.Request.Body, s.Request.BodyNote = sampleBody(ps.reqBody, ps.reqNote, ps.reqHeader, true)
	s.Response = admin.SampleResponse{Status: ps.status, Header: sampleHeader(ps.respHeader)}
	s.Response.Body, s.Response.BodyNote = sampleBody(ps.respBody, ps.respNote, ps.respHeader, ps.respDecoded)
	return s
}

// sampleHeader keeps at most admin.MaxSampleHeaders headers (Content-Type
// and Location first, then by name), one value each (several joined with
// ", "), redacted and cut to admin.MaxSampleHeaderLen bytes.
func sampleHeader(h http.Header) http.Header {
	if len(h) == 0 {
		return nil
	}
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	rank := func(k string) int {
		switch k {
		case "Content-Type":
			return 0
		case "Location":
			return 1
		}
		return 2
	}
	slices.SortFunc(names, func(a, b string) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return ra - rb
		}
		return strings.Compare(a, b)
	})
	out := make(http.Header, min(len(names), admin.MaxSampleHeaders))
	for _, k := range names {
		if len(out) == admin.MaxSampleHeaders {
			break
		}
		name := cutText(k, 64)
		v := rules.RedactHeaderValue(k, strings.Join(h[k], ", "))
		out[name] = []string{cutText(v, admin.MaxSampleHeaderLen)}
	}
	return out
}

// sampleBody returns a body as redacted JSON, or why it is not kept.
func sampleBody(body []byte, note string, h http.Header, decoded bool) (json.RawMessage, string) {
	if note != "" {
		return nil, note
	}
	if len(body) == 0 {
		return nil, ""
	}
	if !decoded {
		if enc := h.Values("Content-Encoding"); len(enc) > 0 {
			d, err := decodeBody(enc, body, admin.MaxSampleBody)
			switch {
			case errors.Is(err, errTooLarge):
				return nil, noteTooLarge
			case err != nil:
				return nil, "compressed body that could not be decoded: not kept"
			}
			body = d
		}
	}
	if len(body) > admin.MaxSampleBody {
		return nil, noteTooLarge
	}
	ct := h.Get("Content-Type")
	red, ok := rules.RedactBody(body, ct)
	if !ok {
		mt := "no Content-Type"
		if ct != "" {
			mt = "unparsable Content-Type"
			if m, _, err := mime.ParseMediaType(ct); err == nil {
				mt = cutText(m, 64)
			}
		}
		return nil, fmt.Sprintf("not JSON (%s, %d bytes): not kept", mt, len(body))
	}
	return red, ""
}

// cutText cuts s to at most max bytes at a character boundary.
func cutText(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// captureSampleBody reads the request body ahead (readAhead), up to
// admin.MaxSampleBody. A body declared or found larger is not kept (its note
// says so).
func captureSampleBody(r *http.Request) (body []byte, note string) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, ""
	}
	if r.ContentLength > admin.MaxSampleBody {
		return nil, noteTooLarge
	}
	buf, err := readAhead(r, admin.MaxSampleBody)
	switch {
	case err != nil:
		return nil, "could not be read: not kept"
	case buf.Len() > admin.MaxSampleBody:
		return nil, noteTooLarge
	}
	return buf.Bytes(), ""
}

// covWriter wraps the response writer of an uncovered mutation: it records
// the final status and, for a sample, copies the first admin.MaxSampleBody
// bytes of a 2xx body as they stream by. It never holds or changes a byte.
// It is pooled.
type covWriter struct {
	caddyhttp.ResponseWriterWrapper

	status   int
	hijacked bool
	own      bool          // authtap_admin answered: not counted (markOwnTraffic)
	tee      *bytes.Buffer // nil: status only
	teeOver  bool          // the body did not fit in the tee
}

var covWriterPool = sync.Pool{New: func() any { return new(covWriter) }}

func getCovWriter(w http.ResponseWriter, tee *bytes.Buffer) *covWriter {
	cw := covWriterPool.Get().(*covWriter)
	cw.ResponseWriter, cw.tee = w, tee
	return cw
}

// putCovWriter returns cw to the pool; a hijacked one is left to the GC.
func putCovWriter(cw *covWriter) {
	if cw.hijacked {
		return
	}
	*cw = covWriter{}
	covWriterPool.Put(cw)
}

// WriteHeader records the first final status (or 101) and passes code on.
func (cw *covWriter) WriteHeader(code int) {
	if cw.status == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		cw.status = code
	}
	cw.ResponseWriter.WriteHeader(code)
}

// Write passes p on, copying it aside while a sample wants it.
func (cw *covWriter) Write(p []byte) (int, error) {
	if cw.status == 0 {
		cw.status = http.StatusOK
	}
	n, err := cw.ResponseWriter.Write(p)
	if cw.tee != nil && !cw.teeOver {
		if cw.status < 200 || cw.status > 299 || cw.tee.Len()+n > admin.MaxSampleBody {
			cw.teeOver = true
		} else {
			cw.tee.Write(p[:n])
		}
	}
	return n, err
}

// ReadFrom keeps the underlying ReaderFrom (sendfile) unless a sample copies
// the body; then it copies through Write.
func (cw *covWriter) ReadFrom(r io.Reader) (int64, error) {
	if cw.status == 0 {
		cw.status = http.StatusOK
	}
	if cw.tee == nil || cw.teeOver {
		return cw.ResponseWriterWrapper.ReadFrom(r)
	}
	return io.Copy(writerOnly{cw}, r)
}

// FlushError flushes the underlying writer.
func (cw *covWriter) FlushError() error {
	if cw.status == 0 {
		cw.status = http.StatusOK
	}
	//nolint:bodyclose
	return http.NewResponseController(cw.ResponseWriter).Flush()
}

// Flush implements http.Flusher for handlers that assert it directly.
func (cw *covWriter) Flush() { _ = cw.FlushError() }

// Hijack hands the connection over; a hijacked exchange is not counted.
func (cw *covWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	cw.hijacked = true
	//nolint:bodyclose
	return http.NewResponseController(cw.ResponseWriter).Hijack()
}

// succeeded reports a 2xx answer (nothing written is a 200) that was not a
// protocol switch, a hijack or authtap's own.
func (cw *covWriter) succeeded() bool {
	s := cw.status
	if s == 0 {
		s = http.StatusOK
	}
	return !cw.hijacked && !cw.own && s >= 200 && s <= 299
}

// markOwnTraffic tells the authtap handler in front (through the writers
// Caddy stacked in between) that authtap itself answers this request, so
// that its mutations (a POST /webhooks on the management API) are not
// counted as uncovered.
func markOwnTraffic(w http.ResponseWriter) {
	for range 32 {
		switch x := w.(type) {
		case *covWriter:
			x.own = true
			return
		case *captureWriter:
			x.own = true
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return
		}
		w = u.Unwrap()
	}
}

// covPlan is what a candidate exchange that is a mutation knows for coverage.
type covPlan struct {
	key    []byte
	sample *pendingSample // nil: count only
}

// Interface guards
var (
	_ http.ResponseWriter = (*covWriter)(nil)
	_ http.Flusher        = (*covWriter)(nil)
	_ http.Hijacker       = (*covWriter)(nil)
	_ io.ReaderFrom       = (*covWriter)(nil)
)
