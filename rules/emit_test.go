package rules

import (
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

func eval(t *testing.T, s *Set, ex *Exchange) []Event {
	t.Helper()
	evs, errs := s.Evaluate(ex, EmitOptions{Source: "legacy-auth", Now: time.Date(2026, 11, 23, 10, 0, 0, 123456789, time.UTC)})
	for _, e := range errs {
		t.Errorf("emit error: %v", e)
	}
	return evs
}

func TestEmitTypesAndMissing(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: "/u/{id}"}
    emit:
      type: user.{request.body.action}
      types: [user.renamed, user.deleted]
      subject: "user-{path.id}"
      data:
        id: "{path.id}"
        n: "{request.body.n}"
        obj: "{request.body.obj}"
        text: "n={request.body.n} obj={request.body.obj}"
        status: "{response.status}"
        missing: "{request.body.nope}"
        missing_text: "x{request.body.nope2}y"
        literal: [1, true, null, "{{braces}}"]
        q: "{request.query.q}"
        h: "{request.header.x-trace}"
        rh: "{response.header.Location}"
        c: "{request.cookie.lang}"
        m: "{request.method} {request.path} {request.host}"
`)
	ex := &Exchange{Method: "POST", Host: "a.test", Path: "/u/7", RawQuery: "q=hello", Status: 201,
		RequestHeader:  http.Header{"X-Trace": {"t-1"}, "Cookie": {"lang=en"}},
		RequestBody:    []byte(`{"action":"renamed","n":42,"obj":{"b":1,"a":[1,2]}}`),
		ResponseHeader: http.Header{"Location": {"/u/7"}}}
	evs := eval(t, s, ex)
	if len(evs) != 1 {
		t.Fatalf("want 1 event, got %d", len(evs))
	}
	ev := evs[0]
	want := `{"id":"7","n":42,"obj":{"b":1,"a":[1,2]},"text":"n=42 obj={\"b\":1,\"a\":[1,2]}","status":201,"missing":null,"missing_text":"xy","literal":[1,true,null,"{braces}"],"q":"hello","h":"t-1","rh":"/u/7","c":"en","m":"POST /u/7 a.test"}`
	if string(ev.Data) != want {
		t.Errorf("data\n got %s\nwant %s", ev.Data, want)
	}
	if ev.Type != "user.renamed" || ev.Subject != "user-7" || ev.Mode != "live" {
		t.Errorf("type %q subject %q mode %q", ev.Type, ev.Subject, ev.Mode)
	}
	if strings.Join(ev.Source.Missing, ",") != "request.body.nope,request.body.nope2" {
		t.Errorf("missing %v", ev.Source.Missing)
	}
	if ev.Source.Name != "legacy-auth" || ev.Source.Rule != "r" {
		t.Errorf("source %+v", ev.Source)
	}
	// a type that renders to nothing valid is an error, not an event
	ex2 := &Exchange{Method: "POST", Path: "/u/7", Status: 200, RequestBody: []byte(`{"action":"has space"}`)}
	evs2, errs := s.Evaluate(ex2, EmitOptions{})
	if len(evs2) != 0 || len(errs) != 1 || !strings.Contains(errs[0].Error(), `rendered to "user.has space"`) {
		t.Errorf("bad rendered type: %v %v", evs2, errs)
	}
}

func TestEventEnvelope(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - {name: user-created, match: {method: POST, path: /api/users}, emit: {type: user.created, data: {id: "{response.body.user.id}"}}}
`)
	evs := eval(t, s, &Exchange{Method: "POST", Path: "/api/users", Status: 201, ResponseBody: []byte(`{"user":{"id":"u_1"}}`)})
	b, err := json.Marshal(evs[0])
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^\{"id":"evt_[0-9A-HJKMNP-TV-Z]{26}","type":"user.created","timestamp":"2026-11-23T10:00:00.123Z","data":\{"id":"u_1"\},"source":\{"name":"legacy-auth","rule":"user-created"\},"mode":"live"\}$`)
	if !re.Match(b) {
		t.Fatalf("envelope %s", b)
	}
	var back Event
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	b2, _ := json.Marshal(back)
	if string(b) != string(b2) {
		t.Fatalf("round trip\n%s\n%s", b, b2)
	}
}

func TestEventIDs(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a, b := NewEventID(t0), NewEventID(t0.Add(time.Millisecond))
	if len(a) != 30 || a == b || !(a < b) {
		t.Fatalf("ids %s %s: want 30 chars, distinct, time-ordered", a, b)
	}
	if NewEventID(t0) == NewEventID(t0) {
		t.Fatal("same-millisecond ids collide")
	}
	if DedupeEventID("s", "r", "k") != DedupeEventID("s", "r", "k") || DedupeEventID("s", "r", "k") == DedupeEventID("s", "r", "k2") || DedupeEventID("s", "r", "k") == DedupeEventID("s2", "r", "k") {
		t.Fatal("dedupe ids must depend on source, rule and key only")
	}
}

func TestDedupe(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x}
    emit: {type: a.b, dedupe: {key: "{request.header.Idempotency-Key}", window: 10m}}
`)
	ex := func(key string) *Exchange {
		h := http.Header{}
		if key != "" {
			h.Set("Idempotency-Key", key)
		}
		return &Exchange{Method: "POST", Path: "/x", Status: 200, RequestHeader: h}
	}
	a, b, c := eval(t, s, ex("k1"))[0], eval(t, s, ex("k1"))[0], eval(t, s, ex("k2"))[0]
	if a.ID != b.ID || a.ID == c.ID || a.DedupeWindow != 10*time.Minute {
		t.Fatalf("dedupe ids %s %s %s window %s", a.ID, b.ID, c.ID, a.DedupeWindow)
	}
	d, e := eval(t, s, ex(""))[0], eval(t, s, ex(""))[0]
	if d.ID == e.ID || d.DedupeWindow != 0 {
		t.Fatalf("empty key must give fresh ids: %s %s", d.ID, e.ID)
	}
}

