package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
	"github.com/authtap/authtap/worker/tasks"
)

const apiTestToken = "adm-token-3f9a1c"

// apiFixture is a management API behind RequireBearer, on a private Redis
// with a running worker; every log line goes to logs.
type apiFixture struct {
	t         *testing.T
	redis     *redistest.Server
	worker    *worker.Worker
	inspector *asynq.Inspector
	server    *httptest.Server
	logs      *observer.ObservedLogs
	cfg       APIConfig // what the API was built with (for a portal next to it)

	mu      sync.Mutex
	secrets []string // every secret or token that must never be logged
}

type apiFixtureOptions struct {
	endpoints  []worker.EndpointConfig
	eventTypes func() []rules.EventType
	// allow is the worker's Allowlist; checkURL wires its CheckEndpointURL
	// into the API, as Caddy and "authtap worker --admin" do.
	allow    []netip.Prefix
	checkURL bool
}

func newAPIFixture(t *testing.T, o apiFixtureOptions) *apiFixture {
	t.Helper()
	srv := redistest.Start(t)
	opt, err := worker.ParseRedisURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	logger := zap.New(core)
	retry := worker.RetryPolicy{Schedule: []time.Duration{0, 50 * time.Millisecond, 50 * time.Millisecond}, Jitter: -1}
	w, err := worker.New(worker.Config{
		Redis: opt, Endpoints: o.endpoints, Retry: retry, Logger: logger, Concurrency: 4, Allowlist: o.allow,
		DelayedTaskCheckInterval: 50 * time.Millisecond, DeliveryTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspector(opt)
	apiCfg := APIConfig{
		Store: w.Store(), Client: w.Client(), Inspector: insp, Retry: retry, Logger: logger, EventTypes: o.eventTypes,
	}
	if o.checkURL {
		apiCfg.CheckEndpointURL = w.CheckEndpointURL
	}
	h, err := NewAPI(apiCfg)
	if err != nil {
		t.Fatal(err)
	}
	authed, err := RequireBearer(apiTestToken, h)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(authed)
	f := &apiFixture{t: t, redis: srv, worker: w, inspector: insp, server: ts, logs: logs, cfg: apiCfg, secrets: []string{apiTestToken}}
	for _, c := range o.endpoints {
		f.secrets = append(f.secrets, c.Secret)
	}
	t.Cleanup(func() {
		ts.Close()
		w.Shutdown()
		_ = insp.Close()
		f.checkLogs()
	})
	return f
}

// keepSecret records a secret that must never appear in a log line.
func (f *apiFixture) keepSecret(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.secrets = append(f.secrets, s)
}

// checkLogs fails the test when any log line holds a secret.
func (f *apiFixture) checkLogs() {
	f.mu.Lock()
	defer f.mu.Unlock()
	entries := f.logs.All()
	for _, e := range entries {
		line := e.Message + " " + fmt.Sprint(e.ContextMap())
		for _, s := range f.secrets {
			if s != "" && strings.Contains(line, s) {
				f.t.Errorf("a log line holds a secret: %q", line)
			}
		}
	}
}

// call sends a request to the API with the admin token; body may be nil, a
// string (sent as is) or a value encoded as JSON.
func (f *apiFixture) call(method, path string, body any) (int, []byte) {
	f.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			f.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, f.server.URL+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+apiTestToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	if err != nil {
		f.t.Fatal(err)
	}
	if res.StatusCode != http.StatusNoContent && !strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		f.t.Errorf("%s %s: Content-Type %q, want JSON", method, path, res.Header.Get("Content-Type"))
	}
	return res.StatusCode, out
}

// must sends a request and decodes the answer into out, failing unless the status is want.
func (f *apiFixture) must(want int, method, path string, body, out any) {
	f.t.Helper()
	status, b := f.call(method, path, body)
	if status != want {
		f.t.Fatalf("%s %s: status %d, want %d: %s", method, path, status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			f.t.Fatalf("%s %s: decoding %s: %v", method, path, b, err)
		}
	}
}

// create makes an endpoint through the API and returns it with its secret.
func (f *apiFixture) create(c worker.EndpointConfig) endpointWithSecret {
	f.t.Helper()
	var ep endpointWithSecret
	f.must(http.StatusCreated, "POST", "/webhooks", c, &ep)
	if !strings.HasPrefix(ep.Secret, worker.SecretPrefix) {
		f.t.Fatalf("create answered secret %q, want %s…", ep.Secret, worker.SecretPrefix)
	}
	f.keepSecret(ep.Secret)
	return ep
}

// apiErr is the decoded error body.
type apiErr struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Field   string `json:"field"`
	} `json:"error"`
}

// apiDelivery is one request an apiReceiver got.
type apiDelivery struct {
	header http.Header
	body   []byte
}

// apiReceiver is a webhook subscriber answering status (changeable) and keeping every request.
type apiReceiver struct {
	status atomic.Int32
	mu     sync.Mutex
	got    []apiDelivery
	srv    *httptest.Server
}

func newAPIReceiver(t *testing.T, status int) *apiReceiver {
	r := &apiReceiver{}
	r.status.Store(int32(status))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, apiDelivery{header: req.Header.Clone(), body: b})
		r.mu.Unlock()
		st := int(r.status.Load())
		w.WriteHeader(st)
		fmt.Fprintf(w, "answered %d", st)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *apiReceiver) deliveries() []apiDelivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// testSecret returns a new valid signing secret.
