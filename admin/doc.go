// Package admin is authtap's management surface over HTTP: the management
// API (endpoints, deliveries, retries, replays, events, the event catalog;
// documented in openapi.json and served at /openapi.json), its operator
// authentication helpers (RequireBearer, BrowserGuard), and the tenant portal:
// short-lived signed portal links for one tenant (issued, listed and revoked
// through the management API) and the portal page with its embedded assets,
// whose API is the management API's endpoint, delivery and catalog routes
// limited to the link's tenant (NewPortal). It also keeps coverage
// (Coverage): the route shapes of the successful mutations no rule matched,
// their counts and redacted samples, which Caddy's authtap handler writes and
// GET /unmatched and `authtap rules suggest` read.
//
// It works on what package worker keeps (the endpoint store, the delivery log,
// the kept events) and enqueues deliveries through asynq the way the worker's
// fan-out does; it imports worker and rules and nothing of Caddy. Caddy's
// authtap_admin and authtap_portal handlers (package caddymodule) and
// `authtap worker --admin` (cmd/authtap) serve it.
//
//	w, err := worker.New(worker.Config{Redis: opt})
//	api, err := admin.NewAPI(admin.APIConfig{Store: w.Store(), Client: w.Client()})
//	authed, err := admin.RequireBearer(token, api)
//	http.Handle("/", admin.NewBrowserGuard().Handler(authed))
//	portal, err := admin.NewPortal(admin.PortalConfig{APIConfig: admin.APIConfig{Store: w.Store(), Client: w.Client()}})
//	http.Handle("/portal/", http.StripPrefix("/portal", portal)) // portal tokens only
//
// Files: api.go (APIConfig, NewAPI and the route table — add a route there),
// api_endpoints.go, api_deliveries.go, api_errors.go (error codes, JSON in and
// out, field validation), api_auth.go (RequireBearer), api_protect.go
// (BrowserGuard), openapi.json; api_portal_links.go (the operator's
// /portal-links and /portal-keys routes), portal_links.go (tokens, keys and
// revocation in Redis), portal.go (NewPortal: the page, its assets in portal/
// and the tenant-scoped API); coverage.go (the coverage store in Redis: keys
// under the hash tag {authtap-unmatched}, every one bounded and expiring) and
// api_unmatched.go (its /unmatched routes).
package admin
