package rules

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// benchRules builds 500 rules over 100 resources, five routes each, with
// conditions and extraction, the shape of a large real rule pack.
func benchRules(tb testing.TB) *Set {
	s := mustSet(tb, "version: 1\nrules:\n"+benchRulesText())
	if len(s.Rules()) != 500 {
		tb.Fatalf("want 500 rules, got %d", len(s.Rules()))
	}
	return s
}

// benchRulesText is the rules: list of benchRules.
func benchRulesText() string {
	var b strings.Builder
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&b, `  - name: res%[1]d-created
    match: {method: POST, path: /api/res%[1]d, status: [200, 201], response: {body: {"item.id": exists}}}
    emit: {type: res%[1]d.created, subject: "{response.body.item.id}", data: {id: "{response.body.item.id}", email: "{response.body.item.email}", name: "{request.body.name}", tenant: "{request.header.X-Tenant}"}}
  - name: res%[1]d-updated
    match: {method: [PUT, PATCH], path: "/api/res%[1]d/{id}"}
    emit: {type: res%[1]d.updated, subject: "{path.id}", data: "{response.body.item}"}
  - name: res%[1]d-deleted
    match: {method: DELETE, path: "/api/res%[1]d/{id}", status: 204}
    emit: {type: res%[1]d.deleted, subject: "{path.id}", data: {id: "{path.id}"}}
  - name: res%[1]d-member-added
    match: {method: POST, path: "/api/res%[1]d/{id}/members/{user}", request: {body: {role: {one_of: [admin, member]}}}}
    emit: {type: res%[1]d.member_added, subject: "{path.id}", data: {id: "{path.id}", user: "{path.user}", role: "{request.body.role}"}}
  - name: res%[1]d-files
    match: {method: PUT, path: "/api/res%[1]d/{id}/files/{path...}"}
    emit: {type: res%[1]d.file_uploaded, subject: "{path.id}", data: {path: "{path.path}"}}
`, i)
	}
	return b.String()
}

// BenchmarkNoMatch500 is the hot path for traffic no rule cares about: the
// question the handler asks before buffering anything.
func BenchmarkNoMatch500(b *testing.B) {
	s := benchRules(b)
	// GET traffic, and mutations on routes no rule covers (same methods as the rules)
	methods := []string{"GET", "POST", "PUT", "DELETE"}
	paths := []string{"/api/res42/123", "/api/res99/u_1/avatar", "/api/res7", "/api/res42/u_1/members"}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if s.CanMatch(methods[i&3], paths[i&3]) {
			b.Fatal("matched")
		}
	}
}

// BenchmarkNoMatchFull500 runs the full Match on an exchange that no rule
// matches (right path, wrong status), to show it costs no scan either.
func BenchmarkNoMatchFull500(b *testing.B) {
	s := benchRules(b)
	ex := &Exchange{Method: "DELETE", Path: "/api/res42/u_1", Status: 500}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(s.Match(ex)) != 0 {
			b.Fatal("matched")
		}
	}
}

const benchResponse = `{"item":{"id":"u_1234567890","email":"ann@example.test","name":"Ann Example","roles":["admin","billing"],
"profile":{"locale":"en-GB","timezone":"Europe/London","avatar":"https://cdn.example.test/a/u_1234567890.png"},
"password_hash":"$2b$12$abcdefghijklmnopqrstuv","created_at":"2026-11-23T10:00:00Z","updated_at":"2026-11-23T10:00:00Z"},"meta":{"request_id":"req_1"}}`

// BenchmarkMatchExtract500 matches a sign-up among 500 rules and builds its event.
func BenchmarkMatchExtract500(b *testing.B) {
	s := benchRules(b)
	reqH := http.Header{"X-Tenant": {"t_1"}, "Content-Type": {"application/json"}}
	respH := http.Header{"Content-Type": {"application/json"}}
	reqBody := []byte(`{"name":"Ann Example","email":"ann@example.test","password":"s3cret"}`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ex := &Exchange{Method: "POST", Path: "/api/res42", Status: 201, RequestHeader: reqH, RequestBody: reqBody, ResponseHeader: respH, ResponseBody: []byte(benchResponse)}
		ms := s.Match(ex)
		if len(ms) != 1 {
			b.Fatalf("%d matches", len(ms))
		}
		evs, _ := ms[0].Events(ex, EmitOptions{Source: "bench"})
		if len(evs) != 1 {
			b.Fatal("no event")
		}
	}
}

