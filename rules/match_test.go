package rules

import (
	"fmt"
	"math/rand"
	"net/http"
	"strings"
	"testing"
)

func mustSet(t testing.TB, src string) *Set {
	t.Helper()
	f, err := Parse("t.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewSet(f)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func names(ms []*Match) string {
	var out []string
	for _, m := range ms {
		s := m.Rule.Name
		for _, p := range m.Params {
			s += fmt.Sprintf(" %s=%s", p.Name, p.Value)
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}

func TestPathTemplates(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - {name: list, match: {method: POST, path: /api/users}, emit: {type: a.a}}
  - {name: one, match: {method: PUT, path: "/api/users/{id}"}, emit: {type: a.a}}
  - {name: me, match: {method: PUT, path: /api/users/me}, emit: {type: a.a}}
  - {name: member, match: {method: POST, path: "/orgs/{org}/members/{user}"}, emit: {type: a.a}}
  - {name: files, match: {method: PUT, path: "/files/{path...}"}, emit: {type: a.a}}
  - {name: root, match: {method: POST, path: /}, emit: {type: a.a}}
  - {name: slash, match: {method: POST, path: /api/users/}, emit: {type: a.a}}
  - {name: anym, match: {method: "*", path: "/any/{x}"}, emit: {type: a.a}}
`)
	for _, tc := range []struct{ method, path, want string }{
		{"POST", "/api/users", "list"},
		{"POST", "/api/users/", "slash"},
		{"GET", "/api/users", ""},
		{"PUT", "/api/users/u1", "one id=u1"},
		{"PUT", "/api/users/me", "one id=me; me"},
		{"PUT", "/api/users/u1/x", ""},
		{"PUT", "/api/users//", ""},
		{"PUT", "/api/users/", ""},
		{"POST", "/orgs/o1/members/u2", "member org=o1 user=u2"},
		{"POST", "/orgs//members/u2", ""},
		{"PUT", "/files/a/b/c.txt", "files path=a/b/c.txt"},
		{"PUT", "/files/", ""},
		{"PUT", "/files", ""},
		{"POST", "/", "root"},
		{"DELETE", "/any/1", "anym x=1"},
		{"POST", "", ""},
		{"POST", "api/users", ""},
	} {
		ex := &Exchange{Method: tc.method, Path: tc.path, Status: 200}
		got := names(s.Match(ex))
		if got != tc.want {
			t.Errorf("%s %s: got %q want %q", tc.method, tc.path, got, tc.want)
		}
		if can := s.CanMatch(tc.method, tc.path); can != (tc.want != "") {
			t.Errorf("%s %s: CanMatch=%v want %v", tc.method, tc.path, can, tc.want != "")
		}
	}
}

// TestIndexAgreesWithScan checks the trie against a plain scan over every rule
// on random templates and paths.
func TestIndexAgreesWithScan(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	segs := []string{"a", "b", "users", "{id}", "{x}", ""}
	paths := []string{}
	var b strings.Builder
	b.WriteString("version: 1\nrules:\n")
	for i := 0; i < 300; i++ {
		n := rng.Intn(4)
		p := ""
		for j := 0; j < n; j++ {
			s := segs[rng.Intn(len(segs)-1)]
			if s == "{id}" || s == "{x}" {
				s = fmt.Sprintf("{p%d}", j)
			}
			p += "/" + s
		}
		if rng.Intn(6) == 0 {
			p += fmt.Sprintf("/{rest%d...}", n)
		}
		if p == "" {
			p = "/"
		}
		m := []string{"POST", "PUT", "*"}[rng.Intn(3)]
		fmt.Fprintf(&b, "  - {name: r%d, match: {method: %q, path: %q}, emit: {type: a.b}}\n", i, m, p)
	}
	s := mustSet(t, b.String())
	for i := 0; i < 3000; i++ {
		n := rng.Intn(5)
		p := ""
		for j := 0; j < n; j++ {
			p += "/" + []string{"a", "b", "users", "7", "", "zz"}[rng.Intn(6)]
		}
		if p == "" {
			p = "/"
		}
		paths = append(paths, p)
	}
	for _, p := range paths {
		for _, m := range []string{"POST", "PUT", "GET"} {
			var want []string
			for _, r := range s.rules {
				okM := false
				for _, rm := range r.methods {
					okM = okM || rm == m || rm == "*"
				}
				if !okM {
					continue
				}
				for _, pt := range r.paths {
					if _, ok := pt.match(p, nil); ok {
						want = append(want, r.Name)
						break
					}
				}
			}
			var got []string
			for _, mm := range s.Match(&Exchange{Method: m, Path: p, Status: 200}) {
				got = append(got, mm.Rule.Name)
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("%s %q: index gives %v, scan gives %v", m, p, got, want)
			}
			if s.CanMatch(m, p) != (len(want) > 0) {
				t.Fatalf("%s %q: CanMatch=%v, scan found %v", m, p, !(len(want) > 0), want)
			}
			if _, ok := s.Plan(m, p); ok != (len(want) > 0) {
				t.Fatalf("%s %q: Plan ok=%v, scan found %v", m, p, ok, want)
			}
		}
	}
}

func TestConditions(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match:
      method: POST
      path: /x
      host: [auth.example.com, "*.example.org"]
      status: [201, 3xx]
      request:
        header: {X-Tenant: exists, x-kind: {one_of: [a, b]}, X-Num: 42}
        cookie: {session: {regex: "^s_"}}
        query: {force: "true", gone: absent}
        body: {role: [admin, owner], age: {gte: 18, lt: 65}, "tags.#": {gt: 0}, active: true, note: null, score: 1.5, name: {not_equals: root}}
      response:
        header: {Location: {regex: "^/users/"}}
        cookie: {sid: exists}
        body: {"user.id": exists, "user.deleted": absent}
    emit: {type: a.b}
`)
	base := func() *Exchange {
		return &Exchange{
			Method: "POST", Host: "auth.example.com:443", Path: "/x", RawQuery: "force=true",
			RequestHeader:  http.Header{"X-Tenant": {"t1"}, "X-Kind": {"b"}, "X-Num": {"42"}, "Cookie": {"a=1; session=s_abc"}, "Content-Type": {"application/json"}},
			RequestBody:    []byte(`{"role":"owner","age":30,"tags":["x"],"active":true,"note":null,"score":1.5,"name":"ann"}`),
			Status:         201,
			ResponseHeader: http.Header{"Location": {"/users/1"}, "Set-Cookie": {"sid=abc; Path=/; HttpOnly"}},
			ResponseBody:   []byte(`{"user":{"id":"u1"}}`),
		}
	}
	if got := names(s.Match(base())); got != "r" {
		t.Fatalf("base exchange does not match: %q", got)
	}
	for _, tc := range []struct {
		name string
		mut  func(ex *Exchange)
	}{
		{"status 200", func(ex *Exchange) { ex.Status = 200 }},
		{"status 404", func(ex *Exchange) { ex.Status = 404 }},
		{"other host", func(ex *Exchange) { ex.Host = "evil.com" }},
		{"bare wildcard host", func(ex *Exchange) { ex.Host = "example.org" }},
		{"no tenant", func(ex *Exchange) { ex.RequestHeader.Del("X-Tenant") }},
		{"kind c", func(ex *Exchange) { ex.RequestHeader.Set("X-Kind", "c") }},
		{"num 43", func(ex *Exchange) { ex.RequestHeader.Set("X-Num", "43") }},
		{"cookie regex", func(ex *Exchange) { ex.RequestHeader.Set("Cookie", "session=x") }},
		{"no cookie", func(ex *Exchange) { ex.RequestHeader.Del("Cookie") }},
		{"query false", func(ex *Exchange) { ex.RawQuery = "force=false" }},
		{"query gone present", func(ex *Exchange) { ex.RawQuery = "force=true&gone=1" }},
		{"role user", func(ex *Exchange) {
			ex.RequestBody = []byte(`{"role":"user","age":30,"tags":["x"],"active":true,"note":null,"score":1.5}`)
		}},
		{"age 17", func(ex *Exchange) {
			ex.RequestBody = []byte(`{"role":"admin","age":17,"tags":["x"],"active":true,"note":null,"score":1.5}`)
		}},
		{"age 65", func(ex *Exchange) {
			ex.RequestBody = []byte(`{"role":"admin","age":65,"tags":["x"],"active":true,"note":null,"score":1.5}`)
		}},
		{"no tags", func(ex *Exchange) {
			ex.RequestBody = []byte(`{"role":"admin","age":20,"tags":[],"active":true,"note":null,"score":1.5}`)
		}},
		{"active string", func(ex *Exchange) {
			ex.RequestBody = []byte(`{"role":"admin","age":20,"tags":[1],"active":"true","note":null,"score":1.5}`)
		}},
		{"note missing", func(ex *Exchange) {
			ex.RequestBody = []byte(`{"role":"admin","age":20,"tags":[1],"active":true,"score":1.5}`)
		}},
		{"name root", func(ex *Exchange) {
			ex.RequestBody = []byte(`{"role":"admin","age":20,"tags":[1],"active":true,"note":null,"score":1.5,"name":"root"}`)
		}},
		{"body not json", func(ex *Exchange) { ex.RequestBody = []byte(`role=admin`) }},
		{"location", func(ex *Exchange) { ex.ResponseHeader.Set("Location", "/x") }},
		{"no set-cookie", func(ex *Exchange) { ex.ResponseHeader.Del("Set-Cookie") }},
		{"deleted", func(ex *Exchange) { ex.ResponseBody = []byte(`{"user":{"id":"u1","deleted":true}}`) }},
		{"no user id", func(ex *Exchange) { ex.ResponseBody = []byte(`{"user":{}}`) }},
	} {
		ex := base()
		tc.mut(ex)
		if got := names(s.Match(ex)); got != "" {
			t.Errorf("%s: matched although it should not", tc.name)
		}
	}
	// the other accepted forms
	for _, tc := range []struct {
		name string
		mut  func(ex *Exchange)
	}{
		{"3xx status", func(ex *Exchange) { ex.Status = 302 }},
		{"wildcard host", func(ex *Exchange) { ex.Host = "a.example.org" }},
		{"upper host", func(ex *Exchange) { ex.Host = "AUTH.example.com" }},
	} {
		ex := base()
		tc.mut(ex)
		if got := names(s.Match(ex)); got != "r" {
			t.Errorf("%s: did not match", tc.name)
		}
	}
}

func TestFormBodyAndDefaultStatus(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - {name: r, match: {method: POST, path: /login, request: {body: {user: exists}}}, emit: {type: a.b, subject: "{request.body.user}"}}
`)
	ex := &Exchange{Method: "POST", Path: "/login", Status: 204,
		RequestHeader: http.Header{"Content-Type": {"application/x-www-form-urlencoded"}},
		RequestBody:   []byte("user=ann&password=x")}
	evs, errs := s.Evaluate(ex, EmitOptions{})
	if len(errs) > 0 || len(evs) != 1 || evs[0].Subject != "ann" {
		t.Fatalf("form body: %v %+v", errs, evs)
	}
	ex.Status = 400
	ex.bodies = [2]parsedBody{}
	if evs, _ := s.Evaluate(ex, EmitOptions{}); len(evs) != 0 {
		t.Fatalf("default status must be 2xx, got %d events for 400", len(evs))
	}
}

func TestPlan(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - {name: a, match: {method: POST, path: /a}, emit: {type: a.b, subject: "{response.body.id}"}}
  - {name: b, match: {method: POST, path: "/b/{id}"}, emit: {type: a.b, subject: "{path.id}"}}
  - {name: c, match: {method: POST, path: "/b/{id}", request: {body: {x: exists}}}, emit: {type: a.b}}
`)
	if n, ok := s.Plan("POST", "/a"); !ok || n.RequestBody || !n.ResponseBody {
		t.Errorf("/a: %+v %v", n, ok)
	}
	if n, ok := s.Plan("POST", "/b/1"); !ok || !n.RequestBody || n.ResponseBody {
		t.Errorf("/b/1: %+v %v", n, ok)
	}
	if _, ok := s.Plan("GET", "/a"); ok {
		t.Error("GET /a should not match")
	}
}

func TestStatusCanMatch(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - {name: a, match: {method: POST, path: /a, status: 201}, emit: {type: a.b}}
  - {name: b, match: {method: POST, path: "/{x}", status: [204, 3xx]}, emit: {type: a.b}}
  - {name: c, match: {method: DELETE, path: /a}, emit: {type: a.b}}
`)
	for _, tc := range []struct {
		method, path string
		status       int
		want         bool
	}{
		{"POST", "/a", 201, true}, {"POST", "/a", 204, true}, {"POST", "/a", 302, true},
		{"POST", "/a", 200, false}, {"POST", "/a", 500, false}, {"DELETE", "/a", 200, true},
		{"DELETE", "/a", 404, false}, {"GET", "/a", 200, false}, {"POST", "/b", 201, false},
	} {
		if got := s.StatusCanMatch(tc.method, tc.path, tc.status); got != tc.want {
			t.Errorf("%s %s %d: %v, want %v", tc.method, tc.path, tc.status, got, tc.want)
		}
	}
}

// TestMatchParamsAreTheirOwn checks that each match keeps its own copy of
// the path parameters, which Set.Match gathers in one buffer on its stack.
func TestMatchParamsAreTheirOwn(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: a
    match: {method: GET, path: "/u/{id}"}
    emit: {type: a.seen}
  - name: b
    match: {method: GET, path: "/u/{uid}"}
    emit: {type: b.seen}
  - name: c
    match: {method: GET, path: "/{kind}/{id}"}
    emit: {type: c.seen}
  - name: d
    match: {method: GET, path: "/u/x"}
    emit: {type: d.seen}
`)
	ms := s.Match(&Exchange{Method: "GET", Path: "/u/1", Status: 200})
	other := s.Match(&Exchange{Method: "GET", Path: "/u/x", Status: 200})
	got := func(ms []*Match) string {
		var parts []string
		for _, m := range ms {
			parts = append(parts, fmt.Sprintf("%s%v", m.Rule.Name, m.Params))
		}
		return strings.Join(parts, " ")
	}
	if g, w := got(ms), "a[{id 1}] b[{uid 1}] c[{kind u} {id 1}]"; g != w {
		t.Errorf("got %s, want %s", g, w)
	}
	if g, w := got(other), "a[{id x}] b[{uid x}] c[{kind u} {id x}] d[]"; g != w {
		t.Errorf("got %s, want %s", g, w)
	}
}
