package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"

	"github.com/authtap/authtap/admin"
	"github.com/authtap/authtap/rules"
)

// fakeCovStore is an in-memory admin.Coverage.
type fakeCovStore struct {
	mu      sync.Mutex
	counts  map[string]int64 // "METHOD route"
	samples map[string][]admin.UnmatchedSample
	err     error         // every call fails with it
	block   chan struct{} // every call waits for it to close (or the context)
}

func newFakeCovStore() *fakeCovStore {
	return &fakeCovStore{counts: map[string]int64{}, samples: map[string][]admin.UnmatchedSample{}}
}

func (s *fakeCovStore) wait(ctx context.Context) error {
	s.mu.Lock()
	block, err := s.block, s.err
	s.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

func (s *fakeCovStore) Report(ctx context.Context, counts []admin.UnmatchedCount) ([]int, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, len(counts))
	for i, c := range counts {
		s.counts[c.Method+" "+c.Route] += c.Count
		out[i] = len(s.samples[c.Method+" "+c.Route])
	}
	return out, nil
}

func (s *fakeCovStore) AddSample(ctx context.Context, method, route string, sm admin.UnmatchedSample, keep int) (int, error) {
	if err := s.wait(ctx); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	k := method + " " + route
	s.samples[k] = append([]admin.UnmatchedSample{sm}, s.samples[k]...)
	if len(s.samples[k]) > keep {
		s.samples[k] = s.samples[k][:keep]
	}
	return len(s.samples[k]), nil
}

func (s *fakeCovStore) sampleList(key string) []admin.UnmatchedSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]admin.UnmatchedSample(nil), s.samples[key]...)
}

// covQueue is a fakeQueue that also gives the handler coverage.
type covQueue struct {
	*fakeQueue
	cov *coverage
}

func (q covQueue) coverage() *coverage { return q.cov }

type covEnv struct {
	*testEnv
	cov   *coverage
	store *fakeCovStore
	down  *bool
}

