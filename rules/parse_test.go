package rules

import (
	"strings"
	"testing"
)

// rule wraps a rule body (indented under "  - ") into a file.
func ruleFile(body string) string {
	return "version: 1\nrules:\n  - " + strings.ReplaceAll(strings.TrimSpace(body), "\n", "\n    ") + "\n"
}

func TestParseErrors(t *testing.T) {
	for i, tc := range []struct {
		name string
		src  string
		want string // substring of the error, including file:line:col where it matters
	}{
		{"bad status", ruleFile("name: a\nmatch:\n  method: POST\n  path: /x\n  status: ok\nemit: {type: a.b}"),
			`r.yaml:7:15: match.status: want a code like 201, a class like 2xx or a range like 200-204, got "ok"`},
		{"status 600", ruleFile("name: a\nmatch: {method: POST, path: /x, status: 600}\nemit: {type: a.b}"), `match.status: want a code like 201`},
		{"status reversed range", ruleFile("name: a\nmatch: {method: POST, path: /x, status: 204-200}\nemit: {type: a.b}"), `got "204-200"`},
		{"status 7xx", ruleFile("name: a\nmatch: {method: POST, path: /x, status: [200, 7xx]}\nemit: {type: a.b}"), `match.status[1]`},
		{"unknown top key", "version: 1\nrule: []\n", `r.yaml:2:1: unknown key "rule" (did you mean "rules"?)`},
		{"missing rules", "version: 1\n", `missing required key "rules"`},
		{"version 2", "version: 2\nrules: []\n", `r.yaml:1:10: version: want 1`},
		{"empty rules", "version: 1\nrules: []\n", `rules: want at least one rule`},
		{"rules not list", "version: 1\nrules: nope\n", `rules: want a list of rules, got "nope"`},
		{"unknown rule key", ruleFile("name: a\nmatcher: {}\nmatch: {method: POST, path: /x}\nemit: {type: a.b}"), `r.yaml:4:5: unknown key "matcher" (did you mean "match"?)`},
		{"missing name", ruleFile("match: {method: POST, path: /x}\nemit: {type: a.b}"), `missing required key "name"`},
		{"bad name", ruleFile("name: User Created\nmatch: {method: POST, path: /x}\nemit: {type: a.b}"), `name: want a name of lower-case letters`},
		{"dup name", "version: 1\nrules:\n  - {name: a, match: {method: POST, path: /x}, emit: {type: a.b}}\n  - {name: a, match: {method: POST, path: /y}, emit: {type: a.b}}\n", `r.yaml:4:5: name: duplicate rule name "a" (first defined at line 3)`},
		{"missing path", ruleFile("name: a\nmatch: {method: POST}\nemit: {type: a.b}"), `missing required key "path"`},
		{"relative path", ruleFile("name: a\nmatch: {method: POST, path: api/users}\nemit: {type: a.b}"), `match.path: want a path starting with "/"`},
		{"rest not last", ruleFile("name: a\nmatch: {method: POST, path: \"/f/{p...}/x\"}\nemit: {type: a.b}"), `must be the last segment`},
		{"dup param", ruleFile("name: a\nmatch: {method: POST, path: \"/a/{id}/b/{id}\"}\nemit: {type: a.b}"), `parameter {id} appears twice`},
		{"partial param", ruleFile("name: a\nmatch: {method: POST, path: \"/a/x{id}\"}\nemit: {type: a.b}"), `must be a whole segment`},
		{"bad method", ruleFile("name: a\nmatch: {method: \"PO ST\", path: /x}\nemit: {type: a.b}"), `want an HTTP method`},
		{"method number", ruleFile("name: a\nmatch: {method: 1, path: /x}\nemit: {type: a.b}"), `match.method: want text, got the number 1`},
		{"bad host", ruleFile("name: a\nmatch: {method: POST, path: /x, host: \"https://a.b\"}\nemit: {type: a.b}"), `want a host name`},
		{"bad operator", ruleFile("name: a\nmatch:\n  method: POST\n  path: /x\n  request: {body: {role: {eq: admin}}}\nemit: {type: a.b}"), `unknown key "eq"`},
		{"bad regex", ruleFile("name: a\nmatch:\n  method: POST\n  path: /x\n  request: {body: {role: {regex: \"a(\"}}}\nemit: {type: a.b}"), `match.request.body.role.regex: want an RE2 regular expression`},
		{"gt not number", ruleFile("name: a\nmatch:\n  method: POST\n  path: /x\n  request: {body: {age: {gt: old}}}\nemit: {type: a.b}"), `match.request.body.age.gt: want a number, got "old"`},
		{"query on response", ruleFile("name: a\nmatch:\n  method: POST\n  path: /x\n  response: {query: {a: exists}}\nemit: {type: a.b}"), `unknown key "query"`},
		{"bad type", ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: \"user created\"}"), `emit.type: want a dot-separated event name`},
		{"unknown placeholder", ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, subject: \"{foo.bar}\"}"), `emit.subject: unknown placeholder {foo.bar}`},
		{"unclosed placeholder", ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, subject: \"{request.body.id\"}"), `unclosed placeholder`},
		{"param not in path", ruleFile("name: a\nmatch: {method: POST, path: \"/u/{id}\"}\nemit: {type: a.b, subject: \"{path.uid}\"}"), `the path template has no parameter {uid}; it has: {id}`},
		{"param not in every path", ruleFile("name: a\nmatch: {method: POST, path: [\"/u/{id}\", /me]}\nemit: {type: a.b, subject: \"{path.id}\"}"), `has no parameter {id}`},
		{"undeclared lookup", ruleFile("name: a\nmatch: {method: POST, path: /x}\nlookup: {get: /me, as: me}\nemit: {type: a.b, data: \"{you.body}\"}"), `"you" is not a lookup of this rule`},
		{"reserved lookup", ruleFile("name: a\nmatch: {method: POST, path: /x}\nlookup: {get: /me, as: request}\nemit: {type: a.b}"), `"request" is reserved`},
		{"lookup no get", ruleFile("name: a\nmatch: {method: POST, path: /x}\nlookup: {as: me}\nemit: {type: a.b, data: \"{me.body}\"}"), `missing required key "get"`},
		{"lookup unused", ruleFile("name: a\nmatch: {method: POST, path: /x}\nlookup: {get: /me, as: me}\nemit: {type: a.b}"), `lookup "me" is never used`},
		{"lookup relative", ruleFile("name: a\nmatch: {method: POST, path: /x}\nlookup: {get: me, as: me}\nemit: {type: a.b, data: \"{me.body}\"}"), `lookup.get: want a path on the same upstream`},
		{"bad duration", ruleFile("name: a\nmatch: {method: POST, path: /x}\nlookup: {get: /me, as: me, timeout: soon}\nemit: {type: a.b, data: \"{me.body}\"}"), `lookup.timeout: want a duration such as 500ms`},
		{"long timeout", ruleFile("name: a\nmatch: {method: POST, path: /x}\nlookup: {get: /me, as: me, timeout: 1m}\nemit: {type: a.b, data: \"{me.body}\"}"), `want a timeout between 1ms and 10s`},
		{"bad mode", ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, mode: prod}"), `emit.mode: want live or test, got "prod"`},
		{"constant dedupe", ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b, dedupe: same}"), `constant key would merge`},
		{"emit list item", ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: [{type: a.b}, {typ: c}]"), `emit[1]: unknown key "typ"`},
		{"duplicate key", ruleFile("name: a\nname: b\nmatch: {method: POST, path: /x}\nemit: {type: a.b}"), `duplicate key "name"`},
		{"syntax", "version: 1\nrules:\n  - name: a\n    match: {method: POST, path: /a/{id}}\n", `r.yaml:4:1: invalid YAML/JSON syntax`},
		{"json syntax", "{\"version\": 1,\n \"rules\": [,]}", `r.yaml:`},
		{"empty file", "", `the file is empty`},
		{"merge key", "version: 1\nbase: &b {method: POST}\nrules: []\n", `unknown key "base"`},
		{"test unknown key", ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b}") + "tests:\n  - name: t\n    request: {method: POST, path: /x}\n    expected: []\n", `unknown key "expected" (did you mean "expect"?)`},
		{"test bad status", ruleFile("name: a\nmatch: {method: POST, path: /x}\nemit: {type: a.b}") + "tests:\n  - name: t\n    request: {method: POST, path: /x}\n    response: {status: 99}\n    expect: []\n", `tests[0].response.status: want a status code from 100 to 599`},
		{"two documents", "version: 1\nrules: [{name: a, match: {method: POST, path: /x}, emit: {type: a.b}}]\n---\nversion: 1\n", `want a single document`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("r.yaml", []byte(tc.src))
			if err == nil {
				t.Fatalf("case %d: no error for\n%s", i, tc.src)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("case %d: error\n  %v\nwant it to contain\n  %s", i, err, tc.want)
			}
		})
	}
}

