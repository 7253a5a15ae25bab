package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary rule files to the parser: it must never panic, and
// whatever it accepts must build a Set whose inline tests run without panicking.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("examples/*.yaml")
	more, _ := filepath.Glob("testdata/*.yaml")
	for _, p := range append(seeds, more...) {
		if b, err := os.ReadFile(p); err == nil {
			f.Add(b)
		}
	}
	f.Add([]byte(ruleFile("name: a\nmatch: {method: POST, path: \"/u/{id}\", status: [2xx, 301-302]}\nemit: {type: \"u.{request.body.x}\", data: \"{response.body}\"}")))
	f.Add([]byte(`{"version":1,"rules":[{"name":"a","match":{"method":"*","path":"/f/{p...}"},"emit":{"type":"a.b"}}]}`))
	f.Add([]byte(fuzzBatchSet)) // each (where, captures, then) and batch rules
	f.Add([]byte(ruleFile("name: a\nmatch: {method: DELETE, path: \"/m/{id}\"}\nlookup:\n  - {get: \"/m/{path.id}\", as: old, when: before, header: {X-T: \"{request.header.X-T}\"}}\n  - {get: \"/o/{old.body.o}\", as: org, header: {Authorization: \"Bearer {response.body.t}\"}}\nemit: {type: a.b, data: {o: \"{old.body}\", g: \"{org.body}\"}}")))
	// placeholder functions, well and badly written
	f.Add([]byte(ruleFile(`name: f
match: {method: POST, path: "/u/{id}"}
lookup: {get: "/x/{jwt(request.body.t).sub}", as: lk}
emit: {type: "u.{jwt(request.header.Authorization).act}", types: [u.a], subject: '{match(last_segment(response.header.Location), "^([^?]+)$")}', data: {c: "{jwt(lk.body.id_token)}", p: '{match(path.id, "a{2,}\"")}'}}`)))
	for _, ph := range []string{`{jwt(jwt(jwt(jwt(jwt(request.body.a)))))}`, `{match(request.body.a, "(")}`, `{match(request.body.a, "x`, `{nope(request.body.a)}`,
		`{jwt(request.body.a).}`, `{last_segment(request.body.a).x}`, `{match(request.body.a, "` + strings.Repeat("a", MaxRegexLen+1) + `")}`, `{jwt(}`, `{jwt())}`, `{match(,)}`} {
		f.Add([]byte(ruleFile("name: f\nmatch: {method: POST, path: /x}\nemit: {type: a.b, subject: '" + ph + "'}")))
	}
	f.Add([]byte(ruleFile("name: a\nmatch: {method: PATCH, path: \"/u/{id}\"}\nlookup: {get: \"/u/{path.id}\", as: old}\nemit: {type: u.updated, data: \"{response.body}\", previous: {before: \"{old.body}\", after: {x: \"{response.body.x}\"}, skip_unchanged: true, ignore: [updated_at]}}") +
		"tests:\n  - name: t\n    request: {method: PATCH, path: /u/1}\n    response: {body: {x: 2}}\n    lookup: {old: {body: {x: 1}}}\n    expect: [{type: u.updated, previous: {x: 1}}]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz.yaml", data)
		if err != nil {
			if _, ok := err.(ErrorList); !ok {
				t.Fatalf("error is %T, want ErrorList", err)
			}
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("empty error message")
			}
			return
		}
		s, err := NewSet(file)
		if err != nil {
			return
		}
		s.RunTests()
		s.EventTypes()
	})
}

