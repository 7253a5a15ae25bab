package rules

import (
	"bytes"
	"encoding/json"
	"math/big"
	"net/http"
	"strings"
	"testing"
)

// prevRules compare the request body (standing for a before-lookup) with the
// response body, the event's data.
const prevRules = `version: 1
rules:
  - name: upd
    match: {method: PATCH, path: /u}
    emit:
      type: u.updated
      data: "{response.body}"
      omit: [internal, user.meta]
      redact: [phone]
      previous:
        before: "{request.body}"
        ignore: [updated_at, user.version]
  - name: skip
    match: {method: PATCH, path: /s}
    emit:
      type: u.updated
      data: "{response.body}"
      previous: {before: "{request.body}", skip_unchanged: true}
  - name: explicit
    match: {method: PATCH, path: "/e/{id}"}
    emit:
      type: u.email_changed
      subject: "{path.id}"
      data: {id: "{path.id}", email: "{response.body.email}"}
      previous:
        before: {email: "{request.body.email}"}
        after: {email: "{response.body.email}"}
        skip_unchanged: true
  - name: template-secrets
    match: {method: PATCH, path: /t}
    emit:
      type: u.updated
      data: {auth: "{request.header.Authorization}", token: "{response.body.t}", note: "x={response.body.t}"}
      previous:
        before: {auth: "{request.header.X-Old-Authorization}", token: "{request.body.t}", note: "x={request.body.t}"}
`

func prevEvents(t *testing.T, s *Set, path, before, after string, hdr http.Header) ([]Event, []string) {
	t.Helper()
	ex := &Exchange{Method: "PATCH", Path: path, Status: 200, RequestHeader: hdr,
		ResponseHeader: http.Header{"Content-Type": {"application/json"}}, ResponseBody: []byte(after)}
	if before != "" {
		ex.RequestBody = []byte(before)
		if ex.RequestHeader == nil {
			ex.RequestHeader = http.Header{}
		}
		ex.RequestHeader.Set("Content-Type", "application/json")
	}
	var unchanged []string
	evs, errs := s.Evaluate(ex, EmitOptions{Source: "t", Unchanged: func(_, typ string) { unchanged = append(unchanged, typ) }})
	for _, err := range errs {
		t.Errorf("emit error: %v", err)
	}
	for _, ev := range evs {
		checkEnvelope(t, ev)
		if ev.Previous != nil {
			checkCompact(t, ev.Previous)
		}
	}
	return evs, unchanged
}