// newCoverageHandler provisions a handler with coverage on a fake store.
func newCoverageHandler(t testing.TB, ruleText string, mod func(*Handler)) *covEnv {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(file, []byte(ruleText), 0o600); err != nil {
		t.Fatal(err)
	}
	h := &Handler{Rules: []string{file}, ReloadInterval: -1}
	if mod != nil {
		mod(h)
	}
	store := newFakeCovStore()
	down := new(bool)
	var mu sync.Mutex
	cov := newCoverage(store, func() bool { mu.Lock(); defer mu.Unlock(); return *down })
	t.Cleanup(cov.close)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	q := &fakeQueue{}
	if err := h.provision(ctx, covQueue{q, cov}); err != nil {
		t.Fatalf("provision: %v", err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	core, logs := observer.New(zapcore.DebugLevel)
	h.logger = zap.New(core)
	cov.logger.Store(h.logger)
	return &covEnv{testEnv: &testEnv{h: h, q: q, logs: logs, dir: dir, file: file}, cov: cov, store: store, down: down}
}

// unmatchedCount reads authtap_unmatched_total{method,route}.
func unmatchedCount(method, route string) float64 {
	return counterValue(unmatchedMetrics.total.WithLabelValues(method, route))
}

func droppedCount(reason string) float64 {
	return counterValue(unmatchedMetrics.dropped.WithLabelValues(reason))
}

// resetUnmatchedMetrics forgets every coverage series (the metrics are
// process-wide).
func resetUnmatchedMetrics() {
	m := unmatchedMetrics
	m.mu.Lock()
	defer m.mu.Unlock()
	m.total.Reset()
	m.dropped.Reset()
	m.series = map[[2]string]prometheus.Counter{}
}

// answer is an upstream that answers status and body.
func answer(status int, body string) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		_, _ = io.Copy(io.Discard, r.Body)
		if body != "" {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(status)
		_, err := io.WriteString(w, body)
		return err
	}
}

func (e *covEnv) send(method, path, body string, header http.Header, next func(http.ResponseWriter, *http.Request) error) *httptest.ResponseRecorder {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	for k, v := range header {
		req.Header[k] = v
	}
	w := httptest.NewRecorder()
	if err := e.serve(w, req, next); err != nil {
		e.h.logger.Error("serve failed")
	}
	return w
}

// waitSamples waits until the store keeps n samples for key.
func (e *covEnv) waitSamples(t *testing.T, key string, n int) []admin.UnmatchedSample {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := e.store.sampleList(key)
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const secretBearer = "Bearer tok_9f8e7d6c5b4a39281706"

func TestCoverageCountsUncoveredMutations(t *testing.T) {
	resetUnmatchedMetrics()
	e := newCoverageHandler(t, testRules, nil)
	hdr := http.Header{"Authorization": {secretBearer}, "Cookie": {"session=s3cr3t-cookie"}, "Content-Type": {"application/json"}}
	body := `{"current_password":"hunter2-old","new_password":"hunter2-new","note":"hi"}`
	// an uncovered route: counted and sampled
	for range 2 {
		w := e.send("PUT", "/api/users/u_123/password", body, hdr, answer(200, `{"id":"u_123","updated":true,"token":"t_secret_value"}`))
		if w.Code != 200 || !strings.Contains(w.Body.String(), "t_secret_value") {
			t.Fatalf("response changed: %d %s", w.Code, w.Body)
		}
	}
	// not counted: GET, a failed mutation, a lowercase method
	e.send("GET", "/api/users/u_123/password", "", nil, answer(200, `{}`))
	e.send("PUT", "/api/users/u_124/password", body, hdr, answer(404, `{}`))
	e.send("DELETE", "/api/users/u_9/sessions", "", nil, answer(500, ""))
	// a candidate route no rule matched (user-created needs user.id in the response)
	e.send("POST", "/api/users", `{"email":"a@x.test","password":"pw"}`, hdr, answer(201, `{"ok":true}`))
	// a candidate route a rule matched: not counted
	e.send("POST", "/api/users", `{"email":"b@x.test"}`, nil, answer(201, `{"user":{"id":"u_2"}}`))

	if n := unmatchedCount("PUT", "/api/users/{id}/password"); n != 2 {
		t.Errorf("PUT /api/users/{id}/password counted %v times, want 2", n)
	}
	if n := unmatchedCount("POST", "/api/users"); n != 1 {
		t.Errorf("POST /api/users counted %v times, want 1", n)
	}
	if n := unmatchedCount("DELETE", "/api/users/{id}/sessions"); n != 0 {
		t.Errorf("a 500 was counted")
	}
	if len(e.q.got()) != 1 {
		t.Errorf("events = %v", e.q.types())
	}

	samples := e.waitSamples(t, "PUT /api/users/{id}/password", 2)
	if len(samples) != 2 {
		t.Fatalf("samples = %+v", samples)
	}
	s := samples[0]
	if s.Request.Method != "PUT" || s.Request.Path != "/api/users/u_123/password" || s.Response.Status != 200 {
		t.Errorf("sample = %+v", s)
	}
	if got := string(s.Request.Body); got != `{"current_password":"[REDACTED]","new_password":"[REDACTED]","note":"hi"}` {
		t.Errorf("request body = %s", got)
	}
	if got := string(s.Response.Body); got != `{"id":"u_123","updated":true,"token":"[REDACTED]"}` {
		t.Errorf("response body = %s", got)
	}
	if got := s.Request.Header.Get("Authorization"); got != rules.Redacted {
		t.Errorf("Authorization = %q", got)
	}
	cand := e.waitSamples(t, "POST /api/users", 1)
	if len(cand) != 1 || string(cand[0].Request.Body) != `{"email":"a@x.test","password":"[REDACTED]"}` || string(cand[0].Response.Body) != `{"ok":true}` {
		t.Errorf("candidate sample = %+v", cand)
	}
	for _, key := range []string{"PUT /api/users/{id}/password", "POST /api/users"} {
		for _, sm := range e.store.sampleList(key) {
			b := fmt.Sprintf("%+v %s %s", sm, sm.Request.Body, sm.Response.Body)
			for _, secret := range []string{"hunter2", "tok_9f8e7d6c5b4a39281706", "s3cr3t-cookie", "t_secret_value", `"pw"`} {
				if strings.Contains(b, secret) {
					t.Errorf("sample of %s carries %q: %s", key, secret, b)
				}
			}
		}
	}

	assertNoSecrets(t, e.logs, "hunter2", "tok_9f8e7d6c5b4a39281706", "s3cr3t-cookie", "t_secret_value")

	// counts reach the store
	e.cov.flush()
	e.store.mu.Lock()
	got := e.store.counts["PUT /api/users/{id}/password"]
	e.store.mu.Unlock()
	if got != 2 {
		t.Errorf("reported count = %d", got)
	}
}

// Once a shape has its samples, its mutations are only counted: the request
// body streams to the upstream as it came, and nothing is buffered.
func TestCoverageStopsBufferingOnceSampled(t *testing.T) {
	resetUnmatchedMetrics()
	e := newCoverageHandler(t, testRules, nil)
	var bodies []string
	next := func(w http.ResponseWriter, r *http.Request) error {
		_, replayed := r.Body.(*replayBody)
		bodies = append(bodies, fmt.Sprint(replayed))
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(204)
		return nil
	}
	for range 3 {
		e.send("POST", "/api/orgs/org-42/invites", `{"email":"x@y.test"}`, nil, next)
	}
	e.waitSamples(t, "POST /api/orgs/{id}/invites", 3)
	for range 3 {
		e.send("POST", "/api/orgs/org-42/invites", `{"email":"x@y.test"}`, nil, next)
	}
	if want := "true true true false false false"; strings.Join(bodies, " ") != want {
		t.Errorf("body read ahead: %v, want %s", bodies, want)
	}
	if n := unmatchedCount("POST", "/api/orgs/{id}/invites"); n != 6 {
		t.Errorf("counted %v, want 6", n)
	}
	// a shape whose samples were cleared in Redis is sampled again
	e.store.mu.Lock()
	delete(e.store.samples, "POST /api/orgs/{id}/invites")
	e.store.mu.Unlock()
	e.cov.flush()
	e.send("POST", "/api/orgs/org-42/invites", `{"email":"x@y.test"}`, nil, next)
	if bodies[len(bodies)-1] != "true" {
		t.Error("a cleared shape was not sampled again")
	}
}

func TestCoverageOffAndCountOnly(t *testing.T) {
	resetUnmatchedMetrics()
	off := newCoverageHandler(t, testRules, func(h *Handler) { h.Coverage = &CoverageConfig{Disabled: true} })
	if off.h.cov != nil {
		t.Fatal("coverage off still has coverage")
	}
	off.send("POST", "/x/y", "{}", nil, answer(201, "{}"))
	if n := unmatchedCount("POST", "/x/y"); n != 0 {
		t.Errorf("coverage off counted %v", n)
	}
	none := newCoverageHandler(t, testRules, func(h *Handler) { h.Coverage = &CoverageConfig{Samples: -1} })
	var replayed bool
	none.send("POST", "/x/z", "{}", nil, func(w http.ResponseWriter, r *http.Request) error {
		_, replayed = r.Body.(*replayBody)
		w.WriteHeader(201)
		return nil
	})
	if n := unmatchedCount("POST", "/x/z"); n != 1 || replayed {
		t.Errorf("count only: counted %v, body read ahead %v", n, replayed)
	}
	if (&Handler{Rules: []string{"r"}, Coverage: &CoverageConfig{Samples: 11}}).Validate() == nil {
		t.Error("samples 11 validated")
	}
}

// authtap_admin behind the authtap handler (the Caddyfile of the README) is
// authtap's own traffic: its mutations are not counted.
func TestCoverageSkipsOwnTraffic(t *testing.T) {
	resetUnmatchedMetrics()
	e := newCoverageHandler(t, testRules, nil)
	own := func(w http.ResponseWriter, r *http.Request) error {
		// as Caddy stacks writers between the handlers
		markOwnTraffic(&struct{ *captureWriterWrapper }{&captureWriterWrapper{w}})
		w.WriteHeader(201)
		return nil
	}
	e.send("POST", "/_authtap/webhooks", "{}", nil, own)
	e.send("POST", "/api/users", "{}", nil, own) // a candidate route
	if n := unmatchedCount("POST", "/_authtap/webhooks") + unmatchedCount("POST", "/api/users"); n != 0 {
		t.Errorf("own traffic counted %v times", n)
	}
}

// captureWriterWrapper stands for a writer Caddy puts between two handlers.
type captureWriterWrapper struct{ http.ResponseWriter }

func (c *captureWriterWrapper) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// Redis down, slow or failing: the request is unaffected, samples are
// dropped and counted, counts are kept for later.
func TestCoverageRedisDownNeverSlowsRequests(t *testing.T) {
	resetUnmatchedMetrics()
	e := newCoverageHandler(t, testRules, nil)
	e.store.mu.Lock()
	e.store.block = make(chan struct{}) // Redis hangs
	e.store.mu.Unlock()
	defer close(e.store.block)
	start := time.Now()
	for i := range 200 {
		w := e.send("POST", fmt.Sprintf("/hang/r%d/x", i%50), `{"a":1}`, nil, answer(201, `{"id":1}`))
		if w.Code != 201 || w.Body.String() != `{"id":1}` {
			t.Fatalf("response %d %s", w.Code, w.Body)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("200 requests took %v with Redis hanging", d)
	}
	if droppedCount(dropQueueFull) == 0 {
		t.Error("no sample was counted as dropped while Redis hangs")
	}
	// failing Redis: samples dropped as "redis", counts kept for the next report
	resetUnmatchedMetrics()
	f := newCoverageHandler(t, testRules, nil)
	f.store.mu.Lock()
	f.store.err = errors.New("connection refused")
	f.store.mu.Unlock()
	f.send("POST", "/fail/u_1", `{}`, nil, answer(201, `{}`))
	deadline := time.Now().Add(5 * time.Second)
	for droppedCount(dropRedis) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if droppedCount(dropRedis) != 1 {
		t.Errorf("dropped(redis) = %v", droppedCount(dropRedis))
	}
	f.cov.flush()
	f.store.mu.Lock()
	f.store.err = nil
	f.store.mu.Unlock()
	f.cov.flush()
	f.store.mu.Lock()
	n := f.store.counts["POST /fail/{id}"]
	f.store.mu.Unlock()
	if n != 1 {
		t.Errorf("count after Redis came back = %d, want 1", n)
	}
	// the dropped sample's slot is free again: the next exchange is sampled
	f.send("POST", "/fail/u_2", `{}`, nil, answer(201, `{}`))
	if got := f.waitSamples(t, "POST /fail/{id}", 1); len(got) != 1 {
		t.Error("no sample after Redis came back")
	}
}

// 100k distinct random paths: the metric keeps at most maxUnmatchedSeries
// series (plus route="other"), its exposition stays bounded, and no more
// than admin.MaxUnmatchedShapes shapes are tracked or sampled.
func TestCoverageHostilePathsBounded(t *testing.T) {
	resetUnmatchedMetrics()
	e := newCoverageHandler(t, testRules, nil)
	r := rand.New(rand.NewPCG(7, 9))
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~%@ {}"
	methods := []string{"POST", "PUT", "PATCH", "DELETE"}
	seg := func() string {
		b := make([]byte, 1+r.IntN(80))
		for i := range b {
			b[i] = letters[r.IntN(len(letters))]
		}
		return string(b)
	}
	ok := func(w http.ResponseWriter, _ *http.Request) error { w.WriteHeader(200); return nil }
	for i := range 100_000 {
		var p strings.Builder
		for range 1 + r.IntN(30) {
			p.WriteString("/" + seg())
		}
		req := httptest.NewRequest("GET", "/", nil)
		req.Method = methods[i&3]
		req.URL.Path = p.String()
		_ = e.h.ServeHTTP(httptest.NewRecorder(), req, handlerFunc(ok))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(unmatchedMetrics.total)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var series, other int
	var total float64
	var text bytes.Buffer
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			series++
			total += m.GetCounter().GetValue()
			for _, l := range m.GetLabel() {
				text.WriteString(l.GetName() + "=" + l.GetValue() + "\n")
				if l.GetName() == "route" && l.GetValue() == routeOther {
					other++
				}
				if l.GetName() == "route" && len(l.GetValue()) > rules.MaxShapeSegments*(rules.MaxShapeSegmentLen+1)+len("/"+rules.ShapeRest) {
					t.Errorf("route label of %d bytes", len(l.GetValue()))
				}
			}
		}
	}
	if series > maxUnmatchedSeries+4 || other == 0 || total != 100_000 {
		t.Errorf("%d series (%d other), %v counted; want at most %d series, all 100000 counted", series, other, total, maxUnmatchedSeries+4)
	}
	if text.Len() > 600<<10 {
		t.Errorf("metric labels take %d bytes", text.Len())
	}
	e.cov.mu.RLock()
	shapes := len(e.cov.shapes)
	e.cov.mu.RUnlock()
	if shapes > admin.MaxUnmatchedShapes {
		t.Errorf("%d shapes tracked", shapes)
	}
	time.Sleep(50 * time.Millisecond)
	e.store.mu.Lock()
	sampled := len(e.store.samples)
	e.store.mu.Unlock()
	if sampled > admin.MaxUnmatchedShapes {
		t.Errorf("%d shapes sampled", sampled)
	}
	t.Logf("%d series (%d other), %d shapes, %d sampled, %d bytes of labels", series, other, shapes, sampled, text.Len())
}

// The no-match path: GET passes untouched, allocation-free; an uncovered
// mutation of a shape that has its samples is counted without allocating.
func TestCoverageNoMatchAllocatesNothing(t *testing.T) {
	resetUnmatchedMetrics()
	e := newCoverageHandler(t, testRules, nil)
	next := handlerFunc(func(w http.ResponseWriter, _ *http.Request) error { w.WriteHeader(204); return nil })
	w := httptest.NewRecorder()
	get := httptest.NewRequest("GET", "/static/app.js", nil)
	post := httptest.NewRequest("POST", "/api/things/t_1/archive", nil)
	for range 5 {
		_ = e.h.ServeHTTP(w, post, next)
	}
	e.waitSamples(t, "POST /api/things/{id}/archive", 3)
	if n := testing.AllocsPerRun(200, func() { _ = e.h.ServeHTTP(w, get, next) }); n != 0 {
		t.Errorf("GET on a no-match route allocates %v times", n)
	}
	if n := testing.AllocsPerRun(200, func() { _ = e.h.ServeHTTP(w, post, next) }); n != 0 {
		t.Errorf("counting an uncovered mutation allocates %v times", n)
	}
	var m dto.Metric
	_ = unmatchedMetrics.total.WithLabelValues("POST", "/api/things/{id}/archive").Write(&m)
	if m.GetCounter().GetValue() < 200 {
		t.Errorf("counted %v", m.GetCounter().GetValue())
	}
}

// Coverage benchmarks (BENCHMARKS.md, "Coverage"). The path is a realistic
// uncovered route; next answers 204 at once, so the figures are authtap's own.
const benchUncoveredPath = "/api/users/usr_01J8ZQ4W3XKQ7M2N5P6R8S9T0V/password"

func benchNext() handlerFunc {
	return handlerFunc(func(w http.ResponseWriter, _ *http.Request) error { w.WriteHeader(204); return nil })
}

// BenchmarkNoMatchGetCoverage is a GET on a route no rule can match, with
// coverage on: it must cost what BenchmarkNonCandidate costs.
func BenchmarkNoMatchGetCoverage(b *testing.B) {
	e := newCoverageHandler(b, testRules, nil)
	req := httptest.NewRequest(http.MethodGet, "/static/app.js", nil)
	w := httptest.NewRecorder()
	next := handlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	b.ReportAllocs()
	for b.Loop() {
		_ = e.h.ServeHTTP(w, req, next)
	}
}

// BenchmarkUncoveredMutation is the steady state of an uncovered route: its
// shape has its samples, so a 2xx is counted only.
func BenchmarkUncoveredMutation(b *testing.B) {
	e := newCoverageHandler(b, testRules, nil)
	w := httptest.NewRecorder()
	for range 3 {
		_ = e.h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, benchUncoveredPath, strings.NewReader(`{"a":1}`)), benchNext())
	}
	for deadline := time.Now().Add(5 * time.Second); len(e.store.sampleList("POST /api/users/{id}/password")) < 3; {
		if time.Now().After(deadline) {
			b.Fatal("no samples")
		}
		time.Sleep(time.Millisecond)
	}
	req := httptest.NewRequest(http.MethodPost, benchUncoveredPath, nil)
	next := benchNext()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		_ = e.h.ServeHTTP(w, req, next)
	}
}

