package rules_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"gopkg.in/yaml.v3"

	"github.com/authtap/authtap/rules"
)

// The tests in this file hold schema.json, the parser and the files in
// examples/ and testdata/ to one contract (README.md): every example is valid
// for both and its inline tests pass, every file in testdata/invalid/ is
// rejected by both, and every file in testdata/invalid_semantic/ is accepted by
// the schema (it cannot see the problem) but rejected by the parser.

// schema compiles schema.json once per test.
func schema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := readJSONValue("schema.json")
	if err != nil {
		t.Fatalf("reading schema.json: %v", err)
	}
	c := jsonschema.NewCompiler()
	const url = "https://raw.githubusercontent.com/authtap/authtap/main/rules/schema.json"
	if err := c.AddResource(url, doc); err != nil {
		t.Fatalf("adding schema.json: %v", err)
	}
	sch, err := c.Compile(url)
	if err != nil {
		t.Fatalf("compiling schema.json: %v", err)
	}
	return sch
}

func readJSONValue(path string) (any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(b))
}

// instance turns a YAML (or JSON) rule file into the JSON value the schema
// validates, the way an editor's YAML language server does.
func instance(data []byte) (any, error) {
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("decoding YAML: %w", err)
	}
	b, err := json.Marshal(jsonCompatible(v))
	if err != nil {
		return nil, fmt.Errorf("converting to JSON: %w", err)
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(b))
}

// jsonCompatible converts what yaml.v3 decodes into values encoding/json can
// marshal: mapping keys become strings, timestamps become RFC 3339 text.
func jsonCompatible(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[k] = jsonCompatible(x)
		}
		return out
	case map[any]any:
		out := make(map[string]any, len(v))
		for k, x := range v {
			out[fmt.Sprint(k)] = jsonCompatible(x)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = jsonCompatible(x)
		}
		return out
	case time.Time:
		return v.Format(time.RFC3339Nano)
	case []byte:
		return string(v)
	}
	return v
}

func validate(sch *jsonschema.Schema, data []byte) error {
	inst, err := instance(data)
	if err != nil {
		return err
	}
	return sch.Validate(inst)
}

// ruleFiles lists the .yaml, .yml and .json files in dir.
func ruleFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, pat := range []string{"*.yaml", "*.yml", "*.json"} {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m...)
	}
	sort.Strings(out)
	return out
}

func TestSchemaCompiles(t *testing.T) {
	sch := schema(t)
	// Smallest valid file, as a sanity check that the schema accepts anything at all.
	if err := validate(sch, []byte("version: 1\nrules: [{name: a, match: {method: POST, path: /x}, emit: {type: a.b}}]\n")); err != nil {
		t.Fatalf("minimal file: %v", err)
	}
}

func TestExamples(t *testing.T) {
	sch := schema(t)
	files := ruleFiles(t, "examples")
	if len(files) < 5 {
		t.Errorf("want at least 5 example packs in examples/, found %d", len(files))
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate(sch, data); err != nil {
				t.Errorf("schema rejects %s:\n%v", file, err)
			}
			f, err := rules.Parse(file, data)
			if err != nil {
				t.Fatalf("parser rejects %s:\n%v", file, err)
			}
			set, err := rules.Load(file)
			if err != nil {
				t.Fatalf("loading %s: %v", file, err)
			}
			results := set.RunTests()
			if len(results) == 0 {
				t.Errorf("%s has no inline tests", file)
			}
			for _, r := range results {
				if !r.Passed {
					t.Errorf("%s:%d: test %q failed: %s", r.File, r.Line, r.Name, r.Failure)
				}
			}
			checkEveryRuleTested(t, file, data, f, set)
		})
	}
}

// testFile is the part of a rule file's tests this file needs to replay an
// inline test through Set.Evaluate and see which rules fired.
type testFile struct {
	Tests []struct {
		Name    string `yaml:"name"`
		Request struct {
			Method string            `yaml:"method"`
			Path   string            `yaml:"path"`
			Host   string            `yaml:"host"`
			Header map[string]string `yaml:"header"`
			Cookie map[string]string `yaml:"cookie"`
			Body   any               `yaml:"body"`
		} `yaml:"request"`
		Response struct {
			Status int               `yaml:"status"`
			Header map[string]string `yaml:"header"`
			Body   any               `yaml:"body"`
		} `yaml:"response"`
		Lookup map[string]struct {
			Status int `yaml:"status"`
			Body   any `yaml:"body"`
		} `yaml:"lookup"`
	} `yaml:"tests"`
}

func bodyBytes(v any) []byte {
	switch v := v.(type) {
	case nil:
		return nil
	case string:
		return []byte(v)
	}
	b, _ := json.Marshal(jsonCompatible(v))
	return b
}

// checkEveryRuleTested replays each inline test and requires that every rule
// of the file emits in at least one of them.
func checkEveryRuleTested(t *testing.T, file string, data []byte, f *rules.File, set *rules.Set) {
	t.Helper()
	var tf testFile
	if err := yaml.Unmarshal(data, &tf); err != nil {
		t.Fatalf("reading tests of %s: %v", file, err)
	}
	fired := map[string]bool{}
	for _, tc := range tf.Tests {
		path, query, _ := strings.Cut(tc.Request.Path, "?")
		ex := &rules.Exchange{
			Method: tc.Request.Method, Host: tc.Request.Host, Path: path, RawQuery: query,
			RequestHeader: map[string][]string{}, ResponseHeader: map[string][]string{},
			RequestBody: bodyBytes(tc.Request.Body), Status: tc.Response.Status,
			ResponseBody: bodyBytes(tc.Response.Body),
		}
		if ex.Status == 0 {
			ex.Status = 200
		}
		for k, v := range tc.Request.Header {
			ex.RequestHeader.Set(k, v)
		}
		for k, v := range tc.Response.Header {
			ex.ResponseHeader.Set(k, v)
		}
		var cookies []string
		for k, v := range tc.Request.Cookie {
			cookies = append(cookies, k+"="+v)
		}
		if len(cookies) > 0 {
			ex.RequestHeader.Set("Cookie", strings.Join(cookies, "; "))
		}
		for as, lr := range tc.Lookup {
			status := lr.Status
			if status == 0 {
				status = 200
			}
			ex.SetLookup(as, rules.LookupResult{Status: status, Body: bodyBytes(lr.Body), Header: map[string][]string{}})
		}
		events, _ := set.Evaluate(ex, rules.EmitOptions{Source: "schema-test"})
		for _, ev := range events {
			fired[ev.Source.Rule] = true
		}
		// a batch rule emits through the rules its sub-exchanges match
		for _, m := range set.Match(ex) {
			if !m.IsBatch() {
				continue
			}
			b, _ := m.Batch(ex)
			for _, sub := range b.Subs {
				for _, sm := range set.Match(sub) {
					if evs, _ := sm.Events(sub, rules.EmitOptions{Source: "schema-test"}); len(evs) > 0 {
						fired[m.Rule.Name] = true
					}
				}
			}
		}
	}
	for _, r := range f.Rules() {
		if !fired[r.Name] {
			t.Errorf("%s:%d: rule %q emits in none of the file's inline tests", file, r.Line, r.Name)
		}
	}
}

