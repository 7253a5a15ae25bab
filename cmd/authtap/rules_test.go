package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const packYAML = `version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users}
    emit:
      type: user.created
      subject: "{response.body.user.id}"
      data: {id: "{response.body.user.id}", email: "{request.body.email}"}
tests:
  - name: sign-up emits user.created
    request:  {method: POST, path: /api/users, body: {email: a@x.test, password: s3cret}}
    response: {status: 201, body: {user: {id: u_1}}}
    expect:   [{type: user.created, subject: u_1, data: {id: u_1, email: a@x.test}}]
  - name: conflict emits nothing
    request:  {method: POST, path: /api/users}
    response: {status: 409}
    expect:   []
`

func write(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRulesCheck(t *testing.T) {
	dir := t.TempDir()
	good := write(t, dir, "good.yaml", packYAML)
	var out, errb bytes.Buffer
	if code := run([]string{"rules", "check", good}, &out, &errb); code != 0 {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ok    ") || !strings.Contains(lines[0], "good.yaml:10: sign-up emits user.created") ||
		lines[2] != "1 rules in 1 files; tests: 2 passed, 0 failed" {
		t.Fatalf("output:\n%s", out.String())
	}

	failing := write(t, dir, "failing.yaml", strings.Replace(packYAML, "subject: u_1", "subject: u_2", 1))
	out.Reset()
	if code := run([]string{"rules", "check", failing}, &out, &errb); code != 1 {
		t.Fatalf("failing test: exit %d", code)
	}
	if !strings.Contains(out.String(), `FAIL  `+failing+`:10: sign-up emits user.created: event 1 (line 13): want subject "u_2", got "u_1"`) ||
		!strings.Contains(out.String(), "1 passed, 1 failed") {
		t.Fatalf("output:\n%s", out.String())
	}

	bad := write(t, dir, "bad.yaml", strings.Replace(packYAML, "path: /api/users}\n    emit", "path: /api/users, status: ok}\n    emit", 1))
	out.Reset()
	errb.Reset()
	if code := run([]string{"rules", "check", bad}, &out, &errb); code != 1 {
		t.Fatalf("invalid file: exit %d", code)
	}
	if !strings.Contains(errb.String(), bad+`:4:53: match.status: want a code like 201, a class like 2xx or a range like 200-204, got "ok"`) {
		t.Fatalf("stderr:\n%s", errb.String())
	}
	if code := run([]string{"rules", "check"}, &out, &errb); code != 2 {
		t.Fatalf("no files: exit %d", code)
	}
}

func TestRulesTest(t *testing.T) {
	dir := t.TempDir()
	pack := write(t, dir, "pack.yaml", packYAML)
	for _, tc := range []struct{ name, req, resp string }{
		{"json", `{"method":"POST","path":"/api/users","body":{"email":"b@x.test"}}`, `{"status":201,"body":{"user":{"id":"u_9"}}}`},
		{"raw", "POST /api/users HTTP/1.1\nHost: auth.test\nContent-Type: application/json\n\n{\"email\":\"b@x.test\"}", "HTTP/1.1 201 Created\nContent-Type: application/json\n\n{\"user\":{\"id\":\"u_9\"}}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := write(t, dir, tc.name+"-req", tc.req)
			resp := write(t, dir, tc.name+"-resp", tc.resp)
			var out, errb bytes.Buffer
			if code := run([]string{"rules", "test", pack, "--request", req, "--response", resp, "--source", "legacy-auth"}, &out, &errb); code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			var evs []map[string]any
			if err := json.Unmarshal(out.Bytes(), &evs); err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			if len(evs) != 1 || evs[0]["type"] != "user.created" || evs[0]["subject"] != "u_9" ||
				evs[0]["data"].(map[string]any)["email"] != "b@x.test" || evs[0]["source"].(map[string]any)["name"] != "legacy-auth" {
				t.Fatalf("events %s", out.String())
			}
		})
	}
	var out, errb bytes.Buffer
	req := write(t, dir, "get-req", `{"method":"GET","path":"/api/users"}`)
	if code := run([]string{"rules", "test", pack, "--request", req}, &out, &errb); code != 0 || strings.TrimSpace(out.String()) != "[]" {
		t.Fatalf("no match: exit %d out %q", code, out.String())
	}
	badReq := write(t, dir, "bad-req", `{"method":"GET"}`)
	if code := run([]string{"rules", "test", pack, "--request", badReq}, &out, &errb); code != 2 || !strings.Contains(errb.String(), `missing required key "path"`) {
		t.Fatalf("bad request: exit %d err %q", code, errb.String())
	}
}

// TestRulesTestBatch: `rules test` splits a batch exchange, says how, and
// prints the events of its sub-exchanges.
func TestRulesTestBatch(t *testing.T) {
	dir := t.TempDir()
	pack := write(t, dir, "scim.yaml", `version: 1
rules:
  - name: scim-user-created
    match: {method: POST, path: /scim/v2/Users, status: 201}
    lookup: {get: "/scim/v2/Users/{response.body.id}", as: user}
    emit: {type: user.created, subject: "{response.body.id}", data: {name: "{user.body.userName}"}}
  - name: scim-bulk
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "{item.path}", body: "{item.data}"}
      response: {items: "{response.body.Operations}", status: "{item.status}", body: "{item.response}"}
`)
	req := write(t, dir, "req", `{"method":"POST","path":"/scim/v2/Bulk","body":{"Operations":[{"method":"POST","path":"/Users","data":{"userName":"a"}},{"method":"POST","path":"/Users","data":{}}]}}`)
	resp := write(t, dir, "resp", `{"status":200,"body":{"Operations":[{"status":"201","response":{"id":"u_1"}},{"status":"400"}]}}`)
	var out, errb bytes.Buffer
	if code := run([]string{"rules", "test", pack, "--request", req, "--response", resp}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var evs []map[string]any
	if err := json.Unmarshal(out.Bytes(), &evs); err != nil || len(evs) != 1 || evs[0]["subject"] != "u_1" || evs[0]["source"].(map[string]any)["rule"] != "scim-user-created" {
		t.Fatalf("events %s (%v)", out.String(), err)
	}
	for _, want := range []string{
		`note: batch rule "scim-bulk": 2 sub-request(s), 1 succeeded, 1 failed or unanswered`,
		`note:   POST /scim/v2/Users (201) matches rule "scim-user-created"`,
		`note: rule "scim-user-created" would GET /scim/v2/Users/u_1 on the upstream after the response (as "user")`,
	} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
}

const beforePackYAML = `version: 1
rules:
  - name: member-removed
    match: {method: DELETE, path: "/memberships/{id}", status: 204}
    lookup: {get: "/memberships/{path.id}", as: old, when: before}
    emit:
      type: organization.member_removed
      subject: "{old.body.organization_id}"
      data: {user_id: "{old.body.user_id}"}
tests:
  - name: the deleted membership is in the event
    request:  {method: DELETE, path: /memberships/m_1}
    response: {status: 204}
    lookup:   {old: {body: {organization_id: org_1, user_id: usr_2}}}
    expect:   [{type: organization.member_removed, subject: org_1, data: {user_id: usr_2}}]
  - name: a failed before-lookup is listed as missing
    request:  {method: DELETE, path: /memberships/m_1}
    response: {status: 204}
    lookup:   {old: {error: timeout}}
    expect:   [{type: organization.member_removed, subject: "", missing: [old.body.organization_id, old.body.user_id]}]
`

// rules check runs inline tests that feed a before-lookup canned answers;
// rules test says which lookup would run before forwarding.
func TestRulesCheckAndTestWithBeforeLookups(t *testing.T) {
	dir := t.TempDir()
	pack := write(t, dir, "before.yaml", beforePackYAML)
	var out, errb bytes.Buffer
	if code := run([]string{"rules", "check", pack}, &out, &errb); code != 0 || !strings.Contains(out.String(), "tests: 2 passed, 0 failed") {
		t.Fatalf("exit %d\n%s%s", code, out.String(), errb.String())
	}
	failing := write(t, dir, "failing.yaml", strings.Replace(beforePackYAML, "subject: org_1", "subject: org_2", 1))
	out.Reset()
	if code := run([]string{"rules", "check", failing}, &out, &errb); code != 1 || !strings.Contains(out.String(), `want subject "org_2", got "org_1"`) {
		t.Fatalf("a wrong expectation against the canned before-lookup must fail: exit %d\n%s", code, out.String())
	}
	req := write(t, dir, "req", `{"method":"DELETE","path":"/memberships/m_7"}`)
	resp := write(t, dir, "resp", `{"status":204}`)
	out.Reset()
	errb.Reset()
	if code := run([]string{"rules", "test", pack, "--request", req, "--response", resp}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(errb.String(), `note: rule "member-removed" would GET /memberships/m_7 on the upstream before forwarding the request (as "old")`) {
		t.Errorf("stderr:\n%s", errb.String())
	}
}

// TestRulesTestPrevious: `authtap rules test` shows previous, and says why an
// unchanged update built no event.
func TestRulesTestPrevious(t *testing.T) {
	dir := t.TempDir()
	pack := write(t, dir, "pack.yaml", `version: 1
rules:
  - name: user-updated
    match: {method: PATCH, path: "/api/users/{id}"}
    emit:
      type: user.updated
      data: "{response.body}"
      previous: {before: "{request.body.was}", skip_unchanged: true}
`)
	for _, tc := range []struct{ name, req, resp, wantOut, wantErr string }{
		{"changed", `{"method":"PATCH","path":"/api/users/u_1","body":{"was":{"name":"Ann","pin":"1"}}}`, `{"body":{"name":"Bob","pin":"2"}}`,
			`"previous": {
      "name": "Ann",
      "pin": "[REDACTED]"
    }`, "1 rule(s) matched, 1 event(s)"},
		{"unchanged", `{"method":"PATCH","path":"/api/users/u_1","body":{"was":{"name":"Ann"}}}`, `{"body":{"name":"Ann"}}`,
			"[]", `note: rule "user-updated": nothing changed, so no user.updated event (previous.skip_unchanged)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := write(t, dir, tc.name+"-req", tc.req)
			resp := write(t, dir, tc.name+"-resp", tc.resp)
			var out, errb bytes.Buffer
			if code := run([]string{"rules", "test", pack, "--request", req, "--response", resp}, &out, &errb); code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			if !strings.Contains(out.String(), tc.wantOut) || !strings.Contains(errb.String(), tc.wantErr) {
				t.Fatalf("out:\n%s\nerr:\n%s", out.String(), errb.String())
			}
		})
	}
}