func testSecret(t testing.TB) string {
	t.Helper()
	s, err := worker.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitUntil polls cond every 10ms until it holds or 15s pass.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAPIEndpointCRUD(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{})
	rcv := newAPIReceiver(t, 200)
	const bearer = "subscriber-bearer-77c1"
	f.keepSecret(bearer)

	ep := f.create(worker.EndpointConfig{ID: "crm", URL: rcv.srv.URL, Mode: "test", Events: []string{"user.*"},
		Description: "CRM sync", BearerToken: bearer, EventHeader: "X-Crm-Event"})
	if ep.ID != "crm" || ep.Mode != "test" || !ep.Enabled || !ep.HasBearerToken || ep.Format != worker.FormatEnvelope {
		t.Errorf("created %+v", ep.Endpoint)
	}
	gen := f.create(worker.EndpointConfig{URL: "https://hooks.example.com/x"})
	if !strings.HasPrefix(gen.ID, "ep_") || gen.Mode != rules.ModeLive {
		t.Errorf("generated endpoint %+v", gen.Endpoint)
	}

	// The secret and the bearer token never show again.
	for _, path := range []string{"/webhooks", "/webhooks/crm"} {
		_, b := f.call("GET", path, nil)
		for _, s := range []string{ep.Secret, gen.Secret, bearer, `"secret"`} {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("GET %s shows %q: %s", path, s, b)
			}
		}
	}
	var list struct{ Webhooks []worker.Endpoint }
	f.must(200, "GET", "/webhooks", nil, &list)
	if len(list.Webhooks) != 2 || list.Webhooks[0].ID != "crm" || list.Webhooks[1].ID != gen.ID {
		t.Errorf("list = %+v", list.Webhooks)
	}

	var upd worker.Endpoint
	f.must(200, "PATCH", "/webhooks/crm", map[string]any{"description": "CRM", "events": []string{"user.created", "tenant.*"}, "rate_limit": 5}, &upd)
	if upd.Description != "CRM" || !slices.Equal(upd.Events, []string{"user.created", "tenant.*"}) || upd.RateLimit != 5 ||
		upd.URL != rcv.srv.URL || !upd.HasBearerToken {
		t.Errorf("patched %+v", upd)
	}
	f.must(200, "PATCH", "/webhooks/crm", map[string]any{"enabled": false}, &upd)
	if upd.Enabled || upd.DisabledReason == "" {
		t.Errorf("disabled %+v", upd)
	}
	f.must(200, "PATCH", "/webhooks/crm", map[string]any{"enabled": true}, &upd)
	if !upd.Enabled {
		t.Errorf("enabled %+v", upd)
	}

	var e apiErr
	f.must(409, "POST", "/webhooks", worker.EndpointConfig{ID: "crm", URL: "https://x.example"}, &e)
	if e.Error.Code != CodeConflict || e.Error.Field != "id" {
		t.Errorf("duplicate id: %+v", e)
	}

	f.must(204, "DELETE", "/webhooks/crm", nil, nil)
	for _, c := range []struct{ method, path string }{
		{"GET", "/webhooks/crm"}, {"DELETE", "/webhooks/crm"}, {"PATCH", "/webhooks/crm"},
		{"POST", "/webhooks/crm/rotate-secret"}, {"POST", "/webhooks/crm/test"}, {"GET", "/webhooks/crm/deliveries"},
		{"POST", "/webhooks/crm/replay?since=2026-11-23T10:00:00Z"},
	} {
		var body any
		if c.method == "PATCH" {
			body = map[string]any{"description": "x"}
		}
		f.must(404, c.method, c.path, body, &e)
		if e.Error.Code != CodeNotFound || !strings.Contains(e.Error.Message, `"crm"`) {
			t.Errorf("%s %s: %+v", c.method, c.path, e)
		}
	}
}

