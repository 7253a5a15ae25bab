package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
)

// RequireBearer returns h behind a bearer token: a request must carry
// "Authorization: Bearer <token>" (or, for browsers, HTTP Basic auth with the
// token as password), compared in constant time, or it gets a 401 JSON error
// with WWW-Authenticate challenges. The token is never logged or echoed.
//
// An empty token is an error: an API without a token must not be served by
// accident.
func RequireBearer(token string, h http.Handler) (http.Handler, error) {
	if strings.TrimSpace(token) == "" {
		return nil, errors.New("empty admin token: refusing to serve the management API without authentication (set --admin-token or AUTHTAP_ADMIN_TOKEN)")
	}
	if h == nil {
		return nil, errors.New("RequireBearer: nil handler")
	}
	want := sha256.Sum256([]byte(token))
	matches := func(got string) bool {
		sum := sha256.Sum256([]byte(got))
		return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if ok && strings.EqualFold(scheme, "Bearer") && matches(strings.TrimSpace(got)) {
			h.ServeHTTP(w, r)
			return
		}
		// Browsers cannot send a bearer token but prompt for Basic auth: any
		// user name with the token as password opens asynqmon at /monitor/.
		if _, pass, basic := r.BasicAuth(); basic && matches(pass) {
			h.ServeHTTP(w, r)
			return
		}
		msg := "missing bearer token: send \"Authorization: Bearer <token>\" (browsers: Basic auth with the token as password)"
		if r.Header.Get("Authorization") != "" {
			msg = "invalid bearer token"
		}
		w.Header().Add("WWW-Authenticate", `Bearer realm="authtap"`)
		w.Header().Add("WWW-Authenticate", `Basic realm="authtap", charset="UTF-8"`)
		writeJSON(w, http.StatusUnauthorized, struct {
			Error *apiError `json:"error"`
		}{&apiError{Code: CodeUnauthorized, Message: msg}})
	}), nil
}