// fuzzSet is a fixed rule set exercising every matcher and template kind.
const fuzzSet = `version: 1
rules:
  - name: a
    match:
      method: [POST, PUT]
      path: ["/u/{id}", "/f/{id}/{rest...}"]
      request: {header: {X-A: {regex: "^[a-z]+$"}}, query: {q: exists}, body: {n: {gt: 1, lt: 1000}, "tags.#": {gte: 0}}}
      response: {body: {"user.id": exists}}
    emit:
      - type: "u.{request.body.kind}"
        types: [u.created, u.updated, u.deleted]
        subject: "{path.id}-{request.query.q}"
        data: "{response.body}"
        omit: [internal]
      - type: u.updated
        data: {id: "{response.body.user.id}", n: "{request.body.n}", c: "{request.cookie.c}", h: "{request.header.X-A}", all: "{request.body}", t: "a{response.body.user}b"}
        dedupe: "{request.header.Idempotency-Key}"
      - type: u.token
        subject: "{jwt(request.header.X-A).sub}"
        data:
          claims: "{jwt(request.header.X-A)}"
          body: "{jwt(request.body.token).org.id}"
          cookie: "{jwt(request.cookie.c)}"
          seg: "{last_segment(request.header.X-A)}"
          m: '{match(request.header.X-A, "([^/.]+)$")}'
          nested: '{match(last_segment(jwt(request.body.token).url), "^(.{0,8})")}'
          text: "s={jwt(request.header.X-A).sub} l={last_segment(request.body.kind)}"
      - type: u.updated
        data: "{response.body.user}"
        previous: {before: "{request.body.user}", skip_unchanged: true, ignore: [n, a.b]}
      - type: u.updated
        data: {seg: "{last_segment(request.header.X-A)}", m: '{match(request.body.kind, "^(.)")}', u: "{response.body.user}"}
        previous: {before: {seg: "{last_segment(request.body.kind)}", m: '{match(request.header.X-A, "^(.)")}', u: "{request.body.user}"}}
  - name: b
    match: {method: "*", path: "/{x...}", status: 100-599}
    emit: {type: any.thing, data: {p: "{path.x}", s: "{response.status}"}}
  - name: c
    match: {method: [POST, DELETE], path: "/u/{id}", request: {header: {X-A: exists}}}
    lookup:
      - {get: "/u/{path.id}?q={request.query.q}", as: old, when: before, header: {X-A: "{request.header.X-A}", Cookie: "c={request.cookie.c}"}}
      - {get: "/o/{old.body.org}", as: org, when: before, header: {X-Org: "{old.body.org}"}}
      - {get: "/me", as: me, header: {Authorization: "Bearer {response.body.user.id}", X-Old: "{old.body}"}}
    emit: {type: u.removed, data: {old: "{old.body}", org: "{org.status}", me: "{me.body.id}"}}
`

