package caddymodule

import (
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// seenLog is a test-only HTTP handler, put first in a route, that records the
// X-Test-Request header of every request Caddy hands to its handlers. A test
// then tells a request that reached the handlers (authtap answers for it) from
// one Caddy's server dropped before any handler saw it.
// Configured as {"handler": "authtap_test_seen"}.
type seenLog struct{}

// seenRequests holds the X-Test-Request values seen (string → struct{}).
var seenRequests sync.Map

func init() { caddy.RegisterModule(seenLog{}) }

func (seenLog) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.authtap_test_seen",
		New: func() caddy.Module { return new(seenLog) },
	}
}

func (seenLog) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if id := r.Header.Get("X-Test-Request"); id != "" {
		seenRequests.Store(id, struct{}{})
	}
	return next.ServeHTTP(w, r)
}

// handlersSaw reports whether a request with X-Test-Request id reached the handlers.
func handlersSaw(id string) bool {
	_, ok := seenRequests.Load(id)
	return ok
}

var _ caddyhttp.MiddlewareHandler = seenLog{}