func TestAPIValidationErrors(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{})
	f.create(worker.EndpointConfig{ID: "live1", URL: "https://hooks.example.com/a"})
	big := `{"url":"https://x.example","description":"` + strings.Repeat("a", MaxAPIBody) + `"}`
	for _, tc := range []struct {
		name, method, path, body string
		contentType              string
		status                   int
		code, field, msg         string
	}{
		{name: "ftp url", method: "POST", path: "/webhooks", body: `{"url":"ftp://x"}`,
			status: 400, code: CodeInvalidField, field: "url", msg: `url: want an absolute https URL for a live endpoint, got "ftp://x"`},
		{name: "http url for live", method: "POST", path: "/webhooks", body: `{"url":"http://hooks.example.com"}`,
			status: 400, code: CodeInvalidField, field: "url", msg: "https"},
		{name: "relative url", method: "POST", path: "/webhooks", body: `{"url":"/hook","mode":"test"}`,
			status: 400, code: CodeInvalidField, field: "url", msg: "url: want an absolute http or https URL for a test endpoint"},
		{name: "user info not repeated", method: "POST", path: "/webhooks", body: `{"url":"https://bob:pa55word@x.example"}`,
			status: 400, code: CodeInvalidField, field: "url", msg: "user information"},
		{name: "unknown mode", method: "POST", path: "/webhooks", body: `{"url":"https://x.example","mode":"prod"}`,
			status: 400, code: CodeInvalidField, field: "mode", msg: `"prod"`},
		{name: "unknown format", method: "POST", path: "/webhooks", body: `{"url":"https://x.example","format":"xml"}`,
			status: 400, code: CodeInvalidField, field: "format", msg: `"xml"`},
		{name: "bad event filter", method: "POST", path: "/webhooks", body: `{"url":"https://x.example","events":["user.created","user..x"]}`,
			status: 400, code: CodeInvalidField, field: "events", msg: "events[1]"},
		{name: "bad id", method: "POST", path: "/webhooks", body: `{"id":"a b","url":"https://x.example"}`,
			status: 400, code: CodeInvalidField, field: "id"},
		{name: "bad secret", method: "POST", path: "/webhooks", body: `{"url":"https://x.example","secret":"nope-123"}`,
			status: 400, code: CodeInvalidField, field: "secret"},
		{name: "negative rate", method: "POST", path: "/webhooks", body: `{"url":"https://x.example","rate_limit":-1}`,
			status: 400, code: CodeInvalidField, field: "rate_limit"},
		{name: "event header", method: "POST", path: "/webhooks", body: `{"url":"https://x.example","event_header":"Authorization"}`,
			status: 400, code: CodeInvalidField, field: "event_header"},
		{name: "wrong type", method: "POST", path: "/webhooks", body: `{"url":"https://x.example","max_concurrency":"5"}`,
			status: 400, code: CodeInvalidField, field: "max_concurrency", msg: "integer"},
		{name: "malformed json", method: "POST", path: "/webhooks", body: `{"url": "https://x.example",}`,
			status: 400, code: CodeInvalidJSON, msg: "offset 29"},
		{name: "truncated json", method: "POST", path: "/webhooks", body: `{"url": "https://x`,
			status: 400, code: CodeInvalidJSON, msg: "offset"},
		{name: "unknown field", method: "POST", path: "/webhooks", body: `{"url":"https://x.example","colour":"red"}`,
			status: 400, code: CodeInvalidField, field: "colour", msg: "unknown field"},
		{name: "trailing data", method: "POST", path: "/webhooks", body: `{"url":"https://x.example"} {}`,
			status: 400, code: CodeInvalidJSON, msg: "after the JSON object"},
		{name: "not an object", method: "POST", path: "/webhooks", body: `["https://x.example"]`,
			status: 400, code: CodeInvalidJSON},
		{name: "empty body", method: "POST", path: "/webhooks", body: ``,
			status: 400, code: CodeInvalidJSON, msg: "empty"},
		{name: "form content type", method: "POST", path: "/webhooks", body: `url=https://x.example`, contentType: "application/x-www-form-urlencoded",
			status: 415, code: CodeUnsupportedMedia},
		{name: "too large", method: "POST", path: "/webhooks", body: big,
			status: 413, code: CodeTooLarge},
		{name: "patch to http url", method: "PATCH", path: "/webhooks/live1", body: `{"url":"http://hooks.example.com"}`,
			status: 400, code: CodeInvalidField, field: "url", msg: "live"},
		{name: "patch unknown field", method: "PATCH", path: "/webhooks/live1", body: `{"secret":"whsec_x"}`,
			status: 400, code: CodeInvalidField, field: "secret"},
		{name: "patch empty mode", method: "PATCH", path: "/webhooks/live1", body: `{"mode":""}`,
			status: 400, code: CodeInvalidField, field: "mode"},
		{name: "rotate bad duration", method: "POST", path: "/webhooks/live1/rotate-secret", body: `{"keep_old_for":"soon"}`,
			status: 400, code: CodeInvalidField, field: "keep_old_for"},
		{name: "limit too big", method: "GET", path: "/webhooks/live1/deliveries?limit=501",
			status: 400, code: CodeInvalidParameter, field: "limit"},
		{name: "bad before", method: "GET", path: "/webhooks/live1/deliveries?before=yesterday",
			status: 400, code: CodeInvalidParameter, field: "before"},
		{name: "bad type filter", method: "GET", path: "/events?type=a..b",
			status: 400, code: CodeInvalidParameter, field: "type"},
		{name: "replay without since", method: "POST", path: "/webhooks/live1/replay",
			status: 400, code: CodeInvalidParameter, field: "since"},
		{name: "replay window too long", method: "POST", path: "/webhooks/live1/replay?since=2026-01-01T00:00:00Z&until=2026-02-01T00:00:00Z",
			status: 400, code: CodeInvalidParameter, field: "since", msg: "14 days"},
		{name: "replay until before since", method: "POST", path: "/webhooks/live1/replay?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
			status: 400, code: CodeInvalidParameter, field: "until"},
		{name: "wrong method", method: "PUT", path: "/webhooks/live1", body: `{}`,
			status: 405, code: CodeMethodNotAllowed, msg: "PATCH"},
		{name: "unknown path", method: "GET", path: "/nope",
			status: 404, code: CodeNotFound},
		{name: "unknown delivery", method: "POST", path: "/deliveries/nonsense/retry",
			status: 404, code: CodeNotFound},
		{name: "unknown event", method: "GET", path: "/events/evt_nope",
			status: 404, code: CodeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, f.server.URL+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			ct := tc.contentType
			if ct == "" {
				ct = "application/json"
			}
			req.Header.Set("Content-Type", ct)
			req.Header.Set("Authorization", "Bearer "+apiTestToken)
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			var e apiErr
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatalf("body is not JSON: %v: %s", err, b)
			}
			if res.StatusCode != tc.status || e.Error.Code != tc.code || e.Error.Field != tc.field || !strings.Contains(e.Error.Message, tc.msg) {
				t.Errorf("got %d %s, want %d code %s field %q message containing %q", res.StatusCode, b, tc.status, tc.code, tc.field, tc.msg)
			}
			if tc.status == 405 && res.Header.Get("Allow") == "" {
				t.Error("405 without Allow")
			}
			if strings.Contains(string(b), "pa55word") {
				t.Errorf("the answer repeats the URL's password: %s", b)
			}
		})
	}
}

func TestAPIReadOnlyEndpoint(t *testing.T) {
	rcv := newAPIReceiver(t, 200)
	secret, err := worker.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	f := newAPIFixture(t, apiFixtureOptions{endpoints: []worker.EndpointConfig{
		{ID: "gitops", URL: rcv.srv.URL, Mode: "test", Secret: secret, BearerToken: "cfg-bearer-1"},
	}})
	f.keepSecret("cfg-bearer-1")
	var ep worker.Endpoint
	f.must(200, "GET", "/webhooks/gitops", nil, &ep)
	if !ep.ReadOnly {
		t.Errorf("configured endpoint not read-only: %+v", ep)
	}
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"PATCH", "/webhooks/gitops", map[string]any{"url": "http://127.0.0.1:1"}},
		{"DELETE", "/webhooks/gitops", nil},
		{"POST", "/webhooks/gitops/rotate-secret", nil},
	} {
		var e apiErr
		f.must(409, c.method, c.path, c.body, &e)
		if e.Error.Code != CodeReadOnly || !strings.Contains(e.Error.Message, "declared in the Caddy config") {
			t.Errorf("%s %s: %+v", c.method, c.path, e)
		}
	}
	// Its runtime state may change.
	f.must(200, "PATCH", "/webhooks/gitops", map[string]any{"enabled": false}, &ep)
	if ep.Enabled {
		t.Errorf("not disabled: %+v", ep)
	}
	var e apiErr
	f.must(409, "POST", "/webhooks/gitops/test", nil, &e)
	if e.Error.Code != CodeDisabled || !strings.Contains(e.Error.Message, "disabled") {
		t.Errorf("test on a disabled endpoint: %+v", e)
	}
	f.must(200, "PATCH", "/webhooks/gitops", map[string]any{"enabled": true}, &ep)
	var tr testResponse
	f.must(202, "POST", "/webhooks/gitops/test", nil, &tr)
	waitUntil(t, "the test delivery", func() bool { return len(rcv.deliveries()) == 1 })
	verifyDelivery(t, secret, rcv.deliveries()[0], tr.EventID)
}

// verifyDelivery checks a delivery's signature with secret and its webhook-id.
func verifyDelivery(t *testing.T, secret string, d apiDelivery, eventID string) {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := wh.Verify(d.body, d.header); err != nil {
		t.Errorf("signature does not verify: %v", err)
	}
	if got := d.header.Get("webhook-id"); got != eventID {
		t.Errorf("webhook-id %q, want %q", got, eventID)
	}
}

