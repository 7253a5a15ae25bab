package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/authtap/authtap/admin"
	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/worker"
)

const endpointsTestToken = "cli-admin-token-9b2"

// startAPI serves the management API over a private Redis behind a bearer
// token and points $AUTHTAP_API and $AUTHTAP_ADMIN_TOKEN at it.
func startAPI(t *testing.T) *worker.Store {
	t.Helper()
	srv := redistest.Start(t)
	opt, err := worker.ParseRedisURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := worker.NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Redis: opt, Endpoints: []worker.EndpointConfig{
		{ID: "gitops", URL: "https://hooks.example.com/gitops", Secret: secret},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
	h, err := admin.NewAPI(admin.APIConfig{Store: w.Store(), Client: w.Client()})
	if err != nil {
		t.Fatal(err)
	}
	authed, err := admin.RequireBearer(endpointsTestToken, h)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(authed)
	t.Cleanup(ts.Close)
	t.Setenv("AUTHTAP_API", ts.URL)
	t.Setenv("AUTHTAP_ADMIN_TOKEN", endpointsTestToken)
	return w.Store()
}

// cli runs "authtap endpoints ARGS..." and returns its exit status and output.
func cli(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(append([]string{"endpoints"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

var secretLine = regexp.MustCompile(`(?m)^signing secret of (\S+): (whsec_\S+)$`)

func TestEndpointsCommand(t *testing.T) {
	store := startAPI(t)
	ctx := context.Background()

	code, out, errs := cli("add", "--id", "crm", "--url", "http://127.0.0.1:9/hook", "--mode", "test", "--tenant", "org_1",
		"--events", "user.created, tenant.*", "--description", "CRM sync", "--bearer-token", "tok-1",
		"--event-header", "X-Crm-Event", "--format", "data", "--rate-limit", "2.5", "--max-concurrency", "3")
	if code != 0 {
		t.Fatalf("add: exit %d: %s", code, errs)
	}
	m := secretLine.FindStringSubmatch(out)
	if m == nil || m[1] != "crm" || !strings.Contains(out, "will not be shown again") {
		t.Fatalf("add printed %q", out)
	}
	ep, err := store.Get(ctx, "crm")
	if err != nil {
		t.Fatal(err)
	}
	if ep.Secret() != m[2] || ep.Mode != "test" || ep.Tenant != "org_1" || !slices.Equal(ep.Events, []string{"user.created", "tenant.*"}) ||
		ep.Description != "CRM sync" || !ep.HasBearerToken || ep.EventHeader != "X-Crm-Event" || ep.Format != "data" ||
		ep.RateLimit != 2.5 || ep.MaxConcurrency != 3 {
		t.Errorf("stored %+v", ep)
	}

	// A generated id; --json prints the API's answer.
	code, out, errs = cli("add", "--url", "https://hooks.example.com/x", "--json")
	var created struct{ ID, Secret string }
	if code != 0 || json.Unmarshal([]byte(out), &created) != nil || !strings.HasPrefix(created.ID, "ep_") ||
		!strings.HasPrefix(created.Secret, "whsec_") {
		t.Fatalf("add --json: exit %d %q %s", code, out, errs)
	}

	code, out, errs = cli("list")
	if code != 0 {
		t.Fatalf("list: exit %d: %s", code, errs)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || strings.Join(strings.Fields(lines[0]), " ") != "ID MODE ENABLED EVENTS URL" ||
		strings.Join(strings.Fields(lines[2]), " ") != "crm test yes user.created,tenant.* http://127.0.0.1:9/hook" ||
		!strings.HasPrefix(lines[1], "gitops (config)") {
		t.Errorf("list printed:\n%s", out)
	}
	if strings.Contains(out, "whsec_") || strings.Contains(out, "tok-1") {
		t.Errorf("list shows a secret:\n%s", out)
	}
	code, out, _ = cli("list", "--json")
	var eps []worker.Endpoint
	if code != 0 || json.Unmarshal([]byte(out), &eps) != nil || len(eps) != 3 {
		t.Errorf("list --json: exit %d %s", code, out)
	}

	// update changes only the flags given; the id may come before or after them.
	if code, out, errs = cli("update", "crm", "--description", "CRM", "--events", "user.*", "--tenant", "org_2"); code != 0 || !strings.Contains(out, "updated endpoint crm") {
		t.Fatalf("update: exit %d %q %s", code, out, errs)
	}
	if code, _, errs = cli("update", "--enabled=false", "crm"); code != 0 {
		t.Fatalf("update --enabled=false: exit %d %s", code, errs)
	}
	ep, _ = store.Get(ctx, "crm")
	if ep.Description != "CRM" || !slices.Equal(ep.Events, []string{"user.*"}) || ep.Mode != "test" || ep.Format != "data" || ep.Tenant != "org_2" ||
		ep.URL != "http://127.0.0.1:9/hook" || ep.RateLimit != 2.5 || ep.Enabled {
		t.Errorf("after update %+v", ep)
	}

	// test refuses a disabled endpoint, with the API's message.
	code, _, errs = cli("test", "crm")
	if code != 1 || !strings.Contains(errs, "authtap endpoints test: ") || !strings.Contains(errs, "disabled") {
		t.Errorf("test of a disabled endpoint: exit %d %q", code, errs)
	}
	cli("update", "crm", "--enabled")
	code, out, errs = cli("test", "crm")
	if code != 0 || !strings.Contains(out, "queued test event evt_") {
		t.Errorf("test: exit %d %q %s", code, out, errs)
	}

	code, out, errs = cli("rotate", "crm", "--keep-old-for", "1h")
	m = secretLine.FindStringSubmatch(out)
	if code != 0 || m == nil || !strings.Contains(out, "will not be shown again") {
		t.Fatalf("rotate: exit %d %q %s", code, out, errs)
	}
	ep, _ = store.Get(ctx, "crm")
	if ep.Secret() != m[2] || len(ep.SecretExpiries) != 1 {
		t.Errorf("after rotate: secret matches %v, previous %v", ep.Secret() == m[2], ep.SecretExpiries)
	}

	if code, out, _ = cli("rm", "crm"); code != 0 || !strings.Contains(out, "deleted endpoint crm") {
		t.Errorf("rm: exit %d %q", code, out)
	}
	code, _, errs = cli("rm", "crm")
	if code != 1 || !strings.Contains(errs, `endpoint "crm" does not exist`) {
		t.Errorf("rm of a missing endpoint: exit %d %q", code, errs)
	}
}

func TestEndpointsCommandErrors(t *testing.T) {
	startAPI(t)
	for _, tc := range []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"invalid url", []string{"add", "--url", "ftp://x"}, 1, "url: want an absolute https URL"},
		{"read-only", []string{"update", "gitops", "--url", "https://x.example"}, 1, "declared in the Caddy config"},
		{"read-only rm", []string{"rm", "gitops"}, 1, "read-only"},
		{"wrong token", []string{"list", "--token", "nope"}, 1, "invalid bearer token"},
		{"no token", []string{"list", "--token", ""}, 1, "missing bearer token"},
		{"unreachable", []string{"list", "--api", "http://user:pw-secret@127.0.0.1:1"}, 1, "calling the management API"},
		{"bad api url", []string{"list", "--api", "127.0.0.1:8081"}, 2, "--api"},
		{"add without url", []string{"add"}, 2, "--url is required"},
		{"update without id", []string{"update", "--url", "https://x.example"}, 2, "want an endpoint ID"},
		{"update without flags", []string{"update", "x"}, 2, "nothing to change"},
		{"extra argument", []string{"rm", "a", "b"}, 2, "unexpected argument"},
		{"unknown flag", []string{"list", "--colour"}, 2, "colour"},
		{"unknown command", []string{"frob"}, 2, "unknown command"},
		{"negative keep", []string{"rotate", "x", "--keep-old-for", "-1h"}, 2, "negative"},
		{"help", []string{}, 0, "authtap endpoints list"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errs := cli(tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.err) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errs, tc.code, tc.err)
			}
			if strings.Contains(errs, "pw-secret") || strings.Contains(errs, endpointsTestToken) {
				t.Errorf("stderr holds a secret: %q", errs)
			}
		})
	}
}
