package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/authtap/authtap/admin"
	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker/tasks"
)

// adminTestRules is the rule file of the authtap handler in the admin tests'
// Caddy config.
const adminTestRules = `version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users}
    emit: {type: user.created, subject: "{response.body.id}", data: {id: "{response.body.id}"}}
  - name: user-deleted
    match: {method: DELETE, path: "/api/users/{id}"}
    emit: {type: user.deleted, subject: "{path.id}", data: {id: "{path.id}"}}
`

// adminCaddyfile is what a user writes: the admin handler under handle_path
// behind basic_auth, next to the authtap handler and the upstream. The
// arguments are the HTTP port, the storage dir, the rule file, the upstream,
// the bcrypt hash of the admin password, the Redis line ("redis <url>", or
// empty for the embedded Redis), the spool dir, the authtap_admin directive
// and the rest of the site (e.g. a portal), and more global authtap options.
const adminCaddyfile = `{
	admin off
	persist_config off
	auto_https off
	http_port %[1]d
	storage file_system %[2]s
	log {
		level ERROR
	}
	authtap {
		%[6]s
		spool_dir %[7]s
		%[10]s
	}
}
http://127.0.0.1:%[1]d {
	authtap {
		rules %[3]s
		reload_interval off
	}
	reverse_proxy %[4]s
	handle_path /_authtap/* {
		basic_auth {
			admin %[5]s
		}
		%[8]s
	}
	%[9]s
}
`

// adminEnv is a running Caddy with the admin handler, on a private Redis.
type adminEnv struct {
	t      testing.TB
	redis  *redistest.Server // nil with the embedded Redis
	base   string            // http://127.0.0.1:port
	user   string
	pass   string
	client *http.Client
}

// adminCaddyOptions vary the Caddyfile of startAdminCaddy.
type adminCaddyOptions struct {
	embedded   bool   // use the embedded Redis (and so the in-process worker)
	adminBlock string // lines inside the authtap_admin block
	site       string // more of the site block, e.g. handle_path /portal/* { authtap_portal }
	global     string // more lines of the global authtap block, e.g. worker
	rules      string // the rule file; default adminTestRules
}

