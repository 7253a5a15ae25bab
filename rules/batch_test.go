package rules

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// scimUserRules are the SCIM 2.0 user rules (created, replaced, deleted)
// that scimRules and the events benchmarks share.
const scimUserRules = `version: 1
rules:
  - name: scim-user-created
    match: {method: POST, path: /scim/v2/Users, status: 201, request: {header: {Authorization: exists}}}
    emit:
      type: user.created
      subject: "{response.body.id}"
      data: {id: "{response.body.id}", userName: "{request.body.userName}", location: "{response.header.Location}"}
  - name: scim-user-replaced
    match: {method: PUT, path: "/scim/v2/Users/{id}"}
    emit: {type: user.updated, subject: "{path.id}", data: {id: "{path.id}", active: "{response.body.active}"}}
  - name: scim-user-deleted
    match: {method: DELETE, path: "/scim/v2/Users/{id}", status: 204}
    emit: {type: user.deleted, subject: "{path.id}", data: {id: "{path.id}"}}
`

// scimRules are the rules of a small SCIM 2.0 service (RFC 7644): users
// created, replaced and deleted, group members changed by PATCH, and /Bulk,
// whose operations the same rules match.
const scimRules = scimUserRules + `  - name: scim-group-members
    match: {method: PATCH, path: "/scim/v2/Groups/{id}"}
    emit:
      - type: group.member_added
        each: {items: "{request.body.Operations}", where: {op: {regex: "(?i)^add$"}, path: members}, then: "{item.value}"}
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{item.value}"}
      - type: group.member_removed
        each:
          items: "{request.body.Operations}"
          where: {op: {regex: "(?i)^remove$"}, path: {regex: '^members\[value eq "(?P<member>[^"]+)"\]$'}}
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{where.member}"}
  - name: scim-bulk
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "{item.path}", body: "{item.data}"}
      response: {items: "{response.body.Operations}", status: "{item.status}", body: "{item.response}", location: "{item.location}"}
`

// scimBulk is an RFC 7644 §3.7 bulk exchange: two users created, one
// deleted, one create refused (400), one group changed.
const scimBulkRequest = `{"schemas":["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],"failOnErrors":1,"Operations":[
 {"method":"POST","path":"/Users","bulkId":"qwerty","data":{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"alice","password":"s3cret"}},
 {"method":"POST","path":"/Users","bulkId":"ytrewq","data":{"userName":"bob"}},
 {"method":"DELETE","path":"/Users/b7c14771-226c-4d05-8860-134711653041"},
 {"method":"POST","path":"/Users","bulkId":"dup","data":{"userName":"alice"}},
 {"method":"PATCH","path":"/Groups/e9e30dba","data":{"Operations":[{"op":"add","path":"members","value":[{"value":"92b725cd"}]},{"op":"remove","path":"members[value eq \"c3a26dd3\"]"}]}}
]}`

const scimBulkResponse = `{"schemas":["urn:ietf:params:scim:api:messages:2.0:BulkResponse"],"Operations":[
 {"method":"POST","bulkId":"qwerty","location":"https://example.com/scim/v2/Users/92b725cd","status":"201","response":{"id":"92b725cd","userName":"alice"}},
 {"method":"POST","bulkId":"ytrewq","location":"https://example.com/scim/v2/Users/e9e30dba","status":"201","response":{"id":"e9e30dba","userName":"bob"}},
 {"method":"DELETE","location":"https://example.com/scim/v2/Users/b7c14771-226c-4d05-8860-134711653041","status":"204"},
 {"method":"POST","bulkId":"dup","status":"400","response":{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"scimType":"uniqueness","status":"400"}},
 {"method":"PATCH","location":"https://example.com/scim/v2/Groups/e9e30dba","status":"200"}
]}`

