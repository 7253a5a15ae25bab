package worker

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	svix "github.com/svix/svix-webhooks/go"
)

// received is what a test receiver saw of one delivery.
type received struct {
	header http.Header
	body   []byte
	path   string
}

// receiver starts an httptest server that records every request on a
// buffered channel and answers with handle (200 when nil).
func receiver(t *testing.T, tlsServer bool, handle http.HandlerFunc) (*httptest.Server, chan received) {
	t.Helper()
	ch := make(chan received, 64)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		ch <- received{header: r.Header.Clone(), body: b, path: r.URL.Path}
		if handle != nil {
			handle(w, r)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	var srv *httptest.Server
	if tlsServer {
		srv = httptest.NewTLSServer(h)
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return srv, ch
}

func next(t *testing.T, ch chan received) received {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("receiver got no request")
		return received{}
	}
}

// trusting returns sender options that trust srv's certificate.
func trusting(srv *httptest.Server) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return &tls.Config{RootCAs: pool}
}

func verifyBoth(t *testing.T, secret string, rc received) {
	t.Helper()
	sw, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := sw.Verify(rc.body, rc.header); err != nil {
		t.Errorf("standardwebhooks.Verify: %v", err)
	}
	sv, err := svix.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	if err := sv.Verify(rc.body, rc.header); err != nil {
		t.Errorf("svix.Verify: %v", err)
	}
}

func TestSendDeliversVerifiableWebhook(t *testing.T) {
	oldS, oldK := mustSecret(t)
	newS, newK := mustSecret(t)
	srv, ch := receiver(t, false, nil)
	s := NewSender(SenderOptions{})
	defer s.CloseIdleConnections()

	body := []byte(`{"id":"evt_01","type":"user.created","data":{"id":"u_1","email":"a@x.test","name":"Zoë"}}`)
	req := SendRequest{
		URL:         srv.URL + "/hooks",
		MsgID:       "evt_01",
		EventType:   "user.created",
		Body:        body,
		Secrets:     [][]byte{oldK, newK},
		BearerToken: "tok-123",
		EventHeader: "X-Defguard-Event",
	}
	res := s.Send(context.Background(), req)
	if !res.Success || res.StatusCode != 200 || res.Err != "" || res.Permanent || res.Gone {
		t.Fatalf("Send = %+v, want success", res)
	}
	if res.Latency <= 0 || res.AttemptedAt.IsZero() {
		t.Errorf("Latency %s, AttemptedAt %s", res.Latency, res.AttemptedAt)
	}
	rc := next(t, ch)
	if !bytes.Equal(rc.body, body) {
		t.Fatalf("body sent %q, want %q", rc.body, body)
	}
	for name, want := range map[string]string{
		"webhook-id":        "evt_01",
		"webhook-timestamp": strconv.FormatInt(res.AttemptedAt.Unix(), 10),
		"Content-Type":      "application/json",
		"User-Agent":        DefaultUserAgent,
		"Authorization":     "Bearer tok-123",
		"X-Defguard-Event":  "user.created",
	} {
		if got := rc.header.Get(name); got != want {
			t.Errorf("header %s = %q, want %q", name, got, want)
		}
	}
	if sigs := strings.Fields(rc.header.Get("webhook-signature")); len(sigs) != 2 {
		t.Errorf("webhook-signature %q, want two signatures", rc.header.Get("webhook-signature"))
	}
	if rc.path != "/hooks" {
		t.Errorf("path %q", rc.path)
	}
	// During rotation a receiver with either secret accepts the message.
	verifyBoth(t, oldS, rc)
	verifyBoth(t, newS, rc)

	// A retry sends the same bytes and the same webhook-id.
	res2 := s.Send(context.Background(), req)
	if !res2.Success {
		t.Fatalf("second Send = %+v", res2)
	}
	rc2 := next(t, ch)
	if !bytes.Equal(rc2.body, rc.body) || rc2.header.Get("webhook-id") != rc.header.Get("webhook-id") {
		t.Errorf("retry differs: body %q id %q", rc2.body, rc2.header.Get("webhook-id"))
	}
	verifyBoth(t, oldS, rc2)

	// Without the optional headers none are sent.
	res3 := s.Send(context.Background(), SendRequest{URL: srv.URL, MsgID: "evt_02", Body: []byte(`{}`), Secrets: [][]byte{oldK}})
	if !res3.Success {
		t.Fatalf("plain Send = %+v", res3)
	}
	rc3 := next(t, ch)
	if rc3.header.Get("Authorization") != "" || rc3.header.Get("X-Defguard-Event") != "" {
		t.Errorf("unexpected optional headers: %v", rc3.header)
	}
	verifyBoth(t, oldS, rc3)
}