// startAdminCaddy runs Caddy in this process with adminCaddyfile and a
// private Redis, and stops it when the test ends. Not parallel: Caddy's
// running config is process-wide.
func startAdminCaddy(t testing.TB, o adminCaddyOptions) *adminEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs Caddy and Redis")
	}
	env := &adminEnv{
		t: t, user: "admin", pass: "correct horse battery staple",
		client: &http.Client{
			Timeout:       30 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"u_1"}`)
	}))
	t.Cleanup(upstream.Close)

	dir := t.TempDir()
	rulesFile := filepath.Join(dir, "rules.yaml")
	ruleText := adminTestRules
	if o.rules != "" {
		ruleText = o.rules
	}
	if err := os.WriteFile(rulesFile, []byte(ruleText), 0o600); err != nil {
		t.Fatal(err)
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(env.pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	redisLine := ""
	if !o.embedded {
		env.redis = redistest.Start(t)
		redisLine = "redis " + env.redis.URL
	}
	adminDirective := "authtap_admin"
	if o.adminBlock != "" {
		adminDirective += " {\n\t\t\t" + o.adminBlock + "\n\t\t}"
	}
	port := adminFreePort(t)
	env.base = "http://127.0.0.1:" + strconv.Itoa(port)
	caddyfileText := fmt.Sprintf(adminCaddyfile, port, filepath.Join(dir, "storage"), rulesFile,
		strings.TrimPrefix(upstream.URL, "http://"), hash, redisLine, filepath.Join(dir, "spool"), adminDirective, o.site, o.global)
	caddyfileText = regexp.MustCompile(`\n\t+\n`).ReplaceAllString(caddyfileText, "\n") // the empty lines

	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileText), nil)
	if err != nil {
		t.Fatalf("adapting the Caddyfile: %v\n%s", err, caddyfileText)
	}
	for _, w := range warnings {
		t.Logf("adapter warning: %s", w.String())
	}
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatalf("loading the Caddy config: %v", err)
	}
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping Caddy: %v", err)
		}
	})
	return env
}

func adminFreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// do sends a request through Caddy, with the admin credentials when auth is
// true, and returns the response with its body read.
func (e *adminEnv) do(method, path, body string, auth bool) (*http.Response, string) {
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
	if auth {
		req.SetBasicAuth(e.user, e.pass)
	}
	resp, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, string(b)
}

// enqueueParkedDelivery puts a webhook:deliver task in Redis that waits an
// hour (scheduled), so that it stays put for the monitor to show, and
// returns its task id.
func (e *adminEnv) enqueueParkedDelivery(eventID, endpointID string) string {
	e.t.Helper()
	client := asynq.NewClient(asynq.RedisClientOpt{Addr: e.redis.Addr})
	defer client.Close()
	task, err := tasks.NewDeliverTask(tasks.DeliverPayload{
		EventID: eventID, EventType: "user.created", EndpointID: endpointID,
		Body: json.RawMessage(`{"id":"` + eventID + `","type":"user.created","data":{"id":"u_1"}}`),
	}, asynq.ProcessIn(time.Hour))
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := client.Enqueue(task)
	if err != nil {
		e.t.Fatalf("enqueuing a delivery: %v", err)
	}
	return info.ID
}

// TestAdminThroughCaddy drives the management API and asynqmon through a real
// Caddy configured from a Caddyfile, as users mount it: handle_path plus
// basic_auth.
func TestAdminThroughCaddy(t *testing.T) {
	env := startAdminCaddy(t, adminCaddyOptions{})

	t.Run("no credentials, no access", func(t *testing.T) {
		env.t = t
		for _, tc := range []struct{ method, path string }{
			{"GET", "/_authtap/webhooks"},
			{"POST", "/_authtap/webhooks"},
			{"GET", "/_authtap/openapi.json"},
			{"GET", "/_authtap/event-types"},
			{"GET", "/_authtap/monitor"},
			{"GET", "/_authtap/monitor/"},
			{"GET", "/_authtap/monitor/queues/authtap_deliver"},
			{"GET", "/_authtap/monitor/api/queues"},
			{"DELETE", "/_authtap/monitor/api/queues/authtap_deliver"},
		} {
			resp, body := env.do(tc.method, tc.path, "", false)
			if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s without credentials: %d %q, want 401 with a challenge", tc.method, tc.path, resp.StatusCode, body)
			}
		}
		req, _ := http.NewRequest("GET", env.base+"/_authtap/monitor/", nil)
		req.SetBasicAuth(env.user, "wrong")
		resp, err := env.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("monitor with a wrong password: %d, want 401", resp.StatusCode)
		}
	})

	var created struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
		Mode   string `json:"mode"`
	}
	t.Run("create an endpoint, secret shown once", func(t *testing.T) {
		env.t = t
		resp, body := env.do("POST", "/_authtap/webhooks",
			`{"url":"http://127.0.0.1:9/hook","mode":"test","events":["user.created"],"description":"through caddy"}`, true)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("create: %d %s", resp.StatusCode, body)
		}
		if err := json.Unmarshal([]byte(body), &created); err != nil {
			t.Fatal(err)
		}
		if created.ID == "" || created.Mode != "test" || !strings.HasPrefix(created.Secret, "whsec_") {
			t.Fatalf("create answered %s", body)
		}
		// The Location is relative to the mount; it resolves below /_authtap.
		loc, err := resp.Location()
		if err != nil || loc.Path != "/_authtap/webhooks/"+created.ID {
			t.Errorf("Location %v (%v), want /_authtap/webhooks/%s", loc, err, created.ID)
		}

		resp, body = env.do("GET", "/_authtap/webhooks", "", true)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"id":"`+created.ID+`"`) {
			t.Errorf("list: %d %s", resp.StatusCode, body)
		}
		if strings.Contains(body, created.Secret) || strings.Contains(body, "whsec_") {
			t.Errorf("list shows the secret: %s", body)
		}
		resp, body = env.do("GET", "/_authtap/webhooks/"+created.ID, "", true)
		if resp.StatusCode != http.StatusOK || strings.Contains(body, "whsec_") {
			t.Errorf("get: %d %s (must not show the secret)", resp.StatusCode, body)
		}
	})

	t.Run("cross-site browser requests are refused", func(t *testing.T) {
		env.t = t
		for _, tc := range []struct {
			method, path string
			header       map[string]string
			want         int
		}{
			{"POST", "/_authtap/webhooks/" + created.ID + "/rotate-secret", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
			{"POST", "/_authtap/webhooks/" + created.ID + "/rotate-secret", map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
			{"POST", "/_authtap/monitor/api/queues/" + tasks.QueueDeliver + ":pause", map[string]string{"Sec-Fetch-Site": "same-site"}, http.StatusForbidden},
			{"DELETE", "/_authtap/webhooks/" + created.ID, map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden},
			{"POST", "/_authtap/webhooks/" + created.ID + "/rotate-secret", map[string]string{"Origin": "https://evil.test", "Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
			{"POST", "/_authtap/monitor/api/queues/" + tasks.QueueDeliver + ":pause", map[string]string{"Origin": "https://evil.test", "Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
			// Reading is always allowed.
			{"GET", "/_authtap/webhooks", map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusOK},
		} {
			req, _ := http.NewRequest(tc.method, env.base+tc.path, nil)
			req.SetBasicAuth(env.user, env.pass)
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			resp, err := env.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s %s with %v: %d %s, want %d", tc.method, tc.path, tc.header, resp.StatusCode, b, tc.want)
			}
			// Every answer, refusals included, forbids framing.
			if resp.Header.Get("X-Frame-Options") != "DENY" || resp.Header.Get("Content-Security-Policy") != "frame-ancestors 'none'" {
				t.Errorf("%s %s: X-Frame-Options %q, CSP %q: may be framed", tc.method, tc.path,
					resp.Header.Get("X-Frame-Options"), resp.Header.Get("Content-Security-Policy"))
			}
		}
		// The refused rotation did not happen: the endpoint still has one secret.
		_, body := env.do("GET", "/_authtap/webhooks/"+created.ID, "", true)
		if strings.Contains(body, "previous_secrets_expire_at") {
			t.Errorf("a refused rotate-secret rotated: %s", body)
		}
		// The admin's own page may.
		req, _ := http.NewRequest("POST", env.base+"/_authtap/webhooks/"+created.ID+"/rotate-secret", nil)
		req.SetBasicAuth(env.user, env.pass)
		req.Header.Set("Sec-Fetch-Site", "same-origin")
		req.Header.Set("Origin", env.base)
		resp, err := env.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "whsec_") {
			t.Errorf("same-origin rotate-secret: %d %s", resp.StatusCode, b)
		}
	})

	t.Run("openapi.json", func(t *testing.T) {
		env.t = t
		resp, body := env.do("GET", "/_authtap/openapi.json", "", true)
		var doc struct {
			OpenAPI string         `json:"openapi"`
			Paths   map[string]any `json:"paths"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &doc) != nil {
			t.Fatalf("openapi.json: %d %.200s", resp.StatusCode, body)
		}
		if doc.OpenAPI == "" || doc.Paths["/webhooks"] == nil || doc.Paths["/event-types"] == nil {
			t.Errorf("openapi.json lacks the version or paths: %.300s", body)
		}
	})

	t.Run("unknown API path is a JSON 404", func(t *testing.T) {
		env.t = t
		resp, body := env.do("GET", "/_authtap/no-such-thing", "", true)
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(resp.Header.Get("Content-Type"), "json") {
			t.Errorf("got %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	})

	t.Run("event types from the rules registry", func(t *testing.T) {
		env.t = t
		set := loadTestRules(t, `version: 1
rules:
  - name: tenant-gone
    description: A tenant was deleted.
    match: {method: DELETE, path: "/api/tenants/{id}"}
    emit: {type: tenant.deleted, subject: "{path.id}", data: {id: "{path.id}", by: "{request.body}"}}
tests:
  - name: delete
    request: {method: DELETE, path: /api/tenants/t_1, body: {admin: root, password: adm1n-secret}}
    expect: [{type: tenant.deleted, subject: t_1}]
`)
		registerRules("admin-test", set)
		t.Cleanup(func() { unregisterRules("admin-test") })
		types := getEventTypes(t, env)
		if !slices.Contains(types, "tenant.deleted") {
			t.Errorf("event types %v lack tenant.deleted", types)
		}
		// the catalog: description and the test's event, redacted
		_, body := env.do("GET", "/_authtap/event-types", "", true)
		var out struct {
			EventTypes []rules.EventType `json:"event_types"`
		}
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(out.EventTypes, func(e rules.EventType) bool { return e.Type == "tenant.deleted" })
		if i < 0 || out.EventTypes[i].Description != "A tenant was deleted." || len(out.EventTypes[i].Examples) != 1 ||
			!strings.Contains(string(out.EventTypes[i].Examples[0]), `"password":"[REDACTED]"`) || strings.Contains(body, "adm1n-secret") {
			t.Errorf("catalog %s", body)
		}
		unregisterRules("admin-test")
		if types := getEventTypes(t, env); slices.Contains(types, "tenant.deleted") {
			t.Errorf("event types %v still list tenant.deleted after unregistering", types)
		}
	})

	t.Run("event types of the authtap handler in the same config", func(t *testing.T) {
		env.t = t
		types := getEventTypes(t, env)
		if !slices.Contains(types, "user.created") || !slices.Contains(types, "user.deleted") {
			t.Errorf("event types %v, want user.created and user.deleted from the authtap handler's rules", types)
		}
	})

	t.Run("asynqmon below the external prefix", func(t *testing.T) {
		env.t = t
		env.enqueueParkedDelivery("evt_admin_1", "ep_admin_1")

		resp, _ := env.do("GET", "/_authtap/monitor", "", true)
		if resp.StatusCode != http.StatusMovedPermanently || resp.Header.Get("Location") != "/_authtap/monitor/" {
			t.Errorf("/monitor: %d Location %q, want 301 to /_authtap/monitor/", resp.StatusCode, resp.Header.Get("Location"))
		}
		resp, page := env.do("GET", "/_authtap/monitor/", "", true)
		if resp.StatusCode != http.StatusOK || !strings.Contains(page, rootPathFlag("/_authtap/monitor")) {
			t.Fatalf("/monitor/: %d %.300s", resp.StatusCode, page)
		}
		if resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("asynqmon may be framed: X-Frame-Options %q", resp.Header.Get("X-Frame-Options"))
		}
		// A deep link (the UI is a single-page app) serves the same page.
		resp, deep := env.do("GET", "/_authtap/monitor/queues/authtap_deliver?status=scheduled", "", true)
		if resp.StatusCode != http.StatusOK || deep != page {
			t.Errorf("deep link: %d %.200s", resp.StatusCode, deep)
		}
		// The page's scripts load from below the prefix.
		scripts := regexp.MustCompile(`src="(/_authtap/monitor/static/js/[^"]+\.js)"`).FindAllStringSubmatch(page, -1)
		if len(scripts) == 0 {
			t.Fatalf("no scripts below /_authtap/monitor/static in %.500s", page)
		}
		for _, m := range scripts {
			resp, js := env.do("GET", m[1], "", true)
			if resp.StatusCode != http.StatusOK || !strings.Contains(resp.Header.Get("Content-Type"), "javascript") || len(js) < 1000 {
				t.Errorf("%s: %d %s, %d bytes", m[1], resp.StatusCode, resp.Header.Get("Content-Type"), len(js))
			}
		}
		// And its API answers below the prefix too.
		resp, body := env.do("GET", "/_authtap/monitor/api/queues", "", true)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"queue":"`+tasks.QueueDeliver+`"`) {
			t.Errorf("asynqmon queues: %d %.300s", resp.StatusCode, body)
		}
		resp, body = env.do("GET", "/_authtap/monitor/api/queues/"+tasks.QueueDeliver+"/scheduled_tasks", "", true)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `\"event_id\":\"evt_admin_1\"`) {
			t.Errorf("asynqmon scheduled tasks: %d %.500s", resp.StatusCode, body)
		}
	})
}

// rootPathFlag is how asynqmon's page tells its scripts their root path
// (html/template escapes the slashes inside the script).
func rootPathFlag(root string) string {
	return `window.FLAG_ROOT_PATH="` + strings.ReplaceAll(root, "/", `\/`) + `"`
}

// TestAdminWithEmbeddedRedis runs the admin handler as someone trying
// authtap out would: no Redis configured, so the embedded one and the
// in-process worker, whose endpoint store the API then shares; asynqmon
// read-only.
func TestAdminWithEmbeddedRedis(t *testing.T) {
	env := startAdminCaddy(t, adminCaddyOptions{embedded: true, adminBlock: "monitor read_only"})

	resp, body := env.do("POST", "/_authtap/webhooks", `{"url":"http://127.0.0.1:9/hook","mode":"test"}`, true)
	if resp.StatusCode != http.StatusCreated || !strings.Contains(body, `"secret":"whsec_`) {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	// The in-process worker delivers, so the API refuses a live endpoint at an
	// address that worker would never dial.
	if resp, body := env.do("POST", "/_authtap/webhooks", `{"url":"https://10.1.2.3/hook"}`, true); resp.StatusCode != http.StatusBadRequest ||
		!strings.Contains(body, "10.0.0.0/8") {
		t.Errorf("live endpoint at a private address: %d %s", resp.StatusCode, body)
	}
	var ep struct{ ID string }
	_ = json.Unmarshal([]byte(body), &ep)
	if resp, body = env.do("GET", "/_authtap/webhooks", "", true); resp.StatusCode != http.StatusOK || !strings.Contains(body, ep.ID) {
		t.Errorf("list: %d %s", resp.StatusCode, body)
	}
	if resp, body = env.do("GET", "/_authtap/healthz", "", true); resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %d %s", resp.StatusCode, body)
	}
	resp, body = env.do("GET", "/_authtap/monitor/", "", true)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `window.FLAG_READ_ONLY="true"`) {
		t.Errorf("monitor page: %d %.500s, want it read-only", resp.StatusCode, body)
	}
	if resp, body = env.do("GET", "/_authtap/monitor/api/queues", "", true); resp.StatusCode != http.StatusOK {
		t.Errorf("asynqmon queues on the embedded Redis: %d %s", resp.StatusCode, body)
	}
	if resp, body = env.do("DELETE", "/_authtap/monitor/api/queues/"+tasks.QueueDeliver, "", true); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("read-only asynqmon let a DELETE through: %d %s", resp.StatusCode, body)
	}
}