func TestAPITestEventAndRotation(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{})
	rcv := newAPIReceiver(t, 200)
	other := newAPIReceiver(t, 200)
	ep := f.create(worker.EndpointConfig{ID: "app", URL: rcv.srv.URL, Mode: "test", Events: []string{"user.created"}})
	f.create(worker.EndpointConfig{ID: "other", URL: other.srv.URL, Mode: "test"})

	// The test event goes to this endpoint only, whatever its filters.
	var tr testResponse
	f.must(202, "POST", "/webhooks/app/test", nil, &tr)
	if tr.DeliveryID != tasks.DeliverTaskID(tr.EventID, "app") || tr.Event.Type != EventTest {
		t.Errorf("test response %+v", tr)
	}
	waitUntil(t, "the test delivery", func() bool { return len(rcv.deliveries()) == 1 })
	d := rcv.deliveries()[0]
	verifyDelivery(t, ep.Secret, d, tr.EventID)
	var got rules.Event
	if err := json.Unmarshal(d.body, &got); err != nil {
		t.Fatal(err)
	}
	var data struct{ Message string }
	_ = json.Unmarshal(got.Data, &data)
	if got.Type != EventTest || got.Source.Name != "authtap" || got.Mode != "test" || data.Message == "" {
		t.Errorf("test event %s", d.body)
	}

	// Rotate, keeping the old secret for an hour: both sign.
	var rot endpointWithSecret
	f.must(200, "POST", "/webhooks/app/rotate-secret", map[string]string{"keep_old_for": "1h"}, &rot)
	f.keepSecret(rot.Secret)
	if rot.Secret == ep.Secret || !strings.HasPrefix(rot.Secret, worker.SecretPrefix) || len(rot.SecretExpiries) != 1 {
		t.Fatalf("rotation answered %+v", rot)
	}
	_, b := f.call("GET", "/webhooks/app", nil)
	if bytes.Contains(b, []byte(rot.Secret)) || bytes.Contains(b, []byte(`"secret"`)) {
		t.Errorf("GET after rotation shows the secret: %s", b)
	}
	f.must(202, "POST", "/webhooks/app/test", nil, &tr)
	waitUntil(t, "the second test delivery", func() bool { return len(rcv.deliveries()) == 2 })
	d = rcv.deliveries()[1]
	verifyDelivery(t, rot.Secret, d, tr.EventID)
	verifyDelivery(t, ep.Secret, d, tr.EventID)
	if n := len(strings.Fields(d.header.Get("webhook-signature"))); n != 2 {
		t.Errorf("%d signatures during rotation, want 2", n)
	}

	// Rotation without a body keeps the old secret 24h; "0s" drops it at once.
	var rot2 endpointWithSecret
	f.must(200, "POST", "/webhooks/app/rotate-secret", map[string]string{"keep_old_for": "0s"}, &rot2)
	f.keepSecret(rot2.Secret)
	if len(rot2.SecretExpiries) != 1 { // the first secret's hour is still running
		t.Errorf("previous secrets after an immediate rotation: %v", rot2.SecretExpiries)
	}
	var rot3 endpointWithSecret
	f.must(200, "POST", "/webhooks/app/rotate-secret", nil, &rot3)
	f.keepSecret(rot3.Secret)
	if len(rot3.SecretExpiries) != 2 {
		t.Errorf("previous secrets after a default rotation: %v", rot3.SecretExpiries)
	}
	if len(other.deliveries()) != 0 {
		t.Errorf("the other endpoint got %d test deliveries", len(other.deliveries()))
	}
	// The logs are captured (so the secret check at cleanup is not vacuous).
	if n := f.logs.FilterMessage("endpoint secret rotated").FilterField(zap.String("endpoint_id", "app")).Len(); n != 3 {
		t.Errorf("%d rotation log lines, want 3", n)
	}
}

