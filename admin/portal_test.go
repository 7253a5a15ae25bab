package admin

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

// portalFixture is an apiFixture with a tenant portal next to the management
// API, on the same worker and Redis. The portal's clock runs ahead of the
// real one by skew, so that a test can let links expire.
type portalFixture struct {
	*apiFixture
	portal *httptest.Server
	skew   atomic.Int64 // nanoseconds
}

type portalOptions struct {
	api              apiFixtureOptions
	allowTest        bool
	maxEndpoints     int
	changesPerMinute int
	frameAncestors   []string
}

func newPortalFixture(t *testing.T, o portalOptions) *portalFixture {
	t.Helper()
	f := &portalFixture{apiFixture: newAPIFixture(t, o.api)}
	cfg := PortalConfig{APIConfig: f.cfg, AllowTestEndpoints: o.allowTest, MaxEndpoints: o.maxEndpoints,
		ChangesPerMinute: o.changesPerMinute, FrameAncestors: o.frameAncestors}
	cfg.Now = func() time.Time { return time.Now().Add(time.Duration(f.skew.Load())) }
	h, err := NewPortal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.portal = httptest.NewServer(h)
	t.Cleanup(f.portal.Close)
	return f
}

// link issues a portal link through the operator API and keeps its token
// from the logs.
func (f *portalFixture) link(tenant string, extra map[string]any) portalLinkResponse {
	f.t.Helper()
	body := map[string]any{"tenant": tenant}
	for k, v := range extra {
		body[k] = v
	}
	var l portalLinkResponse
	f.must(http.StatusCreated, "POST", "/portal-links", body, &l)
	f.keepSecret(l.Token)
	return l
}

// pcall sends a request to the portal's API with token (none when empty);
// body may be nil, a string or a value encoded as JSON.
func (f *portalFixture) pcall(token, method, path string, body any, header ...string) (int, []byte, http.Header) {
	f.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = strings.NewReader(string(j))
	}
	req, err := http.NewRequest(method, f.portal.URL+path, rd)
	if err != nil {
		f.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b, res.Header
}

// pmust is pcall that fails unless the status is want, decoding into out.
func (f *portalFixture) pmust(want int, token, method, path string, body, out any) {
	f.t.Helper()
	status, b, _ := f.pcall(token, method, path, body)
	if status != want {
		f.t.Fatalf("portal %s %s: %d, want %d: %s", method, path, status, want, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			f.t.Fatalf("portal %s %s: %v: %s", method, path, err, b)
		}
	}
}

// errCode returns the error code of an API error body.
func errCode(b []byte) string {
	var e apiErr
	_ = json.Unmarshal(b, &e)
	return e.Error.Code
}

