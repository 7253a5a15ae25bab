package rules

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func dataOf(evs []Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Type + " " + ev.Subject + " " + string(ev.Data)
	}
	return out
}

func TestEachOneEventPerElement(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: users-imported
    match: {method: POST, path: /api/users/import}
    emit:
      type: "user.{item.kind}"
      types: [user.created, user.invited]
      subject: "{item.id}"
      tenant: "{item.org}"
      data: {id: "{item.id}", email: "{item.email}", position: "{index}", whole: "{item}", label: "#{index}: {item.email}"}
      each: "{response.body.users}"
`)
	ex := &Exchange{Method: "POST", Path: "/api/users/import", Status: 201,
		ResponseBody: []byte(`{"users":[{"id":"u_1","kind":"created","email":"a@x.test","org":"o_1","password":"p1"},{"id":"u_2","kind":"invited","email":"b@x.test"}]}`)}
	evs := eval(t, s, ex)
	got := dataOf(evs)
	want := []string{
		`user.created u_1 {"id":"u_1","email":"a@x.test","position":0,"whole":{"id":"u_1","kind":"created","email":"a@x.test","org":"o_1","password":"[REDACTED]"},"label":"#0: a@x.test"}`,
		`user.invited u_2 {"id":"u_2","email":"b@x.test","position":1,"whole":{"id":"u_2","kind":"invited","email":"b@x.test"},"label":"#1: b@x.test"}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if evs[0].Tenant != "o_1" || evs[1].Tenant != "" {
		t.Errorf("tenants %q %q", evs[0].Tenant, evs[1].Tenant)
	}
	if m := strings.Join(evs[1].Source.Missing, ","); m != "item.org" {
		t.Errorf("missing of the second event: %q", m)
	}
	if evs[0].ID == evs[1].ID {
		t.Error("two elements, one id")
	}
}

func TestEachMissingOrNotAListEmitsNothing(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x}
    emit:
      - {type: a.b, each: "{request.body.users}", subject: "{item.id}"}
      - {type: c.d}
`)
	for _, body := range []string{``, `{}`, `{"users":null}`, `{"users":{"id":"u_1"}}`, `{"users":"u_1"}`, `{"users":7}`, `{"users":[]}`, `not json`} {
		evs, errs := s.Evaluate(&Exchange{Method: "POST", Path: "/x", Status: 200, RequestBody: []byte(body)}, EmitOptions{})
		if len(errs) != 0 || len(evs) != 1 || evs[0].Type != "c.d" {
			t.Errorf("body %q: want only c.d and no error, got %v %v", body, dataOf(evs), errs)
		}
	}
}

// scimPatchRules are the group-membership rules of a SCIM service (RFC 7644
// §3.5.2): one event per member added, one per member removed, whichever
// form the client uses.
const scimPatchRules = `version: 1
rules:
  - name: scim-group-members
    match: {method: PATCH, path: "/scim/v2/Groups/{id}"}
    emit:
      - type: group.member_added
        each:
          items: "{request.body.Operations}"
          where: {op: {regex: "(?i)^add$"}, path: {regex: "(?i)^members$"}}
          then: "{item.value}"
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{item.value}", display: "{item.display}"}
      - type: group.member_added
        each:
          items: "{request.body.Operations}"
          where: {op: {regex: "(?i)^add$"}, path: absent}
          then: "{item.value.members}"
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{item.value}", display: "{item.display}"}
      - type: group.member_removed
        each:
          items: "{request.body.Operations}"
          where:
            op: {regex: "(?i)^remove$"}
            path: {regex: '(?i)^members\[\s*value\s+eq\s+"(?P<member>[^"]+)"\s*\]$'}
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{where.member}"}
      - type: group.member_removed
        each:
          items: "{request.body.Operations}"
          where: {op: {regex: "(?i)^remove$"}, path: {regex: "(?i)^members$"}}
          then: "{item.value}"
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{item.value}"}
`

func TestEachSCIMPatchMembers(t *testing.T) {
	s := mustSet(t, scimPatchRules)
	body := `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[
	  {"op":"Add","path":"members","value":[{"value":"2819c223","display":"Babs"},{"value":"902c246b","display":"Ann"}]},
	  {"op":"replace","path":"displayName","value":"Tour Guides"},
	  {"op":"remove","path":"members[value eq \"c3a26dd3\"]"},
	  {"op":"add","value":{"members":[{"value":"aa11"}]}},
	  {"op":"Remove","path":"members","value":[{"value":"bb22"}]}
	]}`
	ex := &Exchange{Method: "PATCH", Path: "/scim/v2/Groups/g_1", Status: 200,
		RequestHeader: http.Header{"Content-Type": {"application/scim+json"}}, RequestBody: []byte(body)}
	got := dataOf(eval(t, s, ex))
	want := []string{
		`group.member_added g_1 {"group":"g_1","member":"2819c223","display":"Babs"}`,
		`group.member_added g_1 {"group":"g_1","member":"902c246b","display":"Ann"}`,
		`group.member_removed g_1 {"group":"g_1","member":"c3a26dd3"}`,
		`group.member_added g_1 {"group":"g_1","member":"aa11","display":null}`,
		`group.member_removed g_1 {"group":"g_1","member":"bb22"}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events (in the order of the operations)\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestEachDedupeIDsDifferPerElement(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x}
    emit: {type: a.b, each: "{request.body.list}", dedupe: "{request.header.Idempotency-Key}", data: "{item}"}
