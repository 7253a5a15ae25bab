package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/authtap/authtap/admin"
)

func init() {
	caddy.RegisterModule(Admin{})
}

// Admin bounds.
const (
	// maxMonitors bounds how many asynqmon instances (one per external mount
	// prefix) one handler keeps; the least recently used is let go beyond it.
	maxMonitors = 8
	// monitorCloseDelay is how long an evicted asynqmon instance stays open for
	// the requests it is still serving.
	monitorCloseDelay = time.Minute
	// monitorPath is where asynqmon lives below the handler's mount point.
	monitorPath = "/monitor"
)

// Admin is the HTTP handler "authtap_admin": it serves authtap's management
// API (endpoints, deliveries, retries, replays, events, event types, portal
// links; see
// /openapi.json) and the asynqmon web UI at /monitor/, relative to where it is
// mounted. It is a terminal handler: it answers every request it gets.
//
// It does not authenticate. Mount it behind Caddy's own authentication, e.g.
//
//	handle_path /_authtap/* {
//		basic_auth { admin {env.AUTHTAP_ADMIN_HASH} }
//		authtap_admin
//	}
//
// which strips the prefix, so that the handler sees /webhooks, /monitor/… .
// asynqmon's pages link to their own scripts and API by absolute path, so the
// handler needs the prefix the browser sees: it derives it per request from
// the part of the original path that handle_path (or uri strip_prefix)
// removed, or takes it from Prefix.
//
// Browsers send basic-auth credentials with cross-site requests too, so the
// handler refuses state-changing requests (anything but GET, HEAD and
// OPTIONS) that a browser marks as cross-origin (Sec-Fetch-Site, else Origin
// against Host), and forbids framing every response: admin.BrowserGuard,
// the same protection `authtap worker --admin` has. Clients that are not
// browsers (curl, `authtap endpoints`) send neither header and are not
// affected.
//
// It works on the Redis of the "authtap" app (and on the in-process worker's
// endpoint store when that worker is on).
type Admin struct {
	// Prefix is the path under which clients reach this handler, e.g.
	// "/_authtap", without a trailing slash. When a request's path still
	// starts with it (the handler is mounted with a path matcher that does not
	// strip it), it is stripped before routing. Set it when a proxy in front
	// of Caddy strips part of the path, which Caddy cannot see. Default empty:
	// derived per request from what Caddy itself stripped.
	Prefix string `json:"prefix,omitempty"`
	// DisableMonitor turns the asynqmon web UI off; /monitor/ then answers 404
	// like any unknown API path. Default false: asynqmon is served.
	DisableMonitor bool `json:"disable_monitor,omitempty"`
	// MonitorReadOnly makes asynqmon view-only: it refuses to delete, run,
	// archive or cancel tasks and to pause queues. Default false.
	MonitorReadOnly bool `json:"monitor_read_only,omitempty"`
	// PortalURL is the absolute URL of the tenant portal (where an
	// authtap_portal handler is mounted, e.g. "https://auth.example.com/portal/");
	// the portal links that POST /portal-links issues point there. Default:
	// the origin of the request that issues the link, plus "/portal/".
	PortalURL string `json:"portal_url,omitempty"`

	logger   *zap.Logger
	api      http.Handler
	monitors *monitorCache
	guard    *admin.BrowserGuard
}

// CaddyModule returns the Caddy module information.
func (Admin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.authtap_admin",
		New: func() caddy.Module { return new(Admin) },
	}
}

// Provision connects the management API and asynqmon to the authtap app's
// Redis. asynqmon instances are made on first use.
func (h *Admin) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.Prefix = strings.TrimRight(h.Prefix, "/")
	h.guard = admin.NewBrowserGuard()

	app, err := authtapApp(ctx)
	if err != nil {
		return err
	}
	store, err := app.EndpointStore()
	if err != nil {
		return fmt.Errorf("provisioning management API: %w", err)
	}
	cfg := admin.APIConfig{Store: store, EventTypes: loadedEventTypes, Logger: h.logger, PortalURL: h.PortalURL}
	if w := app.InProcessWorker(); w != nil {
		cfg.Client = w.Client()
		// It delivers, so its allow list decides which addresses are refused.
		cfg.CheckEndpointURL = w.CheckEndpointURL
	}
	if h.api, err = admin.NewAPI(cfg); err != nil {
		return fmt.Errorf("provisioning management API: %w", err)
	}
	if !h.DisableMonitor {
		opt := app.RedisOpt()
		if opt == nil {
			return fmt.Errorf("provisioning asynqmon: %w", errAppNotProvisioned)
		}
		h.monitors = newMonitorCache(opt, h.MonitorReadOnly)
	}
	return nil
}

// Validate checks the configuration.
func (h *Admin) Validate() error {
	if h.Prefix != "" && !strings.HasPrefix(h.Prefix, "/") {
		return fmt.Errorf("prefix %q must start with /", h.Prefix)
	}
	if strings.ContainsAny(h.Prefix, "?#") {
		return fmt.Errorf("prefix %q must be a plain path", h.Prefix)
	}
	return nil
}

// Cleanup closes the asynqmon instances' Redis connections. The management
// API uses the app's shared connection, which the app releases.
func (h *Admin) Cleanup() error {
	if h.monitors == nil {
		return nil
	}
	return h.monitors.close()
}

