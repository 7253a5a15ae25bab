package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/authtap/authtap/admin"
	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/rules"
)

// coverageCaddyfile is the README's setup: the authtap handler in front of
// the upstream and of authtap_admin (behind basic_auth), plus Caddy's
// metrics handler. Arguments: HTTP port, storage dir, Redis URL, spool dir,
// rule file, upstream, bcrypt hash.
const coverageCaddyfile = `{
	admin off
	persist_config off
	auto_https off
	http_port %[1]d
	storage file_system %[2]s
	log {
		level ERROR
	}
	authtap {
		redis %[3]s
		spool_dir %[4]s
		enqueue_timeout 200ms
	}
}
http://127.0.0.1:%[1]d {
	authtap {
		rules %[5]s
		reload_interval off
	}
	handle /metrics {
		metrics
	}
	handle_path /_authtap/* {
		basic_auth {
			admin %[7]s
		}
		authtap_admin
	}
	reverse_proxy %[6]s
}
`

const coverageRules = `version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users, response: {body: {"user.id": exists}}}
    emit: {type: user.created, subject: "{response.body.user.id}", data: {id: "{response.body.user.id}"}}
`

type coverageCaddy struct {
	t      *testing.T
	base   string
	redis  *redistest.Server
	rdb    *redis.Client
	pass   string
	client *http.Client
}