// getEventTypes returns the type names GET /_authtap/event-types lists.
func getEventTypes(t *testing.T, env *adminEnv) []string {
	t.Helper()
	resp, body := env.do("GET", "/_authtap/event-types", "", true)
	var out struct {
		EventTypes []rules.EventType `json:"event_types"`
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &out) != nil {
		t.Fatalf("event-types: %d %s", resp.StatusCode, body)
	}
	names := []string{}
	for _, et := range out.EventTypes {
		names = append(names, et.Type)
	}
	return names
}

// loadTestRules parses one rule file from text.
func loadTestRules(t *testing.T, text string) *rules.Set {
	t.Helper()
	f, err := rules.Parse(t.Name()+".yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.NewSet(f)
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// fakeAPI records the path it was asked for.
type fakeAPI struct{ path string }

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.path = r.URL.Path
	w.WriteHeader(http.StatusTeapot)
}

// TestAdminRouting checks, without a server, where requests go: the API with
// the mount prefix removed, or asynqmon with the prefix the browser sees.
func TestAdminRouting(t *testing.T) {
	for i, tc := range []struct {
		handler  Admin
		origPath string // the path Caddy received; empty: no original request in the context
		path     string // the path the handler sees
		apiPath  string // want the API to get this path
		root     string // or want asynqmon's page with this root path
		redirect string // or want a redirect here
		status   int    // or want this error status
	}{
		{origPath: "/_authtap/webhooks", path: "/webhooks", apiPath: "/webhooks"},
		{origPath: "/webhooks", path: "/webhooks", apiPath: "/webhooks"},
		{handler: Admin{Prefix: "/ops"}, origPath: "/ops/webhooks/x", path: "/ops/webhooks/x", apiPath: "/webhooks/x"},
		{handler: Admin{Prefix: "/ops"}, origPath: "/ops", path: "/ops", apiPath: "/"},
		{handler: Admin{Prefix: "/ops"}, origPath: "/opsx/webhooks", path: "/opsx/webhooks", apiPath: "/opsx/webhooks"},
		{origPath: "/_authtap/monitor/", path: "/monitor/", root: "/_authtap/monitor"},
		{origPath: "/a/b/monitor/queues/q1", path: "/monitor/queues/q1", root: "/a/b/monitor"},
		{path: "/monitor/", root: "/monitor"},
		{origPath: "/x/monitor/y", path: "/monitor/", root: "/monitor"}, // rewritten, not stripped
		{handler: Admin{Prefix: "/outer"}, origPath: "/inner/monitor/", path: "/monitor/", root: "/outer/monitor"},
		{handler: Admin{Prefix: "/ops"}, origPath: "/ops/monitor/", path: "/ops/monitor/", root: "/ops/monitor"},
		{origPath: "/_authtap/monitor", path: "/monitor", redirect: "/_authtap/monitor/"},
		{origPath: "/_authtap/monitorx", path: "/monitorx", apiPath: "/monitorx"},
		{handler: Admin{DisableMonitor: true}, origPath: "/_authtap/monitor/", path: "/monitor/", apiPath: "/monitor/"},
		{origPath: "/{x}/monitor/", path: "/monitor/", status: http.StatusBadRequest},
		{origPath: "/a\"b/monitor/", path: "/monitor/", status: http.StatusBadRequest},
		{origPath: "//evil.example/monitor", path: "/monitor", status: http.StatusBadRequest}, // no open redirect
	} {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			h := tc.handler
			api := &fakeAPI{}
			h.api, h.guard = api, admin.NewBrowserGuard()
			if !h.DisableMonitor {
				h.monitors = newMonitorCache(asynq.RedisClientOpt{Addr: "127.0.0.1:1"}, false)
				t.Cleanup(func() { _ = h.monitors.close() })
			}
			r := httptest.NewRequest("GET", "http://example.test/", nil)
			r.URL.Path = tc.path
			if tc.origPath != "" {
				orig := *r
				orig.URL = &url.URL{Path: tc.origPath}
				r = r.WithContext(context.WithValue(r.Context(), caddyhttp.OriginalRequestCtxKey, orig))
			}
			w := httptest.NewRecorder()
			err := h.ServeHTTP(w, r, nil)
			switch {
			case tc.status != 0:
				var he caddyhttp.HandlerError
				if !asHandlerError(err, &he) || he.StatusCode != tc.status {
					t.Errorf("error %v, want status %d", err, tc.status)
				}
			case err != nil:
				t.Fatalf("ServeHTTP: %v", err)
			case tc.apiPath != "":
				if api.path != tc.apiPath {
					t.Errorf("API got %q, want %q", api.path, tc.apiPath)
				}
			case tc.redirect != "":
				if w.Code != http.StatusMovedPermanently || w.Header().Get("Location") != tc.redirect {
					t.Errorf("got %d Location %q, want a redirect to %q", w.Code, w.Header().Get("Location"), tc.redirect)
				}
			default:
				if api.path != "" {
					t.Fatalf("API got %q, want asynqmon", api.path)
				}
				want := rootPathFlag(tc.root)
				if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), want) {
					t.Errorf("got %d %s, want asynqmon's page with %s", w.Code, w.Body.String(), want)
				}
			}
		})
	}
}

