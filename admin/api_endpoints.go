package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

// endpointWithSecret is the answer to a create or rotate request: the one
// place the secret is shown.
type endpointWithSecret struct {
	worker.Endpoint
	// Secret is the current signing secret, shown only in this response.
	Secret string `json:"secret"`
}

// apiPatch is the body of PATCH /webhooks/{id}: the fields of an
// EndpointPatch plus "enabled", which turns the endpoint on or off.
type apiPatch struct {
	worker.EndpointPatch
	Enabled *bool `json:"enabled,omitempty"`
}

func (p apiPatch) changesConfig() bool {
	q := p.EndpointPatch
	return q.URL != nil || q.Description != nil || q.Events != nil || q.Mode != nil || q.Tenant != nil || q.BearerToken != nil ||
		q.EventHeader != nil || q.Format != nil || q.RateLimit != nil || q.MaxConcurrency != nil
}

// listEndpoints answers GET /webhooks; ?tenant=ID lists only the endpoints of
// that tenant (an empty or invalid id is refused rather than read as "all").
// Through the portal it lists the token's tenant's endpoints only.
func (a *api) listEndpoints(w http.ResponseWriter, r *http.Request) *apiError {
	tenant, byTenant, e := tenantParam(r)
	if e != nil {
		return e
	}
	eps, err := a.store.List(r.Context())
	if err != nil {
		return internal(err)
	}
	if byTenant {
		eps = slices.DeleteFunc(eps, func(ep worker.Endpoint) bool { return ep.Tenant != tenant })
		if eps == nil {
			eps = []worker.Endpoint{}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"webhooks": eps})
	return nil
}

// tenantParam reads ?tenant: an operator may name any valid tenant id (an
// empty or invalid one is refused rather than read as "all"); a portal
// request is always about its token's tenant and may name no other.
func tenantParam(r *http.Request) (tenant string, byTenant bool, e *apiError) {
	q := r.URL.Query()
	tenant, byTenant = q.Get("tenant"), q.Has("tenant")
	if sc := scopeOf(r); sc != nil {
		if byTenant && tenant != sc.tenant {
			return "", false, forbidden("tenant", "a portal link shows only its own tenant's data")
		}
		return sc.tenant, true, nil
	}
	if byTenant {
		if err := rules.ValidTenant(tenant); err != nil {
			return "", false, &apiError{Status: http.StatusBadRequest, Code: CodeInvalidParameter, Field: "tenant",
				Message: fmt.Sprintf("tenant: %v", err)}
		}
	}
	return tenant, byTenant, nil
}

// endpoint returns endpoint id as the request may see it: any endpoint for
// the operator; for a portal request only an endpoint of its token's tenant,
// any other answering "does not exist", so that a portal user cannot tell
// another tenant's or the operator's endpoints from ids that are not there.
func (a *api) endpoint(r *http.Request, id string) (worker.Endpoint, *apiError) {
	ep, err := a.store.Get(r.Context(), id)
	if err != nil {
		return worker.Endpoint{}, storeError(err, id)
	}
	if sc := scopeOf(r); sc != nil && ep.Tenant != sc.tenant {
		return worker.Endpoint{}, storeError(worker.ErrNotFound, id)
	}
	return ep, nil
}

func (a *api) createEndpoint(w http.ResponseWriter, r *http.Request) *apiError {
	var c worker.EndpointConfig
	if e := readJSON(w, r, &c, false, "an endpoint (EndpointConfig)"); e != nil {
		return e
	}
	sc := scopeOf(r)
	if sc != nil {
		if e := a.portalCreate(r, sc, &c); e != nil {
			return e
		}
	}
	if e := checkEndpointConfig(c); e != nil {
		return e
	}
	if e := a.checkAddress(c.URL, c.Mode); e != nil {
		return e
	}
	ep, err := a.store.Create(r.Context(), c)
	if err != nil {
		return storeError(err, c.ID)
	}
	a.log.Info("endpoint created", append(sc.logFields(), zap.String("endpoint_id", ep.ID), zap.String("mode", ep.Mode))...)
	w.Header().Set("Location", "webhooks/"+ep.ID)
	writeJSON(w, http.StatusCreated, endpointWithSecret{Endpoint: ep, Secret: ep.Secret()})
	return nil
}

func (a *api) getEndpoint(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	ep, e := a.endpoint(r, id)
	if e != nil {
		return e
	}
	writeJSON(w, http.StatusOK, ep)
	return nil
}

