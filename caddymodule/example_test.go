package caddymodule

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/worker/tasks"
)

// Caddyfile.example at the repository root adapts, runs, and turns a sign-up
// passing through it into an event:fanout task in Redis; its admin mount
// answers with the password whose hash is in the environment.
func TestCaddyfileExampleRuns(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	example := filepath.Join(root, "Caddyfile.example")
	body, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}

	srv := redistest.Start(t)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/api/users" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, `{"id":"u_ex1","email":"ada@acme.test","name":"Ada","tenant_id":"t_1","password_hash":"$2y$x"}`)
			return
		}
		http.NotFound(w, r)
	}))
	defer upstream.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw-for-test"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	site := "127.0.0.1:" + strconv.Itoa(port)
	t.Setenv("AUTHTAP_SITE", site)
	t.Setenv("AUTHTAP_UPSTREAM", strings.TrimPrefix(upstream.URL, "http://"))
	t.Setenv("AUTHTAP_RULES", filepath.Join(root, "rules", "examples", "basic-users-tenants.yaml"))
	t.Setenv("AUTHTAP_REDIS_URL", srv.URL)
	t.Setenv("AUTHTAP_ADMIN_HASH", string(hash))
	t.Setenv("XDG_DATA_HOME", t.TempDir())   // Caddy's storage and the default spool
	t.Setenv("XDG_CONFIG_HOME", t.TempDir()) // Caddy's autosave

	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(body, map[string]any{"filename": example})
	if err != nil {
		t.Fatalf("adapting Caddyfile.example: %v", err)
	}
	if len(warnings) > 0 {
		t.Fatalf("adapting Caddyfile.example: warnings %v", warnings)
	}
	if strings.Contains(string(cfgJSON), srv.URL) || strings.Contains(string(cfgJSON), string(hash)) {
		t.Fatal("the adapted JSON contains a value meant to be read from the environment at run time")
	}
	// Run it as is, but without the admin endpoint (other tests and processes may hold :2019).
	var cfg map[string]any
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["admin"] = map[string]any{"disabled": true}
	cfgJSON, _ = json.Marshal(cfg)
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatalf("running Caddyfile.example: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })

	base := "http://" + site
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post(base+"/api/users", "application/json",
		strings.NewReader(`{"email":"ada@acme.test","name":"Ada","tenant_id":"t_1","password":"s3cret"}`))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || !strings.Contains(string(got), `"id":"u_ex1"`) {
		t.Fatalf("POST /api/users through Caddy: %d %s", resp.StatusCode, got)
	}

	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: srv.Addr})
	defer insp.Close()
	var found *asynq.TaskInfo
	waitFor(t, 10*time.Second, "an event:fanout task for the sign-up", func() bool {
		for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
			insp.ListPendingTasks, insp.ListActiveTasks, insp.ListCompletedTasks, insp.ListRetryTasks,
		} {
			tis, _ := list(tasks.QueueFanout)
			for _, ti := range tis {
				if ti.Type == tasks.TypeFanout && strings.Contains(string(ti.Payload), `"subject":"u_ex1"`) {
					found = ti
					return true
				}
			}
		}
		return false
	})
	p, err := tasks.ParseFanout(asynq.NewTask(found.Type, found.Payload))
	if err != nil || p.Event.Type != "user.created" || p.Event.ID != found.ID || p.Event.Source.Name != "legacy-auth" {
		t.Fatalf("fan-out task %s: %+v (%v)", found.ID, p.Event, err)
	}
	if strings.Contains(string(found.Payload), "$2y$x") {
		t.Fatalf("password hash not redacted: %s", found.Payload)
	}

	// The admin mount: closed without the password, open with it.
	for _, tc := range []struct {
		user, pass string
		want       int
	}{{"", "", http.StatusUnauthorized}, {"admin", "wrong", http.StatusUnauthorized}, {"admin", "pw-for-test", http.StatusOK}} {
		req, _ := http.NewRequest(http.MethodGet, base+"/_authtap/webhooks", nil)
		if tc.user != "" {
			req.SetBasicAuth(tc.user, tc.pass)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET /_authtap/webhooks as %q: %d %s, want %d", tc.user, resp.StatusCode, b, tc.want)
		}
	}

	// The portal mount: the page for anyone, its API for a portal link only.
	req, _ := http.NewRequest(http.MethodPost, base+"/_authtap/portal-links", strings.NewReader(`{"tenant":"t_1"}`))
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth("admin", "pw-for-test")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var link struct{ URL, Token string }
	err = json.NewDecoder(resp.Body).Decode(&link)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusCreated || link.URL != base+"/portal/#token="+link.Token {
		t.Fatalf("POST /_authtap/portal-links: %d %+v (%v)", resp.StatusCode, link, err)
	}
	for _, tc := range []struct {
		path, token string
		want        int
	}{{"/portal/", "", http.StatusOK}, {"/portal/api/session", "", http.StatusUnauthorized}, {"/portal/api/session", link.Token, http.StatusOK}} {
		req, _ := http.NewRequest(http.MethodGet, base+tc.path, nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s: %d, want %d", tc.path, resp.StatusCode, tc.want)
		}
	}
}

// A site with the authtap handler and no global authtap option: the app is
// provisioned with its defaults (embedded Redis, in-process worker), and an
// event still becomes a processed event:fanout task.
func TestHandlerWithoutGlobalOptionUsesEmbeddedRedis(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"id":"u_zero","email":"z@acme.test","tenant_id":"t_1"}`)
	}))
	defer upstream.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	site := l.Addr().String()
	_ = l.Close()
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	caddyfileText := `{
	admin off
}
http://` + site + ` {
	authtap {
		rules ` + filepath.Join(root, "rules", "examples", "basic-users-tenants.yaml") + `
		source zero
	}
	reverse_proxy ` + strings.TrimPrefix(upstream.URL, "http://") + `
}
`
	cfgJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileText), nil)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(cfgJSON), `"authtap":{`) {
		t.Fatalf("the adapted config has an authtap app although none was configured: %s", cfgJSON)
	}
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	a := activeApp(t)
	if !a.be.embedded || a.InProcessWorker() == nil {
		t.Fatal("the default app has no embedded redis or no in-process worker")
	}

	resp, err := http.Post("http://"+site+"/api/users", "application/json", strings.NewReader(`{"email":"z@acme.test"}`))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	insp := asynq.NewInspector(a.RedisOpt())
	defer insp.Close()
	waitFor(t, 10*time.Second, "a processed event:fanout task on the embedded redis", func() bool {
		tis, _ := insp.ListCompletedTasks(tasks.QueueFanout)
		for _, ti := range tis {
			if ti.Type == tasks.TypeFanout && strings.Contains(string(ti.Payload), `"subject":"u_zero"`) {
				return true
			}
		}
		return false
	})
}
