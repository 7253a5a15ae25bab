package caddymodule

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
)

// lookupHeader marks a lookup that authtap sends back through Caddy, so that
// the handler lets it pass without observing it (a lookup never emits
// events). Its value is a one-time token: random, registered just before the
// lookup is sent, consumed the first time a handler sees it and withdrawn when
// the lookup returns, whatever happened to it. Caddy's access log (written
// once the lookup has been answered) and anything else that records the
// lookup's headers therefore only ever show spent tokens: a client that
// replays them is observed like any other. The handler removes the header
// from every request, so it never reaches the upstream; a lookup sent to
// lookup_upstream does not carry it at all.
const lookupHeader = "X-Authtap-Lookup"

// lookupTokenBytes is the size of a lookup token before hex encoding.
const lookupTokenBytes = 16

// lookupTokens holds the tokens of the lookups under way in this process
// (token → struct{}), whichever handler sent them: a lookup may come back
// through another site's or another config's handler.
var lookupTokens sync.Map

// newLookupToken registers a fresh token; the caller withdraws it with
// lookupTokens.Delete once the lookup has returned.
func newLookupToken() (string, error) {
	var b [lookupTokenBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("making lookup token: %w", err)
	}
	tok := hex.EncodeToString(b[:])
	lookupTokens.Store(tok, struct{}{})
	return tok, nil
}

// isOwnLookup reports whether a request's marker values are exactly one
// token of a lookup under way, and consumes that token: a second request
// with the same value is not a lookup.
func isOwnLookup(v []string) bool {
	if len(v) != 1 || len(v[0]) != 2*lookupTokenBytes {
		return false
	}
	_, ok := lookupTokens.LoadAndDelete(v[0])
	return ok
}

// ownLookupKey marks, in a request's context, a lookup whose token a
// handler consumed, so that a second authtap handler on its way lets it pass
// too.
type ownLookupKey struct{}

func isMarkedLookup(r *http.Request) bool {
	v, _ := r.Context().Value(ownLookupKey{}).(bool)
	return v
}

// localAddrKey carries, in a lookup's context, the listener address that
// accepted the caller's request, so the lookup is dialed back to it.
type localAddrKey struct{}

// lookupClient sends rule lookups: to a configured upstream, or back through
// this Caddy server.
type lookupClient struct {
	upstream *url.URL
	client   *http.Client
}