// FuzzMatch feeds arbitrary exchanges to a fixed rule set: matching and
// building events must never panic, every event's data must be valid, compact
// JSON, and its envelope must read back as what encoding/json writes.
func FuzzMatch(f *testing.F) {
	s := mustSet(f, fuzzSet)
	f.Add("POST", "/u/1", "q=1", "abc", []byte(`{"n":5,"kind":"created","tags":[]}`), 200, []byte(`{"user":{"id":"x","password":"p"},"internal":1}`))
	f.Add("PUT", "/f/1/a/b", "q=%zz", "ABC", []byte(`{"n":"7"}`), 201, []byte(`[1,2`))
	f.Add("GET", "//", "", "", []byte(nil), 0, []byte("\xff\xfe"))
	f.Add("POST", "/u/\x00", "q", "a", []byte(`{"n":1e308,"kind":"a.b"}`), 204, []byte(`{"user":{"id":{"a":[{"b":"\u2028"}]}}}`))
	// hostile JWTs in a header, a cookie and the body
	for _, tok := range hostileTokens() {
		f.Add("POST", "/u/1", "q=1", tok, []byte(`{"n":5,"kind":"created","token":"`+tok+`"}`), 200, []byte(`{"user":{"id":"x"}}`))
	}
	f.Add("PUT", "/u/2", "q=1", "a", []byte(`{"n":5,"kind":"updated","user":{"id":"x","name":"A","n":1}}`), 200, []byte(`{"user":{"id":"x","name":"B","n":2}}`))
	f.Fuzz(func(t *testing.T, method, path, query, hdr string, reqBody []byte, status int, respBody []byte) {
		ex := &Exchange{Method: method, Path: path, RawQuery: query, Status: status,
			RequestHeader:  http.Header{"X-A": {hdr}, "Cookie": {hdr}, "Idempotency-Key": {hdr}},
			RequestBody:    reqBody,
			ResponseHeader: http.Header{"Content-Type": {"application/json"}, "Set-Cookie": {hdr, "c=" + hdr, "c=; Max-Age=0"}},
			ResponseBody:   respBody}
		s.CanMatch(method, path)
		s.Plan(method, path)
		// before-lookups, then every lookup of the matches: what would be sent
		for _, m := range s.MatchBefore(ex) {
			for i := 0; i < m.NumLookups(); i++ {
				if m.LookupBefore(i) {
					lk := m.Lookup(i, ex)
					checkLookupRequest(t, lk, hdr)
					ex.SetLookup(lk.As, LookupResult{Status: 200, Body: respBody, Missing: lk.HeaderMissing})
				}
			}
		}
		for _, m := range s.Match(ex) {
			for i := 0; i < m.NumLookups(); i++ {
				checkLookupRequest(t, m.Lookup(i, ex), hdr)
			}
		}
		evs, _ := s.Evaluate(ex, EmitOptions{})
		for _, ev := range evs {
			if !json.Valid(ev.Data) {
				t.Fatalf("invalid data JSON %q", ev.Data)
			}
			// the envelope copies rendered data as it is: it must be compact already
			var compact bytes.Buffer
			if err := json.Compact(&compact, ev.Data); err != nil || !bytes.Equal(compact.Bytes(), ev.Data) {
				t.Fatalf("rendered data is not compact: %q", ev.Data)
			}
			checkEnvelope(t, ev)
			if !eventTypeRE.MatchString(ev.Type) {
				t.Fatalf("bad type %q", ev.Type)
			}
		}
	})
}

// fuzzBatchSet is a fixed rule set of emits with each and batch envelopes
// of every shape: SCIM /Bulk (string statuses, a base path), a JSON $batch
// paired by id (atomic), and a top-level list of answers.
const fuzzBatchSet = `version: 1
rules:
  - name: created
    match: {method: POST, path: ["/scim/v2/Users", "/v1/users"], status: 201}
    emit: {type: user.created, subject: "{response.body.id}", data: {id: "{response.body.id}", loc: "{response.header.Location}", q: "{request.query.x}"}, dedupe: "{request.header.Idempotency-Key}"}
  - name: deleted
    match: {method: DELETE, path: ["/scim/v2/Users/{id}", "/v1/users/{id}"]}
    lookup: {get: "/scim/v2/Users/{path.id}", as: old, when: before, header: {X-Q: "{request.query.x}"}}
    emit: {type: user.deleted, subject: "{path.id}", data: {old: "{old.body}"}}
  - name: members
    match: {method: PATCH, path: "/scim/v2/Groups/{id}"}
    emit:
      - type: "group.member_{item.op}"
        types: [group.member_add, group.member_remove]
        each: {items: "{request.body.Operations}", where: {op: {regex: "^(add|remove)$"}, path: members}, then: "{item.value}"}
        subject: "{path.id}"
        data: {member: "{item.value}", i: "{index}", all: "{item}"}
      - type: group.member_removed
        each: {items: "{request.body.Operations}", where: {path: {regex: '^members\[value eq "(?P<m>[^"]*)"\]$'}}}
        data: {member: "{where.m}", text: "m={where.m} #{index} {item}"}
  - name: imported
    match: {method: POST, path: /import}
    emit: {type: user.imported, each: "{request.body}", subject: "{item.id}", data: "{item}"}
  - name: bulk
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "{item.path}", body: "{item.data}"}
      response: {items: "{response.body.Operations}", status: "{item.status}", body: "{item.response}", location: "{item.location}"}
  - name: graph
    match: {method: POST, path: /v1/$batch}
    batch:
      base: /v1
      atomic: true
      request: {items: "{request.body.requests}", id: "{item.id}", method: "{item.method}", url: "{item.url}", body: "{item.body}"}
      response: {items: "{response.body.responses}", id: "{item.id}", status: "{item.status}", body: "{item.body}"}
  - name: plain
    match: {method: POST, path: /batch}
    batch:
      request: {items: "{request.body.requests}", method: "{item.method}", url: "/v1{item.url}", body: "{item.body}"}
      response: {items: "{response.body}", status: "{item.status}", body: "{item.body}"}
`