func TestPortalLinkIssue(t *testing.T) {
	f := newPortalFixture(t, portalOptions{})
	before := time.Now()
	l := f.link("t1", nil)
	if !strings.HasPrefix(l.Token, portalTokenPrefix) || !strings.HasPrefix(l.ID, "pl_") || l.Tenant != "t1" || l.ReadOnly {
		t.Fatalf("link: %+v", l)
	}
	if want := "http://" + strings.TrimPrefix(f.server.URL, "http://") + "/portal/#token=" + l.Token; l.URL != want {
		t.Errorf("url %q, want %q", l.URL, want)
	}
	if d := l.ExpiresAt.Sub(before); d < DefaultPortalLinkTTL-time.Second || d > DefaultPortalLinkTTL+5*time.Second {
		t.Errorf("expires_at %s: %s from now, want the default %s", l.ExpiresAt, d, DefaultPortalLinkTTL)
	}
	ro := f.link("t1", map[string]any{"ttl": "168h", "read_only": true})
	if !ro.ReadOnly || ro.ExpiresAt.Sub(before) < MaxPortalLinkTTL-time.Second {
		t.Errorf("7-day read-only link: %+v", ro)
	}
	for _, tc := range []struct {
		body  any
		field string
	}{
		{map[string]any{"tenant": ""}, "tenant"},
		{map[string]any{"tenant": "t 1"}, "tenant"},
		{map[string]any{"tenant": strings.Repeat("x", rules.MaxTenantLen+1)}, "tenant"},
		{map[string]any{"tenant": "t1", "ttl": "30s"}, "ttl"},
		{map[string]any{"tenant": "t1", "ttl": "169h"}, "ttl"},
		{map[string]any{"tenant": "t1", "ttl": "soon"}, "ttl"},
		{map[string]any{"tenant": "t1", "ttl": 3600}, "ttl"},
		{map[string]any{"tenant": "t1", "scope": "all"}, "scope"},
	} {
		status, b := f.call("POST", "/portal-links", tc.body)
		var e apiErr
		_ = json.Unmarshal(b, &e)
		if status != http.StatusBadRequest || e.Error.Field != tc.field {
			t.Errorf("POST /portal-links %v: %d %s, want 400 on field %s", tc.body, status, b, tc.field)
		}
	}
	// Listing shows the live links, never their tokens; ?tenant= narrows it.
	f.link("t2", nil)
	var list struct {
		PortalLinks []PortalLink `json:"portal_links"`
	}
	status, b := f.call("GET", "/portal-links?tenant=t1", nil)
	if err := json.Unmarshal(b, &list); err != nil || status != 200 || len(list.PortalLinks) != 2 {
		t.Fatalf("GET /portal-links?tenant=t1: %d %s", status, b)
	}
	if strings.Contains(string(b), portalTokenPrefix) {
		t.Errorf("the listing shows a token: %s", b)
	}
	f.must(200, "GET", "/portal-links", nil, &list)
	if len(list.PortalLinks) != 3 || list.PortalLinks[0].ID != l.ID {
		t.Errorf("GET /portal-links: %+v, want 3 links, soonest to expire first", list.PortalLinks)
	}
	// The configured portal URL is used as given.
	cfg := f.cfg
	cfg.PortalURL = "https://auth.example.com/customers/webhooks/"
	h, err := NewAPI(cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/portal-links", strings.NewReader(`{"tenant":"t3"}`))
	req.Header.Set("Content-Type", "application/json")
	h.ServeHTTP(rec, req)
	var l3 portalLinkResponse
	_ = json.Unmarshal(rec.Body.Bytes(), &l3)
	f.keepSecret(l3.Token)
	if rec.Code != 201 || l3.URL != "https://auth.example.com/customers/webhooks/#token="+l3.Token {
		t.Errorf("with PortalURL: %d %s", rec.Code, rec.Body)
	}
	for _, bad := range []string{"/portal/", "ftp://x/", "https://u:p@x/", "https://x/#frag", "https://x/#"} {
		cfg.PortalURL = bad
		if _, err := NewAPI(cfg); err == nil {
			t.Errorf("PortalURL %q accepted", bad)
		}
	}
}

// TestPortalScope: a portal token opens its tenant's endpoints, their
// deliveries and the catalog, and nothing else.
func TestPortalScope(t *testing.T) {
	rcv := newAPIReceiver(t, 200)
	f := newPortalFixture(t, portalOptions{allowTest: true, api: apiFixtureOptions{
		eventTypes: func() []rules.EventType {
			return []rules.EventType{{Type: "user.created", Description: "A user signed up.", Rules: []string{"r"}}}
		},
		endpoints: []worker.EndpointConfig{{ID: "cfg_t1", URL: rcv.srv.URL, Mode: "test", Tenant: "t1", Secret: testSecret(t)}},
	}})
	f.create(worker.EndpointConfig{ID: "op", URL: rcv.srv.URL, Mode: "test"})
	f.create(worker.EndpointConfig{ID: "b1", URL: rcv.srv.URL, Mode: "test", Tenant: "t2"})
	f.create(worker.EndpointConfig{ID: "T1ep", URL: rcv.srv.URL, Mode: "test", Tenant: "T1"})
	tok := f.link("t1", nil).Token

	var sess sessionResponse
	f.pmust(200, tok, "GET", "/api/session", nil, &sess)
	if sess.Tenant != "t1" || sess.ReadOnly || !sess.AllowTestEndpoints || sess.MaxEndpoints != DefaultPortalMaxEndpoints {
		t.Errorf("session: %+v", sess)
	}
	// Create: the tenant is the token's, whatever the body says.
	var made endpointWithSecret
	f.pmust(201, tok, "POST", "/api/webhooks", map[string]any{"url": rcv.srv.URL, "mode": "test", "events": []string{"user.*"}}, &made)
	f.keepSecret(made.Secret)
	if made.Tenant != "t1" || !strings.HasPrefix(made.Secret, worker.SecretPrefix) || !strings.HasPrefix(made.ID, "ep_") {
		t.Fatalf("portal create: %+v", made)
	}
	f.pmust(201, tok, "POST", "/api/webhooks", map[string]any{"url": rcv.srv.URL, "mode": "test", "tenant": "t1"}, &made)
	f.keepSecret(made.Secret)
	for _, tc := range []struct {
		body        map[string]any
		status      int
		code, field string
	}{
		{map[string]any{"url": rcv.srv.URL, "mode": "test", "tenant": "t2"}, 403, CodeForbidden, "tenant"},
		{map[string]any{"url": rcv.srv.URL, "mode": "test", "tenant": ""}, 201, "", ""}, // "" is "not given"
		{map[string]any{"url": rcv.srv.URL, "mode": "test", "id": "mine"}, 400, CodeInvalidField, "id"},
		{map[string]any{"url": "ftp://x", "mode": "test"}, 400, CodeInvalidField, "url"},
	} {
		status, b, _ := f.pcall(tok, "POST", "/api/webhooks", tc.body)
		var e apiErr
		_ = json.Unmarshal(b, &e)
		if status != tc.status || e.Error.Code != tc.code || e.Error.Field != tc.field {
			t.Errorf("portal create %v: %d %s, want %d %s %s", tc.body, status, b, tc.status, tc.code, tc.field)
		}
		if status == 201 {
			var ep endpointWithSecret
			_ = json.Unmarshal(b, &ep)
			f.keepSecret(ep.Secret)
			if ep.Tenant != "t1" {
				t.Errorf("created with tenant %q", ep.Tenant)
			}
		}
	}
	// The listing holds the tenant's endpoints only (configured ones too).
	var list struct{ Webhooks []worker.Endpoint }
	f.pmust(200, tok, "GET", "/api/webhooks", nil, &list)
	var ids []string
	for _, ep := range list.Webhooks {
		if ep.Tenant != "t1" {
			t.Errorf("portal lists %s of tenant %q", ep.ID, ep.Tenant)
		}
		ids = append(ids, ep.ID)
	}
	if len(ids) != 4 || !slices.Contains(ids, "cfg_t1") {
		t.Errorf("portal lists %v, want cfg_t1 and the 3 it made", ids)
	}
	if status, b, _ := f.pcall(tok, "GET", "/api/webhooks?tenant=t2", nil); status != 403 {
		t.Errorf("?tenant=t2 through the portal: %d %s", status, b)
	}
	f.pmust(200, tok, "GET", "/api/webhooks?tenant=t1", nil, &list)

	// Another tenant's, a look-alike tenant's and the operator's endpoints do not exist for it.
	for _, id := range []string{"op", "b1", "T1ep", "nope"} {
		for _, rq := range []struct {
			method, path string
			body         any
		}{
			{"GET", "/api/webhooks/" + id, nil},
			{"PATCH", "/api/webhooks/" + id, map[string]any{"description": "mine now"}},
			{"PATCH", "/api/webhooks/" + id, map[string]any{"enabled": false}},
			{"DELETE", "/api/webhooks/" + id, nil},
			{"POST", "/api/webhooks/" + id + "/rotate-secret", nil},
			{"POST", "/api/webhooks/" + id + "/test", nil},
			{"GET", "/api/webhooks/" + id + "/deliveries", nil},
			{"POST", "/api/webhooks/" + id + "/replay?since=" + url.QueryEscape(time.Now().Add(-time.Hour).Format(time.RFC3339)), nil},
			{"POST", "/api/deliveries/evt_x:" + id + "/retry", nil},
		} {
			status, b, _ := f.pcall(tok, rq.method, rq.path, rq.body)
			if status != 404 || errCode(b) != CodeNotFound {
				t.Errorf("portal %s %s: %d %s, want 404", rq.method, rq.path, status, b)
			}
		}
	}
	// The others are untouched.
	for _, id := range []string{"op", "b1", "T1ep"} {
		var ep worker.Endpoint
		f.must(200, "GET", "/webhooks/"+id, nil, &ep)
		if !ep.Enabled || ep.Description != "" {
			t.Errorf("%s changed through another tenant's portal: %+v", id, ep)
		}
	}
	// Its own endpoint: it may change everything but the tenant.
	own := made.ID
	f.pmust(200, tok, "PATCH", "/api/webhooks/"+own, map[string]any{"description": "orders", "events": []string{"user.created"}}, nil)
	f.pmust(200, tok, "PATCH", "/api/webhooks/"+own, map[string]any{"tenant": "t1"}, nil)
	for _, tn := range []string{"t2", ""} {
		status, b, _ := f.pcall(tok, "PATCH", "/api/webhooks/"+own, map[string]any{"tenant": tn})
		if status != 403 || errCode(b) != CodeForbidden {
			t.Errorf("portal PATCH tenant %q: %d %s", tn, status, b)
		}
	}
	var ep worker.Endpoint
	f.must(200, "GET", "/webhooks/"+own, nil, &ep)
	if ep.Tenant != "t1" || ep.Description != "orders" {
		t.Errorf("own endpoint after the patches: %+v", ep)
	}
	// A configured endpoint of the tenant is shown but read-only.
	if status, b, _ := f.pcall(tok, "PATCH", "/api/webhooks/cfg_t1", map[string]any{"description": "x"}); status != 409 || errCode(b) != CodeReadOnly {
		t.Errorf("portal PATCH of a configured endpoint: %d %s", status, b)
	}
	// Nothing beyond the portal's routes.
	for _, rq := range []struct{ method, path string }{
		{"GET", "/api/events"}, {"GET", "/api/events/evt_1"}, {"GET", "/api/unmatched"}, {"GET", "/api/monitor/"},
		{"GET", "/api/portal-links"}, {"POST", "/api/portal-links"}, {"POST", "/api/portal-keys/rotate"},
		{"GET", "/api/openapi.json"}, {"GET", "/api/healthz"}, {"GET", "/webhooks"}, {"GET", "/events"},
		{"GET", "/monitor/"}, {"GET", "/api/../webhooks"},
	} {
		status, b, _ := f.pcall(tok, rq.method, rq.path, nil)
		if status != 404 && status != 405 {
			t.Errorf("portal %s %s: %d %.200s, want 404", rq.method, rq.path, status, b)
		}
	}
	// The catalog is there.
	var cat struct {
		EventTypes []rules.EventType `json:"event_types"`
	}
	f.pmust(200, tok, "GET", "/api/event-types", nil, &cat)
	if len(cat.EventTypes) != 1 || cat.EventTypes[0].Description != "A user signed up." {
		t.Errorf("portal catalog: %+v", cat)
	}
	// Credentials do not cross over: the admin token opens nothing in the
	// portal, and a portal token nothing in the management API.
	if status, b, _ := f.pcall(apiTestToken, "GET", "/api/webhooks", nil); status != 401 || errCode(b) != CodeTokenMalformed {
		t.Errorf("admin token at the portal: %d %s", status, b)
	}
	req, _ := http.NewRequest("GET", f.portal.URL+"/api/webhooks", nil)
	req.SetBasicAuth("admin", apiTestToken)
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != 401 {
		t.Errorf("basic auth at the portal: %v %v", res, err)
	} else {
		res.Body.Close()
	}
	req, _ = http.NewRequest("GET", f.server.URL+"/webhooks", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != 401 {
		t.Errorf("portal token at the management API: %v %v", res, err)
	} else {
		res.Body.Close()
	}
}

// TestPortalDeliveries: a portal user sends a test event, sees it delivered
// with its attempt, retries it and replays a window, for its own endpoint;
// another tenant's event cannot be retried to it.
func TestPortalDeliveries(t *testing.T) {
	rcv := newAPIReceiver(t, 200)
	f := newPortalFixture(t, portalOptions{allowTest: true})
	tok := f.link("t1", nil).Token
	var ep endpointWithSecret
	f.pmust(201, tok, "POST", "/api/webhooks", map[string]any{"url": rcv.srv.URL, "mode": "test"}, &ep)
	f.keepSecret(ep.Secret)
	var tr testResponse
	f.pmust(202, tok, "POST", "/api/webhooks/"+ep.ID+"/test", nil, &tr)
	if tr.Event.Tenant != "t1" {
		t.Errorf("test event of a portal endpoint: tenant %q", tr.Event.Tenant)
	}
	waitUntil(t, "the test delivery", func() bool { return len(rcv.deliveries()) == 1 })
	verifyDelivery(t, ep.Secret, rcv.deliveries()[0], tr.EventID)
	var dl deliveriesResponse
	waitUntil(t, "the attempt in the log", func() bool {
		f.pmust(200, tok, "GET", "/api/webhooks/"+ep.ID+"/deliveries", nil, &dl)
		return len(dl.Deliveries) == 1
	})
	if a := dl.Deliveries[0]; !a.Success || a.Status != 200 || a.Tenant != "t1" || a.ResponseExcerpt != "answered 200" || a.EventID != tr.EventID {
		t.Errorf("attempt: %+v", a)
	}
	var rr retryResponse
	f.pmust(202, tok, "POST", "/api/deliveries/"+url.PathEscape(dl.Deliveries[0].DeliveryID)+"/retry", nil, &rr)
	waitUntil(t, "the retried delivery", func() bool { return len(rcv.deliveries()) == 2 })

	// Someone else's event, asked for as a delivery to its own endpoint.
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Millisecond)
	for _, tenant := range []string{"t2", ""} {
		ev := rules.Event{ID: rules.NewEventID(now), Type: "user.created", Timestamp: now, Tenant: tenant,
			Data: json.RawMessage(`{"secret":"of another tenant"}`), Source: rules.Source{Name: "test", Rule: "r"}, Mode: "test"}
		env, _ := ev.Envelope()
		if err := f.worker.Store().RecordEvent(ctx, ev, env, nil); err != nil {
			t.Fatal(err)
		}
		status, b, _ := f.pcall(tok, "POST", "/api/deliveries/"+ev.ID+":"+ep.ID+"/retry", nil)
		if status != 404 {
			t.Errorf("retry of a %q event to a t1 endpoint: %d %s", tenant, status, b)
		}
		// The operator cannot do it by mistake either.
		if status, b := f.call("POST", "/deliveries/"+ev.ID+":"+ep.ID+"/retry", nil); status != 404 {
			t.Errorf("operator retry of a %q event to a t1 endpoint: %d %s", tenant, status, b)
		}
	}
	// Replay: only t1's events of the window; the test event again.
	var rp replayResponse
	f.pmust(202, tok, "POST", "/api/webhooks/"+ep.ID+"/replay?since="+url.QueryEscape(now.Add(-time.Minute).Format(time.RFC3339)), nil, &rp)
	if rp.Replayed != 1 || rp.EventIDs[0] != tr.EventID {
		t.Errorf("replay: %+v", rp)
	}
	waitUntil(t, "the replayed delivery", func() bool { return len(rcv.deliveries()) == 3 })
	for _, d := range rcv.deliveries() {
		if strings.Contains(string(d.body), "of another tenant") {
			t.Errorf("another tenant's event reached t1's endpoint: %s", d.body)
		}
	}
}

// The replay through the portal is bounded: a window holding more than
// MaxPortalReplayEvents events of the endpoint is refused, and nothing is sent.
func TestPortalReplayBounded(t *testing.T) {
	rcv := newAPIReceiver(t, 200)
	f := newPortalFixture(t, portalOptions{allowTest: true})
	tok := f.link("t1", nil).Token
	var ep endpointWithSecret
	f.pmust(201, tok, "POST", "/api/webhooks", map[string]any{"url": rcv.srv.URL, "mode": "test"}, &ep)
	f.keepSecret(ep.Secret)
	ctx := context.Background()
	start := time.Now().Add(-time.Minute)
	for i := 0; i <= MaxPortalReplayEvents; i++ {
		now := start.Add(time.Duration(i) * time.Millisecond).UTC()
		ev := rules.Event{ID: rules.NewEventID(now), Type: "user.created", Timestamp: now, Tenant: "t1",
			Data: json.RawMessage(`{}`), Source: rules.Source{Name: "test", Rule: "r"}, Mode: "test"}
		env, _ := ev.Envelope()
		if err := f.worker.Store().RecordEvent(ctx, ev, env, nil); err != nil {
			t.Fatal(err)
		}
	}
	since := url.QueryEscape(start.Add(-time.Second).Format(time.RFC3339Nano))
	status, b, _ := f.pcall(tok, "POST", "/api/webhooks/"+ep.ID+"/replay?since="+since, nil)
	if status != 400 || !strings.Contains(string(b), fmt.Sprint(MaxPortalReplayEvents)) {
		t.Errorf("replay of %d events: %d %s", MaxPortalReplayEvents+1, status, b)
	}
	// One event fewer fits.
	until := url.QueryEscape(start.Add(time.Duration(MaxPortalReplayEvents) * time.Millisecond).Format(time.RFC3339Nano))
	var rp replayResponse
	f.pmust(202, tok, "POST", "/api/webhooks/"+ep.ID+"/replay?since="+since+"&until="+until, nil, &rp)
	if rp.Replayed != MaxPortalReplayEvents {
		t.Errorf("replayed %d, want %d", rp.Replayed, MaxPortalReplayEvents)
	}
	// The operator is not bound by the portal's limit.
	var op replayResponse
	f.must(202, "POST", "/webhooks/"+ep.ID+"/replay?since="+since, nil, &op)
	if op.Replayed != MaxPortalReplayEvents+1 {
		t.Errorf("operator replayed %d", op.Replayed)
	}
}

// TestPortalTokenRefusals: expired, revoked, forged, wrong-key, malformed
// and missing tokens get a 401 with their own code.
func TestPortalTokenRefusals(t *testing.T) {
	f := newPortalFixture(t, portalOptions{})
	refused := func(what, token, code string) {
		t.Helper()
		status, b, h := f.pcall(token, "GET", "/api/webhooks", nil)
		if status != 401 || errCode(b) != code {
			t.Errorf("%s: %d %s, want 401 %s", what, status, b, code)
		}
		if !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer ") {
			t.Errorf("%s: WWW-Authenticate %q", what, h.Get("WWW-Authenticate"))
		}
		if !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
			t.Errorf("%s: Content-Type %q", what, h.Get("Content-Type"))
		}
	}
	works := func(what, token string) {
		t.Helper()
		if status, b, _ := f.pcall(token, "GET", "/api/webhooks", nil); status != 200 {
			t.Errorf("%s: %d %s, want 200", what, status, b)
		}
	}
	l := f.link("t1", map[string]any{"ttl": "1m"})
	works("a fresh link", l.Token)

	// Forged: the payload changed (another tenant, later expiry, not read-only), signature kept.
	payload, mac, _ := strings.Cut(strings.TrimPrefix(l.Token, portalTokenPrefix), ".")
	raw, _ := base64.RawURLEncoding.DecodeString(payload)
	var c portalClaims
	if err := json.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	forge := func(mod func(*portalClaims)) string {
		cc := c
		mod(&cc)
		b, _ := json.Marshal(cc)
		return portalTokenPrefix + base64.RawURLEncoding.EncodeToString(b) + "." + mac
	}
	refused("another tenant", forge(func(c *portalClaims) { c.Tenant = "t2" }), CodeTokenInvalid)
	refused("a later expiry", forge(func(c *portalClaims) { c.Expires += 3600_000 }), CodeTokenInvalid)
	refused("an unknown key id", forge(func(c *portalClaims) { c.KeyID = "pk_nope" }), CodeTokenInvalid)
	// Wrong key: well-formed and signed, with the right key id, by another key.
	other := make([]byte, 32)
	_, _ = rand.Read(other)
	wrong, _ := sign(portalClaims{KeyID: c.KeyID, ID: "pl_x", Tenant: "t1", IssuedAt: c.IssuedAt, Expires: c.Expires}, other)
	refused("signed with another key", wrong, CodeTokenInvalid)
	// The signature's bytes flipped.
	sum, _ := base64.RawURLEncoding.DecodeString(mac)
	sum[0] ^= 1
	refused("a flipped signature bit", portalTokenPrefix+payload+"."+base64.RawURLEncoding.EncodeToString(sum), CodeTokenInvalid)
	// Malformed and missing.
	for _, bad := range []string{
		"atp1.", "atp1.x", "atp1.x.y", "atp1." + payload + ".", "atp1." + payload + "." + mac + "x",
		"atp1.!!!." + mac, "atp1." + base64.RawURLEncoding.EncodeToString([]byte(`{"kid":""}`)) + "." + mac,
		portalTokenPrefix + strings.Repeat("A", MaxPortalTokenLen), "whsec_abc", "atp2." + payload + "." + mac,
	} {
		refused(fmt.Sprintf("malformed %.40q", bad), bad, CodeTokenMalformed)
	}
	refused("no token", "", CodeTokenMissing)
	status, b, _ := f.pcall("", "GET", "/api/webhooks", nil, "Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte("admin:"+l.Token)))
	if status != 401 || errCode(b) != CodeTokenMissing {
		t.Errorf("a portal token in Basic auth: %d %s", status, b)
	}

	// Expired: the portal's clock passes the link's expiry.
	f.skew.Store(int64(61 * time.Second))
	refused("an expired link", l.Token, CodeTokenExpired)
	refused("an expired, forged link", forge(func(c *portalClaims) { c.Tenant = "t2" }), CodeTokenInvalid)
	f.skew.Store(0)
	works("the link before its expiry", l.Token)

	// Revoked: one link, then every link of a tenant.
	l2 := f.link("t1", nil)
	f.must(204, "DELETE", "/portal-links/"+l.ID, nil, nil)
	refused("a revoked link", l.Token, CodeTokenRevoked)
	works("another link of the tenant", l2.Token)
	if status, _ := f.call("DELETE", "/portal-links/"+l.ID, nil); status != 404 {
		t.Errorf("revoking twice: %d", status)
	}
	if status, _ := f.call("DELETE", "/portal-links/pl_nope", nil); status != 404 {
		t.Errorf("revoking an unknown link: %d", status)
	}
	other2 := f.link("t2", nil)
	var rv struct{ Revoked int }
	f.must(200, "DELETE", "/portal-links?tenant=t1", nil, &rv)
	if rv.Revoked != 1 {
		t.Errorf("revoked %d links of t1, want 1 (l2)", rv.Revoked)
	}
	refused("a link of a revoked tenant", l2.Token, CodeTokenRevoked)
	works("another tenant's link", other2.Token)
	time.Sleep(2 * time.Millisecond) // issued strictly after the revocation
	l3 := f.link("t1", nil)
	works("a link issued after the tenant's revocation", l3.Token)
	if status, _ := f.call("DELETE", "/portal-links", nil); status != 400 {
		t.Errorf("DELETE /portal-links without a tenant: %d", status)
	}

	// Key rotation: old links stop at once, or after keep_old_for.
	var rot struct {
		KeyID         string `json:"key_id"`
		PreviousKeyID string `json:"previous_key_id"`
	}
	f.must(200, "POST", "/portal-keys/rotate", map[string]any{"keep_old_for": "1h"}, &rot)
	if rot.KeyID == "" || rot.PreviousKeyID != c.KeyID {
		t.Errorf("rotate: %+v, previous want %s", rot, c.KeyID)
	}
	works("a link of the old key, kept for an hour", l3.Token)
	l4 := f.link("t1", nil)
	works("a link of the new key", l4.Token)
	f.must(200, "POST", "/portal-keys/rotate", nil, &rot)
	time.Sleep(portalKeyCacheFor + 100*time.Millisecond) // the portal's copy of the keys
	refused("a link of a rotated-out key", l4.Token, CodeTokenInvalid)
	refused("a link of the key kept for an hour, after a rotation that keeps nothing", l3.Token, CodeTokenInvalid)
	f.skew.Store(int64(2 * time.Hour))
	f.must(200, "POST", "/portal-keys/rotate", map[string]any{"keep_old_for": "1m"}, &rot)
	for _, bad := range []string{"-1s", "169h", "x"} {
		if status, _ := f.call("POST", "/portal-keys/rotate", map[string]any{"keep_old_for": bad}); status != 400 {
			t.Errorf("keep_old_for %q: %d", bad, status)
		}
	}
	f.skew.Store(0)
	works("a new link after the rotations", f.link("t1", nil).Token)
}

