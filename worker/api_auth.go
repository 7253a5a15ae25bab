package worker

import (
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
// RequireBearer panics when token is empty, as http.Handle panics on a nil
// handler: an API without a token must not be served by accident, so check
// the configured token (e.g. $AUTHTAP_ADMIN_TOKEN) before calling it.
func RequireBearer(token string, h http.Handler) http.Handler {
	if strings.TrimSpace(token) == "" {
		panic("worker.RequireBearer: empty token; refusing to serve the management API without authentication")
	}
	if h == nil {
		panic("worker.RequireBearer: nil handler")
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
	})
}
