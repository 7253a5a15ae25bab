package rules

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// jwtOf builds an unsigned-looking JWS compact token: header.payload.signature.
func tokenOf(header, payload string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(header)) + "." + enc([]byte(payload)) + ".c2lnbmF0dXJlLW5vdC1jaGVja2Vk"
}

const jwtHeader = `{"alg":"RS256","typ":"JWT","kid":"k1"}`

var (
	verifyToken = tokenOf(jwtHeader, `{"sub":"u_1","email":"ann@example.test","exp":1767225600,"org":{"id":"o_1","roles":["admin"]},"email_verified":true}`)
	// sessionToken carries claims that are secrets themselves
	sessionToken = tokenOf(jwtHeader, `{"sub":"u_2","password":"hunter2","refresh_token":"r_1","inner":"`+tokenOf(jwtHeader, `{"sub":"x"}`)+`","nested":{"api_key":"k","name":"Ann"}}`)
)

// funcExchange is an exchange with a JWT in every place a placeholder reads.
func funcExchange() *Exchange {
	ex := &Exchange{
		Method: "POST", Path: "/verify/" + verifyToken, RawQuery: "t=" + verifyToken + "&next=/Users/q_9",
		Status: 201,
		RequestHeader: http.Header{
			"Content-Type":  {"application/json"},
			"Authorization": {"Bearer " + verifyToken},
			"Cookie":        {"session=" + sessionToken + "; theme=dark"},
			"X-Id-Token":    {verifyToken},
		},
		RequestBody: []byte(`{"token":"` + verifyToken + `","session":"` + sessionToken + `","n":42,"obj":{"a":1},
			"note":"see ` + verifyToken + ` for details","link":"https://app.example.test/u/Ann%20Lee/?x=1#top"}`),
		ResponseHeader: http.Header{"Location": {"/scim/v2/Users/2819c223"}, "Content-Type": {"application/json"}},
		ResponseBody:   []byte(`{"id":"2819c223","meta":{"location":"https://scim.example.test/scim/v2/Users/2819c223"}}`),
	}
	ex.SetLookup("me", LookupResult{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{"id_token":"` + verifyToken + `"}`)})
	return ex
}

// evalData renders data: {v: tmpl} for one exchange and returns v (as JSON) and source.missing.
func evalData(t *testing.T, tmpl string, ex *Exchange, extra string) (string, []string) {
	t.Helper()
	src := fmt.Sprintf(`version: 1
rules:
  - name: r
    match: {method: "*", path: "/{rest...}"}
    lookup: {get: /api/me, as: me}
    emit:
      type: a.b
      data: {v: %s, me: "{me.status}"}
%s`, yamlQuote(tmpl), extra)
	s := mustSet(t, src)
	evs, errs := s.Evaluate(ex, EmitOptions{})
	if len(errs) > 0 || len(evs) != 1 {
		t.Fatalf("%s: %d events, errors %v", tmpl, len(evs), errs)
	}
	var d struct{ V json.RawMessage }
	if err := json.Unmarshal(evs[0].Data, &d); err != nil {
		t.Fatal(err)
	}
	return string(d.V), evs[0].Source.Missing
}

// yamlQuote quotes s as a single-quoted YAML scalar.
func yamlQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func TestFuncValues(t *testing.T) {
	for _, tc := range []struct{ tmpl, want string }{
		{"{jwt(request.body.token).sub}", `"u_1"`},
		{"{jwt(request.body.token).exp}", `1767225600`}, // a whole value keeps its JSON type
		{"{jwt(request.body.token).email_verified}", `true`},
		{"{jwt(request.body.token).org.id}", `"o_1"`},
		{"{jwt(request.body.token).org}", `{"id":"o_1","roles":["admin"]}`},
		{"{jwt(request.body.token).org.roles.0}", `"admin"`},
		{"{jwt(request.header.Authorization).sub}", `"u_1"`}, // "Bearer " stripped
		{"{jwt(request.header.x-id-token).email}", `"ann@example.test"`},
		{"{jwt(request.cookie.session).sub}", `"u_2"`},
		{"{jwt(request.query.t).sub}", `"u_1"`},
		{"{jwt(path.rest).sub}", `null`},                // "verify/<jwt>" is not a JWT…
		{"{jwt(last_segment(path.rest)).sub}", `"u_1"`}, // …its last segment is
		{"{jwt(me.body.id_token).sub}", `"u_1"`},
		{"{jwt( request.body.token ).sub}", `"u_1"`},
		{"{last_segment(response.header.Location)}", `"2819c223"`},
		{"{last_segment(response.body.meta.location)}", `"2819c223"`},
		{"{last_segment(request.body.link)}", `"Ann Lee"`}, // percent-decoded; query, fragment and trailing slash dropped
		{"{last_segment(request.query.next)}", `"q_9"`},
		{"{last_segment(request.body.n)}", `"42"`}, // a number reads as its text
		{`{match(response.header.Location, "/Users/([^/?]+)$")}`, `"2819c223"`},
		{`{match(response.header.Location, "[0-9a-f]{8}")}`, `"2819c223"`}, // no group: the whole match; braces in a regex
		{`{match(response.header.Location, "^/scim/(v[0-9])/")}`, `"v2"`},
		{`{match(request.body.n, "^(4)")}`, `"4"`},
		{`{match(response.body.meta.location, "\"?https://([^/]+)")}`, `"scim.example.test"`}, // \" is a quote
		{`{match(response.header.Location, "\d{3,}")}`, `"2819"`},                             // in a single-quoted YAML scalar: the regex \d{3,}
		{`{match(request.body.link, "\\|(u)")}`, `"u"`},                                       // \\ is the regex's escaped backslash
		{`{match(last_segment(response.header.Location), "^([0-9]+)")}`, `"2819"`},
		{`{jwt(match(request.body.note, "see (\S+) for")).sub}`, `"u_1"`},
		{"user {jwt(request.body.token).sub} at {last_segment(response.header.Location)}", `"user u_1 at 2819c223"`},
	} {
		got, missing := evalData(t, tc.tmpl, funcExchange(), "")
		if got != tc.want || (tc.want != "null" && len(missing) > 0) {
			t.Errorf("%s = %s (missing %v), want %s", tc.tmpl, got, missing, tc.want)
		}
	}
}

// TestFuncValueDoesNotFit: a value a function cannot read gives a missing
// placeholder, listed in source.missing as written, never an error.
func TestFuncValueDoesNotFit(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	deep := strings.Repeat(`{"a":`, 20_000) + "1" + strings.Repeat("}", 20_000)
	for _, tc := range []struct{ name, value, tmpl string }{
		{"not a JWT", "hello", "{jwt(request.body.v).sub}"},
		{"two segments", enc([]byte(jwtHeader)) + "." + enc([]byte(`{"sub":"x"}`)), "{jwt(request.body.v).sub}"},
		{"JWE: five segments", tokenOf(jwtHeader, `{"sub":"x"}`) + ".a.b", "{jwt(request.body.v).sub}"},
		{"header without alg", tokenOf(`{"typ":"JWT"}`, `{"sub":"x"}`), "{jwt(request.body.v).sub}"},
		{"header not JSON", tokenOf(`nope`, `{"sub":"x"}`), "{jwt(request.body.v).sub}"},
		{"claims a list", tokenOf(jwtHeader, `["sub","x"]`), "{jwt(request.body.v)}"},
		{"claims a string", tokenOf(jwtHeader, `"x"`), "{jwt(request.body.v)}"},
		{"claims not JSON", tokenOf(jwtHeader, `{"sub":`), "{jwt(request.body.v)}"},
		{"claims empty", enc([]byte(jwtHeader)) + "..sig", "{jwt(request.body.v)}"},
		{"bad base64", enc([]byte(jwtHeader)) + ".e30*.sig", "{jwt(request.body.v)}"},
		{"standard base64, not url", enc([]byte(jwtHeader)) + ".eyJ+In0/.sig", "{jwt(request.body.v)}"},
		{"signature not base64url", tokenOf(jwtHeader, `{"sub":"x"}`) + "!", "{jwt(request.body.v)}"},
		{"claims over MaxJWTClaims", tokenOf(jwtHeader, `{"a":"`+strings.Repeat("x", MaxJWTClaims)+`"}`), "{jwt(request.body.v)}"},
		{"absent claim", tokenOf(jwtHeader, `{"sub":"x"}`), "{jwt(request.body.v).org.id}"},
		{"deep claims over MaxJWTClaims", tokenOf(jwtHeader, deep+strings.Repeat(" ", MaxJWTClaims)), "{jwt(request.body.v)}"},
		{"no match", "/Groups/g_1", `{match(request.body.v, "/Users/([^/?]+)$")}`},
		{"empty capture", "/Users/", `{match(request.body.v, "/Users/([^/?]*)$")}`},
		{"group took no part", "/Users", `{match(request.body.v, "/Users(/x)?")}`},
		{"last segment of /", "/", "{last_segment(request.body.v)}"},
		{"last segment of a bare host", "https://h.example.test?x=/y", "{last_segment(request.body.v)}"},
		{"last segment badly escaped", "/Users/%zz", "{last_segment(request.body.v)}"},
		{"last segment empty", "", "{last_segment(request.body.v)}"},
		{"an object", `{"a":"/Users/1"}`, `{match(request.body.o, ".*")}`},
		{"a list", `x`, `{last_segment(request.body.l)}`},
		{"null", `x`, `{jwt(request.body.z)}`},
		{"absent argument", `x`, `{match(jwt(request.body.none).sub, "x")}`},
	} {
		body, _ := json.Marshal(map[string]any{"v": tc.value, "o": map[string]string{"a": "/Users/1"}, "l": []string{"/a/b"}, "z": nil})
		ex := &Exchange{Method: "POST", Path: "/x", Status: 200, RequestHeader: http.Header{"Content-Type": {"application/json"}}, RequestBody: body}
		got, missing := evalData(t, tc.tmpl, ex, "")
		if got != "null" || len(missing) != 2 || missing[0] != tc.tmpl[1:len(tc.tmpl)-1] {
			t.Errorf("%s: %s = %s, missing %q; want null and the placeholder missing", tc.name, tc.tmpl, got, missing)
		}
	}
	// inside text, the same placeholders render as nothing
	ex := &Exchange{Method: "POST", Path: "/x", Status: 200, RequestHeader: http.Header{"Content-Type": {"application/json"}}, RequestBody: []byte(`{"v":"nope"}`)}
	if got, missing := evalData(t, "id={jwt(request.body.v).sub};", ex, ""); got != `"id=;"` || missing[0] != "jwt(request.body.v).sub" {
		t.Errorf("in text: %s, missing %v", got, missing)
	}
}

// TestFuncRedaction: the token is a secret (by its key and by its shape),
// its claims are not; a claim that is a secret itself is redacted, inside
// a whole claims object too; a part of a secret is a secret.
func TestFuncRedaction(t *testing.T) {
	for _, tc := range []struct{ tmpl, extra, want string }{
		{"{request.body.token}", "", `"[REDACTED]"`},
		{"{request.body.note}", "", `"[REDACTED]"`}, // a JWT in text, by its shape
		{"{jwt(request.body.token).sub}", "", `"u_1"`},
		{"{jwt(request.header.Authorization).email}", "", `"ann@example.test"`},
		{"{jwt(request.cookie.session).sub}", "", `"u_2"`},
		{"{jwt(request.cookie.session).password}", "", `"[REDACTED]"`},       // a password-like claim
		{"{jwt(request.cookie.session).nested.api_key}", "", `"[REDACTED]"`}, // at any depth of the claim path
		{"{jwt(request.cookie.session).nested}", "", `{"api_key":"[REDACTED]","name":"Ann"}`},
		{"{jwt(request.cookie.session).inner}", "", `"[REDACTED]"`}, // a nested JWT, by its shape
		{"{jwt(request.cookie.session)}", "", `{"sub":"u_2","password":"[REDACTED]","refresh_token":"[REDACTED]","inner":"[REDACTED]","nested":{"api_key":"[REDACTED]","name":"Ann"}}`},
		{"claims: {jwt(request.cookie.session)}", "", `"claims: {\"sub\":\"u_2\",\"password\":\"[REDACTED]\",\"refresh_token\":\"[REDACTED]\",\"inner\":\"[REDACTED]\",\"nested\":{\"api_key\":\"[REDACTED]\",\"name\":\"Ann\"}}"`},
		{"{jwt(request.cookie.session).password}", "      keep_secrets: [password]\n", `"hunter2"`},
		{"{jwt(request.cookie.session).inner}", "      keep_shapes: [jwt]\n", `"` + tokenOf(jwtHeader, `{"sub":"x"}`) + `"`},
		// a part of a secret-keyed value is a secret
		{`{match(request.header.Authorization, "Bearer (.*)")}`, "", `"[REDACTED]"`},
		{`{match(request.body.token, "^([^.]+)")}`, "", `"[REDACTED]"`},
		{`{last_segment(request.cookie.session)}`, "", `"[REDACTED]"`},
		{`{match(request.body.token, "^([^.]+)")}`, "      keep_secrets: [token]\n", `"[REDACTED]"`}, // still a part of a JWT
		{`{match(request.body.token, "^([^.]+)")}`, "      keep_secrets: [token]\n      keep_shapes: [jwt]\n", `"` + strings.Split(verifyToken, ".")[0] + `"`},
		// a part of a secret-shaped value is a secret, though it lost the shape
		{`{match(request.body.note, "\.([A-Za-z0-9_-]+) for")}`, "", `"[REDACTED]"`},
		{`sig={match(request.body.note, "\.([A-Za-z0-9_-]+) for")}!`, "", `"sig=[REDACTED]!"`},
		{`{last_segment(request.path)}`, "", `"[REDACTED]"`},
		{`{match(request.body.note, "\.([A-Za-z0-9_-]+) for")}`, "      keep_shapes: [jwt]\n", `"c2lnbmF0dXJlLW5vdC1jaGVja2Vk"`},
		// a claim taken through a function from a part of a secret is a claim
		{`{jwt(match(request.header.Authorization, "Bearer (.*)")).sub}`, "", `"u_1"`},
		{`{match(jwt(request.body.token).email, "@(.*)")}`, "", `"example.test"`},
	} {
		got, _ := evalData(t, tc.tmpl, funcExchange(), tc.extra)
		if got != tc.want {
			t.Errorf("%s %s= %s\n want %s", tc.tmpl, tc.extra, got, tc.want)
		}
	}

	// the subject: a claim is visible, the token is not, whole claims are redacted inside
	for _, tc := range []struct{ subject, want string }{
		{"{jwt(request.body.token).sub}", "u_1"},
		{"{request.body.token}", Redacted},
		{"user:{jwt(request.body.token).sub}", "user:u_1"},
		{"{jwt(request.cookie.session)}", `{"sub":"u_2","password":"[REDACTED]","refresh_token":"[REDACTED]","inner":"[REDACTED]","nested":{"api_key":"[REDACTED]","name":"Ann"}}`},
		{`{match(request.body.note, "\.([A-Za-z0-9_-]+) for")}`, Redacted},
		{`{last_segment(request.cookie.session)}`, Redacted},
	} {
		s := mustSet(t, "version: 1\nrules:\n  - name: r\n    match: {method: POST, path: \"/{p...}\"}\n    emit: {type: a.b, subject: "+yamlQuote(tc.subject)+"}\n")
		evs, _ := s.Evaluate(funcExchange(), EmitOptions{})
		if len(evs) != 1 || evs[0].Subject != tc.want {
			t.Errorf("subject %s = %q, want %q", tc.subject, evs[0].Subject, tc.want)
		}
	}
}

// TestFuncEverywhere: functions work in every templated field: a templated
// type (with types), the subject, the tenant, data, the dedupe key and a
// lookup's path.
func TestFuncEverywhere(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: verify
    match: {method: POST, path: /verify, status: 204}
    lookup: {get: "/api/users/{jwt(request.body.token).sub}?org={jwt(request.body.token).org}", as: user}
    emit:
      type: "user.{jwt(request.body.token).purpose}"
      types: [user.email_verified, user.password_reset]
      subject: "{jwt(request.body.token).sub}"
      tenant: "{jwt(request.body.token).org}"
      data: {id: "{user.body.id}", email: "{jwt(request.body.token).email}"}
      dedupe: "{jwt(request.body.token).jti}"
`)
	tok := tokenOf(jwtHeader, `{"sub":"u 1","org":"org_1","purpose":"email_verified","email":"a@x.test","jti":"j1"}`)
	ex := &Exchange{Method: "POST", Path: "/verify", Status: 204,
		RequestHeader: http.Header{"Content-Type": {"application/json"}}, RequestBody: []byte(`{"token":"` + tok + `"}`)}
	ms := s.Match(ex)
	if len(ms) != 1 {
		t.Fatalf("%d matches", len(ms))
	}
	if lk := ms[0].Lookup(0, ex); lk.Path != "/api/users/u%201?org=org_1" || len(lk.Missing) > 0 {
		t.Errorf("lookup %+v", lk)
	}
	ex.SetLookup("user", LookupResult{Status: 200, Body: []byte(`{"id":"u 1"}`)})
	evs, errs := ms[0].Events(ex, EmitOptions{Now: time.Unix(1e9, 0)})
	if len(errs) > 0 || len(evs) != 1 {
		t.Fatalf("%v %v", evs, errs)
	}
	ev := evs[0]
	if ev.Type != "user.email_verified" || ev.Subject != "u 1" || ev.Tenant != "org_1" || string(ev.Data) != `{"id":"u 1","email":"a@x.test"}` || ev.DedupeWindow == 0 {
		t.Errorf("event %+v data %s", ev, ev.Data)
	}
	// the dedupe key is the jti: the same token replayed gives the same id, another token another one
	again, _ := ms[0].Events(ex, EmitOptions{Now: time.Unix(2e9, 0)})
	if again[0].ID != ev.ID {
		t.Errorf("same token, ids %s and %s", ev.ID, again[0].ID)
	}
	ex2 := &Exchange{Method: "POST", Path: "/verify", Status: 204, RequestHeader: ex.RequestHeader,
		RequestBody: []byte(`{"token":"` + tokenOf(jwtHeader, `{"sub":"u 1","org":"org_1","purpose":"email_verified","email":"a@x.test","jti":"j2"}`) + `"}`)}
	ex2.SetLookup("user", LookupResult{Status: 200, Body: []byte(`{"id":"u 1"}`)})
	other, _ := ms[0].Events(ex2, EmitOptions{})
	if other[0].ID == ev.ID {
		t.Error("another jti, same event id")
	}
	// a purpose the types do not list is refused, as for any templated type
	ex3 := &Exchange{Method: "POST", Path: "/verify", Status: 204, RequestHeader: ex.RequestHeader,
		RequestBody: []byte(`{"token":"` + tokenOf(jwtHeader, `{"purpose":"admin_granted"}`) + `"}`)}
	if evs, errs := s.Evaluate(ex3, EmitOptions{}); len(evs) != 0 || len(errs) != 1 || errs[0].(*EmitError).Reason != RefusedUndeclared {
		t.Errorf("undeclared purpose: %v %v", evs, errs)
	}
}

// TestFuncNeeds: a function reads what its argument reads, for the bodies
// captured and for the lookups used.
func TestFuncNeeds(t *testing.T) {
	for _, tc := range []struct {
		tmpl string
		want Need
	}{
		{"{jwt(request.body.token).sub}", Need{RequestBody: true}},
		{"{jwt(request.header.Authorization).sub}", Need{}},
		{"{last_segment(response.header.Location)}", Need{}},
		{`{match(response.body.meta.location, "([^/]+)$")}`, Need{ResponseBody: true}},
		{`{match(last_segment(jwt(response.body.t).url), "x")}`, Need{ResponseBody: true}},
	} {
		s := mustSet(t, "version: 1\nrules:\n  - name: r\n    match: {method: POST, path: /x}\n    emit: {type: a.b, subject: "+yamlQuote(tc.tmpl)+"}\n")
		if got := s.Rules()[0].Need(); got != tc.want {
			t.Errorf("%s: need %+v, want %+v", tc.tmpl, got, tc.want)
		}
	}
	// a lookup read only through a function is used
	mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x}
    lookup: {get: /api/me, as: me}
    emit: {type: a.b, subject: "{jwt(me.body.id_token).sub}"}
`)
}

func TestFuncParseErrors(t *testing.T) {
	long := strings.Repeat("a", MaxRegexLen+1)
	for _, tc := range []struct{ tmpl, want string }{
		{"{jwt()}", "jwt(…) takes one value, as in {jwt(request.body.token) or jwt(request.body.token).sub}"},
		{"{jwt(request.body.a, request.body.b)}", "jwt(…) takes one value"},
		{"{match(request.body.a)}", `match(…) takes a value and a quoted regex, as in {match(response.header.Location, "/Users/([^/?]+)$")}`},
		{"{match(request.body.a, /Users/)}", `want the regex in double quotes, as in "/Users/([^/?]+)$", got "/Users/"`},
		{`{match(request.body.a, "x" "y")}`, "want the regex in double quotes"},
		{`{match(request.body.a, "(")}`, `the regex "(" does not compile: error parsing regexp: missing closing )`},
		{`{match(request.body.a, "` + long + `")}`, fmt.Sprintf("the regex is %d bytes; a regex may be at most %d (rules.MaxRegexLen)", MaxRegexLen+1, MaxRegexLen)},
		{`{match(request.body.a, "x`, `unterminated string in placeholder`},
		{"{nope(request.body.a)}", `unknown function nope(…) in {nope(request.body.a)}: want jwt(…), last_segment(…) or match(…, "regex")`},
		{"{jwt(request.bdy.a)}", "unknown placeholder {request.bdy.a}"},
		{"{jwt(path.nope)}", "the path template has no parameter {nope}"},
		{"{jwt(lk.body.a)}", `unknown placeholder {lk.body.a}`},
		{"{jwt({request.body.a})}", "write the value inside jwt(…) without braces"},
		{"{last_segment(request.body.a).x}", "last_segment(…) gives a string; only jwt(…) takes a claim path after it"},
		{`{match(request.body.a, "x").y}`, "match(…) gives a string"},
		{"{jwt(request.body.a).}", "want .<claim path> or nothing after jwt(…)"},
		{"{jwt(request.body.a)sub}", "want .<claim path> or nothing after jwt(…)"},
		{"{jwt(request.body.a}", `want a ")" to close the call`},
		{"{jwt(jwt(jwt(jwt(jwt(request.body.a)))))}", "functions nest more than 4 deep (rules.MaxFuncNesting)"},
	} {
		src := "version: 1\nrules:\n  - name: r\n    match: {method: POST, path: \"/u/{id}\"}\n    emit:\n      type: a.b\n      subject: " + yamlQuote(tc.tmpl) + "\n"
		_, err := Parse("f.yaml", []byte(src))
		if err == nil {
			t.Errorf("%s: accepted", tc.tmpl)
			continue
		}
		// every error names the file, the line and column of the value, and the field
		if !strings.HasPrefix(err.Error(), "f.yaml:7:16: emit.subject: ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got %v\nwant f.yaml:7:16: emit.subject: …%s…", tc.tmpl, err, tc.want)
		}
	}
	// four deep is allowed
	mustSet(t, "version: 1\nrules:\n  - name: r\n    match: {method: POST, path: /x}\n    emit: {type: a.b, subject: '{jwt(jwt(jwt(jwt(request.body.a).t).t).t).sub}'}\n")
}

// TestHostileJWTs: whatever a client sends as a token costs time linear in
// its size and memory bounded by MaxJWTClaims, and never more than a missing
// placeholder or a truncated claims object.
func TestHostileJWTs(t *testing.T) {
	enc := base64.RawURLEncoding.EncodeToString
	h := enc([]byte(jwtHeader))
	deepObj := strings.Repeat(`{"a":`, 10_000) + "1" + strings.Repeat("}", 10_000) // 60 KiB, within MaxJWTClaims
	deepArr := `{"a":` + strings.Repeat("[", 30_000) + strings.Repeat("]", 30_000) + "}"
	wide := "{" + strings.Repeat(`"k":1,`, 10_000) + `"sub":"last"}`
	for _, tc := range []struct {
		name, token, tmpl, want string
	}{
		{"1 MiB token", h + "." + strings.Repeat("A", 1<<20) + ".sig", "{jwt(request.body.t)}", "null"},
		{"1 MiB of dots", strings.Repeat(".", 1<<20), "{jwt(request.body.t)}", "null"},
		{"1 MiB header", enc([]byte(`{"alg":"x","p":"`+strings.Repeat("x", 1<<20)+`"}`)) + ".e30.sig", "{jwt(request.body.t)}", "null"},
		{"claims nested 10,000 deep", h + "." + enc([]byte(deepObj)) + ".sig", "{jwt(request.body.t)}", "truncated"},
		{"claims nested 10,000 deep, a path into them", h + "." + enc([]byte(deepObj)) + ".sig", "{jwt(request.body.t).a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a}", "truncated"},
		{"claims: a list nested 30,000 deep", h + "." + enc([]byte(deepArr)) + ".sig", "{jwt(request.body.t)}", "truncated"},
		{"10,000 claims", h + "." + enc([]byte(wide)) + ".sig", "{jwt(request.body.t).sub}", `"last"`},
		{"bad base64 after a good start", h + "." + enc([]byte(`{"sub":"x"}`)) + "%%%.sig", "{jwt(request.body.t).sub}", "null"},
		{"padded payload", h + "." + base64.URLEncoding.EncodeToString([]byte(`{"sub":"pad"}`)) + ".sig", "{jwt(request.body.t).sub}", `"pad"`},
		{"unsecured (alg none, empty signature)", enc([]byte(`{"alg":"none"}`)) + "." + enc([]byte(`{"sub":"n"}`)) + ".", "{jwt(request.body.t).sub}", `"n"`},
		{"invalid UTF-8 in a claim", h + "." + enc([]byte("{\"sub\":\"a\xffb\"}")) + ".sig", "{jwt(request.body.t).sub}", `"a\ufffdb"`},
	} {
		body, _ := json.Marshal(map[string]string{"t": tc.token})
		ex := &Exchange{Method: "POST", Path: "/x", Status: 200, RequestHeader: http.Header{"Content-Type": {"application/json"}}, RequestBody: body}
		start := time.Now()
		got, _ := evalData(t, tc.tmpl, ex, "")
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: %s", tc.name, d)
		}
		switch {
		case tc.want == "truncated":
			if !strings.Contains(got, `"[TRUNCATED]"`) {
				t.Errorf("%s: %.200s, want it cut at MaxDataDepth", tc.name, got)
			}
		case got != tc.want:
			t.Errorf("%s: %.200s, want %s", tc.name, got, tc.want)
		}
	}
}