func TestSendUsesInjectedClock(t *testing.T) {
	_, key := mustSecret(t)
	srv, ch := receiver(t, false, nil)
	at := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	s := NewSender(SenderOptions{Now: func() time.Time { return at }, UserAgent: "custom/2"})
	res := s.Send(context.Background(), SendRequest{URL: srv.URL, MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}})
	if !res.Success || !res.AttemptedAt.Equal(at) {
		t.Fatalf("Send = %+v", res)
	}
	rc := next(t, ch)
	if got := rc.header.Get("webhook-timestamp"); got != strconv.FormatInt(at.Unix(), 10) {
		t.Errorf("webhook-timestamp %s, want %d", got, at.Unix())
	}
	if got := rc.header.Get("User-Agent"); got != "custom/2" {
		t.Errorf("User-Agent %q", got)
	}
	want, _ := Sign([][]byte{key}, "evt_1", at, []byte("{}"))
	if got := rc.header.Get("webhook-signature"); got != want {
		t.Errorf("signature %q, want %q", got, want)
	}
}

func TestSendStatuses(t *testing.T) {
	_, key := mustSecret(t)
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	for i, tc := range []struct {
		status     int
		retryAfter string
		body       string
		success    bool
		gone       bool
		wantRA     time.Duration
	}{
		{status: 200, success: true},
		{status: 201, success: true},
		{status: 204, success: true},
		{status: 299, success: true},
		{status: 200, retryAfter: "60", success: true}, // ignored on success
		{status: 400, body: `{"error":"bad"}`},
		{status: 404},
		{status: 410, gone: true},
		{status: 429, retryAfter: "120", wantRA: 2 * time.Minute},
		{status: 503, retryAfter: now.Add(90 * time.Second).Format(http.TimeFormat), wantRA: 90 * time.Second},
		{status: 503, retryAfter: "soon"},
		{status: 500, retryAfter: "3"},
		{status: 500, body: "boom"},
		{status: 302},       // a POST is not turned into a GET: the 302 itself is the answer
		{status: 101 + 199}, // 300
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tc.retryAfter != "" {
				w.Header().Set("Retry-After", tc.retryAfter)
			}
			if tc.status == 302 {
				w.Header().Set("Location", "/elsewhere")
			}
			w.WriteHeader(tc.status)
			io.WriteString(w, tc.body)
		}))
		s := NewSender(SenderOptions{Now: func() time.Time { return now }})
		res := s.Send(context.Background(), SendRequest{URL: srv.URL, MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}})
		srv.Close()
		if res.StatusCode != tc.status || res.Success != tc.success || res.Gone != tc.gone || res.Permanent || res.Err != "" {
			t.Errorf("%d status %d: got %+v", i, tc.status, res)
		}
		wantRA := tc.wantRA
		if tc.retryAfter == "3" {
			wantRA = 3 * time.Second
		}
		if res.RetryAfter != wantRA {
			t.Errorf("%d status %d: RetryAfter %s, want %s", i, tc.status, res.RetryAfter, wantRA)
		}
		if res.ResponseExcerpt != tc.body {
			t.Errorf("%d status %d: excerpt %q, want %q", i, tc.status, res.ResponseExcerpt, tc.body)
		}
	}
}