func scimExchange(reqBody, respBody string, status int) *Exchange {
	return &Exchange{Method: "POST", Host: "scim.example.com", Path: "/scim/v2/Bulk", Status: status,
		RequestHeader:  http.Header{"Authorization": {"Bearer t0k"}, "Content-Type": {"application/scim+json"}},
		RequestBody:    []byte(reqBody),
		ResponseHeader: http.Header{"Content-Type": {"application/scim+json"}},
		ResponseBody:   []byte(respBody)}
}

func TestBatchSCIMBulk(t *testing.T) {
	s := mustSet(t, scimRules)
	evs := eval(t, s, scimExchange(scimBulkRequest, scimBulkResponse, 200))
	want := []string{
		`scim-user-created user.created 92b725cd {"id":"92b725cd","userName":"alice","location":"https://example.com/scim/v2/Users/92b725cd"}`,
		`scim-user-created user.created e9e30dba {"id":"e9e30dba","userName":"bob","location":"https://example.com/scim/v2/Users/e9e30dba"}`,
		`scim-user-deleted user.deleted b7c14771-226c-4d05-8860-134711653041 {"id":"b7c14771-226c-4d05-8860-134711653041"}`,
		`scim-group-members group.member_added e9e30dba {"group":"e9e30dba","member":"92b725cd"}`,
		`scim-group-members group.member_removed e9e30dba {"group":"e9e30dba","member":"c3a26dd3"}`,
	}
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Source.Rule+" "+ev.Type+" "+ev.Subject+" "+string(ev.Data))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	m := s.Match(scimExchange(scimBulkRequest, scimBulkResponse, 200))
	if len(m) != 1 || !m[0].IsBatch() {
		t.Fatalf("want the batch rule to match the envelope, got %s", names(m))
	}
	b, err := m[0].Batch(scimExchange(scimBulkRequest, scimBulkResponse, 200))
	if err != nil || b.Requests != 5 || b.Failed != 1 || len(b.Subs) != 4 || b.RolledBack {
		t.Errorf("batch: %+v %v", b, err)
	}
	sub := b.Subs[0]
	if sub.Host != "scim.example.com" || sub.RequestHeader.Get("Authorization") != "Bearer t0k" ||
		sub.ResponseHeaders().Get("Content-Type") != "application/json" || sub.ResponseHeaders().Get("Location") == "" || sub.Status != 201 || !sub.IsSub() {
		t.Errorf("sub-exchange: %+v", sub)
	}
}

func TestBatchFailedEnvelopeOrAtomicEmitsNothing(t *testing.T) {
	s := mustSet(t, scimRules)
	if evs := eval(t, s, scimExchange(scimBulkRequest, scimBulkResponse, 500)); len(evs) != 0 {
		t.Errorf("a failed envelope must emit nothing, got %v", dataOf(evs))
	}
	atomic := mustSet(t, strings.Replace(scimRules, "      base: /scim/v2\n", "      base: /scim/v2\n      atomic: true\n", 1))
	if evs := eval(t, atomic, scimExchange(scimBulkRequest, scimBulkResponse, 200)); len(evs) != 0 {
		t.Errorf("an atomic batch with a failed operation applied nothing, got %v", dataOf(evs))
	}
	b, _ := atomic.Match(scimExchange(scimBulkRequest, scimBulkResponse, 200))[0].Batch(scimExchange(scimBulkRequest, scimBulkResponse, 200))
	if !b.RolledBack || len(b.Subs) != 0 {
		t.Errorf("want rolled back, got %+v", b)
	}
	// every operation succeeded: the atomic batch emits
	ok := strings.Replace(scimBulkResponse, `"status":"400"`, `"status":"201"`, 1)
	if evs := eval(t, atomic, scimExchange(scimBulkRequest, ok, 200)); len(evs) != 6 {
		t.Errorf("want 6 events from a wholly successful atomic batch, got %v", dataOf(evs))
	}
}