// TestJWTMemo: one exchange decodes a token once, however many claims its
// rules read, and a different token is decoded afresh.
func TestJWTMemo(t *testing.T) {
	ex := &Exchange{}
	a, ok := ex.jwtClaims(verifyToken)
	if !ok || !strings.Contains(a, `"u_1"`) {
		t.Fatal(a)
	}
	ex.memoOf().jwt.claims = `{"sub":"memo"}` // what the memo hands out for the same token
	if b, _ := ex.jwtClaims(verifyToken); b != `{"sub":"memo"}` {
		t.Errorf("decoded again: %s", b)
	}
	if c, _ := ex.jwtClaims(sessionToken); !strings.Contains(c, `"u_2"`) {
		t.Errorf("another token: %s", c)
	}
	if _, ok := ex.jwtClaims("x.y.z"); ok {
		t.Error("x.y.z decoded")
	}
	if _, ok := ex.jwtClaims("x.y.z"); ok {
		t.Error("x.y.z decoded from the memo")
	}
	if c, ok := (&Exchange{}).jwtClaims(""); ok || c != "" {
		t.Errorf("an empty token, on a fresh memo: %q %v", c, ok)
	}
	if c, ok := ex.jwtClaims(""); ok || c != "" {
		t.Errorf("an empty token: %q %v", c, ok)
	}
	if c, ok := ex.jwtClaims(verifyToken); !ok || !strings.Contains(c, `"u_1"`) {
		t.Errorf("the first token again: %q %v", c, ok)
	}
}

