package admin

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestBrowserGuard(t *testing.T) {
	reached := 0
	h := NewBrowserGuard().Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached++
		w.WriteHeader(http.StatusNoContent)
	}))
	for i, tc := range []struct {
		method string
		header map[string]string
		ok     bool
	}{
		// A page on another site, with the browser's credentials.
		{"POST", map[string]string{"Origin": "https://evil.test", "Sec-Fetch-Site": "cross-site", "Authorization": "Basic YWRtaW46dA=="}, false},
		{"DELETE", map[string]string{"Sec-Fetch-Site": "cross-site"}, false},
		{"PATCH", map[string]string{"Sec-Fetch-Site": "same-site"}, false},
		{"POST", map[string]string{"Origin": "https://evil.test"}, false}, // no Sec-Fetch-Site: Origin against Host
		{"POST", map[string]string{"Origin": "null"}, false},
		// The operator's own page, and clients that are not browsers.
		{"POST", map[string]string{"Origin": "http://admin.test", "Sec-Fetch-Site": "same-origin"}, true},
		{"POST", map[string]string{"Origin": "http://admin.test"}, true},
		{"POST", map[string]string{"Sec-Fetch-Site": "none"}, true}, // typed into the address bar
		{"POST", map[string]string{"Authorization": "Bearer t"}, true},
		// Reading is always allowed.
		{"GET", map[string]string{"Origin": "https://evil.test", "Sec-Fetch-Site": "cross-site"}, true},
		{"HEAD", map[string]string{"Sec-Fetch-Site": "cross-site"}, true},
	} {
		before := reached
		req := httptest.NewRequest(tc.method, "http://admin.test/webhooks/ep_1/rotate-secret", nil)
		for k, v := range tc.header {
			req.Header.Set(k, v)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if got := reached > before; got != tc.ok {
			t.Errorf("%d %s %v: reached=%v, want %v (%d %s)", i, tc.method, tc.header, got, tc.ok, rec.Code, rec.Body)
		}
		if !tc.ok && (rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), `"code":"cross_origin"`)) {
			t.Errorf("%d %s %v: %d %s, want 403 cross_origin", i, tc.method, tc.header, rec.Code, rec.Body)
		}
		if rec.Header().Get("X-Frame-Options") != "DENY" || rec.Header().Get("Content-Security-Policy") != "frame-ancestors 'none'" {
			t.Errorf("%d: may be framed: %v", i, rec.Header())
		}
		if strings.Contains(rec.Body.String(), "YWRtaW46dA") {
			t.Errorf("%d: the refusal echoes the credentials: %s", i, rec.Body)
		}
	}

	// Check, as Caddy's authtap_admin uses it.
	req := httptest.NewRequest("POST", "http://admin.test/monitor/api/queues/q:pause", nil)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	rec := httptest.NewRecorder()
	if err := NewBrowserGuard().Check(rec, req); !errors.Is(err, ErrCrossOrigin) || !strings.Contains(err.Error(), "POST /monitor/api/queues/q:pause") {
		t.Errorf("Check = %v", err)
	}
	if rec.Header().Get("X-Frame-Options") != "DENY" {
		t.Error("Check does not set X-Frame-Options")
	}
}
