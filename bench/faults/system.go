package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// maxDeliveryBody bounds what the receiver reads of one delivery; a user
// event is well under 1 KiB.
const maxDeliveryBody = 1 << 20

// receiverIdleTimeout closes an idle keep-alive connection after Node.js's
// default keepAliveTimeout, so that the worker meets the same race a Node
// receiver gives it (a request sent on a connection the server just closed).
const receiverIdleTimeout = 5 * time.Second

// ---- upstream ---------------------------------------------------------------

// startUpstream serves the legacy API in this process: POST /api/users
// answers 201 with a new user (the shape rules/examples/basic-users-tenants.yaml
// expects) and records it in led; GET /static/* answers 200 (Caddy's readiness).
func startUpstream(led *ledger) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("upstream: listening: %w", err)
	}
	var ids atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /static/", func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("POST /api/users", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Email string `json:"email"`
			Name  string `json:"name"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&in); err != nil || in.Email == "" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":"email is required"}`)
			return
		}
		id := "u_" + strconv.FormatInt(ids.Add(1), 10)
		body, _ := json.Marshal(map[string]any{
			"id": id, "email": in.Email, "name": in.Name, "tenant_id": "t_1", "role": "member",
			"password_hash": "$2y$10$abcdefghijklmnopqrstuv", "created_at": time.Now().UTC().Format(time.RFC3339),
		})
		led.create(id, time.Now())
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(body)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return ln.Addr().String(), func() { _ = srv.Close() }, nil
}

// ---- receiver ---------------------------------------------------------------

// receiver is the webhook subscriber: it verifies each delivery's Standard
// Webhooks signature and records it in the ledger. It can be taken down (its
// listener and connections closed: the worker gets "connection refused") and
// brought back on the same port.
type receiver struct {
	addr  string
	wh    *standardwebhooks.Webhook
	led   *ledger
	delay time.Duration // over each delivery, before it is recorded

	mu  sync.Mutex
	srv *http.Server
}

func newReceiver(secret string, led *ledger, delay time.Duration) (*receiver, error) {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		return nil, fmt.Errorf("receiver: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("receiver: listening: %w", err)
	}
	r := &receiver{addr: ln.Addr().String(), wh: wh, led: led, delay: delay}
	r.serve(ln)
	return r, nil
}

func (r *receiver) url() string { return "http://" + r.addr + "/hook" }

func (r *receiver) serve(ln net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(r.handle), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: receiverIdleTimeout}
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// down closes the listener and every connection.
func (r *receiver) down() {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// up listens again on the same port.
func (r *receiver) up(ctx context.Context) error {
	var lastErr error
	for range 100 {
		ln, err := net.Listen("tcp", r.addr)
		if err == nil {
			r.serve(ln)
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("receiver: listening again on %s: %w", r.addr, lastErr)
}

func (r *receiver) handle(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, maxDeliveryBody+1))
	if err != nil || len(body) > maxDeliveryBody {
		r.led.count(&r.led.badBody)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if err := r.wh.Verify(body, req.Header); err != nil {
		r.led.count(&r.led.badSig)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	user, evID, err := deliveredUser(body)
	if err != nil {
		r.led.count(&r.led.badBody)
		w.WriteHeader(http.StatusNoContent) // counted; a retry would not make it attributable
		return
	}
	if r.delay > 0 {
		// A delivery whose sender goes away before the answer (a killed
		// worker) is not taken: it must come again.
		select {
		case <-time.After(r.delay):
		case <-req.Context().Done():
			return
		}
	}
	wid := req.Header.Get("webhook-id")
	if wid != evID {
		r.led.count(&r.led.mismatch)
	}
	r.led.deliver(user, wid, time.Now())
	w.WriteHeader(http.StatusNoContent)
}

// deliveredUser returns the user id (data.id) and the event id of a
// user.created envelope.
func deliveredUser(body []byte) (user, eventID string, err error) {
	var ev struct {
		ID   string `json:"id"`
		Type string `json:"type"`
		Data struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		return "", "", fmt.Errorf("decoding delivery: %w", err)
	}
	if ev.Type != "user.created" || ev.Data.ID == "" || ev.ID == "" {
		return "", "", fmt.Errorf("delivery is not a user.created event with data.id and id (type %q)", ev.Type)
	}
	return ev.Data.ID, ev.ID, nil
}

// ---- traffic ----------------------------------------------------------------

// maxInFlight bounds the sign-up requests in flight, so that a stalled Caddy
// cannot make the load generator pile up goroutines without end.
const maxInFlight = 256

// traffic sends sign-ups through Caddy at a fixed rate until stopped.
type traffic struct {
	stop   chan struct{}
	done   chan struct{}
	sent   atomic.Int64
	failed atomic.Int64 // transport errors and statuses other than 201
	// burstReq asks the sender for n requests at once
	burstReq chan int
}

func startTraffic(caddyAddr string, rate float64) *traffic {
	t := &traffic{stop: make(chan struct{}), done: make(chan struct{}), burstReq: make(chan int)}
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: maxInFlight, IdleConnTimeout: time.Minute},
	}
	interval := time.Duration(float64(time.Second) / rate)
	go func() {
		defer close(t.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		sem := make(chan struct{}, maxInFlight)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		n := 0
		send := func() {
			select {
			case sem <- struct{}{}:
			default:
				t.failed.Add(1) // the generator is saturated: counted as a failed request
				return
			}
			n++
			wg.Add(1)
			t.sent.Add(1)
			go func(n int) {
				defer wg.Done()
				defer func() { <-sem }()
				if !signUp(client, caddyAddr, n) {
					t.failed.Add(1)
				}
			}(n)
		}
		for {
			select {
			case <-t.stop:
				return
			case k := <-t.burstReq:
				for range k {
					send()
				}
			case <-tick.C:
				send()
			}
		}
	}()
	return t
}

// signUp sends sign-up n through Caddy and reports whether it answered 201.
func signUp(client *http.Client, caddyAddr string, n int) bool {
	body := fmt.Sprintf(`{"email":"user%d@bench.test","name":"User %d","tenant_id":"t_1","password":"correct horse"}`, n, n)
	req, err := http.NewRequest(http.MethodPost, "http://"+caddyAddr+"/api/users", strings.NewReader(body))
	if err != nil {
		return false
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Cookie", "session=s_0123456789abcdef")
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusCreated
}

// burst sends n sign-ups at once, on top of the steady rate.
func (t *traffic) burst(n int) {
	select {
	case t.burstReq <- n:
	case <-t.done:
	}
}

// end stops the traffic and waits for the requests in flight.
func (t *traffic) end() {
	select {
	case <-t.stop:
	default:
		close(t.stop)
	}
	<-t.done
}