// Read-only links can look but change nothing.
func TestPortalReadOnly(t *testing.T) {
	rcv := newAPIReceiver(t, 200)
	f := newPortalFixture(t, portalOptions{allowTest: true})
	f.create(worker.EndpointConfig{ID: "a1", URL: rcv.srv.URL, Mode: "test", Tenant: "t1"})
	ro := f.link("t1", map[string]any{"read_only": true}).Token
	var sess sessionResponse
	f.pmust(200, ro, "GET", "/api/session", nil, &sess)
	if !sess.ReadOnly {
		t.Errorf("session of a read-only link: %+v", sess)
	}
	f.pmust(200, ro, "GET", "/api/webhooks/a1", nil, nil)
	f.pmust(200, ro, "GET", "/api/webhooks/a1/deliveries", nil, nil)
	for _, rq := range []struct{ method, path string }{
		{"POST", "/api/webhooks"}, {"PATCH", "/api/webhooks/a1"}, {"DELETE", "/api/webhooks/a1"},
		{"POST", "/api/webhooks/a1/rotate-secret"}, {"POST", "/api/webhooks/a1/test"},
		{"POST", "/api/webhooks/a1/replay?since=2026-01-01T00:00:00Z"}, {"POST", "/api/deliveries/e:a1/retry"},
		{"PUT", "/api/webhooks/a1"},
	} {
		status, b, _ := f.pcall(ro, rq.method, rq.path, `{"url":"https://x.example/"}`)
		if status != 403 || errCode(b) != CodeReadOnlyToken {
			t.Errorf("read-only %s %s: %d %s", rq.method, rq.path, status, b)
		}
	}
	var ep worker.Endpoint
	f.must(200, "GET", "/webhooks/a1", nil, &ep)
	if !ep.Enabled || ep.URL != rcv.srv.URL {
		t.Errorf("a read-only link changed the endpoint: %+v", ep)
	}
}