func TestBatchStatuses(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: created
    match: {method: POST, path: /api/users, status: 201}
    emit: {type: user.created, subject: "{response.body.id}"}
  - name: batch
    match: {method: POST, path: /api/batch}
    batch:
      request: {items: "{request.body.requests}", method: POST, url: /api/users, body: "{item}"}
      response: {items: "{response.body}", status: "{item.status}", body: "{item.body}"}
`)
	for _, tc := range []struct {
		status string
		want   int
	}{
		{`201`, 1}, {`"201"`, 1}, {`" 201 "`, 1}, {`"201 Created"`, 1}, {`201.0`, 0}, {`"2O1"`, 0}, {`"20"`, 0}, {`"2010"`, 0},
		{`200`, 0}, {`"abc"`, 0}, {`null`, 0}, {`{"code":201}`, 0}, {`[201]`, 0}, {`true`, 0}, {`1e3`, 0}, {`"+201"`, 0},
	} {
		ex := &Exchange{Method: "POST", Path: "/api/batch", Status: 200,
			RequestBody:  []byte(`{"requests":[{"email":"a@x.test"}]}`),
			ResponseBody: []byte(`[{"status":` + tc.status + `,"body":{"id":"u_1"}}]`)}
		evs, errs := s.Evaluate(ex, EmitOptions{})
		if len(evs) != tc.want || len(errs) != 0 {
			t.Errorf("status %s: want %d events, got %v %v", tc.status, tc.want, dataOf(evs), errs)
		}
	}
}

func TestBatchJSONBatchPairsByIDWithQuery(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: invited
    match: {method: POST, path: /v1/users, request: {query: {invite: "1"}}}
    emit: {type: user.invited, subject: "{response.body.id}", data: {email: "{request.body.email}", q: "{request.query.invite}"}}
  - name: updated
    match: {method: PATCH, path: "/v1/users/{id}", host: api.example.com}
    emit: {type: user.updated, subject: "{path.id}", data: {id: "{path.id}"}}
  - name: batch
    match: {method: POST, path: /v1/$batch}
    batch:
      base: /v1
      request: {items: "{request.body.requests}", id: "{item.id}", method: "{item.method}", url: "{item.url}", body: "{item.body}"}
      response: {items: "{response.body.responses}", id: "{item.id}", status: "{item.status}", body: "{item.body}"}
`)
	ex := &Exchange{Method: "POST", Host: "api.example.com:443", Path: "/v1/$batch", Status: 200,
		RequestHeader: http.Header{"Content-Type": {"application/json"}},
		RequestBody: []byte(`{"requests":[
		  {"id":"1","method":"POST","url":"/users?invite=1","body":{"email":"a@x.test"}},
		  {"id":"2","method":"patch","url":"users/u%5F7","body":{"name":"B"}},
		  {"id":"3","method":"GET","url":"/users/u_9"},
		  {"id":"4","method":"POST","url":"https://other.example.com/v1/users?invite=1#frag","body":{"email":"c@x.test"}},
		  {"id":"5","method":"POST","url":"/users?invite=1","body":{"email":"never-answered@x.test"}}
		]}`),
		ResponseBody: []byte(`{"responses":[
		  {"id":"4","status":201,"body":{"id":"u_4"}},
		  {"id":"3","status":200,"body":{"id":"u_9"}},
		  {"id":"2","status":200,"body":{}},
		  {"id":"1","status":201,"body":{"id":"u_1"}}
		]}`)}
	got := dataOf(eval(t, s, ex))
	want := []string{
		`user.invited u_1 {"email":"a@x.test","q":"1"}`,
		`user.updated u_7 {"id":"u_7"}`,
		`user.invited u_4 {"email":"c@x.test","q":"1"}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestBatchTopLevelArrayAndMismatchedLengths(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: created
    match: {method: POST, path: /users}
    emit: {type: user.created, subject: "{response.body.id}"}
  - name: deleted
    match: {method: DELETE, path: "/users/{id}"}
    emit: {type: user.deleted, subject: "{path.id}"}
  - name: batch
    match: {method: POST, path: /batch}
    batch:
      request: {items: "{request.body.requests}", method: "{item.method}", url: "{item.url}", body: "{item.body}"}
      response: {items: "{response.body}", status: "{item.status}", body: "{item.body}"}
`)
	reqs := `{"requests":[{"method":"POST","url":"/users","body":{"n":1}},{"method":"DELETE","url":"/users/u_2"},{"method":"POST","url":"/users","body":{"n":3}}]}`
	for _, tc := range []struct{ resp, want string }{
		{`[{"status":201,"body":{"id":"u_1"}},{"status":204},{"status":201,"body":{"id":"u_3"}}]`, "user.created u_1|user.deleted u_2|user.created u_3"},
		// the service stopped after two: the third was never applied
		{`[{"status":201,"body":{"id":"u_1"}},{"status":204}]`, "user.created u_1|user.deleted u_2"},
		// more answers than questions: the extra ones pair with nothing
		{`[{"status":201,"body":{"id":"u_1"}},{"status":204},{"status":201,"body":{"id":"u_3"}},{"status":201,"body":{"id":"u_x"}}]`, "user.created u_1|user.deleted u_2|user.created u_3"},
		{`[]`, ""},
		{`{"status":201}`, ""},
		{`[{"status":404},{"status":204},"junk"]`, "user.deleted u_2"},
	} {
		ex := &Exchange{Method: "POST", Path: "/batch", Status: 200, RequestBody: []byte(reqs), ResponseBody: []byte(tc.resp)}
		var got []string
		for _, ev := range eval(t, s, ex) {
			got = append(got, ev.Type+" "+ev.Subject)
		}
		if strings.Join(got, "|") != tc.want {
			t.Errorf("response %s:\n got %s\nwant %s", tc.resp, strings.Join(got, "|"), tc.want)
		}
	}
}

