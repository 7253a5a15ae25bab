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
    emit: {type: user.deleted, subject: "{path.id}"}
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
		s.Plan("POST", path)
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