func TestLastSegment(t *testing.T) {
	for in, want := range map[string]string{
		"/scim/v2/Users/2819c223":             "2819c223",
		"/scim/v2/Users/2819c223/":            "2819c223",
		"/scim/v2/Users/2819c223//":           "2819c223",
		"https://h.test/scim/Users/2819c223":  "2819c223",
		"https://h.test:8443/Users/a?b=/c#/d": "a",
		"Users/2819c223":                      "2819c223",
		"2819c223":                            "2819c223",
		"urn:ietf:params:scim:u:1":            "urn:ietf:params:scim:u:1",
		"/files/a%2Fb":                        "a/b",
		"/u/caf%C3%A9":                        "café",
		"  /u/1  ":                            "1",
		"mailto:x@y":                          "mailto:x@y",
		"/":                                   "",
		"https://h.test":                      "",
		"https://h.test/":                     "",
		"?a=/b":                               "",
		"/u/%":                                "",
	} {
		got, _, ok := lastSegment(in)
		if got != want || ok != (want != "") {
			t.Errorf("lastSegment(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

// BenchmarkPlaceholderFuncs builds one event whose subject is read through a
// function, against the same event reading a plain placeholder (the
// baselines): the difference is what the function costs per call.
func BenchmarkPlaceholderFuncs(b *testing.B) {
	tok := tokenOf(`{"alg":"RS256","typ":"JWT","kid":"2026-11"}`, `{"iss":"https://auth.example.test","sub":"u_1234567890","aud":"app","exp":1767225600,"iat":1767222000,"email":"ann@example.test","email_verified":true,"org":{"id":"org_42","role":"admin"},"purpose":"email_verification","jti":"8f14e45f-ceea-467f-a8f8-6b0e3b3c7b5e"}`)
	ex := func() *Exchange {
		return &Exchange{Method: "POST", Path: "/verify", Status: 201,
			RequestHeader: http.Header{"Content-Type": {"application/json"}}, RequestBody: []byte(`{"token":"` + tok + `","sub":"u_1234567890"}`),
			ResponseHeader: http.Header{"Location": {"https://scim.example.test/scim/v2/Users/2819c223-7f76-453a-919d-413861904646"}}}
	}
	for _, bc := range []struct{ name, subject, data string }{
		{"baseline-body-value", "{request.body.sub}", "null"},
		{"jwt-claim", "{jwt(request.body.token).sub}", "null"},
		{"baseline-3-body-values", "{request.body.sub}", `{e: "{request.body.sub}", o: "{request.body.sub}"}`},
		{"jwt-3-claims", "{jwt(request.body.token).sub}", `{e: "{jwt(request.body.token).email}", o: "{jwt(request.body.token).org.id}"}`},
		{"jwt-whole-claims", "{request.body.sub}", `"{jwt(request.body.token)}"`},
		{"baseline-header", "{response.header.Location}", "null"},
		{"last_segment", "{last_segment(response.header.Location)}", "null"},
		{"match", `{match(response.header.Location, "/Users/([^/?]+)$")}`, "null"},
	} {
		s := mustSet(b, "version: 1\nrules:\n  - name: r\n    match: {method: POST, path: /verify}\n    emit: {type: a.b, subject: "+yamlQuote(bc.subject)+", data: "+bc.data+"}\n")
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				e := ex()
				ms := s.Match(e)
				evs, _ := ms[0].Events(e, EmitOptions{Source: "bench"})
				if len(evs) != 1 || evs[0].Subject == "" {
					b.Fatal("no subject")
				}
			}
		})
	}
}

// BenchmarkPlaceholderCall resolves one placeholder, the body already
// parsed: a function's cost per call against the plain placeholders it
// reads (baseline-*). jwt's memo is cleared before every call, so each
// one decodes the token.
func BenchmarkPlaceholderCall(b *testing.B) {
	tok := tokenOf(`{"alg":"RS256","typ":"JWT","kid":"2026-11"}`, `{"iss":"https://auth.example.test","sub":"u_1234567890","aud":"app","exp":1767225600,"iat":1767222000,"email":"ann@example.test","email_verified":true,"org":{"id":"org_42","role":"admin"},"purpose":"email_verification","jti":"8f14e45f-ceea-467f-a8f8-6b0e3b3c7b5e"}`)
	ex := &Exchange{Method: "POST", Path: "/verify", Status: 201,
		RequestHeader: http.Header{"Content-Type": {"application/json"}}, RequestBody: []byte(`{"token":"` + tok + `","sub":"u_1234567890"}`),
		ResponseHeader: http.Header{"Location": {"https://scim.example.test/scim/v2/Users/2819c223-7f76-453a-919d-413861904646"}}}
	for _, bc := range []struct{ name, ph string }{
		{"baseline-body-value", "request.body.sub"},
		{"jwt-claim", "jwt(request.body.token).sub"},
		{"jwt-claims-object", "jwt(request.body.token)"},
		{"baseline-header", "response.header.Location"},
		{"last_segment", "last_segment(response.header.Location)"},
		{"match", `match(response.header.Location, "/Users/([^/?]+)$")`},
	} {
		ph, err := parsePlaceholder(bc.ph, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				ex.memoOf().jwt = jwtMemo{}
				if v := ph.resolve(ex, nil); !v.found {
					b.Fatal("not found")
				}
			}
		})
	}
}

// TestFuncsOverAnySource: the function layer does not know where a value
// comes from. A kind of placeholder this file has never heard of, resolved
// by its own reader, is wrapped like a body or a header.
func TestFuncsOverAnySource(t *testing.T) {
	ph, err := parsePlaceholder(`match(jwt(request.body.t).url, "/Users/([^/?]+)$")`, nil)
	if err != nil {
		t.Fatal(err)
	}
	const elsewhere phKind = 200
	src := ph.source()
	if src.kind != phRequestBody || src.gpath != "t" || ph.kind != phRequestBody {
		t.Fatalf("source %+v", src)
	}
	src.kind = elsewhere // as if parsed from a placeholder kind added later
	tok := tokenOf(jwtHeader, `{"url":"https://h/scim/v2/Users/2819c223"}`)
	got := ph.resolveWith(&Exchange{}, func(p *placeholder) value {
		if p.kind != elsewhere {
			t.Fatalf("read called with %+v", p)
		}
		return textValue(tok, true)
	})
	if !got.found || got.text != "2819c223" {
		t.Errorf("got %+v", got)
	}
}