// State-changing portal requests from another origin are refused, and
// test endpoints need the operator's consent.
func TestPortalCrossOriginAndTestMode(t *testing.T) {
	f := newPortalFixture(t, portalOptions{})
	tok := f.link("t1", nil).Token
	for _, h := range [][]string{
		{"Sec-Fetch-Site", "cross-site"},
		{"Sec-Fetch-Site", "same-site"},
		{"Origin", "https://evil.example"},
	} {
		status, b, _ := f.pcall(tok, "POST", "/api/webhooks", map[string]any{"url": "https://a.example/"}, h...)
		if status != 403 || errCode(b) != CodeCrossOrigin {
			t.Errorf("POST with %s: %s: %d %s", h[0], h[1], status, b)
		}
	}
	status, b, _ := f.pcall(tok, "GET", "/api/webhooks", nil, "Sec-Fetch-Site", "cross-site")
	if status != 200 {
		t.Errorf("a cross-site GET (no state change): %d %s", status, b)
	}
	var ep endpointWithSecret
	status, b, _ = f.pcall(tok, "POST", "/api/webhooks", map[string]any{"url": "https://a.example/"}, "Sec-Fetch-Site", "same-origin")
	if status != 201 || json.Unmarshal(b, &ep) != nil {
		t.Fatalf("same-origin create: %d %s", status, b)
	}
	f.keepSecret(ep.Secret)
	// Test endpoints (plain http, loopback) are refused without AllowTestEndpoints.
	status, b, _ = f.pcall(tok, "POST", "/api/webhooks", map[string]any{"url": "http://127.0.0.1:9/", "mode": "test"})
	if status != 400 || !strings.Contains(string(b), `"field":"mode"`) {
		t.Errorf("test endpoint through the portal: %d %s", status, b)
	}
	status, b, _ = f.pcall(tok, "PATCH", "/api/webhooks/"+ep.ID, map[string]any{"mode": "test", "url": "http://127.0.0.1:9/"})
	if status != 400 || !strings.Contains(string(b), `"field":"mode"`) {
		t.Errorf("switch to test mode through the portal: %d %s", status, b)
	}
	var sess sessionResponse
	f.pmust(200, tok, "GET", "/api/session", nil, &sess)
	if sess.AllowTestEndpoints {
		t.Error("session says test endpoints are allowed")
	}
}