// BenchmarkMatchExtractWhole500 takes the whole object as data (redaction walk included).
func BenchmarkMatchExtractWhole500(b *testing.B) {
	s := benchRules(b)
	respH := http.Header{"Content-Type": {"application/json"}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ex := &Exchange{Method: "PATCH", Path: "/api/res42/u_1234567890", Status: 200, ResponseHeader: respH, ResponseBody: []byte(benchResponse)}
		ms := s.Match(ex)
		evs, _ := ms[0].Events(ex, EmitOptions{Source: "bench"})
		if len(evs) != 1 || strings.Contains(string(evs[0].Data), "$2b$") {
			b.Fatal("bad event")
		}
	}
}

func BenchmarkLoad500(b *testing.B) {
	for i := 0; i < b.N; i++ {
		benchRules(b)
	}
}

// BenchmarkBaselineServeMux500 is the yardstick for BenchmarkNoMatch500: the
// standard library's router deciding about the same requests over the same
// 500 routes (what any Go HTTP server already pays per request).
func BenchmarkBaselineServeMux500(b *testing.B) {
	mux := http.NewServeMux()
	h := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	for i := 0; i < 100; i++ {
		mux.Handle(fmt.Sprintf("POST /api/res%d", i), h)
		mux.Handle(fmt.Sprintf("PUT /api/res%d/{id}", i), h)
		mux.Handle(fmt.Sprintf("DELETE /api/res%d/{id}", i), h)
		mux.Handle(fmt.Sprintf("POST /api/res%d/{id}/members/{user}", i), h)
		mux.Handle(fmt.Sprintf("PUT /api/res%d/{id}/files/{path...}", i), h)
	}
	methods := []string{"GET", "POST", "PUT", "DELETE"}
	paths := []string{"/api/res42/123", "/api/res99/u_1/avatar", "/api/res7", "/api/res42/u_1/members"}
	reqs := make([]*http.Request, 4)
	for i := range reqs {
		reqs[i], _ = http.NewRequest(methods[i], paths[i], nil)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, p := mux.Handler(reqs[i&3]); p != "" {
			b.Fatal("matched")
		}
	}
}

// benchBatch is a SCIM /Bulk of 50 operations (20 creates, 15 replaces, 10
// deletes, 5 group PATCHes of two member adds each: 55 events) and its
// answer, over the SCIM rules of batch_test.go plus the 500 rules above.
func benchBatch(tb testing.TB) (*Set, func() *Exchange, []*Exchange) {
	s := mustSet(tb, scimRules+benchRulesText())
	var rq, rs strings.Builder
	rq.WriteString(`{"schemas":["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],"Operations":[`)
	rs.WriteString(`{"schemas":["urn:ietf:params:scim:api:messages:2.0:BulkResponse"],"Operations":[`)
	for i := 0; i < 50; i++ {
		if i > 0 {
			rq.WriteString(",")
			rs.WriteString(",")
		}
		id := fmt.Sprintf("2819c223-7f76-453a-919d-%012d", i)
		switch {
		case i < 20:
			fmt.Fprintf(&rq, `{"method":"POST","path":"/Users","bulkId":"b%d","data":{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"user%d","name":{"givenName":"Ann","familyName":"Example"},"emails":[{"value":"user%d@example.test","primary":true}],"password":"s3cret-%d"}}`, i, i, i, i)
			fmt.Fprintf(&rs, `{"method":"POST","bulkId":"b%d","location":"https://example.test/scim/v2/Users/%s","status":"201","response":{"id":%q,"userName":"user%d","meta":{"resourceType":"User","created":"2026-12-01T10:00:00Z"}}}`, i, id, id, i)
		case i < 35:
			fmt.Fprintf(&rq, `{"method":"PUT","path":"/Users/%s","data":{"userName":"user%d","active":false}}`, id, i)
			fmt.Fprintf(&rs, `{"method":"PUT","location":"https://example.test/scim/v2/Users/%s","status":"200","response":{"id":%q,"active":false}}`, id, id)
		case i < 45:
			fmt.Fprintf(&rq, `{"method":"DELETE","path":"/Users/%s"}`, id)
			fmt.Fprintf(&rs, `{"method":"DELETE","location":"https://example.test/scim/v2/Users/%s","status":"204"}`, id)
		default:
			fmt.Fprintf(&rq, `{"method":"PATCH","path":"/Groups/g%d","data":{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[{"op":"Add","path":"members","value":[{"value":"m%d-1"},{"value":"m%d-2"}]}]}}`, i, i, i)
			fmt.Fprintf(&rs, `{"method":"PATCH","location":"https://example.test/scim/v2/Groups/g%d","status":"200"}`, i)
		}
	}
	rq.WriteString("]}")
	rs.WriteString("]}")
	reqBody, respBody := []byte(rq.String()), []byte(rs.String())
	reqH := http.Header{"Authorization": {"Bearer t"}, "Content-Type": {"application/scim+json"}}
	respH := http.Header{"Content-Type": {"application/scim+json"}}
	envelope := func() *Exchange {
		return &Exchange{Method: "POST", Host: "scim.example.test", Path: "/scim/v2/Bulk", Status: 200,
			RequestHeader: reqH, RequestBody: reqBody, ResponseHeader: respH, ResponseBody: respBody}
	}
	// the same 50 operations as exchanges of their own: the baseline
	b, err := s.Match(envelope())[0].Batch(envelope())
	if err != nil || len(b.Subs) != 50 {
		tb.Fatalf("batch: %d subs, %v", len(b.Subs), err)
	}
	return s, envelope, b.Subs
}