func TestRedaction(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: whole
    match: {method: POST, path: /whole}
    emit:
      type: a.b
      data: "{request.body}"
      omit: [internal, profile.meta]
      redact: [phone, profile.address.street]
      keep_secrets: [token_type]
  - name: picked
    match: {method: POST, path: /picked}
    emit:
      type: a.b
      data:
        pw: "{request.body.password}"
        note: "hi {request.body.user.password}"
        password: "literal"
        apiKey: "{request.body.id}"
        ok: "{request.body.id}"
`)
	body := `{"id":"u1","password":"s3cret","Password_Confirmation":"s3cret","token_type":"bearer","refresh-token":"r","internal":{"x":1},
"profile":{"meta":{"a":1},"phone":"555","address":{"street":"Main","city":"X"},"deep":[{"client_secret":"c","otp":"1","PIN":"2","name":"n"}]},
"user":{"password":"p"},"sessionCookie":"c","authorization":"Bearer x"}`
	evs := eval(t, s, &Exchange{Method: "POST", Path: "/whole", Status: 200, RequestBody: []byte(body)})
	want := `{"id":"u1","password":"[REDACTED]","Password_Confirmation":"[REDACTED]","token_type":"bearer","refresh-token":"[REDACTED]","profile":{"phone":"[REDACTED]","address":{"street":"[REDACTED]","city":"X"},"deep":[{"client_secret":"[REDACTED]","otp":"[REDACTED]","PIN":"[REDACTED]","name":"n"}]},"user":{"password":"[REDACTED]"},"sessionCookie":"[REDACTED]","authorization":"[REDACTED]"}`
	if string(evs[0].Data) != want {
		t.Errorf("whole\n got %s\nwant %s", evs[0].Data, want)
	}
	evs = eval(t, s, &Exchange{Method: "POST", Path: "/picked", Status: 200, RequestBody: []byte(body)})
	want = `{"pw":"[REDACTED]","note":"[REDACTED]","password":"[REDACTED]","apiKey":"[REDACTED]","ok":"u1"}`
	if string(evs[0].Data) != want {
		t.Errorf("picked\n got %s\nwant %s", evs[0].Data, want)
	}
	if strings.Contains(string(evs[0].Data), "s3cret") {
		t.Error("secret leaked")
	}
}

func TestSeveralEventsAndModes(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: first
    match: {method: DELETE, path: "/orgs/{org}"}
    emit:
      - {type: organization.deleted, subject: "{path.org}"}
      - {type: audit.logged, mode: test}
  - name: second
    match: {method: "*", path: "/orgs/{id}"}
    emit: {type: sync.organization, data: {type: sync.organization, organizationId: "{path.id}"}}
`)
	evs, _ := s.Evaluate(&Exchange{Method: "DELETE", Path: "/orgs/o1", Status: 204}, EmitOptions{Mode: ModeTest})
	var got []string
	for _, e := range evs {
		got = append(got, e.Type+"/"+e.Mode)
	}
	if strings.Join(got, ",") != "organization.deleted/test,audit.logged/test,sync.organization/test" {
		t.Fatalf("events %v", got)
	}
	evs, _ = s.Evaluate(&Exchange{Method: "DELETE", Path: "/orgs/o1", Status: 204}, EmitOptions{})
	if evs[0].Mode != "live" || evs[1].Mode != "test" || string(evs[2].Data) != `{"type":"sync.organization","organizationId":"o1"}` {
		t.Fatalf("modes/data %+v", evs)
	}
}