func TestSendTimeout(t *testing.T) {
	_, key := mustSecret(t)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	s := NewSender(SenderOptions{})
	start := time.Now()
	res := s.Send(context.Background(), SendRequest{URL: srv.URL, MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}, Timeout: 100 * time.Millisecond})
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Send took %s despite a 100ms timeout", el)
	}
	if res.Success || res.StatusCode != 0 || res.Permanent || res.Err != "no response within 100ms" {
		t.Errorf("Send = %+v, want timeout failure", res)
	}

	// A canceled caller context is reported as such.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res = s.Send(ctx, SendRequest{URL: srv.URL, MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}})
	if res.Success || res.Err != "delivery canceled" {
		t.Errorf("canceled Send = %+v", res)
	}
}

func TestSendConnectionRefusedIsRetryable(t *testing.T) {
	_, key := mustSecret(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	res := NewSender(SenderOptions{}).Send(context.Background(), SendRequest{URL: "http://" + addr, MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}})
	if res.Success || res.Permanent || res.StatusCode != 0 || res.Err == "" {
		t.Errorf("Send = %+v, want retryable transport error", res)
	}
}

// endlessBody is a response body that never ends and counts what was read.
type endlessBody struct {
	read   atomic.Int64
	closed atomic.Bool
}

func (b *endlessBody) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = "日本"[i%6/3*3+i%3] // valid 3-byte characters, when read in whole
	}
	b.read.Add(int64(len(p)))
	return len(p), nil
}

func (b *endlessBody) Close() error { b.closed.Store(true); return nil }

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestSendResponseCap(t *testing.T) {
	_, key := mustSecret(t)
	for i, tc := range []struct {
		max  int64
		want int64 // bytes read at most
	}{
		{max: 0, want: DefaultMaxResponseBytes},
		{max: 4096, want: 4096},
		{max: 100, want: 100},
	} {
		body := &endlessBody{}
		s := NewSender(SenderOptions{MaxResponseBytes: tc.max})
		s.test.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
			return &http.Response{StatusCode: 500, Header: http.Header{}, Body: body, Request: r}, nil
		})
		res := s.Send(context.Background(), SendRequest{URL: "http://receiver.test/", MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}})
		if res.StatusCode != 500 || res.Err != "" {
			t.Fatalf("%d: Send = %+v", i, res)
		}
		if got := body.read.Load(); got > tc.want {
			t.Errorf("%d: read %d bytes of the response, cap %d", i, got, tc.want)
		}
		if !body.closed.Load() {
			t.Errorf("%d: response body not closed", i)
		}
		wantEx := min(int(tc.want), MaxExcerptBytes)
		if n := len(res.ResponseExcerpt); n > wantEx || n < wantEx-3 || !utf8.ValidString(res.ResponseExcerpt) {
			t.Errorf("%d: excerpt of %d bytes (valid=%v), want about %d", i, n, utf8.ValidString(res.ResponseExcerpt), wantEx)
		}
	}

	// Over a real connection, a huge response does not hold the sender up.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(502)
		chunk := []byte(strings.Repeat("é", 512))
		for range 4096 { // 4 MiB
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	res := NewSender(SenderOptions{MaxResponseBytes: 8 << 10}).Send(context.Background(), SendRequest{URL: srv.URL, MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}, Timeout: 5 * time.Second})
	if res.StatusCode != 502 || len(res.ResponseExcerpt) != MaxExcerptBytes || !utf8.ValidString(res.ResponseExcerpt) {
		t.Errorf("Send = status %d excerpt %d bytes, err %q", res.StatusCode, len(res.ResponseExcerpt), res.Err)
	}
}

