package worker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker/enqueue"
	"github.com/authtap/authtap/worker/tasks"
)

// Endpoint tenants the property test draws from: near-identical ids, which
// must never be confused, and "" for operator endpoints.
var propEndpointTenants = []string{"", "", "t1", "T1", "t1.", "t1:a", "t2", "acme@eu", "t1_"}

// Event tenants include ids no endpoint may have (they reach the fan-out from
// the queue, which an attacker with Redis access could write): they must go
// to operator endpoints only.
var propEventTenants = append(slices.Clone(propEndpointTenants), "t1 ", " t1", "t1\x00", "t\u0131", "t1/..", strings.Repeat("t", 200))

var (
	propTypes   = []string{"user.created", "user.deleted", "org.deleted", "org.member.added", "tenant.deleted", "user.email.changed"}
	propFilters = []string{"*", "user.*", "user.created", "*.deleted", "org.member.added", "org.*", "tenant.deleted"}
)

// propFilterTakes is the test's own reading of an event-type filter, written
// from the documented rules rather than from MatchEventFilter.
func propFilterTakes(f, typ string) bool {
	switch {
	case f == "*":
		return true
	case strings.HasSuffix(f, ".*"):
		return strings.HasPrefix(typ, strings.TrimSuffix(f, "*"))
	case strings.HasPrefix(f, "*."):
		segs := strings.Split(typ, ".")
		return len(segs) == 2 && segs[1] == strings.TrimPrefix(f, "*.")
	default:
		return f == typ
	}
}

// TestFanoutTenantProperty checks the tenant rule of the fan-out over random
// endpoints and events, with real Redis and the real enqueue path: an event
// is delivered to exactly the enabled endpoints of its mode whose filters take
// its type and which are either operator endpoints (no tenant) or endpoints of
// exactly the event's tenant. In particular a tenant endpoint never receives
// another tenant's event nor an operator-only one.
func TestFanoutTenantProperty(t *testing.T) {
	ctx := context.Background()
	s, rdb := newTestStore(t, StoreOptions{})
	writer := enqueue.New(rdb, enqueue.Options{})
	t.Cleanup(func() { _ = writer.Close() })
	insp := asynq.NewInspectorFromRedisClient(rdb)
	h := &fanoutHandler{store: s, w: writer, maxRetry: 3, dedupe: time.Hour, log: zap.NewNop()}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	var cases, tenantCases, delivered, toTenant int
	defer func() {
		t.Logf("%d cases, %d with a tenant, %d deliveries, %d to tenant endpoints", cases, tenantCases, delivered, toTenant)
	}()
	rng := rand.New(rand.NewPCG(seed, 12))
	pick := func(xs []string) string { return xs[rng.IntN(len(xs))] }

	const rounds, eventsPerRound = 40, 10
	for round := range rounds {
		// A fresh random set of endpoints.
		old, err := s.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, ep := range old {
			if err := s.Delete(ctx, ep.ID); err != nil {
				t.Fatal(err)
			}
		}
		var eps []EndpointConfig
		for i := range 3 + rng.IntN(10) {
			c := EndpointConfig{ID: fmt.Sprintf("r%d_ep%d", round, i), URL: "https://a.example/hook", Tenant: pick(propEndpointTenants),
				Disabled: rng.IntN(6) == 0}
			if rng.IntN(3) == 0 {
				c.Mode, c.URL = rules.ModeTest, "http://127.0.0.1:9/hook"
			}
			for range rng.IntN(3) {
				c.Events = append(c.Events, pick(propFilters))
			}
			if _, err := s.Create(ctx, c); err != nil {
				t.Fatalf("creating %+v: %v", c, err)
			}
			eps = append(eps, c)
		}
		for e := range eventsPerRound {
			mode := rules.ModeLive
			if rng.IntN(3) == 0 {
				mode = rules.ModeTest
			}
			ev := testEvent(fmt.Sprintf("evt_r%de%d", round, e), pick(propTypes), mode)
			ev.Tenant = pick(propEventTenants)
			var want []string
			for _, c := range eps {
				cmode := c.Mode
				if cmode == "" {
					cmode = rules.ModeLive
				}
				takesType := len(c.Events) == 0
				for _, f := range c.Events {
					takesType = takesType || propFilterTakes(f, ev.Type)
				}
				if !c.Disabled && cmode == mode && takesType && (c.Tenant == "" || c.Tenant == ev.Tenant) {
					want = append(want, c.ID)
				}
			}
			task, err := tasks.NewFanoutTask(ev)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.ProcessTask(ctx, task); err != nil {
				t.Fatalf("fan-out of %s: %v", ev.ID, err)
			}
			pending, err := insp.ListPendingTasks(tasks.QueueDeliver, asynq.PageSize(1000))
			if err != nil && len(want) > 0 {
				t.Fatal(err)
			}
			var got []string
			for _, ti := range pending {
				p, err := tasks.ParseDeliver(asynq.NewTask(ti.Type, ti.Payload))
				if err != nil {
					t.Fatal(err)
				}
				if p.EventID != ev.ID {
					t.Fatalf("a delivery of %s is still pending while checking %s", p.EventID, ev.ID)
				}
				got = append(got, p.EndpointID)
				if i := slices.IndexFunc(eps, func(c EndpointConfig) bool { return c.ID == p.EndpointID }); i >= 0 && eps[i].Tenant != "" {
					toTenant++
				}
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("seed %d: event %s (type %s, mode %s, tenant %q) went to %v, want %v; endpoints %+v",
					seed, ev.ID, ev.Type, mode, ev.Tenant, got, want, eps)
			}
			if len(pending) > 0 {
				if _, err := insp.DeleteAllPendingTasks(tasks.QueueDeliver); err != nil {
					t.Fatal(err)
				}
			}
			cases++
			delivered += len(got)
			if ev.Tenant != "" {
				tenantCases++
			}
		}
	}
	if cases < 200 || tenantCases < 100 || delivered < 100 || toTenant < 15 {
		t.Fatalf("only %d cases (%d with a tenant, %d deliveries, %d to tenant endpoints): the test checked too little",
			cases, tenantCases, delivered, toTenant)
	}
}

