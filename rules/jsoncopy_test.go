package rules

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// oldAppendValue is the recursive gjson copier that rendered whole values
// before the streaming copier (quadratic on deep input): the reference the
// property test compares with on shallow input.
func oldAppendValue(s *sanitizer, dst []byte, r gjson.Result, path []string) []byte {
	switch {
	case r.IsObject():
		dst = append(dst, '{')
		first := true
		r.ForEach(func(k, v gjson.Result) bool {
			key := k.String()
			p := append(path, key)
			var wantValue bool
			if dst, wantValue = appendKey(dst, key, s.action(key, p), &first); wantValue {
				dst = oldAppendValue(s, dst, v, p)
			}
			return true
		})
		return append(dst, '}')
	case r.IsArray():
		dst = append(dst, '[')
		i := 0
		r.ForEach(func(_, v gjson.Result) bool {
			if i > 0 {
				dst = append(dst, ',')
			}
			i++
			dst = oldAppendValue(s, dst, v, path)
			return true
		})
		return append(dst, ']')
	case r.Type == gjson.String:
		return appendQuote(dst, r.Str)
	case !r.Exists():
		return append(dst, "null"...)
	}
	return append(dst, r.Raw...)
}

// copyJSON runs the streaming copier alone.
func copyJSON(pol *sanitizer, raw string, base ...string) ([]byte, *Truncation) {
	rc := &renderCtx{policy: pol}
	out := rc.appendJSONValue(nil, raw, base, len(base))
	return out, rc.notes.truncation()
}

var testKeys = []string{"id", "email", "name", "password", "Password_Confirmation", "token_type", "refresh-token", "internal",
	"phone", "street", "city", "deep", "client_secret", "otp", "PIN", "sessionCookie", "authorization", "a", "b", "é", "k\"q",
	"code", "country_code", "totpURI", "backup_codes", "sid", "meta", "x\\y", "\u2028", "<tag>"}

// randJSON writes a random JSON value of at most depth levels, with odd but
// valid strings and numbers, and keys from testKeys (so policies apply).
func randJSON(r *rand.Rand, b *strings.Builder, depth int) {
	ws := func() {
		if r.IntN(6) == 0 {
			b.WriteString([]string{" ", "\n", "\t", "\r\n  "}[r.IntN(4)])
		}
	}
	ws()
	switch k := r.IntN(10); {
	case k < 2 && depth > 0:
		b.WriteByte('{')
		n := r.IntN(5)
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			ws()
			kb, _ := json.Marshal(testKeys[r.IntN(len(testKeys))])
			b.Write(kb)
			ws()
			b.WriteByte(':')
			randJSON(r, b, depth-1)
		}
		ws()
		b.WriteByte('}')
	case k < 4 && depth > 0:
		b.WriteByte('[')
		n := r.IntN(5)
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			randJSON(r, b, depth-1)
		}
		b.WriteByte(']')
	case k < 7:
		b.WriteString(randString(r))
	case k == 7:
		b.WriteString([]string{"0", "-0", "12", "-3.25", "1e9", "2E-3", "6.02e+23", "123456789012345678901234567890"}[r.IntN(8)])
	default:
		b.WriteString([]string{"true", "false", "null"}[r.IntN(3)])
	}
	ws()
}

// randString returns a JSON string literal with plain text, escapes, unicode and controls.
func randString(r *rand.Rand) string {
	parts := []string{"a", "hello world", `\"`, `\\`, `\/`, `\n`, `\t`, `\b`, `\f`, `\r`, `\u0000`, `\u001f`, `\u00e9`, "é", "🎉",
		`\ud83c\udf89`, `\u2028`, "\u2029", "<&>", "x.y.z", "eyJ", "otpauth", "whsec", `\u005c`}
	var b strings.Builder
	b.WriteByte('"')
	for n := r.IntN(6); n > 0; n-- {
		b.WriteString(parts[r.IntN(len(parts))])
	}
	b.WriteByte('"')
	return b.String()
}

