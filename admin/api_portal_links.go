package admin

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
)

// portalLinkRequest is the body of POST /portal-links.
type portalLinkRequest struct {
	// Tenant is whose endpoints, deliveries and catalog the link opens. Required.
	Tenant string `json:"tenant"`
	// TTL is how long the link works, a Go duration such as "1h" (the
	// default) or "30m"; from MinPortalLinkTTL to MaxPortalLinkTTL.
	TTL *string `json:"ttl,omitempty"`
	// ReadOnly links can look but change nothing. Default false.
	ReadOnly bool `json:"read_only,omitempty"`
}

// portalLinkResponse is the answer to POST /portal-links: the one place the
// token is shown.
type portalLinkResponse struct {
	PortalLink
	// URL is the portal page with the token in its fragment: give it to the
	// tenant's admin, or load it in an iframe.
	URL string `json:"url"`
	// Token is the portal token, for a page of your own that calls the
	// portal API ("Authorization: Bearer <token>").
	Token string `json:"token"`
}

func (a *api) issuePortalLink(w http.ResponseWriter, r *http.Request) *apiError {
	var req portalLinkRequest
	if e := readJSON(w, r, &req, false, "a portal link request"); e != nil {
		return e
	}
	if err := rules.ValidTenant(req.Tenant); err != nil {
		return fieldError("tenant", "%v", err)
	}
	ttl := DefaultPortalLinkTTL
	if req.TTL != nil {
		d, err := time.ParseDuration(*req.TTL)
		if err != nil || d < MinPortalLinkTTL || d > MaxPortalLinkTTL {
			return fieldError("ttl", "want a duration from %s to %s (7 days) such as \"1h\", got %q", MinPortalLinkTTL, "168h", *req.TTL)
		}
		ttl = d
	}
	base, e := a.portalBase(r)
	if e != nil {
		return e
	}
	link, token, err := a.links.issue(r.Context(), req.Tenant, ttl, req.ReadOnly)
	if errors.Is(err, errTooManyLinks) {
		return errorf(http.StatusConflict, CodeLimitReached, "%v", err)
	}
	if err != nil {
		return internal(err)
	}
	a.log.Info("portal link issued", zap.String("portal_link", link.ID), zap.String("tenant", link.Tenant),
		zap.Bool("read_only", link.ReadOnly), zap.Time("expires_at", link.ExpiresAt))
	writeJSON(w, http.StatusCreated, portalLinkResponse{PortalLink: link, URL: base + "#token=" + token, Token: token})
	return nil
}

// portalBase is the portal page's URL: APIConfig.PortalURL, or the origin
// of r plus /portal/.
func (a *api) portalBase(r *http.Request) (string, *apiError) {
	if a.portalURL != "" {
		return a.portalURL, nil
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	base := scheme + "://" + r.Host + "/portal/"
	if checkPortalURL(base) != nil {
		return "", errorf(http.StatusConflict, CodeConflict,
			"cannot tell the portal's URL from this request's Host; configure the portal URL (portal_url, --portal-url)")
	}
	return base, nil
}

// checkPortalURL checks a configured portal URL: absolute http(s), no
// fragment (the token goes there), no user information.
func checkPortalURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil ||
		u.Fragment != "" || strings.HasSuffix(raw, "#") {
		return fmt.Errorf("portal URL %q: want an absolute http or https URL without a fragment, such as https://auth.example.com/portal/", raw)
	}
	return nil
}

func (a *api) listPortalLinks(w http.ResponseWriter, r *http.Request) *apiError {
	limit, e := limitParam(r)
	if e != nil {
		return e
	}
	tenant, _, e := tenantParam(r)
	if e != nil {
		return e
	}
	links, err := a.links.list(r.Context(), tenant, limit)
	if err != nil {
		return internal(err)
	}
	writeJSON(w, http.StatusOK, map[string]any{"portal_links": links})
	return nil
}

func (a *api) revokePortalLink(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	ok, err := a.links.revoke(r.Context(), id)
	if err != nil {
		return internal(err)
	}
	if !ok {
		return errorf(http.StatusNotFound, CodeNotFound, "portal link %q does not exist, has expired or was revoked", id)
	}
	a.log.Info("portal link revoked", zap.String("portal_link", id))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *api) revokeTenantPortalLinks(w http.ResponseWriter, r *http.Request) *apiError {
	tenant, byTenant, e := tenantParam(r)
	if e != nil {
		return e
	}
	if !byTenant {
		return &apiError{Status: http.StatusBadRequest, Code: CodeInvalidParameter, Field: "tenant",
			Message: "tenant: required; DELETE /portal-links?tenant=ID revokes every link of that tenant (DELETE /portal-links/{id} revokes one)"}
	}
	n, err := a.links.revokeTenant(r.Context(), tenant)
	if err != nil {
		return internal(err)
	}
	a.log.Info("portal links of a tenant revoked", zap.String("tenant", tenant), zap.Int("revoked", n))
	writeJSON(w, http.StatusOK, map[string]any{"tenant": tenant, "revoked": n})
	return nil
}

// rotateKeyRequest is the optional body of POST /portal-keys/rotate.
type rotateKeyRequest struct {
	// KeepOldFor is how long links signed with the old key keep working, a
	// Go duration up to 168h; default "0s": every link issued so far stops
	// working at once.
	KeepOldFor *string `json:"keep_old_for,omitempty"`
}

func (a *api) rotatePortalKey(w http.ResponseWriter, r *http.Request) *apiError {
	var req rotateKeyRequest
	if e := readJSON(w, r, &req, true, "a key rotation request"); e != nil {
		return e
	}
	keep := time.Duration(0)
	if req.KeepOldFor != nil {
		d, err := time.ParseDuration(*req.KeepOldFor)
		if err != nil || d < 0 || d > MaxPortalLinkTTL {
			return fieldError("keep_old_for", "want a duration from \"0s\" to \"168h\", got %q", *req.KeepOldFor)
		}
		keep = d
	}
	newID, oldID, err := a.links.rotate(r.Context(), keep)
	if err != nil {
		return internal(err)
	}
	a.log.Info("portal signing key rotated", zap.String("key_id", newID), zap.String("previous_key_id", oldID),
		zap.Duration("keep_old_for", keep))
	resp := map[string]any{"key_id": newID, "previous_key_id": oldID}
	if keep > 0 && oldID != "" {
		resp["previous_key_expires_at"] = a.now().Add(keep).UTC()
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}
