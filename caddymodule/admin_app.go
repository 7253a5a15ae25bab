package caddymodule

import (
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"

	"github.com/authtap/authtap/worker"
)

// errAppNotProvisioned is returned by the accessors below before the app's
// Provision has connected to Redis.
var errAppNotProvisioned = errors.New("authtap app is not provisioned (no Redis connection)")

// EndpointStore returns the endpoint store the management API works on: the
// in-process worker's own store when the worker is on (so that changes made
// through the API apply to it at once), otherwise a new store on the app's
// shared Redis connection that also lists the endpoints declared in the
// configuration (read-only). Changes made through a separate store reach the
// workers within their cache time (worker.DefaultCacheFor).
func (a *App) EndpointStore() (*worker.Store, error) {
	if w := a.InProcessWorker(); w != nil {
		return w.Store(), nil
	}
	rdb := a.RedisClient()
	if rdb == nil {
		return nil, errAppNotProvisioned
	}
	s, err := worker.NewStore(rdb, worker.StoreOptions{Endpoints: a.resolvedEndpoints(caddy.NewReplacer())})
	if err != nil {
		return nil, fmt.Errorf("opening endpoint store: %w", err)
	}
	return s, nil
}