func newLookupClient(upstream *url.URL) *lookupClient {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     60 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	if upstream == nil {
		// Through Caddy: the URL names the caller's Host (for routing, SNI
		// and the Host header) and the connection goes to the very socket
		// that accepted the caller's request, i.e. to this process. The
		// certificate is not verified because the peer is ourselves by
		// construction (and a site's certificate may come from an internal
		// CA this process does not trust as a client).
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			a, ok := ctx.Value(localAddrKey{}).(net.Addr)
			if !ok || a == nil {
				// never dial the Host by name with verification off
				return nil, errors.New("no listener address to send the lookup back to; set lookup_upstream")
			}
			return dialer.DialContext(ctx, "tcp", dialable(a))
		}
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the peer is this process, see above
	} else {
		tr.DialContext = dialer.DialContext
	}
	return &lookupClient{
		upstream: upstream,
		client: &http.Client{
			Transport: tr,
			// a redirect is an answer like any other non-2xx: the lookup failed
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// dialable turns a listener address into one a client can dial: a wildcard
// address becomes loopback.
func dialable(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func (lc *lookupClient) close() { lc.client.CloseIdleConnections() }

// target builds the URL of a lookup for the caller's request.
func (lc *lookupClient) target(r *http.Request, path string) (string, context.Context) {
	ctx := context.WithoutCancel(r.Context())
	if lc.upstream != nil {
		return lc.upstream.Scheme + "://" + lc.upstream.Host + strings.TrimSuffix(lc.upstream.Path, "/") + path, ctx
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		ctx = context.WithValue(ctx, localAddrKey{}, a)
	}
	return scheme + "://" + r.Host + path, ctx
}

// do runs one lookup with the caller's credentials. A failure is reported in
// the result's Err; it never carries the credentials or the response body.
func (lc *lookupClient) do(r *http.Request, lk rules.LookupRequest, deadline time.Time, max int64) rules.LookupResult {
	if len(lk.Missing) > 0 {
		return rules.LookupResult{Err: "lookup path needs " + strings.Join(lk.Missing, ", ") + ", which the exchange lacks"}
	}
	if !strings.HasPrefix(lk.Path, "/") {
		return rules.LookupResult{Err: "lookup path does not start with /"}
	}
	target, ctx := lc.target(r, lk.Path)
	timeout := lk.Timeout
	if timeout <= 0 {
		timeout = rules.DefaultLookupTimeout
	}
	if d := time.Until(deadline); d < timeout {
		timeout = d
	}
	if timeout <= 0 {
		return rules.LookupResult{Err: "no time left for this lookup"}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return rules.LookupResult{Err: fmt.Sprintf("building lookup request: %v", errors.Unwrap(err))}
	}
	for _, name := range []string{"Cookie", "Authorization"} {
		if v := r.Header.Values(name); len(v) > 0 {
			req.Header[name] = append([]string(nil), v...)
		}
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "authtap-lookup")
	if lc.upstream == nil {
		// back through Caddy, where a handler must recognise it
		tok, err := newLookupToken()
		if err != nil {
			return rules.LookupResult{Err: err.Error()}
		}
		defer lookupTokens.Delete(tok)
		req.Header.Set(lookupHeader, tok)
	}

	resp, err := lc.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return rules.LookupResult{Err: fmt.Sprintf("lookup timed out after %s", timeout)}
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the URL, which may carry ids
		}
		return rules.LookupResult{Err: fmt.Sprintf("lookup failed: %v", err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	switch {
	case err != nil && ctx.Err() != nil:
		return rules.LookupResult{Err: fmt.Sprintf("lookup timed out after %s", timeout)}
	case err != nil:
		return rules.LookupResult{Err: fmt.Sprintf("reading lookup response: %v", err)}
	case int64(len(body)) > max:
		return rules.LookupResult{Err: "lookup response larger than max_body"}
	}
	return rules.LookupResult{Status: resp.StatusCode, Header: resp.Header, Body: body}
}

// runLookups runs a match's lookups in order (a later one may use an earlier
// one's answer) and records each result on the exchange. A failed lookup is
// logged and counted; the event is still built, with the missing
// placeholders listed in source.missing.
//
// All lookups of one exchange (every matching rule, every sub-exchange of a
// batch) share b: at most rules.MaxExchangeLookups are sent, all within
// maxLookupTotal of the first. A lookup past the count is not sent and
// counts as failed (one warning says so).
func (h *Handler) runLookups(r *http.Request, ex *rules.Exchange, m *rules.Match, b *exchangeBudget) {
	if b.deadline.IsZero() {
		b.deadline = time.Now().Add(maxLookupTotal)
	}
	for i := 0; i < m.NumLookups(); i++ {
		lk := m.Lookup(i, ex)
		if b.lookupsLeft <= 0 {
			h.metrics.lookupFailures.WithLabelValues(m.Rule.Name).Inc()
			if !b.lookupCapped {
				b.lookupCapped = true
				h.logger.Warn("lookup not sent: the exchange has sent as many as one exchange may; events will list what is missing",
					zap.String("rule", m.Rule.Name), zap.String("as", lk.As), zap.Int("max_exchange_lookups", rules.MaxExchangeLookups))
			}
			ex.SetLookup(lk.As, rules.LookupResult{Err: fmt.Sprintf("not sent: the exchange has sent %d lookups (rules.MaxExchangeLookups)", rules.MaxExchangeLookups)})
			continue
		}
		b.lookupsLeft--
		res := h.lookups.do(r, lk, b.deadline, h.MaxBody)
		if res.Err != "" || res.Status < 200 || res.Status > 299 {
			h.metrics.lookupFailures.WithLabelValues(m.Rule.Name).Inc()
			fields := []zap.Field{zap.String("rule", m.Rule.Name), zap.String("as", lk.As)}
			if res.Err != "" {
				fields = append(fields, zap.String("error", clip(res.Err, logErrorMax)))
			} else {
				fields = append(fields, zap.Int("status", res.Status))
			}
			if b.warn() {
				h.logger.Warn("lookup failed; event will list what is missing", fields...)
			}
		}
		ex.SetLookup(lk.As, res)
	}
}
