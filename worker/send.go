package worker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/net/http/httpguts"
)

// Defaults of SendRequest and SenderOptions.
const (
	// DefaultTimeout bounds one delivery attempt, response included.
	DefaultTimeout = 15 * time.Second
	// DefaultMaxResponseBytes caps how much of a response body is read.
	DefaultMaxResponseBytes = 64 << 10
	// DefaultUserAgent is sent with every delivery.
	DefaultUserAgent = "authtap-webhooks/1"
	// MaxExcerptBytes is the longest SendResult.ResponseExcerpt.
	MaxExcerptBytes = 1 << 10
	// MaxRedirects is how many redirects one attempt follows.
	MaxRedirects = 3
	// DefaultIdleConnTimeout is how long an idle keep-alive connection to an
	// endpoint is kept. It is below the keep-alive timeouts of common servers
	// (Node.js 5 s, Caddy and Go 5 min/none, nginx 75 s, Apache 5 s) so that
	// authtap drops an idle connection before the receiver closes it under a
	// request in flight.
	DefaultIdleConnTimeout = 4 * time.Second
)

// SendRequest is one delivery attempt of one message to one endpoint.
type SendRequest struct {
	// URL is the endpoint URL.
	URL string
	// MsgID is sent as webhook-id: the event id, the same on every retry.
	MsgID string
	// EventType is the event name, sent in EventHeader when that is set.
	EventType string
	// Body holds the exact bytes signed and sent.
	Body []byte
	// Secrets are the decoded endpoint secrets; every one signs, so that
	// receivers accept the message during a rotation.
	Secrets [][]byte
	// BearerToken, when set, is sent as "Authorization: Bearer <token>".
	BearerToken string
	// EventHeader, when set, names a header (e.g. "X-Defguard-Event") that
	// carries EventType.
	EventHeader string
	// Timeout bounds the attempt, from connecting to reading the response.
	// Zero means DefaultTimeout (15s).
	Timeout time.Duration
	// Live marks a live endpoint: HTTPS only, and the address guard applies
	// (see DefaultDeniedRanges). Test endpoints (false) may use plain HTTP
	// and loopback addresses; the guard refuses them every other denied
	// range (private, link-local, metadata…) too.
	Live bool
}

// SendResult describes one delivery attempt, as the delivery log records it.
type SendResult struct {
	// AttemptedAt is when the attempt started; its unix seconds are the
	// webhook-timestamp that was signed.
	AttemptedAt time.Time
	// StatusCode is the final HTTP status, 0 when there was no response.
	StatusCode int
	// Latency is the time from sending to having read the response.
	Latency time.Duration
	// ResponseExcerpt holds the first bytes (at most MaxExcerptBytes) of the
	// response body, as valid UTF-8 cut at a character boundary.
	ResponseExcerpt string
	// Err describes a transport or policy error; it is empty whenever there
	// was an HTTP response.
	Err string
	// Success is true for a 2xx response within the timeout.
	Success bool
	// RetryAfter is the Retry-After of a non-2xx response (seconds or HTTP
	// date), clamped to [0, MaxRetryAfter]; 0 when absent or unparsable.
	RetryAfter time.Duration
	// Gone is true for 410 Gone: the caller disables the endpoint.
	Gone bool
	// Permanent is true when retrying cannot help: a blocked address, an
	// invalid or non-HTTPS live URL, an invalid header, missing secrets.
	Permanent bool
	// StaleConn, when set, is the first try of this attempt, which failed on
	// a reused keep-alive connection before any response byte arrived (the
	// receiver had closed it: "connection reset by peer", EOF); the rest of
	// the result is the re-send made at once on a fresh connection, with the
	// same webhook-id, timestamp, signature and body.
	StaleConn *SendResult
}

