package rules

import (
	"bytes"
	"encoding/json"
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
      - type: u.updated
        data: "{response.body.user}"
        previous: {before: "{request.body.user}", skip_unchanged: true, ignore: [n, a.b]}
  - name: b
    match: {method: "*", path: "/{x...}", status: 100-599}
    emit: {type: any.thing, data: {p: "{path.x}", s: "{response.status}"}}
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
	f.Add("PUT", "/u/2", "q=1", "a", []byte(`{"n":5,"kind":"updated","user":{"id":"x","name":"A","n":1}}`), 200, []byte(`{"user":{"id":"x","name":"B","n":2}}`))
	f.Fuzz(func(t *testing.T, method, path, query, hdr string, reqBody []byte, status int, respBody []byte) {
		ex := &Exchange{Method: method, Path: path, RawQuery: query, Status: status,
			RequestHeader:  http.Header{"X-A": {hdr}, "Cookie": {hdr}, "Idempotency-Key": {hdr}},
			RequestBody:    reqBody,
			ResponseHeader: http.Header{"Content-Type": {"application/json"}},
			ResponseBody:   respBody}
		s.CanMatch(method, path)
		s.Plan(method, path)
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
