package worker

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestMatchEventFilter(t *testing.T) {
	for i, tc := range []struct {
		pattern, typ string
		want         bool
	}{
		{"*", "user.created", true},
		{"*", "x", true},
		{"user.created", "user.created", true},
		{"user.created", "user.deleted", false},
		{"user.*", "user.created", true},
		{"user.*", "user.email.changed", true},
		{"user.*", "user", false},
		{"user.*", "users.created", false},
		{"user.*", "tenant.created", false},
		{"*.deleted", "user.deleted", true},
		{"*.deleted", "tenant.deleted", true},
		{"*.deleted", "org.member.deleted", false},
		{"org.*.deleted", "org.member.deleted", true},
		{"org.*.deleted", "org.member.added", false},
		{"organization.member_added", "organization.member_added", true},
	} {
		if got := MatchEventFilter(tc.pattern, tc.typ); got != tc.want {
			t.Errorf("%d: MatchEventFilter(%q, %q) = %v, want %v", i, tc.pattern, tc.typ, got, tc.want)
		}
	}
}

func testSecret(t testing.TB) string {
	t.Helper()
	s, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRecordFromConfigValidation(t *testing.T) {
	secret := testSecret(t)
	for i, tc := range []struct {
		c       EndpointConfig
		wantErr string
	}{
		{EndpointConfig{ID: "a", URL: "https://hooks.example.com/x"}, ""},
		{EndpointConfig{ID: "a", URL: "http://127.0.0.1:9/x", Mode: "test"}, ""},
		{EndpointConfig{ID: "a", URL: "http://hooks.example.com/x"}, "https"},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", Mode: "staging"}, "mode must be"},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", Format: "xml"}, "format must be"},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", Events: []string{"user.*", "*"}}, ""},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", Events: []string{"user..x"}}, "empty segment"},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", Events: []string{"us*er"}}, "not allowed"},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", EventHeader: "X-Defguard-Event"}, ""},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", EventHeader: "X Bad"}, "not allowed"},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", EventHeader: "webhook-id"}, "replace"},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", BearerToken: "a\r\nb"}, "bearer token"},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", RateLimit: -1}, "rate_limit"},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", MaxConcurrency: 5000}, "max_concurrency"},
		{EndpointConfig{ID: "a b", URL: "https://h.example/x"}, "not allowed"},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", Secret: "whsec_short"}, "base64"},
		{EndpointConfig{ID: "a", URL: "https://h.example/x", Secret: "nope"}, "whsec_"},
	} {
		if tc.c.Secret == "" {
			tc.c.Secret = secret
		}
		r, err := recordFromConfig(tc.c, time.Now())
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%d: unexpected error %v", i, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%d: error %v, want one containing %q", i, err, tc.wantErr)
		case tc.wantErr != "" && !errors.Is(err, ErrInvalidEndpoint):
			t.Errorf("%d: error %v does not wrap ErrInvalidEndpoint", i, err)
		case err != nil && strings.Contains(err.Error(), secret):
			t.Errorf("%d: error repeats the secret", i)
		case err == nil && (r.Mode == "" || r.Format == ""):
			t.Errorf("%d: defaults not filled: %+v", i, r)
		}
	}
}

func TestEndpointJSONOmitsSecrets(t *testing.T) {
	secret := testSecret(t)
	r, err := recordFromConfig(EndpointConfig{ID: "a", URL: "https://h.example/x", Secret: secret, BearerToken: "tok123"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ep := r.public(time.Now())
	b, err := json.Marshal(ep)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), secret) || strings.Contains(string(b), "tok123") {
		t.Fatalf("endpoint JSON leaks a credential: %s", b)
	}
	if !strings.Contains(string(b), `"has_bearer_token":true`) {
		t.Errorf("JSON lacks has_bearer_token: %s", b)
	}
	if ep.Secret() != secret {
		t.Errorf("Secret() did not return the current secret")
	}
}

func TestSigningKeysDropExpiredSecrets(t *testing.T) {
	now := time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)
	cur, old, expired := testSecret(t), testSecret(t), testSecret(t)
	r := &endpointRecord{ID: "a", Secrets: []secretRecord{
		{Value: cur}, {Value: old, ExpiresAt: now.Add(time.Hour)}, {Value: expired, ExpiresAt: now.Add(-time.Second)},
	}}
	keys, err := r.signingKeys(now)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 {
		t.Fatalf("got %d keys, want 2 (current and unexpired previous)", len(keys))
	}
	want, _ := DecodeSecret(old)
	if string(keys[1]) != string(want) {
		t.Errorf("second key is not the unexpired previous secret")
	}
	r.pruneSecrets(now)
	if len(r.Secrets) != 2 {
		t.Errorf("prune kept %d secrets, want 2", len(r.Secrets))
	}
	if ep := r.public(now); len(ep.SecretExpiries) != 1 {
		t.Errorf("public lists %d previous secret expiries, want 1", len(ep.SecretExpiries))
	}
}