// TestCopyMatchesOldCopier: on random shallow JSON, the streaming copier
// writes exactly what the recursive one wrote, policy included, and what it
// writes reads back (encoding/json) as the input with the policy applied.
func TestCopyMatchesOldCopier(t *testing.T) {
	policies := []*sanitizer{
		nil,
		newSanitizer(&emitSpec{}),
		newSanitizer(&emitSpec{omit: []string{"internal", "deep.a"}, redact: []string{"phone", "meta.city"}, keepSecrets: map[string]bool{"tokentype": true}}),
	}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 5000; i++ {
		var b strings.Builder
		randJSON(r, &b, 1+r.IntN(6))
		in := b.String()
		if !json.Valid([]byte(in)) {
			t.Fatalf("generator wrote invalid JSON %q", in)
		}
		for _, pol := range policies {
			got, tr := copyJSON(pol, in)
			ref := pol
			if ref == nil {
				ref = &sanitizer{}
			}
			want := oldAppendValue(ref, nil, gjson.Parse(in), nil)
			if !bytes.Equal(got, want) || tr != nil {
				t.Fatalf("input %q\n got  %s\n want %s (truncated %+v)", in, got, want, tr)
			}
		}
		// with a policy that matches nothing, the copy is the input re-encoded
		got, _ := copyJSON(&sanitizer{keep: keepAllTestKeys()}, in)
		var gv, wv any
		if err := json.Unmarshal(got, &gv); err != nil {
			t.Fatalf("%q: copy %s does not decode: %v", in, got, err)
		}
		_ = json.Unmarshal([]byte(in), &wv)
		if !reflect.DeepEqual(gv, wv) {
			t.Fatalf("%q: copy reads back differently:\n got  %s", in, got)
		}
		checkCompact(t, got)
	}
}

// keepAllTestKeys is a keep_secrets list of every key randJSON writes.
func keepAllTestKeys() map[string]bool {
	keep := map[string]bool{}
	for _, k := range testKeys {
		keep[normKey(k)] = true
	}
	return keep
}

func checkCompact(t *testing.T, out []byte) {
	t.Helper()
	var c bytes.Buffer
	if err := json.Compact(&c, out); err != nil || !bytes.Equal(c.Bytes(), out) {
		t.Fatalf("output is not compact, valid JSON (%v): %q", err, out)
	}
}

// TestValidJSONDeep: the validator takes what encoding/json takes, and deep
// input beyond encoding/json's limit, without growing the goroutine stack.
func TestValidJSONDeep(t *testing.T) {
	for _, b := range bodies {
		body := b.body()
		if !validJSON(body) {
			t.Errorf("%s: not valid", b.name)
		}
		if json.Valid(body) != !strings.Contains(b.name, "nested") {
			t.Errorf("%s: encoding/json says %v", b.name, json.Valid(body))
		}
	}
	deep := []byte(strings.Repeat("[", 1<<19) + strings.Repeat("]", 1<<19))
	if !validJSON(deep) || validJSON(deep[1:]) || validJSON(deep[:len(deep)-1]) {
		t.Error("deep arrays")
	}
	for _, s := range []string{`{"a":1,}`, `[1,]`, `01`, `1.`, `-`, `"\x"`, `"\u12"`, "\"\x01\"", `{"a" 1}`, `{1:1}`, `[1 2]`, ` `, `nul`, `{"a":1}}`} {
		if validJSON([]byte(s)) || json.Valid([]byte(s)) {
			t.Errorf("%q accepted", s)
		}
	}
}