// ServeHTTP serves the management API, or asynqmon below /monitor/. It never
// calls next.
func (h *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	markOwnTraffic(w) // an authtap handler in front does not count this as uncovered
	if err := h.guard.Check(w, r); err != nil {
		return caddyhttp.Error(http.StatusForbidden, err)
	}
	path := r.URL.Path
	if h.Prefix != "" && hasPathPrefix(path, h.Prefix) {
		path = path[len(h.Prefix):]
		if path == "" {
			path = "/"
		}
		r = withPath(r, path)
	}
	if h.monitors == nil || !hasPathPrefix(path, monitorPath) {
		h.api.ServeHTTP(w, r)
		return nil
	}

	prefix := h.Prefix
	if prefix == "" {
		prefix = strippedPrefix(r)
	}
	if !safeRootPath(prefix) {
		return caddyhttp.Error(http.StatusBadRequest,
			fmt.Errorf("serving asynqmon: cannot serve it below %q (set the prefix option)", prefix))
	}
	if path == monitorPath {
		// asynqmon's pages live below the slash; the redirect keeps the prefix.
		http.Redirect(w, r, prefix+monitorPath+"/", http.StatusMovedPermanently)
		return nil
	}
	mon, err := h.monitors.get(prefix + monitorPath)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	// asynqmon routes on the full external path (its RootPath included).
	mon.ServeHTTP(w, withPath(r, prefix+path))
	return nil
}

// strippedPrefix returns the part of the original request's path that Caddy
// stripped before this handler (e.g. "/_authtap" under handle_path
// /_authtap/*), or "" when nothing was stripped or the path was rewritten
// otherwise.
func strippedPrefix(r *http.Request) string {
	orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request)
	if !ok || orig.URL == nil {
		return ""
	}
	prefix, ok := strings.CutSuffix(orig.URL.Path, r.URL.Path)
	if !ok || !strings.HasPrefix(prefix, "/") {
		return ""
	}
	return strings.TrimRight(prefix, "/")
}

// safeRootPath reports whether prefix is fit to be asynqmon's root path: it
// goes into gorilla/mux route templates (where braces are variables) and into
// the UI's HTML, so only unreserved URL characters and slashes are accepted.
func safeRootPath(prefix string) bool {
	for _, c := range []byte(prefix) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '/' || c == '-' || c == '.' || c == '_' || c == '~':
		default:
			return false
		}
	}
	return !strings.Contains(prefix, "//") && !strings.Contains(prefix, "/../") && !strings.HasSuffix(prefix, "/..")
}

// hasPathPrefix reports whether path is prefix or below it.
func hasPathPrefix(path, prefix string) bool {
	rest, ok := strings.CutPrefix(path, prefix)
	return ok && (rest == "" || rest[0] == '/')
}

// withPath returns a shallow copy of r with the URL path set to path.
func withPath(r *http.Request, path string) *http.Request {
	r2 := new(http.Request)
	*r2 = *r
	u := *r.URL
	u.Path, u.RawPath = path, ""
	r2.URL = &u
	return r2
}

// monitorCache keeps one asynqmon instance per external root path, the least
// recently used first, at most maxMonitors of them.
type monitorCache struct {
	opt      asynq.RedisConnOpt
	readOnly bool

	mu     sync.Mutex
	closed bool
	byRoot map[string]*asynqmon.HTTPHandler
	order  []string // least recently used first
}

func newMonitorCache(opt asynq.RedisConnOpt, readOnly bool) *monitorCache {
	return &monitorCache{opt: opt, readOnly: readOnly, byRoot: map[string]*asynqmon.HTTPHandler{}}
}

// get returns the asynqmon instance for root, making it on first use.
func (c *monitorCache) get(root string) (*asynqmon.HTTPHandler, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("serving asynqmon: handler is cleaned up")
	}
	if m := c.byRoot[root]; m != nil {
		if i := slices.Index(c.order, root); i >= 0 {
			c.order = append(slices.Delete(c.order, i, i+1), root)
		}
		return m, nil
	}
	if len(c.order) >= maxMonitors {
		oldest := c.order[0]
		old := c.byRoot[oldest]
		c.order = c.order[1:]
		delete(c.byRoot, oldest)
		time.AfterFunc(monitorCloseDelay, func() { _ = old.Close() })
	}
	m := asynqmon.New(asynqmon.Options{RootPath: root, RedisConnOpt: c.opt, ReadOnly: c.readOnly})
	c.byRoot[root] = m
	c.order = append(c.order, root)
	return m, nil
}

// close closes every instance.
func (c *monitorCache) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	var errs []error
	for root, m := range c.byRoot {
		if err := m.Close(); err != nil {
			errs = append(errs, fmt.Errorf("closing asynqmon at %s: %w", root, err))
		}
	}
	c.byRoot, c.order = nil, nil
	return errors.Join(errs...)
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Admin)(nil)
	_ caddy.Validator             = (*Admin)(nil)
	_ caddy.CleanerUpper          = (*Admin)(nil)
	_ caddyhttp.MiddlewareHandler = (*Admin)(nil)
)
