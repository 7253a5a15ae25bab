// Package admin is authtap's management surface over HTTP: the management
// API (endpoints, deliveries, retries, replays, events, the event catalog;
// documented in openapi.json and served at /openapi.json) and its operator
// authentication helpers (RequireBearer, BrowserGuard).
//
// It works on what package worker keeps (the endpoint store, the delivery log,
// the kept events) and enqueues deliveries through asynq the way the worker's
// fan-out does; it imports worker and rules and nothing of Caddy. Caddy's
// authtap_admin handler (package caddymodule) and
// `authtap worker --admin` (cmd/authtap) serve it.
//
//	w, err := worker.New(worker.Config{Redis: opt})
//	api, err := admin.NewAPI(admin.APIConfig{Store: w.Store(), Client: w.Client()})
//	authed, err := admin.RequireBearer(token, api)
//	http.Handle("/", admin.NewBrowserGuard().Handler(authed))
//
// Files: api.go (APIConfig, NewAPI and the route table — add a route there),
// api_endpoints.go, api_deliveries.go, api_errors.go (error codes, JSON in and
// out, field validation), api_auth.go (RequireBearer), api_protect.go
// (BrowserGuard), openapi.json.
package admin