// FuzzBatch feeds arbitrary envelopes and bodies to each and batch rules:
// nothing panics, every event is valid (compact data, an envelope that reads
// back), no batch rule ever emits, and the limits hold whatever the shape.
func FuzzBatch(f *testing.F) {
	s := mustSet(f, fuzzBatchSet)
	deep := strings.Repeat("[", 10000) + strings.Repeat("]", 10000)
	var huge strings.Builder
	huge.WriteString(`{"Operations":[`)
	for i := 0; i < 3000; i++ {
		if i > 0 {
			huge.WriteString(",")
		}
		huge.WriteString(`{"method":"DELETE","path":"/Users/1"}`)
	}
	huge.WriteString(`]}`)
	hugeResp := strings.ReplaceAll(huge.String(), `"method":"DELETE","path":"/Users/1"`, `"status":"204"`)
	f.Add("/scim/v2/Bulk", 200, []byte(`{"Operations":[{"method":"POST","path":"/Users","data":{"userName":"a"}},{"method":"DELETE","path":"/Users/x"}]}`),
		[]byte(`{"Operations":[{"status":"201","location":"/scim/v2/Users/u1","response":{"id":"u1"}},{"status":"2O1"}]}`))
	f.Add("/scim/v2/Bulk", 200, []byte(`{"Operations":[{"method":"PATCH","path":"/Groups/g","data":{"Operations":[{"op":"add","path":"members","value":[{"value":"m"}]},{"op":"x","path":"members[value eq \"q\"]"}]}}]}`),
		[]byte(`{"Operations":[{"status":200}]}`))
	f.Add("/scim/v2/Bulk", 200, []byte(huge.String()), []byte(hugeResp))
	f.Add("/scim/v2/Bulk", 200, []byte(`{"Operations":`+deep+`}`), []byte(`{"Operations":`+deep+`}`))
	f.Add("/scim/v2/Bulk", 200, []byte(`{"Operations":[{"method":"POST","path":"/Users","data":`+deep+`}]}`), []byte(`{"Operations":[{"status":"201","response":{"id":`+deep+`}}]}`))
	f.Add("/v1/$batch", 200, []byte(`{"requests":[{"id":"1","method":"POST","url":"/users?x=1","body":{}},{"id":"1","method":"DELETE","url":"https://h/v1/users/2#f"}]}`),
		[]byte(`{"responses":[{"id":"1","status":201,"body":{"id":"u"}},{"id":"2","status":"204"}]}`))
	f.Add("/v1/$batch", 200, []byte(`{"requests":[{"id":{"a":1},"method":["POST"],"url":7,"body":"raw"}]}`), []byte(`{"responses":[{"id":{"a":1},"status":1e400}]}`))
	f.Add("/batch", 200, []byte(`{"requests":[{"method":"DELETE","url":"/users/1"},{"method":"DELETE","url":"/users/2"},{"method":"DELETE","url":"/users/3"}]}`), []byte(`[{"status":204}]`))
	f.Add("/batch", 200, []byte(`{"requests":[{"method":"DELETE","url":"/users/1"}]}`), []byte(`[{"status":204},{"status":204},{"status":204}]`))
	f.Add("/batch", 500, []byte(`{"requests":[{"method":"DELETE","url":"/users/1"}]}`), []byte(`[{"status":204}]`))
	f.Add("/import", 200, []byte(`[{"id":"a"},{"id":"b"},1,null,"x",[]]`), []byte(nil))
	f.Add("/import", 200, []byte(deep), []byte(nil))
	f.Fuzz(func(t *testing.T, path string, status int, reqBody, respBody []byte) {
		ex := &Exchange{Method: "POST", Path: path, Status: status,
			RequestHeader:  http.Header{"Content-Type": {"application/scim+json"}, "Idempotency-Key": {"k"}},
			RequestBody:    reqBody,
			ResponseHeader: http.Header{"Content-Type": {"application/json"}},
			ResponseBody:   respBody}
		if need, _ := s.Plan("POST", path); !need.BeforeLookups && len(s.MatchBefore(ex)) > 0 {
			t.Fatal("MatchBefore found work that Plan did not announce")
		}
		// the request side, split before forwarding, agrees with the split after the response
		before := map[int]*Exchange{}
		for _, m := range s.MatchBefore(ex) {
			if !m.IsBatch() {
				continue
			}
			subs, _ := m.BatchRequests(ex)
			if len(subs) > MaxBatchOps {
				t.Fatalf("%d sub-requests", len(subs))
			}
			for i, sub := range subs {
				if i > 0 && sub.SubIndex() <= subs[i-1].SubIndex() {
					t.Fatalf("sub-request positions out of order")
				}
				before[sub.SubIndex()] = sub
				for _, sm := range s.MatchBefore(sub) {
					if sm.IsBatch() {
						t.Fatal("a batch rule matched a sub-request")
					}
					for j := 0; j < sm.NumLookups(); j++ {
						if sm.LookupBefore(j) {
							checkLookupRequest(t, sm.Lookup(j, sub), "")
						}
					}
				}
			}
			bt, _ := m.Batch(ex)
			for _, sub := range bt.Subs {
				b, ok := before[sub.SubIndex()]
				if !ok || b.Method != sub.Method || b.Path != sub.Path || b.RawQuery != sub.RawQuery || !bytes.Equal(b.RequestBody, sub.RequestBody) {
					t.Fatalf("sub-exchange %d %s %s?%s has no like sub-request before forwarding (%v)", sub.SubIndex(), sub.Method, sub.Path, sub.RawQuery, b)
				}
			}
		}
		evs, errs := s.Evaluate(ex, EmitOptions{})
		if len(evs) > MaxBatchOps+MaxEachItems {
			t.Fatalf("%d events from one exchange", len(evs))
		}
		for _, err := range errs {
			var ee *EmitError
			if !errors.As(err, &ee) || len(err.Error()) > 1000 {
				t.Fatalf("error %T %q", err, err)
			}
		}
		for _, ev := range evs {
			switch ev.Source.Rule {
			case "bulk", "graph", "plain":
				t.Fatalf("batch rule %s emitted %+v", ev.Source.Rule, ev)
			}
			if !json.Valid(ev.Data) {
				t.Fatalf("invalid data JSON %q", ev.Data)
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, ev.Data); err != nil || !bytes.Equal(compact.Bytes(), ev.Data) {
				t.Fatalf("rendered data is not compact: %q", ev.Data)
			}
			checkEnvelope(t, ev)
		}
	})
}