`)
	ex := func() *Exchange {
		return &Exchange{Method: "POST", Path: "/x", Status: 200, RequestHeader: http.Header{"Idempotency-Key": {"k1"}},
			RequestBody: []byte(`{"list":[{"x":1},{"x":1},{"x":2}]}`)}
	}
	a, b := eval(t, s, ex()), eval(t, s, ex())
	if len(a) != 3 || len(b) != 3 {
		t.Fatalf("want 3 events, got %d and %d", len(a), len(b))
	}
	if a[0].ID == a[1].ID || a[1].ID == a[2].ID || a[0].ID == a[2].ID {
		t.Errorf("identical elements must be distinct events: %s %s %s", a[0].ID, a[1].ID, a[2].ID)
	}
	for i := range a {
		if a[i].ID != b[i].ID {
			t.Errorf("a retried request must give the same id for element %d: %s vs %s", i, a[i].ID, b[i].ID)
		}
	}
	// the plain event of a rule without each keeps the id it had before each existed
	plain := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x}
    emit: {type: a.b, dedupe: "{request.header.Idempotency-Key}", data: "{request.body}"}
`)
	pe := eval(t, plain, ex())[0]
	want := DedupeEventID("legacy-auth", "r", "k1\x00"+resultDigest(&pe, ex()))
	if pe.ID != want {
		t.Errorf("plain dedupe id changed: %s, want %s", pe.ID, want)
	}
}

// TestEachHostileHugeArray sends 100,000 elements: MaxEachItems events are
// built, the rest counted as refused in one error, and the where filter
// still decides what counts.
func TestEachHostileHugeArray(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x}
    emit:
      - {type: a.b, each: "{request.body.list}", subject: "{item}"}
      - {type: c.d, each: {items: "{request.body.list}", where: {"@this": {gte: 99000}}}, subject: "{item}"}
  - name: other
    match: {method: POST, path: /x}
    emit: {type: e.f, each: "{request.body.list}"}
