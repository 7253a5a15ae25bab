package rules

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// benchSCIMRules are the SCIM 2.0 user and group rules of a /Bulk (the
// shape of the batch benchmark's), the group's two member adds written as
// two emits.
const benchSCIMRules = scimUserRules + `  - name: scim-group-members
    match: {method: PATCH, path: "/scim/v2/Groups/{id}"}
    emit:
      - type: group.member_added
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{request.body.Operations.0.value.0.value}"}
      - type: group.member_added
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{request.body.Operations.0.value.1.value}"}
`

// benchSCIM55 is the 50 operations of a SCIM /Bulk as 50 exchanges of their
// own (20 creates, 15 replaces, 10 deletes, 5 group PATCHes of two member
// adds each: 55 events), shaped as a batch's sub-exchanges are, over the
// SCIM rules plus the 500 of benchRules.
func benchSCIM55(tb testing.TB) (*Set, []Exchange) {
	s := mustSet(tb, benchSCIMRules+benchRulesText())
	reqH := http.Header{"Authorization": {"Bearer t"}, "Content-Type": {"application/json"}}
	jsonH := http.Header{"Content-Type": {"application/json"}}
	var exs []Exchange
	for i := 0; i < 50; i++ {
		id := fmt.Sprintf("2819c223-7f76-453a-919d-%012d", i)
		loc := "https://example.test/scim/v2/Users/" + id
		ex := Exchange{Host: "scim.example.test", RequestHeader: reqH}
		switch {
		case i < 20:
			ex.Method, ex.Path, ex.Status = "POST", "/scim/v2/Users", 201
			ex.RequestBody = fmt.Appendf(nil, `{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"user%d","name":{"givenName":"Ann","familyName":"Example"},"emails":[{"value":"user%d@example.test","primary":true}],"password":"s3cret-%d"}`, i, i, i)
			ex.ResponseBody = fmt.Appendf(nil, `{"id":%q,"userName":"user%d","meta":{"resourceType":"User","created":"2026-12-01T10:00:00Z"}}`, id, i)
			ex.ResponseHeader = http.Header{"Location": {loc}, "Content-Type": {"application/json"}}
		case i < 35:
			ex.Method, ex.Path, ex.Status = "PUT", "/scim/v2/Users/"+id, 200
			ex.RequestBody = fmt.Appendf(nil, `{"userName":"user%d","active":false}`, i)
			ex.ResponseBody = fmt.Appendf(nil, `{"id":%q,"active":false}`, id)
			ex.ResponseHeader = http.Header{"Location": {loc}, "Content-Type": {"application/json"}}
		case i < 45:
			ex.Method, ex.Path, ex.Status = "DELETE", "/scim/v2/Users/"+id, 204
			ex.ResponseHeader = http.Header{"Location": {loc}}
		default:
			ex.Method, ex.Path, ex.Status = "PATCH", fmt.Sprintf("/scim/v2/Groups/g%d", i), 200
			ex.RequestBody = fmt.Appendf(nil, `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"Add","path":"members","value":[{"value":"m%d-1"},{"value":"m%d-2"}]}]}`, i, i)
			ex.ResponseHeader = jsonH
		}
		exs = append(exs, ex)
	}
	return s, exs
}

// freshSCIM55 copies the exchanges into exs as the handler builds them for
// every request: nothing parsed yet.
func freshSCIM55(exs, src []Exchange) {
	for j := range src {
		sub := &src[j]
		exs[j] = Exchange{Method: sub.Method, Host: sub.Host, Path: sub.Path, Status: sub.Status,
			RequestHeader: sub.RequestHeader, RequestBody: sub.RequestBody, ResponseHeader: sub.ResponseHeader, ResponseBody: sub.ResponseBody}
	}
}

// BenchmarkEvents55 matches 50 SCIM exchanges among 504 rules and builds
// their 55 events: the per-event cost of the shared event builder, which a
// batch of 50 sub-exchanges pays too. BenchmarkEvents55Match is its
// matching share; the difference over 55 is the cost of building one event.
func BenchmarkEvents55(b *testing.B) { benchEvents55(b, false, true) }

