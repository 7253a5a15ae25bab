// Command caddy builds Caddy with the standard modules plus the authtap
// modules (app "authtap", handlers "http.handlers.authtap",
// "http.handlers.authtap_admin" and "http.handlers.authtap_portal"). It is
// the tested equivalent of
//
//	xcaddy build --with github.com/authtap/authtap
//
// See xcaddy.md.
package main