func TestLookups(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: PATCH, path: "/orgs/{org}/members/{user}"}
    lookup:
      - {get: "/orgs/{path.org}?fields=id", as: org, timeout: 1s}
      - {get: "/users/{org.body.owner}", as: owner}
    emit: {type: a.b, data: {org: "{org.body.name}", owner: "{owner.body.email}", st: "{owner.status}"}}
`)
	ex := &Exchange{Method: "PATCH", Path: "/orgs/o1/members/u1", Status: 200}
	ms := s.Match(ex)
	if len(ms) != 1 || ms[0].NumLookups() != 2 {
		t.Fatal("no match")
	}
	m := ms[0]
	lk := m.Lookup(0, ex)
	if lk.Path != "/orgs/o1?fields=id" || lk.As != "org" || lk.Timeout != time.Second || len(lk.Missing) != 0 {
		t.Fatalf("lookup 0 %+v", lk)
	}
	if lk := (&Match{Rule: m.Rule, Params: []Param{{"org", "a/b c"}, {"user", "u"}}}).Lookup(0, ex); lk.Path != "/orgs/a%2Fb%20c?fields=id" {
		t.Fatalf("path values must be escaped: %q", lk.Path)
	}
	if lk := m.Lookup(1, ex); len(lk.Missing) != 1 {
		t.Fatalf("lookup 1 before org is known must report missing: %+v", lk)
	}
	ex.SetLookup("org", LookupResult{Status: 200, Body: []byte(`{"name":"Acme","owner":"u9"}`)})
	if lk := m.Lookup(1, ex); lk.Path != "/users/u9" || lk.Timeout != DefaultLookupTimeout {
		t.Fatalf("lookup 1 %+v", lk)
	}
	ex.SetLookup("owner", LookupResult{Status: 404, Body: []byte(`{"error":"nope"}`)})
	evs, _ := m.Events(ex, EmitOptions{})
	if string(evs[0].Data) != `{"org":"Acme","owner":null,"st":404}` || strings.Join(evs[0].Source.Missing, ",") != "owner.body.email" {
		t.Fatalf("data %s missing %v", evs[0].Data, evs[0].Source.Missing)
	}
}

func TestEventTypesOfSet(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - {name: a, match: {method: POST, path: /a}, emit: [{type: user.created}, {type: "user.{request.body.x}", types: [user.created, user.removed]}]}
  - {name: b, match: {method: POST, path: /b}, emit: {type: user.created}}
`)
	ets := s.EventTypes()
	if len(ets) != 3 || ets[0].Type != "user.created" || strings.Join(ets[0].Rules, ",") != "a,b" || ets[0].Templated ||
		ets[1].Type != "user.removed" || strings.Join(ets[1].Rules, ",") != "a" ||
		ets[2].Type != "user.{request.body.x}" || !ets[2].Templated || strings.Join(ets[2].Types, ",") != "user.created,user.removed" {
		t.Fatalf("%+v", ets)
	}
}

func TestLookupQueryEscaping(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /invite}
    lookup: {get: "/users?email={request.body.email}&x=1", as: u}
    emit: {type: a.b, data: "{u.body}"}
`)
	ex := &Exchange{Method: "POST", Path: "/invite", Status: 200, RequestBody: []byte(`{"email":"a+b@x.test&admin=1"}`)}
	if lk := s.Match(ex)[0].Lookup(0, ex); lk.Path != "/users?email=a%2Bb%40x.test%26admin%3D1&x=1" {
		t.Fatalf("query values must be escaped: %q", lk.Path)
	}
}

func TestValidEventTypeAgreesWithRegexp(t *testing.T) {
	for _, s := range []string{"", "a", "a.b", "user_created", "a-b.c_d.E9", ".a", "a.", "a..b", "a b", "a/b", "ä", "a.b.", "user.{x}"} {
		if validEventType(s) != eventTypeRE.MatchString(s) {
			t.Errorf("%q: validEventType=%v regexp=%v", s, validEventType(s), eventTypeRE.MatchString(s))
		}
	}
}

// Two requests that share a dedupe key but belong to different tenants are
// two events: the tenant is part of what the exchange produced.
func TestDedupeTenant(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x}
    emit: {type: a.b, tenant: "{request.header.X-Org}", dedupe: "{request.header.Idempotency-Key}"}
`)
	ex := func(org string) *Exchange {
		h := http.Header{}
		h.Set("Idempotency-Key", "k1")
		h.Set("X-Org", org)
		return &Exchange{Method: "POST", Path: "/x", Status: 200, RequestHeader: h}
	}
	a, b, c := eval(t, s, ex("t1"))[0], eval(t, s, ex("t1"))[0], eval(t, s, ex("t2"))[0]
	if a.Tenant != "t1" || c.Tenant != "t2" || a.ID != b.ID || a.ID == c.ID {
		t.Fatalf("tenants %q %q, ids %s %s %s", a.Tenant, c.Tenant, a.ID, b.ID, c.ID)
	}
	// A hostile tenant header makes an operator-only event that says why.
	d := eval(t, s, ex("t1\", \"x"))[0]
	if d.Tenant != "" || !slices.Contains(d.Source.Missing, TenantMissing) {
		t.Fatalf("hostile tenant: %q, missing %v", d.Tenant, d.Source.Missing)
	}
}

