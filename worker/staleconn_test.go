package worker

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// seen is one request a keepAliveResetter read.
type seen struct {
	conn              int
	id, ts, sig, body string
}

// keepAliveResetter is a raw HTTP/1.1 server that answers the first request
// of the first connection with 200 and keep-alive, then closes that
// connection abruptly (SO_LINGER 0: an RST) the moment the next request
// arrives on it, as a Node.js receiver does whose keep-alive timeout fires
// under a request. When resetAll is set it resets every later request, on
// fresh connections too.
type keepAliveResetter struct {
	ln       net.Listener
	resetAll bool

	mu    sync.Mutex
	conns int
	reqs  []seen
}

func newKeepAliveResetter(t *testing.T, resetAll bool) *keepAliveResetter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &keepAliveResetter{ln: ln, resetAll: resetAll}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns++
			n := s.conns
			s.mu.Unlock()
			go s.serve(c.(*net.TCPConn), n)
		}
	}()
	return s
}

func (s *keepAliveResetter) url() string { return "http://" + s.ln.Addr().String() + "/hook" }

func (s *keepAliveResetter) serve(c *net.TCPConn, n int) {
	defer c.Close()
	br := bufio.NewReader(c)
	for i := 0; ; i++ {
		if _, err := br.Peek(1); err != nil {
			return
		}
		reset := (n == 1 && i > 0) || (s.resetAll && n > 1)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		s.record(n, req)
		if reset {
			_ = c.SetLinger(0)
			return
		}
		if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"); err != nil {
			return
		}
	}
}

func (s *keepAliveResetter) record(n int, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, seen{conn: n, id: r.Header.Get("webhook-id"), ts: r.Header.Get("webhook-timestamp"),
		sig: r.Header.Get("webhook-signature"), body: string(b)})
}

func (s *keepAliveResetter) requests() []seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]seen(nil), s.reqs...)
}

// Acceptance 6: a try that fails on a reused keep-alive connection the
// receiver closed, before any response byte, is re-sent at once on a fresh
// connection, with the same webhook-id, timestamp, signature and body.
func TestSendResendsOnStaleKeepAlive(t *testing.T) {
	_, key := mustSecret(t)
	srv := newKeepAliveResetter(t, false)
	s := NewSender(SenderOptions{})
	defer s.CloseIdleConnections()
	first := s.Send(context.Background(), SendRequest{URL: srv.url(), MsgID: "evt_1", Body: []byte(`{"n":1}`), Secrets: [][]byte{key}})
	if !first.Success || first.StaleConn != nil {
		t.Fatalf("first delivery = %+v, want a plain success", first)
	}
	res := s.Send(context.Background(), SendRequest{URL: srv.url(), MsgID: "evt_2", Body: []byte(`{"n":2}`), Secrets: [][]byte{key}})
	if !res.Success || res.StatusCode != 200 {
		t.Fatalf("second delivery = %+v, want success after the re-send", res)
	}
	if res.StaleConn == nil || res.StaleConn.Success || res.StaleConn.Err == "" {
		t.Fatalf("second delivery's first try = %+v, want the failure on the stale connection", res.StaleConn)
	}
	t.Logf("first try on the stale connection: %s", res.StaleConn.Err)
	reqs := srv.requests()
	if len(reqs) != 3 {
		t.Fatalf("server read %d requests, want 3: %+v", len(reqs), reqs)
	}
	stale, fresh := reqs[1], reqs[2]
	if stale.conn != 1 || fresh.conn == 1 {
		t.Errorf("the re-send went on connection %d after the stale one %d; want a fresh one", fresh.conn, stale.conn)
	}
	if stale.id != "evt_2" || stale != (seen{conn: stale.conn, id: fresh.id, ts: fresh.ts, sig: fresh.sig, body: fresh.body}) {
		t.Errorf("re-send differs from the first try: %+v vs %+v", fresh, stale)
	}
}

// A receiver that resets every request gets one re-send per attempt, and
// none for a failure on a fresh connection: the re-send cannot loop.
func TestSendResendsOnlyOnceAndOnlyOnReusedConnections(t *testing.T) {
	_, key := mustSecret(t)
	srv := newKeepAliveResetter(t, true)
	s := NewSender(SenderOptions{})
	defer s.CloseIdleConnections()
	send := func(id string) SendResult {
		return s.Send(context.Background(), SendRequest{URL: srv.url(), MsgID: id, Body: []byte(`{}`), Secrets: [][]byte{key}})
	}
	if res := send("evt_1"); !res.Success {
		t.Fatalf("first delivery = %+v", res)
	}
	res := send("evt_2")
	if res.Success || res.Permanent || res.StaleConn == nil || res.Err == "" {
		t.Fatalf("second delivery = %+v, want a retryable failure after one re-send", res)
	}
	if n := len(srv.requests()); n != 3 {
		t.Errorf("server read %d requests, want 3 (one re-send)", n)
	}
	// Nothing is idle now: the third delivery dials a fresh connection, whose
	// failure is not re-sent.
	res = send("evt_3")
	if res.Success || res.StaleConn != nil {
		t.Errorf("third delivery = %+v, want a failure without re-send", res)
	}
	if n := len(srv.requests()); n != 4 {
		t.Errorf("server read %d requests, want 4", n)
	}
}

// Idle connections are dropped before Node.js's 5 s keep-alive timeout.
func TestSenderIdleConnTimeout(t *testing.T) {
	s := NewSender(SenderOptions{})
	for _, tr := range []*http.Transport{s.liveTr, s.testTr} {
		if tr.IdleConnTimeout <= 0 || tr.IdleConnTimeout >= 5*time.Second {
			t.Errorf("IdleConnTimeout = %s, want below 5s", tr.IdleConnTimeout)
		}
	}
}

// Acceptance 6: through the delivery handler the second delivery succeeds in
// its one scheduled attempt, and the delivery log shows the failed try on the
// stale connection as a row of that same attempt.
func TestDeliverLogsStaleConnectionResend(t *testing.T) {
	ctx := context.Background()
	f := newDeliverFixture(t)
	srv := newKeepAliveResetter(t, false)
	if _, err := f.store.Create(ctx, EndpointConfig{ID: "ep", URL: srv.url(), Mode: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := f.h.ProcessTask(ctx, f.task(t, "evt_1", "ep")); err != nil {
		t.Fatal(err)
	}
	if err := f.h.ProcessTask(ctx, f.task(t, "evt_2", "ep")); err != nil {
		t.Fatalf("second delivery: %v, want success in its first attempt", err)
	}
	atts, err := f.store.EventAttempts(ctx, "evt_2")
	if err != nil {
		t.Fatal(err)
	}
	if len(atts) != 2 {
		t.Fatalf("attempts of evt_2 = %+v, want 2 rows", atts)
	}
	var failed, ok int
	for _, a := range atts {
		if a.Attempt != 1 {
			t.Errorf("row %+v: attempt %d, want 1", a, a.Attempt)
		}
		switch {
		case a.Success && a.Status == 200:
			ok++
		case !a.Success && strings.Contains(a.Error, "reused keep-alive connection"):
			failed++
		}
	}
	if ok != 1 || failed != 1 {
		t.Errorf("attempts of evt_2 = %+v, want one failed try on the stale connection and one success", atts)
	}
	if since, err := f.store.FailingSince(ctx, "ep"); err != nil || !since.IsZero() {
		t.Errorf("endpoint failing since %v (%v), want not failing", since, err)
	}
}
