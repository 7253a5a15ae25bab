package rules

import (
	"strings"
	"testing"
)

func TestRedactBody(t *testing.T) {
	const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1XzEifQ.c2lnbmF0dXJl"
	for _, tc := range []struct {
		body, ct, want string
		ok             bool
	}{
		{`{"email":"a@x.test","password":"hunter2","profile":{"api_key":"k1","name":"Ann"}}`, "application/json",
			`{"email":"a@x.test","password":"[REDACTED]","profile":{"api_key":"[REDACTED]","name":"Ann"}}`, true},
		{`{"note":"Bearer ` + jwt + `","list":[{"token":"t"}]}`, "",
			`{"note":"[REDACTED]","list":[{"token":"[REDACTED]"}]}`, true},
		{`email=a%40x.test&password=hunter2`, "application/x-www-form-urlencoded",
			`{"email":"a@x.test","password":"[REDACTED]"}`, true},
		{`<html>password=hunter2</html>`, "text/html", "", false},
		{``, "application/json", "", false},
		{`"plain"`, "application/json", `"plain"`, true},
	} {
		got, ok := RedactBody([]byte(tc.body), tc.ct)
		if ok != tc.ok || string(got) != tc.want {
			t.Errorf("RedactBody(%s) = %s, %v; want %s, %v", tc.body, got, ok, tc.want, tc.ok)
		}
	}
}

func TestRedactBodyDeepIsCut(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 10000) + `"x"` + strings.Repeat(`}`, 10000)
	got, ok := RedactBody([]byte(deep), "application/json")
	if !ok || !strings.Contains(string(got), Truncated) || strings.Count(string(got), "{") > MaxDataDepth+1 {
		t.Errorf("deep body: ok %v, %d bytes, %d levels", ok, len(got), strings.Count(string(got), "{"))
	}
}

func TestRedactHeaderValue(t *testing.T) {
	const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1XzEifQ.c2lnbmF0dXJl"
	for _, tc := range []struct{ name, value, want string }{
		{"Authorization", "Bearer abc", Redacted},
		{"authorization", "Basic YTpi", Redacted},
		{"Proxy-Authorization", "x", Redacted},
		{"Cookie", "session=s1; theme=dark", Redacted},
		{"Set-Cookie", "sid=abc; HttpOnly", Redacted},
		{"X-Api-Key", "k", Redacted},
		{"X-CSRF-Token", "k", Redacted},
		{"X-Forwarded-Access-Token", "k", Redacted},
		{"X-Note", "hello " + jwt, Redacted},
		{"Content-Type", "application/json", "application/json"},
		{"User-Agent", "curl/8", "curl/8"},
		{"Location", "/users/u_1", "/users/u_1"},
		{"Location", "https://app.test/cb?code=abc&state=s1#access_token=zzz&x=1", "https://app.test/cb?code=%5BREDACTED%5D&state=s1#access_token=%5BREDACTED%5D&x=1"},
	} {
		if got := RedactHeaderValue(tc.name, tc.value); got != tc.want {
			t.Errorf("RedactHeaderValue(%s, %q) = %q, want %q", tc.name, tc.value, got, tc.want)
		}
	}
}

func TestRedactQuery(t *testing.T) {
	for _, tc := range []struct{ raw, want string }{
		{"", ""},
		{"page=2&sort=name", "page=2&sort=name"},
		{"token=abc&page=2", "token=%5BREDACTED%5D&page=2"},
		{"access_token=abc&flag", "access_token=%5BREDACTED%5D&flag"},
		{"Pass%77ord=x", "Pass%77ord=%5BREDACTED%5D"},
		{"q=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1XzEifQ.c2lnbmF0dXJl", "q=%5BREDACTED%5D"},
		{"bad=%zz&code=1", "bad=%zz&code=%5BREDACTED%5D"},
	} {
		if got := RedactQuery(tc.raw); got != tc.want {
			t.Errorf("RedactQuery(%q) = %q, want %q", tc.raw, got, tc.want)
		}
	}
}

func TestRedactPath(t *testing.T) {
	const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1XzEifQ.c2lnbmF0dXJl"
	for _, tc := range []struct{ path, want string }{
		{"/users/u_1/password", "/users/u_1/password"},
		{"/reset-password/abcDEF123ghiJKL456", "/reset-password/[REDACTED]"},
		{"/reset-password/abcDEFghiJKL", "/reset-password/[REDACTED]"},
		{"/sessions/s_9x8y7z", "/sessions/[REDACTED]"},
		{"/api-keys/key_123/rotate", "/api-keys/[REDACTED]/rotate"},
		{"/password/reset", "/password/reset"},
		{"/confirm/" + jwt, "/confirm/[REDACTED]"},
		{"/tokens/", "/tokens/"},
		{"/", "/"},
	} {
		got := RedactPath(tc.path)
		if got != tc.want {
			t.Errorf("RedactPath(%q) = %q, want %q", tc.path, got, tc.want)
		}
		// the redacted path still has the shape of the original
		if RouteShape(got) != RouteShape(tc.path) && !strings.Contains(got, Redacted) {
			t.Errorf("RedactPath(%q) changed the shape: %q", tc.path, got)
		}
	}
}

func TestIsSecretName(t *testing.T) {
	for name, want := range map[string]bool{
		"Authorization": true, "Cookie": true, "Set-Cookie": true, "X-Api-Key": true, "password": true,
		"otp_code": true, "Content-Type": false, "email": false, "country_code": false,
	} {
		if got := IsSecretName(name); got != want {
			t.Errorf("IsSecretName(%q) = %v, want %v", name, got, want)
		}
	}
}