func asHandlerError(err error, he *caddyhttp.HandlerError) bool {
	e, ok := err.(caddyhttp.HandlerError)
	if ok {
		*he = e
	}
	return ok
}

func TestMonitorCacheIsBounded(t *testing.T) {
	c := newMonitorCache(asynq.RedisClientOpt{Addr: "127.0.0.1:1"}, true)
	t.Cleanup(func() { _ = c.close() })
	first, err := c.get("/r0/monitor")
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < maxMonitors; i++ {
		if _, err := c.get(fmt.Sprintf("/r%d/monitor", i)); err != nil {
			t.Fatal(err)
		}
	}
	// r0 is used again, so r1 is now the least recently used.
	if again, _ := c.get("/r0/monitor"); again != first {
		t.Error("a cached root made a new instance")
	}
	if _, err := c.get("/new/monitor"); err != nil {
		t.Fatal(err)
	}
	if len(c.byRoot) != maxMonitors || len(c.order) != maxMonitors {
		t.Errorf("cache holds %d (%d in order), want %d", len(c.byRoot), len(c.order), maxMonitors)
	}
	if c.byRoot["/r1/monitor"] != nil || c.byRoot["/r0/monitor"] != first {
		t.Errorf("evicted the wrong instance: order %v", c.order)
	}
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.get("/r0/monitor"); err == nil {
		t.Error("get after close succeeded")
	}
}