// TestPreviousDiff is the diff's every rule, as README.md states them.
func TestPreviousDiff(t *testing.T) {
	s := mustSet(t, prevRules)
	jwt := jwtOf(`{"alg":"HS256","typ":"JWT"}`)
	jwt2 := jwtOf(`{"alg":"HS512","typ":"JWT"}`)
	for _, tc := range []struct {
		name, before, after, want string // want "" means no previous
	}{
		{"equal", `{"a":1,"b":"x"}`, `{"a":1,"b":"x"}`, ``},
		{"one field changed", `{"a":1,"b":2}`, `{"a":1,"b":3}`, `{"b":2}`},
		{"nested objects: only the changed sub-field", `{"u":{"name":"Ann","email":"a@x","n":{"x":1,"y":2}}}`, `{"u":{"name":"Bob","email":"a@x","n":{"x":1,"y":3}}}`, `{"u":{"name":"Ann","n":{"y":2}}}`},
		{"nested objects, unchanged: nothing", `{"u":{"a":{"b":{}}}}`, `{"u":{"a":{"b":{}}}}`, ``},
		{"absent before: null", `{}`, `{"a":1,"b":{"c":2}}`, `{"a":null,"b":null}`},
		{"nested field absent before: null", `{"u":{}}`, `{"u":{"a":1}}`, `{"u":{"a":null}}`},
		{"removed after: its before value", `{"a":1,"b":{"c":[2]}}`, `{}`, `{"a":1,"b":{"c":[2]}}`},
		{"null before, value after", `{"a":null}`, `{"a":"x"}`, `{"a":null}`},
		{"value before, null after", `{"a":"x"}`, `{"a":null}`, `{"a":"x"}`},
		{"arrays compared whole", `{"r":[1,2,3]}`, `{"r":[1,2,4]}`, `{"r":[1,2,3]}`},
		{"array grown", `{"r":[1]}`, `{"r":[1,2]}`, `{"r":[1]}`},
		{"equal arrays of objects, keys in another order", `{"r":[{"a":1,"b":2},[3]]}`, `{"r":[{"b":2,"a":1},[3]]}`, ``},
		{"array of objects, one sub-field changed: the whole array", `{"r":[{"a":1},{"a":2}]}`, `{"r":[{"a":1},{"a":3}]}`, `{"r":[{"a":1},{"a":2}]}`},
		{"numbers as numbers", `{"a":1,"b":1e2,"c":-0,"d":0.50,"e":12e-1}`, `{"a":1.0,"b":100,"c":0,"d":5e-1,"e":1.2}`, ``},
		{"big integers exactly", `{"a":12345678901234567890}`, `{"a":12345678901234567891}`, `{"a":12345678901234567890}`},
		{"number changed", `{"a":1.5}`, `{"a":1.25}`, `{"a":1.5}`},
		{"string vs number", `{"a":"1"}`, `{"a":1}`, `{"a":"1"}`},
		{"object vs array", `{"a":{"x":1}}`, `{"a":[1]}`, `{"a":{"x":1}}`},
		{"scalar vs object", `{"a":1}`, `{"a":{"x":1}}`, `{"a":1}`},
		{"true vs false", `{"a":true}`, `{"a":false}`, `{"a":true}`},
		{"key order does not matter", `{"a":1,"b":2,"c":{"x":1,"y":2}}`, `{"c":{"y":2,"x":1},"b":2,"a":1}`, ``},
		{"key order differs, one changed", `{"a":1,"b":2}`, `{"b":3,"a":1}`, `{"b":2}`},
		{"escapes do not matter", `{"a":"\u00e9\/"}`, `{"a":"é/"}`, ``},
		{"repeated key: the last counts", `{"a":1,"a":2}`, `{"a":2}`, ``},
		{"repeated key changed", `{"a":2,"a":1}`, `{"a":2,"a":2}`, `{"a":1}`},
		{"password-like key changed: redacted, never its value", `{"password_hash":"$2b$old","name":"a"}`, `{"password_hash":"$2b$new","name":"a"}`, `{"password_hash":"[REDACTED]"}`},
		{"password-like key unchanged", `{"password_hash":"$2b$x","name":"a"}`, `{"password_hash":"$2b$x","name":"b"}`, `{"name":"a"}`},
		{"password-like object changed", `{"credentials":{"k":1}}`, `{"credentials":{"k":2}}`, `{"credentials":"[REDACTED]"}`},
		{"password-like key added", `{}`, `{"api_key":"k"}`, `{"api_key":null}`},
		{"password-like key removed", `{"api_key":"k"}`, `{}`, `{"api_key":"[REDACTED]"}`},
		{"secret shape changed under a plain key", `{"nick":"` + jwt + `"}`, `{"nick":"` + jwt2 + `"}`, `{"nick":"[REDACTED]"}`},
		{"secret shape unchanged", `{"nick":"` + jwt + `","a":1}`, `{"nick":"` + jwt + `","a":2}`, `{"a":1}`},
		{"secret shape inside an array", `{"r":["` + jwt + `",1]}`, `{"r":["` + jwt + `",2]}`, `{"r":["[REDACTED]",1]}`},
		{"redact list", `{"phone":"1"}`, `{"phone":"2"}`, `{"phone":"[REDACTED]"}`},
		{"omit: never compared, never shown", `{"internal":1,"user":{"meta":1,"a":1}}`, `{"internal":2,"user":{"meta":2,"a":1}}`, ``},
		{"ignore: never compared, never shown", `{"updated_at":"t1","user":{"version":1,"a":1}}`, `{"updated_at":"t2","user":{"version":2,"a":2}}`, `{"user":{"a":1}}`},
		{"ignore key at any depth", `{"x":{"updated_at":"t1"}}`, `{"x":{"updated_at":"t2"}}`, ``},
		{"ignored path only at its place", `{"version":1}`, `{"version":2}`, `{"version":1}`},
		{"keys with escapes", `{"k\"q":1,"\u00e9":1}`, `{"k\"q":2,"é":2}`, `{"k\"q":1,"é":1}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs, _ := prevEvents(t, s, "/u", tc.before, tc.after, nil)
			if len(evs) != 1 {
				t.Fatalf("%d events", len(evs))
			}
			ev := evs[0]
			if tc.want == "" {
				if ev.Previous != nil {
					t.Fatalf("want no previous, got %s", ev.Previous)
				}
				return
			}
			if string(ev.Previous) != tc.want {
				t.Fatalf("previous\n got %s\nwant %s", ev.Previous, tc.want)
			}
			if len(ev.Source.Missing) > 0 {
				t.Errorf("missing %q", ev.Source.Missing)
			}
			for _, secret := range []string{"$2b$", jwt, `"k":1`, `"k":2`} {
				if strings.Contains(string(ev.Previous), secret) {
					t.Errorf("previous shows %q", secret)
				}
			}
		})
	}
}

// TestPreviousUnknownState: without both states there is no previous, the
// event says why in source.missing, and skip_unchanged still emits it.
func TestPreviousUnknownState(t *testing.T) {
	s := mustSet(t, prevRules)
	for _, tc := range []struct {
		name, path, before, after string
		missing                   []string
	}{
		{"no before body", "/u", "", `{"a":1}`, []string{"request.body"}},
		{"before is not JSON", "/u", `nope`, `{"a":1}`, []string{"request.body"}},
		{"before is an array", "/u", `[1]`, `{"a":1}`, []string{PreviousMissing}},
		{"before is null", "/u", `null`, `{"a":1}`, []string{PreviousMissing}},
		{"after is not an object", "/u", `{"a":1}`, `"x"`, []string{PreviousMissing}},
		{"skip_unchanged, no before", "/s", "", `{"a":1}`, []string{"request.body"}},
		{"skip_unchanged, before not an object", "/s", `"a"`, `"a"`, []string{PreviousMissing}},
		{"explicit after, a field missing on one side", "/e/u_1", `{"name":"x"}`, `{"email":"a@x"}`, []string{"request.body.email"}},
		{"explicit after, a field missing on the other side", "/e/u_1", `{"email":"a@x"}`, `{"name":"x"}`, []string{"response.body.email"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs, unchanged := prevEvents(t, s, tc.path, tc.before, tc.after, nil)
			if len(evs) != 1 || len(unchanged) != 0 {
				t.Fatalf("%d events, unchanged %q: want the event", len(evs), unchanged)
			}
			if evs[0].Previous != nil {
				t.Errorf("previous %s", evs[0].Previous)
			}
			if !sameStrings(evs[0].Source.Missing, tc.missing) {
				t.Errorf("missing %q, want %q", evs[0].Source.Missing, tc.missing)
			}
		})
	}
}

func TestPreviousSkipUnchanged(t *testing.T) {
	s := mustSet(t, prevRules)
	evs, unchanged := prevEvents(t, s, "/s", `{"a":1,"b":[1,{"c":2}]}`, `{"b":[1,{"c":2.0}],"a":1}`, nil)
	if len(evs) != 0 || len(unchanged) != 1 || unchanged[0] != "u.updated" {
		t.Fatalf("nothing changed: %d events, unchanged %q", len(evs), unchanged)
	}
	evs, unchanged = prevEvents(t, s, "/s", `{"a":1}`, `{"a":2}`, nil)
	if len(evs) != 1 || len(unchanged) != 0 || string(evs[0].Previous) != `{"a":1}` {
		t.Fatalf("a change: %d events, unchanged %q", len(evs), unchanged)
	}
	// an explicit after: only the e-mail counts
	evs, _ = prevEvents(t, s, "/e/u_1", `{"email":"a@x","name":"A"}`, `{"email":"a@x","name":"B"}`, nil)
	if len(evs) != 0 {
		t.Fatalf("e-mail unchanged: %d events", len(evs))
	}
	evs, _ = prevEvents(t, s, "/e/u_1", `{"email":"a@x"}`, `{"email":"b@x"}`, nil)
	if len(evs) != 1 || string(evs[0].Previous) != `{"email":"a@x"}` || string(evs[0].Data) != `{"id":"u_1","email":"b@x"}` {
		t.Fatalf("e-mail changed: %+v", evs)
	}
	// a changed secret is a change
	evs, _ = prevEvents(t, s, "/s", `{"password":"old"}`, `{"password":"new"}`, nil)
	if len(evs) != 1 || string(evs[0].Previous) != `{"password":"[REDACTED]"}` {
		t.Fatalf("password changed: %+v", evs)
	}
}

// TestPreviousTemplateSecrets: a value read from a password-like source is
// redacted wherever it lands, in previous as in data, and still compared.
func TestPreviousTemplateSecrets(t *testing.T) {
	s := mustSet(t, prevRules)
	jwt := jwtOf(`{"alg":"HS256"}`)
	hdr := http.Header{"Authorization": {"Bearer new"}, "X-Old-Authorization": {"Bearer old"}}
	evs, _ := prevEvents(t, s, "/t", `{"t":"`+jwt+`"}`, `{"t":"`+jwt+`x"}`, hdr)
	if len(evs) != 1 {
		t.Fatalf("%d events", len(evs))
	}
	want := `{"auth":"[REDACTED]","token":"[REDACTED]","note":"[REDACTED]"}`
	if string(evs[0].Previous) != want {
		t.Fatalf("previous %s, want %s", evs[0].Previous, want)
	}
	if string(evs[0].Data) != `{"auth":"[REDACTED]","token":"[REDACTED]","note":"x=[REDACTED]"}` {
		t.Fatalf("data %s", evs[0].Data)
	}
	// the same hidden values: no change
	hdr.Set("X-Old-Authorization", "Bearer new")
	evs, _ = prevEvents(t, s, "/t", `{"t":"`+jwt+`"}`, `{"t":"`+jwt+`"}`, hdr)
	if len(evs) != 1 || evs[0].Previous != nil {
		t.Fatalf("unchanged secrets: %s", evs[0].Previous)
	}
}

// TestPreviousMarkerSpoofing: a value from a request that spells a marker
// cannot pass for a hidden value, so it cannot hide a change.
func TestPreviousMarkerSpoofing(t *testing.T) {
	s := mustSet(t, prevRules)
	jwt := jwtOf(`{"alg":"HS256"}`)
	mark := string(appendMark(nil, markRedacted, []byte(jwt)))
	spoof, _ := json.Marshal(map[string]string{"nick": mark})
	evs, _ := prevEvents(t, s, "/u", `{"nick":"`+jwt+`"}`, string(spoof), nil)
	if len(evs) != 1 || string(evs[0].Previous) != `{"nick":"[REDACTED]"}` {
		t.Fatalf("spoofed marker: previous %s", evs[0].Previous)
	}
	// and a marker-like string in before is never shown
	evs, _ = prevEvents(t, s, "/u", string(spoof), `{"nick":"x"}`, nil)
	if len(evs) != 1 || string(evs[0].Previous) != `{"nick":"[REDACTED]"}` {
		t.Fatalf("marker-like before: previous %s", evs[0].Previous)
	}
}

// TestPreviousDeep: a state nested past MaxDataDepth is cut as data is; a
// change below the cut is still a change, shown as Truncated and noted in
// source.truncated under "previous.".
func TestPreviousDeep(t *testing.T) {
	s := mustSet(t, prevRules)
	deep := func(leaf string) string {
		return `{"a":` + strings.Repeat(`{"k":`, 150) + leaf + strings.Repeat("}", 150) + `}`
	}
	evs, _ := prevEvents(t, s, "/u", deep("1"), deep("1"), nil)
	if len(evs) != 1 || evs[0].Previous != nil {
		t.Fatalf("equal deep states: %s", evs[0].Previous)
	}
	evs, _ = prevEvents(t, s, "/u", deep("1"), deep("2"), nil)
	if len(evs) != 1 {
		t.Fatalf("%d events", len(evs))
	}
	ev := evs[0]
	if d := jsonDepth(ev.Previous); d != MaxDataDepth {
		t.Fatalf("previous depth %d", d)
	}
	if !strings.Contains(string(ev.Previous), `"`+Truncated+`"`) {
		t.Fatalf("previous %s", ev.Previous)
	}
	tr := ev.Source.Truncated
	if tr == nil || tr.Count != 2 || len(tr.Paths) != 2 {
		t.Fatalf("truncated %+v", tr)
	}
	// the data's cut, then previous's at the same place
	if wantData := "a" + strings.Repeat(".k", MaxDataDepth-1); tr.Paths[0] != wantData || tr.Paths[1] != "previous."+wantData {
		t.Fatalf("paths %q", tr.Paths)
	}
}

// TestPreviousParseErrors: emit.previous is parsed as strictly as the rest.
func TestPreviousParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, emit, want string }{
		{"unknown key", `{type: a.b, data: "{response.body}", previous: {before: "{request.body}", skip_unchanged_: true}}`, `emit.previous: unknown key "skip_unchanged_" (did you mean "skip_unchanged"?)`},
		{"no before", `{type: a.b, data: "{response.body}", previous: {after: "{response.body}"}}`, `emit.previous: missing required key "before"`},
		{"not a mapping", `{type: a.b, data: "{response.body}", previous: "{request.body}"}`, `emit.previous: want a mapping`},
		{"skip_unchanged not a bool", `{type: a.b, data: "{response.body}", previous: {before: "{request.body}", skip_unchanged: "yes"}}`, `emit.previous.skip_unchanged: want true or false, got "yes"`},
		{"no data and no after", `{type: a.b, previous: {before: "{request.body}"}}`, `emit.previous: previous compares before with after, which defaults to the event's data, and this emit has no data`},
		{"bad placeholder", `{type: a.b, data: "{response.body}", previous: {before: "{old.body}"}}`, `emit.previous.before: unknown placeholder {old.body}`},
		{"ignore not a list", `{type: a.b, data: "{response.body}", previous: {before: "{request.body}", ignore: updated_at}}`, `emit.previous.ignore: want a list of key names or dotted paths`},
		{"ignore bad path", `{type: a.b, data: "{response.body}", previous: {before: "{request.body}", ignore: [a.]}}`, `emit.previous.ignore[0]: want a key name such as updated_at`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("r.yaml", []byte(ruleFile("name: a\nmatch: {method: PATCH, path: /x}\nemit: "+tc.emit)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v\nwant %s", err, tc.want)
			}
		})
	}
	// a lookup used only by previous is used
	if _, err := Parse("r.yaml", []byte(ruleFile("name: a\nmatch: {method: PATCH, path: \"/u/{id}\"}\nlookup: {get: \"/u/{path.id}\", as: old}\nemit: {type: a.b, data: \"{response.body}\", previous: {before: \"{old.body}\"}}"))); err != nil {
		t.Fatalf("lookup used by previous: %v", err)
	}
	// previous reads the request body: the handler must buffer it
	s := mustSet(t, ruleFile("name: a\nmatch: {method: PATCH, path: /x}\nemit: {type: a.b, data: {x: 1}, previous: {before: \"{request.body}\", after: {x: 2}}}"))
	if n := s.Rules()[0].Need(); !n.RequestBody || n.ResponseBody {
		t.Fatalf("need %+v", n)
	}
}

func TestNumEqual(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		eq   bool
	}{
		{"1", "1.0", true}, {"1", "1e0", true}, {"100", "1e2", true}, {"100", "1E+2", true}, {"0.01", "1e-2", true},
		{"0", "-0", true}, {"0", "0.000", true}, {"0e5", "0", true}, {"-1.5", "-15e-1", true}, {"120", "12e1", true},
		{"1", "2", false}, {"1", "-1", false}, {"0.1", "0.01", false}, {"10", "1", false},
		{"12345678901234567890", "12345678901234567891", false}, {"1e400", "10e399", true}, {"1e400", "1e401", false},
		{"1e1234567890123456789", "10e1234567890123456788", false}, // too large an exponent: compared as text
		{"1e1234567890123456789", "1e1234567890123456789", true},
	} {
		if got := numEqual(tc.a, tc.b); got != tc.eq {
			t.Errorf("numEqual(%s, %s) = %v", tc.a, tc.b, got)
		}
	}
}

// TestPreviousInlineTests: tests[].expect[].previous is checked.
func TestPreviousInlineTests(t *testing.T) {
	src := prevRules + `tests:
  - name: changed
    request: {method: PATCH, path: /s, body: {a: 1, password: p1}}
    response: {status: 200, body: {a: 2, password: p2}}
    expect: [{type: u.updated, previous: {a: 1, password: "[REDACTED]"}}]
  - name: unchanged
    request: {method: PATCH, path: /s, body: {a: 1}}
    response: {status: 200, body: {a: 1}}
    expect: []
  - name: no previous expected
    request: {method: PATCH, path: /u, body: {a: 1}}
    response: {status: 200, body: {a: 1}}
    expect: [{type: u.updated, previous: null}]
  - name: wrong previous
    request: {method: PATCH, path: /u, body: {a: 1}}
    response: {status: 200, body: {a: 2}}
    expect: [{type: u.updated, previous: {a: 3}}]
  - name: previous expected, none built
    request: {method: PATCH, path: /u, body: {a: 1}}
    response: {status: 200, body: {a: 1}}
    expect: [{type: u.updated, previous: {a: 1}}]
`
	res := mustSet(t, src).RunTests()
	if len(res) != 5 {
		t.Fatalf("%d results", len(res))
	}
	for i, r := range res {
		if wantPass := i < 3; r.Passed != wantPass {
			t.Errorf("%s: passed %v: %s", r.Name, r.Passed, r.Failure)
		}
	}
	if !strings.Contains(res[3].Failure, `want previous {"a":3}, got {"a":1}`) || !strings.Contains(res[4].Failure, `want previous {"a":1}, got null`) {
		t.Errorf("failures: %q / %q", res[3].Failure, res[4].Failure)
	}
	_, err := Parse("r.yaml", []byte(prevRules+"tests:\n  - name: x\n    request: {method: PATCH, path: /u}\n    expect: [{type: u.updated, previous: [1]}]\n"))
	if err == nil || !strings.Contains(err.Error(), "tests[0].expect[0].previous: want the expected previous") {
		t.Fatalf("error %v", err)
	}
}

const fuzzPreviousRule = `version: 1
rules:
  - name: prev
    match: {method: PATCH, path: /x}
    emit:
      type: a.b
      data: "{response.body}"
      keep_shapes: [otpauth, jwt, private_key, whsec]
      previous: {before: "{request.body}", skip_unchanged: true}
`

// FuzzPrevious diffs random before and after bodies: never a panic, previous
// is a compact JSON object no deeper than MaxDataDepth (or absent), the
// envelope is valid, a password-like key's old value is never shown, and on
// objects that encoding/json reads (shallow enough not to be cut, without
// password-like keys) previous is what a plain recursive diff of the decoded
// values gives, numbers compared exactly.
func FuzzPrevious(f *testing.F) {
	s := mustSet(f, fuzzPreviousRule)
	for _, seed := range [][2]string{
		{`{"a":1,"b":2}`, `{"a":1,"b":3}`}, {`{"u":{"n":"a","e":"x"}}`, `{"u":{"n":"b","e":"x"}}`}, {`{}`, `{"a":1}`},
		{`{"a":1}`, `{}`}, {`{"r":[1,{"a":1,"b":2}]}`, `{"r":[1,{"b":2,"a":1}]}`}, {`{"n":1e2,"m":-0}`, `{"n":100,"m":0}`},
		{`{"a":2,"a":1}`, `{"a":2}`}, {`{"password":"x","k":{"token":1}}`, `{"password":"y","k":{"token":1}}`},
		{`{"a":"\u0000\u0001R"}`, `{"a":"x"}`}, {`[1]`, `{}`}, {`{"a":` + nested(120, true) + `}`, `{"a":` + nested(121, true) + `}`},
		{`{"k\"q":1,"é":2}`, `{"k\u0022q":1,"\u00e9":3}`}, {`{"a":12345678901234567890}`, `{"a":12345678901234567891}`},
	} {
		f.Add([]byte(seed[0]), []byte(seed[1]))
	}
	f.Fuzz(func(t *testing.T, before, after []byte) {
		ex := &Exchange{Method: "PATCH", Path: "/x", Status: 200,
			RequestHeader: http.Header{"Content-Type": {"application/json"}}, RequestBody: before,
			ResponseHeader: http.Header{"Content-Type": {"application/json"}}, ResponseBody: after}
		evs, errs := s.Evaluate(ex, EmitOptions{})
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		if len(evs) > 1 {
			t.Fatalf("%d events", len(evs))
		}
		var got []byte
		if len(evs) == 1 {
			ev := evs[0]
			// the envelope is compact JSON that reads back with its previous (numbers
			// as written: 1e400 is JSON, if no float64, so not checkEnvelope)
			env, err := ev.MarshalJSON()
			if err != nil {
				t.Fatal(err)
			}
			checkCompact(t, env)
			var back Event
			if err := json.Unmarshal(env, &back); err != nil || !bytes.Equal(back.Previous, ev.Previous) || !bytes.Equal(back.Data, ev.Data) {
				t.Fatalf("the envelope reads back differently (%v): %s", err, env)
			}
			got = ev.Previous
			if got != nil {
				checkCompact(t, got)
				if got[0] != '{' || string(got) == "{}" || jsonDepth(got) > MaxDataDepth {
					t.Fatalf("previous %q", got)
				}
				if len(ev.Source.Missing) > 0 {
					t.Fatalf("previous %s with missing %q", got, ev.Source.Missing)
				}
			}
		}
		a, aok := decodeObject(before)
		b, bok := decodeObject(after)
		if !aok || !bok || hasSecretKey(a) || hasSecretKey(b) || jsonDepth(before) > 90 || jsonDepth(after) > 90 ||
			bytes.Contains(before, []byte(`\u000`)) || bytes.Contains(after, []byte(`\u000`)) || bytes.ContainsAny(before, "\x00\x01") {
			if len(evs) == 0 && (aok && bok) == false {
				t.Fatal("an unknown state skipped the event")
			}
			return
		}
		want := refDiff(a, b)
		if len(want) == 0 {
			if len(evs) != 0 {
				t.Fatalf("nothing changed, yet an event with previous %s", got)
			}
			return
		}
		if len(evs) != 1 {
			t.Fatalf("a change (%v), no event", want)
		}
		wantJSON, _ := json.Marshal(want)
		if !JSONEqual(wantJSON, got) {
			t.Fatalf("previous\n got %s\nwant %s", got, wantJSON)
		}
	})
}

func decodeObject(b []byte) (map[string]any, bool) {
	if !json.Valid(b) {
		return nil, false
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if dec.Decode(&m) != nil || m == nil {
		return nil, false
	}
	return m, hugeExponents(m)
}

// hugeExponents reports false when a number would cost big.Rat too much.
func hugeExponents(v any) bool {
	switch x := v.(type) {
	case json.Number:
		if i := strings.IndexAny(string(x), "eE"); i >= 0 && len(x)-i > 4 {
			return false
		}
	case map[string]any:
		for _, e := range x {
			if !hugeExponents(e) {
				return false
			}
		}
	case []any:
		for _, e := range x {
			if !hugeExponents(e) {
				return false
			}
		}
	}
	return true
}

func hasSecretKey(v any) bool {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if secretNorm(normKey(k)) || hasSecretKey(e) {
				return true
			}
		}
	case []any:
		for _, e := range x {
			if hasSecretKey(e) {
				return true
			}
		}
	}
	return false
}