// invalid lists every file in testdata/invalid/ with a substring the parser's
// error must contain; most name the line and column, so the test proves that
// errors point at the offending place.
var invalid = map[string]string{
	"unknown-top-key.yaml":              `unknown-top-key.yaml:3:1: unknown key "test" (did you mean "tests"?)`,
	"unknown-rule-key.yaml":             `unknown-rule-key.yaml:4:5: unknown key "descripton" (did you mean "description"?)`,
	"unknown-match-key.yaml":            `unknown-match-key.yaml:7:7: match: unknown key "methods" (did you mean "method"?)`,
	"unknown-emit-key.yaml":             `unknown-emit-key.yaml:9:7: emit: unknown key "payload"`,
	"unknown-test-key.yaml":             `unknown-test-key.yaml:13:5: tests[0]: unknown key "expected" (did you mean "expect"?)`,
	"unknown-condition-key.yaml":        `unknown-condition-key.yaml:9:9: match.request: unknown key "headers" (did you mean "header"?)`,
	"status-text.yaml":                  `status-text.yaml:7:15: match.status: want a code like 201, a class like 2xx or a range like 200-204, got "ok"`,
	"status-600.yaml":                   `status-600.yaml:7:15: match.status: want a code like 201, a class like 2xx or a range like 200-204, got the number 600`,
	"status-7xx.yaml":                   `status-7xx.yaml:7:21: match.status[1]: want a code like 201`,
	"bad-method.yaml":                   `bad-method.yaml:6:15: match.method: want an HTTP method such as POST`,
	"missing-name.yaml":                 `missing-name.yaml:3:5: missing required key "name"`,
	"bad-rule-name.yaml":                `bad-rule-name.yaml:3:11: name: want a name of lower-case letters`,
	"missing-path.yaml":                 `missing-path.yaml:5:7: match: missing required key "path"`,
	"relative-path.yaml":                `relative-path.yaml:6:13: match.path: want a path starting with "/"`,
	"rest-not-last.yaml":                `rest-not-last.yaml:6:13: match.path: {path...} takes the rest of the path and must be the last segment`,
	"partial-segment-param.yaml":        `partial-segment-param.yaml:6:13: match.path: a parameter must be a whole segment`,
	"path-with-query.yaml":              `path-with-query.yaml:6:13: match.path: want a path without query`,
	"bad-condition-operator.yaml":       `bad-condition-operator.yaml:10:17: match.request.body.age: unknown key "greater_than"`,
	"gt-not-a-number.yaml":              `gt-not-a-number.yaml:10:18: match.response.body.user.age.gte: want a number, got "eighteen"`,
	"empty-condition.yaml":              `empty-condition.yaml:9:21: match.request.header.X-Tenant: want a condition`,
	"bad-event-type.yaml":               `bad-event-type.yaml:8:13: emit.type: want a dot-separated event name`,
	"unclosed-placeholder.yaml":         `unclosed-placeholder.yaml:9:16: emit.subject: unclosed placeholder`,
	"unterminated-regex-string.yaml":    `unterminated-regex-string.yaml:10:16: emit.subject: unterminated string in placeholder`,
	"lookup-as-reserved.yaml":           `lookup-as-reserved.yaml:9:11: lookup.as: "response" is reserved`,
	"lookup-without-get.yaml":           `lookup-without-get.yaml:8:7: lookup: missing required key "get"`,
	"bad-duration.yaml":                 `bad-duration.yaml:11:17: emit.dedupe.window: want a duration such as 500ms, 2s, 10m, 24h or 7d, got "one day"`,
	"version-2.yaml":                    `version-2.yaml:1:10: version: want 1`,
	"empty-rules.yaml":                  `empty-rules.yaml:2:8: rules: want at least one rule, got an empty list`,
	"rules-string.yaml":                 `rules-string.yaml:2:8: rules: want a list of rules, got "user-created"`,
	"emit-mode-prod.yaml":               `emit-mode-prod.yaml:9:13: emit.mode: want live or test, got "prod"`,
	"missing-emit.yaml":                 `missing-emit.yaml:3:5: missing required key "emit"`,
	"bad-host.yaml":                     `bad-host.yaml:7:13: match.host: want a host name such as auth.example.com`,
	"dedupe-without-key.yaml":           `dedupe-without-key.yaml:10:9: emit.dedupe: missing required key "key"`,
	"test-without-expect.yaml":          `test-without-expect.yaml:10:5: tests[0]: missing required key "expect"`,
	"test-status-text.yaml":             `test-status-text.yaml:12:24: tests[0].response.status: want a whole number, got "created"`,
	"json-unknown-key.json":             `json-unknown-key.json:8:16: emit: unknown key "subjct" (did you mean "subject"?)`,
	"omit-not-a-list.yaml":              `omit-not-a-list.yaml:10:13: emit.omit: want a list of key names`,
	"lookup-timeout-text.yaml":          `lookup-timeout-text.yaml:10:16: lookup.timeout: want a duration`,
	"constant-dedupe-key.yaml":          `constant-dedupe-key.yaml:8:7: emit.dedupe: want a key with a placeholder`,
	"condition-list-of-maps.yaml":       `condition-list-of-maps.yaml:9:18: match.request.body.role[0]: want a single value`,
	"expect-not-a-list.yaml":            `expect-not-a-list.yaml:12:13: tests[0].expect: want a list of expected events`,
	"templated-type-without-types.yaml": `templated-type-without-types.yaml:8:13: emit.type: templated type "user.{request.body.action}" needs the list of types it may render to, or a client chooses the type: add types: [user.created, user.updated] next to it`,
	"types-on-constant-type.yaml":       `types-on-constant-type.yaml:9:14: emit.types: types lists what a templated type may render to; type "user.created" has no placeholder, so remove types`,
	"keep-shapes-unknown.yaml":          `keep-shapes-unknown.yaml:10:26: emit.keep_shapes[1]: want a secret shape (otpauth, jwt, private_key, whsec), got "passwords"`,
	"each-not-a-placeholder.yaml":       `each-not-a-placeholder.yaml:7:13: emit.each: want one placeholder naming a list, such as "{request.body.users}"`,
	"each-unknown-key.yaml":             `each-unknown-key.yaml:9:9: emit.each: unknown key "filter"; want one of: items, where, then`,
	"batch-and-emit.yaml":               `batch-and-emit.yaml:7:7: batch: a rule has emit or batch, not both`,
	"batch-missing-status.yaml":         `batch-missing-status.yaml:7:17: batch.response: missing required key "status"`,
	"batch-one-id.yaml":                 `batch-one-id.yaml:6:7: batch: request.id and response.id pair sub-requests with sub-responses by id: give both, or neither`,
	"batch-with-lookup.yaml":            `batch-with-lookup.yaml:5:13: lookup: a batch rule emits nothing itself, so its lookups would never be used`,
	"lookup-when-sometime.yaml":         `lookup-when-sometime.yaml:10:13: lookup.when: want before (before the request is forwarded) or after (after the response, the default), got "earlier"`,
	"lookup-header-host.yaml":           `lookup-header-host.yaml:12:9: lookup.header.host: header Host cannot be set on a lookup`,
	"previous-unknown-key.yaml":         `previous-unknown-key.yaml:12:9: emit.previous: unknown key "only_if_changed"; want one of: before, after, skip_unchanged, ignore`,
	"previous-without-before.yaml":      `previous-without-before.yaml:11:9: emit.previous: missing required key "before"`,
	"previous-skip-not-bool.yaml":       `previous-skip-not-bool.yaml:12:25: emit.previous.skip_unchanged: want true or false, got "yes"`,
}

