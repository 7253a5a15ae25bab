package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

// Portal defaults and bounds.
const (
	// DefaultPortalMaxEndpoints is how many endpoints one tenant may have
	// when PortalConfig.MaxEndpoints is not set; creating more through the
	// portal is refused.
	DefaultPortalMaxEndpoints = 25
	// DefaultPortalChangesPerMinute is how many state-changing portal
	// requests (create, change, delete, rotate, test, retry, replay) one
	// tenant may make per minute, across its links and every process on the
	// same Redis, when PortalConfig.ChangesPerMinute is not set.
	DefaultPortalChangesPerMinute = 60
	// MaxPortalTestsPerMinute bounds the test events one tenant sends
	// through the portal per minute (each is kept in the event index that
	// replays read, next to the real events), within ChangesPerMinute.
	MaxPortalTestsPerMinute = 6
	// MaxPortalReplayEvents bounds how many events one replay through the
	// portal sends; a window holding more is refused.
	MaxPortalReplayEvents = 1000
	// maxFrameAncestors bounds PortalConfig.FrameAncestors.
	maxFrameAncestors = 16
)

//go:embed portal
var portalAssets embed.FS

// PortalConfig configures the tenant portal.
type PortalConfig struct {
	// APIConfig is shared with the management API: the portal's API is the
	// management API's endpoints, deliveries and catalog routes, below /api/
	// and limited to the tenant of the request's portal token. Monitor and
	// PortalURL are not used.
	APIConfig
	// FrameAncestors lists the origins that may show the portal in a frame,
	// as Content-Security-Policy frame-ancestors sources (e.g.
	// "https://app.example.com"). Default empty: no site may frame it
	// (frame-ancestors 'none', X-Frame-Options DENY).
	FrameAncestors []string
	// AllowTestEndpoints lets portal users create test endpoints (and switch
	// endpoints to test mode). Test endpoints may be plain http and may reach
	// the worker's loopback addresses, so only turn it on where the portal's
	// users may do that (a demo, a staging site). Default false: portal users
	// make live endpoints only (https, public addresses).
	AllowTestEndpoints bool
	// MaxEndpoints bounds one tenant's endpoints for creating more through
	// the portal. Default DefaultPortalMaxEndpoints.
	MaxEndpoints int
	// ChangesPerMinute bounds one tenant's state-changing portal requests per
	// minute. Default DefaultPortalChangesPerMinute.
	ChangesPerMinute int
}

// portalRoutes are the operations a portal token opens, below /api/: its
// tenant's endpoints, their deliveries and the event catalog. Nothing else
// (no /events, no /unmatched, no monitor) is reachable through the portal.
var portalRoutes = []route{
	{"GET", "/api/session", (*api).portalSession},
	{"GET", "/api/webhooks", (*api).listEndpoints},
	{"POST", "/api/webhooks", (*api).createEndpoint},
	{"GET", "/api/webhooks/{id}", (*api).getEndpoint},
	{"PATCH", "/api/webhooks/{id}", (*api).updateEndpoint},
	{"DELETE", "/api/webhooks/{id}", (*api).deleteEndpoint},
	{"POST", "/api/webhooks/{id}/rotate-secret", (*api).rotateSecret},
	{"POST", "/api/webhooks/{id}/test", (*api).testEndpoint},
	{"GET", "/api/webhooks/{id}/deliveries", (*api).listDeliveries},
	{"POST", "/api/webhooks/{id}/replay", (*api).replay},
	{"POST", "/api/deliveries/{id}/retry", (*api).retryDelivery},
	{"GET", "/api/event-types", (*api).listEventTypes},
}

// portal serves the portal page, its assets and its API.
type portal struct {
	api       *api
	mux       *http.ServeMux
	csrf      *http.CrossOriginProtection
	pageCSP   string
	framable  bool
	allowTest bool
	maxEps    int
	changesPM int
	assets    map[string]portalAsset
}

type portalAsset struct {
	body        []byte
	contentType string
	etag        string
}