func TestAPIDeliveriesRetryAndEvents(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{eventTypes: func() []rules.EventType {
		return []rules.EventType{{Type: "user.created", Rules: []string{"sign-up"}}}
	}})
	rcv := newAPIReceiver(t, 500)
	ep := f.create(worker.EndpointConfig{ID: "flaky", URL: rcv.srv.URL, Mode: "test"})

	var tr testResponse
	f.must(202, "POST", "/webhooks/flaky/test", nil, &tr)
	id := tr.DeliveryID
	waitUntil(t, "the delivery to be archived", func() bool {
		info, err := f.inspector.GetTaskInfo(tasks.QueueDeliver, id)
		return err == nil && info.State == asynq.TaskStateArchived
	})
	var dl deliveriesResponse
	f.must(200, "GET", "/webhooks/flaky/deliveries", nil, &dl)
	if len(dl.Deliveries) != 3 {
		t.Fatalf("%d attempts listed, want 3: %+v", len(dl.Deliveries), dl.Deliveries)
	}
	for i, a := range dl.Deliveries {
		if a.Status != 500 || a.Success || a.DeliveryID != id || a.ResponseExcerpt != "answered 500" || a.Attempt != 3-i {
			t.Errorf("attempt %d: %+v", i, a)
		}
	}
	// Paging: newest first, then older than the cursor.
	f.must(200, "GET", "/webhooks/flaky/deliveries?limit=2", nil, &dl)
	if len(dl.Deliveries) != 2 || dl.NextBefore == "" || dl.Deliveries[0].Attempt != 3 {
		t.Fatalf("first page %+v", dl)
	}
	before := dl.NextBefore
	dl = deliveriesResponse{}
	f.must(200, "GET", "/webhooks/flaky/deliveries?limit=2&before="+url.QueryEscape(before), nil, &dl)
	if len(dl.Deliveries) != 1 || dl.Deliveries[0].Attempt != 1 || dl.NextBefore != "" {
		t.Fatalf("second page %+v", dl)
	}

	// The archived delivery is retried through the API and succeeds.
	rcv.status.Store(200)
	var rr retryResponse
	f.must(202, "POST", "/deliveries/"+id+"/retry", nil, &rr)
	if rr.DeliveryID != id || rr.Action != "requeued" || rr.PreviousState != "archived" {
		t.Errorf("retry answered %+v", rr)
	}
	waitUntil(t, "the retried delivery to succeed", func() bool {
		info, err := f.inspector.GetTaskInfo(tasks.QueueDeliver, id)
		return err == nil && info.State == asynq.TaskStateCompleted
	})
	f.must(200, "GET", "/webhooks/flaky/deliveries", nil, &dl)
	if len(dl.Deliveries) != 4 || !dl.Deliveries[0].Success || dl.Deliveries[0].Status != 200 {
		t.Errorf("after the retry: %+v", dl.Deliveries)
	}
	verifyDelivery(t, ep.Secret, rcv.deliveries()[3], tr.EventID)

	// A completed delivery is delivered again under a new id, same webhook-id.
	f.must(202, "POST", "/deliveries/"+id+"/retry", nil, &rr)
	if rr.Action != "enqueued" || rr.PreviousState != "completed" || !strings.HasPrefix(rr.DeliveryID, id+":retry-") {
		t.Errorf("retry of a completed delivery answered %+v", rr)
	}
	waitUntil(t, "the fresh delivery", func() bool {
		info, err := f.inspector.GetTaskInfo(tasks.QueueDeliver, rr.DeliveryID)
		return err == nil && info.State == asynq.TaskStateCompleted
	})
	verifyDelivery(t, ep.Secret, rcv.deliveries()[4], tr.EventID)

	// A delivery that never existed is retried from the kept event; an unknown event is 404.
	var e apiErr
	f.must(404, "POST", "/deliveries/evt_gone:flaky/retry", nil, &e)
	f.must(404, "POST", "/deliveries/"+tr.EventID+":nobody/retry", nil, &e)

	// Events.
	var evs struct{ Events []rules.Event }
	f.must(200, "GET", "/events", nil, &evs)
	if len(evs.Events) != 1 || evs.Events[0].ID != tr.EventID {
		t.Errorf("events %+v", evs.Events)
	}
	f.must(200, "GET", "/events?type=user.*", nil, &evs)
	if len(evs.Events) != 0 {
		t.Errorf("filtered events %+v", evs.Events)
	}
	var er eventResponse
	f.must(200, "GET", "/events/"+tr.EventID, nil, &er)
	if er.Event.ID != tr.EventID || len(er.Attempts) != 5 {
		t.Errorf("event %+v with %d attempts", er.Event, len(er.Attempts))
	}
	var et struct {
		EventTypes []rules.EventType `json:"event_types"`
	}
	f.must(200, "GET", "/event-types", nil, &et)
	if len(et.EventTypes) != 1 || et.EventTypes[0].Type != "user.created" {
		t.Errorf("event types %+v", et)
	}
	var hz map[string]string
	f.must(200, "GET", "/healthz", nil, &hz)
}

func TestAPIReplay(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{})
	rcv := newAPIReceiver(t, 200)
	f.create(worker.EndpointConfig{ID: "users", URL: rcv.srv.URL, Mode: "test", Events: []string{"user.*"}})
	start := time.Now().Add(-time.Second)

	c := asynq.NewClient(asynq.RedisClientOpt{Addr: f.redis.Addr})
	defer c.Close()
	var want []string
	for i, typ := range []string{"user.created", "tenant.deleted", "user.deleted"} {
		now := time.Now().UTC().Truncate(time.Millisecond)
		ev := rules.Event{ID: rules.NewEventID(now), Type: typ, Timestamp: now, Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)),
			Source: rules.Source{Name: "test", Rule: "r"}, Mode: "test"}
		task, err := tasks.NewFanoutTask(ev)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Enqueue(task); err != nil {
			t.Fatal(err)
		}
		if typ != "tenant.deleted" {
			want = append(want, ev.ID)
		}
	}
	// A live event of a matching type is not for this test endpoint.
	now := time.Now().UTC().Truncate(time.Millisecond)
	live := rules.Event{ID: rules.NewEventID(now), Type: "user.created", Timestamp: now, Data: json.RawMessage(`{}`),
		Source: rules.Source{Name: "test", Rule: "r"}, Mode: "live"}
	task, _ := tasks.NewFanoutTask(live)
	if _, err := c.Enqueue(task); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the first deliveries", func() bool { return len(rcv.deliveries()) == 2 })
	waitUntil(t, "the live event to be kept", func() bool {
		_, err := f.worker.Store().GetEvent(context.Background(), live.ID)
		return err == nil
	})

	var rr replayResponse
	f.must(202, "POST", "/webhooks/users/replay?since="+url.QueryEscape(start.Format(time.RFC3339Nano)), nil, &rr)
	sort.Strings(want) // events of the same millisecond come in id order
	if rr.Replayed != 2 || !slices.Equal(slices.Sorted(slices.Values(rr.EventIDs)), want) {
		t.Fatalf("replay answered %+v, want %v", rr, want)
	}
	waitUntil(t, "the replayed deliveries", func() bool { return len(rcv.deliveries()) == 4 })
	var first, again []string
	for i, d := range rcv.deliveries() {
		if i < 2 {
			first = append(first, d.header.Get("webhook-id"))
		} else {
			again = append(again, d.header.Get("webhook-id"))
		}
	}
	sort.Strings(first)
	sort.Strings(again)
	if !slices.Equal(first, again) || !slices.Equal(first, want) {
		t.Errorf("replayed webhook-ids %v, first %v, want %v", again, first, want)
	}
	// The receiver answers before the worker records the attempt: poll the log.
	waitUntil(t, "two replayed attempts in the delivery log", func() bool {
		var dl deliveriesResponse
		f.must(200, "GET", "/webhooks/users/deliveries", nil, &dl)
		replays := 0
		for _, a := range dl.Deliveries {
			if a.Replay && a.Success && strings.Contains(a.DeliveryID, ":replay-") {
				replays++
			}
		}
		return replays == 2
	})

	// A second replay of the same window works too (new task ids).
	f.must(202, "POST", "/webhooks/users/replay?since="+url.QueryEscape(start.Format(time.RFC3339Nano))+
		"&until="+url.QueryEscape(time.Now().Add(time.Second).Format(time.RFC3339Nano)), nil, &rr)
	if rr.Replayed != 2 {
		t.Errorf("second replay: %+v", rr)
	}
	waitUntil(t, "the second replay", func() bool { return len(rcv.deliveries()) == 6 })
	// An empty window replays nothing.
	f.must(202, "POST", "/webhooks/users/replay?since=2026-01-01T00:00:00Z&until=2026-01-02T00:00:00Z", nil, &rr)
	if rr.Replayed != 0 || rr.EventIDs == nil {
		t.Errorf("empty window: %+v", rr)
	}
}