// TestCopyOddJSON: input that is not JSON, or barely, never yields invalid output.
func TestCopyOddJSON(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"a":1,}`, `null`},
		{`[1,]`, `null`},
		{`[1 2]`, `null`},
		{`{"a" 1}`, `null`},
		{`{"a":}`, `null`},
		{`{1:2}`, `null`},
		{`01`, `null`},
		{`1.`, `null`},
		{`.5`, `null`},
		{`-`, `null`},
		{`1e`, `null`},
		{`tru`, `null`},
		{`nul`, `null`},
		{`NaN`, `null`},
		{`[`, `null`},
		{`]`, `null`},
		{`{`, `null`},
		{`}`, `null`},
		{``, `null`},
		{`   `, `null`},
		{`"abc`, `null`},
		{`"a\x"`, `null`},
		{`"\u12"`, `null`},
		{`"\u12g4"`, `null`},
		{`"\`, `null`},
		{`[1]]`, `null`},
		{`1 2`, `null`},
		{`{"a":1}{}`, `null`},
		{`{"password":{"x":[}`, `null`},
		{`{"password":"\`, `null`},
		{strings.Repeat("[", 200), `null`},
		{strings.Repeat("[", 200) + strings.Repeat("]", 199), `null`},
		{`"\ud800"`, `"` + "\ufffd" + `"`},
		{`"\udc00\ud800x"`, `"` + "\ufffd\ufffdx" + `"`},
		{`"\ud83c\udf89"`, `"🎉"`},
		{"\"\xff\xfe\"", `"\ufffd\ufffd"`},
		{"\"tab\tnl\n\"", `"tab\tnl\n"`},
		{"\"\u2028\"", `"\u2028"`},
		{` [ 1 , { "a" : "b" } ] `, `[1,{"a":"b"}]`},
		{`{"":""}`, `{"":""}`},
		{`{"a":1,"a":2}`, `{"a":1,"a":2}`},
		{`-0.0e-0`, `-0.0e-0`},
		{`{"pass\u0077ord":"x","ok":"\u0041"}`, `{"password":"[REDACTED]","ok":"A"}`},
	} {
		got, _ := copyJSON(newSanitizer(&emitSpec{}), tc.in)
		if string(got) != tc.want {
			t.Errorf("%q: got %s, want %s", tc.in, got, tc.want)
		}
		if !json.Valid(got) {
			t.Errorf("%q: invalid output %q", tc.in, got)
		}
	}
}

// nested returns JSON nested n deep: arrays ("[[…]]") or objects ({"k":{"k":…}}).
func nested(n int, obj bool) string {
	if obj {
		return strings.Repeat(`{"k":`, n) + "1" + strings.Repeat("}", n)
	}
	return strings.Repeat("[", n) + strings.Repeat("]", n)
}

// jsonDepth returns the nesting depth of valid JSON.
func jsonDepth(b []byte) int {
	d, maxD, inStr := 0, 0, false
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case inStr && c == '\\':
			i++
		case c == '"':
			inStr = !inStr
		case inStr:
		case c == '{' || c == '[':
			d++
			maxD = max(maxD, d)
		case c == '}' || c == ']':
			d--
		}
	}
	return maxD
}

func TestCopyCutsAtMaxDataDepth(t *testing.T) {
	for _, tc := range []struct {
		name  string
		in    string
		base  []string
		depth int
		path  string
	}{
		{"arrays", nested(150, false), nil, MaxDataDepth, strings.TrimSuffix(strings.Repeat("0.", MaxDataDepth), ".")},
		{"objects", nested(150, true), nil, MaxDataDepth, strings.TrimSuffix(strings.Repeat("k.", MaxDataDepth), ".")},
		{"objects under a template key", nested(150, true), []string{"user"}, MaxDataDepth, "user." + strings.TrimSuffix(strings.Repeat("k.", MaxDataDepth-1), ".")},
		{"exactly at the limit", nested(MaxDataDepth, true), nil, MaxDataDepth, ""},
		{"a million deep", nested(1_000_000, false), nil, MaxDataDepth, "0.0.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, tr := copyJSON(newSanitizer(&emitSpec{}), tc.in, tc.base...)
			checkCompact(t, out)
			if d := jsonDepth(out) + len(tc.base); d != tc.depth {
				t.Fatalf("depth %d, want %d", d, tc.depth)
			}
			if tc.path == "" {
				if tr != nil || strings.Contains(string(out), Truncated) {
					t.Fatalf("nothing to cut, got %+v %s", tr, out)
				}
				return
			}
			if tr == nil || tr.Count != 1 || tr.MaxDepth != MaxDataDepth || len(tr.Paths) != 1 || !strings.HasPrefix(tr.Paths[0], tc.path) {
				t.Fatalf("truncation %+v, want one at %q", tr, tc.path)
			}
			if !strings.Contains(string(out), `"`+Truncated+`"`) {
				t.Fatalf("no marker in %s", out)
			}
		})
	}
}