// invalidSchemaAt says, for every file in testdata/invalid/, where in the
// document (a JSON pointer) the schema must report the problem, so that the
// schema is shown to reject each file for the intended reason.
var invalidSchemaAt = map[string]string{
	"unknown-top-key.yaml":              "",
	"unknown-rule-key.yaml":             "/rules/0",
	"unknown-match-key.yaml":            "/rules/0/match",
	"unknown-emit-key.yaml":             "/rules/0/emit",
	"unknown-test-key.yaml":             "/tests/0",
	"unknown-condition-key.yaml":        "/rules/0/match/request",
	"status-text.yaml":                  "/rules/0/match/status",
	"status-600.yaml":                   "/rules/0/match/status",
	"status-7xx.yaml":                   "/rules/0/match/status",
	"bad-method.yaml":                   "/rules/0/match/method",
	"missing-name.yaml":                 "/rules/0",
	"bad-rule-name.yaml":                "/rules/0/name",
	"missing-path.yaml":                 "/rules/0/match",
	"relative-path.yaml":                "/rules/0/match/path",
	"rest-not-last.yaml":                "/rules/0/match/path",
	"partial-segment-param.yaml":        "/rules/0/match/path",
	"path-with-query.yaml":              "/rules/0/match/path",
	"bad-condition-operator.yaml":       "/rules/0/match/request/body/age",
	"gt-not-a-number.yaml":              "/rules/0/match/response/body/user.age",
	"empty-condition.yaml":              "/rules/0/match/request/header/X-Tenant",
	"bad-event-type.yaml":               "/rules/0/emit/type",
	"unclosed-placeholder.yaml":         "/rules/0/emit/subject",
	"unterminated-regex-string.yaml":    "/rules/0/emit/subject",
	"lookup-as-reserved.yaml":           "/rules/0/lookup/as",
	"lookup-without-get.yaml":           "/rules/0/lookup",
	"bad-duration.yaml":                 "/rules/0/emit/dedupe/window",
	"version-2.yaml":                    "/version",
	"empty-rules.yaml":                  "/rules",
	"rules-string.yaml":                 "/rules",
	"emit-mode-prod.yaml":               "/rules/0/emit/mode",
	"missing-emit.yaml":                 "/rules/0",
	"bad-host.yaml":                     "/rules/0/match/host",
	"dedupe-without-key.yaml":           "/rules/0/emit/dedupe",
	"test-without-expect.yaml":          "/tests/0",
	"test-status-text.yaml":             "/tests/0/response/status",
	"json-unknown-key.json":             "/rules/0/emit",
	"omit-not-a-list.yaml":              "/rules/0/emit/omit",
	"lookup-timeout-text.yaml":          "/rules/0/lookup/timeout",
	"constant-dedupe-key.yaml":          "/rules/0/emit/dedupe/key",
	"condition-list-of-maps.yaml":       "/rules/0/match/request/body/role",
	"expect-not-a-list.yaml":            "/tests/0/expect",
	"templated-type-without-types.yaml": "/rules/0/emit",
	"types-on-constant-type.yaml":       "/rules/0/emit",
	"keep-shapes-unknown.yaml":          "/rules/0/emit/keep_shapes/1",
	"each-not-a-placeholder.yaml":       "/rules/0/emit/each",
	"each-unknown-key.yaml":             "/rules/0/emit/each",
	"batch-and-emit.yaml":               "/rules/0",
	"batch-missing-status.yaml":         "/rules/0/batch/response",
	"batch-one-id.yaml":                 "/rules/0/batch/response",
	"batch-with-lookup.yaml":            "/rules/0",
	"lookup-when-sometime.yaml":         "/rules/0/lookup/when",
	"lookup-header-host.yaml":           "/rules/0/lookup", // the propertyNames error is placed oddly by the library; it says invalid propertyName 'host'
	"previous-unknown-key.yaml":         "/rules/0/emit/previous",
	"previous-without-before.yaml":      "/rules/0/emit/previous",
	"previous-skip-not-bool.yaml":       "/rules/0/emit/previous/skip_unchanged",
}

