package admin

import (
	"errors"
	"fmt"
	"net/http"
)

// CodeCrossOrigin is the error code of a state-changing request a browser
// sent from another site (see BrowserGuard).
const CodeCrossOrigin = "cross_origin"

// ErrCrossOrigin is wrapped by the error BrowserGuard.Check returns for a
// refused request.
var ErrCrossOrigin = errors.New("cross-origin request refused: the management API changes state only for requests from its own origin")

// BrowserGuard is the protection every listener that serves the management
// API (and asynqmon) to browsers puts in front of it: Caddy's authtap_admin
// handler and `authtap worker --admin` use the same one.
//
// Browsers attach Basic credentials (and cookies) to cross-site requests,
// so a page on another site could otherwise pause a queue, rotate a secret
// or replay a window with the operator's login. The guard therefore:
//
//   - refuses state-changing requests (anything but GET, HEAD and OPTIONS)
//     that a browser marks as coming from another origin: Sec-Fetch-Site
//     other than same-origin or none, or, from browsers that do not send
//     Sec-Fetch-Site, an Origin whose host is not the request's Host
//     (net/http's CrossOriginProtection);
//   - forbids framing on every response (X-Frame-Options: DENY and
//     Content-Security-Policy: frame-ancestors 'none'), so no site can
//     overlay asynqmon's buttons (clickjacking).
//
// Clients that are not browsers (curl, `authtap endpoints`, scripts with a
// bearer token) send neither Sec-Fetch-Site nor Origin and are not affected.
// The zero value is not usable; call NewBrowserGuard.
type BrowserGuard struct {
	csrf *http.CrossOriginProtection
}

// NewBrowserGuard returns the guard.
func NewBrowserGuard() *BrowserGuard {
	return &BrowserGuard{csrf: http.NewCrossOriginProtection()}
}

// Check sets the anti-framing headers on w and returns nil when r may be
// served, or an error wrapping ErrCrossOrigin when a browser sent it from
// another origin. The error names the method and path, never a header value
// or credential.
func (g *BrowserGuard) Check(w http.ResponseWriter, r *http.Request) error {
	h := w.Header()
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "frame-ancestors 'none'")
	if err := g.csrf.Check(r); err != nil {
		return fmt.Errorf("refusing %s %s: %w (%v)", r.Method, r.URL.Path, ErrCrossOrigin, err)
	}
	return nil
}

// Handler returns next behind the guard: a refused request gets a 403 JSON
// error with code "cross_origin" and never reaches next.
func (g *BrowserGuard) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := g.Check(w, r); err != nil {
			writeJSON(w, http.StatusForbidden, struct {
				Error *apiError `json:"error"`
			}{&apiError{Code: CodeCrossOrigin, Message: err.Error()}})
			return
		}
		next.ServeHTTP(w, r)
	})
}
