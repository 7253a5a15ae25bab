package caddymodule

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/hibiken/asynq"
	"github.com/klauspost/compress/zlib"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/authtap/authtap/worker/tasks"
)

// hostileRules is the rule file of the hostile-traffic integration tests.
const hostileRules = `version: 1
rules:
  - name: decoded
    match: {method: GET, path: "/enc/{name}", response: {body: {"id": exists}}}
    emit: {type: body.decoded, subject: "{response.body.id}"}
  - name: profile-updated
    match: {method: PATCH, path: "/api/users/{id}"}
    lookup: {get: /api/me, as: me}
    emit: {type: user.updated, subject: "{path.id}", data: {id: "{me.body.id}"}}
  - name: me-read
    match: {method: GET, path: /api/me}
    emit: {type: me.read, subject: "me-{request.query.n}"}
`

// hostileMaxBody is max_body in these tests: the 1 GiB gzip and deflate bombs
// (about 1.01 MiB compressed) must fit it to be captured and decoded at all.
const hostileMaxBody = 2 << 20

// hostileUpstream serves encoded bodies and a user API, and records the
// headers of every request it receives.
type hostileUpstream struct {
	mu     sync.Mutex
	bodies map[string]encodedBody // path → response
	seen   map[string][]http.Header
}

type encodedBody struct {
	encoding string
	body     []byte
}