// invalidSemantic lists every file in testdata/invalid_semantic/: problems
// only the parser can see (the schema accepts these files).
var invalidSemantic = map[string]string{
	"status-reversed-range.yaml":            `status-reversed-range.yaml:8:15: match.status: want a code like 201, a class like 2xx or a range like 200-204, got "204-200"`,
	"regex-does-not-compile.yaml":           `regex-does-not-compile.yaml:10:26: match.request.body.email.regex: want an RE2 regular expression`,
	"unknown-placeholder-root.yaml":         `unknown-placeholder-root.yaml:10:16: emit.subject: unknown placeholder {foo.bar}`,
	"undeclared-lookup.yaml":                `undeclared-lookup.yaml:15:16: emit.data.email: unknown placeholder {usr.body.email}: "usr" is not a lookup of this rule (lookups: user)`,
	"duplicate-path-param.yaml":             `duplicate-path-param.yaml:7:13: match.path: parameter {id} appears twice`,
	"unknown-path-param.yaml":               `unknown-path-param.yaml:10:16: emit.subject: placeholder {path.user_id}: the path template has no parameter {user_id}`,
	"lookup-timeout-too-long.yaml":          `lookup-timeout-too-long.yaml:10:16: lookup.timeout: want a timeout between 1ms and 10s, got 30s`,
	"unused-lookup.yaml":                    `unused-lookup.yaml:3:5: lookup: lookup "me" is never used`,
	"duplicate-rule-name.yaml":              `duplicate-rule-name.yaml:9:5: name: duplicate rule name "user-created" (first defined at line 3)`,
	"duplicate-key.yaml":                    `duplicate-key.yaml:7:7: match.method: duplicate key "method"`,
	"yaml-syntax.yaml":                      `yaml-syntax.yaml:`,
	"unknown-placeholder-in-data.yaml":      `unknown-placeholder-in-data.yaml:11:16: emit.data.email: unknown placeholder {reponse.body.email}`,
	"constant-tenant-invalid.yaml":          `constant-tenant-invalid.yaml:7:15: emit.tenant: tenant "acme corp" has byte ' ' at 4; want letters, digits and _-.:@`,
	"type-never-rendered.yaml":              `type-never-rendered.yaml:9:31: emit.types[1]: "session.ended" can never be rendered from type "user.{request.body.action}"`,
	"before-lookup-reads-response.yaml":     `before-lookup-reads-response.yaml:8:12: lookup.get: placeholder {response.body.id} reads the response, which a before-lookup (when: before) runs ahead of`,
	"before-lookup-reads-after-lookup.yaml": `before-lookup-reads-after-lookup.yaml:14:26: lookup[1].header.X-Acting-User: placeholder {me.body.id} reads lookup "me", which runs after the response`,
	"match-regex-does-not-compile.yaml":     `match-regex-does-not-compile.yaml:11:13: emit.data.id: {match(response.header.Location, "/Users/([^/?]+$")}: the regex "/Users/([^/?]+$" does not compile`,
	"unknown-function.yaml":                 `unknown-function.yaml:10:16: emit.subject: unknown function jwt_claims(…) in {jwt_claims(request.body.token).sub}: want jwt(…), last_segment(…) or match(…, "regex")`,
	"claim-path-after-last-segment.yaml":    `claim-path-after-last-segment.yaml:10:16: emit.subject: {last_segment(response.header.Location).id}: last_segment(…) gives a string; only jwt(…) takes a claim path after it`,
	"previous-without-data.yaml":            `previous-without-data.yaml:11:9: emit.previous: previous compares before with after, which defaults to the event's data, and this emit has no data: add data: or previous.after:`,
	"previous-unknown-lookup.yaml":          `previous-unknown-lookup.yaml:11:17: emit.previous.before: unknown placeholder {old.body}`,
	"item-outside-each.yaml":                `item-outside-each.yaml:7:16: emit.subject: placeholder {item.id}: {item…}, {index} and {where.…} stand for the element of a list, so they are known only in an emit with each:`,
	"where-unknown-capture.yaml":            `where-unknown-capture.yaml:10:22: emit.data.member: placeholder {where.member}: want the name of a capture group (?P<name>…) of a regex in emit.each.where (this one has: id)`,
}

func checkListing(t *testing.T, dir string, want map[string]string) []string {
	t.Helper()
	files := ruleFiles(t, dir)
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
		if _, ok := want[filepath.Base(f)]; !ok {
			t.Errorf("%s is not listed in the table of expected errors", f)
		}
	}
	for name := range want {
		if !slices.Contains(names, name) {
			t.Errorf("the table lists %s, but %s has no such file", name, dir)
		}
	}
	return files
}

func TestInvalidRejectedBySchemaAndParser(t *testing.T) {
	sch := schema(t)
	dir := filepath.Join("testdata", "invalid")
	files := checkListing(t, dir, invalid)
	checkListing(t, dir, invalidSchemaAt)
	if len(files) < 20 {
		t.Errorf("want at least 20 invalid files, found %d", len(files))
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if err := validate(sch, data); err == nil {
				t.Errorf("schema accepts %s", file)
			} else if at := fmt.Sprintf("at '%s'", invalidSchemaAt[filepath.Base(file)]); !strings.Contains(err.Error(), at) {
				t.Errorf("schema rejects %s, but not %s:\n%v", file, at, err)
			}
			_, err = rules.Parse(file, data)
			if err == nil {
				t.Fatalf("parser accepts %s", file)
			}
			if want := invalid[filepath.Base(file)]; !strings.Contains(err.Error(), want) {
				t.Errorf("parser error for %s\n got: %v\nwant a line containing: %s", file, err, want)
			}
		})
	}
}

func TestInvalidSemanticRejectedByParser(t *testing.T) {
	sch := schema(t)
	dir := filepath.Join("testdata", "invalid_semantic")
	for _, file := range checkListing(t, dir, invalidSemantic) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			_, err = rules.Parse(file, data)
			if err == nil {
				t.Fatalf("parser accepts %s", file)
			}
			if want := invalidSemantic[filepath.Base(file)]; !strings.Contains(err.Error(), want) {
				t.Errorf("parser error for %s\n got: %v\nwant a line containing: %s", file, err, want)
			}
			// These files are here because the schema cannot see their problem; if it
			// does, the file belongs in testdata/invalid/.
			if _, err := instance(data); err == nil {
				if err := validate(sch, data); err != nil {
					t.Errorf("schema rejects %s, so it belongs in testdata/invalid/: %v", file, err)
				}
			}
		})
	}
}