// TestTruncationNoteIsBounded: many cuts under huge keys keep source.truncated small.
func TestTruncationNoteIsBounded(t *testing.T) {
	key := strings.Repeat("k", 100_000)
	one := nested(MaxDataDepth, false)
	in := `{"` + key + `":[` + strings.TrimSuffix(strings.Repeat(one+",", 1000), ",") + "]}"
	out, tr := copyJSON(newSanitizer(&emitSpec{}), in)
	checkCompact(t, out)
	if tr == nil || tr.Count != 1000 || len(tr.Paths) != MaxTruncatedPaths {
		t.Fatalf("truncation count %d paths %d", tr.Count, len(tr.Paths))
	}
	for _, p := range tr.Paths {
		if len(p) > MaxTruncatedPathLen+len("…") {
			t.Fatalf("path of %d bytes", len(p))
		}
	}
	// a key of invalid UTF-8, cut in the middle of a rune: the note is valid text
	in = `{"` + strings.Repeat("é", MaxTruncatedPathLen) + "\xff" + `":` + nested(MaxDataDepth, false) + `,"` + "\xfe" + `":` + nested(MaxDataDepth, false) + "}"
	_, tr = copyJSON(newSanitizer(&emitSpec{}), in)
	if tr == nil || len(tr.Paths) != 2 || !utf8.ValidString(tr.Paths[0]) || !strings.HasSuffix(tr.Paths[0], "é…") || !strings.HasPrefix(tr.Paths[1], "�.0.0") {
		t.Fatalf("paths %q", tr.Paths)
	}
}

// TestTemplateDepthCounts: the data template's own nesting counts toward
// MaxDataDepth. A rule file nests at most MaxDepth levels, so the template
// takes 55 of them and the body the rest.
func TestTemplateDepthCounts(t *testing.T) {
	const tdepth = 55
	tmpl := strings.Repeat("{a: ", tdepth) + `"{request.body}"` + strings.Repeat("}", tdepth)
	s := mustSet(t, "version: 1\nrules:\n  - name: r\n    match: {method: POST, path: /x}\n    emit: {type: a.b, data: "+tmpl+"}\n")
	body := strings.Repeat("[", MaxDataDepth) + "1" + strings.Repeat("]", MaxDataDepth)
	evs := eval(t, s, &Exchange{Method: "POST", Path: "/x", Status: 200, RequestBody: []byte(body)})
	if d := jsonDepth(evs[0].Data); d != MaxDataDepth {
		t.Fatalf("depth %d", d)
	}
	tr := evs[0].Source.Truncated
	if tr == nil || tr.Count != 1 || !strings.HasPrefix(tr.Paths[0], strings.Repeat("a.", tdepth)+"0.0") {
		t.Fatalf("truncation %+v", tr)
	}
}

// deepBody is 1 MiB of JSON nested depth levels deep: arrays or objects, padded per level.
func deepBody(depth int, obj bool) []byte {
	const size = 1 << 20
	per := size / depth
	var open, closeB string
	if obj {
		open, closeB = `{"`+strings.Repeat("k", max(1, per-len(`{"":}`)))+`":`, "}"
	} else {
		open, closeB = "["+strings.Repeat("7", max(1, per-len(`[,]`)))+",", "]"
	}
	var b bytes.Buffer
	b.Grow(size + 64)
	for i := 0; i < depth; i++ {
		b.WriteString(open)
	}
	b.WriteString(`"` + strings.Repeat("m", max(0, size-depth*(len(open)+len(closeB))-2)) + `"`) // the rest of the MiB
	for i := 0; i < depth; i++ {
		b.WriteString(closeB)
	}
	return b.Bytes()
}

func flatBody() []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i := 0; b.Len() < 1<<20-200; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"field_%d":{"id":"u_%d","email":"user%d@example.test","active":true,"n":%d,"password_hash":"$2b$12$x"}`, i, i, i, i)
	}
	b.WriteByte('}')
	return b.Bytes()
}

func wideBody() []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for i := 0; i < 100_000; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%05d":%d`, i, i%10)
	}
	fmt.Fprintf(&b, `,"pad":"%s"}`, strings.Repeat("p", 1<<20-b.Len()-10))
	return b.Bytes()
}

