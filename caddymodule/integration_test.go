package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/worker/tasks"
)

// integrationRules is the rule file of the integration tests.
const integrationRules = `version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users, response: {body: {"user.id": exists}}}
    emit:
      type: user.created
      subject: "{response.body.user.id}"
      data: {id: "{response.body.user.id}", email: "{response.body.user.email}"}
  - name: imported
    match: {method: POST, path: /api/import}
    emit: {type: users.imported, data: {batch: "{request.body.batch}"}}
  - name: socket-opened
    match: {method: "*", path: /ws, status: [101, 2xx]}
    emit: {type: socket.opened}
  - name: profile-updated
    match: {method: PATCH, path: "/api/users/{id}"}
    lookup: {get: /api/me, as: me}
    emit: {type: user.updated, subject: "{path.id}", data: {id: "{me.body.id}", name: "{me.body.name}"}}
`

// fakeAuthAPI is the upstream: a tiny user service.
type fakeAuthAPI struct {
	next    atomic.Int64
	created sync.Map // email → user id, for every user it created
}

// createdIDs returns the ids of the users created with an email starting with prefix.
func (a *fakeAuthAPI) createdIDs(prefix string) []string {
	var ids []string
	a.created.Range(func(email, id any) bool {
		if strings.HasPrefix(email.(string), prefix) {
			ids = append(ids, id.(string))
		}
		return true
	})
	return ids
}

const downloadSize = 100 << 20