func TestParseCollectsEveryError(t *testing.T) {
	src := ruleFile("name: a\nmatch: {method: POST, path: /x, status: ok}\nemit: {type: \"bad type\", mode: prod}")
	_, err := Parse("r.yaml", []byte(src))
	l, ok := err.(ErrorList)
	if !ok || len(l) != 3 {
		t.Fatalf("want 3 errors in an ErrorList, got %T %v", err, err)
	}
	for _, e := range l {
		if e.Line == 0 || e.Column == 0 {
			t.Errorf("error without position: %v", e)
		}
	}
}

func TestParseJSONPositions(t *testing.T) {
	src := `{
  "version": 1,
  "rules": [
    {"name": "a", "match": {"method": "POST", "path": "/x", "status": "ok"}, "emit": {"type": "a.b"}}
  ]
}`
	_, err := Parse("r.json", []byte(src))
	if err == nil || !strings.Contains(err.Error(), `r.json:4:71: match.status`) {
		t.Fatalf("want a JSON error with line and column, got %v", err)
	}
}

func TestParseValid(t *testing.T) {
	src := `version: 1
rules:
  - name: all-features
    description: every feature at once
    match:
      method: [post, PUT]
      path: ["/orgs/{org}/members/{user}", "/o/{org}/m/{user}"]
      host: ["auth.example.com", "*.example.org"]
      status: [200, 2xx, 200-204]
      request:
        header: {X-Tenant: exists, X-Kind: [a, b]}
        cookie: {session: exists}
        query: {force: "true"}
        body: {role: {one_of: [admin, owner]}, age: {gte: 18, lt: 65}, name: {regex: "^[a-z]"}, gone: absent, flag: {exists: false}}
      response:
        header: {Content-Type: {regex: json}}
        cookie: {sid: exists}
        body: {"user.id": exists, "ok": true, "n": null}
    lookup:
      - {get: "/orgs/{path.org}", as: org, timeout: 500ms}
      - {get: "/orgs/{org.body.id}/members/{path.user}", as: member}
    emit:
      - type: organization.member_added
        subject: "{path.user}"
        data: {org: "{org.body}", member: "{member.body}", status: "{response.status}", n: 1, t: true, z: null, list: [1, "{path.org}"]}
        omit: [internal, org.meta]
        redact: [phone]
        keep_secrets: [token_type]
        mode: test
        dedupe: {key: "{request.header.Idempotency-Key}", window: 7d}
      - type: "organization.{request.body.kind}"
        types: [organization.created, organization.renamed]
`
	f, err := Parse("ok.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	r := f.Rules()[0]
	if got := r.Methods(); len(got) != 2 || got[0] != "POST" {
		t.Errorf("methods %v", got)
	}
	if n := r.Need(); !n.RequestBody || !n.ResponseBody {
		t.Errorf("need %+v", n)
	}
	if len(r.EventTypes()) != 2 {
		t.Errorf("event types %v", r.EventTypes())
	}
}

func TestLoadGlobsAndDuplicatesAcrossFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := writeFile(dir+"/"+name, body); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", ruleFile("name: one\nmatch: {method: POST, path: /a}\nemit: {type: a.created}"))
	write("b.json", `{"version":1,"rules":[{"name":"two","match":{"method":"POST","path":"/b"},"emit":{"type":"b.created"}}]}`)
	s, err := Load(dir+"/*.yaml", dir+"/b.json")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Rules()) != 2 || len(s.Files()) != 2 {
		t.Fatalf("rules %d files %v", len(s.Rules()), s.Files())
	}
	write("c.yaml", ruleFile("name: one\nmatch: {method: POST, path: /c}\nemit: {type: c.created}"))
	_, err = Load(dir + "/*.yaml")
	if err == nil || !strings.Contains(err.Error(), `c.yaml:3:5: name: duplicate rule name "one" (also defined at `) {
		t.Fatalf("want duplicate across files, got %v", err)
	}
	if _, err := Load(dir + "/*.yml"); err == nil || !strings.Contains(err.Error(), "no rule files match") {
		t.Fatalf("want no-match error, got %v", err)
	}
	if _, err := Load(dir + "/nope.yaml"); err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Fatalf("want missing-file error, got %v", err)
	}
	if _, err := Load(); err == nil {
		t.Fatal("want error for no files")
	}
}