// TestEventsShareObservationTime checks that without EmitOptions.Now every
// event of a batch envelope's sub-exchanges, built over more than a
// millisecond, carries the one time the envelope was first observed at,
// and that an exchange of its own reads the clock again.
func TestEventsShareObservationTime(t *testing.T) {
	s, envelope, _ := benchBatch(t)
	ex := envelope()
	bt, err := s.Match(ex)[0].Batch(ex)
	if err != nil {
		t.Fatal(err)
	}
	var stamps []time.Time
	for i, sub := range bt.Subs {
		for _, m := range s.Match(sub) {
			evs, errs := m.Events(sub, EmitOptions{Source: "t"})
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			for _, ev := range evs {
				stamps = append(stamps, ev.Timestamp)
			}
		}
		if i == 0 {
			time.Sleep(2 * time.Millisecond) // a clock read per sub-exchange would differ
		}
	}
	if len(stamps) != 55 {
		t.Fatalf("%d events", len(stamps))
	}
	for i, ts := range stamps {
		if !ts.Equal(stamps[0]) {
			t.Fatalf("event %d: timestamp %v, the first's %v", i, ts, stamps[0])
		}
	}
	time.Sleep(2 * time.Millisecond)
	other := envelope()
	bt, _ = s.Match(other)[0].Batch(other)
	sub := bt.Subs[0]
	evs, _ := s.Match(sub)[0].Events(sub, EmitOptions{Source: "t"})
	if len(evs) != 1 || !evs[0].Timestamp.After(stamps[0]) {
		t.Fatalf("another exchange's event at %v, want after %v", evs, stamps[0])
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 6_000_000, time.UTC)
	if evs, _ = s.Match(sub)[0].Events(sub, EmitOptions{Source: "t", Now: now}); !evs[0].Timestamp.Equal(now) {
		t.Fatalf("EmitOptions.Now %v gave %v", now, evs[0].Timestamp)
	}
}

// TestEventsOwnTheirStrings checks that an event keeps nothing of the bodies
// it was built from: values are read from them without a copy, and the
// handler reuses a body's buffer once the exchange is done.
func TestEventsOwnTheirStrings(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: plain
    match: {method: POST, path: /u}
    emit:
      type: "{request.body.kind}"
      types: [user.created]
      subject: "{response.body.id}"
      tenant: "{request.body.org}"
      data: {id: "{response.body.id}", last: "{last_segment(response.body.href)}", n: "{request.body.n}"}
  - name: each
    match: {method: POST, path: /u}
    emit:
      type: user.imported
      subject: "{item.id}"
      tenant: "{match(item.href, \"/orgs/([a-z0-9_]+)/\")}"
      data: {id: "{item.id}"}
      each: "{response.body.users}"
`)
	req := []byte(`{"kind":"user.created","org":"o_1","n":7}`)
	resp := []byte(`{"id":"u_1","href":"/orgs/o_2/users/u_1","users":[{"id":"u_2","href":"/orgs/o_3/users/u_2"}]}`)
	ex := &Exchange{Method: "POST", Path: "/u", Status: 201, RequestBody: req, ResponseBody: resp,
		RequestHeader: http.Header{"Content-Type": {"application/json"}}, ResponseHeader: http.Header{"Content-Type": {"application/json"}}}
	evs, errs := s.Evaluate(ex, EmitOptions{Source: "t"})
	if len(errs) > 0 || len(evs) != 2 {
		t.Fatalf("%d events, %v", len(evs), errs)
	}
	var before []string
	for _, ev := range evs {
		b, _ := ev.MarshalJSON()
		before = append(before, string(b))
	}
	for i := range req {
		req[i] = 'X' // the handler's buffer, reused for another request
	}
	for i := range resp {
		resp[i] = 'Y'
	}
	for i, ev := range evs {
		if b, _ := ev.MarshalJSON(); string(b) != before[i] {
			t.Errorf("event %d changed with the bodies:\n was %s\n now %s", i, before[i], b)
		}
	}
	if evs[0].Subject != "u_1" || evs[0].Tenant != "o_1" || evs[1].Subject != "u_2" || evs[1].Tenant != "o_3" {
		t.Errorf("subjects and tenants %q %q %q %q", evs[0].Subject, evs[0].Tenant, evs[1].Subject, evs[1].Tenant)
	}
}