func TestExcerpt(t *testing.T) {
	for i, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"", 10, ""},
		{"hello", 10, "hello"},
		{"hello", 5, "hello"},
		{"hello", 4, "hell"},
		{"héllo", 2, "h"}, // é is 2 bytes: not cut in half
		{"héllo", 3, "hé"},
		{"日本語", 4, "日"},
		{"日本語", 6, "日本"},
		{"a\xffb", 10, "a\uFFFDb"}, // invalid byte replaced
		{"a\xffb", 3, "a"},         // replacement is 3 bytes
		{"€€€", 0, ""},
		{"ab\xe6\x97", 10, "ab"},       // body ends inside a character (read cap): dropped
		{"ab\xe6\x97\xa5", 4, "ab"},    // cut inside a character: dropped
		{"\xff\xfeok", 10, "\uFFFDok"}, // a run of invalid bytes becomes one U+FFFD
	} {
		got := excerpt([]byte(tc.in), tc.n)
		if got != tc.want || len(got) > tc.n || !utf8.ValidString(got) {
			t.Errorf("%d excerpt(%q, %d) = %q, want %q", i, tc.in, tc.n, got, tc.want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	limit := 24 * time.Hour
	for i, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"1", time.Second},
		{" 30 ", 30 * time.Second},
		{"3600", time.Hour},
		{"86400", limit},
		{"999999999", limit},
		{"99999999999999999999999", limit}, // overflows uint64: clamped
		{"-5", 0},
		{"1.5", 0},
		{"10s", 0},
		{"soon", 0},
		{now.Add(2 * time.Minute).Format(http.TimeFormat), 2 * time.Minute},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},         // in the past
		{now.Add(72 * time.Hour).Format(http.TimeFormat), limit}, // clamped
		{now.Add(time.Minute).Format(time.RFC850), time.Minute},  // obsolete RFC 850 form
		{now.Add(time.Minute).Format(time.ANSIC), time.Minute},   // asctime form
		{"Mon, 32 Nov 2026 10:00:00 GMT", 0},                     // invalid date
	} {
		if got := parseRetryAfter(tc.in, now, limit); got != tc.want {
			t.Errorf("%d parseRetryAfter(%q) = %s, want %s", i, tc.in, got, tc.want)
		}
	}
	if got := parseRetryAfter("120", now, time.Minute); got != time.Minute {
		t.Errorf("custom limit: %s", got)
	}
}

func TestValidateEndpointURL(t *testing.T) {
	for i, tc := range []struct {
		url     string
		live    bool
		wantErr string
	}{
		{url: "https://hooks.example.com/in", live: true},
		{url: "https://hooks.example.com:8443/in?x=1", live: true},
		{url: "https://[2001:db8::1]/in", live: true}, // addresses are checked at dial time
		{url: "http://localhost:9000/hook"},
		{url: "https://hooks.example.com/in"},
		{url: "", wantErr: "empty"},
		{url: "   ", wantErr: "empty"},
		{url: "http://hooks.example.com/in", live: true, wantErr: "must use https"},
		{url: "ftp://hooks.example.com/in", wantErr: `scheme must be http or https, not "ftp"`},
		{url: "hooks.example.com/in", wantErr: "scheme must be http or https"},
		{url: "/relative", wantErr: "scheme must be http or https"},
		{url: "https:opaque", wantErr: "must be absolute"},
		{url: "https:///path", wantErr: "no host"},
		{url: "https://:443/path", wantErr: "no host"},
		{url: "https://user:pass@hooks.example.com/", wantErr: "user information"},
		{url: "https://hooks.example.com:0/", wantErr: "port"},
		{url: "https://hooks.example.com:70000/", wantErr: "port"},
		{url: "https://hooks.example.com/%zz", wantErr: "does not parse"},
		{url: "https://exa mple.com/", wantErr: "does not parse"},
	} {
		err := ValidateEndpointURL(tc.url, tc.live)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%d %q live=%v: %v", i, tc.url, tc.live, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%d %q live=%v: error %v, want %q", i, tc.url, tc.live, err, tc.wantErr)
		}
	}
}