// BenchmarkEvents55Parsed is BenchmarkEvents55 with the bodies known to be
// JSON already, as a batch's sub-exchanges are (cut from a body checked
// once): what building the events costs without checking the bodies.
func BenchmarkEvents55Parsed(b *testing.B) { benchEvents55(b, true, true) }

// BenchmarkEvents55Match is BenchmarkEvents55 without building the events.
func BenchmarkEvents55Match(b *testing.B) { benchEvents55(b, false, false) }

// benchEvents55 runs the events benchmarks: each round, fresh exchanges
// (their bodies marked as JSON already when parsed), matched, and their
// events built when build says so.
func benchEvents55(b *testing.B, parsed, build bool) {
	s, src := benchSCIM55(b)
	exs := make([]Exchange, len(src))
	o := EmitOptions{Source: "bench"}
	want := 50 // matches
	if build {
		want = 55 // events
	}
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPUMicros(b)()
	for i := 0; i < b.N; i++ {
		freshSCIM55(exs, src)
		n := 0
		for j := range exs {
			ex := &exs[j]
			if parsed {
				if ex.RequestBody != nil {
					ex.bodies[0] = parsedBody{done: true, ok: true, json: ex.RequestBody}
				}
				if ex.ResponseBody != nil {
					ex.bodies[1] = parsedBody{done: true, ok: true, json: ex.ResponseBody}
				}
			}
			for _, m := range s.Match(ex) {
				if !build {
					n++
					continue
				}
				evs, _ := m.Events(ex, o)
				n += len(evs)
			}
		}
		if n != want {
			b.Fatalf("%d, want %d", n, want)
		}
	}
}

// TestEvents55 checks what BenchmarkEvents55 builds, so that a faster
// builder is not a different one.
func TestEvents55(t *testing.T) {
	s, src := benchSCIM55(t)
	var got []string
	for j := range src {
		for _, m := range s.Match(&src[j]) {
			evs, errs := m.Events(&src[j], EmitOptions{Source: "bench", Now: time.Unix(1764583200, 0)})
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			for _, ev := range evs {
				ev.ID = ""
				b, err := ev.MarshalJSON()
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, string(b))
			}
		}
	}
	if len(got) != 55 {
		t.Fatalf("%d events", len(got))
	}
	want := map[int]string{
		0:  `{"id":"","type":"user.created","timestamp":"2025-12-01T10:00:00.000Z","subject":"2819c223-7f76-453a-919d-000000000000","data":{"id":"2819c223-7f76-453a-919d-000000000000","userName":"user0","location":"https://example.test/scim/v2/Users/2819c223-7f76-453a-919d-000000000000"},"source":{"name":"bench","rule":"scim-user-created"},"mode":"live"}`,
		20: `{"id":"","type":"user.updated","timestamp":"2025-12-01T10:00:00.000Z","subject":"2819c223-7f76-453a-919d-000000000020","data":{"id":"2819c223-7f76-453a-919d-000000000020","active":false},"source":{"name":"bench","rule":"scim-user-replaced"},"mode":"live"}`,
		35: `{"id":"","type":"user.deleted","timestamp":"2025-12-01T10:00:00.000Z","subject":"2819c223-7f76-453a-919d-000000000035","data":{"id":"2819c223-7f76-453a-919d-000000000035"},"source":{"name":"bench","rule":"scim-user-deleted"},"mode":"live"}`,
		54: `{"id":"","type":"group.member_added","timestamp":"2025-12-01T10:00:00.000Z","subject":"g49","data":{"group":"g49","member":"m49-2"},"source":{"name":"bench","rule":"scim-group-members"},"mode":"live"}`,
	}
	for i, w := range want {
		if got[i] != w {
			t.Errorf("event %d:\n got %s\nwant %s", i, got[i], w)
		}
	}
}