// NewPortal returns the tenant portal as an http.Handler whose paths are
// relative to where it is mounted (strip the prefix first, e.g. with Caddy's
// handle_path or http.StripPrefix; the page links to its assets and API by
// relative URL, so any prefix works). It serves:
//
//   - GET / — the portal page. A portal link is this URL with the token in
//     the fragment (#token=…), which browsers never send to a server: the
//     page keeps it in sessionStorage, removes it from the address bar and
//     sends it as "Authorization: Bearer <token>" with every API request;
//   - GET /portal.js, /portal.css — the page's embedded assets;
//   - /api/… — portalRoutes, for the tenant of the request's portal token.
//
// It accepts only portal tokens: operator credentials (the management API's
// bearer token, Basic auth) open nothing here. Expired, revoked, forged and
// malformed tokens get a 401 whose error code says which (token_expired,
// token_revoked, token_invalid, token_malformed, token_missing); read-only
// tokens get 403 read_only_token on anything but GET. State-changing
// requests from another origin (Sec-Fetch-Site, else Origin against Host)
// are refused with 403 cross_origin, and each tenant's changes are counted
// against PortalConfig.ChangesPerMinute (429 rate_limited beyond).
func NewPortal(c PortalConfig) (http.Handler, error) {
	a, err := newAPI(c.APIConfig)
	if err != nil {
		return nil, fmt.Errorf("configuring the portal: %w", err)
	}
	a.log = a.log.Named("portal")
	p := &portal{
		api: a, mux: http.NewServeMux(), csrf: http.NewCrossOriginProtection(),
		allowTest: c.AllowTestEndpoints, maxEps: c.MaxEndpoints, changesPM: c.ChangesPerMinute,
		assets: map[string]portalAsset{},
	}
	if p.maxEps <= 0 {
		p.maxEps = DefaultPortalMaxEndpoints
	}
	if p.changesPM <= 0 {
		p.changesPM = DefaultPortalChangesPerMinute
	}
	ancestors, err := frameAncestors(c.FrameAncestors)
	if err != nil {
		return nil, fmt.Errorf("configuring the portal: %w", err)
	}
	p.framable = ancestors != "'none'"
	p.pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
		"base-uri 'none'; form-action 'none'; frame-ancestors " + ancestors
	for name, ct := range map[string]string{
		"index.html": "text/html; charset=utf-8", "portal.js": "text/javascript; charset=utf-8", "portal.css": "text/css; charset=utf-8",
	} {
		b, err := fs.ReadFile(portalAssets, "portal/"+name)
		if err != nil {
			return nil, fmt.Errorf("configuring the portal: %w", err)
		}
		sum := sha256.Sum256(b)
		p.assets[name] = portalAsset{body: b, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	}
	for _, rt := range portalRoutes {
		p.mux.Handle(rt.method+" "+rt.path, a.wrap(rt.handle))
	}
	return p, nil
}

// frameAncestors checks the configured frame-ancestors sources and returns
// the directive's value.
func frameAncestors(srcs []string) (string, error) {
	if len(srcs) == 0 {
		return "'none'", nil
	}
	if len(srcs) > maxFrameAncestors {
		return "", fmt.Errorf("frame_ancestors: at most %d sources, got %d", maxFrameAncestors, len(srcs))
	}
	for _, s := range srcs {
		switch {
		case s == "'self'" || s == "'none'":
			if s == "'none'" && len(srcs) > 1 {
				return "", errors.New("frame_ancestors: 'none' cannot be combined with other sources")
			}
		case s == "" || len(s) > 256 || strings.ContainsAny(s, " \t\r\n;,'\"\\<>"):
			return "", fmt.Errorf("frame_ancestors: %q is not a CSP source such as https://app.example.com or https://*.example.com", s)
		case !strings.Contains(s, "://") && !strings.HasSuffix(s, ":"):
			return "", fmt.Errorf("frame_ancestors: %q needs a scheme, e.g. https://%s", s, s)
		}
	}
	return strings.Join(srcs, " "), nil
}

// ServeHTTP serves the page, its assets and the portal API.
func (p *portal) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	if strings.HasPrefix(path, "/api/") || path == "/api" {
		p.serveAPI(w, r)
		return
	}
	name := strings.TrimPrefix(path, "/")
	if name == "" {
		name = "index.html"
	}
	asset, ok := p.assets[name]
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", p.pageCSP)
	if !p.framable {
		h.Set("X-Frame-Options", "DENY")
	}
	if !ok {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", asset.etag)
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	if name == "index.html" {
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
	}
	h.Set("Content-Type", asset.contentType)
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(asset.body))
}

