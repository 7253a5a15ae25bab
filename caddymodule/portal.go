package caddymodule

import (
	"fmt"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/authtap/authtap/admin"
)

func init() {
	caddy.RegisterModule(Portal{})
}

// Portal is the HTTP handler "authtap_portal": the tenant portal, where a
// customer's admin manages the webhooks of one tenant with a portal link
// (issued by the management API's POST /portal-links). It serves the portal
// page and its assets (embedded, no third-party requests) and, below /api/,
// the tenant's endpoints, deliveries and event catalog, relative to where it
// is mounted. It is a terminal handler: it answers every request it gets.
//
// It accepts only portal tokens, never operator credentials, so it can face
// customers while authtap_admin stays behind operator authentication:
//
//	handle_path /portal/* {
//		authtap_portal
//	}
//	handle_path /_authtap/* {
//		basic_auth { admin {env.AUTHTAP_ADMIN_HASH} }
//		authtap_admin
//	}
//
// The page has a strict Content-Security-Policy (default-src 'none'; scripts,
// styles and API calls from its own origin only) and may not be framed
// unless FrameAncestors names the sites that may embed it.
//
// It works on the Redis of the "authtap" app (and on the in-process worker's
// endpoint store when that worker is on).
type Portal struct {
	// FrameAncestors lists the origins that may show the portal in a frame
	// (CSP frame-ancestors sources such as "https://app.example.com" or
	// "https://*.example.com"). Default empty: no site may frame it.
	FrameAncestors []string `json:"frame_ancestors,omitempty"`
	// AllowTestEndpoints lets portal users make test endpoints, which may be
	// plain http and reach the worker's loopback addresses. Default false:
	// live endpoints only (https, public addresses). For demos and staging.
	AllowTestEndpoints bool `json:"allow_test_endpoints,omitempty"`
	// MaxEndpoints bounds one tenant's endpoints for creating more in the
	// portal. Default 25.
	MaxEndpoints int `json:"max_endpoints,omitempty"`
	// ChangesPerMinute bounds one tenant's state-changing portal requests per
	// minute, across every Caddy and worker on the same Redis. Default 60.
	ChangesPerMinute int `json:"changes_per_minute,omitempty"`
	// Prefix is the path under which clients reach this handler, e.g.
	// "/portal", without a trailing slash; when a request's path still starts
	// with it (a path matcher that does not strip it), it is stripped before
	// routing. Default empty: mount it with handle_path, which strips it.
	Prefix string `json:"prefix,omitempty"`

	logger *zap.Logger
	portal http.Handler
}

// CaddyModule returns the Caddy module information.
func (Portal) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.authtap_portal",
		New: func() caddy.Module { return new(Portal) },
	}
}

// Provision connects the portal to the authtap app's Redis.
func (h *Portal) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.Prefix = strings.TrimRight(h.Prefix, "/")
	app, err := authtapApp(ctx)
	if err != nil {
		return err
	}
	store, err := app.EndpointStore()
	if err != nil {
		return fmt.Errorf("provisioning the portal: %w", err)
	}
	cfg := admin.PortalConfig{
		APIConfig:          admin.APIConfig{Store: store, EventTypes: loadedEventTypes, Logger: h.logger},
		FrameAncestors:     h.FrameAncestors,
		AllowTestEndpoints: h.AllowTestEndpoints,
		MaxEndpoints:       h.MaxEndpoints,
		ChangesPerMinute:   h.ChangesPerMinute,
	}
	if w := app.InProcessWorker(); w != nil {
		cfg.Client = w.Client()
		cfg.CheckEndpointURL = w.CheckEndpointURL
	}
	if h.portal, err = admin.NewPortal(cfg); err != nil {
		return fmt.Errorf("provisioning the portal: %w", err)
	}
	return nil
}

// Validate checks the configuration.
func (h *Portal) Validate() error {
	if h.Prefix != "" && !strings.HasPrefix(h.Prefix, "/") {
		return fmt.Errorf("prefix %q must start with /", h.Prefix)
	}
	if strings.ContainsAny(h.Prefix, "?#") {
		return fmt.Errorf("prefix %q must be a plain path", h.Prefix)
	}
	if h.MaxEndpoints < 0 || h.ChangesPerMinute < 0 {
		return fmt.Errorf("max_endpoints and changes_per_minute must not be negative")
	}
	return nil
}

// ServeHTTP serves the portal. It never calls next.
func (h *Portal) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if h.Prefix != "" && hasPathPrefix(r.URL.Path, h.Prefix) {
		path := r.URL.Path[len(h.Prefix):]
		if path == "" {
			path = "/"
		}
		r = withPath(r, path)
	}
	h.portal.ServeHTTP(w, r)
	return nil
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Portal)(nil)
	_ caddy.Validator             = (*Portal)(nil)
	_ caddyhttp.MiddlewareHandler = (*Portal)(nil)
)
