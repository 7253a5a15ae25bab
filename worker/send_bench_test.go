package worker

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// benchBody is a typical event envelope (about 400 bytes).
var benchBody = []byte(`{"id":"evt_01JDQ0Z6W3YB8XK4R2N5M7P9TQ","type":"user.created","timestamp":"2026-11-23T10:00:00.123Z",` +
	`"data":{"id":"u_1","email":"a@x.test","name":"Ada Lovelace","roles":["admin","editor"],"tenant":"t_42",` +
	`"profile":{"locale":"en-GB","timezone":"Europe/London","avatar":"https://cdn.example.com/a/u_1.png"}},` +
	`"source":{"name":"legacy-auth","rule":"user-created"},"mode":"live"}`)

// BenchmarkSendLoopback measures Sender.Send throughput: parallel signed
// deliveries to a loopback httptest server (test mode, plain HTTP, keep-alive).
//
//	go test -run '^$' -bench SendLoopback -benchtime 5s ./worker/
func BenchmarkSendLoopback(b *testing.B) {
	_, key := mustSecret(b)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	s := NewSender(SenderOptions{})
	defer s.CloseIdleConnections()
	req := SendRequest{
		URL:         srv.URL + "/hook",
		MsgID:       "evt_01JDQ0Z6W3YB8XK4R2N5M7P9TQ",
		EventType:   "user.created",
		Body:        benchBody,
		Secrets:     [][]byte{key},
		EventHeader: "X-Event",
		Timeout:     10 * time.Second,
	}
	b.SetParallelism(8) // 8 × GOMAXPROCS concurrent deliveries, like a worker pool
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if res := s.Send(context.Background(), req); !res.Success {
				b.Errorf("delivery failed: %+v", res)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkSendLoopbackLiveTLS is BenchmarkSendLoopback for a live endpoint:
// HTTPS through the guarded dialer, loopback opened by the allowlist.
func BenchmarkSendLoopbackLiveTLS(b *testing.B) {
	_, key := mustSecret(b)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	s := NewSender(SenderOptions{TLSClientConfig: trusting(srv), Allowlist: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	defer s.CloseIdleConnections()
	req := SendRequest{URL: srv.URL + "/hook", MsgID: "evt_1", EventType: "user.created", Body: benchBody, Secrets: [][]byte{key}, Live: true, Timeout: 10 * time.Second}
	b.SetParallelism(8)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if res := s.Send(context.Background(), req); !res.Success {
				b.Errorf("delivery failed: %+v", res)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "deliveries/s")
}

// BenchmarkSign measures signing a typical event with one secret and with
// two (rotation).
func BenchmarkSign(b *testing.B) {
	_, k1 := mustSecret(b)
	_, k2 := mustSecret(b)
	now := time.Now()
	for _, bc := range []struct {
		name    string
		secrets [][]byte
		body    []byte
	}{
		{"1secret", [][]byte{k1}, benchBody},
		{"2secrets", [][]byte{k1, k2}, benchBody},
		{"1secret-64KiB", [][]byte{k1}, []byte(strings.Repeat("x", 64<<10))},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(bc.body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Sign(bc.secrets, "evt_01JDQ0Z6W3YB8XK4R2N5M7P9TQ", now, bc.body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