// serveAPI authenticates a portal request and serves it with its scope.
func (p *portal) serveAPI(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	a := p.api
	token, e := portalToken(r)
	if e != nil {
		p.unauthorized(w, r, e)
		return
	}
	ctx := r.Context()
	sc, err := a.links.verify(ctx, token)
	if err != nil {
		p.unauthorized(w, r, tokenError(err))
		return
	}
	sc.allowTest, sc.maxEndpoints = p.allowTest, p.maxEps
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodOptions {
		if err := p.csrf.Check(r); err != nil {
			a.writeError(w, r, errorf(http.StatusForbidden, CodeCrossOrigin,
				"refusing %s %s: %v (%v)", r.Method, r.URL.Path, ErrCrossOrigin, err))
			return
		}
		if sc.readOnly {
			a.writeError(w, r, errorf(http.StatusForbidden, CodeReadOnlyToken,
				"this portal link is read-only: it can look at endpoints and deliveries but change nothing"))
			return
		}
		limits := []struct {
			key, what string
			n         int
		}{{sc.tenant, "changes", p.changesPM}}
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/test") {
			limits = append(limits, struct {
				key, what string
				n         int
			}{"test:" + sc.tenant, "test events", MaxPortalTestsPerMinute})
		}
		for _, l := range limits {
			ok, wait, err := a.links.allowChange(ctx, l.key, l.n)
			if err != nil {
				a.writeError(w, r, unavailable(err))
				return
			}
			if !ok {
				secs := max(int(wait.Round(time.Second)/time.Second), 1)
				h.Set("Retry-After", fmt.Sprint(secs))
				a.writeError(w, r, errorf(http.StatusTooManyRequests, CodeRateLimited,
					"this tenant sent more than %d %s in a minute; try again in %d s", l.n, l.what, secs))
				return
			}
		}
	}
	a.serve(p.mux, w, r.WithContext(context.WithValue(ctx, scopeKey{}, sc)))
}

// portalToken reads the portal token of r: "Authorization: Bearer <token>".
func portalToken(r *http.Request) (string, *apiError) {
	v := r.Header.Get("Authorization")
	if v == "" {
		return "", tokenError(errTokenMissing)
	}
	if len(v) > MaxPortalTokenLen+len("Bearer ") {
		return "", tokenError(errTokenMalformed)
	}
	scheme, tok, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		e := tokenError(errTokenMissing)
		e.Message = "the portal takes only portal tokens: send \"Authorization: Bearer <token>\" with the token of a portal link (operator credentials are not accepted here)"
		return "", e
	}
	tok = strings.TrimSpace(tok)
	if !strings.HasPrefix(tok, portalTokenPrefix) {
		e := tokenError(errTokenMalformed)
		e.Message = "that is not a portal token (they start with " + portalTokenPrefix + "); operator credentials are not accepted here"
		return "", e
	}
	return tok, nil
}

// tokenError maps a verification error to its API error; anything else (Redis) is a 503.
func tokenError(err error) *apiError {
	code := ""
	switch {
	case errors.Is(err, errTokenMissing):
		code = CodeTokenMissing
	case errors.Is(err, errTokenMalformed):
		code = CodeTokenMalformed
	case errors.Is(err, errTokenInvalid):
		code = CodeTokenInvalid
	case errors.Is(err, errTokenExpired):
		code = CodeTokenExpired
	case errors.Is(err, errTokenRevoked):
		code = CodeTokenRevoked
	default:
		return unavailable(err)
	}
	return &apiError{Status: http.StatusUnauthorized, Code: code, Message: err.Error()}
}