// checkLookupRequest holds a rendered lookup to what may be sent: no header
// rules forbid, no value a server would split or refuse, none too long. The
// caller's Authorization and Cookie pass as sent (reqHdr: a real server
// refuses a request whose headers hold CR, LF or NUL, so then nothing is
// checked of them).
func checkLookupRequest(t *testing.T, lk LookupRequest, reqHdr string) {
	t.Helper()
	asSent := strings.ContainsAny(reqHdr, "\r\n\x00")
	for name, vals := range lk.Header {
		if _, bad := forbiddenLookupHeader(name); bad || !validHeaderName(name) {
			t.Fatalf("lookup %s sets header %q", lk.As, name)
		}
		for _, v := range vals {
			if name != "Authorization" && name != "Cookie" && badHeaderValue(v) != "" {
				t.Fatalf("lookup %s header %s = %q: %s", lk.As, name, v, badHeaderValue(v))
			}
			if strings.ContainsAny(v, "\r\n\x00") && !(asSent && (name == "Authorization" || name == "Cookie")) {
				t.Fatalf("lookup %s header %s = %q holds CR, LF or NUL", lk.As, name, v)
			}
		}
	}
}

// hostileTokens are JWTs and near-JWTs a client might send: valid ones with
// secret and nested claims, bad base64, non-object claims, deep nesting.
func hostileTokens() []string {
	h := `{"alg":"HS256"}`
	return []string{
		tokenOf(h, `{"sub":"u_1","password":"p","url":"/Users/2819c223?x=1","org":{"id":"o"}}`),
		"Bearer " + tokenOf(h, `{"sub":"`+tokenOf(h, `{"sub":"inner"}`)+`"}`),
		tokenOf(h, `["not","an","object"]`),
		tokenOf(h, strings.Repeat(`{"a":`, 500)+"1"+strings.Repeat("}", 500)),
		tokenOf(h, `{"sub":"\u0000\ud800"}`) + "==",
		"eyJhbGciOiJIUzI1NiJ9.%%%.sig",
		"a.b.c",
		strings.Repeat(".", 100),
	}
}