// One tenant's endpoints and changes per minute are bounded.
func TestPortalLimits(t *testing.T) {
	// The count is per clock minute: start well inside one.
	if s := time.Now().Second(); s > 50 {
		time.Sleep(time.Duration(61-s) * time.Second)
	}
	f := newPortalFixture(t, portalOptions{maxEndpoints: 2, changesPerMinute: 4})
	tok := f.link("t1", nil).Token
	tok2 := f.link("t1", nil).Token // the bound is the tenant's, across its links
	for i := range 2 {
		var ep endpointWithSecret
		f.pmust(201, tok, "POST", "/api/webhooks", map[string]any{"url": fmt.Sprintf("https://a%d.example/", i)}, &ep)
		f.keepSecret(ep.Secret)
	}
	status, b, _ := f.pcall(tok, "POST", "/api/webhooks", map[string]any{"url": "https://a3.example/"})
	if status != 409 || errCode(b) != CodeLimitReached {
		t.Errorf("third endpoint: %d %s", status, b)
	}
	status, b, _ = f.pcall(tok2, "POST", "/api/webhooks", map[string]any{"url": "https://a3.example/"})
	if status != 409 {
		// The fourth change of the minute: still counted, still refused by the endpoint bound.
		t.Errorf("fourth change: %d %s", status, b)
	}
	status, b, h := f.pcall(tok2, "POST", "/api/webhooks", map[string]any{"url": "https://a3.example/"})
	if status != 429 || errCode(b) != CodeRateLimited || h.Get("Retry-After") == "" {
		t.Errorf("fifth change in a minute: %d %s (Retry-After %q)", status, b, h.Get("Retry-After"))
	}
	// Reads are not counted; another tenant has its own budget.
	f.pmust(200, tok, "GET", "/api/webhooks", nil, nil)
	g := newPortalFixture(t, portalOptions{})
	gt := g.link("t1", nil).Token
	var gep endpointWithSecret
	g.pmust(201, gt, "POST", "/api/webhooks", map[string]any{"url": "https://a.example/"}, &gep)
	g.keepSecret(gep.Secret)
	for i := range MaxPortalTestsPerMinute + 1 {
		status, b, _ := g.pcall(gt, "POST", "/api/webhooks/"+gep.ID+"/test", nil)
		if want := 202; i == MaxPortalTestsPerMinute {
			if status != 429 || !strings.Contains(string(b), "test events") {
				t.Errorf("test event %d in a minute: %d %s", i+1, status, b)
			}
		} else if status != want {
			t.Errorf("test event %d: %d %s", i+1, status, b)
		}
	}
	other := f.link("t2", nil).Token
	var ep endpointWithSecret
	f.pmust(201, other, "POST", "/api/webhooks", map[string]any{"url": "https://b.example/"}, &ep)
	f.keepSecret(ep.Secret)
}