`)
	var b strings.Builder
	b.WriteString(`{"list":[`)
	for i := 0; i < 100_000; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprint(&b, i)
	}
	b.WriteString(`]}`)
	ex := &Exchange{Method: "POST", Path: "/x", Status: 200, RequestBody: []byte(b.String())}
	start := time.Now()
	evs, errs := s.Evaluate(ex, EmitOptions{})
	took := time.Since(start)
	if len(evs) != MaxEachItems {
		t.Fatalf("want %d events, got %d", MaxEachItems, len(evs))
	}
	if evs[0].Subject != "0" || evs[MaxEachItems-1].Subject != fmt.Sprint(MaxEachItems-1) {
		t.Errorf("the first elements are built: %q … %q", evs[0].Subject, evs[MaxEachItems-1].Subject)
	}
	// a.b: 99,000 past the limit; c.d: 1,000 elements pass where, none fits; e.f: all 100,000
	want := []int{100_000 - MaxEachItems, 1000, 100_000}
	if len(errs) != len(want) {
		t.Fatalf("want %d errors, got %v", len(want), errs)
	}
	for i, err := range errs {
		var ee *EmitError
		if !errors.As(err, &ee) || ee.Reason != RefusedTooManyItems || ee.Events() != want[i] {
			t.Errorf("error %d: want %s counting %d, got %v", i, RefusedTooManyItems, want[i], err)
		}
		if !strings.Contains(err.Error(), "rules.MaxEachItems") || len(err.Error()) > 300 {
			t.Errorf("error %d does not name the limit briefly: %v", i, err)
		}
	}
	t.Logf("100,000 elements: %d events in %s", len(evs), took)
}

func TestEachParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"item outside each", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, subject: \"{item.id}\"}",
			`t.yaml:5:32: emit.subject: placeholder {item.id}: {item…}, {index} and {where.…} stand for the element of a list, so they are known only in an emit with each:`},
		{"index outside each", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, data: {i: \"{index}\"}}", `emit.data.i: placeholder {index}`},
		{"items not a placeholder", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: users}",
			`t.yaml:5:29: emit.each: want one placeholder naming a list, such as "{request.body.users}"`},
		{"items a header", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: \"{request.header.X}\"}", `emit.each: want one placeholder naming a list`},
		{"items with text", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: \"x{request.body.u}\"}", `emit.each: want one placeholder naming a list`},
		{"unknown each key", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: {items: \"{request.body.u}\", filter: {}}}", `emit.each: unknown key "filter"; want one of: items, where, then`},
		{"each without items", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: {where: {op: add}}}", `emit.each: missing required key "items"`},
		{"then not item", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: {items: \"{request.body.u}\", then: \"{request.body.v}\"}}", `emit.each.then: want one placeholder naming a list inside the element, such as "{item.value}"`},
		{"then whole item", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: {items: \"{request.body.u}\", then: \"{item}\"}}", `emit.each.then: want one placeholder naming a list inside the element`},
		{"where unknown capture", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: {items: \"{request.body.u}\", where: {p: {regex: \"(?P<m>.)\"}}}, subject: \"{where.member}\"}",
			`emit.subject: placeholder {where.member}: want the name of a capture group (?P<name>…) of a regex in emit.each.where (this one has: m)`},
		{"where capture twice", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: {items: \"{request.body.u}\", where: {p: {regex: \"(?P<m>.)\"}, q: {regex: \"(?P<m>.)\"}}}}", `capture group "m" is named twice in emit.each.where`},
		{"where bad condition", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: {items: \"{request.body.u}\", where: {op: {like: add}}}}", `emit.each.where.op: unknown key "like"`},
		{"where empty", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: {items: \"{request.body.u}\", where: {}}}", `emit.each.where: want conditions on the element`},
		{"index with field", "name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, each: \"{request.body.u}\", data: \"{index.x}\"}", `{index} is a number and has no fields`},
		{"lookup item", "name: a\nmatch: {method: POST, path: /x}\nlookup: {get: \"/u/{item.id}\", as: u}\nemit: {type: a.b, each: \"{request.body.u}\", data: \"{u.body}\"}", `lookup.get: placeholder {item.id}`},
		{"lookup named item", "name: a\nmatch: {method: POST, path: /x}\nlookup: {get: /me, as: item}\nemit: {type: a.b}", `lookup.as: "item" is reserved`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(ruleFile(tc.body)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("want an error containing\n  %s\ngot\n  %v", tc.want, err)
			}
		})
	}
}

func TestEachReadsThroughASecretKey(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x}
    emit: {type: a.b, each: "{request.body.tokens}", data: {t: "{item.value}", all: "{item}"}}
`)
	evs := eval(t, s, &Exchange{Method: "POST", Path: "/x", Status: 200, RequestBody: []byte(`{"tokens":[{"value":"tok_1"}]}`)})
	if len(evs) != 1 || strings.Contains(string(evs[0].Data), "tok_1") {
		t.Fatalf("an element of a password-like list must be redacted: %v", dataOf(evs))
	}
}

func TestEachLookupList(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: DELETE, path: "/orgs/{org}"}
    lookup: {get: "/orgs/{path.org}/members", as: members}
    emit: {type: organization.member_removed, each: "{members.body.members}", subject: "{path.org}", data: {user: "{item.id}"}}
`)
	ex := &Exchange{Method: "DELETE", Path: "/orgs/o_1", Status: 204}
	ex.SetLookup("members", LookupResult{Status: 200, Body: []byte(`{"members":[{"id":"u_1"},{"id":"u_2"}]}`)})
	got := dataOf(eval(t, s, ex))
	if strings.Join(got, "|") != `organization.member_removed o_1 {"user":"u_1"}|organization.member_removed o_1 {"user":"u_2"}` {
		t.Errorf("got %v", got)
	}
	if n := s.Rules()[0].Need(); n.RequestBody || n.ResponseBody {
		t.Errorf("a list from a lookup needs no body: %+v", n)
	}
}

func TestEachWhereCaptureThatTookNoPart(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x}
    emit:
      type: a.b
      each: {items: "{request.body.ops}", where: {path: {regex: '^members(\[value eq "(?P<m>[^"]*)"\])?$'}}}
      data: {m: "{where.m}"}
`)
	evs := eval(t, s, &Exchange{Method: "POST", Path: "/x", Status: 200, RequestBody: []byte(`{"ops":[{"path":"members[value eq \"u1\"]"},{"path":"members"},{"path":"members[value eq \"\"]"}]}`)})
	got := dataOf(evs)
	if strings.Join(got, "|") != `a.b  {"m":"u1"}|a.b  {"m":null}|a.b  {"m":""}` || len(evs[1].Source.Missing) != 1 || len(evs[2].Source.Missing) != 0 {
		t.Errorf("got %v, missing %v %v", got, evs[1].Source.Missing, evs[2].Source.Missing)
	}
}
