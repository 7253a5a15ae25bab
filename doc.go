// Package authtap is the plugin's module root: importing it registers
// authtap's Caddy modules (the app "authtap" and the HTTP handlers
// "authtap", "authtap_admin" and "authtap_portal"), which live in package
// caddymodule. It exists so that
//
//	xcaddy build --with github.com/authtap/authtap
//
// works: xcaddy takes a Go module path and imports that module's root package.
// See xcaddy.md. The code is in caddymodule (Caddy glue), rules (rule files),
// worker (queue and delivery) and admin (management API and tenant portal);
// cmd/caddy is the same build without xcaddy.
//
// Example (what xcaddy writes into its generated main.go):
//
//	import (
//		caddycmd "github.com/caddyserver/caddy/v2/cmd"
//		_ "github.com/caddyserver/caddy/v2/modules/standard"
//		_ "github.com/authtap/authtap"
//	)
//
//	func main() { caddycmd.Main() }
package authtap