func TestBatchNeverNests(t *testing.T) {
	s := mustSet(t, scimRules)
	inner := `{"Operations":[{"method":"POST","path":"/Bulk","data":` + scimBulkRequest + `}]}`
	outer := `{"Operations":[{"method":"POST","status":"200","response":` + scimBulkResponse + `}]}`
	if evs := eval(t, s, scimExchange(inner, outer, 200)); len(evs) != 0 {
		t.Errorf("a bulk inside a bulk must not be split again, got %v", dataOf(evs))
	}
}

func TestBatchInheritsCredentialsOnly(t *testing.T) {
	s := mustSet(t, scimRules)
	ex := scimExchange(scimBulkRequest, scimBulkResponse, 200)
	ex.RequestHeader.Del("Authorization")
	for _, ev := range eval(t, s, ex) {
		if ev.Source.Rule == "scim-user-created" {
			t.Errorf("the create rule asks for an Authorization header; the envelope sent none, yet it matched: %v", ev)
		}
	}
}

func TestBatchTooManyOperations(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: created
    match: {method: POST, path: /users}
    emit: {type: user.created, subject: "{response.body.id}"}
  - name: batch
    match: {method: POST, path: /batch}
    batch:
      request: {items: "{request.body}", method: POST, url: /users, body: "{item}"}
      response: {items: "{response.body}", status: "{item.s}", body: "{item}"}
`)
	const n = MaxBatchOps + 500
	var rq, rs strings.Builder
	rq.WriteString("[")
	rs.WriteString("[")
	for i := 0; i < n; i++ {
		if i > 0 {
			rq.WriteString(",")
			rs.WriteString(",")
		}
		fmt.Fprintf(&rq, `{"n":%d}`, i)
		fmt.Fprintf(&rs, `{"s":201,"id":"u_%d"}`, i)
	}
	rq.WriteString("]")
	rs.WriteString("]")
	evs, errs := s.Evaluate(&Exchange{Method: "POST", Path: "/batch", Status: 200, RequestBody: []byte(rq.String()), ResponseBody: []byte(rs.String())}, EmitOptions{})
	if len(evs) != MaxBatchOps {
		t.Errorf("want %d events, got %d", MaxBatchOps, len(evs))
	}
	var ee *EmitError
	if len(errs) != 1 || !errors.As(errs[0], &ee) || ee.Reason != RefusedTooManyOps || ee.Events() != 500 || !strings.Contains(ee.Error(), "rules.MaxBatchOps") {
		t.Errorf("want one too_many_operations error counting 500, got %v", errs)
	}
}

// TestBatchShareEachLimit: the elements of each in all sub-exchanges of one
// envelope count against one MaxEachItems.
func TestBatchShareEachLimit(t *testing.T) {
	s := mustSet(t, scimRules)
	var rq, rs strings.Builder
	rq.WriteString(`{"Operations":[`)
	rs.WriteString(`{"Operations":[`)
	for i := 0; i < 3; i++ {
		if i > 0 {
			rq.WriteString(",")
			rs.WriteString(",")
		}
		rq.WriteString(`{"method":"PATCH","path":"/Groups/g","data":{"Operations":[{"op":"add","path":"members","value":[`)
		for j := 0; j < 600; j++ {
			if j > 0 {
				rq.WriteString(",")
			}
			fmt.Fprintf(&rq, `{"value":"m%d_%d"}`, i, j)
		}
		rq.WriteString(`]}]}}`)
		rs.WriteString(`{"status":"200"}`)
	}
	rq.WriteString("]}")
	rs.WriteString("]}")
	evs, errs := s.Evaluate(scimExchange(rq.String(), rs.String(), 200), EmitOptions{})
	refused := 0
	for _, err := range errs {
		var ee *EmitError
		if errors.As(err, &ee) && ee.Reason == RefusedTooManyItems {
			refused += ee.Events()
		}
	}
	if len(evs) != MaxEachItems || refused != 1800-MaxEachItems {
		t.Errorf("want %d events and %d refused, got %d and %d", MaxEachItems, 1800-MaxEachItems, len(evs), refused)
	}
}

func TestBatchDedupeIDsDifferPerOperation(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: deleted
    match: {method: DELETE, path: "/users/{id}"}
    emit: {type: user.deleted, dedupe: "{request.header.Idempotency-Key}"}
  - name: batch
    match: {method: POST, path: /batch}
    batch:
      request: {items: "{request.body}", method: "{item.method}", url: "{item.url}"}
      response: {items: "{response.body}", status: "{item.status}"}
`)
	ex := func() *Exchange {
		return &Exchange{Method: "POST", Path: "/batch", Status: 200, RequestHeader: http.Header{"Idempotency-Key": {"k"}},
			RequestBody:  []byte(`[{"method":"DELETE","url":"/users/1"},{"method":"DELETE","url":"/users/1"}]`),
			ResponseBody: []byte(`[{"status":204},{"status":204}]`)}
	}
	a, b := eval(t, s, ex()), eval(t, s, ex())
	if len(a) != 2 || a[0].ID == a[1].ID || a[0].ID != b[0].ID || a[1].ID != b[1].ID {
		t.Errorf("want two distinct ids, the same on a retry: %v / %v", a, b)
	}
}

func TestBatchPlanAndCanMatch(t *testing.T) {
	s := mustSet(t, scimRules)
	need, ok := s.Plan("POST", "/scim/v2/Bulk")
	if !ok || !need.RequestBody || !need.ResponseBody {
		t.Errorf("a batch route needs both bodies: %+v %v", need, ok)
	}
	if allocs := testing.AllocsPerRun(100, func() {
		s.CanMatch("POST", "/scim/v2/Bulk")
		s.CanMatch("GET", "/scim/v2/Users")
	}); allocs != 0 {
		t.Errorf("CanMatch allocates %v times", allocs)
	}
}

func TestBatchParseErrors(t *testing.T) {
	const ok = "request: {items: \"{request.body.ops}\", method: \"{item.method}\", url: \"{item.url}\"}\n  response: {items: \"{response.body.ops}\", status: \"{item.status}\"}"
	for _, tc := range []struct{ name, body, want string }{
		{"emit and batch", "name: a\nmatch: {method: POST, path: /b}\nemit: {type: a.b}\nbatch:\n  " + ok, `t.yaml:7:7: batch: a rule has emit or batch, not both`},
		{"neither", "name: a\nmatch: {method: POST, path: /b}", `t.yaml:3:5: missing required key "emit" (or "batch"`},
		{"lookup on batch", "name: a\nmatch: {method: POST, path: /b}\nlookup: {get: /me, as: me}\nbatch:\n  " + ok, `lookup: a batch rule emits nothing itself`},
		{"one id", "name: a\nmatch: {method: POST, path: /b}\nbatch:\n  request: {items: \"{request.body.ops}\", id: \"{item.id}\", method: POST, url: /x}\n  response: {items: \"{response.body}\", status: \"{item.status}\"}", `batch: request.id and response.id pair`},
		{"base relative", "name: a\nmatch: {method: POST, path: /b}\nbatch:\n  base: scim\n  " + ok, `batch.base: want a path prefix starting with "/"`},
		{"body text", "name: a\nmatch: {method: POST, path: /b}\nbatch:\n  request: {items: \"{request.body.ops}\", method: POST, url: /x, body: \"x{item.b}\"}\n  response: {items: \"{response.body}\", status: \"{item.status}\"}", `batch.request.body: want one placeholder naming the body's JSON`},
		{"bad method", "name: a\nmatch: {method: POST, path: /b}\nbatch:\n  request: {items: \"{request.body.ops}\", method: \"PO ST\", url: /x}\n  response: {items: \"{response.body}\", status: \"{item.status}\"}", `batch.request.method: want an HTTP method such as POST`},
		{"no status", "name: a\nmatch: {method: POST, path: /b}\nbatch:\n  request: {items: \"{request.body.ops}\", method: POST, url: /x}\n  response: {items: \"{response.body}\"}", `batch.response: missing required key "status"`},
		{"items item", "name: a\nmatch: {method: POST, path: /b}\nbatch:\n  request: {items: \"{item.ops}\", method: POST, url: /x}\n  response: {items: \"{response.body}\", status: \"{item.status}\"}", `batch.request.items: placeholder {item.ops}`},
		{"unknown key", "name: a\nmatch: {method: POST, path: /b}\nbatch:\n  " + ok + "\n  rollback: true", `batch: unknown key "rollback"`},
		{"atomic text", "name: a\nmatch: {method: POST, path: /b}\nbatch:\n  atomic: yes please\n  " + ok, `batch.atomic: want true or false`},
		{"where capture in batch", "name: a\nmatch: {method: POST, path: /b}\nbatch:\n  request: {items: \"{request.body.ops}\", method: POST, url: \"/x/{where.id}\"}\n  response: {items: \"{response.body}\", status: \"{item.status}\"}", `want the name of a capture group`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.yaml", []byte(ruleFile(tc.body)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("want an error containing\n  %s\ngot\n  %v", tc.want, err)
			}
		})
	}
}

// TestBatchSubStringsOwn holds the split to its promise: a sub-exchange's
// bodies and Location are views of the envelope's bodies, but its method,
// path and query are its own, and an event keeps nothing of the views
// (ownText), so a handler that reuses the envelope's buffers once the
// events are built cannot change them.
func TestBatchSubStringsOwn(t *testing.T) {
	s := mustSet(t, scimRules+`  - name: located
    match: {method: POST, path: /scim/v2/Users, status: 201}
    emit: {type: user.located, subject: "{response.header.Location}", tenant: "{last_segment(response.header.Location)}", data: {at: "{response.header.Location}"}}
`)
	ex := scimExchange(scimBulkRequest, scimBulkResponse, 200)
	m := s.Match(ex)
	b, err := m[0].Batch(ex)
	if err != nil || len(b.Subs) != 4 {
		t.Fatalf("batch: %+v %v", b, err)
	}
	type view struct{ method, path, query string }
	var before []view
	var events []Event
	var encoded []string
	for _, sub := range b.Subs {
		before = append(before, view{sub.Method, sub.Path, sub.RawQuery})
		for _, sm := range s.Match(sub) {
			evs, _ := sm.Events(sub, EmitOptions{Source: "t"})
			for _, ev := range evs {
				j, _ := ev.MarshalJSON()
				events, encoded = append(events, ev), append(encoded, string(j))
			}
		}
	}
	if before[0].method != "POST" || before[0].path != "/scim/v2/Users" || b.Subs[0].ResponseHeaders().Get("Location") != "https://example.com/scim/v2/Users/92b725cd" {
		t.Errorf("sub 0: %+v", before[0])
	}
	located := 0
	for _, ev := range events {
		if ev.Type == "user.located" {
			located++
			if !strings.HasPrefix(ev.Subject, "https://example.com/scim/v2/Users/") || ev.Tenant == "" {
				t.Errorf("located event: subject %q tenant %q", ev.Subject, ev.Tenant)
			}
		}
	}
	if located != 2 {
		t.Fatalf("%d user.located events, want 2", located)
	}
	for i := range ex.RequestBody {
		ex.RequestBody[i] = 'X'
	}
	for i := range ex.ResponseBody {
		ex.ResponseBody[i] = 'X'
	}
	for i, sub := range b.Subs {
		if got := (view{sub.Method, sub.Path, sub.RawQuery}); got != before[i] {
			t.Errorf("sub %d changed with the envelope's buffers: %+v, was %+v", i, got, before[i])
		}
	}
	for i, ev := range events {
		if j, _ := ev.MarshalJSON(); string(j) != encoded[i] {
			t.Errorf("event %d changed with the envelope's buffers:\n was %s\n now %s", i, encoded[i], j)
		}
	}
}

// TestBatchSynthesizedHeaders: a sub-exchange's response header is built
// only when asked for, and rules read it (conditions, placeholders) all
// the same.
func TestBatchSynthesizedHeaders(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: created
    match: {method: POST, path: /scim/v2/Users, response: {header: {Location: {regex: "/Users/"}, Content-Type: application/json}}}
    emit: {type: user.created, subject: "{last_segment(response.header.Location)}"}
  - name: deleted
    match: {method: DELETE, path: "/scim/v2/Users/{id}", response: {header: {Location: exists}}}
    emit: {type: user.deleted, subject: "{path.id}"}
  - name: bulk
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "{item.path}", body: "{item.data}"}
      response: {items: "{response.body.Operations}", status: "{item.status}", body: "{item.response}", location: "{item.location}"}
`)
	ex := scimExchange(scimBulkRequest, scimBulkResponse, 200)
	b, err := s.Match(ex)[0].Batch(ex)
	if err != nil || len(b.Subs) != 4 {
		t.Fatalf("batch: %+v %v", b, err)
	}
	var got []string
	for _, sub := range b.Subs {
		if sub.ResponseHeader != nil {
			t.Fatalf("sub %d: ResponseHeader built before anyone asked: %v", sub.SubIndex(), sub.ResponseHeader)
		}
		for _, sm := range s.Match(sub) {
			evs, errs := sm.Events(sub, EmitOptions{Source: "t"})
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			for _, ev := range evs {
				got = append(got, ev.Type+" "+ev.Subject)
			}
		}
		if sub.ResponseHeader != nil {
			t.Errorf("sub %d: rules built the header map: %v", sub.SubIndex(), sub.ResponseHeader)
		}
	}
	// the DELETE's sub-response names a Location; its body is none, so no Content-Type
	want := "user.created 92b725cd,user.created e9e30dba,user.deleted b7c14771-226c-4d05-8860-134711653041"
	if strings.Join(got, ",") != want {
		t.Errorf("events %q, want %q", strings.Join(got, ","), want)
	}
	del := b.Subs[2]
	if h := del.ResponseHeaders(); len(h) != 1 || h.Get("Location") == "" || del.ResponseHeader == nil {
		t.Errorf("DELETE sub-exchange's header: %v", h)
	}
	if h := b.Subs[3].ResponseHeaders(); h == nil || len(h) != 1 || h.Get("Location") == "" {
		t.Errorf("PATCH sub-exchange's header: %v", h)
	}
}

// TestBatchRequestsThenBatch: Batch after BatchRequests reuses the request
// side it split (when the request side reads nothing of the response) and
// gives what Batch alone gives; one that reads the response is split again.
func TestBatchRequestsThenBatch(t *testing.T) {
	s := mustSet(t, scimRules+`
  - name: bulk-by-response
    match: {method: POST, path: /v2/Bulk}
    batch:
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "/{response.body.schemas.0}{item.path}"}
      response: {items: "{response.body.Operations}", status: "{item.status}"}