// validSnippets are small files, one per feature of README.md, that the schema
// and the parser must both accept.
var validSnippets = []struct {
	name string
	src  string
}{
	{"minimal", `
version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users}
    emit: {type: user.created}
`},
	{"method list, any method, path list, host list", `
version: 1
rules:
  - name: user-changed
    description: Any write to a user.
    match:
      method: [PUT, PATCH]
      path: ["/api/users/{id}", "/api/v2/users/{id}"]
      host: [auth.example.com, "*.example.com"]
    emit: {type: user.updated, subject: "{path.id}"}
  - name: anything-under-admin
    match: {method: "*", path: "/admin/{rest...}"}
    emit: {type: admin.touched, data: {path: "{path.rest}"}}
`},
	{"root path and rest parameter", `
version: 1
rules:
  - name: root
    match: {method: POST, path: /}
    emit: {type: root.posted}
  - name: files
    match: {method: PUT, path: "/files/{path...}"}
    emit: {type: file.written, subject: "{path.path}"}
`},
	{"status forms", `
version: 1
rules:
  - {name: a, match: {method: POST, path: /a, status: 201}, emit: {type: a.created}}
  - {name: b, match: {method: POST, path: /b, status: 2xx}, emit: {type: b.created}}
  - {name: c, match: {method: POST, path: /c, status: 200-204}, emit: {type: c.created}}
  - {name: d, match: {method: POST, path: /d, status: [200, 201, 3xx, 400-404]}, emit: {type: d.created}}
  - {name: e, match: {method: POST, path: /e, status: "201"}, emit: {type: e.created}}
`},
	{"request conditions: header, cookie, query, body", `
version: 1
rules:
  - name: admin-invite
    match:
      method: POST
      path: /api/invites
      request:
        header: {X-Tenant: exists, x-debug: absent}
        cookie: {session: exists}
        query: {send_email: "true"}
        body: {role: admin, user.age: 42, active: true, deleted_at: null}
    emit: {type: invite.created}
`},
	{"response conditions: header, Set-Cookie, body", `
version: 1
rules:
  - name: login
    match:
      method: POST
      path: /login
      response:
        header: {Content-Type: {regex: "^application/json"}}
        cookie: {session: exists}
        body: {user.id: exists, mfa_required: false}
    emit: {type: user.signed_in, subject: "{response.body.user.id}"}
`},
	{"condition lists and every operator", `
version: 1
rules:
  - name: conditions
    match:
      method: POST
      path: /x
      request:
        body:
          role: [admin, owner]
          a: {equals: exists}
          b: {not_equals: guest}
          c: {one_of: [1, 2, 3]}
          d: {not_one_of: [banned, locked]}
          e: {regex: "^u_[0-9]+$"}
          f: {gt: 5}
          g: {gte: 18, lt: 65}
          h: {lte: 1.5}
          i: {exists: true}
          j: {exists: false}
    emit: {type: x.y}
`},
	{"emit every field", `
version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users, status: 201}
    emit:
      type: user.created
      subject: "{response.body.user.id}"
      data:
        id: "{response.body.user.id}"
        email: "{response.body.user.email}"
        source: signup
        tags: [a, "{request.body.plan}"]
        count: 3
        vip: false
        note: null
      omit: [internal_notes, user.meta]
      redact: [phone]
      keep_secrets: [token_type]
      keep_shapes: [jwt, whsec]
      mode: test
      dedupe:
        key: "{request.header.Idempotency-Key}"
        window: 24h
`},
	{"emit list and templated type", `
version: 1
rules:
  - name: user-action
    match: {method: POST, path: "/api/users/{id}/actions"}
    emit:
      - type: "user.{request.body.action}"
        types: [user.suspended, user.restored]
        subject: "{path.id}"
      - type: audit.logged
        data: "{request.body}"
`},
	{"every placeholder root", `
version: 1
rules:
  - name: everything
    match: {method: POST, path: "/t/{tenant}/users"}
    lookup: {get: "/t/{path.tenant}", as: tenant}
    emit:
      type: user.created
      data:
        - "{request.body}"
        - "{request.body.user.name}"
        - "{response.body}"
        - "{response.body.id}"
        - "{path.tenant}"
        - "{request.query.invite}"
        - "{request.header.X-Request-Id}"
        - "{request.cookie.session_id}"
        - "{response.header.Location}"
        - "{response.status}"
        - "{request.method} {request.path} on {request.host}"
        - "{tenant.body}"
        - "{tenant.body.name}"
        - "{tenant.status}"
        - "literal {{braces}}"
`},
	{"lookup list with timeout; dedupe window in days", `
version: 1
rules:
  - name: member-added
    match: {method: POST, path: "/orgs/{org}/members"}
    lookup:
      - get: /api/me
        as: me
        timeout: 1500ms
      - {get: "/orgs/{path.org}?fields=name", as: org, timeout: 10s}
    emit:
      type: organization.member_added
      subject: "{path.org}"
      data: {user: "{me.body.id}", org: "{org.body.name}"}
      dedupe: {key: "{me.body.id}-{path.org}", window: 7d}
`},
	{"tenant of an event: valid, missing, invalid, hostile", `
version: 1
rules:
  - name: member-added
    match: {method: POST, path: "/orgs/{org}/members"}
    emit:
      type: organization.member_added
      subject: "{response.body.id}"
      tenant: "{response.body.organization_id}"
      data: {id: "{response.body.id}"}
  - name: constant-tenant
    match: {method: POST, path: /acme/ping}
    emit: {type: acme.ping, tenant: "acme:eu@1"}
tests:
  - name: the tenant comes from the response
    request: {method: POST, path: /orgs/o1/members}
    response: {status: 201, body: {"id": "m_1", "organization_id": "org_1"}}
    expect:
      - {type: organization.member_added, subject: m_1, tenant: org_1, data: {id: m_1}}
  - name: no tenant in the response makes the event operator-only
    request: {method: POST, path: /orgs/o1/members}
    response: {status: 201, body: {"id": "m_1"}}
    expect:
      - {type: organization.member_added, tenant: "", missing: [response.body.organization_id]}
  - name: a tenant with a trailing space is not a tenant
    request: {method: POST, path: /orgs/o1/members}
    response: {status: 201, body: {"id": "m_1", "organization_id": "org_1 "}}
    expect:
      - {type: organization.member_added, tenant: "", missing: [emit.tenant]}
  - name: a tenant that is an object is not a tenant
    request: {method: POST, path: /orgs/o1/members}
    response: {status: 201, body: {"id": "m_1", "organization_id": {"$ne": null}}}
    expect:
      - {type: organization.member_added, tenant: "", missing: [emit.tenant]}
  - name: a tenant longer than 128 bytes is not a tenant
    request: {method: POST, path: /orgs/o1/members}
    response: {status: 201, body: {"id": "m_1", "organization_id": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}
    expect:
      - {type: organization.member_added, tenant: "", missing: [emit.tenant]}
  - name: a constant tenant
    request: {method: POST, path: /acme/ping}
    response: {status: 200}
    expect:
      - {type: acme.ping, tenant: "acme:eu@1"}
`},
	{"before-lookups and lookup headers", `
version: 1
rules:
  - name: member-removed
    description: A member was removed; data is the membership as it was.
    match: {method: DELETE, path: "/orgs/{org}/members/{user}", status: 204, request: {header: {X-Admin: exists}}}
    lookup:
      - get: "/orgs/{path.org}/members/{path.user}"
        as: old
        when: before
        timeout: 500ms
        header: {X-Tenant: "{request.header.X-Tenant}", accept-language: en}
      - {get: "/orgs/{old.body.org_id}", as: org, when: before}
      - {get: /me, as: me, when: after, header: {Authorization: "Bearer {response.header.X-Token}", Cookie: "session={request.cookie.session}"}}
    emit:
      type: organization.member_removed
      subject: "{path.org}"
      data: {membership: "{old.body}", org: "{org.body.name}", by: "{me.body.id}"}
tests:
  - name: the membership comes from the before-lookup
    request: {method: DELETE, path: /orgs/o1/members/u2, header: {X-Admin: "1"}}
    response: {status: 204}
    lookup:
      old: {body: {org_id: o1, user_id: u2, role: admin}}
      org: {body: {name: Acme}}
      me: {body: {id: u1}}
    expect:
      - type: organization.member_removed
        subject: o1
        data: {membership: {org_id: o1, user_id: u2, role: admin}, org: Acme, by: u1}
        missing: []
`},
	{"previous: a deep diff of the state before and after", `
version: 1
rules:
  - name: user-updated
    match: {method: PATCH, path: "/api/users/{id}"}
    lookup: {get: "/api/users/{path.id}", as: old, when: before}
    emit:
      type: user.updated
      subject: "{path.id}"
      data: "{response.body.user}"
      previous:
        before: "{old.body.user}"
        skip_unchanged: true
        ignore: [updated_at, profile.version]
  - name: email-changed
    match: {method: PATCH, path: "/api/users/{id}"}
    lookup: {get: "/api/users/{path.id}", as: old, when: before}
    emit:
      type: user.email_changed
      data: {id: "{path.id}", email: "{response.body.user.email}"}
      previous:
        before: {email: "{old.body.user.email}"}
        after: {email: "{response.body.user.email}"}
        skip_unchanged: true
tests:
  - name: a rename carries the old name; the e-mail did not change
    request: {method: PATCH, path: /api/users/u_1, body: {name: Ann B}}
    response: {body: {user: {id: u_1, name: Ann B, email: a@x.test, updated_at: t2, password_hash: h2}}}
    lookup:
      old: {body: {user: {id: u_1, name: Ann, email: a@x.test, updated_at: t1, password_hash: h1}}}
    expect:
      - type: user.updated
        previous: {name: Ann, password_hash: "[REDACTED]"}
  - name: nothing changed, no event
    request: {method: PATCH, path: /api/users/u_1, body: {}}
    response: {body: {user: {id: u_1, email: a@x.test, updated_at: t2}}}
    lookup:
      old: {body: {user: {id: u_1, email: a@x.test, updated_at: t1}}}
    expect: []
  - name: the before state is unknown, so both events go out without previous
    request: {method: PATCH, path: /api/users/u_1, body: {}}
    response: {body: {user: {id: u_1, email: b@x.test}}}
    lookup:
      old: {status: 404, body: {error: not found}}
    expect:
      - {type: user.updated, previous: null, missing: [old.body.user]}
      - {type: user.email_changed, previous: null, missing: [old.body.user.email]}
`},
	{"snake_case type names", `
version: 1
rules:
  - name: user_created
    match: {method: POST, path: /api/v1/user}
    emit: {type: user_created, data: "{response.body}"}
`},
	{"tests: every field", `
version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users}
    lookup: {get: /api/me, as: me}
    emit: {type: user.created, subject: "{response.body.id}", data: {id: "{response.body.id}", by: "{me.body.id}"}}
tests:
  - name: sign-up emits user.created
    request:
      method: POST
      path: /api/users?invite=1
      host: auth.example.com
      header: {Content-Type: application/json}
      cookie: {session: abc}
      body: {"email": "a@x.test"}
    response:
      status: 201
      header: {}
      body: {"id": "u_1"}
    lookup:
      me: {status: 200, body: {"id": "u_0"}}
    expect:
      - type: user.created
        subject: u_1
        data: {id: u_1, by: u_0}
        mode: live
        missing: []
  - name: a raw form body and no lookup answer
    request:
      method: POST
      path: /api/users
      header: {Content-Type: application/x-www-form-urlencoded}
      body: "email=a%40x.test"
    response: {status: 400}
    expect: []
`},
	{"JSON file", `{
  "version": 1,
  "rules": [
    {"name": "user-deleted",
     "match": {"method": "DELETE", "path": "/api/users/{id}", "status": [200, 204]},
     "emit": {"type": "user.deleted", "subject": "{path.id}", "data": {"id": "{path.id}"}}}
  ],
  "tests": [
    {"name": "delete", "request": {"method": "DELETE", "path": "/api/users/u_1"},
     "response": {"status": 204}, "expect": [{"type": "user.deleted", "data": {"id": "u_1"}}]}
  ]
}`},
	{"header value with the literal text exists", `
version: 1
rules:
  - name: literal-exists
    match:
      method: POST
      path: /x
      request:
        header: {X-Mode: {equals: exists}}
        body: {state: {not_equals: absent}}
    emit: {type: x.y}
`},
	{"placeholder functions: jwt, last_segment, match", `
version: 1
rules:
  - name: email-verified
    match: {method: POST, path: /verify, status: 204}
    lookup: {get: "/api/users/{jwt(request.body.token).sub}", as: user}
    emit:
      type: "user.{jwt(request.body.token).purpose}"
      types: [user.email_verification, user.password_reset]
      subject: "{jwt(request.body.token).sub}"
      data: {id: "{jwt(request.body.token).sub}", email: "{jwt(request.body.token).email}", name: "{user.body.name}"}
      dedupe: {key: "{jwt(request.body.token).exp}"}
  - name: scim-user-created
    match: {method: POST, path: /scim/v2/Users, status: 201}
    emit:
      type: user.created
      subject: "{last_segment(response.header.Location)}"
      data:
        id: '{match(response.header.Location, "/Users/([^/?]+)$")}'
        by: "{jwt(request.header.Authorization).sub}"
        hex: '{match(last_segment(response.header.Location), "^[0-9a-f]{8}$")}'
tests:
  - name: the subject is the sub claim of the token
    request: {method: POST, path: /verify, body: {token: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1XzEiLCJlbWFpbCI6ImFubkBleGFtcGxlLnRlc3QiLCJwdXJwb3NlIjoiZW1haWxfdmVyaWZpY2F0aW9uIiwiZXhwIjoxNzY3MjI1NjAwfQ.3q2YZ8fJmVbC1u6l0pVQ2xk7d9rTn4s1uWcZy3bN0eA"}}
    response: {status: 204}
    lookup: {user: {body: {name: Ann}}}
    expect:
      - {type: user.email_verification, subject: u_1, data: {id: u_1, email: ann@example.test, name: Ann}, missing: []}
  - name: a SCIM Location gives the id
    request: {method: POST, path: /scim/v2/Users, header: {Authorization: "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZG1pbl83Iiwic2NvcGUiOiJzY2ltIn0.Zm9vYmFyYmF6cXV4cXV1eHF1dXhmb29iYXJiYXo"}}
    response: {status: 201, header: {Location: "https://scim.example.test/scim/v2/Users/2819c223"}}
    expect:
      - {type: user.created, subject: 2819c223, data: {id: 2819c223, by: admin_7, hex: 2819c223}}
`},
	{"multipart/form-data request body", `
version: 1
rules:
  - name: sign-up
    match: {method: POST, path: /signup, status: 201, request: {body: {plan: pro}}}
    emit: {type: user.created, subject: "{request.body.email}", data: "{request.body}"}
tests:
  - name: a multipart sign-up; the file part is skipped, the password redacted
    request:
      method: POST
      path: /signup
      header: {Content-Type: "multipart/form-data; boundary=X"}
      body: |
        --X
        Content-Disposition: form-data; name="email"

        ann@example.test
        --X
        Content-Disposition: form-data; name="password"

        s3cret
        --X
        Content-Disposition: form-data; name="plan"

        pro
        --X
        Content-Disposition: form-data; name="avatar"; filename="me.png"
        Content-Type: image/png

        PNG...
        --X--
    response: {status: 201}
    expect:
      - {type: user.created, subject: ann@example.test, data: {email: ann@example.test, password: "[REDACTED]", plan: pro}}
`},
	{"dedupe as the key alone (default window)", `
version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users}
    emit: {type: user.created, dedupe: "{request.header.Idempotency-Key}"}
`},
	{"wildcard host and body condition paths with gjson syntax", `
version: 1
rules:
  - name: wildcard
    match:
      method: POST
      path: /x
      host: "*.auth.example.com"
      response:
        body: {"users.#": {gte: 1}, "roles.0": admin}
    emit: {type: x.y}
`},
	{"each: one event per element, filtered, with captures and nested lists", `
version: 1
rules:
  - name: users-imported
    match: {method: POST, path: /api/users/import, status: 201}
    emit:
      type: user.created
      each: "{response.body.users}"
      subject: "{item.id}"
      data: {id: "{item.id}", email: "{item.email}", position: "{index}"}
      dedupe: {key: "{request.header.Idempotency-Key}"}
  - name: scim-group-members
    match: {method: PATCH, path: "/scim/v2/Groups/{id}"}
    emit:
      - type: group.member_added
        each: {items: "{request.body.Operations}", where: {op: {regex: "(?i)^add$"}, path: members}, then: "{item.value}"}
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{item.value}"}
      - type: group.member_removed
        each:
          items: "{request.body.Operations}"
          where:
            op: {regex: "(?i)^remove$"}
            path: {regex: '^members\[value eq "(?P<member>[^"]+)"\]$'}
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{where.member}"}
tests:
  - name: an import of two users is two events
    request: {method: POST, path: /api/users/import, body: {"users": [{"email": "a@x.test"}, {"email": "b@x.test"}]}}
    response: {status: 201, body: {"users": [{"id": "u_1", "email": "a@x.test"}, {"id": "u_2", "email": "b@x.test"}]}}
    expect:
      - {type: user.created, subject: u_1, data: {id: u_1, email: a@x.test, position: 0}}
      - {type: user.created, subject: u_2, data: {id: u_2, email: b@x.test, position: 1}}
  - name: a PATCH adding two members and removing one is three events, in the order of its operations
    request:
      method: PATCH
      path: /scim/v2/Groups/g_1
      header: {Content-Type: application/scim+json}
      body:
        Operations:
          - {op: remove, path: 'members[value eq "c3a26dd3"]'}
          - {op: Add, path: members, value: [{value: "2819c223"}, {value: "902c246b"}]}
    response: {status: 204}
    expect:
      - {type: group.member_removed, subject: g_1, data: {group: g_1, member: c3a26dd3}}
      - {type: group.member_added, subject: g_1, data: {group: g_1, member: "2819c223"}}
      - {type: group.member_added, subject: g_1, data: {group: g_1, member: "902c246b"}}
`},
	{"batch: SCIM /Bulk, a JSON $batch paired by id, a top-level list of answers", `
version: 1
rules:
  - name: user-created
    match: {method: POST, path: [/scim/v2/Users, /v1/users], status: 201}
    emit: {type: user.created, subject: "{response.body.id}", data: {id: "{response.body.id}", location: "{response.header.Location}"}}
  - name: user-deleted
    match: {method: DELETE, path: ["/scim/v2/Users/{id}", "/v1/users/{id}"]}
    emit: {type: user.deleted, subject: "{path.id}"}
  - name: scim-bulk
    description: A SCIM bulk request; its operations are matched as requests of their own.
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "{item.path}", body: "{item.data}"}
      response: {items: "{response.body.Operations}", status: "{item.status}", body: "{item.response}", location: "{item.location}"}
  - name: json-batch
    match: {method: POST, path: /v1/$batch}
    batch:
      base: /v1
      atomic: true
      request: {items: "{request.body.requests}", id: "{item.id}", method: "{item.method}", url: "{item.url}", body: "{item.body}"}
      response: {items: "{response.body.responses}", id: "{item.id}", status: "{item.status}", body: "{item.body}", location: "{item.headers.Location}"}
  - name: plain-batch
    match: {method: POST, path: /v1/batch}
    batch:
      request: {items: "{request.body.requests}", method: "{item.method}", url: "{item.url}", body: "{item.body}"}
      response: {items: "{response.body}", status: "{item.status}", body: "{item.body}"}
tests:
  - name: a bulk of a create, a delete and a failed create emits for the two that succeeded
    request:
      method: POST
      path: /scim/v2/Bulk
      body:
        Operations:
          - {method: POST, path: /Users, bulkId: a, data: {userName: alice}}
          - {method: DELETE, path: /Users/u_9}
          - {method: POST, path: /Users, bulkId: b, data: {userName: alice}}
    response:
      status: 200
      body:
        Operations:
          - {method: POST, bulkId: a, status: "201", location: "https://x.test/scim/v2/Users/u_1", response: {id: u_1}}
          - {method: DELETE, status: "204"}
          - {method: POST, bulkId: b, status: "409", response: {scimType: uniqueness}}
    expect:
      - {type: user.created, subject: u_1, data: {id: u_1, location: "https://x.test/scim/v2/Users/u_1"}}
      - {type: user.deleted, subject: u_9}
  - name: an atomic batch answered out of order, all succeeded
    request:
      method: POST
      path: /v1/$batch
      body: {requests: [{id: "1", method: POST, url: "/users?notify=1", body: {email: a@x.test}}, {id: "2", method: DELETE, url: /users/u_7}]}
    response:
      body: {responses: [{id: "2", status: 204}, {id: "1", status: 201, headers: {Location: /v1/users/u_8}, body: {id: u_8}}]}
    expect:
      - {type: user.created, subject: u_8, data: {id: u_8, location: /v1/users/u_8}}
      - {type: user.deleted, subject: u_7}
  - name: an atomic batch with a failure applied nothing
    request:
      method: POST
      path: /v1/$batch
      body: {requests: [{id: "1", method: POST, url: /users, body: {}}, {id: "2", method: DELETE, url: /users/u_7}]}
    response:
      body: {responses: [{id: "1", status: 201, body: {id: u_8}}, {id: "2", status: 404}]}
    expect: []
  - name: a batch answered with a top-level list
    request:
      method: POST
      path: /v1/batch
      body: {requests: [{method: DELETE, url: /v1/users/u_1}, {method: DELETE, url: /v1/users/u_2}]}
    response:
      body: [{status: 204}, {status: "500"}]
    expect:
      - {type: user.deleted, subject: u_1}
`},
}

