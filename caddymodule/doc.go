// Package caddymodule is authtap's Caddy glue: the app "authtap" (shared Redis
// client, spool, in-process worker), the HTTP handler "authtap" that observes
// exchanges and queues events, and the HTTP handler "authtap_admin" that serves
// the management API and asynqmon. It imports rules and worker, and nothing
// imports it but the commands in cmd/.
package caddymodule