// SenderOptions configure a Sender. The zero value is ready to use.
type SenderOptions struct {
	// Allowlist lists ranges endpoints (live and test) may reach even
	// though DefaultDeniedRanges denies them. Empty by default.
	Allowlist []netip.Prefix
	// MaxResponseBytes caps how much of a response body is read (the
	// excerpt keeps MaxExcerptBytes of it). Zero means 64 KiB.
	MaxResponseBytes int64
	// MaxRetryAfter bounds SendResult.RetryAfter. Zero means 24h.
	MaxRetryAfter time.Duration
	// UserAgent is sent with every delivery. Empty means
	// "authtap-webhooks/1".
	UserAgent string
	// Now returns the current time, used for AttemptedAt, the signed
	// timestamp and Retry-After dates. Nil means time.Now.
	Now func() time.Time
	// TLSClientConfig is used for HTTPS deliveries; nil means Go's default
	// (system roots). Tests set RootCAs to trust an httptest server.
	TLSClientConfig *tls.Config
	// MaxIdleConnsPerHost is how many idle connections to one endpoint each
	// mode's transport keeps. Zero means 128.
	MaxIdleConnsPerHost int
}

// Sender signs and delivers webhooks. It keeps one HTTP transport for live
// endpoints and one for test endpoints; the connections of both go through
// an address guard and never through a proxy (which would connect where the
// guard cannot see). The live guard refuses every range DefaultDeniedRanges
// lists, the test guard all of them but loopback; SenderOptions.Allowlist
// opens ranges for both. A Sender is safe for concurrent use.
type Sender struct {
	opts   SenderOptions
	now    func() time.Time
	live   *http.Client
	test   *http.Client
	liveTr *http.Transport
	testTr *http.Transport
	// liveFresh and testFresh dial a new connection for every request
	// (keep-alives off): the re-send of a try that failed on a stale
	// keep-alive connection.
	liveFresh, testFresh *http.Client
	// liveDial and testDial are the transports' guarded dialers (tests
	// swap their resolvers).
	liveDial, testDial *guardedDialer
}

// CheckURL reports whether an endpoint URL names, as its host, a literal IP
// address that this Sender's address guard for the mode refuses (for live
// endpoints: private, loopback, metadata…; for test endpoints the same but
// loopback; neither in SenderOptions.Allowlist). Host names are not resolved
// here: they are checked at every dial.
func (s *Sender) CheckURL(raw string, live bool) error {
	if live {
		return s.liveDial.guard.literalAddressError(raw)
	}
	return s.testDial.guard.literalAddressError(raw)
}

// policyError marks URL policy failures (bad URL, plain HTTP for a live
// endpoint, too many redirects): retrying cannot help.
type policyError struct{ err error }

func (e *policyError) Error() string { return e.err.Error() }
func (e *policyError) Unwrap() error { return e.err }

func policyErrorf(format string, a ...any) error {
	return &policyError{err: fmt.Errorf(format, a...)}
}

// NewSender returns a Sender configured by o.
func NewSender(o SenderOptions) *Sender {
	orDefault(&o.MaxResponseBytes, DefaultMaxResponseBytes)
	orDefault(&o.MaxRetryAfter, DefaultMaxRetryAfter)
	orDefault(&o.MaxIdleConnsPerHost, 128)
	if o.UserAgent == "" {
		o.UserAgent = DefaultUserAgent
	}
	s := &Sender{opts: o, now: o.Now}
	if s.now == nil {
		s.now = time.Now
	}
	base := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}

	s.liveTr = s.newTransport()
	s.liveTr.Proxy = nil
	s.liveDial = newGuardedDialer(newAddressGuard(o.Allowlist), base)
	s.liveTr.DialContext = s.liveDial.DialContext

	s.testTr = s.newTransport()
	s.testTr.Proxy = nil
	s.testDial = newGuardedDialer(newTestAddressGuard(o.Allowlist), base)
	s.testTr.DialContext = s.testDial.DialContext

	s.live = &http.Client{Transport: s.liveTr, CheckRedirect: checkRedirect(true)}
	s.test = &http.Client{Transport: s.testTr, CheckRedirect: checkRedirect(false)}
	liveFresh, testFresh := s.liveTr.Clone(), s.testTr.Clone()
	liveFresh.DisableKeepAlives, testFresh.DisableKeepAlives = true, true
	s.liveFresh = &http.Client{Transport: liveFresh, CheckRedirect: checkRedirect(true)}
	s.testFresh = &http.Client{Transport: testFresh, CheckRedirect: checkRedirect(false)}
	return s
}