// BenchmarkUncoveredMutationCoverageOff is the baseline: the same mutation
// with coverage off, which is the no-match path as it was before coverage.
func BenchmarkUncoveredMutationCoverageOff(b *testing.B) {
	e := newCoverageHandler(b, testRules, func(h *Handler) { h.Coverage = &CoverageConfig{Disabled: true} })
	req := httptest.NewRequest(http.MethodPost, benchUncoveredPath, nil)
	w := httptest.NewRecorder()
	next := benchNext()
	b.ReportAllocs()
	for b.Loop() {
		_ = e.h.ServeHTTP(w, req, next)
	}
}

// BenchmarkUncoveredMutationSampling is what a sampled exchange costs the
// request's goroutine (only while its shape needs samples): the request line
// and headers copied, a 40-byte body read ahead, the response teed, the
// sample handed to the queue. The coverage goroutine is stopped, so that its
// redaction and Redis write (off the request's path) are not counted: the
// queue fills and the rest are dropped at once.
func BenchmarkUncoveredMutationSampling(b *testing.B) {
	benchSampling(b, func(h *Handler) {})
}

// BenchmarkUncoveredMutationSamplingBaseline is BenchmarkUncoveredMutationSampling
// with coverage off: the same requests (and their making) without sampling.
func BenchmarkUncoveredMutationSamplingBaseline(b *testing.B) {
	benchSampling(b, func(h *Handler) { h.Coverage = &CoverageConfig{Disabled: true} })
}