func TestSendPermanentFailures(t *testing.T) {
	_, key := mustSecret(t)
	srv, ch := receiver(t, false, nil)
	s := NewSender(SenderOptions{})
	ok := SendRequest{URL: srv.URL, MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}}
	for i, tc := range []struct {
		name    string
		edit    func(*SendRequest)
		wantErr string
	}{
		{"invalid URL", func(r *SendRequest) { r.URL = "ftp://x" }, "scheme"},
		{"http for live", func(r *SendRequest) { r.Live = true }, "must use https"},
		{"no secrets", func(r *SendRequest) { r.Secrets = nil }, "no secret"},
		{"short secret", func(r *SendRequest) { r.Secrets = [][]byte{[]byte("short")} }, "5 bytes"},
		{"no id", func(r *SendRequest) { r.MsgID = "" }, "empty message id"},
		{"bad id", func(r *SendRequest) { r.MsgID = "evt\n1" }, "message id"},
		{"bad token", func(r *SendRequest) { r.BearerToken = "abc\r\nX-Evil: 1" }, "bearer token"},
		{"bad event header", func(r *SendRequest) { r.EventHeader = "X Event" }, "not a valid header name"},
		{"bad event type", func(r *SendRequest) { r.EventHeader = "X-Event"; r.EventType = "a\nb" }, "not a valid header value"},
	} {
		r := ok
		tc.edit(&r)
		res := s.Send(context.Background(), r)
		if res.Success || !res.Permanent || !strings.Contains(res.Err, tc.wantErr) {
			t.Errorf("%d %s: %+v, want permanent %q", i, tc.name, res, tc.wantErr)
		}
		if strings.Contains(res.Err, "abc") {
			t.Errorf("%d %s: error echoes the token: %q", i, tc.name, res.Err)
		}
	}
	select {
	case rc := <-ch:
		t.Errorf("a refused request reached the receiver: %v", rc.header)
	default:
	}
}

func TestSendLiveGuard(t *testing.T) {
	_, key := mustSecret(t)
	srv, ch := receiver(t, true, nil)
	req := SendRequest{URL: srv.URL, MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}, Live: true, Timeout: 5 * time.Second}

	// Loopback is denied for live endpoints.
	s := NewSender(SenderOptions{TLSClientConfig: trusting(srv)})
	res := s.Send(context.Background(), req)
	if res.Success || !res.Permanent || res.StatusCode != 0 || !strings.Contains(res.Err, ErrBlockedAddress.Error()) {
		t.Fatalf("live Send to loopback = %+v, want permanent block", res)
	}
	// The same URL is fine as a test endpoint.
	tr := req
	tr.Live = false
	if res := s.Send(context.Background(), tr); !res.Success {
		t.Fatalf("test Send = %+v", res)
	}
	next(t, ch)

	// An allowlist opens the range.
	s = NewSender(SenderOptions{TLSClientConfig: trusting(srv), Allowlist: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
	if res := s.Send(context.Background(), req); !res.Success {
		t.Fatalf("allowlisted live Send = %+v", res)
	}
	next(t, ch)
}

func TestSendRedirects(t *testing.T) {
	sec, key := mustSecret(t)
	final, ch := receiver(t, false, nil)
	// hop/N redirects N more times (307), then to the final receiver.
	var hops *httptest.Server
	hops = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n int
		fmt.Sscanf(r.URL.Path, "/hop/%d", &n)
		io.Copy(io.Discard, r.Body)
		if n <= 0 {
			http.Redirect(w, r, final.URL+"/final", http.StatusTemporaryRedirect)
			return
		}
		http.Redirect(w, r, fmt.Sprintf("%s/hop/%d", hops.URL, n-1), http.StatusPermanentRedirect)
	}))
	defer hops.Close()
	s := NewSender(SenderOptions{})
	body := []byte(`{"id":"evt_1"}`)

	// Three redirects are followed; method, body and signature survive.
	res := s.Send(context.Background(), SendRequest{URL: hops.URL + "/hop/2", MsgID: "evt_1", Body: body, Secrets: [][]byte{key}})
	if !res.Success {
		t.Fatalf("3 redirects: %+v", res)
	}
	rc := next(t, ch)
	if rc.path != "/final" || !bytes.Equal(rc.body, body) {
		t.Errorf("final hop got path %q body %q", rc.path, rc.body)
	}
	verifyBoth(t, sec, rc)

	// A fourth is not.
	res = s.Send(context.Background(), SendRequest{URL: hops.URL + "/hop/3", MsgID: "evt_1", Body: body, Secrets: [][]byte{key}})
	if res.Success || !res.Permanent || !strings.Contains(res.Err, "stopped after 3 redirects") {
		t.Errorf("4 redirects: %+v", res)
	}
}