func (a *fakeAuthAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method + " " + r.URL.Path {
	case "POST /api/users":
		var in struct {
			Email string `json:"email"`
			Fail  int    `json:"fail"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if in.Fail != 0 {
			w.WriteHeader(in.Fail)
			fmt.Fprintf(w, `{"user":{"id":"not-created"},"error":"failed with %d"}`, in.Fail)
			return
		}
		id := "u_" + strconv.FormatInt(a.next.Add(1), 10)
		a.created.Store(in.Email, id)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"user":{"id":%q,"email":%q}}`, id, in.Email)
	case "POST /api/import":
		// echoes what arrived, so the test can compare it with what was sent
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%x %d %d %v", h.Sum(nil), n, r.ContentLength, r.TransferEncoding)
	case "GET /api/me":
		if r.Header.Get("Cookie") != "session=s1" {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"u_me","name":"Ann"}`) //nolint:errcheck
	case "GET /ws":
		// a websocket-style upgrade: 101, then the raw connection echoes lines
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "want an upgrade", http.StatusBadRequest)
			return
		}
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n") //nolint:errcheck
		rw.Flush()                                                                                              //nolint:errcheck
		for {
			line, err := rw.ReadString('\n')
			if err != nil {
				return
			}
			rw.WriteString("echo " + line) //nolint:errcheck
			rw.Flush()                     //nolint:errcheck
		}
	case "PATCH /api/users/u_me":
		w.WriteHeader(http.StatusNoContent)
	case "GET /download":
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.Itoa(downloadSize))
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 2048) // 32 KiB
		for sent := 0; sent < downloadSize; sent += len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	default:
		http.NotFound(w, r)
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type integration struct {
	t         *testing.T
	redis     *redistest.Server
	insp      *asynq.Inspector
	rdb       *redis.Client
	adminPort int
	httpPort  int
	base      string
	rulesFile string
	spoolDir  string
	upstream  string
	api       *fakeAuthAPI
	client    *http.Client
}

// config renders the Caddy JSON config; source distinguishes reloads.
func (it *integration) config(source string) string { return it.configWith(source, it.rulesFile) }

// configWith is config with another rule file.
func (it *integration) configWith(source, rulesFile string) string {
	level := "ERROR"
	if l := os.Getenv("AUTHTAP_TEST_LOG_LEVEL"); l != "" {
		level = l // e.g. DEBUG, to see the app and handler at work
	}
	tap := map[string]any{"handler": "authtap", "rules": []string{rulesFile}, "source": source}
	if os.Getenv("AUTHTAP_TEST_PLAIN_CADDY") != "" {
		// the baseline of the reload measurement (BENCHMARKS.md): the same
		// route without authtap, still a new config on every reload
		tap = map[string]any{"handler": "headers", "request": map[string]any{"set": map[string]any{"X-Source": []string{source}}}}
	}
	cfg := map[string]any{
		"admin": map[string]any{"listen": "localhost:" + strconv.Itoa(it.adminPort)},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{
			"level": level, "writer": map[string]any{"output": "stderr"},
		}}},
		"apps": map[string]any{
			"authtap": map[string]any{
				"redis":           it.redis.URL,
				"spool_dir":       it.spoolDir,
				"enqueue_timeout": "200ms",
			},
			"http": map[string]any{
				"http_port": it.httpPort,
				"servers": map[string]any{"srv0": map[string]any{
					"listen":          []string{"127.0.0.1:" + strconv.Itoa(it.httpPort)},
					"automatic_https": map[string]any{"disable": true},
					"routes": []any{map[string]any{"handle": []any{
						map[string]any{"handler": "authtap_test_seen"}, // seenlog_test.go
						tap,
						map[string]any{"handler": "reverse_proxy", "upstreams": []any{map[string]any{"dial": it.upstream}}},
					}}},
				}},
			},
		},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		it.t.Fatal(err)
	}
	return string(b)
}

// load posts a config to the admin API, as `caddy reload` does.
func (it *integration) load(cfg string) error {
	resp, err := http.Post("http://localhost:"+strconv.Itoa(it.adminPort)+"/load", "application/json", strings.NewReader(cfg))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("loading config: %d %s", resp.StatusCode, b)
	}
	return nil
}

// signUp posts one sign-up through Caddy and returns the status and body.
func (it *integration) signUp(email string, fail int) (int, string, error) {
	a := it.signUpOnce(email, fail)
	return a.status, a.body, a.err
}

// signUpAttempt is one sign-up as the client saw it.
type signUpAttempt struct {
	status int
	body   string
	err    error
}

// signUpOnce posts one sign-up, marked with X-Test-Request: email.
func (it *integration) signUpOnce(email string, fail int) signUpAttempt {
	body := fmt.Sprintf(`{"email":%q,"password":"s3cret","fail":%d}`, email, fail)
	req, err := http.NewRequest(http.MethodPost, it.base+"/api/users", strings.NewReader(body))
	if err != nil {
		return signUpAttempt{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Test-Request", email)
	resp, err := it.client.Do(req)
	if err != nil {
		return signUpAttempt{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return signUpAttempt{status: resp.StatusCode, body: string(b), err: err}
}

// droppedBeforeHandlers reports whether a sign-up failed without any of
// Caddy's handlers seeing it (nor the upstream creating the user). A reload
// does that to a few connections in plain Caddy too: on Linux each config
// listens on its own SO_REUSEPORT socket, and closing the old one resets the
// connections still in its accept queue; and Go's http.Server closes, without
// an answer, a connection whose request it read after its Shutdown began, or
// an idle keep-alive connection just as the client sends on it. A client
// resends such a request; none of it is authtap's to answer for.
func (it *integration) droppedBeforeHandlers(a signUpAttempt, email string) bool {
	if a.err == nil || handlersSaw(email) {
		return false
	}
	_, created := it.api.created.Load(email)
	return !created
}

// fanouts returns the event:fanout tasks in Redis by subject, with their task ids.
func (it *integration) fanouts() map[string][]string {
	it.t.Helper()
	out := map[string][]string{}
	for page := 1; ; page++ {
		infos, err := it.insp.ListPendingTasks(tasks.QueueFanout, asynq.Page(page), asynq.PageSize(500))
		if errors.Is(err, asynq.ErrQueueNotFound) {
			// A Redis restarted empty has lost asynq's set of queue names, and
			// the app's asynq client remembers having registered the queue, so
			// tasks queued since are in Redis but not listed. Register the
			// name as asynq would (workers poll their queues either way).
			ctx := context.Background()
			if n, _ := it.rdb.Exists(ctx, "asynq:{"+tasks.QueueFanout+"}:pending").Result(); n == 1 {
				if err := it.rdb.SAdd(ctx, "asynq:queues", tasks.QueueFanout).Err(); err != nil {
					it.t.Fatal(err)
				}
				page--
				continue
			}
			return out
		}
		if err != nil {
			it.t.Fatalf("listing fan-out tasks: %v", err)
		}
		for _, ti := range infos {
			if ti.Type != tasks.TypeFanout {
				it.t.Errorf("task %s has type %q", ti.ID, ti.Type)
			}
			p, err := tasks.ParseFanout(asynq.NewTask(ti.Type, ti.Payload))
			if err != nil {
				it.t.Fatalf("task %s: %v", ti.ID, err)
			}
			if p.Event.ID != ti.ID {
				it.t.Errorf("task id %s is not the event id %s", ti.ID, p.Event.ID)
			}
			out[p.Event.Subject] = append(out[p.Event.Subject], ti.ID)
		}
		if len(infos) < 500 {
			return out
		}
	}
}

// waitForSubjects waits until every subject has exactly one fan-out task.
func (it *integration) waitForSubjects(subjects []string, within time.Duration) {
	it.t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := it.fanouts()
		var missing, doubled []string
		for _, s := range subjects {
			switch n := len(got[s]); {
			case n == 0:
				missing = append(missing, s)
			case n > 1:
				doubled = append(doubled, s)
			}
		}
		if len(doubled) > 0 {
			it.t.Fatalf("events queued more than once: %v", doubled)
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) {
			it.t.Fatalf("%d of %d events never reached Redis, e.g. %v", len(missing), len(subjects), missing[:min(10, len(missing))])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// newIntegration starts a private Redis and the upstream, and fills in what
// every Caddy under test shares: ports, spool, clients. It starts no Caddy.
func newIntegration(t *testing.T, upstream http.Handler) *integration {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs Caddy, Redis and an upstream")
	}
	rs := redistest.Start(t)
	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close)
	it := &integration{
		t:         t,
		redis:     rs,
		insp:      asynq.NewInspector(asynq.RedisClientOpt{Addr: rs.Addr}),
		rdb:       redis.NewClient(&redis.Options{Addr: rs.Addr}),
		adminPort: freeTCPPort(t),
		httpPort:  freeTCPPort(t),
		spoolDir:  filepath.Join(t.TempDir(), "spool"),
		upstream:  strings.TrimPrefix(up.URL, "http://"),
		client:    &http.Client{Timeout: 30 * time.Second},
	}
	t.Cleanup(func() { it.insp.Close(); it.rdb.Close() })
	it.base = "http://127.0.0.1:" + strconv.Itoa(it.httpPort)
	return it
}

func startIntegration(t *testing.T) *integration {
	api := &fakeAuthAPI{}
	it := newIntegration(t, api)
	it.api = api
	it.rulesFile = filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(it.rulesFile, []byte(integrationRules), 0o600); err != nil {
		t.Fatal(err)
	}
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{
		AdminPort: it.adminPort, LoadRequestTimeout: 30 * time.Second, TestRequestTimeout: 30 * time.Second,
	})
	tester.InitServer(it.config("legacy-auth"), "json")
	if t.Failed() {
		t.FailNow()
	}
	t.Cleanup(func() { _ = it.load(`{"admin":{"listen":"localhost:` + strconv.Itoa(it.adminPort) + `"}}`) })
	return it
}

// TestIntegration runs real Caddy (in process), a private Redis and an
// upstream. Not parallel: caddytest drives one global Caddy.
func TestIntegration(t *testing.T) {
	it := startIntegration(t)

	t.Run("sign-up through Caddy queues event:fanout", func(t *testing.T) {
		it.t = t
		status, body, err := it.signUp("a@x.test", 0)
		if err != nil || status != http.StatusCreated || !strings.Contains(body, `"id":"u_`) {
			t.Fatalf("sign-up: %d %q %v", status, body, err)
		}
		var resp struct{ User struct{ ID string } }
		_ = json.Unmarshal([]byte(body), &resp)
		it.waitForSubjects([]string{resp.User.ID}, 10*time.Second)
		infos, err := it.insp.ListPendingTasks(tasks.QueueFanout)
		if err != nil {
			t.Fatal(err)
		}
		p, err := tasks.ParseFanout(asynq.NewTask(infos[0].Type, infos[0].Payload))
		if err != nil {
			t.Fatal(err)
		}
		ev := p.Event
		if ev.Type != "user.created" || ev.Source.Name != "legacy-auth" || ev.Source.Rule != "user-created" || ev.Mode != "live" ||
			string(ev.Data) != `{"id":"`+resp.User.ID+`","email":"a@x.test"}` {
			t.Errorf("event = %+v, data %s", ev, ev.Data)
		}
	})

	t.Run("metrics on the admin endpoint", func(t *testing.T) {
		it.t = t
		resp, err := http.Get("http://localhost:" + strconv.Itoa(it.adminPort) + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		text := string(b)
		if !strings.Contains(text, `authtap_events_matched_total{rule="user-created",type="user.created"} 1`) ||
			!strings.Contains(text, "authtap_queue_latency_seconds_count 1") {
			t.Errorf("authtap metrics missing from /metrics:\n%s", grepLines(text, "authtap_"))
		}
		if strings.Contains(text, "a@x.test") {
			t.Error("event data in the metrics")
		}
	})

	t.Run("failed statuses queue nothing", func(t *testing.T) {
		it.t = t
		before := len(it.fanouts())
		for _, code := range []int{400, 409, 422, 500, 503} {
			status, _, err := it.signUp("b@x.test", code)
			if err != nil || status != code {
				t.Fatalf("want the upstream's %d passed through, got %d %v", code, status, err)
			}
		}
		if got := it.fanouts(); len(got) != before || got["not-created"] != nil {
			t.Errorf("failed requests queued events: %v", got)
		}
	})

	t.Run("request bodies reach the upstream byte-identical", func(t *testing.T) {
		it.t = t
		small := []byte(`{"batch":"b1","users":[]}`)
		large := append([]byte(`{"batch":"b2","pad":"`), bytes.Repeat([]byte("x"), 2<<20)...) // over max_body (1 MiB)
		large = append(large, `"}`...)
		for _, tc := range []struct {
			name    string
			body    []byte
			chunked bool
		}{{"small", small, false}, {"small chunked", small, true}, {"large", large, false}, {"large chunked", large, true}} {
			var r io.Reader = bytes.NewReader(tc.body)
			if tc.chunked {
				r = onlyReader{r}
			}
			req, _ := http.NewRequest(http.MethodPost, it.base+"/api/import", r)
			wantCL, wantTE := len(tc.body), "[]"
			if tc.chunked {
				req.ContentLength, wantCL, wantTE = -1, -1, "[chunked]"
			}
			resp, err := it.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			want := fmt.Sprintf("%x %d %d %s", sha256.Sum256(tc.body), len(tc.body), wantCL, wantTE)
			if string(got) != want {
				t.Errorf("%s: upstream saw %q, want %q", tc.name, got, want)
			}
		}
		// the small ones emitted, the large ones (over max_body) did not
		deadline := time.Now().Add(10 * time.Second)
		for {
			infos, _ := it.insp.ListPendingTasks(tasks.QueueFanout, asynq.PageSize(500))
			var batches []string
			for _, ti := range infos {
				p, _ := tasks.ParseFanout(asynq.NewTask(ti.Type, ti.Payload))
				if p.Event.Type == "users.imported" {
					batches = append(batches, string(p.Event.Data))
				}
			}
			if len(batches) == 2 && batches[0] == `{"batch":"b1"}` && batches[1] == batches[0] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("users.imported events = %v, want two for b1 and none for b2", batches)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("websocket upgrade on a candidate route passes untouched", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(it.httpPort), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("status %d, want 101", resp.StatusCode)
		}
		for _, msg := range []string{"hello\n", "second message\n"} {
			if _, err := io.WriteString(conn, msg); err != nil {
				t.Fatal(err)
			}
			got, err := br.ReadString('\n')
			if err != nil || got != "echo "+msg {
				t.Fatalf("echo %q (%v), want %q: the tunnel must carry bytes both ways at once", got, err, "echo "+msg)
			}
		}
	})

	t.Run("lookup through Caddy with the caller's cookie", func(t *testing.T) {
		it.t = t
		req, _ := http.NewRequest(http.MethodPatch, it.base+"/api/users/u_me", strings.NewReader(`{"name":"Ann"}`))
		req.Header.Set("Cookie", "session=s1")
		resp, err := it.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("status %d", resp.StatusCode)
		}
		it.waitForSubjects([]string{"u_me"}, 10*time.Second)
		infos, _ := it.insp.ListPendingTasks(tasks.QueueFanout, asynq.PageSize(500))
		for _, ti := range infos {
			p, _ := tasks.ParseFanout(asynq.NewTask(ti.Type, ti.Payload))
			if p.Event.Subject == "u_me" && (string(p.Event.Data) != `{"id":"u_me","name":"Ann"}` || len(p.Event.Source.Missing) > 0) {
				t.Errorf("lookup result not in the event: %s missing %v", p.Event.Data, p.Event.Source.Missing)
			}
		}
	})

	t.Run("Redis down: events spooled, replayed once when it is back", func(t *testing.T) {
		it.t = t
		it.redis.Stop()
		var subjects []string
		start := time.Now()
		for i := range 10 {
			status, body, err := it.signUp(fmt.Sprintf("down%d@x.test", i), 0)
			if err != nil || status != http.StatusCreated {
				t.Fatalf("with Redis down the request must still succeed: %d %q %v", status, body, err)
			}
			var resp struct{ User struct{ ID string } }
			_ = json.Unmarshal([]byte(body), &resp)
			subjects = append(subjects, resp.User.ID)
		}
		t.Logf("10 sign-ups with Redis down took %v", time.Since(start))
		entries, _ := os.ReadDir(it.spoolDir)
		if len(entries) == 0 {
			t.Errorf("nothing in the spool directory %s", it.spoolDir)
		}
		it.redis.Restart()
		it.waitForSubjects(subjects, 60*time.Second)
	})

	t.Run("100 MB download on a non-matching route streams", func(t *testing.T) {
		it.t = t
		// warm up connections and pools so that only the download is measured
		if resp, err := it.client.Get(it.base + "/nothing"); err == nil {
			io.Copy(io.Discard, resp.Body) //nolint:errcheck
			resp.Body.Close()
		}
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		resp, err := it.client.Get(it.base + "/download")
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != downloadSize {
			t.Fatalf("downloaded %d bytes, %v", n, err)
		}
		runtime.ReadMemStats(&after)
		alloc := after.TotalAlloc - before.TotalAlloc
		inuse := int64(after.HeapInuse) - int64(before.HeapInuse)
		t.Logf("100 MiB through Caddy: TotalAlloc +%d bytes, HeapInuse %+d bytes", alloc, inuse)
		if alloc > 2<<20 {
			t.Errorf("memory grew by %d bytes allocated for a streamed download; want under 2 MiB", alloc)
		}
	})

	t.Run("invalid rules are a config error naming file:line:col", func(t *testing.T) {
		it.t = t
		bad := filepath.Join(t.TempDir(), "bad.yaml")
		if err := os.WriteFile(bad, []byte("version: 1\nrules:\n  - name: x\n    match: {method: POST, path: /a, status: ok}\n    emit: {type: a.b}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		err := it.load(it.configWith("legacy-auth", bad))
		if err == nil || !strings.Contains(err.Error(), bad+":4:") {
			t.Fatalf("load error = %v, want one naming %s:4:col", err, bad)
		}
		// the running config is untouched
		if status, _, err := it.signUp("still@x.test", 0); err != nil || status != http.StatusCreated {
			t.Errorf("after a rejected config: %d %v", status, err)
		}
	})

	t.Run("config reload under load fails no handled request and loses no event", func(t *testing.T) {
		it.t = t
		seenRequests.Clear() // the emails below repeat with -count
		var (
			mu       sync.Mutex
			subjects []string
			failures []string
			dropped  atomic.Int64
			stop     atomic.Bool
			wg       sync.WaitGroup
		)
		// AUTHTAP_TEST_RELOADS=40 AUTHTAP_TEST_RELOAD_CLIENTS=16 measure (BENCHMARKS.md).
		reloads, clients := envInt(t, "AUTHTAP_TEST_RELOADS", 3), envInt(t, "AUTHTAP_TEST_RELOAD_CLIENTS", 8)
		pause := 150 * time.Millisecond
		if reloads > 3 {
			pause = 50 * time.Millisecond
		}
		for w := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; !stop.Load(); i++ {
					email := fmt.Sprintf("load%d-%d@x.test", w, i)
					a := it.signUpOnce(email, 0)
					// A client resends what was reset before any handler saw it.
					for try := 0; try < 5 && it.droppedBeforeHandlers(a, email); try++ {
						dropped.Add(1)
						a = it.signUpOnce(email, 0)
					}
					mu.Lock()
					switch {
					case a.err != nil || a.status != http.StatusCreated:
						failures = append(failures, fmt.Sprintf("%s: %d %v (seen by the handlers: %v)", email, a.status, a.err, handlersSaw(email)))
					case !handlersSaw(email):
						// keeps droppedBeforeHandlers honest: the log must see what succeeds
						failures = append(failures, email+": answered, yet not in the handlers' log")
					default:
						var resp struct{ User struct{ ID string } }
						_ = json.Unmarshal([]byte(a.body), &resp)
						subjects = append(subjects, resp.User.ID)
					}
					mu.Unlock()
				}
			}()
		}
		for i := range reloads {
			time.Sleep(pause) // let load build up between reloads
			if err := it.load(it.config(fmt.Sprintf("legacy-auth-%d", i))); err != nil {
				t.Errorf("reload %d: %v", i, err)
			}
		}
		time.Sleep(pause)
		stop.Store(true)
		wg.Wait()
		if len(failures) > 0 {
			t.Fatalf("%d requests failed during reloads: %v", len(failures), failures[:min(5, len(failures))])
		}
		if len(subjects) < 10 {
			t.Fatalf("only %d requests ran during the reloads", len(subjects))
		}
		t.Logf("%d sign-ups across %d reloads; %d dropped by Caddy's server before its handlers saw them, and resent", len(subjects), reloads, dropped.Load())
		if os.Getenv("AUTHTAP_TEST_PLAIN_CADDY") != "" {
			return // no authtap, no events
		}
		// Every user the upstream created gets its event, answered or not.
		it.waitForSubjects(it.api.createdIDs("load"), 60*time.Second)
	})
}

// grepLines returns the lines of text that contain substr.
func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// envInt is the positive integer in environment variable name, or def when it is unset.
func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}
