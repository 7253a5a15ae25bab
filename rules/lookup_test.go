package rules

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// Before-lookups and lookup headers that cannot work are refused at load,
// with file:line:col naming the value at fault.
func TestLookupParseErrors(t *testing.T) {
	lk := func(lookup, emit string) string {
		return "version: 1\nrules:\n  - name: a\n    match: {method: DELETE, path: \"/m/{id}\"}\n    lookup:\n" + lookup + "    emit: " + emit + "\n"
	}
	for _, tc := range []struct {
		name, src, want string
	}{
		{"before reads the response body",
			lk("      - {get: \"/m/{response.body.id}\", as: old, when: before}\n", "{type: a.b, data: \"{old.body}\"}"),
			`r.yaml:6:15: lookup[0].get: placeholder {response.body.id} reads the response, which a before-lookup (when: before) runs ahead of; a before-lookup may use only path parameters, request placeholders and the before-lookups declared above it`},
		{"before reads the status, when written after get",
			lk("      - get: \"/m/{path.id}?s={response.status}\"\n        as: old\n        when: before\n", "{type: a.b, data: \"{old.body}\"}"),
			`r.yaml:6:14: lookup[0].get: placeholder {response.status} reads the response`},
		{"before reads a response header",
			lk("      - {get: \"/m/{response.header.Location}\", as: old, when: before}\n", "{type: a.b, data: \"{old.body}\"}"),
			`placeholder {response.header.Location} reads the response`},
		{"before reads an after-lookup",
			lk("      - {get: /me, as: me}\n      - {get: \"/m/{me.body.id}\", as: old, when: before}\n", "{type: a.b, data: \"{old.body}\"}"),
			`r.yaml:7:15: lookup[1].get: placeholder {me.body.id} reads lookup "me", which runs after the response`},
		{"before header reads the response",
			lk("      - {get: \"/m/{path.id}\", as: old, when: before, header: {Authorization: \"Bearer {response.body.token}\"}}\n", "{type: a.b, data: \"{old.body}\"}"),
			`r.yaml:6:78: lookup[0].header.Authorization: placeholder {response.body.token} reads the response`},
		{"before header reads an after-lookup status",
			lk("      - {get: /me, as: me}\n      - {get: \"/m/{path.id}\", as: old, when: before, header: {X-Me: \"{me.status}\"}}\n", "{type: a.b, data: \"{old.body}\"}"),
			`lookup[1].header.X-Me: placeholder {me.status} reads lookup "me", which runs after the response`},
		{"a lookup declared below is unknown",
			lk("      - {get: \"/m/{old.body.id}\", as: first, when: before}\n      - {get: \"/m/{path.id}\", as: old, when: before}\n", "{type: a.b, data: \"{first.body}\"}"),
			`lookup[0].get: unknown placeholder {old.body.id}`},
		{"when is before or after",
			lk("      - {get: \"/m/{path.id}\", as: old, when: earlier}\n", "{type: a.b, data: \"{old.body}\"}"),
			`r.yaml:6:46: lookup[0].when: want before (before the request is forwarded) or after (after the response, the default), got "earlier"`},
		{"header Host",
			lk("      - {get: /me, as: me, header: {host: evil.test}}\n", "{type: a.b, data: \"{me.body}\"}"),
			`r.yaml:6:37: lookup[0].header.host: header Host cannot be set on a lookup: a lookup goes to the caller's host`},
		{"header Content-Length",
			lk("      - {get: /me, as: me, header: {Content-Length: \"5\"}}\n", "{type: a.b, data: \"{me.body}\"}"),
			`header Content-Length cannot be set on a lookup: a lookup is a GET without a body`},
		{"header Connection",
			lk("      - {get: /me, as: me, header: {Connection: close}}\n", "{type: a.b, data: \"{me.body}\"}"),
			`header Connection cannot be set on a lookup: it is a hop-by-hop header`},
		{"header Transfer-Encoding",
			lk("      - {get: /me, as: me, header: {Transfer-Encoding: chunked}}\n", "{type: a.b, data: \"{me.body}\"}"),
			`header Transfer-Encoding cannot be set on a lookup: it is a hop-by-hop header`},
		{"header the marker",
			lk("      - {get: /me, as: me, header: {x-authtap-lookup: \"{request.header.X-Authtap-Lookup}\"}}\n", "{type: a.b, data: \"{me.body}\"}"),
			`header X-Authtap-Lookup cannot be set on a lookup: X-Authtap- headers are authtap's own`},
		{"header name with a space",
			lk("      - {get: /me, as: me, header: {\"X Tenant\": a}}\n", "{type: a.b, data: \"{me.body}\"}"),
			`lookup[0].header.X Tenant: want a header name such as Authorization`},
		{"header twice in two cases",
			lk("      - {get: /me, as: me, header: {X-Tenant: a, x-tenant: b}}\n", "{type: a.b, data: \"{me.body}\"}"),
			`r.yaml:6:50: lookup[0].header.x-tenant: header X-Tenant is set twice`},
		{"constant header empty",
			lk("      - {get: /me, as: me, header: {X-Tenant: \" \"}}\n", "{type: a.b, data: \"{me.body}\"}"),
			`lookup[0].header.X-Tenant: want a header value such as "Bearer {response.body.token}"; " " cannot be sent: it is empty`},
		{"constant header with CR LF",
			lk("      - {get: /me, as: me, header: {X-Tenant: \"a\\r\\nX-Admin: 1\"}}\n", "{type: a.b, data: \"{me.body}\"}"),
			`cannot be sent: it holds the control byte 0x0d`},
		{"header value not text",
			lk("      - {get: /me, as: me, header: {X-Count: 3}}\n", "{type: a.b, data: \"{me.body}\"}"),
			`lookup[0].header.X-Count: want text, got the number 3`},
		{"too many headers",
			lk("      - get: /me\n        as: me\n        header: {"+manyHeaders(MaxLookupHeaders+1)+"}\n", "{type: a.b, data: \"{me.body}\"}"),
			`lookup[0].header: the lookup sets 17 headers; a lookup may set at most 16 (rules.MaxLookupHeaders)`},
		{"unknown lookup key",
			lk("      - {get: /me, as: me, headers: {X-A: b}}\n", "{type: a.b, data: \"{me.body}\"}"),
			`unknown key "headers" (did you mean "header"?)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("r.yaml", []byte(tc.src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v\nwant one containing %s", err, tc.want)
			}
		})
	}
}

func manyHeaders(n int) string {
	var b []string
	for i := range n {
		b = append(b, "X-H"+string(rune('a'+i))+": v")
	}
	return strings.Join(b, ", ")
}

// What a before-lookup may read: path parameters, every request
// placeholder and the before-lookups above it; an after-lookup may read
// before-lookups too, and a lookup used only by another lookup's header
// counts as used.
func TestLookupValidUses(t *testing.T) {
	mustSet(t, `version: 1
rules:
  - name: a
    match: {method: DELETE, path: "/orgs/{org}/m/{id}"}
    lookup:
      - {get: /me, as: old0, when: before}
      - get: "/orgs/{path.org}/m/{path.id}?q={request.query.q}&h={request.header.X-A}&c={request.cookie.c}&b={request.body.x}&m={request.method}&p={request.path}&host={request.host}"
        as: old
        when: before
        header: {X-Tenant: "{request.header.X-Tenant}", X-Org: "{old0.body.id}"}
      - {get: /me, as: me0, when: after}
      - {get: "/orgs/{old.body.org}", as: org, when: before, header: {Authorization: "Bearer {old.body.token}"}}
      - {get: "/users/{old.body.user}?s={response.status}", as: user, header: {X-Org: "{org.body.id}", Authorization: "Bearer {response.body.token}"}}
      - {get: /tok, as: tok}
      - {get: /me2, as: me2, header: {Authorization: "Bearer {tok.body.t}"}}
    emit: {type: a.b, data: {old: "{old.body}", user: "{user.body}", me2: "{me2.body}", me0: "{me0.status}"}}
`)
}

// TestLookupValidUses must fail for the right reason: old0 is declared below old.
func TestLookupValidUsesRefusesForwardReference(t *testing.T) {
	_, err := Parse("r.yaml", []byte(`version: 1
rules:
  - name: a
    match: {method: DELETE, path: "/m/{id}"}
    lookup:
      - {get: "/m/{path.id}", as: old, when: before, header: {X-Org: "{old0.body.id}"}}
      - {get: /me, as: old0, when: before}
    emit: {type: a.b, data: "{old.body}"}
`))
	if err == nil || !strings.Contains(err.Error(), `r.yaml:6:70: lookup[0].header.X-Org: unknown placeholder {old0.body.id}`) {
		t.Errorf("error = %v", err)
	}
}

const beforeRules = `version: 1
rules:
  - name: member-removed
    match:
      method: DELETE
      path: "/memberships/{id}"
      host: auth.example.test
      status: 204
      request: {header: {X-Admin: exists}, query: {hard: absent}}
      response: {header: {X-Deleted: exists}}
    lookup:
      - {get: "/memberships/{path.id}", as: old, when: before}
      - {get: "/orgs/{old.body.org_id}", as: org, when: before}
      - {get: /me, as: me}
    emit:
      type: organization.member_removed
      subject: "{old.body.org_id}"
      data: {user: "{old.body.user_id}", org: "{org.body.name}", by: "{me.body.id}"}
  - name: membership-body
    match:
      method: DELETE
      path: "/memberships/{id}"
      request: {body: {reason: {regex: "^left"}}}
    lookup: {get: "/memberships/{path.id}", as: old, when: before}
    emit: {type: membership.left, data: "{old.body}"}
  - name: no-before
    match: {method: DELETE, path: "/memberships/{id}"}
    lookup: {get: "/memberships/{path.id}", as: old}
    emit: {type: membership.gone, data: "{old.body}"}
`

// MatchBefore checks what is known before the response (method, path, host,
// request conditions) and nothing else; rules without before-lookups are not
// returned.
func TestMatchBefore(t *testing.T) {
	s := mustSet(t, beforeRules)
	for _, tc := range []struct {
		name, method, host, path, query string
		header                          http.Header
		body                            string
		want                            string
	}{
		{"all request conditions hold", "DELETE", "auth.example.test:8443", "/memberships/m_1", "", http.Header{"X-Admin": {"1"}}, "", "member-removed id=m_1"},
		{"request header missing", "DELETE", "auth.example.test", "/memberships/m_1", "", nil, "", ""},
		{"query refuses", "DELETE", "auth.example.test", "/memberships/m_1", "hard=1", http.Header{"X-Admin": {"1"}}, "", ""},
		{"other host", "DELETE", "other.test", "/memberships/m_1", "", http.Header{"X-Admin": {"1"}}, "", ""},
		{"other method", "GET", "auth.example.test", "/memberships/m_1", "", http.Header{"X-Admin": {"1"}}, "", ""},
		{"other path", "DELETE", "auth.example.test", "/memberships/m_1/x", "", http.Header{"X-Admin": {"1"}}, "", ""},
		{"body condition holds", "DELETE", "x.test", "/memberships/m_2", "", http.Header{"Content-Type": {"application/json"}}, `{"reason":"left the org"}`, "membership-body id=m_2"},
		{"both", "DELETE", "auth.example.test", "/memberships/m_3", "", http.Header{"X-Admin": {"1"}, "Content-Type": {"application/json"}}, `{"reason":"left"}`, "member-removed id=m_3; membership-body id=m_3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ex := &Exchange{Method: tc.method, Host: tc.host, Path: tc.path, RawQuery: tc.query, RequestHeader: tc.header}
			if tc.body != "" {
				ex.RequestBody = []byte(tc.body)
			}
			if got := names(s.MatchBefore(ex)); got != tc.want {
				t.Errorf("MatchBefore = %q, want %q", got, tc.want)
			}
		})
	}
	need, ok := s.Plan("DELETE", "/memberships/m_1")
	if !ok || !need.BeforeLookups || !need.RequestBody || need.ResponseBody {
		t.Errorf("Plan = %+v %v: want before-lookups and the request body (a request condition reads it)", need, ok)
	}
	if s.MatchBefore(&Exchange{Method: "GET", Path: "nope"}) != nil {
		t.Error("a path without / matches nothing")
	}
	plain := mustSet(t, "version: 1\nrules:\n  - {name: a, match: {method: DELETE, path: \"/m/{id}\"}, lookup: {get: /me, as: me}, emit: {type: a.b, data: \"{me.body}\"}}\n")
	if n, _ := plain.Plan("DELETE", "/m/1"); n.BeforeLookups || plain.MatchBefore(&Exchange{Method: "DELETE", Path: "/m/1"}) != nil {
		t.Error("a set without before-lookups has none to run")
	}
}

// The lookups a before-match renders, in order, with an earlier
// before-lookup's answer feeding the next; the event built after the
// response reads them like any lookup.
func TestBeforeLookupsFeedTheEvent(t *testing.T) {
	s := mustSet(t, beforeRules)
	ex := &Exchange{Method: "DELETE", Host: "auth.example.test", Path: "/memberships/m_1",
		RequestHeader: http.Header{"X-Admin": {"1"}, "Cookie": {"session=s1"}, "Authorization": {"Bearer t1"}}}
	ms := s.MatchBefore(ex)
	if len(ms) != 1 {
		t.Fatalf("MatchBefore = %q", names(ms))
	}
	m := ms[0]
	var kept []LookupResult
	for i := 0; i < m.NumLookups(); i++ {
		if !m.LookupBefore(i) {
			if i != 2 {
				t.Errorf("lookup %d is not a before-lookup", i)
			}
			continue
		}
		lk := m.Lookup(i, ex)
		if !lk.Before || len(lk.Missing) > 0 {
			t.Fatalf("lookup %d = %+v", i, lk)
		}
		if lk.Header.Get("Cookie") != "session=s1" || lk.Header.Get("Authorization") != "Bearer t1" || len(lk.Header) != 2 {
			t.Errorf("lookup %d headers = %v, want the caller's credentials as sent", i, lk.Header)
		}
		var res LookupResult
		switch lk.Path {
		case "/memberships/m_1":
			res = LookupResult{Status: 200, Body: []byte(`{"org_id":"org_1","user_id":"usr_2"}`)}
		case "/orgs/org_1":
			res = LookupResult{Status: 200, Body: []byte(`{"name":"Acme"}`)}
		default:
			t.Fatalf("lookup %d path %q", i, lk.Path)
		}
		ex.SetLookup(lk.As, res)
		kept = append(kept, res)
	}
	// after the response (the row is gone): the kept answers, then the after-lookup
	ex.Status = 204
	ex.ResponseHeader = http.Header{"X-Deleted": {"1"}}
	ms = s.Match(ex)
	if len(ms) != 2 || ms[0].Rule.Name != "member-removed" {
		t.Fatalf("Match = %q", names(ms))
	}
	ex.SetLookup("me", LookupResult{Status: 200, Body: []byte(`{"id":"usr_admin"}`)})
	evs, errs := ms[0].Events(ex, EmitOptions{})
	if len(errs) > 0 || len(evs) != 1 {
		t.Fatal(evs, errs)
	}
	if evs[0].Subject != "org_1" || string(evs[0].Data) != `{"user":"usr_2","org":"Acme","by":"usr_admin"}` || len(evs[0].Source.Missing) > 0 {
		t.Errorf("event = %s %s missing %v", evs[0].Subject, evs[0].Data, evs[0].Source.Missing)
	}
	// a failed before-lookup: the event lists what is missing
	ex.SetLookup("old", LookupResult{Err: "lookup timed out after 2s"})
	ex.SetLookup("org", LookupResult{Err: "lookup path needs old.body.org_id, which the exchange lacks"})
	evs, _ = ms[0].Events(ex, EmitOptions{})
	if want := []string{"old.body.org_id", "old.body.user_id", "org.body.name"}; !slices.Equal(evs[0].Source.Missing, want) {
		t.Errorf("missing = %v, want %v", evs[0].Source.Missing, want)
	}
}

// After-lookups carry the cookies the client holds once the response's
// Set-Cookie lines are applied; before-lookups the cookies as sent.
func TestLookupCookies(t *testing.T) {
	past := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	future := time.Now().Add(time.Hour).UTC().Format(http.TimeFormat)
	for _, tc := range []struct {
		name       string
		req        []string
		setCookies []string
		want       []string
	}{
		{"no Set-Cookie: as sent", []string{"session=old; theme=dark", "b=2"}, nil, []string{"session=old; theme=dark", "b=2"}},
		{"rotated session replaces, others stay", []string{"theme=dark; session=old; lang=en"}, []string{"session=new; Path=/; HttpOnly; Secure"}, []string{"theme=dark; lang=en; session=new"}},
		{"Max-Age=0 clears", []string{"session=old; theme=dark"}, []string{"session=; Max-Age=0"}, []string{"theme=dark"}},
		{"negative Max-Age clears", []string{"session=old"}, []string{"session=x; Max-Age=-1"}, nil},
		{"Expires in the past clears", []string{"session=old; theme=dark"}, []string{"session=deleted; Expires=" + past}, []string{"theme=dark"}},
		{"Expires in the future sets", []string{"theme=dark"}, []string{"session=new; Expires=" + future}, []string{"theme=dark; session=new"}},
		{"Max-Age wins over a past Expires", []string{"session=old"}, []string{"session=new; Max-Age=60; Expires=" + past}, []string{"session=new"}},
		{"new cookie without request cookies", nil, []string{"session=new"}, []string{"session=new"}},
		{"every same-name request cookie is replaced", []string{"session=a; session=b; x=1"}, []string{"session=c"}, []string{"x=1; session=c"}},
		{"the last line for a name wins", []string{"x=1"}, []string{"session=a", "session=b; Max-Age=0", "session=c"}, []string{"x=1; session=c"}},
		{"invalid Set-Cookie lines are ignored", []string{"session=old"}, []string{"=nope", "bad name=x", ";;"}, []string{"session=old"}},
		{"a value that needs quotes is quoted", []string{"x=1"}, []string{`session="a b"`}, []string{`x=1; session="a b"`}},
		{"odd request parts are kept as sent", []string{"flag; session=old"}, []string{"session=new"}, []string{"flag; session=new"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := lookupCookies(tc.req, tc.setCookies, time.Now()); !slices.Equal(got, tc.want) {
				t.Errorf("cookies = %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("at most MaxLookupSetCookies lines are applied", func(t *testing.T) {
		var lines []string
		for i := range MaxLookupSetCookies + 10 {
			lines = append(lines, "c"+strings.Repeat("x", i)+"=1")
		}
		got := lookupCookies(nil, lines, time.Now())
		if len(got) != 1 || strings.Count(got[0], "=") != MaxLookupSetCookies {
			t.Errorf("applied %d cookies, want %d", strings.Count(strings.Join(got, ""), "="), MaxLookupSetCookies)
		}
	})
}

const headerRules = `version: 1
rules:
  - name: password-changed
    match: {method: POST, path: /me/password}
    lookup:
      - {get: /me, as: me, header: {Authorization: "Bearer {response.body.token}", X-Request-Id: "{request.header.X-Request-Id}"}}
      - {get: /audit, as: audit, header: {X-Step: "after-{response.body.step}"}}
      - {get: "/old/{request.body.id}", as: old, when: before, header: {X-Tenant: "{request.header.X-Tenant}"}}
    emit:
      - {type: user.password_changed, subject: "{me.body.id}"}
      - {type: audit.logged, data: "{audit.body}"}
      - {type: old.read, data: "{old.body}"}
`

// lookup.header sets request headers from placeholders, replacing the
// forwarded ones; a header that does not render is left out (and the
// caller's header of that name with it) and listed as missing.
func TestLookupHeaders(t *testing.T) {
	s := mustSet(t, headerRules)
	base := func() *Exchange {
		return &Exchange{Method: "POST", Path: "/me/password", Status: 200,
			RequestHeader:  http.Header{"Authorization": {"Bearer dead"}, "Cookie": {"session=old"}, "X-Request-Id": {"r1"}, "X-Tenant": {"t1"}, "Content-Type": {"application/json"}},
			RequestBody:    []byte(`{"id":"u_1"}`),
			ResponseHeader: http.Header{"Content-Type": {"application/json"}, "Set-Cookie": {"session=new; HttpOnly"}},
		}
	}
	lookup := func(ex *Exchange, i int) LookupRequest {
		ms := s.Match(ex)
		if len(ms) != 1 {
			t.Fatalf("Match = %q", names(ms))
		}
		return ms[0].Lookup(i, ex)
	}
	for _, tc := range []struct {
		name     string
		respBody string
		reqID    string
		wantAuth []string
		wantMiss []string
	}{
		{"token from the response", `{"token":"tok_new","step":"1"}`, "r1", []string{"Bearer tok_new"}, nil},
		{"no token: Authorization left out, not the dead one", `{"step":"1"}`, "r1", nil, []string{"response.body.token"}},
		{"token with CR LF: left out", `{"token":"a\r\nX-Admin: 1"}`, "r1", nil, []string{"response.body.token"}},
		{"token with NUL: left out", `{"token":"a\u0000b"}`, "r1", nil, []string{"response.body.token"}},
		{"token too long: left out", `{"token":"` + strings.Repeat("t", MaxLookupHeaderValue) + `"}`, "r1", nil, []string{"response.body.token"}},
		{"an object renders as JSON text", `{"token":{"a":1}}`, "r1", []string{`Bearer {"a":1}`}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ex := base()
			ex.ResponseBody = []byte(tc.respBody)
			lk := lookup(ex, 0)
			if got := lk.Header.Values("Authorization"); !slices.Equal(got, tc.wantAuth) {
				t.Errorf("Authorization = %q, want %q", got, tc.wantAuth)
			}
			if !slices.Equal(lk.HeaderMissing, tc.wantMiss) || len(lk.Missing) > 0 {
				t.Errorf("missing = %v / %v, want %v", lk.HeaderMissing, lk.Missing, tc.wantMiss)
			}
			if lk.Header.Get("Cookie") != "session=new" || lk.Header.Get("X-Request-Id") != "r1" {
				t.Errorf("headers = %v: want the rotated cookie and the request id", lk.Header)
			}
			if lk.Header.Get("X-Tenant") != "" || lk.Header.Get("Content-Type") != "" {
				t.Errorf("headers = %v: only credentials and lookup.header are sent", lk.Header)
			}
		})
	}
	t.Run("empty and whitespace renderings are left out", func(t *testing.T) {
		ex := base()
		ex.RequestHeader.Set("X-Request-Id", "  ")
		ex.ResponseBody = []byte(`{"token":"x","step":""}`)
		if lk := lookup(ex, 0); lk.Header.Get("X-Request-Id") != "" || !slices.Equal(lk.HeaderMissing, []string{"request.header.X-Request-Id"}) {
			t.Errorf("lookup = %+v", lk)
		}
	})
	t.Run("before-lookup: request headers only, cookies as sent", func(t *testing.T) {
		ex := base()
		ms := s.MatchBefore(ex)
		if len(ms) != 1 {
			t.Fatalf("MatchBefore = %q", names(ms))
		}
		lk := ms[0].Lookup(2, ex)
		if !lk.Before || lk.Path != "/old/u_1" || lk.Header.Get("X-Tenant") != "t1" || lk.Header.Get("Cookie") != "session=old" || lk.Header.Get("Authorization") != "Bearer dead" {
			t.Errorf("before-lookup = %+v", lk)
		}
	})
	t.Run("missing header placeholders reach only the events that read the lookup", func(t *testing.T) {
		ex := base()
		ex.ResponseBody = []byte(`{"step":"1"}`)
		ms := s.Match(ex)
		for i := 0; i < ms[0].NumLookups(); i++ {
			lk := ms[0].Lookup(i, ex)
			ex.SetLookup(lk.As, LookupResult{Status: 200, Body: []byte(`{"id":"u_1"}`), Missing: lk.HeaderMissing})
		}
		evs, _ := ms[0].Events(ex, EmitOptions{})
		if len(evs) != 3 {
			t.Fatal(evs)
		}
		if !slices.Equal(evs[0].Source.Missing, []string{"response.body.token"}) || len(evs[1].Source.Missing) != 0 || len(evs[2].Source.Missing) != 0 {
			t.Errorf("missing = %v / %v / %v", evs[0].Source.Missing, evs[1].Source.Missing, evs[2].Source.Missing)
		}
	})
}

// A lookup used only by another lookup's header reports that header's
// missing placeholders in the events of the lookup that is read.
func TestLookupHeaderMissingThroughAChain(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: a
    match: {method: POST, path: /x}
    lookup:
      - {get: /tok, as: tok, header: {X-A: "{request.header.X-A}"}}
      - {get: /me, as: me, header: {Authorization: "Bearer {tok.body.t}"}}
    emit: {type: a.b, data: "{me.body}"}
`)
	ex := &Exchange{Method: "POST", Path: "/x", Status: 200}
	m := s.Match(ex)[0]
	for i := 0; i < m.NumLookups(); i++ {
		lk := m.Lookup(i, ex)
		ex.SetLookup(lk.As, LookupResult{Status: 200, Body: []byte(`{"t":"x"}`), Missing: lk.HeaderMissing})
	}
	evs, _ := m.Events(ex, EmitOptions{})
	if !slices.Equal(evs[0].Source.Missing, []string{"request.header.X-A"}) {
		t.Errorf("missing = %v", evs[0].Source.Missing)
	}
}

// Before-lookups add nothing to the no-match path: CanMatch and Plan stay
// allocation-free on a set that has them.
func TestNoMatchAllocationFreeWithBeforeLookups(t *testing.T) {
	s := mustSet(t, beforeRules)
	allocs := testing.AllocsPerRun(100, func() {
		if s.CanMatch("DELETE", "/users/u_1") || s.CanMatch("GET", "/memberships/m_1") {
			t.Fatal("matched")
		}
		if _, ok := s.Plan("POST", "/memberships/m_1"); ok {
			t.Fatal("planned")
		}
		if s.MatchBefore(&Exchange{Method: "GET", Path: "/memberships/m_1"}) != nil {
			t.Fatal("before-matched")
		}
	})
	if allocs != 0 {
		t.Errorf("no-match path allocates %v times", allocs)
	}
}

// An inline test feeds a before-lookup a canned answer like any lookup
// (tests[].lookup.<as>), and a wrong expectation fails: the canned answer is
// what the event reads.
func TestInlineTestFeedsBeforeLookup(t *testing.T) {
	const src = `version: 1
rules:
  - name: member-removed
    match: {method: DELETE, path: "/memberships/{id}", status: 204}
    lookup: {get: "/memberships/{path.id}", as: old, when: before}
    emit:
      type: organization.member_removed
      subject: "{old.body.organization_id}"
      data: {organization_id: "{old.body.organization_id}", user_id: "{old.body.user_id}", role: "{old.body.role}"}
tests:
  - name: the deleted membership is in the event
    request: {method: DELETE, path: /memberships/m_1}
    response: {status: 204}
    lookup:
      old: {status: 200, body: {organization_id: org_1, user_id: usr_2, role: admin}}
    expect:
      - type: organization.member_removed
        subject: org_1
        data: {organization_id: org_1, user_id: usr_2, role: admin}
        missing: []
  - name: a failed before-lookup still emits, marked incomplete
    request: {method: DELETE, path: /memberships/m_1}
    response: {status: 204}
    lookup:
      old: {error: timeout}
    expect:
      - type: organization.member_removed
        data: {organization_id: null, user_id: null, role: null}
        missing: [old.body.organization_id, old.body.user_id, old.body.role]
  - name: a refused delete emits nothing, whatever the before-lookup said
    request: {method: DELETE, path: /memberships/m_1}
    response: {status: 403}
    lookup:
      old: {body: {organization_id: org_1}}
    expect: []
  - name: WRONG on purpose
    request: {method: DELETE, path: /memberships/m_1}
    response: {status: 204}
    lookup:
      old: {body: {organization_id: org_9, user_id: usr_9, role: member}}
    expect:
      - {type: organization.member_removed, subject: org_1}
`
	s := mustSet(t, src)
	results := s.RunTests()
	if len(results) != 4 {
		t.Fatalf("%d results", len(results))
	}
	for _, r := range results[:3] {
		if !r.Passed {
			t.Errorf("%q failed: %s", r.Name, r.Failure)
		}
	}
	if results[3].Passed || !strings.Contains(results[3].Failure, `want subject "org_1", got "org_9"`) {
		t.Errorf("the wrong test = %+v, want it to fail on the subject the canned answer gives", results[3])
	}
}

// TestLookupBodyIsItsOwn: an event reads a lookup's body from SetLookup's
// own copy, so a caller that reuses the buffer it gave in Body changes no
// event, whether the lookup's value lands in the subject or in data.
func TestLookupBodyIsItsOwn(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: a
    match: {method: DELETE, path: "/m/{id}"}
    lookup: [{get: "/m/{path.id}", as: old, when: before}]
    emit: {type: m.deleted, subject: "{old.body.name}", data: {whole: "{old.body}", name: "{old.body.name}"}}
`)
	ex := &Exchange{Method: "DELETE", Path: "/m/7", Status: 204}
	body := []byte(`{"name":"seven","n":7}`)
	ex.SetLookup("old", LookupResult{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: body})
	evs, errs := s.Evaluate(ex, EmitOptions{Source: "t"})
	if len(errs) > 0 || len(evs) != 1 {
		t.Fatalf("%d events, %v", len(evs), errs)
	}
	before, _ := evs[0].MarshalJSON()
	for i := range body {
		body[i] = 'Z'
	}
	if after, _ := evs[0].MarshalJSON(); string(after) != string(before) || evs[0].Subject != "seven" {
		t.Fatalf("the event changed with the caller's buffer:\n was %s\n now %s", before, after)
	}
	if evs, _ := s.Evaluate(ex, EmitOptions{Source: "t"}); len(evs) != 1 || evs[0].Subject != "seven" {
		t.Fatalf("events built after the caller reused its buffer: %+v", evs)
	}
}