func TestSendLiveRedirectPolicy(t *testing.T) {
	_, key := mustSecret(t)
	var target atomic.Value
	srv, _ := receiver(t, true, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.Load().(string), http.StatusTemporaryRedirect)
	})
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	s := NewSender(SenderOptions{
		TLSClientConfig: trusting(srv),
		Allowlist:       []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, // the first hop only
	})
	for i, tc := range []struct {
		location string
		wantErr  string
	}{
		{"https://127.0.0.2:" + port + "/", ErrBlockedAddress.Error()},           // other loopback address
		{"https://[::1]:" + port + "/", ErrBlockedAddress.Error()},               // IPv6 loopback
		{"https://169.254.169.254/latest/meta-data/", ErrBlockedAddress.Error()}, // cloud metadata
		{"https://10.0.0.1/", ErrBlockedAddress.Error()},
		{"http://127.0.0.1:" + port + "/", "must use https"}, // downgrade
		{"ftp://example.com/", "scheme"},
	} {
		target.Store(tc.location)
		res := s.Send(context.Background(), SendRequest{URL: srv.URL, MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}, Live: true, Timeout: 5 * time.Second})
		if res.Success || !res.Permanent || res.StatusCode != 0 || !strings.Contains(res.Err, tc.wantErr) {
			t.Errorf("%d redirect to %s: %+v, want permanent %q", i, tc.location, res, tc.wantErr)
		}
	}
}

// TestSendWireHeaderNames checks the raw request: the Standard Webhooks
// headers are spelled in lower case as the spec writes them.
func TestSendWireHeaderNames(t *testing.T) {
	_, key := mustSecret(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	head := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			head <- ""
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		var sb strings.Builder
		for {
			line, err := br.ReadString('\n')
			sb.WriteString(line)
			if err != nil || line == "\r\n" {
				break
			}
		}
		io.WriteString(c, "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
		head <- sb.String()
	}()
	res := NewSender(SenderOptions{}).Send(context.Background(), SendRequest{URL: "http://" + ln.Addr().String() + "/", MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}, Timeout: 5 * time.Second})
	if !res.Success {
		t.Fatalf("Send = %+v", res)
	}
	h := <-head
	for _, want := range []string{"POST / HTTP/1.1\r\n", "\r\nwebhook-id: evt_1\r\n", "\r\nwebhook-timestamp: ", "\r\nwebhook-signature: v1,", "\r\nContent-Type: application/json\r\n"} {
		if !strings.Contains(h, want) {
			t.Errorf("request head lacks %q:\n%s", want, h)
		}
	}
}

// ExampleSender_Send delivers one signed event to a test endpoint.
func ExampleSender_Send() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, "thanks")
	}))
	defer srv.Close()

	secret, _ := NewSecret() // stored with the endpoint, shown to its owner once
	key, _ := DecodeSecret(secret)

	s := NewSender(SenderOptions{})
	res := s.Send(context.Background(), SendRequest{
		URL:       srv.URL,
		MsgID:     "evt_01",
		EventType: "user.created",
		Body:      []byte(`{"id":"evt_01","type":"user.created","data":{"id":"u_1"}}`),
		Secrets:   [][]byte{key},
	})
	fmt.Println(res.Success, res.StatusCode, res.ResponseExcerpt)
	// Output: true 202 thanks
}

// TestSendLiveResolvesThroughGuard sends to live endpoints by name, with the
// guarded dialer's resolver under test control: a name with any denied
// answer is refused (DNS rebinding), an allowlisted answer is dialed.
func TestSendLiveResolvesThroughGuard(t *testing.T) {
	_, key := mustSecret(t)
	srv, ch := receiver(t, true, nil) // its certificate is valid for example.com
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	names := map[string][]string{
		"example.com":   {"127.0.0.1"},
		"rebind.test":   {"93.184.216.34", "127.0.0.1"},
		"metadata.test": {"169.254.169.254"},
	}
	for i, tc := range []struct {
		host    string
		allow   []netip.Prefix
		success bool
	}{
		{host: "example.com"}, // loopback answer, no allowlist
		{host: "example.com", allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}, success: true},
		{host: "rebind.test", allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		{host: "metadata.test", allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}},
	} {
		s := NewSender(SenderOptions{TLSClientConfig: trusting(srv), Allowlist: tc.allow})
		s.liveDial.lookup = fakeLookup(names)
		res := s.Send(context.Background(), SendRequest{URL: "https://" + net.JoinHostPort(tc.host, port) + "/", MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}, Live: true, Timeout: 5 * time.Second})
		if tc.success {
			if !res.Success {
				t.Errorf("%d %s: %+v, want success", i, tc.host, res)
				continue
			}
			next(t, ch)
			continue
		}
		if res.Success || !res.Permanent || !strings.Contains(res.Err, ErrBlockedAddress.Error()) {
			t.Errorf("%d %s: %+v, want permanent block", i, tc.host, res)
		}
	}
}