// refDiff is the diff README.md describes, written the plain recursive way.
func refDiff(a, b map[string]any) map[string]any {
	out := map[string]any{}
	for k, av := range a {
		bv, ok := b[k]
		switch {
		case !ok:
			out[k] = av
		case isObject(av) && isObject(bv):
			if sub := refDiff(av.(map[string]any), bv.(map[string]any)); len(sub) > 0 {
				out[k] = sub
			}
		case !refEqual(av, bv):
			out[k] = av
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out[k] = nil
		}
	}
	return out
}

func isObject(v any) bool { _, ok := v.(map[string]any); return ok }

func refEqual(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		rx, okx := new(big.Rat).SetString(string(x))
		ry, oky := new(big.Rat).SetString(string(y))
		return okx && oky && rx.Cmp(ry) == 0
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			w, ok := y[k]
			if !ok || !refEqual(v, w) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !refEqual(x[i], y[i]) {
				return false
			}
		}
		return true
	}
	return a == b
}

// TestPreviousTaintedParts: a part cut from a secret by a function is as
// secret as the whole, in previous as in data, and still compared.
func TestPreviousTaintedParts(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: parts
    match: {method: PATCH, path: /p}
    emit:
      type: u.updated
      data: {p: '{match(request.body.new, "^(.{12})")}', n: "{request.body.n}"}
      previous:
        before: {p: '{match(request.body.old, "^(.{12})")}', n: "{request.body.was}"}
`)
	a, b := jwtOf(`{"alg":"HS256"}`), jwtOf(`{"alg":"RS256"}`)
	for _, tc := range []struct{ old, new, want string }{
		{a, b, `{"p":"[REDACTED]"}`},
		{a, a, ``},
	} {
		body, _ := json.Marshal(map[string]any{"old": tc.old, "new": tc.new, "n": 1, "was": 1})
		evs, _ := prevEvents(t, s, "/p", string(body), `{}`, nil)
		if len(evs) != 1 || string(evs[0].Previous) != tc.want || !strings.Contains(string(evs[0].Data), `"p":"[REDACTED]"`) {
			t.Fatalf("previous %s data %s, want previous %s", evs[0].Previous, evs[0].Data, tc.want)
		}
		if strings.Contains(string(evs[0].Previous), tc.old[:12]) {
			t.Fatalf("a part of the secret shows: %s", evs[0].Previous)
		}
	}
}
