package caddymodule

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// portalSite mounts authtap_portal at /portal/ next to the admin handler, as
// an operator exposes it to customers: no basic_auth in front of it.
const portalSite = `handle_path /portal/* {
		authtap_portal {
			allow_test_endpoints
		}
	}`

// portalLink is the answer to POST /portal-links.
type portalLink struct {
	ID        string `json:"id"`
	Tenant    string `json:"tenant"`
	URL       string `json:"url"`
	Token     string `json:"token"`
	ExpiresAt string `json:"expires_at"`
}

// issuePortalLink asks the management API (with the operator's credentials) for a link.
func (e *adminEnv) issuePortalLink(body string) portalLink {
	e.t.Helper()
	resp, b := e.do("POST", "/_authtap/portal-links", body, true)
	if resp.StatusCode != http.StatusCreated {
		e.t.Fatalf("POST /portal-links %s: %d %s", body, resp.StatusCode, b)
	}
	var l portalLink
	if err := json.Unmarshal([]byte(b), &l); err != nil {
		e.t.Fatal(err)
	}
	return l
}

// portalDo sends a request to the portal with the given headers.
func (e *adminEnv) portalDo(method, path, body string, header ...string) (*http.Response, string) {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestPortalThroughCaddy: authtap_portal, configured from a Caddyfile, serves
// the page and the tenant's API to portal links only, while authtap_admin
// stays behind basic_auth and issues the links.
func TestPortalThroughCaddy(t *testing.T) {
	env := startAdminCaddy(t, adminCaddyOptions{site: portalSite, global: "worker"})
	l := env.issuePortalLink(`{"tenant":"acme","ttl":"2h"}`)
	if l.URL != env.base+"/portal/#token="+l.Token || l.Tenant != "acme" {
		t.Fatalf("link: %+v, want %s/portal/#token=…", l, env.base)
	}
	bearer := func(tok string) []string { return []string{"Authorization", "Bearer " + tok} }

	resp, page := env.portalDo("GET", "/portal/", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, `src="portal.js"`) ||
		!strings.HasPrefix(resp.Header.Get("Content-Security-Policy"), "default-src 'none'; script-src 'self'") {
		t.Fatalf("GET /portal/: %d %v", resp.StatusCode, resp.Header)
	}
	for _, asset := range []string{"/portal/portal.js", "/portal/portal.css"} {
		if resp, _ := env.portalDo("GET", asset, ""); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", asset, resp.StatusCode)
		}
	}
	resp, body := env.portalDo("GET", "/portal/api/session", "", bearer(l.Token)...)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"tenant":"acme"`) {
		t.Fatalf("session: %d %s", resp.StatusCode, body)
	}
	resp, body = env.portalDo("POST", "/portal/api/webhooks", `{"url":"http://127.0.0.1:9/hook","mode":"test"}`, bearer(l.Token)...)
	if resp.StatusCode != http.StatusCreated || !strings.Contains(body, `"tenant":"acme"`) || !strings.Contains(body, `"secret":"whsec_`) {
		t.Fatalf("portal create: %d %s", resp.StatusCode, body)
	}
	// The operator sees it, with its tenant.
	if resp, body := env.do("GET", "/_authtap/webhooks?tenant=acme", "", true); resp.StatusCode != http.StatusOK || !strings.Contains(body, "127.0.0.1:9/hook") {
		t.Errorf("operator list of acme: %d %s", resp.StatusCode, body)
	}

	// Operator credentials open nothing in the portal; a portal token nothing in the admin API.
	req, _ := http.NewRequest("GET", env.base+"/portal/api/webhooks", nil)
	req.SetBasicAuth(env.user, env.pass)
	if resp, err := env.client.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("basic auth at the portal: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if resp, body := env.portalDo("GET", "/_authtap/webhooks", "", bearer(l.Token)...); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("portal token at authtap_admin: %d %s", resp.StatusCode, body)
	}
	if resp, body := env.portalDo("POST", "/_authtap/portal-links", `{"tenant":"acme"}`, bearer(l.Token)...); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("a portal token issued itself a link: %d %s", resp.StatusCode, body)
	}
	// Refusals name their reason.
	if resp, body := env.portalDo("GET", "/portal/api/webhooks", ""); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `"code":"token_missing"`) {
		t.Errorf("no token: %d %s", resp.StatusCode, body)
	}
	if resp, body := env.portalDo("POST", "/portal/api/webhooks", `{"url":"https://a.example/"}`,
		append(bearer(l.Token), "Sec-Fetch-Site", "cross-site")...); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, `"code":"cross_origin"`) {
		t.Errorf("cross-site POST: %d %s", resp.StatusCode, body)
	}
	if resp, _ := env.do("DELETE", "/_authtap/portal-links/"+l.ID, "", true); resp.StatusCode != http.StatusNoContent {
		t.Errorf("revoke: %d", resp.StatusCode)
	}
	if resp, body := env.portalDo("GET", "/portal/api/webhooks", "", bearer(l.Token)...); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `"code":"token_revoked"`) {
		t.Errorf("revoked link: %d %s", resp.StatusCode, body)
	}
}

func TestPortalCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`authtap_portal {
		frame_ancestors https://app.example.com
		frame_ancestors 'self'
		allow_test_endpoints
		max_endpoints 3
		changes_per_minute 9
		prefix /customers/
	}`)
	var p Portal
	if err := p.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if strings.Join(p.FrameAncestors, " ") != "https://app.example.com 'self'" || !p.AllowTestEndpoints ||
		p.MaxEndpoints != 3 || p.ChangesPerMinute != 9 || p.Prefix != "/customers/" {
		t.Errorf("parsed %+v", p)
	}
	for _, bad := range []Portal{{Prefix: "portal"}, {Prefix: "/p?x"}, {MaxEndpoints: -1}} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v) accepted", bad)
		}
	}
}

// TestPortalAdminCaddyfileErrors: both directives take their options in a
// block only, and each one-value option exactly one value.
func TestPortalAdminCaddyfileErrors(t *testing.T) {
	for _, tc := range []struct{ input, want string }{
		{"authtap_portal /p {\n}", `unexpected argument "/p": authtap_portal takes its options in a block`},
		{"authtap_portal {\n prefix\n}", "wrong argument count"},
		{"authtap_portal {\n prefix /a /b\n}", "wrong argument count"},
		{"authtap_portal {\n max_endpoints 3 4\n}", "wrong argument count"},
		{"authtap_portal {\n changes_per_minute 0\n}", `changes_per_minute: want a positive integer, got "0"`},
		{"authtap_admin /a {\n}", `unexpected argument "/a": authtap_admin takes its options in a block`},
		{"authtap_admin {\n portal_url\n}", "wrong argument count"},
		{"authtap_admin {\n monitor on off\n}", "wrong argument count"},
		{"authtap_admin {\n monitor maybe\n}", `monitor: want on, off or read_only, got "maybe"`},
	} {
		var u caddyfile.Unmarshaler = new(Portal)
		if strings.HasPrefix(tc.input, "authtap_admin") {
			u = new(Admin)
		}
		err := u.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.input, err, tc.want)
		}
	}
	var a Admin
	if err := a.UnmarshalCaddyfile(caddyfile.NewTestDispenser("authtap_admin {\n prefix /_authtap\n monitor read_only\n portal_url https://x.example/portal\n}")); err != nil ||
		a.Prefix != "/_authtap" || a.DisableMonitor || !a.MonitorReadOnly || a.PortalURL != "https://x.example/portal" {
		t.Errorf("authtap_admin parsed %+v, %v", a, err)
	}
}