func (a *api) updateEndpoint(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	var p apiPatch
	if e := readJSON(w, r, &p, false, "a patch (EndpointPatch)"); e != nil {
		return e
	}
	ctx := r.Context()
	cur, e := a.endpoint(r, id)
	if e != nil {
		return e
	}
	sc := scopeOf(r)
	if sc != nil {
		if e := sc.checkPatch(p.EndpointPatch); e != nil {
			return e
		}
	}
	if p.changesConfig() {
		if cur.ReadOnly {
			return readOnlyError(id)
		}
		if e := checkPatch(p.EndpointPatch, cur); e != nil {
			return e
		}
		u, mode := cur.URL, cur.Mode
		if p.URL != nil {
			u = *p.URL
		}
		if p.Mode != nil {
			mode = *p.Mode
		}
		if e := a.checkAddress(u, mode); e != nil {
			return e
		}
		if _, err := a.store.Update(ctx, id, p.EndpointPatch); err != nil {
			return storeError(err, id)
		}
	}
	if p.Enabled != nil && *p.Enabled != cur.Enabled {
		reason := ""
		if !*p.Enabled {
			reason = "disabled through the management API"
		}
		if _, err := a.store.SetEnabled(ctx, id, *p.Enabled, reason); err != nil {
			return storeError(err, id)
		}
	}
	ep, err := a.store.Get(ctx, id)
	if err != nil {
		return storeError(err, id)
	}
	a.log.Info("endpoint updated", append(sc.logFields(), zap.String("endpoint_id", id))...)
	writeJSON(w, http.StatusOK, ep)
	return nil
}

func (a *api) deleteEndpoint(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	if _, e := a.endpoint(r, id); e != nil {
		return e
	}
	if err := a.store.Delete(r.Context(), id); err != nil {
		return storeError(err, id)
	}
	a.log.Info("endpoint deleted", append(scopeOf(r).logFields(), zap.String("endpoint_id", id))...)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// rotateRequest is the optional body of POST /webhooks/{id}/rotate-secret.
type rotateRequest struct {
	// KeepOldFor is how long the old secret keeps signing next to the new one,
	// a Go duration such as "24h" (the default) or "0s" to drop it at once.
	KeepOldFor *string `json:"keep_old_for,omitempty"`
}

func (a *api) rotateSecret(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	var req rotateRequest
	if e := readJSON(w, r, &req, true, "a rotation request"); e != nil {
		return e
	}
	keep := time.Duration(0)
	if req.KeepOldFor != nil {
		d, err := time.ParseDuration(*req.KeepOldFor)
		if err != nil || d < 0 {
			return fieldError("keep_old_for", "want a non-negative duration such as \"24h\" or \"0s\", got %q", *req.KeepOldFor)
		}
		if d == 0 {
			keep = -1 // drop the old secret at once
		} else {
			keep = d
		}
	}
	ctx := r.Context()
	if _, e := a.endpoint(r, id); e != nil {
		return e
	}
	secret, err := a.store.RotateSecret(ctx, id, keep)
	if err != nil {
		return storeError(err, id)
	}
	ep, err := a.store.Get(ctx, id)
	if err != nil {
		return storeError(err, id)
	}
	a.log.Info("endpoint secret rotated", append(scopeOf(r).logFields(), zap.String("endpoint_id", id))...)
	writeJSON(w, http.StatusOK, endpointWithSecret{Endpoint: ep, Secret: secret})
	return nil
}

// testResponse is the answer to POST /webhooks/{id}/test.
type testResponse struct {
	EventID    string      `json:"event_id"`
	DeliveryID string      `json:"delivery_id"`
	Event      rules.Event `json:"event"`
}

func (a *api) testEndpoint(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	ctx := r.Context()
	ep, e := a.endpoint(r, id)
	if e != nil {
		return e
	}
	if !ep.Enabled {
		return errorf(http.StatusConflict, CodeDisabled,
			"endpoint %q is disabled (%s); enable it (PATCH {\"enabled\": true}) before sending a test event", id, ep.DisabledReason)
	}
	now := a.now().UTC().Truncate(time.Millisecond)
	data, err := json.Marshal(map[string]string{
		"message":     "This is a test event sent by authtap to check that the endpoint receives and verifies webhooks.",
		"endpoint_id": ep.ID,
	})
	if err != nil {
		return internal(err)
	}
	ev := rules.Event{
		// A tenant endpoint's test event is its tenant's, as what it will receive is.
		ID: rules.NewEventID(now), Type: EventTest, Timestamp: now, Subject: ep.ID, Tenant: ep.Tenant, Data: data,
		Source: rules.Source{Name: worker.SourceName, Rule: EventTest}, Mode: ep.Mode,
	}
	envelope, err := ev.Envelope()
	if err != nil {
		return internal(err)
	}
	if err := a.store.RecordEvent(ctx, ev, envelope, []string{ep.ID}); err != nil {
		return internal(err)
	}
	deliveryID, err := a.enqueueDelivery(ctx, ev, ep, false, "")
	if err != nil {
		return internal(fmt.Errorf("test event: %w", err))
	}
	a.log.Info("test event queued", append(scopeOf(r).logFields(), zap.String("endpoint_id", ep.ID), zap.String("event_id", ev.ID))...)
	writeJSON(w, http.StatusAccepted, testResponse{EventID: ev.ID, DeliveryID: deliveryID, Event: ev})
	return nil
}