func TestAdminValidate(t *testing.T) {
	for i, tc := range []struct {
		prefix string
		ok     bool
	}{
		{"", true}, {"/_authtap", true}, {"/a/b", true},
		{"_authtap", false}, {"/a?b", false}, {"/a#b", false},
	} {
		err := (&Admin{Prefix: tc.prefix}).Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%d: Validate(%q) = %v, want ok %v", i, tc.prefix, err, tc.ok)
		}
	}
}

func TestLoadedEventTypesMerges(t *testing.T) {
	a := loadTestRules(t, `version: 1
rules:
  - name: b-created
    match: {method: POST, path: /users}
    emit: {type: user.created, data: {}}
  - name: action
    match: {method: POST, path: "/users/{id}/{action}"}
    emit: {type: "user.{path.action}", types: [user.promoted, user.banned], data: {}}
`)
	b := loadTestRules(t, `version: 1
rules:
  - name: a-created
    match: {method: POST, path: /signup}
    emit: {type: user.created, data: {}}
  - name: b-created
    match: {method: PUT, path: /users}
    emit: {type: user.created, data: {}}
`)
	registerRules("merge-a", a)
	registerRules("merge-b", b)
	t.Cleanup(func() { unregisterRules("merge-a"); unregisterRules("merge-b") })

	got := loadedEventTypes()
	find := func(typ string) *rules.EventType {
		for i := range got {
			if got[i].Type == typ {
				return &got[i]
			}
		}
		return nil
	}
	created := find("user.created")
	if created == nil || !slices.Equal(created.Rules, []string{"a-created", "b-created"}) || created.Templated {
		t.Errorf("user.created merged to %+v", created)
	}
	if tpl := find("user.{path.action}"); tpl == nil || !tpl.Templated || !slices.Equal(tpl.Types, []string{"user.banned", "user.promoted"}) {
		t.Errorf("templated type merged to %+v", tpl)
	}
	if banned := find("user.banned"); banned == nil || banned.Templated || !slices.Equal(banned.Rules, []string{"action"}) {
		t.Errorf("a declared type of a templated type is listed as %+v", banned)
	}
	if !slices.IsSortedFunc(got, func(x, y rules.EventType) int { return strings.Compare(x.Type, y.Type) }) {
		t.Errorf("not sorted: %+v", got)
	}

	registerRules("merge-a", nil)
	if find := loadedEventTypes(); len(find) == 0 || slices.ContainsFunc(find, func(e rules.EventType) bool { return e.Templated }) {
		t.Errorf("after withdrawing a: %+v", find)
	}
}