func TestValidSnippets(t *testing.T) {
	sch := schema(t)
	for _, tc := range validSnippets {
		t.Run(tc.name, func(t *testing.T) {
			src := []byte(strings.TrimLeft(tc.src, "\n"))
			if err := validate(sch, src); err != nil {
				t.Errorf("schema rejects:\n%v", err)
			}
			f, err := rules.Parse("snippet.yaml", src)
			if err != nil {
				t.Fatalf("parser rejects:\n%v", err)
			}
			set, err := rules.NewSet(f)
			if err != nil {
				t.Fatalf("building a set: %v", err)
			}
			for _, r := range set.RunTests() {
				if !r.Passed {
					t.Errorf("line %d: test %q failed: %s", r.Line, r.Name, r.Failure)
				}
			}
		})
	}
}

// The schema and the parser agree on which headers a lookup may set.
func TestLookupHeaderNamesSchemaAndParserAgree(t *testing.T) {
	sch := schema(t)
	file := func(name string) []byte {
		return []byte(fmt.Sprintf("version: 1\nrules:\n  - name: a\n    match: {method: POST, path: /x}\n    lookup: {get: /me, as: me, header: {%q: \"v {request.header.X-A}\"}}\n    emit: {type: a.b, data: \"{me.body}\"}\n", name))
	}
	for _, name := range []string{"Host", "host", "HOST", "Content-Length", "content-length", "Connection", "Keep-Alive",
		"TE", "te", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Authorization", "Proxy-Connection", "Proxy-Authenticate",
		"X-Authtap-Lookup", "x-authtap-lookup", "X-Authtap-Anything", "X Tenant", "X:Tenant"} {
		src := file(name)
		if err := validate(sch, src); err == nil {
			t.Errorf("schema accepts header %q", name)
		}
		if _, err := rules.Parse("h.yaml", src); err == nil {
			t.Errorf("parser accepts header %q", name)
		}
	}
	for _, name := range []string{"Authorization", "Cookie", "X-Tenant", "Accept", "TEA", "Hostname", "X-Authtap", "X-Upgrade-Id", "x_custom.header~1"} {
		src := file(name)
		if err := validate(sch, src); err != nil {
			t.Errorf("schema rejects header %q: %v", name, err)
		}
		if _, err := rules.Parse("h.yaml", src); err != nil {
			t.Errorf("parser rejects header %q: %v", name, err)
		}
	}
}