// unavailable is a 503 whose cause (a Redis error) is logged, not sent.
func unavailable(err error) *apiError {
	e := errorf(http.StatusServiceUnavailable, CodeUnavailable, "redis does not answer; try again")
	e.cause = err
	return e
}

// unauthorized answers e (a 401 with a WWW-Authenticate challenge, or a 503).
func (p *portal) unauthorized(w http.ResponseWriter, r *http.Request, e *apiError) {
	if e.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="authtap-portal", error="invalid_token"`)
	}
	p.api.writeError(w, r, e)
}

// scopeKey is the context key of a portal request's *portalScope.
type scopeKey struct{}

// scopeOf returns the portal scope of r, or nil for an operator request.
func scopeOf(r *http.Request) *portalScope {
	sc, _ := r.Context().Value(scopeKey{}).(*portalScope)
	return sc
}

// logFields names the portal link and tenant in a log line of a portal
// request (never the token); nothing for an operator request.
func (sc *portalScope) logFields() []zap.Field {
	if sc == nil {
		return nil
	}
	return []zap.Field{zap.String("portal_link", sc.linkID), zap.String("tenant", sc.tenant)}
}

// checkPatch refuses what a portal user may not change: the tenant, and the
// mode to test unless test endpoints are allowed.
func (sc *portalScope) checkPatch(p worker.EndpointPatch) *apiError {
	if p.Tenant != nil && *p.Tenant != sc.tenant {
		return forbidden("tenant", "an endpoint managed in the portal belongs to the portal link's tenant; it cannot be moved to another")
	}
	if p.Mode != nil && *p.Mode == rules.ModeTest && !sc.allowTest {
		return fieldError("mode", "test endpoints cannot be made in this portal; use a live (https) endpoint")
	}
	return nil
}

// portalCreate fits an endpoint created through the portal to its scope:
// the token's tenant, an id chosen by authtap, live unless test endpoints
// are allowed, and at most sc.maxEndpoints per tenant.
func (a *api) portalCreate(r *http.Request, sc *portalScope, c *worker.EndpointConfig) *apiError {
	if c.Tenant != "" && c.Tenant != sc.tenant {
		return forbidden("tenant", "an endpoint created in the portal belongs to the portal link's tenant")
	}
	c.Tenant = sc.tenant
	if c.ID != "" {
		return fieldError("id", "authtap chooses the id of an endpoint created in the portal; leave it out")
	}
	if c.Mode == rules.ModeTest && !sc.allowTest {
		return fieldError("mode", "test endpoints cannot be made in this portal; use a live (https) endpoint")
	}
	eps, err := a.store.List(r.Context())
	if err != nil {
		return internal(err)
	}
	n := 0
	for _, ep := range eps {
		if ep.Tenant == sc.tenant {
			n++
		}
	}
	if n >= sc.maxEndpoints {
		return errorf(http.StatusConflict, CodeLimitReached,
			"this tenant has %d endpoints, the most the portal allows (%d); delete one first", n, sc.maxEndpoints)
	}
	return nil
}

// sessionResponse is the answer to GET /api/session: what the page's link grants.
type sessionResponse struct {
	Tenant             string    `json:"tenant"`
	ReadOnly           bool      `json:"read_only"`
	ExpiresAt          time.Time `json:"expires_at"`
	LinkID             string    `json:"link_id"`
	AllowTestEndpoints bool      `json:"allow_test_endpoints"`
	MaxEndpoints       int       `json:"max_endpoints"`
}

func (a *api) portalSession(w http.ResponseWriter, r *http.Request) *apiError {
	sc := scopeOf(r)
	if sc == nil {
		return errorf(http.StatusNotFound, CodeNotFound, "no such API path: %s", r.URL.Path)
	}
	writeJSON(w, http.StatusOK, sessionResponse{
		Tenant: sc.tenant, ReadOnly: sc.readOnly, ExpiresAt: sc.expires, LinkID: sc.linkID,
		AllowTestEndpoints: sc.allowTest, MaxEndpoints: sc.maxEndpoints,
	})
	return nil
}

var _ http.Handler = (*portal)(nil)