// startCoverageCaddy runs Caddy (in process) from coverageCaddyfile with a
// private Redis and upstream. Not parallel: Caddy's running config is
// process-wide.
func startCoverageCaddy(t *testing.T, upstream http.Handler) *coverageCaddy {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs Caddy, Redis and an upstream")
	}
	resetUnmatchedMetrics()
	old := coverageFlushInterval
	coverageFlushInterval = 50 * time.Millisecond
	t.Cleanup(func() { coverageFlushInterval = old })
	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close)
	rs := redistest.Start(t)
	dir := t.TempDir()
	rulesFile := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(rulesFile, []byte(coverageRules), 0o600); err != nil {
		t.Fatal(err)
	}
	env := &coverageCaddy{t: t, redis: rs, rdb: redis.NewClient(&redis.Options{Addr: rs.Addr}), pass: "correct horse",
		client: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(func() { _ = env.rdb.Close() })
	hash, err := bcrypt.GenerateFromPassword([]byte(env.pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	port := adminFreePort(t)
	env.base = "http://127.0.0.1:" + strconv.Itoa(port)
	text := fmt.Sprintf(coverageCaddyfile, port, filepath.Join(dir, "storage"), rs.URL, filepath.Join(dir, "spool"),
		rulesFile, strings.TrimPrefix(up.URL, "http://"), hash)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(text), nil)
	if err != nil {
		t.Fatalf("adapting: %v\n%s", err, text)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	return env
}

func (e *coverageCaddy) do(method, path, body string, header http.Header) (int, string) {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if strings.HasPrefix(path, "/_authtap/") {
		req.SetBasicAuth("admin", e.pass)
	}
	res, err := e.client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// metric returns the value of one line of /metrics, -1 when absent.
func (e *coverageCaddy) metric(series string) float64 {
	_, text := e.do("GET", "/metrics", "", nil)
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// unmatched waits until GET /_authtap/unmatched lists a shape for which
// done is true, and returns the listing.
func (e *coverageCaddy) unmatched(done func([]admin.UnmatchedShape) bool) []admin.UnmatchedShape {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		status, body := e.do("GET", "/_authtap/unmatched?limit=500", "", nil)
		if status == http.StatusServiceUnavailable && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond) // Redis is (still) away
			continue
		}
		if status != 200 {
			e.t.Fatalf("GET /unmatched = %d %s", status, body)
		}
		var l struct {
			Unmatched []admin.UnmatchedShape `json:"unmatched"`
		}
		if err := json.Unmarshal([]byte(body), &l); err != nil {
			e.t.Fatal(err)
		}
		if done(l.Unmatched) || time.Now().After(deadline) {
			return l.Unmatched
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// redisDump returns every key and value under authtap's coverage keys.
func (e *coverageCaddy) redisDump() string {
	ctx := context.Background()
	var b strings.Builder
	keys, _ := e.rdb.Keys(ctx, "*").Result()
	for _, k := range keys {
		b.WriteString(k + "\n")
		switch e.rdb.Type(ctx, k).Val() {
		case "string":
			b.WriteString(e.rdb.Get(ctx, k).Val())
		case "hash":
			fmt.Fprint(&b, e.rdb.HGetAll(ctx, k).Val())
		case "list":
			fmt.Fprint(&b, e.rdb.LRange(ctx, k, 0, -1).Val())
		case "zset":
			fmt.Fprint(&b, e.rdb.ZRange(ctx, k, 0, -1).Val())
		}
		b.WriteString("\n")
	}
	return b.String()
}

func findShape(shapes []admin.UnmatchedShape, method, route string) *admin.UnmatchedShape {
	for i := range shapes {
		if shapes[i].Method == method && shapes[i].Route == route {
			return &shapes[i]
		}
	}
	return nil
}

// coverageUpstream is a user service with routes the rules do not cover.
type coverageUpstream struct {
	mu   sync.Mutex
	seen map[string]int // what reached it: method path body
}

func (u *coverageUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.seen[r.Method+" "+r.URL.Path+" "+string(body)]++
	u.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch {
	case r.Method == "POST" && r.URL.Path == "/api/users":
		if strings.Contains(string(body), "fail-quietly") {
			_, _ = io.WriteString(w, `{"status":"queued"}`) // 200, no user.id: no rule matches
			return
		}
		w.WriteHeader(201)
		_, _ = io.WriteString(w, `{"user":{"id":"u_9"}}`)
	case r.Method == "PUT" && strings.HasSuffix(r.URL.Path, "/password"):
		w.Header().Set("Set-Cookie", "session=rotated-cookie-value; HttpOnly")
		w.WriteHeader(http.StatusNoContent)
	case r.Method == "DELETE" && strings.HasPrefix(r.URL.Path, "/api/sessions/"):
		_, _ = io.WriteString(w, `{"revoked":true,"refresh_token":"rt_secret_0123456789"}`)
	case r.Method == "POST" && strings.HasPrefix(r.URL.Path, "/junk/"):
		_, _ = io.WriteString(w, `{}`) // a catch-all that answers 200 to anything
	default:
		w.WriteHeader(404)
	}
}

func TestCoverageThroughCaddy(t *testing.T) {
	up := &coverageUpstream{seen: map[string]int{}}
	e := startCoverageCaddy(t, up)
	const (
		password = "hunter2-correct-horse"
		bearer   = "tok_live_9f8e7d6c5b4a3928"
	)
	auth := http.Header{"Authorization": {"Bearer " + bearer}, "Content-Type": {"application/json"}, "Cookie": {"session=old-cookie-value"}}
	for i := range 4 {
		body := fmt.Sprintf(`{"current_password":%q,"new_password":"%s-%d"}`, password, password, i)
		if status, _ := e.do("PUT", fmt.Sprintf("/api/users/u_%d/password", i), body, auth); status != 204 {
			t.Fatalf("PUT password = %d", status)
		}
	}
	if status, body := e.do("DELETE", "/api/sessions/s_8f7e6d5c", "", auth); status != 200 || !strings.Contains(body, "rt_secret_0123456789") {
		t.Fatalf("DELETE session = %d %s", status, body) // the client gets its answer untouched
	}
	// a candidate route that no rule matched, and one that a rule matched
	e.do("POST", "/api/users", `{"email":"a@x.test","password":"`+password+`","note":"fail-quietly"}`, auth)
	e.do("POST", "/api/users", `{"email":"b@x.test"}`, auth)
	// not counted: a GET, a 404, authtap's own management API
	e.do("GET", "/api/users/u_1/password", "", nil)
	e.do("POST", "/api/nothing-here", "{}", nil)
	if status, body := e.do("POST", "/_authtap/webhooks", `{"url":"http://127.0.0.1:9/hook","mode":"test"}`, http.Header{"Content-Type": {"application/json"}}); status != 201 {
		t.Fatalf("POST /_authtap/webhooks = %d %s", status, body)
	}
	// the upstream got every body as sent
	up.mu.Lock()
	n := up.seen[`PUT /api/users/u_3/password {"current_password":"`+password+`","new_password":"`+password+`-3"}`]
	up.mu.Unlock()
	if n != 1 {
		t.Errorf("the upstream did not get the password change as sent: %v", up.seen)
	}

	for series, want := range map[string]float64{
		`authtap_unmatched_total{method="PUT",route="/api/users/{id}/password"}`: 4,
		`authtap_unmatched_total{method="DELETE",route="/api/sessions/{id}"}`:    1,
		`authtap_unmatched_total{method="POST",route="/api/users"}`:              1,
		`authtap_unmatched_total{method="POST",route="/webhooks"}`:               -1,
		`authtap_unmatched_total{method="POST",route="/_authtap/webhooks"}`:      -1,
		`authtap_unmatched_total{method="POST",route="/api/nothing-here"}`:       -1,
	} {
		if got := e.metric(series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}

	shapes := e.unmatched(func(s []admin.UnmatchedShape) bool {
		p := findShape(s, "PUT", "/api/users/{id}/password")
		return p != nil && p.Count == 4 && len(p.Samples) == 3 && findShape(s, "POST", "/api/users") != nil
	})
	put := findShape(shapes, "PUT", "/api/users/{id}/password")
	if put == nil || put.Count != 4 || len(put.Samples) != 3 {
		t.Fatalf("GET /unmatched = %+v", shapes)
	}
	if len(shapes) != 3 {
		t.Errorf("%d shapes listed: %+v", len(shapes), shapes)
	}
	s := put.Samples[0]
	if s.Request.Method != "PUT" || !regexp.MustCompile(`^/api/users/u_\d/password$`).MatchString(s.Request.Path) || s.Response.Status != 204 ||
		string(s.Request.Body) != `{"current_password":"[REDACTED]","new_password":"[REDACTED]"}` ||
		s.Request.Header.Get("Authorization") != rules.Redacted || s.Request.Header.Get("Cookie") != rules.Redacted ||
		s.Response.Header.Get("Set-Cookie") != rules.Redacted {
		t.Errorf("sample = %+v (body %s)", s, s.Request.Body)
	}
	cand := findShape(shapes, "POST", "/api/users")
	if len(cand.Samples) != 1 || string(cand.Samples[0].Response.Body) != `{"status":"queued"}` ||
		!strings.Contains(string(cand.Samples[0].Request.Body), `"password":"[REDACTED]"`) {
		t.Errorf("candidate sample = %+v", cand)
	}
	// nothing secret reached Redis, and no coverage key lives forever
	dump := e.redisDump()
	for _, secret := range []string{password, bearer, "old-cookie-value", "rotated-cookie-value", "rt_secret_0123456789"} {
		if strings.Contains(dump, secret) {
			t.Errorf("Redis holds %q", secret)
		}
	}
	keys, _ := e.rdb.Keys(context.Background(), "authtap:{authtap-unmatched}:*").Result()
	for _, k := range keys {
		if ttl := e.rdb.PTTL(context.Background(), k).Val(); ttl <= 0 {
			t.Errorf("%s has no TTL", k)
		}
	}

	// DELETE one shape, then all
	if status, _ := e.do("DELETE", "/_authtap/unmatched/"+put.ID, "", nil); status != 204 {
		t.Errorf("DELETE /unmatched/{id} = %d", status)
	}
	if status, body := e.do("DELETE", "/_authtap/unmatched", "", nil); status != 200 || !strings.Contains(body, `"deleted":2`) {
		t.Errorf("DELETE /unmatched = %d %s", status, body)
	}
	// a cleared shape seen again is counted afresh, and once that count is
	// reported (Redis says it keeps no samples), sampled afresh
	e.do("PUT", "/api/users/u_7/password", `{"new_password":"x"}`, auth)
	e.unmatched(func(s []admin.UnmatchedShape) bool { return findShape(s, "PUT", "/api/users/{id}/password") != nil })
	time.Sleep(3 * coverageFlushInterval)
	e.do("PUT", "/api/users/u_8/password", `{"new_password":"y"}`, auth)
	shapes = e.unmatched(func(s []admin.UnmatchedShape) bool {
		p := findShape(s, "PUT", "/api/users/{id}/password")
		return p != nil && p.Count == 2 && len(p.Samples) == 1
	})
	if p := findShape(shapes, "PUT", "/api/users/{id}/password"); p == nil || p.Count != 2 || len(p.Samples) != 1 || p.Samples[0].Request.Path != "/api/users/u_8/password" {
		t.Errorf("after clearing, the shape = %+v", p)
	}
}

// Redis down: uncovered mutations are answered as usual and at once; the
// samples are dropped (and counted), the counts reach Redis once it is back.
func TestCoverageRedisDownThroughCaddy(t *testing.T) {
	e := startCoverageCaddy(t, &coverageUpstream{seen: map[string]int{}})
	e.redis.Stop()
	start := time.Now()
	for i := range 20 {
		if status, _ := e.do("DELETE", fmt.Sprintf("/api/sessions/s_%d", i), "", nil); status != 200 {
			t.Fatalf("DELETE with Redis down = %d", status)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("20 uncovered mutations took %v with Redis down", d)
	}
	if got := e.metric(`authtap_unmatched_total{method="DELETE",route="/api/sessions/{id}"}`); got != 20 {
		t.Errorf("counted %v with Redis down", got)
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.metric(`authtap_unmatched_samples_dropped_total{reason="redis"}`) < 1 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := e.metric(`authtap_unmatched_samples_dropped_total{reason="redis"}`); got < 1 {
		t.Errorf("dropped samples = %v", got)
	}
	e.redis.Restart()
	shapes := e.unmatched(func(s []admin.UnmatchedShape) bool {
		p := findShape(s, "DELETE", "/api/sessions/{id}")
		return p != nil && p.Count == 20
	})
	if p := findShape(shapes, "DELETE", "/api/sessions/{id}"); p == nil || p.Count != 20 {
		t.Errorf("after Redis came back: %+v", shapes)
	}
}

// A client sending 100k mutations to distinct random paths that the upstream
// answers 200: /metrics and Redis stay bounded.
func TestCoverageHostilePathsThroughCaddy(t *testing.T) {
	e := startCoverageCaddy(t, &coverageUpstream{seen: map[string]int{}})
	total := envInt(t, "AUTHTAP_TEST_HOSTILE_PATHS", 100_000)
	const workers = 8
	var wg sync.WaitGroup
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	errs := make(chan error, workers)
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < total; i += workers {
				// distinct literal words: no segment looks like an id
				path := fmt.Sprintf("/junk/%s/%s", word(i), word(i*7919+13))
				req, _ := http.NewRequest("POST", e.base+path, strings.NewReader(`{"a":1}`))
				res, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					errs <- fmt.Errorf("%s: %d", path, res.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d requests in %v", total, time.Since(start))
	_, text := e.do("GET", "/metrics", "", nil)
	var series int
	var sum float64
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "authtap_unmatched_total{") {
			series++
			f, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			sum += f
		}
	}
	if series > maxUnmatchedSeries+4 || sum != float64(total) || !strings.Contains(text, `authtap_unmatched_total{method="POST",route="other"}`) {
		t.Errorf("%d series counting %v; want at most %d, counting %d, with route=\"other\"", series, sum, maxUnmatchedSeries+4, total)
	}
	if len(text) > 1<<20 {
		t.Errorf("/metrics is %d bytes", len(text))
	}
	time.Sleep(200 * time.Millisecond) // the last report
	ctx := context.Background()
	if n := e.rdb.ZCard(ctx, "authtap:{authtap-unmatched}:shapes").Val(); n > admin.MaxUnmatchedShapes {
		t.Errorf("Redis keeps %d shapes", n)
	}
	keys, _ := e.rdb.Keys(ctx, "authtap:{authtap-unmatched}:*").Result()
	if len(keys) > 1+2*admin.MaxUnmatchedShapes {
		t.Errorf("Redis holds %d coverage keys", len(keys))
	}
	mem := e.rdb.MemoryUsage(ctx, "authtap:{authtap-unmatched}:shapes").Val()
	t.Logf("%d series, %d bytes of /metrics, %d coverage keys in Redis (index %d bytes)", series, len(text), len(keys), mem)
}

// word spells n in letters (a plain route word: never taken for an id).
func word(n int) string {
	var b []byte
	for {
		b = append(b, byte('a'+n%26))
		n /= 26
		if n == 0 {
			return string(b)
		}
	}
}
