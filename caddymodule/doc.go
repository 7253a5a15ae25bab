// Package caddymodule is authtap's Caddy glue: the app "authtap" (shared
// Redis client or embedded Redis, on-disk spool, in-process worker), the HTTP
// handler "authtap" that observes exchanges and queues events, and the HTTP
// handler "authtap_admin" that serves the management API (package admin) and
// asynqmon, and the HTTP handler "authtap_portal" that serves the tenant
// portal to customers with portal links. It imports rules, worker and admin,
// and nothing imports it but the commands in cmd/.
//
// Build Caddy with it (xcaddy build --with github.com/authtap/authtap, or
// go build ./cmd/caddy) and configure it in a Caddyfile:
//
//	{
//		authtap {
//			redis redis://127.0.0.1:6379/0   # omitted: embedded in-memory Redis, for trying it out
//		}
//	}
//	auth.example.com {
//		authtap {
//			rules /etc/authtap/*.yaml
//			source legacy-auth
//		}
//		reverse_proxy 127.0.0.1:9000
//		handle_path /portal/* {
//			authtap_portal                   # portal links only: safe to expose to customers
//		}
//		handle_path /_authtap/* {
//			basic_auth { admin {env.AUTHTAP_ADMIN_HASH} }
//			authtap_admin
//		}
//	}
//
// The equivalent JSON config uses the app "authtap" under "apps" and the
// handlers {"handler": "authtap", "rules": [...]} and {"handler": "authtap_admin"}.
package caddymodule
