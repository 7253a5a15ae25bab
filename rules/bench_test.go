package rules

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
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