func (s *Sender) newTransport() *http.Transport {
	var tc *tls.Config
	if s.opts.TLSClientConfig != nil {
		tc = s.opts.TLSClientConfig.Clone()
	}
	return &http.Transport{
		TLSClientConfig:        tc,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           4 * s.opts.MaxIdleConnsPerHost,
		MaxIdleConnsPerHost:    s.opts.MaxIdleConnsPerHost,
		IdleConnTimeout:        DefaultIdleConnTimeout,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
}

// CloseIdleConnections closes idle connections of both transports.
func (s *Sender) CloseIdleConnections() {
	s.liveTr.CloseIdleConnections()
	s.testTr.CloseIdleConnections()
	s.liveFresh.CloseIdleConnections()
	s.testFresh.CloseIdleConnections()
}

// checkRedirect follows at most MaxRedirects redirects that keep the method
// (307 and 308; a 301, 302 or 303 would turn the POST into a GET without the
// body, so that response is returned as is and counts as a failure), each
// re-checked against the URL policy. The dial guard applies to every hop.
func checkRedirect(live bool) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if req.Method != http.MethodPost {
			return http.ErrUseLastResponse
		}
		if len(via) > MaxRedirects {
			return policyErrorf("stopped after %d redirects", MaxRedirects)
		}
		if err := ValidateEndpointURL(req.URL.String(), live); err != nil {
			return fmt.Errorf("redirect: %w", err)
		}
		return nil
	}
}

// ValidateEndpointURL checks an endpoint URL without connecting: it must be
// an absolute http or https URL with a host and without user information, and
// https when live. A host written as a numeric address in any form but
// dotted decimal ("2130706433", "127.1", "0x7f.1", "0177.0.0.1",
// "127.0.0.1.", "[::ffff:127.0.0.1]") is refused whatever the mode, since
// browsers, resolvers and the address guard could read it differently; the
// error says which address it stands for. The error names the problem.
// Addresses are checked at connect time, since DNS answers change.
func ValidateEndpointURL(raw string, live bool) error {
	if strings.TrimSpace(raw) == "" {
		return policyErrorf("endpoint URL is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return policyErrorf("endpoint URL does not parse: %w", errors.Unwrap(err))
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return policyErrorf("endpoint URL scheme must be http or https, not %q", u.Scheme)
	case live && u.Scheme != "https":
		return policyErrorf("live endpoint URL must use https")
	case u.Opaque != "":
		return policyErrorf("endpoint URL must be absolute (scheme://host/path)")
	case u.User != nil:
		return policyErrorf("endpoint URL must not contain user information; use a bearer token")
	case u.Hostname() == "":
		return policyErrorf("endpoint URL has no host")
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return policyErrorf("endpoint URL port %q is out of range", p)
		}
	}
	if err := hostFormError(u); err != nil {
		return fmt.Errorf("endpoint URL: %w", err)
	}
	return nil
}

// Send makes one delivery attempt: it signs r.Body with every secret for
// the current time, POSTs it with the Standard Webhooks headers and reports
// what happened. It never returns an error: failures are described in the
// result, whose Success, Gone, Permanent and RetryAfter tell the caller what
// to do next.
func (s *Sender) Send(ctx context.Context, r SendRequest) SendResult {
	now := s.now()
	res := SendResult{AttemptedAt: now}
	fail := func(permanent bool, err error) SendResult {
		res.Err = err.Error()
		res.Permanent = permanent
		return res
	}

	if err := ValidateEndpointURL(r.URL, r.Live); err != nil {
		return fail(true, err)
	}
	sig, err := Sign(r.Secrets, r.MsgID, now, r.Body)
	if err != nil {
		return fail(true, err)
	}
	if !httpguts.ValidHeaderFieldValue(r.MsgID) {
		return fail(true, errors.New("message id contains characters not allowed in a header"))
	}
	if r.BearerToken != "" && !httpguts.ValidHeaderFieldValue(r.BearerToken) {
		return fail(true, errors.New("bearer token contains characters not allowed in a header"))
	}
	if r.EventHeader != "" {
		if !httpguts.ValidHeaderFieldName(r.EventHeader) {
			return fail(true, fmt.Errorf("event header name %q is not a valid header name", r.EventHeader))
		}
		if !httpguts.ValidHeaderFieldValue(r.EventType) {
			return fail(true, fmt.Errorf("event type %q is not a valid header value", r.EventType))
		}
	}

	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.URL, bytes.NewReader(r.Body))
	if err != nil {
		return fail(true, fmt.Errorf("building request: %w", err))
	}
	h := req.Header
	// The Standard Webhooks headers go out spelled exactly as the spec
	// writes them (lower case), not in Go's canonical form; receivers
	// compare names case-insensitively either way.
	h[HeaderWebhookID] = []string{r.MsgID}
	h[HeaderWebhookTimestamp] = []string{strconv.FormatInt(now.Unix(), 10)}
	h[HeaderWebhookSignature] = []string{sig}
	h.Set("Content-Type", "application/json")
	h.Set("User-Agent", s.opts.UserAgent)
	if r.BearerToken != "" {
		h.Set("Authorization", "Bearer "+r.BearerToken)
	}
	if r.EventHeader != "" {
		h.Set(r.EventHeader, r.EventType)
	}

	client, fresh := s.test, s.testFresh
	if r.Live {
		client, fresh = s.live, s.liveFresh
	}
	res, stale := s.do(client, req, res, timeout)
	if !stale {
		return res
	}
	// The receiver closed the idle connection this try reused (Node.js does
	// after 5 s) before answering: nothing was processed, and the re-send on a
	// fresh connection is the same message (same webhook-id, timestamp,
	// signature and body). Go's transport re-sends on its own only idempotent
	// methods, and POST is not one.
	first := res
	again := req.Clone(ctx)
	again.Body = io.NopCloser(bytes.NewReader(r.Body))
	res, _ = s.do(fresh, again, SendResult{AttemptedAt: now}, timeout)
	res.StaleConn = &first
	return res
}

