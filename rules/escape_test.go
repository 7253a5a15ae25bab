package rules

import (
	"strings"
	"testing"
)

func TestLookupPathDotSegmentsAreEscaped(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x}
    lookup: {get: "/lk/{request.body.x}/end?q={request.body.x}", as: u}
    emit: {type: a.b, data: "{u.body}"}
`)
	for _, tc := range []struct{ x, want string }{
		{"..", "/lk/%2E%2E/end?q=.."},
		{".", "/lk/%2E/end?q=."},
		{"../admin", "/lk/..%2Fadmin/end?q=..%2Fadmin"},
		{"%2e%2e", "/lk/%252e%252e/end?q=%252e%252e"},
		{"...", "/lk/.../end?q=..."},
		{"u_1", "/lk/u_1/end?q=u_1"},
	} {
		ex := &Exchange{Method: "POST", Path: "/x", Status: 200, RequestBody: []byte(`{"x":` + string(appendQuote(nil, tc.x)) + `}`)}
		if got := s.Match(ex)[0].Lookup(0, ex).Path; got != tc.want {
			t.Errorf("x=%q: lookup path %q, want %q", tc.x, got, tc.want)
		}
	}
}

func TestDedupeIDDependsOnTheResult(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users}
    emit:
      type: user.created
      data: {email: "{request.body.email}"}
      dedupe: "{request.header.Idempotency-Key}"
`)
	if need, _ := s.Plan("POST", "/api/users"); !need.ResponseBody {
		t.Error("a dedupe rule must have its response captured, for the id")
	}
	if s.Rules()[0].Need().ResponseBody {
		t.Error("a dedupe rule must still emit when its response was too large to capture")
	}
	id := func(status int, resp, email string) string {
		t.Helper()
		ex := &Exchange{Method: "POST", Path: "/api/users", Status: status,
			RequestHeader: map[string][]string{"Idempotency-Key": {"k1"}},
			RequestBody:   []byte(`{"email":"` + email + `"}`)}
		if resp != "" {
			ex.ResponseBody = []byte(resp)
		}
		evs := eval(t, s, ex)
		if len(evs) != 1 || evs[0].DedupeWindow == 0 {
			t.Fatalf("events %+v", evs)
		}
		return evs[0].ID
	}
	first := id(201, `{"id":"u_1"}`, "a@x.test")
	if again := id(201, `{"id":"u_1"}`, "a@x.test"); again != first {
		t.Errorf("a true retry (same key, same result) must keep the id: %s vs %s", again, first)
	}
	for name, other := range map[string]string{
		"another response body": id(201, `{"id":"u_2"}`, "a@x.test"),
		"another status":        id(200, `{"id":"u_1"}`, "a@x.test"),
		"other data":            id(201, `{"id":"u_1"}`, "b@x.test"),
		"response not captured": id(201, "", "a@x.test"),
	} {
		if other == first {
			t.Errorf("%s: shares the id of a distinct mutation", name)
		}
		if !strings.HasPrefix(other, "evt_") || len(other) != 30 {
			t.Errorf("%s: id %q", name, other)
		}
	}
}

func TestParseErrorsCutLongValues(t *testing.T) {
	long := strings.Repeat("X", 500<<10)
	_, err := Parse("r.yaml", []byte(ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: \""+long+" \"}")))
	if err == nil || len(err.Error()) > 1000 || !strings.Contains(err.Error(), "…(512001 bytes)") {
		t.Fatalf("error of %d bytes: %.300v", len(err.Error()), err)
	}
}