func TestRequireBearer(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h, err := RequireBearer("s3cret-token", ok)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, auth string
		status     int
	}{
		{"none", "", 401},
		{"wrong", "Bearer nope", 401},
		{"prefix of the token", "Bearer s3cret", 401},
		{"basic without a user part", "Basic czNjcmV0LXRva2Vu", 401},
		{"basic, wrong password", "Basic YWRtaW46bm9wZQ==", 401},
		{"basic, token as password (browsers)", "Basic YWRtaW46czNjcmV0LXRva2Vu", http.StatusTeapot},
		{"right", "Bearer s3cret-token", http.StatusTeapot},
		{"scheme case", "bearer s3cret-token", http.StatusTeapot},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "/webhooks", nil)
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.status {
				t.Fatalf("status %d, want %d", rec.Code, tc.status)
			}
			if tc.status != 401 {
				return
			}
			var e apiErr
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code != CodeUnauthorized {
				t.Errorf("body %s (%v)", rec.Body, err)
			}
			if !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate %q", rec.Header().Get("WWW-Authenticate"))
			}
			if strings.Contains(rec.Body.String(), "s3cret") {
				t.Errorf("the answer holds the token: %s", rec.Body)
			}
		})
	}
	if _, err := RequireBearer(" ", ok); err == nil {
		t.Error("RequireBearer accepted an empty token")
	}
}