func longStringsBody() []byte {
	chunk := `plain text, \"quoted\", tab\t, newline\n, \u00e9\u4e2d\ud83c\udf89 é中🎉 \\ back\/slash `
	var b bytes.Buffer
	b.WriteString(`{"a":"`)
	for b.Len() < 1<<19 {
		b.WriteString(chunk)
	}
	b.WriteString(`","b":"`)
	for b.Len() < 1<<20-10 {
		b.WriteString("abcdefghij.klmnopqrs:tuvwxyz ")
	}
	b.WriteString(`"}`)
	return b.Bytes()
}

// bodies are the 1 MiB shapes of the benchmarks and the deadline test.
var bodies = []struct {
	name string
	body func() []byte
}{
	{"flat", flatBody},
	{"array-nested-100k", func() []byte { return deepBody(100_000, false) }},
	{"object-nested-100k", func() []byte { return deepBody(100_000, true) }},
	{"object-100k-keys", wideBody},
	{"long-strings", longStringsBody},
	{"jwt-lookalikes", jwtLookalikesBody},
}

// jwtLookalikesBody is 1 MiB of strings built to make the shape check work
// hardest: dotted base64url runs whose every segment decodes to a broken
// JSON header, otpauth and whsec_ near misses.
func jwtLookalikesBody() []byte {
	seg := base64.RawURLEncoding.EncodeToString([]byte(`{"alg"`))
	var b bytes.Buffer
	b.WriteString(`{"a":"`)
	for b.Len() < 1<<19 {
		b.WriteString(seg + ".")
	}
	b.WriteString(`","b":[`)
	for b.Len() < 1<<20-64 {
		b.WriteString(`"` + seg + `.` + seg + `.x otpauth whsec_abc:",`)
	}
	b.WriteString(`""]}`)
	return b.Bytes()
}

const wholeDataRule = `version: 1
rules:
  - name: whole
    match: {method: POST, path: /x}
    emit: {type: a.b, data: "{response.body}"}
`

// renderWhole builds the event of wholeDataRule for body, as the handler does.
func renderWhole(tb testing.TB, s *Set, body []byte) Event {
	ex := &Exchange{Method: "POST", Path: "/x", Status: 200, ResponseHeader: http.Header{"Content-Type": {"application/json"}}, ResponseBody: body}
	ms := s.Match(ex)
	if len(ms) != 1 {
		tb.Fatalf("%d matches", len(ms))
	}
	evs, errs := ms[0].Events(ex, EmitOptions{Source: "bench"})
	if len(evs) != 1 || len(errs) != 0 {
		tb.Fatalf("events %d errors %v", len(evs), errs)
	}
	return evs[0]
}

// TestWholeDataDeadline: every 1 MiB shape, deep ones included, renders well
// within a deadline generous for a loaded CI box (the recursive copier took
// minutes on the deep ones; the streaming one takes milliseconds).
func TestWholeDataDeadline(t *testing.T) {
	s := mustSet(t, wholeDataRule)
	for _, b := range bodies {
		body := b.body()
		if len(body) < 1<<20-1024 || len(body) > 1<<20+1024 {
			t.Fatalf("%s: body is %d bytes, want 1 MiB", b.name, len(body))
		}
		start := time.Now()
		ev := renderWhole(t, s, body)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: rendering took %s", b.name, d)
		}
		if !json.Valid(ev.Data) || jsonDepth(ev.Data) > MaxDataDepth {
			t.Errorf("%s: data invalid or too deep", b.name)
		}
		if strings.Contains(b.name, "nested") != (ev.Source.Truncated != nil) {
			t.Errorf("%s: truncated %+v", b.name, ev.Source.Truncated)
		}
	}
}

// BenchmarkWholeData renders each 1 MiB shape as whole data through a real
// rule's Events. The baseline sub-benchmarks are the yardstick BENCHMARKS.md
// divides by, measured in the same run: encoding/json's Compact over the same
// bytes where encoding/json accepts them (it refuses nesting past 10,000), and
// over the flat 1 MiB body for every shape.
//
// Each also reports cpu-ms/op, the process's CPU time per operation: on a
// box shared with other jobs it is steadier than wall time.
func BenchmarkWholeData(b *testing.B) {
	s := mustSet(b, wholeDataRule)
	compact := func(body []byte) func(*testing.B) {
		return func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			var buf bytes.Buffer
			defer reportCPU(b)()
			for b.Loop() {
				buf.Reset()
				if err := json.Compact(&buf, body); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.Run("baseline-json.Compact-flat", compact(flatBody()))
	for _, bb := range bodies {
		body := bb.body()
		b.Run(bb.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				renderWhole(b, s, body)
			}
		})
		if json.Valid(body) {
			b.Run(bb.name+"-baseline-json.Compact", compact(body))
		}
	}
}

