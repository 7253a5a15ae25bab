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
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

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
const lookupHeader = rules.LookupMarkerHeader

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

// target builds the URL of a lookup for the caller's request. A
// before-lookup ends with the caller's request (the client went away: nothing
// will be forwarded); an after-lookup runs to its own end, as the response
// is already accepted.
func (lc *lookupClient) target(r *http.Request, path string, before bool) (string, context.Context) {
	ctx := r.Context()
	if !before {
		ctx = context.WithoutCancel(ctx)
	}
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

// do runs one lookup with the headers rules gave it (the caller's
// credentials, lookup.header). A failure is reported in the result's Err; it
// never carries a header value, the URL or the response body. The result's
// Missing is the request's HeaderMissing, so that the events list it.
func (lc *lookupClient) do(r *http.Request, lk rules.LookupRequest, deadline time.Time, max int64) rules.LookupResult {
	res := lc.send(r, lk, deadline, max)
	res.Missing = lk.HeaderMissing
	return res
}

func (lc *lookupClient) send(r *http.Request, lk rules.LookupRequest, deadline time.Time, max int64) rules.LookupResult {
	if len(lk.Missing) > 0 {
		return rules.LookupResult{Err: "lookup path needs " + strings.Join(lk.Missing, ", ") + ", which the exchange lacks"}
	}
	if !strings.HasPrefix(lk.Path, "/") {
		return rules.LookupResult{Err: "lookup path does not start with /"}
	}
	target, ctx := lc.target(r, lk.Path, lk.Before)
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
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "authtap-lookup")
	for name, v := range lk.Header {
		// credentials and lookup.header values; rules refuses the names a
		// lookup must not set (Host, hop-by-hop, the marker)
		req.Header[name] = append([]string(nil), v...)
	}
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
		if errors.Is(ctx.Err(), context.Canceled) {
			return rules.LookupResult{Err: "lookup canceled: the client went away"}
		}
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

// runLookups runs a match's after-lookups in order (a later one may use an
// earlier one's answer) and records each result on the exchange, with the
// answers its before-lookups got before the request was forwarded. A failed
// lookup is logged and counted; the event is still built, with the missing
// placeholders listed in source.missing.
//
// All lookups of one exchange (every matching rule, every sub-exchange of a
// batch, and the before-lookups sent ahead of them) share b: at most
// rules.MaxExchangeLookups are sent, the after-lookups all within
// maxLookupTotal of the first. A lookup past the count is not sent and
// counts as failed (one warning says so).
func (h *Handler) runLookups(r *http.Request, ex *rules.Exchange, m *rules.Match, b *exchangeBudget, before *beforeRun) {
	for i := 0; i < m.NumLookups(); i++ {
		if m.LookupBefore(i) {
			as, res, ok := before.result(m.Rule, i)
			if !ok {
				// not sent (the before phase failed): the rule still emits
				as, res = m.Lookup(i, ex).As, rules.LookupResult{Err: "before-lookup not run"}
			}
			h.noteLookup(m.Rule.Name, as, rules.LookupBefore, res, b)
			ex.SetLookup(as, res)
			continue
		}
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
		if b.deadline.IsZero() {
			b.deadline = time.Now().Add(maxLookupTotal)
		}
		res := h.lookups.do(r, lk, b.deadline, h.MaxBody)
		h.noteLookup(m.Rule.Name, lk.As, rules.LookupAfter, res, b)
		ex.SetLookup(lk.As, res)
	}
}

// noteLookup logs and counts a failed lookup of a matched rule. The log names
// the rule, the lookup and the error or status, never a header value; b, if
// not nil, bounds the warnings of the exchange.
func (h *Handler) noteLookup(rule, as, when string, res rules.LookupResult, b *exchangeBudget) {
	if res.Err == "" && res.Status >= 200 && res.Status <= 299 {
		return
	}
	h.metrics.lookupFailures.WithLabelValues(rule).Inc()
	if b != nil && !b.warn() {
		return
	}
	fields := []zap.Field{zap.String("rule", rule), zap.String("as", as), zap.String("when", when)}
	if res.Err != "" {
		fields = append(fields, zap.String("error", clip(res.Err, logErrorMax)))
	} else {
		fields = append(fields, zap.Int("status", res.Status))
	}
	h.logger.Warn("lookup failed; event will list what is missing", fields...)
}

// beforeRun holds the answers to the before-lookups of one exchange, by
// rule, until the response is known; for a batch envelope, those of its
// sub-requests too, by batch rule and position.
type beforeRun struct {
	rules   []*rules.Rule
	results [][]beforeResult // per rule, indexed like its lookups
	subs    []beforeSub
	sent    int // lookups sent, the sub-requests' included (against rules.MaxExchangeLookups)
}

type beforeResult struct {
	done bool
	as   string
	res  rules.LookupResult
}

// beforeSub is what the before-lookups of one sub-request of a batch got.
type beforeSub struct {
	batch *rules.Rule
	index int // the sub-request's position (rules.Exchange.SubIndex)
	run   *beforeRun
}

// result returns the answer the i-th lookup of rule got before forwarding.
func (b *beforeRun) result(rule *rules.Rule, i int) (string, rules.LookupResult, bool) {
	if b == nil {
		return "", rules.LookupResult{}, false
	}
	for j, r := range b.rules {
		if r == rule && i < len(b.results[j]) && b.results[j][i].done {
			br := b.results[j][i]
			return br.as, br.res, true
		}
	}
	return "", rules.LookupResult{}, false
}

// sub returns the answers of the sub-request at index of the envelope that
// batch split, or nil.
func (b *beforeRun) sub(batch *rules.Rule, index int) *beforeRun {
	if b == nil {
		return nil
	}
	for _, s := range b.subs {
		if s.batch == batch && s.index == index {
			return s.run
		}
	}
	return nil
}

// lookupsSent is how many lookups the exchange sent before forwarding.
func (b *beforeRun) lookupsSent() int {
	if b == nil {
		return 0
	}
	return b.sent
}

// beforeSend is what all before-lookups of one exchange share: the
// deadline, the answers of identical lookups, the count.
type beforeSend struct {
	deadline time.Time
	same     map[string]rules.LookupResult // identical lookups of this exchange
	run      *beforeRun                    // the envelope's, which counts every send
	capped   bool
}

// runBeforeLookups sends, before the request is forwarded, the
// before-lookups of every rule whose method, path, host and request
// conditions match (rules.Set.MatchBefore), with the credentials the caller
// sent. Each runs within its timeout and what is left of
// before_lookup_budget, one after another in rule and lookup order (a later
// one may use an earlier one's answer); identical ones (same path and
// headers) are sent once per exchange. A failure never stops the request:
// the rule's events, if it matches, list what is missing. Rules that read a
// request body larger than max_body are skipped (they emit nothing anyway).
//
// A batch envelope's sub-requests are known before it is forwarded: each is
// matched the same way (its method, path, host and request conditions), and
// its rules' before-lookups are sent too, sharing the budget and
// rules.MaxExchangeLookups with the envelope's; their answers go to the
// sub-exchange of the same position after the response.
func (h *Handler) runBeforeLookups(r *http.Request, set *rules.Set, ex *rules.Exchange, reqOver bool) *beforeRun {
	ms := set.MatchBefore(ex)
	if len(ms) == 0 {
		return nil
	}
	run := &beforeRun{}
	st := &beforeSend{deadline: time.Now().Add(time.Duration(h.BeforeLookupBudget)), run: run}
	for _, m := range ms {
		if m.Rule.Need().RequestBody && reqOver {
			continue
		}
		if !m.IsBatch() {
			h.beforeLookupsOf(r, ex, m, run, st)
			continue
		}
		// a too_many_operations error is counted after the response, by Batch
		subs, _ := m.BatchRequests(ex)
		for _, sub := range subs {
			var sr *beforeRun
			for _, sm := range set.MatchBefore(sub) {
				if sr == nil {
					sr = &beforeRun{}
				}
				h.beforeLookupsOf(r, sub, sm, sr, st)
			}
			if sr != nil {
				run.subs = append(run.subs, beforeSub{batch: m.Rule, index: sub.SubIndex(), run: sr})
			}
		}
	}
	return run
}

// beforeLookupsOf sends the before-lookups of one match and keeps the
// answers in run.
func (h *Handler) beforeLookupsOf(r *http.Request, ex *rules.Exchange, m *rules.Match, run *beforeRun, st *beforeSend) {
	results := make([]beforeResult, m.NumLookups())
	for i := range results {
		if !m.LookupBefore(i) {
			continue
		}
		lk := m.Lookup(i, ex)
		key, same := "", false
		var res rules.LookupResult
		if len(lk.Missing) == 0 {
			key = lookupKey(lk)
			if res, same = st.same[key]; same {
				res.Missing = lk.HeaderMissing // this rule's own templates
			}
		}
		switch {
		case same:
		case st.run.sent >= rules.MaxExchangeLookups:
			if !st.capped {
				st.capped = true
				h.logger.Warn("before-lookup not sent: the exchange has sent as many as one exchange may; events will list what is missing",
					zap.String("rule", m.Rule.Name), zap.String("as", lk.As), zap.Int("max_exchange_lookups", rules.MaxExchangeLookups))
			}
			res = rules.LookupResult{Err: fmt.Sprintf("not sent: the exchange has sent %d lookups (rules.MaxExchangeLookups)", rules.MaxExchangeLookups)}
		default:
			res = h.lookups.do(r, lk, st.deadline, h.MaxBody)
			if len(lk.Missing) == 0 {
				st.run.sent++
				h.metrics.beforeLookups.WithLabelValues(m.Rule.Name).Inc()
				if st.same == nil {
					st.same = map[string]rules.LookupResult{}
				}
				st.same[key] = res
			}
		}
		if c := h.logger.Check(zapcore.DebugLevel, "before-lookup answered"); c != nil {
			c.Write(zap.String("rule", m.Rule.Name), zap.String("as", lk.As), zap.Int("status", res.Status),
				zap.String("error", clip(res.Err, logErrorMax)), zap.Bool("shared", same), zap.Bool("sub_request", ex.IsSub()))
		}
		results[i] = beforeResult{done: true, as: lk.As, res: res}
		ex.SetLookup(lk.As, res) // for the rule's later before-lookups
	}
	run.rules = append(run.rules, m.Rule)
	run.results = append(run.results, results)
}

// lookupKey identifies a lookup by what is sent: path and headers.
func lookupKey(lk rules.LookupRequest) string {
	var b strings.Builder
	b.WriteString(lk.Path)
	names := make([]string, 0, len(lk.Header))
	for k := range lk.Header {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		for _, v := range lk.Header[k] {
			b.WriteByte(0)
			b.WriteString(k)
			b.WriteByte(0)
			b.WriteString(v)
		}
	}
	return b.String()
}
