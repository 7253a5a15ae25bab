// Command caddy builds Caddy with the standard modules plus the authtap
// modules (app "authtap", handlers "http.handlers.authtap" and
// "http.handlers.authtap_admin"). It is the tested equivalent of
//
//	xcaddy build --with github.com/authtap/authtap
//
// See xcaddy.md.
package main