// matchAndRender is what the handler does with an exchange before it
// queues the events: match it (a batch: split it, and match each
// sub-exchange) and build every event. It returns how many there were.
func matchAndRender(s *Set, ex *Exchange) int {
	n := 0
	for _, m := range s.Match(ex) {
		if m.IsBatch() {
			bt, _ := m.Batch(ex)
			for _, sub := range bt.Subs {
				for _, sm := range s.Match(sub) {
					evs, _ := sm.Events(sub, EmitOptions{Source: "bench"})
					n += len(evs)
				}
			}
			continue
		}
		evs, _ := m.Events(ex, EmitOptions{Source: "bench"})
		n += len(evs)
	}
	return n
}

// BenchmarkBatch50 matches a SCIM /Bulk of 50 operations, splits it, matches
// every sub-exchange among 505 rules and builds its 55 events, as the
// handler does.
func BenchmarkBatch50(b *testing.B) {
	s, envelope, _ := benchBatch(b)
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPUMicros(b)()
	for i := 0; i < b.N; i++ {
		if n := matchAndRender(s, envelope()); n != 55 {
			b.Fatalf("%d events", n)
		}
	}
}

// BenchmarkBatch50Split is the part of BenchmarkBatch50 that a batch adds:
// matching the envelope and splitting it into its 50 sub-exchanges.
func BenchmarkBatch50Split(b *testing.B) {
	s, envelope, _ := benchBatch(b)
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPUMicros(b)()
	for i := 0; i < b.N; i++ {
		ex := envelope()
		if bt, err := s.Match(ex)[0].Batch(ex); len(bt.Subs) != 50 || err != nil {
			b.Fatalf("%d subs, %v", len(bt.Subs), err)
		}
	}
}

// reportCPUMicros starts measuring CPU time; the function it returns
// reports cpu-µs/op (steadier than wall time on a shared box).
func reportCPUMicros(b *testing.B) func() {
	start := processCPU()
	return func() {
		if d := processCPU() - start; d > 0 && b.N > 0 {
			b.ReportMetric(float64(d)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
		}
	}
}

// BenchmarkBatch50Baseline is its yardstick: the same 50 operations sent as
// 50 exchanges of their own, each matched and its events built.
func BenchmarkBatch50Baseline(b *testing.B) {
	s, _, subs := benchBatch(b)
	exs := make([]Exchange, len(subs))
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPUMicros(b)()
	for i := 0; i < b.N; i++ {
		n := 0
		for j, sub := range subs {
			// a fresh exchange, as the handler builds for every request
			exs[j] = Exchange{Method: sub.Method, Host: sub.Host, Path: sub.Path, Status: sub.Status,
				RequestHeader: sub.RequestHeader, RequestBody: sub.RequestBody, ResponseHeader: sub.ResponseHeaders(), ResponseBody: sub.ResponseBody}
			n += matchAndRender(s, &exs[j])
		}
		if n != 55 {
			b.Fatalf("%d events", n)
		}
	}
}

// BenchmarkBatch50SplitBeforeAfter is the split when the envelope's
// sub-requests have before-lookups: BatchRequests before the request is
// forwarded, then Batch after the response (which reuses the request side).
func BenchmarkBatch50SplitBeforeAfter(b *testing.B) {
	s, envelope, _ := benchBatch(b)
	b.ReportAllocs()
	b.ResetTimer()
	defer reportCPUMicros(b)()
	for i := 0; i < b.N; i++ {
		ex := envelope()
		m := s.Match(ex)[0]
		if reqs, err := m.BatchRequests(ex); len(reqs) != 50 || err != nil {
			b.Fatalf("%d sub-requests, %v", len(reqs), err)
		}
		if bt, err := m.Batch(ex); len(bt.Subs) != 50 || err != nil {
			b.Fatalf("%d subs, %v", len(bt.Subs), err)
		}
	}
}