// A deterministic case of the rule, so a failure names it plainly.
func TestFanoutTenantIsolation(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestStore(t, StoreOptions{})
	for _, c := range []EndpointConfig{
		{ID: "op", URL: "https://a.example"},
		{ID: "op_users", URL: "https://a.example", Events: []string{"user.*"}},
		{ID: "t1", URL: "https://a.example", Tenant: "t1"},
		{ID: "T1", URL: "https://a.example", Tenant: "T1"},
		{ID: "t2", URL: "https://a.example", Tenant: "t2"},
	} {
		if _, err := s.Create(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ tenant, typ, want string }{
		{"t1", "user.created", "op,op_users,t1"},
		{"", "user.created", "op,op_users"},
		{"T1", "org.deleted", "T1,op"},
		{"t1 ", "user.created", "op,op_users"},
		{"t3", "org.deleted", "op"},
	} {
		got, err := s.Match(ctx, tc.typ, rules.ModeLive, tc.tenant)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, ep := range got {
			ids = append(ids, ep.ID)
		}
		slices.Sort(ids)
		want := tc.want
		if g := strings.Join(ids, ","); g != want {
			t.Errorf("event of tenant %q, type %s went to %s, want %s", tc.tenant, tc.typ, g, want)
		}
	}
}

// Endpoint tenants are checked where they enter: the store (configuration
// and API alike; admin's TestCheckEndpointConfigTenant checks the API's field
// error) refuses anything that is not a valid tenant id.
func TestEndpointTenantValidated(t *testing.T) {
	ctx := context.Background()
	s, _ := newTestStore(t, StoreOptions{})
	for _, bad := range []string{"t1 ", " t1", "t1\x00", "t/1", "t1\n", "{\"$ne\":1}", strings.Repeat("x", rules.MaxTenantLen+1)} {
		if _, err := s.Create(ctx, EndpointConfig{URL: "https://a.example", Tenant: bad}); err == nil {
			t.Errorf("endpoint with tenant %q created", bad)
		}
	}
	ep, err := s.Create(ctx, EndpointConfig{ID: "e", URL: "https://a.example", Tenant: strings.Repeat("x", rules.MaxTenantLen)})
	if err != nil || ep.Tenant != strings.Repeat("x", rules.MaxTenantLen) {
		t.Fatalf("endpoint with a %d-byte tenant: %+v, %v", rules.MaxTenantLen, ep, err)
	}
	bad := "t 1"
	if _, err := s.Update(ctx, "e", EndpointPatch{Tenant: &bad}); err == nil {
		t.Error("patch to tenant \"t 1\" accepted")
	}
	none := ""
	if ep, err = s.Update(ctx, "e", EndpointPatch{Tenant: &none}); err != nil || ep.Tenant != "" {
		t.Errorf("patch to no tenant: %+v, %v", ep, err)
	}
}
