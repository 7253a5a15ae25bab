package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

// The API names the tenant field when it refuses an endpoint's tenant.
func TestCheckEndpointConfigTenant(t *testing.T) {
	for _, bad := range []string{"t1 ", " t1", "t1\x00", "t/1", "t1\n", "{\"$ne\":1}", strings.Repeat("x", rules.MaxTenantLen+1)} {
		if e := checkEndpointConfig(worker.EndpointConfig{URL: "https://a.example", Tenant: bad}); e == nil || e.Field != "tenant" {
			t.Errorf("checkEndpointConfig(tenant %q) = %+v, want a tenant field error", bad, e)
		}
	}
}

// The management API takes a tenant on create and patch, refuses an invalid
// one as a field error, lists one tenant's endpoints with ?tenant=, and
// openapi.json documents all three.
func TestAPIEndpointTenant(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{endpoints: []worker.EndpointConfig{
		{ID: "cfg_t2", URL: "https://c.example/", Tenant: "t2", Secret: worker.SecretPrefix + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
	}})
	for _, c := range []worker.EndpointConfig{
		{ID: "op", URL: "https://a.example/"},
		{ID: "a1", URL: "https://a.example/", Tenant: "t1"},
		{ID: "b1", URL: "https://a.example/", Tenant: "T1"},
	} {
		if status, b := f.call("POST", "/webhooks", c); status != http.StatusCreated || !strings.Contains(string(b), `"tenant":"`+c.Tenant+`"`) == (c.Tenant != "") {
			t.Fatalf("create %s: %d %s", c.ID, status, b)
		}
	}
	for _, bad := range []string{"t1 ", "t\u00e9", strings.Repeat("x", rules.MaxTenantLen+1), "a/b"} {
		status, b := f.call("POST", "/webhooks", worker.EndpointConfig{URL: "https://a.example/", Tenant: bad})
		if status != http.StatusBadRequest || !strings.Contains(string(b), `"field":"tenant"`) {
			t.Errorf("create with tenant %q: %d %s", bad, status, b)
		}
	}
	list := func(query string) (int, string) {
		t.Helper()
		status, b := f.call("GET", "/webhooks"+query, nil)
		var resp struct{ Webhooks []worker.Endpoint }
		_ = json.Unmarshal(b, &resp)
		var ids []string
		for _, ep := range resp.Webhooks {
			ids = append(ids, ep.ID)
		}
		slices.Sort(ids)
		return status, strings.Join(ids, ",")
	}
	for q, want := range map[string]string{"": "a1,b1,cfg_t2,op", "?tenant=t1": "a1", "?tenant=T1": "b1", "?tenant=t2": "cfg_t2", "?tenant=t9": ""} {
		if status, got := list(q); status != http.StatusOK || got != want {
			t.Errorf("GET /webhooks%s: %d %q, want %q", q, status, got, want)
		}
	}
	for _, q := range []string{"?tenant=", "?tenant=t1%20", "?tenant=%00", "?tenant=" + strings.Repeat("x", rules.MaxTenantLen+1)} {
		if status, _ := list(q); status != http.StatusBadRequest {
			t.Errorf("GET /webhooks%s: %d, want 400", q, status)
		}
	}
	if status, b := f.call("PATCH", "/webhooks/op", map[string]any{"tenant": "t1"}); status != http.StatusOK || !strings.Contains(string(b), `"tenant":"t1"`) {
		t.Errorf("patch tenant: %d %s", status, b)
	}
	if status, b := f.call("PATCH", "/webhooks/op", map[string]any{"tenant": "t1\n"}); status != http.StatusBadRequest || !strings.Contains(string(b), `"field":"tenant"`) {
		t.Errorf("patch to a bad tenant: %d %s", status, b)
	}
	if status, got := list("?tenant=t1"); status != http.StatusOK || got != "a1,op" {
		t.Errorf("after the patch, tenant t1 lists %q", got)
	}
	if status, b := f.call("PATCH", "/webhooks/cfg_t2", map[string]any{"tenant": "t1"}); status != http.StatusConflict && status != http.StatusForbidden {
		t.Errorf("patch of a configured endpoint's tenant: %d %s", status, b)
	}
	// A tenant endpoint's test event carries its tenant; an operator endpoint's none.
	if status, b := f.call("POST", "/webhooks/a1/test", nil); status != http.StatusAccepted || !strings.Contains(string(b), `"tenant":"t1"`) {
		t.Errorf("test event of a tenant endpoint: %d %s", status, b)
	}
	if status, b := f.call("PATCH", "/webhooks/op", map[string]any{"tenant": ""}); status != http.StatusOK || strings.Contains(string(b), `"tenant"`) {
		t.Errorf("patch to no tenant: %d %s", status, b)
	}
	if status, b := f.call("POST", "/webhooks/op/test", nil); status != http.StatusAccepted || strings.Contains(string(b), `"tenant"`) {
		t.Errorf("test event of an operator endpoint: %d %s", status, b)
	}
	doc := string(openAPIDoc)
	for _, want := range []string{`"name": "tenant"`, `"tenant": {`} {
		if !strings.Contains(doc, want) {
			t.Errorf("openapi.json lacks %s", want)
		}
	}
}

// Replay keeps the tenant rule: a tenant endpoint's replayed window holds only
// its tenant's events, an operator endpoint's every event.
func TestAPIReplayTenant(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{})
	rcv := newAPIReceiver(t, 200)
	f.create(worker.EndpointConfig{ID: "t1ep", URL: rcv.srv.URL, Mode: "test", Tenant: "t1"})
	f.create(worker.EndpointConfig{ID: "opep", URL: rcv.srv.URL, Mode: "test"})
	ctx := context.Background()
	start := time.Now().Add(-time.Second)
	var all, mine []string
	for i, tenant := range []string{"t1", "", "T1", "t1 ", "t2", "t1"} {
		now := time.Now().UTC().Truncate(time.Millisecond)
		ev := rules.Event{ID: rules.NewEventID(now), Type: "user.created", Timestamp: now, Tenant: tenant,
			Data: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)), Source: rules.Source{Name: "test", Rule: "r"}, Mode: "test"}
		env, err := ev.Envelope()
		if err != nil {
			t.Fatal(err)
		}
		if err := f.worker.Store().RecordEvent(ctx, ev, env, nil); err != nil {
			t.Fatal(err)
		}
		all = append(all, ev.ID)
		if tenant == "t1" {
			mine = append(mine, ev.ID)
		}
	}
	since := url.QueryEscape(start.Format(time.RFC3339Nano))
	for id, want := range map[string][]string{"t1ep": mine, "opep": all} {
		var rr replayResponse
		f.must(202, "POST", "/webhooks/"+id+"/replay?since="+since, nil, &rr)
		if got := slices.Sorted(slices.Values(rr.EventIDs)); !slices.Equal(got, slices.Sorted(slices.Values(want))) {
			t.Errorf("replay to %s sent %v, want %v", id, got, want)
		}
	}
}
