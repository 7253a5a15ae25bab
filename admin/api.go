package admin

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

// API defaults and bounds.
const (
	// DefaultListLimit is how many deliveries or events a listing returns when it sets no limit.
	DefaultListLimit = 50
	// MaxListLimit bounds the limit of a listing.
	MaxListLimit = 500
	// MaxReplayWindow bounds the window of a replay request (the delivery log keeps 14 days).
	MaxReplayWindow = 14 * 24 * time.Hour
	// EventTest is the type of the event POST /webhooks/{id}/test sends.
	EventTest = "webhook.test"
)

//go:embed openapi.json
var openAPIDoc []byte

// APIConfig configures the management API.
type APIConfig struct {
	// Store holds the endpoints, the delivery log and the kept events. Required.
	Store *worker.Store
	// Client enqueues test deliveries, retries and replays. Default: a client
	// on the Store's Redis connection.
	Client *asynq.Client
	// Inspector finds and re-runs archived or waiting deliveries. Default: an
	// inspector on the Store's Redis connection.
	Inspector *asynq.Inspector
	// EventTypes lists the event types the loaded rules can emit, with their
	// descriptions and examples (rules.Set.EventTypes, which builds them once
	// per rule set), for GET /event-types; it is called on every request, so
	// it must not rebuild the catalog. Default nil: an empty list.
	EventTypes func() []rules.EventType
	// Retry is the workers' retry policy; deliveries enqueued through the API
	// get its MaxRetry. The zero value is the Standard Webhooks schedule.
	Retry worker.RetryPolicy
	// DedupeRetention is how long a completed delivery enqueued through the API
	// stays in Redis (and retryable by its id). Default 24h.
	DedupeRetention time.Duration
	// Logger receives errors (never secrets or request bodies). Default: no logs.
	Logger *zap.Logger
	// Monitor, when set, serves every path under /monitor/ (e.g. the asynqmon
	// UI). It receives the path as the API sees it, so asynqmon's RootPath must
	// be "/monitor" when nothing strips a prefix in front of the API; behind a
	// prefix-stripping mount, put the prefix back before asynqmon (its links
	// use RootPath). Default nil: no UI.
	Monitor http.Handler
	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// PortalURL is the absolute URL of the tenant portal page (where the
	// portal handler is mounted, e.g. "https://auth.example.com/portal/"); a
	// portal link is this URL with the token in its fragment. Default: the
	// origin the POST /portal-links request was sent to, plus "/portal/"
	// (where `authtap worker --admin` serves the portal).
	PortalURL string
	// CheckEndpointURL, when set, is asked about the URL and mode of every
	// endpoint created or changed (a PATCH of the mode alone included), and
	// a non-nil answer refuses it: the delivering worker's
	// Worker.CheckEndpointURL, which names a literal IP address its address
	// guard for that mode would never dial. Default nil: such endpoints are
	// accepted, and their deliveries fail permanently at dial time in
	// whichever worker delivers.
	CheckEndpointURL func(raw, mode string) error
}

// enqueuer is the part of *asynq.Client the API uses.
type enqueuer interface {
	EnqueueContext(ctx context.Context, task *asynq.Task, opts ...asynq.Option) (*asynq.TaskInfo, error)
}

// api serves the management API.
type api struct {
	store      *worker.Store
	client     enqueuer
	inspector  *asynq.Inspector
	eventTypes func() []rules.EventType
	maxRetry   int
	dedupe     time.Duration
	log        *zap.Logger
	now        func() time.Time
	checkURL   func(raw, mode string) error // APIConfig.CheckEndpointURL; nil: none
	links      *portalLinks
	portalURL  string
	mux        *http.ServeMux
}

// route is one operation of the management API. The table below registers
// the routes and is what the test compares with openapi.json (the coverage
// routes, /unmatched, are added by api_unmatched.go).
type route struct {
	method, path string
	handle       func(a *api, w http.ResponseWriter, r *http.Request) *apiError
}

var routes = []route{
	{"GET", "/webhooks", (*api).listEndpoints},
	{"POST", "/webhooks", (*api).createEndpoint},
	{"GET", "/webhooks/{id}", (*api).getEndpoint},
	{"PATCH", "/webhooks/{id}", (*api).updateEndpoint},
	{"DELETE", "/webhooks/{id}", (*api).deleteEndpoint},
	{"POST", "/webhooks/{id}/rotate-secret", (*api).rotateSecret},
	{"POST", "/webhooks/{id}/test", (*api).testEndpoint},
	{"GET", "/webhooks/{id}/deliveries", (*api).listDeliveries},
	{"POST", "/webhooks/{id}/replay", (*api).replay},
	{"POST", "/deliveries/{id}/retry", (*api).retryDelivery},
	{"GET", "/events", (*api).listEvents},
	{"GET", "/events/{id}", (*api).getEvent},
	{"GET", "/event-types", (*api).listEventTypes},
	{"POST", "/portal-links", (*api).issuePortalLink},
	{"GET", "/portal-links", (*api).listPortalLinks},
	{"DELETE", "/portal-links", (*api).revokeTenantPortalLinks},
	{"DELETE", "/portal-links/{id}", (*api).revokePortalLink},
	{"POST", "/portal-keys/rotate", (*api).rotatePortalKey},
	{"GET", "/openapi.json", (*api).openAPI},
	{"GET", "/healthz", (*api).healthz},
}