// Test endpoints may reach loopback but not private, link-local or metadata
// addresses, by name, literally or through a redirect; each refusal is
// permanent and never reaches the network.
func TestSendTestEndpointGuard(t *testing.T) {
	_, key := mustSecret(t)
	srv, ch := receiver(t, false, nil)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	bounce, _ := receiver(t, false, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://internal.test:"+port+"/", http.StatusTemporaryRedirect)
	})
	names := map[string][]string{
		"receiver.test": {"127.0.0.1"},
		"internal.test": {"10.0.0.1"},
		"mixed.test":    {"127.0.0.1", "192.168.1.10"},
		"meta.test":     {"169.254.169.254"},
		"imds6.test":    {"fd00:ec2::254"},
		"aliyun.test":   {"100.100.100.200"},
	}
	send := func(s *Sender, u string) SendResult {
		return s.Send(context.Background(), SendRequest{URL: u, MsgID: "evt_1", Body: []byte("{}"), Secrets: [][]byte{key}, Timeout: 5 * time.Second})
	}
	s := NewSender(SenderOptions{})
	s.testDial.lookup = fakeLookup(names)
	for _, u := range []string{srv.URL + "/", "http://receiver.test:" + port + "/"} {
		if res := send(s, u); !res.Success {
			t.Errorf("%s: %+v, want delivered (loopback)", u, res)
			continue
		}
		next(t, ch)
	}
	for _, tc := range []struct{ url, want string }{
		{"http://internal.test:" + port + "/", "10.0.0.0/8"},
		{"http://mixed.test:" + port + "/", "192.168.0.0/16"},
		{"http://meta.test/latest/meta-data/", "169.254.0.0/16"},
		{"http://imds6.test/", "fc00::/7"},
		{"http://aliyun.test/", "100.64.0.0/10"},
		{"http://10.0.0.1:" + port + "/", "10.0.0.0/8"},
		{"http://169.254.169.254/latest/meta-data/", "169.254.0.0/16"},
		{"http://[fd00:ec2::254]/", "fc00::/7"},
		{bounce.URL + "/", "10.0.0.0/8"},
		{"http://2130706433:" + port + "/", "dotted decimal"},
		{"http://127.1:" + port + "/", "dotted decimal"},
	} {
		res := send(s, tc.url)
		if res.Success || !res.Permanent || !strings.Contains(res.Err, tc.want) {
			t.Errorf("%s: %+v, want a permanent refusal naming %s", tc.url, res, tc.want)
		}
	}
	select {
	case rc := <-ch:
		t.Errorf("a refused delivery reached the receiver: %s", rc.path)
	default:
	}
	// The allowlist opens a range for test endpoints as for live ones.
	s = NewSender(SenderOptions{Allowlist: []netip.Prefix{netip.MustParsePrefix("192.168.1.0/24")}})
	s.testDial.lookup = fakeLookup(names)
	if res := send(s, "http://mixed.test:"+port+"/"); !res.Success {
		t.Errorf("allowlisted mixed.test: %+v", res)
	} else {
		next(t, ch)
	}
	// The system resolver's localhost is loopback too.
	if res := send(NewSender(SenderOptions{}), "http://localhost:"+port+"/"); !res.Success {
		t.Errorf("localhost: %+v", res)
	} else {
		next(t, ch)
	}
}