// The page and its assets: strict CSP, no framing unless configured, no
// inline script or style, no HTML built from strings.
func TestPortalPage(t *testing.T) {
	f := newPortalFixture(t, portalOptions{})
	get := func(srv *httptest.Server, path string) (*http.Response, string) {
		t.Helper()
		res, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}
	const csp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
	res, page := get(f.portal, "/")
	if res.StatusCode != 200 || res.Header.Get("Content-Security-Policy") != csp || res.Header.Get("X-Frame-Options") != "DENY" ||
		!strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") || res.Header.Get("Referrer-Policy") != "no-referrer" {
		t.Errorf("GET /: %d %v", res.StatusCode, res.Header)
	}
	if !strings.Contains(page, `<script src="portal.js" defer></script>`) || !strings.Contains(page, `href="portal.css"`) {
		t.Error("the page does not load its assets by relative URL")
	}
	low := strings.ToLower(page)
	if strings.Count(low, "<script") != 1 || strings.Contains(low, "<style") || strings.Contains(low, " style=") ||
		strings.Contains(low, " on") && strings.Contains(low, "onclick=") || strings.Contains(low, "http://") || strings.Contains(low, "https://") && !strings.Contains(low, `placeholder="https://example.com/webhooks"`) {
		t.Error("the page has inline script or style, or a third-party URL")
	}
	for name, ct := range map[string]string{"/portal.js": "text/javascript", "/portal.css": "text/css", "/index.html": "text/html"} {
		res, body := get(f.portal, name)
		if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), ct) || res.Header.Get("ETag") == "" ||
			res.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: %d %v", name, res.StatusCode, res.Header)
		}
		if name == "/portal.js" {
			for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "http://", "https://", "localStorage", "document.cookie"} {
				if strings.Contains(body, bad) {
					t.Errorf("portal.js uses %s", bad)
				}
			}
		}
		if name == "/portal.css" && (strings.Contains(body, "url(") || strings.Contains(body, "@import")) {
			t.Error("portal.css loads something")
		}
	}
	for _, p := range []string{"/nope", "/../openapi.json", "/portal/", "/.git/config"} {
		if res, _ := get(f.portal, p); res.StatusCode != 404 {
			t.Errorf("GET %s: %d", p, res.StatusCode)
		}
	}
	req, _ := http.NewRequest("POST", f.portal.URL+"/", nil)
	if res, err := http.DefaultClient.Do(req); err != nil || res.StatusCode != 405 {
		t.Errorf("POST /: %v %v", res, err)
	} else {
		res.Body.Close()
	}
	// API answers are not framable and not sniffable.
	_, _, h := f.pcall("", "GET", "/api/webhooks", nil)
	if h.Get("Content-Security-Policy") != "default-src 'none'; frame-ancestors 'none'" || h.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("API headers: %v", h)
	}

	// Embedding: configured frame-ancestors replace 'none' and drop X-Frame-Options.
	g := newPortalFixture(t, portalOptions{frameAncestors: []string{"https://app.example.com", "https://*.example.org"}})
	res, _ = get(g.portal, "/")
	if got := res.Header.Get("Content-Security-Policy"); !strings.HasSuffix(got, "frame-ancestors https://app.example.com https://*.example.org") ||
		res.Header.Get("X-Frame-Options") != "" {
		t.Errorf("embeddable page: CSP %q, XFO %q", got, res.Header.Get("X-Frame-Options"))
	}
}