// The worked examples of README.md's lookup section are valid for the schema
// and the parser, and their inline tests pass.
func TestReadmeLookupExamples(t *testing.T) {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	sec := text[strings.Index(text, "\n## lookup\n"):]
	sec = sec[:strings.Index(sec[1:], "\n## ")+1]
	sch := schema(t)
	n, tests := 0, 0
	for _, block := range strings.Split(sec, "```yaml\n")[1:] {
		block = block[:strings.Index(block, "```")]
		if !strings.Contains(block, "- name:") {
			continue // the key-by-key summary, not a rule
		}
		n++
		src := []byte("version: 1\nrules:\n" + block)
		if err := validate(sch, src); err != nil {
			t.Errorf("schema rejects the README example:\n%s\n%v", block, err)
		}
		f, err := rules.Parse("readme.yaml", src)
		if err != nil {
			t.Errorf("parser rejects the README example:\n%s\n%v", block, err)
			continue
		}
		set, err := rules.NewSet(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range set.RunTests() {
			tests++
			if !r.Passed {
				t.Errorf("README example test %q failed: %s", r.Name, r.Failure)
			}
		}
	}
	if tests < 2 {
		t.Errorf("the README examples ran %d inline tests, want the DELETE example's two", tests)
	}
	if n < 2 {
		t.Errorf("found %d rule examples in README.md's lookup section, want the DELETE and the header one", n)
	}
}
