package worker

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/internal/redistest"
)

// testClock is an adjustable clock for tests.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newTestRedis starts a private redis-server and returns a client on it.
func newTestRedis(t testing.TB) (*redistest.Server, redis.UniversalClient) {
	t.Helper()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	return srv, rdb
}

func newTestStore(t testing.TB, o StoreOptions) (*Store, redis.UniversalClient) {
	t.Helper()
	_, rdb := newTestRedis(t)
	s, err := NewStore(rdb, o)
	if err != nil {
		t.Fatal(err)
	}
	return s, rdb
}

func TestStoreCRUD(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s, rdb := newTestStore(t, StoreOptions{Now: clock.Now})

	ep, err := s.Create(ctx, EndpointConfig{URL: "https://hooks.example.com/a", Events: []string{"user.*"}, BearerToken: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ep.ID, "ep_") || !strings.HasPrefix(ep.Secret(), SecretPrefix) || !ep.Enabled {
		t.Fatalf("created endpoint %+v: want ep_ id, a secret and enabled", ep)
	}
	if ep.Mode != "live" || ep.Format != FormatEnvelope || ep.MaxConcurrency != DefaultMaxConcurrency {
		t.Errorf("defaults not applied: %+v", ep)
	}
	if _, err := s.Create(ctx, EndpointConfig{ID: ep.ID, URL: "https://hooks.example.com/b"}); !errors.Is(err, ErrConflict) {
		t.Errorf("creating a duplicate id: %v, want ErrConflict", err)
	}
	if _, err := s.Create(ctx, EndpointConfig{URL: "ftp://x"}); !errors.Is(err, ErrInvalidEndpoint) {
		t.Errorf("creating an invalid endpoint: %v, want ErrInvalidEndpoint", err)
	}

	got, err := s.Get(ctx, ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.URL != ep.URL || got.Secret() != ep.Secret() || !got.HasBearerToken {
		t.Errorf("Get = %+v", got)
	}

	clock.Add(time.Minute)
	desc, events := "new", []string{"tenant.created"}
	up, err := s.Update(ctx, ep.ID, EndpointPatch{Description: &desc, Events: &events})
	if err != nil {
		t.Fatal(err)
	}
	if up.Description != "new" || len(up.Events) != 1 || up.URL != ep.URL || !up.UpdatedAt.After(up.CreatedAt) {
		t.Errorf("Update = %+v", up)
	}
	bad := "http://hooks.example.com"
	if _, err := s.Update(ctx, ep.ID, EndpointPatch{URL: &bad}); !errors.Is(err, ErrInvalidEndpoint) {
		t.Errorf("invalid patch: %v, want ErrInvalidEndpoint", err)
	}
	if got, _ := s.Get(ctx, ep.ID); got.URL != ep.URL {
		t.Errorf("invalid patch was stored")
	}
	if _, err := s.Update(ctx, "ep_missing", EndpointPatch{Description: &desc}); !errors.Is(err, ErrNotFound) {
		t.Errorf("patching a missing endpoint: %v, want ErrNotFound", err)
	}

	// The secret is stored in Redis but never in the listing JSON.
	list, err := s.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %v, %v", list, err)
	}
	b, _ := json.Marshal(list)
	if strings.Contains(string(b), ep.Secret()) || strings.Contains(string(b), `"tok"`) {
		t.Errorf("listing leaks a credential: %s", b)
	}
	raw, _ := rdb.Get(ctx, endpointKey(ep.ID)).Result()
	if !strings.Contains(raw, ep.Secret()) {
		t.Errorf("secret not stored in Redis")
	}

	if err := s.Delete(ctx, ep.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, ep.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, ep.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
}

func TestStoreRotateSecret(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s, _ := newTestStore(t, StoreOptions{Now: clock.Now})
	ep, err := s.Create(ctx, EndpointConfig{URL: "https://hooks.example.com/a"})
	if err != nil {
		t.Fatal(err)
	}
	first := ep.Secret()
	second, err := s.RotateSecret(ctx, ep.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if second == first || !strings.HasPrefix(second, SecretPrefix) {
		t.Fatalf("rotation returned %q", second)
	}
	r, err := s.load(ctx, ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := r.signingKeys(clock.Now())
	if len(keys) != 2 {
		t.Fatalf("after rotation %d secrets sign, want 2", len(keys))
	}
	// The old secret keeps signing for 24h, then stops.
	clock.Add(DefaultSecretOverlap - time.Second)
	if keys, _ := r.signingKeys(clock.Now()); len(keys) != 2 {
		t.Errorf("old secret stopped signing before 24h")
	}
	clock.Add(2 * time.Second)
	keys, _ = r.signingKeys(clock.Now())
	if len(keys) != 1 {
		t.Errorf("old secret still signs after 24h")
	}
	want, _ := DecodeSecret(second)
	if string(keys[0]) != string(want) {
		t.Errorf("current key is not the new secret")
	}
	// A negative overlap drops the old secret at once.
	third, err := s.RotateSecret(ctx, ep.ID, -1)
	if err != nil {
		t.Fatal(err)
	}
	r, _ = s.load(ctx, ep.ID)
	if len(r.Secrets) != 1 || r.Secrets[0].Value != third {
		t.Errorf("rotation with negative overlap kept %d secrets", len(r.Secrets))
	}
}

func TestStoreConfiguredEndpointsAreReadOnly(t *testing.T) {
	ctx := context.Background()
	secret := testSecret(t)
	cfg := []EndpointConfig{{ID: "gitops", URL: "https://hooks.example.com/g", Secret: secret, Events: []string{"*"}}}
	s, _ := newTestStore(t, StoreOptions{Endpoints: cfg})
	if _, err := s.Create(ctx, EndpointConfig{URL: "https://hooks.example.com/a"}); err != nil {
		t.Fatal(err)
	}
	list, err := s.List(ctx)
	if err != nil || len(list) != 2 || list[0].ID != "gitops" || !list[0].ReadOnly {
		t.Fatalf("List = %+v, %v: want the configured endpoint first, read-only", list, err)
	}
	desc := "x"
	for name, err := range map[string]error{
		"update": func() error { _, err := s.Update(ctx, "gitops", EndpointPatch{Description: &desc}); return err }(),
		"delete": s.Delete(ctx, "gitops"),
		"rotate": func() error { _, err := s.RotateSecret(ctx, "gitops", 0); return err }(),
		"create": func() error {
			_, err := s.Create(ctx, EndpointConfig{ID: "gitops", URL: "https://x.example"})
			return err
		}(),
	} {
		want := ErrReadOnly
		if name == "create" {
			want = ErrConflict
		}
		if !errors.Is(err, want) {
			t.Errorf("%s on a configured endpoint: %v, want %v", name, err, want)
		}
	}
	if err := s.Delete(ctx, "gitops"); err == nil || !strings.Contains(err.Error(), "configuration") {
		t.Errorf("read-only error does not say why: %v", err)
	}
	// Its runtime state can still change (a 410 must stop deliveries).
	changed, err := s.SetEnabled(ctx, "gitops", false, "410 Gone")
	if err != nil || !changed {
		t.Fatalf("SetEnabled = %v, %v", changed, err)
	}
	if changed, _ := s.SetEnabled(ctx, "gitops", false, "410 Gone"); changed {
		t.Errorf("second identical SetEnabled reported a change")
	}
	got, _ := s.Get(ctx, "gitops")
	if got.Enabled || got.DisabledReason != "410 Gone" {
		t.Errorf("configured endpoint state = %+v", got)
	}
	m, _ := s.Match(ctx, "user.created", "live", "")
	for _, e := range m {
		if e.ID == "gitops" {
			t.Errorf("disabled configured endpoint still matches")
		}
	}
	if _, err := NewStore(nil, StoreOptions{Endpoints: []EndpointConfig{{ID: "x", URL: "https://x.example"}}}); err == nil {
		t.Errorf("configured endpoint without secret accepted")
	}
}

func TestStoreMatch(t *testing.T) {
	ctx := context.Background()
	s, rdb := newTestStore(t, StoreOptions{})
	mk := func(c EndpointConfig) Endpoint {
		t.Helper()
		ep, err := s.Create(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		return ep
	}
	all := mk(EndpointConfig{ID: "all", URL: "https://a.example", Events: []string{"*"}})
	users := mk(EndpointConfig{ID: "users", URL: "https://u.example", Events: []string{"user.*"}})
	test := mk(EndpointConfig{ID: "test", URL: "http://127.0.0.1:1", Mode: "test"})
	off := mk(EndpointConfig{ID: "off", URL: "https://o.example", Disabled: true})
	_ = off
	ids := func(eps []Endpoint) string {
		var out []string
		for _, e := range eps {
			out = append(out, e.ID)
		}
		return strings.Join(out, ",")
	}
	for _, tc := range []struct{ typ, mode, want string }{
		{"user.created", "live", "all,users"},
		{"tenant.created", "live", "all"},
		{"user.created", "test", "test"},
	} {
		got, err := s.Match(ctx, tc.typ, tc.mode, "")
		if err != nil {
			t.Fatal(err)
		}
		if ids(got) != tc.want {
			t.Errorf("Match(%s, %s) = %s, want %s", tc.typ, tc.mode, ids(got), tc.want)
		}
	}
	// A second store (another worker) sees changes made through the first at once.
	other, err := NewStore(rdb, StoreOptions{CacheFor: -1})
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := other.Match(ctx, "user.created", "live", ""); ids(got) != "all,users" {
		t.Fatalf("other store Match = %s", ids(got))
	}
	if _, err := s.SetEnabled(ctx, users.ID, false, "manual"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, all.ID); err != nil {
		t.Fatal(err)
	}
	if got, _ := other.Match(ctx, "user.created", "live", ""); ids(got) != "" {
		t.Errorf("other store still matches %s after disable and delete", ids(got))
	}
	if _, err := s.SetEnabled(ctx, users.ID, true, ""); err != nil {
		t.Fatal(err)
	}
	if got, _ := other.Match(ctx, "user.created", "live", ""); ids(got) != "users" {
		t.Errorf("re-enabled endpoint not matched: %s", ids(got))
	}
	// With the default cache, another store sees a change within DefaultCacheFor.
	cached, _ := NewStore(rdb, StoreOptions{})
	if got, _ := cached.Match(ctx, "user.created", "live", ""); ids(got) != "users" {
		t.Fatalf("cached store Match = %s", ids(got))
	}
	if err := s.Delete(ctx, users.ID); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := cached.Match(ctx, "user.created", "live", "")
		if len(got) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("cached store never saw the delete")
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = test
}