func (u *hostileUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.seen[r.Method+" "+r.URL.Path] = append(u.seen[r.Method+" "+r.URL.Path], r.Header.Clone())
	b, ok := u.bodies[r.URL.Path]
	u.mu.Unlock()
	switch {
	case ok:
		w.Header().Set("Content-Type", "application/json")
		w.Header()["Content-Encoding"] = []string{b.encoding}
		w.Header().Set("Content-Length", strconv.Itoa(len(b.body)))
		w.Write(b.body) //nolint:errcheck
	case r.Method == http.MethodGet && r.URL.Path == "/api/me":
		if r.Header.Get("Cookie") != "session=s1" {
			http.Error(w, "who are you", http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"id":"u_me"}`) //nolint:errcheck
	case r.Method == http.MethodPatch:
		w.WriteHeader(http.StatusNoContent)
	default:
		http.NotFound(w, r)
	}
}

func (u *hostileUpstream) headers(key string) []http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]http.Header(nil), u.seen[key]...)
}

// entryHeaders records the headers of every request as Caddy's server hands
// it to the first handler, i.e. what its access log records. Configured as
// {"handler": "authtap_test_entry"}, first in the route.
type entryHeaders struct{}

var (
	entryMu   sync.Mutex
	entrySeen = map[string][]http.Header{}
)

func init() { caddy.RegisterModule(entryHeaders{}) }

func (entryHeaders) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.authtap_test_entry",
		New: func() caddy.Module { return new(entryHeaders) },
	}
}

func (entryHeaders) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	entryMu.Lock()
	entrySeen[r.Method+" "+r.URL.Path] = append(entrySeen[r.Method+" "+r.URL.Path], r.Header.Clone())
	entryMu.Unlock()
	return next.ServeHTTP(w, r)
}

func entryHeadersOf(key string) []http.Header {
	entryMu.Lock()
	defer entryMu.Unlock()
	return append([]http.Header(nil), entrySeen[key]...)
}

var _ caddyhttp.MiddlewareHandler = entryHeaders{}

// startHostile runs Caddy (with max_body hostileMaxBody), a private Redis and
// a hostileUpstream.
func startHostile(t *testing.T) (*integration, *hostileUpstream) {
	it := startIntegration(t)
	up := &hostileUpstream{bodies: map[string]encodedBody{}, seen: map[string][]http.Header{}}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	it.upstream = strings.TrimPrefix(srv.URL, "http://")
	rulesFile := filepath.Join(t.TempDir(), "hostile.yaml")
	if err := os.WriteFile(rulesFile, []byte(hostileRules), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(it.configWith("hostile", rulesFile)), &cfg); err != nil {
		t.Fatal(err)
	}
	route := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv0"].(map[string]any)["routes"].([]any)[0].(map[string]any)
	handle := route["handle"].([]any)
	tap := handle[1].(map[string]any)
	if tap["handler"] != "authtap" {
		t.Fatalf("unexpected route %v", handle)
	}
	tap["max_body"] = hostileMaxBody
	route["handle"] = append([]any{map[string]any{"handler": "authtap_test_entry"}}, handle...)
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := it.load(string(b)); err != nil {
		t.Fatal(err)
	}
	return it, up
}

// queuedEvents lists the event:fanout tasks in Redis as "type subject".
func (it *integration) queuedEvents() []string {
	it.t.Helper()
	var out []string
	infos, err := it.insp.ListPendingTasks(tasks.QueueFanout, asynq.PageSize(1000))
	if err != nil {
		return nil // no queue yet: nothing queued
	}
	for _, ti := range infos {
		p, err := tasks.ParseFanout(asynq.NewTask(ti.Type, ti.Payload))
		if err != nil {
			it.t.Fatalf("task %s: %v", ti.ID, err)
		}
		out = append(out, p.Event.Type+" "+p.Event.Subject)
	}
	return out
}

// waitForEvent waits until the event "type subject" is queued.
func (it *integration) waitForEvent(event string, within time.Duration) {
	it.t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := it.queuedEvents()
		for _, e := range got {
			if e == event {
				return
			}
		}
		if time.Now().After(deadline) {
			it.t.Fatalf("event %q never queued; queued: %v", event, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countEvents(events []string, prefix string) int {
	n := 0
	for _, e := range events {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

// TestDecoderBombsThroughCaddy sends one decompression bomb per encoding
// through a real Caddy (in this process) and measures how much Caddy
// allocates for it: under a few × max_body each, while the client receives
// the upstream's bytes unchanged. Well-formed bodies in each encoding still
// decode and emit.
func TestDecoderBombsThroughCaddy(t *testing.T) {
	it, up := startHostile(t)
	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DisableCompression: true}}
	t.Cleanup(client.CloseIdleConnections)

	// the bound: the held (compressed) response and the decoded layer, each
	// under max_body+1, plus the decoders' state (a brotli ring buffer cut
	// to fit max_body, a zstd decoder's blocks), plus Caddy's and the
	// client's own per-request allocations
	const limit = 4 * hostileMaxBody

	plain := []byte(`{"id":"%s"}`)
	enc := map[string]func([]byte) []byte{
		"gzip": gzipBytes,
		"deflate": func(p []byte) []byte {
			var b bytes.Buffer
			w := zlib.NewWriter(&b)
			w.Write(p) //nolint:errcheck
			w.Close()
			return b.Bytes()
		},
		"br": func(p []byte) []byte {
			var b bytes.Buffer
			w := brotli.NewWriterOptions(&b, brotli.WriterOptions{Quality: 5, LGWin: 24})
			w.Write(p) //nolint:errcheck
			w.Close()
			return b.Bytes()
		},
		"zstd": func(p []byte) []byte { return zstdRawFrame(23, p) }, // declares an 8 MiB window
	}
	for name, f := range enc {
		up.bodies["/enc/ok-"+name] = encodedBody{name, f([]byte(fmt.Sprintf(string(plain), "ok-"+name)))}
	}
	bombs := []struct {
		name, encoding string
		body           []byte
	}{
		{"gzip-1GiB", "gzip", gzipBomb()},
		{"deflate-1GiB", "deflate", deflateBomb()},
		{"br-16MiB-window", "br", brotliBomb()},
		{"zstd-512MiB-window", "zstd", zstdFrame(29, 1)},
		{"zstd-8MiB-window-1GiB", "zstd", zstdFrame(23, 8192)},
		{"zstd-512MiB-content", "zstd", zstdSizedFrame(512 << 20)},
		{"gzip-x3-1GiB", "gzip, gzip, gzip", stackedGzipBomb(3)},
		{"gzip-x1000", strings.Repeat("gzip, ", 999) + "gzip", stackedGzipBomb(2)},
	}
	for _, b := range bombs {
		if len(b.body) > hostileMaxBody {
			t.Fatalf("%s: %d bytes, over max_body: it would not be decoded at all", b.name, len(b.body))
		}
		up.bodies["/enc/"+b.name] = encodedBody{b.encoding, b.body}
	}

	get := func(t *testing.T, path string) {
		t.Helper()
		want := up.bodies[path]
		req, _ := http.NewRequest(http.MethodGet, it.base+path, nil)
		// as a browser does; without it, Caddy's proxy transport asks for
		// gzip itself and hands the client (and authtap) the gunzipped body
		req.Header.Set("Accept-Encoding", "gzip, deflate, br, zstd")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d, %v", path, resp.StatusCode, err)
		}
		if n != int64(len(want.body)) || !bytes.Equal(h.Sum(nil), sha256Of(want.body)) || resp.Header.Get("Content-Encoding") != want.encoding {
			t.Errorf("GET %s: the client got %d bytes (encoding %q), not the %d bytes the upstream sent", path, n, resp.Header.Get("Content-Encoding"), len(want.body))
		}
	}

	t.Run("well-formed bodies decode and emit", func(t *testing.T) {
		it.t = t
		for name := range enc {
			get(t, "/enc/ok-"+name)
			it.waitForEvent("body.decoded ok-"+name, 10*time.Second)
		}
	})
	for _, b := range bombs {
		t.Run(b.name, func(t *testing.T) {
			it.t = t
			get(t, "/enc/ok-gzip") // warm the pools and the connection
			total, inuse := allocDuring(func() { get(t, "/enc/"+b.name) })
			t.Logf("%s (%d bytes, Content-Encoding %.40q): Caddy and client allocated %d bytes (%.1f × max_body), HeapInuse %+d",
				b.name, len(b.body), b.encoding, total, float64(total)/hostileMaxBody, inuse)
			if total > limit {
				t.Errorf("%s: %d bytes allocated, want at most %d (4 × max_body)", b.name, total, limit)
			}
		})
	}
	it.t = t
	for _, e := range it.queuedEvents() {
		if strings.HasPrefix(e, "body.decoded ") && !strings.HasPrefix(e, "body.decoded ok-") {
			t.Errorf("a bomb emitted %q", e)
		}
	}
}

func sha256Of(p []byte) []byte { s := sha256.Sum256(p); return s[:] }

// TestLookupHeadersReplayed checks that nothing a lookup carries lets a
// client hide an exchange: a client that replays every header a lookup
// carried, both as the upstream saw it and as Caddy's server received it
// (what the access log records, marker token included), still gets its
// event, and no marker, replayed or forged, reaches the upstream.
func TestLookupHeadersReplayed(t *testing.T) {
	it, up := startHostile(t)
	send := func(method, path string, h http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, it.base+path, strings.NewReader(`{"name":"Ann"}`))
		for k, v := range h {
			req.Header[k] = append([]string(nil), v...)
		}
		req.Header.Set("Cookie", "session=s1")
		resp, err := it.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body) //nolint:errcheck
		resp.Body.Close()
	}

	send(http.MethodPatch, "/api/users/u_first", nil)
	it.waitForEvent("user.updated u_first", 10*time.Second)

	atUpstream := up.headers("GET /api/me")
	atEntry := entryHeadersOf("GET /api/me")
	if len(atUpstream) != 1 || len(atEntry) != 1 {
		t.Fatalf("want one lookup, seen %d at the upstream and %d at Caddy's entry", len(atUpstream), len(atEntry))
	}
	if atEntry[0].Get(lookupHeader) == "" {
		t.Fatalf("the lookup came back through Caddy without its marker: %v", atEntry[0])
	}
	for _, h := range atUpstream {
		if v := h.Values(lookupHeader); v != nil {
			t.Errorf("the upstream received the marker header %q", v)
		}
	}
	t.Logf("a lookup carried, at Caddy's entry: %v", atEntry[0])

	// replay the mutation with every header the lookup carried
	for i, h := range []http.Header{atUpstream[0], atEntry[0]} {
		id := "u_replay" + strconv.Itoa(i)
		send(http.MethodPatch, "/api/users/"+id, h)
		it.waitForEvent("user.updated "+id, 10*time.Second)
	}
	// and read the lookup's own path with its headers: observed too
	send(http.MethodGet, "/api/me?n=replayed", atEntry[0])
	forged := http.Header{lookupHeader: {strings.Repeat("0", 2*lookupTokenBytes)}}
	send(http.MethodGet, "/api/me?n=forged", forged)
	it.waitForEvent("me.read me-replayed", 10*time.Second)
	it.waitForEvent("me.read me-forged", 10*time.Second)

	for _, h := range up.headers("PATCH /api/users/u_replay1") {
		if v := h.Values(lookupHeader); v != nil {
			t.Errorf("a replayed marker reached the upstream: %q", v)
		}
	}
	for _, h := range up.headers("GET /api/me") {
		if v := h.Values(lookupHeader); v != nil {
			t.Errorf("a marker reached the upstream: %q", v)
		}
	}
	// the three lookups (first, two replays) emitted nothing themselves
	events := it.queuedEvents()
	if n := countEvents(events, "me.read "); n != 2 {
		t.Errorf("me.read events = %d, want 2 (the client's own reads, not the lookups): %v", n, events)
	}
	if n := countEvents(events, "user.updated "); n != 3 {
		t.Errorf("user.updated events = %d, want 3: %v", n, events)
	}
}
