package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestLookupPathDotSegmentsReachTheUpstreamEscaped sends x = ".." into
// /lk/{request.body.x}/end: the upstream must be asked for /lk/%2E%2E/end,
// never /end.
func TestLookupPathDotSegmentsReachTheUpstreamEscaped(t *testing.T) {
	got := make(chan string, 4)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.RequestURI
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"ok":true}`))
	}))
	defer upstream.Close()
	e := newTestHandler(t, `version: 1
rules:
  - name: dots
    match: {method: POST, path: /api/x}
    lookup: {get: "/lk/{request.body.x}/end", as: lk}
    emit: {type: x.done, data: "{lk.body}"}
`, func(h *Handler) { h.LookupUpstream = upstream.URL })
	for x, want := range map[string]string{"..": "/lk/%2E%2E/end", ".": "/lk/%2E/end", "../../admin": "/lk/..%2F..%2Fadmin/end"} {
		req := httptest.NewRequest(http.MethodPost, "/api/x", strings.NewReader(`{"x":"`+x+`"}`))
		req.Header.Set("Content-Type", "application/json")
		err := e.serve(httptest.NewRecorder(), req, func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(http.StatusOK)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if uri := <-got; uri != want {
			t.Errorf("x=%q: the upstream was asked for %q, want %q", x, uri, want)
		}
	}
}