// FuzzPlaceholderFuncs feeds arbitrary values to jwt(…) and last_segment(…):
// they never panic, claims are always a JSON object within MaxJWTClaims, and
// a last segment is never empty.
func FuzzPlaceholderFuncs(f *testing.F) {
	for _, s := range append(hostileTokens(), "/scim/v2/Users/2819c223", "https://h/a%2Fb/?q#f", "/", "%", "https://h") {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if claims, ok := decodeJWT(s); ok {
			if len(claims) > MaxJWTClaims || claims[0] != '{' || !validJSON([]byte(claims)) {
				t.Fatalf("claims %q", claims)
			}
		}
		if seg, _, ok := lastSegment(s); ok && seg == "" {
			t.Fatal("empty segment")
		}
		for _, fn := range []fnKind{fnJWT, fnLastSegment} {
			v := (&phCall{fn: fn}).apply(&Exchange{}, textValue(s, true))
			if v.found && v.isJSON && !validJSON([]byte(v.raw)) {
				t.Fatalf("invalid JSON %q", v.raw)
			}
		}
	})
}

// FuzzMultipart feeds arbitrary bodies to the multipart reader: it never
// panics, and what it reads is a JSON object no longer than the escaped text
// of the body could make it.
func FuzzMultipart(f *testing.F) {
	f.Add([]byte("--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--B--"), "B")
	f.Add([]byte("--B\nContent-Disposition: form-data; name=\"a\"\n\n1\n--B\nContent-Disposition: form-data; name=\"f\"; filename=\"x\"\n\nF\n--B--\n"), "B")
	f.Add([]byte("pre\r\n--B  \r\ncontent-disposition: form-data;\r\n name=\"a\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9=\r\n\r\n--B--epi"), "B")
	f.Add([]byte(strings.Repeat("--B\r\n\r\n\r\n", 50)+"--B--"), "B")
	for _, h := range hostileMultipart {
		if b := h.body(); len(b) < 64<<10 {
			f.Add(b, "B")
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, boundary string) {
		out, ok := multipartJSON(body, boundary)
		if !ok {
			return
		}
		if !json.Valid(out) || out[0] != '{' {
			t.Fatalf("not a JSON object: %q", out)
		}
		if len(out) > 2+6*len(body)+8*MaxMultipartParts {
			t.Fatalf("%d bytes of JSON from %d bytes of body", len(out), len(body))
		}
		again, _ := multipartJSON(body, boundary)
		if !bytes.Equal(out, again) {
			t.Fatal("not deterministic")
		}
	})
}
