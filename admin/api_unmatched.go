package admin

import (
	"errors"
	"net/http"

	"go.uber.org/zap"
)

// The coverage routes of the management API: the successful mutations that
// no rule matched (Coverage). They are operator routes like every route of
// the API: they show request paths and (redacted) bodies of every tenant, so
// no tenant-scoped or portal credential may reach them.
var unmatchedRoutes = []route{
	{"GET", "/unmatched", (*api).listUnmatched},
	{"DELETE", "/unmatched", (*api).clearUnmatched},
	{"GET", "/unmatched/{id}", (*api).getUnmatched},
	{"DELETE", "/unmatched/{id}", (*api).deleteUnmatched},
}

func init() { routes = append(routes, unmatchedRoutes...) }

// coverage returns the coverage store on the API's Redis.
func (a *api) coverage() *Coverage {
	return NewCoverage(a.store.Redis(), CoverageOptions{Now: a.now})
}

// listUnmatched answers GET /unmatched?limit=N: the route shapes, the most
// often seen first, with their samples.
func (a *api) listUnmatched(w http.ResponseWriter, r *http.Request) *apiError {
	limit, e := limitParam(r)
	if e != nil {
		return e
	}
	shapes, err := a.coverage().List(r.Context(), limit)
	if err != nil {
		return redisUnavailable(err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"unmatched": shapes, "max_shapes": MaxUnmatchedShapes})
	return nil
}

func (a *api) getUnmatched(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	sh, err := a.coverage().Get(r.Context(), id)
	switch {
	case errors.Is(err, ErrUnmatchedNotFound):
		return errorf(http.StatusNotFound, CodeNotFound, "unmatched route shape %q is not (or no longer) kept", id)
	case err != nil:
		return redisUnavailable(err)
	}
	writeJSON(w, http.StatusOK, sh)
	return nil
}

// clearUnmatched answers DELETE /unmatched: every shape is forgotten (after
// rules were written for them, say); shapes seen again start over.
func (a *api) clearUnmatched(w http.ResponseWriter, r *http.Request) *apiError {
	n, err := a.coverage().Clear(r.Context())
	if err != nil {
		return redisUnavailable(err)
	}
	a.log.Info("unmatched route shapes cleared", zap.Int("shapes", n))
	writeJSON(w, http.StatusOK, map[string]int{"deleted": n})
	return nil
}

func (a *api) deleteUnmatched(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	ok, err := a.coverage().Delete(r.Context(), id)
	if err != nil {
		return redisUnavailable(err)
	}
	if !ok {
		return errorf(http.StatusNotFound, CodeNotFound, "unmatched route shape %q is not (or no longer) kept", id)
	}
	a.log.Info("unmatched route shape deleted", zap.String("id", id))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// redisUnavailable answers a failed coverage read or write: everything
// coverage keeps is in Redis, so the failure is Redis's (logged with its cause).
func redisUnavailable(err error) *apiError {
	e := errorf(http.StatusServiceUnavailable, CodeUnavailable, "redis does not answer; coverage is kept there")
	e.cause = err
	return e
}