// FuzzCopy: whatever the bytes, the copier writes compact, valid JSON no
// deeper than MaxDataDepth; on JSON that encoding/json accepts and that the
// old recursive copier could handle, it writes what that copier wrote.
func FuzzCopy(f *testing.F) {
	for _, s := range []string{`{"a":[1,{"password":"x"}],"b":"\u00e9\ud83c\udf89"}`, `[1,]`, nested(120, true), nested(120, false), `"\ud800"`, "\"\xff\"", `{"code":1,"country_code":2}`} {
		f.Add([]byte(s))
	}
	pol := newSanitizer(&emitSpec{omit: []string{"internal", "a.b"}, redact: []string{"phone"}})
	pol.keepShapes = ^shapeSet(0) // shapes are the new copier's alone
	f.Fuzz(func(t *testing.T, in []byte) {
		out, tr := copyJSON(pol, string(in))
		checkCompact(t, out)
		valid := validJSON(in)
		if valid != json.Valid(in) && bytes.Count(in, []byte("["))+bytes.Count(in, []byte("{")) < 10_000 {
			t.Fatalf("validJSON %v, json.Valid %v", valid, !valid)
		}
		if valid && string(out) == "null" && strings.TrimSpace(string(in)) != "null" {
			t.Fatalf("valid input %q copied as null", in)
		}
		if d := jsonDepth(out); d > MaxDataDepth {
			t.Fatalf("depth %d", d)
		}
		if !json.Valid(in) {
			return
		}
		if d := jsonDepth(in); d <= MaxDataDepth {
			if tr != nil {
				t.Fatalf("cut %+v at depth %d", tr, d)
			}
			if want := oldAppendValue(pol, nil, gjson.ParseBytes(in), nil); !bytes.Equal(out, want) {
				t.Fatalf("input %q\n got  %s\n want %s", in, out, want)
			}
		} else if tr == nil {
			t.Fatalf("depth %d not cut", d)
		}
	})
}

// TestTextDeadline: objects and arrays placed in text (a data string, the
// subject) cost what whole data costs, whatever their shape.
func TestTextDeadline(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: text
    match: {method: POST, path: /x}
    emit: {type: a.b, subject: "{response.body}", data: {t: "body={response.body} again={response.body}"}}
`)
	for _, b := range bodies {
		body := b.body()
		start := time.Now()
		ev := renderWhole(t, s, body)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: rendering took %s", b.name, d)
		}
		var d struct{ T string }
		if err := json.Unmarshal(ev.Data, &d); err != nil || !strings.HasPrefix(d.T, "body=") || len(ev.Subject) == 0 {
			t.Errorf("%s: data %.100s (%v)", b.name, ev.Data, err)
		}
		if strings.Contains(b.name, "nested") != (ev.Source.Truncated != nil) {
			t.Errorf("%s: truncated %+v", b.name, ev.Source.Truncated)
		}
	}
}

// BenchmarkCopierVsOld shows the shape of the cost on deep arrays: the old
// recursive gjson copier grows with the square of the depth, the streaming
// copier with the bytes.
func BenchmarkCopierVsOld(b *testing.B) {
	pol := newSanitizer(&emitSpec{})
	for _, depth := range []int{2_500, 5_000, 10_000} {
		in := nested(depth, false)
		b.Run(fmt.Sprintf("old/depth=%d", depth), func(b *testing.B) {
			for b.Loop() {
				oldAppendValue(pol, nil, gjson.Parse(in), nil)
			}
		})
		b.Run(fmt.Sprintf("streaming/depth=%d", depth), func(b *testing.B) {
			for b.Loop() {
				copyJSON(pol, in)
			}
		})
	}
}

// reportCPU starts measuring CPU time; the function it returns reports cpu-ms/op.
func reportCPU(b *testing.B) func() {
	start := processCPU()
	return func() {
		if d := processCPU() - start; d > 0 && b.N > 0 {
			b.ReportMetric(float64(d)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
		}
	}
}