func TestFrameAncestors(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string // "" means refused
	}{
		{nil, "'none'"},
		{[]string{"'self'"}, "'self'"},
		{[]string{"https://app.example.com"}, "https://app.example.com"},
		{[]string{"'self'", "https://*.example.com:8443"}, "'self' https://*.example.com:8443"},
		{[]string{"https:"}, "https:"},
		{[]string{"app.example.com"}, ""},
		{[]string{"https://a.example; script-src *"}, ""},
		{[]string{"https://a.example", "'none'"}, ""},
		{[]string{"'unsafe-inline'"}, ""},
		{[]string{""}, ""},
		{slices.Repeat([]string{"https://a.example"}, maxFrameAncestors+1), ""},
	} {
		got, err := frameAncestors(tc.in)
		if tc.want == "" && err == nil || tc.want != "" && got != tc.want {
			t.Errorf("frameAncestors(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

// The signing key is made once, however many processes ask at the same time,
// and kept in Redis for all of them.
func TestPortalKeyMadeOnce(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{})
	rdb := f.worker.Store().Redis()
	var wg sync.WaitGroup
	ids := make([]string, 8)
	for i := range ids {
		wg.Go(func() {
			_, cur, err := newPortalLinks(rdb, time.Now).loadKeys(context.Background(), false)
			if err != nil {
				t.Error(err)
			}
			ids[i] = cur
		})
	}
	wg.Wait()
	if n, err := rdb.HLen(context.Background(), keyPortalKeys).Result(); err != nil || n != 1 {
		t.Errorf("%d keys in Redis (%v), want 1", n, err)
	}
	for _, id := range ids {
		if id != ids[0] || id == "" {
			t.Errorf("processes disagree on the key: %v", ids)
			break
		}
	}
	// A token made by one process verifies in another.
	a, b := newPortalLinks(rdb, time.Now), newPortalLinks(rdb, time.Now)
	_, tok, err := a.issue(context.Background(), "t1", time.Hour, false)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := b.verify(context.Background(), tok)
	if err != nil || sc.tenant != "t1" {
		t.Errorf("verify in another process: %+v %v", sc, err)
	}
}

// With Redis gone the portal refuses (503), it does not wave tokens through.
func TestPortalFailsClosed(t *testing.T) {
	f := newPortalFixture(t, portalOptions{})
	tok := f.link("t1", nil).Token
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	store, err := worker.NewStore(rdb, worker.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewPortal(PortalConfig{APIConfig: APIConfig{Store: store}})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/api/webhooks", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	h.ServeHTTP(rec, req)
	if rec.Code != 503 || strings.Contains(rec.Body.String(), tok) {
		t.Errorf("portal without Redis: %d %s", rec.Code, rec.Body)
	}
}

// The operator's lists take ?tenant= too: /events and an endpoint's deliveries.
func TestAPITenantFilters(t *testing.T) {
	rcv := newAPIReceiver(t, 200)
	f := newAPIFixture(t, apiFixtureOptions{})
	f.create(worker.EndpointConfig{ID: "op", URL: rcv.srv.URL, Mode: "test"})
	ctx := context.Background()
	want := map[string][]string{}
	base := time.Now().Add(-time.Second).UTC().Truncate(time.Millisecond)
	for i, tenant := range []string{"t1", "t2", "", "t1", "T1"} {
		now := base.Add(time.Duration(i) * time.Millisecond)
		ev := rules.Event{ID: rules.NewEventID(now), Type: "user.created", Timestamp: now, Tenant: tenant,
			Data: json.RawMessage(`{}`), Source: rules.Source{Name: "test", Rule: "r"}, Mode: "test"}
		env, _ := ev.Envelope()
		if err := f.worker.Store().RecordEvent(ctx, ev, env, []string{"op"}); err != nil {
			t.Fatal(err)
		}
		want[tenant] = append(want[tenant], ev.ID)
	}
	var since = url.QueryEscape(time.Now().Add(-time.Minute).Format(time.RFC3339))
	var rp replayResponse
	f.must(202, "POST", "/webhooks/op/replay?since="+since, nil, &rp)
	if rp.Replayed != 5 {
		t.Fatalf("replayed %+v, want 5 events", rp)
	}
	waitUntil(t, "5 deliveries", func() bool { return len(rcv.deliveries()) == 5 })
	for tenant, ids := range want {
		if tenant == "" {
			continue
		}
		var evs struct{ Events []rules.Event }
		f.must(200, "GET", "/events?tenant="+tenant, nil, &evs)
		var got []string
		for _, ev := range evs.Events {
			got = append(got, ev.ID)
		}
		if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(ids))) {
			t.Errorf("/events?tenant=%s: %v, want %v", tenant, got, ids)
		}
		var dl deliveriesResponse
		waitUntil(t, "the attempts of "+tenant, func() bool {
			f.must(200, "GET", "/webhooks/op/deliveries?tenant="+tenant, nil, &dl)
			return len(dl.Deliveries) == len(ids)
		})
		for _, a := range dl.Deliveries {
			if a.Tenant != tenant || !slices.Contains(ids, a.EventID) {
				t.Errorf("deliveries?tenant=%s lists %+v", tenant, a)
			}
		}
	}
	// Paging a filtered list: one at a time, all of t1's, then no cursor.
	var seen []string
	before := ""
	for range 5 {
		var dl deliveriesResponse
		f.must(200, "GET", "/webhooks/op/deliveries?tenant=t1&limit=1"+before, nil, &dl)
		for _, a := range dl.Deliveries {
			seen = append(seen, a.EventID)
		}
		if dl.NextBefore == "" {
			break
		}
		before = "&before=" + url.QueryEscape(dl.NextBefore)
	}
	if !slices.Equal(slices.Sorted(slices.Values(seen)), slices.Sorted(slices.Values(want["t1"]))) {
		t.Errorf("paged t1 deliveries: %v, want %v", seen, want["t1"])
	}
	for _, q := range []string{"/events?tenant=", "/events?tenant=t%201", "/webhooks/op/deliveries?tenant=", "/portal-links?tenant=%00"} {
		if status, b := f.call("GET", q, nil); status != 400 {
			t.Errorf("GET %s: %d %s", q, status, b)
		}
	}
}

// openapi.json describes every operation of the portal's API.
func TestOpenAPIDescribesThePortal(t *testing.T) {
	var doc struct {
		Info struct {
			Description string `json:"description"`
		} `json:"info"`
		Components struct {
			SecuritySchemes map[string]json.RawMessage `json:"securitySchemes"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPIDoc, &doc); err != nil {
		t.Fatal(err)
	}
	for _, rt := range portalRoutes {
		if !strings.Contains(doc.Info.Description, rt.method+" "+rt.path) {
			t.Errorf("openapi.json's description does not name the portal's %s %s", rt.method, rt.path)
		}
	}
	if _, ok := doc.Components.SecuritySchemes["portalToken"]; !ok {
		t.Error("no portalToken security scheme")
	}
}

// BenchmarkPortalOverhead compares GET /webhooks of the management API (no
// authentication: the baseline) with GET /api/webhooks of the portal (token
// signature, expiry and one Redis round trip for revocation), on the same
// 100 endpoints of one tenant and the same Redis.
func BenchmarkPortalOverhead(b *testing.B) {
	store, rdb := newTestStore(b)
	for i := range 100 {
		if _, err := store.Create(context.Background(), worker.EndpointConfig{
			URL: fmt.Sprintf("https://h%d.example.com/hook", i), Events: []string{"user.*"}, Tenant: "t1",
		}); err != nil {
			b.Fatal(err)
		}
	}
	api, err := NewAPI(APIConfig{Store: store})
	if err != nil {
		b.Fatal(err)
	}
	portal, err := NewPortal(PortalConfig{APIConfig: APIConfig{Store: store}})
	if err != nil {
		b.Fatal(err)
	}
	_, token, err := newPortalLinks(rdb, time.Now).issue(context.Background(), "t1", time.Hour, false)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name, path string
		h          http.Handler
		auth       string
	}{
		{"operator", "/webhooks?tenant=t1", api, ""},
		{"portal", "/api/webhooks", portal, "Bearer " + token},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				req := httptest.NewRequest("GET", bc.path, nil)
				if bc.auth != "" {
					req.Header.Set("Authorization", bc.auth)
				}
				bc.h.ServeHTTP(rec, req)
				if rec.Code != 200 {
					b.Fatal(rec.Code, rec.Body)
				}
			}
		})
	}
}

// FuzzPortalToken: whatever arrives as a token, verifying it neither panics
// nor accepts anything but a token the links issued, byte for byte.
func FuzzPortalToken(f *testing.F) {
	rdb := newTestRedis(f)
	links := newPortalLinks(rdb, time.Now)
	ctx := context.Background()
	issued := map[string]bool{}
	for _, ro := range []bool{false, true} {
		_, tok, err := links.issue(ctx, "t1", time.Hour, ro)
		if err != nil {
			f.Fatal(err)
		}
		issued[tok] = true
		f.Add(tok)
		payload, mac, _ := strings.Cut(strings.TrimPrefix(tok, portalTokenPrefix), ".")
		f.Add(portalTokenPrefix + payload + "." + mac[:len(mac)-1] + "A")
		f.Add(portalTokenPrefix + payload + "=." + mac)
		f.Add(portalTokenPrefix + strings.ToUpper(payload) + "." + mac)
	}
	f.Add("")
	f.Add("atp1..")
	f.Add("atp1.e30.AAAA")
	f.Add(portalTokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(`{"kid":"pk_x","id":"pl_x","tnt":"t1","exp":99999999999999}`)) + ".AAAA")
	f.Add(strings.Repeat("atp1.", 300))
	f.Fuzz(func(t *testing.T, tok string) {
		sc, err := links.verify(ctx, tok)
		if err == nil && (!issued[tok] || sc.tenant != "t1") {
			t.Fatalf("accepted %q: %+v", tok, sc)
		}
		if err != nil && issued[tok] {
			t.Fatalf("refused an issued token: %v", err)
		}
	})
}