// NewAPI returns the management API as an http.Handler whose paths are
// relative to where it is mounted (strip the prefix first, e.g. with
// http.StripPrefix or Caddy's handle_path). It does not authenticate: wrap it
// in RequireBearer, or put it behind the web server's own authentication.
func NewAPI(c APIConfig) (http.Handler, error) {
	a, err := newAPI(c)
	if err != nil {
		return nil, err
	}
	for _, rt := range routes {
		a.mux.Handle(rt.method+" "+rt.path, a.wrap(rt.handle))
	}
	if c.Monitor != nil {
		a.mux.Handle("/monitor/", c.Monitor)
	}
	return a, nil
}

// newAPI returns the API's state with an empty mux.
func newAPI(c APIConfig) (*api, error) {
	if c.Store == nil {
		return nil, errors.New("configuring management API: no store")
	}
	if c.PortalURL != "" {
		if err := checkPortalURL(c.PortalURL); err != nil {
			return nil, fmt.Errorf("configuring management API: %w", err)
		}
	}
	a := &api{
		store: c.Store, inspector: c.Inspector, eventTypes: c.EventTypes, maxRetry: c.Retry.MaxRetry(),
		dedupe: c.DedupeRetention, log: c.Logger, now: c.Now, checkURL: c.CheckEndpointURL, mux: http.NewServeMux(),
		portalURL: c.PortalURL,
	}
	if c.Client != nil {
		a.client = c.Client
	} else {
		a.client = asynq.NewClientFromRedisClient(c.Store.Redis())
	}
	if a.inspector == nil {
		a.inspector = asynq.NewInspectorFromRedisClient(c.Store.Redis())
	}
	if a.dedupe <= 0 {
		a.dedupe = worker.DefaultDedupeRetention
	}
	if a.log == nil {
		a.log = zap.NewNop()
	}
	a.log = a.log.Named("api")
	if a.now == nil {
		a.now = time.Now
	}
	a.links = newPortalLinks(c.Store.Redis(), a.now)
	return a, nil
}

func (a *api) wrap(h func(a *api, w http.ResponseWriter, r *http.Request) *apiError) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if e := h(a, w, r); e != nil {
			a.writeError(w, r, e)
		}
	})
}

// ServeHTTP serves the API; it answers unknown paths and wrong methods with
// JSON errors too.
func (a *api) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.serve(a.mux, w, r)
}

// serve routes r through mux, answering its 404 and 405 in JSON.
func (a *api) serve(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	h, pattern := mux.Handler(r)
	if pattern != "" {
		mux.ServeHTTP(w, r) // sets the path values
		return
	}
	// The mux's own 404, 405 or redirect: let it decide, then say it in JSON.
	rec := &headerRecorder{header: http.Header{}}
	h.ServeHTTP(rec, r)
	switch rec.status {
	case http.StatusMethodNotAllowed:
		allow := rec.header.Get("Allow")
		w.Header().Set("Allow", allow)
		a.writeError(w, r, errorf(http.StatusMethodNotAllowed, CodeMethodNotAllowed,
			"%s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, allow))
	case http.StatusNotFound:
		a.writeError(w, r, errorf(http.StatusNotFound, CodeNotFound, "no such API path: %s", r.URL.Path))
	default:
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.status)
		_, _ = w.Write(rec.body.Bytes())
	}
}

// headerRecorder captures what the mux's fallback handlers write.
type headerRecorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (h *headerRecorder) Header() http.Header { return h.header }
func (h *headerRecorder) Write(b []byte) (int, error) {
	if h.status == 0 {
		h.status = http.StatusOK
	}
	return h.body.Write(b)
}
func (h *headerRecorder) WriteHeader(s int) {
	if h.status == 0 {
		h.status = s
	}
}

// limitParam reads ?limit: default DefaultListLimit, at most MaxListLimit.
func limitParam(r *http.Request) (int, *apiError) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return DefaultListLimit, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxListLimit {
		return 0, &apiError{Status: http.StatusBadRequest, Code: CodeInvalidParameter, Field: "limit",
			Message: fmt.Sprintf("limit: want an integer from 1 to %d, got %q", MaxListLimit, v)}
	}
	return n, nil
}

// timeParam reads an RFC 3339 query parameter; the zero time when absent.
func timeParam(r *http.Request, name string) (time.Time, *apiError) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, &apiError{Status: http.StatusBadRequest, Code: CodeInvalidParameter, Field: name,
			Message: fmt.Sprintf("%s: want an RFC 3339 time such as 2026-11-23T10:00:00Z, got %q", name, v)}
	}
	return t, nil
}

func (a *api) openAPI(w http.ResponseWriter, _ *http.Request) *apiError {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(openAPIDoc)
	return nil
}

func (a *api) healthz(w http.ResponseWriter, r *http.Request) *apiError {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := a.store.Redis().Ping(ctx).Err(); err != nil {
		e := errorf(http.StatusServiceUnavailable, CodeUnavailable, "redis does not answer")
		e.cause = err
		return e
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	return nil
}

func (a *api) listEventTypes(w http.ResponseWriter, _ *http.Request) *apiError {
	var types []rules.EventType
	if a.eventTypes != nil {
		types = a.eventTypes()
	}
	if types == nil {
		types = []rules.EventType{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"event_types": types})
	return nil
}

var _ http.Handler = (*api)(nil)