// do sends req with client and fills res from the response. stale reports a
// failure on a reused connection before any response byte arrived, which a
// re-send on a fresh connection may fix: not a timeout, a cancellation or a
// policy refusal.
func (s *Sender) do(client *http.Client, req *http.Request, res SendResult, timeout time.Duration) (_ SendResult, stale bool) {
	var reused, gotByte atomic.Bool
	trace := &httptrace.ClientTrace{
		GotConn:              func(info httptrace.GotConnInfo) { reused.Store(info.Reused) },
		GotFirstResponseByte: func() { gotByte.Store(true) },
	}
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		res.Latency = time.Since(start)
		res = s.transportFailure(res, err, timeout)
		stale = reused.Load() && !gotByte.Load() && !res.Permanent && req.Context().Err() == nil &&
			!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled)
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			stale = false
		}
		return res, stale
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, s.opts.MaxResponseBytes))
	res.Latency = time.Since(start)

	res.StatusCode = resp.StatusCode
	res.ResponseExcerpt = excerpt(body, MaxExcerptBytes)
	res.Success = resp.StatusCode >= 200 && resp.StatusCode <= 299
	res.Gone = resp.StatusCode == http.StatusGone
	if !res.Success {
		res.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), s.now(), s.opts.MaxRetryAfter)
	}
	return res, false
}

// transportFailure fills res for an attempt that got no HTTP response.
func (s *Sender) transportFailure(res SendResult, err error, timeout time.Duration) SendResult {
	_, policy := errors.AsType[*policyError](err)
	res.Permanent = policy || errors.Is(err, ErrBlockedAddress)
	var ue *url.Error
	inner := err
	if errors.As(err, &ue) {
		inner = ue.Err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		res.Err = fmt.Sprintf("no response within %s", timeout)
	case errors.Is(err, context.Canceled):
		res.Err = "delivery canceled"
	default:
		res.Err = inner.Error()
	}
	return res
}

// excerpt returns at most n bytes of b as valid UTF-8, never cutting a
// character in two: a character the cut (or the read cap) split is dropped,
// and other invalid bytes become U+FFFD.
func excerpt(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	// Drop a trailing incomplete character.
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				b = b[:i]
			}
			break
		}
	}
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// parseRetryAfter reads a Retry-After value, delay-seconds or HTTP date,
// as a duration from now clamped to [0, limit]. Anything else gives 0.
func parseRetryAfter(v string, now time.Time, limit time.Duration) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if v[0] >= '0' && v[0] <= '9' {
		secs, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			if errors.Is(err, strconv.ErrRange) {
				return limit
			}
			return 0
		}
		if secs >= uint64(limit/time.Second) {
			return limit
		}
		return time.Duration(secs) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	d := t.Sub(now)
	return min(max(d, 0), limit)
}