func benchSampling(b *testing.B, mod func(*Handler)) {
	e := newCoverageHandler(b, testRules, mod)
	e.cov.close()
	e.h.covKeep = 1 << 30 // every exchange is sampled
	w := httptest.NewRecorder()
	next := handlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(200)
		_, err := io.WriteString(w, `{"id":"u_1","ok":true}`)
		return err
	})
	body := []byte(`{"current_password":"x","new_password":"y"}`)
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, benchUncoveredPath, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		_ = e.h.ServeHTTP(w, req, next)
	}
}

// BenchmarkUncoveredMutationBaseline is next alone, without authtap.
func BenchmarkUncoveredMutationBaseline(b *testing.B) {
	req := httptest.NewRequest(http.MethodPost, benchUncoveredPath, nil)
	w := httptest.NewRecorder()
	next := benchNext()
	b.ReportAllocs()
	for b.Loop() {
		_ = next.ServeHTTP(w, req)
	}
}

// A batch envelope is covered when one of its sub-exchanges matched a rule;
// one whose sub-exchanges match nothing is a successful mutation no rule
// covered, counted (and sampled) under the envelope's own route shape.
func TestCoverageBatchEnvelope(t *testing.T) {
	resetUnmatchedMetrics()
	e := newCoverageHandler(t, `version: 1
rules:
  - name: scim-user-deleted
    match: {method: DELETE, path: "/scim/v2/Users/{id}", status: 204}
    emit: {type: user.deleted, subject: "{path.id}"}
  - name: scim-bulk
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "{item.path}"}
      response: {items: "{response.body.Operations}", status: "{item.status}"}
`, nil)
	hdr := http.Header{"Content-Type": {"application/scim+json"}}
	// a delete: covered
	e.send("POST", "/scim/v2/Bulk", `{"Operations":[{"method":"DELETE","path":"/Users/u_1"}]}`, hdr,
		answer(200, `{"Operations":[{"status":"204"}]}`))
	// a group change no rule covers: the envelope is uncovered
	e.send("POST", "/scim/v2/Bulk", `{"Operations":[{"method":"PATCH","path":"/Groups/g_1","data":{}}]}`, hdr,
		answer(200, `{"Operations":[{"status":"200"}]}`))
	// the delete failed: nothing applied, nothing matched, yet the envelope succeeded
	e.send("POST", "/scim/v2/Bulk", `{"Operations":[{"method":"DELETE","path":"/Users/u_2"}]}`, hdr,
		answer(200, `{"Operations":[{"status":"404"}]}`))
	// the whole batch failed: not a successful mutation
	e.send("POST", "/scim/v2/Bulk", `{"Operations":[{"method":"PATCH","path":"/Groups/g_1","data":{}}]}`, hdr,
		answer(400, `{"Operations":[]}`))
	if n := unmatchedCount("POST", "/scim/v2/Bulk"); n != 2 {
		t.Errorf("POST /scim/v2/Bulk counted %v times, want 2", n)
	}
	if evs := e.q.types(); len(evs) != 1 || evs[0] != "user.deleted" {
		t.Errorf("events = %v", evs)
	}
	s := e.waitSamples(t, "POST /scim/v2/Bulk", 2)
	var bodies []string
	for _, sm := range s {
		bodies = append(bodies, string(sm.Request.Body))
	}
	slices.Sort(bodies)
	if len(bodies) != 2 || !strings.Contains(bodies[0], "/Users/u_2") || !strings.Contains(bodies[1], "/Groups/g_1") {
		t.Errorf("samples of the envelope = %q", bodies)
	}
}