func TestAPIInternalErrorsHideDetails(t *testing.T) {
	// A store whose Redis does not answer.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { _ = rdb.Close() })
	store, err := worker.NewStore(rdb, worker.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.DebugLevel)
	h, err := NewAPI(APIConfig{Store: store, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/webhooks", "/healthz", "/events"} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		var e apiErr
		_ = json.Unmarshal(rec.Body.Bytes(), &e)
		if rec.Code < 500 || e.Error.Code == "" || strings.Contains(e.Error.Message, "127.0.0.1") || strings.Contains(e.Error.Message, "dial") {
			t.Errorf("GET %s: %d %s", path, rec.Code, rec.Body)
		}
	}
	if n := logs.FilterMessage("management API request failed").Len(); n != 3 {
		t.Errorf("%d failures logged, want 3", n)
	}
}

func TestNewAPIConfig(t *testing.T) {
	if _, err := NewAPI(APIConfig{}); err == nil {
		t.Error("NewAPI accepted no store")
	}
	// The monitor UI is mounted at /monitor/; with no Redis needed to route.
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	t.Cleanup(func() { _ = rdb.Close() })
	store, err := worker.NewStore(rdb, worker.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	monitor := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Monitor", r.URL.Path)
		w.WriteHeader(http.StatusTeapot)
	})
	h, err := NewAPI(APIConfig{Store: store, Monitor: monitor})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/monitor/queues", nil))
	if rec.Code != http.StatusTeapot || rec.Header().Get("X-Monitor") != "/monitor/queues" {
		t.Errorf("GET /monitor/queues: %d %v", rec.Code, rec.Header())
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/event-types", nil))
	if rec.Code != 200 || strings.TrimSpace(rec.Body.String()) != `{"event_types":[]}` {
		t.Errorf("GET /event-types without EventTypes: %d %s", rec.Code, rec.Body)
	}
}

// TestOpenAPIDocumentsEveryRoute holds openapi.json and the route table to each other.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	var doc struct {
		OpenAPI    string                                `json:"openapi"`
		Paths      map[string]map[string]json.RawMessage `json:"paths"`
		Components struct {
			SecuritySchemes map[string]json.RawMessage `json:"securitySchemes"`
			Schemas         map[string]json.RawMessage `json:"schemas"`
			Responses       map[string]json.RawMessage `json:"responses"`
			Parameters      map[string]json.RawMessage `json:"parameters"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Errorf("openapi %q, want 3.1", doc.OpenAPI)
	}
	if _, ok := doc.Components.SecuritySchemes["bearerAuth"]; !ok {
		t.Error("no bearerAuth security scheme")
	}
	for _, s := range []string{"Endpoint", "EndpointConfig", "EndpointPatch", "Attempt", "Event", "Error"} {
		if _, ok := doc.Components.Schemas[s]; !ok {
			t.Errorf("no %s schema", s)
		}
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			if method == "parameters" || method == "summary" || method == "description" {
				continue
			}
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	registered := map[string]bool{}
	for _, rt := range routes {
		registered[rt.method+" "+rt.path] = true
		if !documented[rt.method+" "+rt.path] {
			t.Errorf("route %s %s is not in openapi.json", rt.method, rt.path)
		}
	}
	for k := range documented {
		if !registered[k] {
			t.Errorf("openapi.json documents %s, which is not a route", k)
		}
	}
	// Every $ref resolves.
	var all any
	_ = json.Unmarshal(openAPIDoc, &all)
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			if ref, ok := x["$ref"].(string); ok {
				parts := strings.Split(strings.TrimPrefix(ref, "#/components/"), "/")
				var m map[string]json.RawMessage
				switch parts[0] {
				case "schemas":
					m = doc.Components.Schemas
				case "responses":
					m = doc.Components.Responses
				case "parameters":
					m = doc.Components.Parameters
				}
				if len(parts) != 2 || m[parts[1]] == nil {
					t.Errorf("unresolved $ref %q", ref)
				}
			}
			for _, e := range x {
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(all)

	// And the API serves it.
	f := newAPIFixture(t, apiFixtureOptions{})
	_, b := f.call("GET", "/openapi.json", nil)
	if !bytes.Equal(b, openAPIDoc) {
		t.Error("GET /openapi.json does not serve the embedded document")
	}
}

func TestStoreErrorNamesTheField(t *testing.T) {
	for _, tc := range []struct {
		cfg   worker.EndpointConfig
		field string
	}{
		{worker.EndpointConfig{ID: "a", URL: "ftp://x"}, "url"},
		{worker.EndpointConfig{ID: "a", URL: "http://x.example"}, "url"},
		{worker.EndpointConfig{ID: "a", URL: "https://x.example", Mode: "prod"}, "mode"},
		{worker.EndpointConfig{ID: "a", URL: "https://x.example", Format: "xml"}, "format"},
		{worker.EndpointConfig{ID: "a", URL: "https://x.example", Events: []string{"a..b"}}, "events"},
		{worker.EndpointConfig{ID: "a", URL: "https://x.example", EventHeader: "Host"}, "event_header"},
		{worker.EndpointConfig{ID: "a", URL: "https://x.example", BearerToken: "a b"}, "bearer_token"},
		{worker.EndpointConfig{ID: "a", URL: "https://x.example", RateLimit: -1}, "rate_limit"},
		{worker.EndpointConfig{ID: "a", URL: "https://x.example", MaxConcurrency: 5000}, "max_concurrency"},
		{worker.EndpointConfig{ID: "a", URL: "https://x.example", Secret: "whsec_!!"}, "secret"},
		{worker.EndpointConfig{ID: "a b", URL: "https://x.example"}, "id"},
	} {
		c := tc.cfg
		if c.Secret == "" {
			c.Secret = testSecret(t)
		}
		// A configured endpoint is validated as Store.Create validates one.
		_, err := worker.NewStore(nil, worker.StoreOptions{Endpoints: []worker.EndpointConfig{c}})
		if err == nil {
			t.Errorf("%+v: no error", tc.cfg)
			continue
		}
		if e := storeError(err, tc.cfg.ID); e.Status != 400 || e.Field != tc.field {
			t.Errorf("%v: field %q, want %q", err, e.Field, tc.field)
		}
		if e := checkEndpointConfig(tc.cfg); e == nil || e.Field != tc.field {
			t.Errorf("checkEndpointConfig(%+v) = %+v, want field %q", tc.cfg, e, tc.field)
		}
	}
}

// newTestRedis starts a redis-server of its own for tb and returns a client
// of it, made as the worker makes one.
func newTestRedis(tb testing.TB) redis.UniversalClient {
	tb.Helper()
	srv := redistest.Start(tb)
	opt, err := worker.ParseRedisURL(srv.URL)
	if err != nil {
		tb.Fatal(err)
	}
	rdb, err := worker.RedisClient(opt)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// newTestStore is an endpoint store on a redis-server of its own.
func newTestStore(tb testing.TB) (*worker.Store, redis.UniversalClient) {
	tb.Helper()
	rdb := newTestRedis(tb)
	store, err := worker.NewStore(rdb, worker.StoreOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return store, rdb
}

func BenchmarkAPIListEndpoints(b *testing.B) {
	store, _ := newTestStore(b)
	for i := range 100 {
		if _, err := store.Create(context.Background(), worker.EndpointConfig{URL: fmt.Sprintf("https://h%d.example.com/hook", i), Events: []string{"user.*"}}); err != nil {
			b.Fatal(err)
		}
	}
	h, err := NewAPI(APIConfig{Store: store})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/webhooks", nil))
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}

func BenchmarkAPICreateEndpoint(b *testing.B) {
	store, _ := newTestStore(b)
	h, err := NewAPI(APIConfig{Store: store})
	if err != nil {
		b.Fatal(err)
	}
	body := `{"url":"https://hooks.example.com/x","events":["user.*","tenant.deleted"]}`
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("POST", "/webhooks", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 201 {
			b.Fatal(rec.Code, rec.Body)
		}
	}
}

// A live endpoint whose URL is a literal address the worker would never dial
// is refused when it is created or changed, naming the range and the way out;
// host names are left to the dial-time check.
func TestAPIRefusesLiveEndpointsAtDeniedAddresses(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{allow: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, checkURL: true})
	for _, tc := range []struct{ url, mode, want string }{
		{"https://10.0.0.5/hook", "", "10.0.0.0/8"},
		{"https://169.254.169.254/latest", "live", "169.254.0.0/16"},
		{"https://[::1]:8443/hook", "live", "::1/128"},
		{"https://[::ffff:127.0.0.1]/hook", "live", "IPv4-mapped IPv6 form of 127.0.0.1; write the IPv4 address in dotted decimal"},
	} {
		status, b := f.call("POST", "/webhooks", worker.EndpointConfig{URL: tc.url, Mode: tc.mode})
		var e apiErr
		_ = json.Unmarshal(b, &e)
		if status != http.StatusBadRequest || e.Error.Field != "url" || !strings.Contains(e.Error.Message, tc.want) ||
			!strings.Contains(e.Error.Message, "allow") && !strings.Contains(e.Error.Message, "dotted decimal") {
			t.Errorf("POST %s: %d %s", tc.url, status, b)
		}
	}
	f.create(worker.EndpointConfig{ID: "lan", URL: "https://192.168.1.5/hook"})              // allowed range
	f.create(worker.EndpointConfig{ID: "named", URL: "https://hooks.example.com/in"})        // checked at dial time
	f.create(worker.EndpointConfig{ID: "local", URL: "http://127.0.0.1:9/in", Mode: "test"}) // test endpoints may be local

	for _, tc := range []struct {
		id   string
		body map[string]any
	}{
		{"named", map[string]any{"url": "https://127.0.0.1/in"}},
		{"local", map[string]any{"url": "https://127.0.0.1/in", "mode": "live"}},
	} {
		status, b := f.call("PATCH", "/webhooks/"+tc.id, tc.body)
		if status != http.StatusBadRequest || !strings.Contains(string(b), "127.0.0.0/8") {
			t.Errorf("PATCH %s %v: %d %s", tc.id, tc.body, status, b)
		}
	}
	var ep worker.Endpoint
	f.must(http.StatusOK, "GET", "/webhooks/named", nil, &ep)
	if ep.URL != "https://hooks.example.com/in" {
		t.Errorf("a refused PATCH changed the URL to %s", ep.URL)
	}
}

// A configured live endpoint at a denied literal address stops the worker from
// starting, naming the endpoint.
func TestConfiguredEndpointAtDeniedAddress(t *testing.T) {
	_, err := worker.New(worker.Config{Redis: asynq.RedisClientOpt{Addr: "127.0.0.1:1"}, Endpoints: []worker.EndpointConfig{
		{ID: "ok", URL: "https://hooks.example.com/in"},
		{ID: "meta", URL: "https://169.254.169.254/"},
	}})
	if err == nil || !strings.Contains(err.Error(), "endpoints[1] (meta)") || !strings.Contains(err.Error(), "169.254.0.0/16") {
		t.Fatalf("New = %v", err)
	}
	_, err = worker.New(worker.Config{Redis: asynq.RedisClientOpt{Addr: "127.0.0.1:1"}, Allowlist: []netip.Prefix{netip.MustParsePrefix("169.254.169.254/32")},
		Endpoints: []worker.EndpointConfig{{ID: "meta", URL: "https://169.254.169.254/"}}})
	if err != nil && strings.Contains(err.Error(), "169.254") {
		t.Fatalf("an allowed address was refused: %v", err)
	}
}

// Numeric host forms are refused when an endpoint is created or changed,
// through the API or in the configuration, whatever the mode; test
// endpoints may be local (loopback) but not private or metadata addresses;
// switching a live endpoint to test mode is checked with the same guard.
func TestAPIEndpointAddressRules(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{allow: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, checkURL: true})
	refused := func(status int, b []byte, want string) bool {
		var e apiErr
		_ = json.Unmarshal(b, &e)
		return status == http.StatusBadRequest && e.Error.Field == "url" && strings.Contains(e.Error.Message, want)
	}
	for _, tc := range []struct{ url, mode, want string }{
		{"https://2130706433/hook", "live", `host "2130706433" is a numeric IPv4 form browsers and resolvers read as 127.0.0.1; write the address in dotted decimal`},
		{"https://127.1/hook", "live", "read as 127.0.0.1"},
		{"https://0x7f.1/hook", "live", "read as 127.0.0.1"},
		{"https://0177.0.0.1/hook", "live", "read as 127.0.0.1"},
		{"https://127.0.0.1./hook", "live", "read as 127.0.0.1"},
		{"https://0xa9fea9fe/latest", "live", "read as 169.254.169.254"},
		{"https://[::ffff:127.0.0.1]/hook", "live", "IPv4-mapped IPv6 form of 127.0.0.1"},
		{"http://2130706433:9/hook", "test", "read as 127.0.0.1"},
		{"http://0x0a.1:9/hook", "test", "read as 10.0.0.1"},
		{"http://[::ffff:10.0.0.1]/hook", "test", "IPv4-mapped IPv6 form of 10.0.0.1"},
		// Test endpoints: private, link-local and metadata addresses are refused.
		{"http://10.0.0.5/hook", "test", "10.0.0.0/8"},
		{"http://169.254.169.254/latest/meta-data/", "test", "169.254.0.0/16"},
		{"http://100.100.100.200/latest/meta-data/", "test", "100.64.0.0/10"},
		{"http://[fd00:ec2::254]/latest/meta-data/", "test", "fc00::/7"},
		{"http://[fe80::1]/hook", "test", "fe80::/10"},
		// Live endpoints: loopback too, with the hint that test endpoints may.
		{"https://127.0.0.1/hook", "live", "test endpoints may reach loopback"},
	} {
		status, b := f.call("POST", "/webhooks", worker.EndpointConfig{URL: tc.url, Mode: tc.mode})
		if !refused(status, b, tc.want) {
			t.Errorf("POST %s (%s): %d %s, want 400 naming %q", tc.url, tc.mode, status, b, tc.want)
		}
	}
	f.create(worker.EndpointConfig{ID: "local", URL: "http://127.0.0.1:9/in", Mode: "test"})    // loopback: fine for tests
	f.create(worker.EndpointConfig{ID: "lan-test", URL: "http://192.168.1.5/in", Mode: "test"}) // allowlisted
	f.create(worker.EndpointConfig{ID: "lan", URL: "https://192.168.1.5/hook"})                 // allowlisted
	f.create(worker.EndpointConfig{ID: "named", URL: "https://hooks.example.com/in"})           // checked at dial time

	for _, tc := range []struct {
		id   string
		body map[string]any
		want string
	}{
		// Escaping the live guard by switching to test mode.
		{"named", map[string]any{"mode": "test", "url": "http://10.0.0.5/in"}, "10.0.0.0/8"},
		{"named", map[string]any{"mode": "test", "url": "http://169.254.169.254/"}, "169.254.0.0/16"},
		{"named", map[string]any{"mode": "test", "url": "http://0x7f.1:9/in"}, "read as 127.0.0.1"},
		{"local", map[string]any{"url": "http://172.16.0.1/in"}, "172.16.0.0/12"},
		{"local", map[string]any{"url": "http://127.1:9/in"}, "read as 127.0.0.1"},
		{"named", map[string]any{"url": "https://2130706433/in"}, "read as 127.0.0.1"},
	} {
		status, b := f.call("PATCH", "/webhooks/"+tc.id, tc.body)
		if !refused(status, b, tc.want) {
			t.Errorf("PATCH %s %v: %d %s, want 400 naming %q", tc.id, tc.body, status, b, tc.want)
		}
	}
	var ep worker.Endpoint
	f.must(http.StatusOK, "GET", "/webhooks/named", nil, &ep)
	if ep.Mode != "live" || ep.URL != "https://hooks.example.com/in" {
		t.Errorf("a refused PATCH changed the endpoint: %+v", ep)
	}
	// The same allowlist holds in both modes, and names are left to the dial.
	f.must(http.StatusOK, "PATCH", "/webhooks/lan", map[string]any{"mode": "test"}, &ep)
	f.must(http.StatusOK, "PATCH", "/webhooks/named", map[string]any{"mode": "test"}, &ep)
	if ep.Mode != "test" {
		t.Errorf("mode-only PATCH: %+v", ep)
	}

	// Configured endpoints: refused when the worker starts.
	for _, c := range []worker.EndpointConfig{
		{ID: "num", URL: "https://0x7f.1/", Secret: testSecret(t)},
		{ID: "num-test", URL: "http://2130706433/", Mode: "test", Secret: testSecret(t)},
		{ID: "priv-test", URL: "http://10.0.0.1/", Mode: "test", Secret: testSecret(t)},
	} {
		_, err := worker.New(worker.Config{Redis: asynq.RedisClientOpt{Addr: "127.0.0.1:1"}, Endpoints: []worker.EndpointConfig{c}})
		if err == nil || !strings.Contains(err.Error(), c.ID) {
			t.Errorf("configured %s (%s): %v, want refused", c.ID, c.URL, err)
		}
	}
}
