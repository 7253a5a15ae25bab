package worker

import (
	"errors"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
)

// RequireBearer returns h behind a bearer token: a request must carry
// "Authorization: Bearer <token>", compared in constant time, or it gets a
// 401 JSON error with a WWW-Authenticate challenge. The token is never logged
// or echoed.
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
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
			if subtle.ConstantTimeCompare(sum[:], want[:]) == 1 {
				h.ServeHTTP(w, r)
				return
			}
		}
		msg, challenge := "missing bearer token: send \"Authorization: Bearer <token>\"", `Bearer realm="authtap"`
		if ok || r.Header.Get("Authorization") != "" {
			msg, challenge = "invalid bearer token", `Bearer realm="authtap", error="invalid_token"`
		}
		w.Header().Set("WWW-Authenticate", challenge)
		writeJSON(w, http.StatusUnauthorized, struct {
			Error *apiError `json:"error"`
		}{&apiError{Code: CodeUnauthorized, Message: msg}})
	}), nil
}