`)
	summary := func(b Batch) string {
		var out []string
		for _, sub := range b.Subs {
			out = append(out, fmt.Sprintf("%d %s %s %d %s|%s", sub.SubIndex(), sub.Method, sub.Path, sub.Status, sub.RequestBody, sub.ResponseBody))
		}
		return fmt.Sprintf("%d/%d %s", b.Requests, b.Failed, strings.Join(out, ";"))
	}
	for _, path := range []string{"/scim/v2/Bulk", "/v2/Bulk"} {
		alone := scimExchange(scimBulkRequest, scimBulkResponse, 200)
		alone.Path = path
		b1, err1 := s.Match(alone)[0].Batch(alone)

		ex := scimExchange(scimBulkRequest, scimBulkResponse, 200)
		ex.Path = path
		mb := s.Match(ex) // the same rule and parameters MatchBefore gives
		if len(mb) != 1 {
			t.Fatalf("%s: Match: %s", path, names(mb))
		}
		reqs, err := mb[0].BatchRequests(ex)
		if err != nil || len(reqs) != 5 {
			t.Fatalf("%s: BatchRequests: %d, %v", path, len(reqs), err)
		}
		if static := path == "/scim/v2/Bulk"; (ex.batchSplit() != nil) != static {
			t.Errorf("%s: split kept = %v, want %v", path, ex.batchSplit() != nil, static)
		}
		b2, err2 := s.Match(ex)[0].Batch(ex)
		if summary(b1) != summary(b2) || fmt.Sprint(err1) != fmt.Sprint(err2) {
			t.Errorf("%s: Batch after BatchRequests\n got %s %v\nwant %s %v", path, summary(b2), err2, summary(b1), err1)
		}
	}
	// a changed request body is split again
	ex := scimExchange(scimBulkRequest, scimBulkResponse, 200)
	mb := s.Match(ex)
	if _, err := mb[0].BatchRequests(ex); err != nil {
		t.Fatal(err)
	}
	ex.RequestBody = []byte(strings.Replace(scimBulkRequest, `"path":"/Users/b7c1`, `"path":"/Users/zzzz`, 1))
	ex.bodies[0] = parsedBody{}
	b, _ := s.Match(ex)[0].Batch(ex)
	if len(b.Subs) != 4 || b.Subs[2].Path != "/scim/v2/Users/zzzz4771-226c-4d05-8860-134711653041" {
		t.Errorf("after the body changed: %s", summary(b))
	}
}