func TestJSONQuotedShorthands(t *testing.T) {
	s := mustSet(t, `{"$schema": "https://example.test/schema.json", "version": 1, "rules": [{"name": "a",
  "match": {"method": "POST", "path": "/x", "request": {"header": {"X-Tenant": "exists", "X-Gone": "absent"}}},
  "emit": {"type": "a.b"}}]}`)
	ex := &Exchange{Method: "POST", Path: "/x", Status: 200, RequestHeader: map[string][]string{"X-Tenant": {"t1"}}}
	if len(s.Match(ex)) != 1 {
		t.Fatal(`"exists" in a JSON file must mean present`)
	}
	ex = &Exchange{Method: "POST", Path: "/x", Status: 200, RequestHeader: map[string][]string{"X-Tenant": {"t1"}, "X-Gone": {"1"}}}
	if len(s.Match(ex)) != 0 {
		t.Fatal(`"absent" in a JSON file must mean not present`)
	}
}

func TestNoSpuriousUnusedLookupError(t *testing.T) {
	_, err := Parse("r.yaml", []byte(ruleFile("name: a\nmatch: {method: POST, path: /x}\nlookup: {get: /me, as: me}\nemit: {type: a.b, data: \"{me.body}\", mode: prod}")))
	if err == nil || strings.Contains(err.Error(), "never used") {
		t.Fatalf("want only the mode error, got %v", err)
	}
}
