package rules

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

const scimBeforeRules = `version: 1
rules:
  - name: deleted
    match: {method: DELETE, path: "/scim/v2/Users/{id}", request: {header: {Authorization: exists}}}
    lookup: {get: "/scim/v2/Users/{path.id}", as: old, when: before}
    emit: {type: user.deleted, subject: "{path.id}", data: "{old.body}"}
  - name: replaced
    match: {method: PUT, path: "/scim/v2/Users/{id}", request: {body: {active: {equals: false}}}}
    lookup: {get: "/scim/v2/Users/{path.id}?v={request.body.v}", as: old, when: before}
    emit: {type: user.deactivated, subject: "{path.id}", data: "{old.body}"}
  - name: created
    match: {method: POST, path: /scim/v2/Users, status: 201}
    emit: {type: user.created, subject: "{response.body.id}"}
  - name: bulk
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", id: "{item.bulkId}", method: "{item.method}", url: "{item.path}", body: "{item.data}"}
      response: {items: "{response.body.Operations}", id: "{item.bulkId}", status: "{item.status}"}
`

// The request side of a batch envelope is split before forwarding, and its
// sub-requests match the rules with before-lookups on their method, path,
// host and request conditions; their positions are those of the
// sub-exchanges after the response, however the answers are paired.
func TestMatchBeforeSplitsBatchRequests(t *testing.T) {
	s := mustSet(t, scimBeforeRules)
	if need, _ := s.Plan("POST", "/scim/v2/Bulk"); !need.BeforeLookups || !need.RequestBody {
		t.Fatalf("Plan of the envelope: %+v", need)
	}
	ex := scimExchange(`{"Operations":[
	  {"bulkId":"a","method":"POST","path":"/Users","data":{"userName":"x"}},
	  {"bulkId":"b","method":"delete","path":"/Users/u_2"},
	  {"bulkId":"c","method":"","path":"/Users/u_9"},
	  {"bulkId":"d","method":"PUT","path":"/Users/u_3","data":{"active":false,"v":7}},
	  {"bulkId":"e","method":"PUT","path":"/Users/u_4","data":{"active":true}}
	]}`, `{"Operations":[{"bulkId":"d","status":"200"},{"bulkId":"b","status":"204"},{"bulkId":"a","status":"201"}]}`, 0)
	ms := s.MatchBefore(ex)
	if len(ms) != 1 || !ms[0].IsBatch() {
		t.Fatalf("MatchBefore of the envelope: %s", names(ms))
	}
	subs, err := ms[0].BatchRequests(ex)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sub := range subs {
		line := sub.Method + " " + sub.Path + " " + strconv.Itoa(sub.SubIndex())
		for _, m := range s.MatchBefore(sub) {
			for i := 0; i < m.NumLookups(); i++ {
				line += " " + m.Rule.Name + ":" + m.Lookup(i, sub).Path
			}
		}
		got = append(got, line)
	}
	want := []string{
		"POST /scim/v2/Users 0",
		"DELETE /scim/v2/Users/u_2 1 deleted:/scim/v2/Users/u_2",
		"PUT /scim/v2/Users/u_3 3 replaced:/scim/v2/Users/u_3?v=7",
		"PUT /scim/v2/Users/u_4 4",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("sub-requests:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// after the response: the same positions, paired by bulkId
	ex.Status = 200
	bt, _ := s.Match(ex)[0].Batch(ex)
	got = nil
	for _, sub := range bt.Subs {
		got = append(got, sub.Method+" "+sub.Path+" "+strconv.Itoa(sub.SubIndex()))
	}
	if strings.Join(got, ",") != "POST /scim/v2/Users 0,DELETE /scim/v2/Users/u_2 1,PUT /scim/v2/Users/u_3 3" {
		t.Errorf("sub-exchanges: %v", got)
	}

	// the envelope's credentials are the sub-requests': without them the
	// delete rule's request condition fails before forwarding too
	ex.RequestHeader.Del("Authorization")
	subs, _ = s.MatchBefore(ex)[0].BatchRequests(ex)
	for _, sub := range subs {
		for _, m := range s.MatchBefore(sub) {
			if m.Rule.Name == "deleted" {
				t.Errorf("the delete rule matched a sub-request without credentials")
			}
		}
	}

	// a set without before-lookups has nothing to do before forwarding
	plain := mustSet(t, strings.Replace(strings.Replace(scimBeforeRules,
		`    lookup: {get: "/scim/v2/Users/{path.id}", as: old, when: before}
    emit: {type: user.deleted, subject: "{path.id}", data: "{old.body}"}`, `    emit: {type: user.deleted, subject: "{path.id}"}`, 1),
		`    lookup: {get: "/scim/v2/Users/{path.id}?v={request.body.v}", as: old, when: before}
    emit: {type: user.deactivated, subject: "{path.id}", data: "{old.body}"}`, `    emit: {type: user.deactivated, subject: "{path.id}"}`, 1))
	if need, _ := plain.Plan("POST", "/scim/v2/Bulk"); need.BeforeLookups || len(plain.MatchBefore(ex)) != 0 {
		t.Errorf("a set without before-lookups: Plan %+v, MatchBefore %d", need, len(plain.MatchBefore(ex)))
	}
}

// A hostile envelope is split within MaxBatchOps before forwarding too.
func TestBatchRequestsBounded(t *testing.T) {
	s := mustSet(t, scimBeforeRules)
	var b strings.Builder
	b.WriteString(`{"Operations":[`)
	for i := range MaxBatchOps + 500 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"method":"DELETE","path":"/Users/x"}`)
	}
	b.WriteString(`]}`)
	ex := &Exchange{Method: "POST", Path: "/scim/v2/Bulk", RequestHeader: http.Header{"Authorization": {"Bearer t"}, "Content-Type": {"application/json"}}, RequestBody: []byte(b.String())}
	subs, err := s.MatchBefore(ex)[0].BatchRequests(ex)
	var ee *EmitError
	if len(subs) != MaxBatchOps || err == nil || !errors.As(err, &ee) || ee.Reason != RefusedTooManyOps || ee.Count != 500 {
		t.Fatalf("%d sub-requests, %v", len(subs), err)
	}
}
