package rules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strings"
	"testing"
	"time"
)

// multipartBody writes parts with Go's mime/multipart.Writer, as browsers
// and HTTP libraries send them. Each part is "name" (a text field), or has
// headers of its own.
type mpPart struct {
	name, value string
	header      textproto.MIMEHeader // when set, used instead of a plain form-data field
}

func multipartBody(t testing.TB, parts ...mpPart) ([]byte, string) {
	t.Helper()
	var b bytes.Buffer
	w := multipart.NewWriter(&b)
	for _, p := range parts {
		var err error
		if p.header != nil {
			var pw interface{ Write([]byte) (int, error) }
			if pw, err = w.CreatePart(p.header); err == nil {
				_, err = pw.Write([]byte(p.value))
			}
		} else {
			err = w.WriteField(p.name, p.value)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes(), w.FormDataContentType()
}

func hdr(kv ...string) textproto.MIMEHeader {
	h := textproto.MIMEHeader{}
	for i := 0; i < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

func TestMultipartFields(t *testing.T) {
	body, ct := multipartBody(t,
		mpPart{name: "email", value: "ann@example.test"},
		mpPart{name: "name", value: "Ann Lee"},
		mpPart{name: "tags", value: "a"},
		mpPart{name: "tags", value: "b"},
		mpPart{name: "empty", value: ""},
		mpPart{name: "bio", value: "line one\r\nline two --not a boundary\r\n--" + strings.Repeat("x", 10)},
		mpPart{name: "unicode", value: "café ☕ \x00 \"q\""},
		mpPart{header: hdr("Content-Disposition", `form-data; name="avatar"; filename="me.png"`, "Content-Type", "image/png"), value: "\x89PNG\r\n\x1a\n"},
		mpPart{header: hdr("Content-Disposition", `form-data; name="doc"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt`, "Content-Type", "text/plain"), value: "a file"},
		mpPart{header: hdr("Content-Disposition", `form-data; name="blob"`, "Content-Type", "application/octet-stream"), value: "bytes"},
		mpPart{header: hdr("Content-Disposition", `form-data; name="meta"`, "Content-Type", "application/json"), value: `{"a":1}`},
		mpPart{header: hdr("Content-Disposition", `form-data; name="note"`, "Content-Type", "text/plain; charset=utf-8"), value: "typed text"},
		mpPart{header: hdr("Content-Disposition", `form-data; name="qp"`, "Content-Transfer-Encoding", "quoted-printable"), value: "caf=C3=A9 =\r\nsoft"},
		mpPart{header: hdr("Content-Disposition", `form-data; name="b64"`, "Content-Transfer-Encoding", "base64"), value: "aGk="},
		mpPart{header: hdr("Content-Disposition", `attachment; name="att"`), value: "not form-data"},
		mpPart{header: hdr("Content-Disposition", `form-data`), value: "no name"},
		mpPart{header: hdr("Content-Type", "text/plain"), value: "no disposition"},
		mpPart{header: hdr("Content-Disposition", `form-data; name="weird"; bad`), value: "unparsable disposition"},
	)
	got, ok := bodyAsJSON(body, ct)
	want := `{"bio":"line one\r\nline two --not a boundary\r\n--xxxxxxxxxx","email":"ann@example.test","empty":"","name":"Ann Lee","note":"typed text","qp":"café soft","tags":["a","b"],"unicode":"café ☕ \u0000 \"q\""}`
	if !ok || string(got) != want {
		t.Errorf("got  %s %v\nwant %s", got, ok, want)
	}

	// the same fields read as a form-urlencoded body of them would be
	body, ct = multipartBody(t, mpPart{name: "a", value: "1"}, mpPart{name: "b", value: "x y"}, mpPart{name: "a", value: "2"})
	mp, _ := bodyAsJSON(body, ct)
	form, _ := bodyAsJSON([]byte("a=1&b=x+y&a=2"), "application/x-www-form-urlencoded")
	if string(mp) != string(form) {
		t.Errorf("multipart %s, form %s", mp, form)
	}
}

// TestMultipartShapes: what real senders write, and what broken or hostile
// ones do. "B" is the boundary; \n bodies are what a YAML block scalar gives.
func TestMultipartShapes(t *testing.T) {
	const ct = "multipart/form-data; boundary=B"
	field := func(name, v string) string {
		return "--B\r\nContent-Disposition: form-data; name=\"" + name + "\"\r\n\r\n" + v + "\r\n"
	}
	for _, tc := range []struct {
		name, ct, body, want string // want "" = not readable
	}{
		{"CRLF", ct, field("a", "1") + "--B--\r\n", `{"a":"1"}`},
		{"bare LF, as in a YAML block scalar", ct, "--B\nContent-Disposition: form-data; name=\"a\"\n\n1\n--B\nContent-Disposition: form-data; name=\"b\"\n\n2\n--B--\n", `{"a":"1","b":"2"}`},
		{"preamble and epilogue", ct, "This is a preamble.\r\n" + field("a", "1") + "--B--\r\nepilogue --B\r\n", `{"a":"1"}`},
		{"no final line break", ct, field("a", "1") + "--B--", `{"a":"1"}`},
		{"padding after the delimiter", ct, "--B  \t\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--B--", `{"a":"1"}`},
		{"quoted boundary", `multipart/form-data; boundary="B"`, field("a", "1") + "--B--", `{"a":"1"}`},
		{"the boundary inside content", ct, field("a", "x\r\n--Bx\r\n--B-y") + "--B--", `{"a":"x\r\n--Bx\r\n--B-y"}`},
		{"folded header", ct, "--B\r\nContent-Disposition: form-data;\r\n name=\"a\"\r\n\r\n1\r\n--B--", `{"a":"1"}`},
		{"header names in any case", ct, "--B\r\ncontent-disposition: form-data; name=\"a\"\r\nCONTENT-TYPE: text/plain\r\n\r\n1\r\n--B--", `{"a":"1"}`},
		{"no parts", ct, "--B--\r\n", `{}`},
		{"a part without headers", ct, "--B\r\n\r\nloose\r\n" + field("a", "1") + "--B--", `{"a":"1"}`},
		{"no boundary", "multipart/form-data", field("a", "1") + "--B--", ""},
		{"empty boundary", "multipart/form-data; boundary=", field("a", "1") + "--B--", ""},
		{"boundary over 70 bytes", "multipart/form-data; boundary=" + strings.Repeat("b", 71), "--" + strings.Repeat("b", 71) + "\r\n\r\n--" + strings.Repeat("b", 71) + "--", ""},
		{"another boundary", ct, strings.ReplaceAll(field("a", "1")+"--B--", "--B", "--C"), ""},
		{"truncated in a part", ct, field("a", "1")[:30], ""},
		{"truncated: no close delimiter", ct, field("a", "1"), ""},
		{"truncated in the headers", ct, "--B\r\nContent-Disposition: form-data; name=\"a\"", ""},
		{"a header line without a colon", ct, "--B\r\nContent-Disposition form-data\r\n\r\n1\r\n--B--", ""},
		{"a folded line first", ct, "--B\r\n name=\"a\"\r\n\r\n1\r\n--B--", ""},
		{"a delimiter not on its own line", ct, "--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1--B--", ""},
		{"garbage", ct, "\x00\xff--", ""},
	} {
		got, ok := bodyAsJSON([]byte(tc.body), tc.ct)
		if tc.want == "" {
			if ok {
				t.Errorf("%s: read as %s, want it not readable", tc.name, got)
			}
			continue
		}
		if !ok || string(got) != tc.want {
			t.Errorf("%s: got %s %v, want %s", tc.name, got, ok, tc.want)
		}
	}
}

// hostileMultipart are bodies of at most 1 MiB (the default max_body) made
// to cost as much as a multipart reader can be made to spend.
var hostileMultipart = []struct {
	name string
	body func() []byte
	want string // "" = not readable
}{
	{"100k tiny parts", func() []byte {
		return []byte(strings.Repeat("--B\r\n\r\n\r\n", 100_000) + "--B--")
	}, ""},
	{fmt.Sprintf("%d tiny fields (the cap)", MaxMultipartParts), func() []byte {
		return []byte(strings.Repeat("--B\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n", MaxMultipartParts) + "--B--")
	}, "list of 1000"},
	{"one huge part header", func() []byte {
		return []byte("--B\r\nContent-Disposition: form-data; name=\"a\"; x=\"" + strings.Repeat("x", 1<<20) + "\"\r\n\r\n1\r\n--B--")
	}, ""},
	{"a header block of 1 MiB of short lines", func() []byte {
		return []byte("--B\r\n" + strings.Repeat("X: y\r\n", 170_000) + "\r\n1\r\n--B--")
	}, ""},
	{"nested multipart/mixed", func() []byte {
		inner := "--C\r\nContent-Disposition: file; filename=\"a.txt\"\r\n\r\n" + strings.Repeat("--C\r\n\r\n", 50_000) + "\r\n--C--"
		return []byte("--B\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@x.test\r\n" +
			"--B\r\nContent-Disposition: form-data; name=\"files\"\r\nContent-Type: multipart/mixed; boundary=C\r\n\r\n" + inner + "\r\n--B--")
	}, `{"email":"a@x.test"}`},
	{"a file part of max_body", func() []byte {
		head := "--B\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@x.test\r\n--B\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
		tail := "\r\n--B--\r\n"
		// its content a near-miss delimiter every 5 bytes: each one found, then refused
		return []byte(head + strings.Repeat("\n--Bx", (1<<20-len(head)-len(tail))/5) + tail)
	}, `{"email":"a@x.test"}`},
	{"a file part of max_body, plain bytes", func() []byte {
		head := "--B\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@x.test\r\n--B\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
		tail := "\r\n--B--\r\n"
		return []byte(head + strings.Repeat("\x89PNG\r\n\x1a\n", (1<<20-len(head)-len(tail))/8) + tail)
	}, `{"email":"a@x.test"}`},
	{"near-miss delimiters all through one field", func() []byte {
		return []byte("--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n" + strings.Repeat("\r\n--Bx", 170_000) + "\r\n--B--")
	}, `{}`}, // over MaxMultipartFieldSize: skipped
	{"a field over MaxMultipartFieldSize beside a small one", func() []byte {
		return []byte("--B\r\nContent-Disposition: form-data; name=\"big\"\r\n\r\n" + strings.Repeat("x", MaxMultipartFieldSize+1) +
			"\r\n--B\r\nContent-Disposition: form-data; name=\"ok\"\r\n\r\n" + strings.Repeat("y", MaxMultipartFieldSize) + "\r\n--B--")
	}, `{"ok":"` + strings.Repeat("y", MaxMultipartFieldSize) + `"}`},
	{"1 MiB of line breaks, no delimiter", func() []byte {
		return []byte("--B\r\n" + strings.Repeat("\n", 1<<20))
	}, ""},
	{"1 MiB of control bytes in one field", func() []byte {
		return []byte("--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n" + strings.Repeat("\x01", MaxMultipartFieldSize) + "\r\n--B--")
	}, "escaped"},
}

// TestMultipartHostile: each hostile body is read (or refused) in time
// linear in its size, with the result the caps say.
func TestMultipartHostile(t *testing.T) {
	const ct = "multipart/form-data; boundary=B"
	for _, h := range hostileMultipart {
		body := h.body()
		if len(body) > 1<<20+64 {
			t.Fatalf("%s: %d bytes, over max_body", h.name, len(body))
		}
		start := time.Now()
		got, ok := bodyAsJSON(body, ct)
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s: %s for %d bytes", h.name, d, len(body))
		}
		switch h.want {
		case "":
			if ok {
				t.Errorf("%s: read as %.100s, want it not readable", h.name, got)
			}
		case "list of 1000":
			var v struct{ F []string }
			if err := json.Unmarshal(got, &v); err != nil || len(v.F) != MaxMultipartParts {
				t.Errorf("%s: %d values (%v)", h.name, len(v.F), err)
			}
		case "escaped":
			if !ok || len(got) != len(`{"a":""}`)+6*MaxMultipartFieldSize {
				t.Errorf("%s: %d bytes", h.name, len(got))
			}
		default:
			if !ok || string(got) != h.want {
				t.Errorf("%s: got %.200s %v, want %.200s", h.name, got, ok, h.want)
			}
		}
	}
	// one part more than the cap: not read
	over := []byte(strings.Repeat("--B\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n", MaxMultipartParts+1) + "--B--")
	if got, ok := bodyAsJSON(over, ct); ok {
		t.Errorf("%d parts read as %.100s", MaxMultipartParts+1, got)
	}
	// a header block of exactly the cap is read
	pad := MaxMultipartHeaderSize - len("Content-Disposition: form-data; name=\"a\"\r\n") - len("X: \r\n")
	at := []byte("--B\r\nContent-Disposition: form-data; name=\"a\"\r\nX: " + strings.Repeat("p", pad) + "\r\n\r\n1\r\n--B--")
	if got, ok := bodyAsJSON(at, ct); !ok || string(got) != `{"a":"1"}` {
		t.Errorf("a header block of %d bytes: %s %v", MaxMultipartHeaderSize, got, ok)
	}
	for _, over := range [][]byte{
		bytes.Replace(at, []byte("X: p"), []byte("X: pp"), 1),
		bytes.ReplaceAll(bytes.Replace(at, []byte("X: p"), []byte("X: pppp"), 1), []byte("\r\n"), []byte("\n")), // with bare LFs
	} {
		if _, ok := bodyAsJSON(over, ct); ok {
			t.Errorf("a header block over %d bytes read", MaxMultipartHeaderSize)
		}
	}
	lf := bytes.ReplaceAll(bytes.Replace(at, []byte("X: p"), []byte("X: ppp"), 1), []byte("\r\n"), []byte("\n"))
	if got, ok := bodyAsJSON(lf, ct); !ok || string(got) != `{"a":"1"}` {
		t.Errorf("a header block of %d bytes with bare LFs: %s %v", MaxMultipartHeaderSize, got, ok)
	}
}

// TestMultipartRule: a sign-up posted as multipart/form-data emits like a
// JSON one: conditions and placeholders read its text fields, files are not
// there, password-like fields are redacted; a body that cannot be read
// leaves its placeholders missing and the rest of the event intact.
func TestMultipartRule(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: sign-up
    match: {method: POST, path: /signup, status: 201, request: {body: {plan: [free, pro]}}}
    emit:
      type: user.created
      subject: "{response.body.id}"
      data: {email: "{request.body.email}", all: "{request.body}"}
  - name: any-signup
    match: {method: POST, path: /signup, status: 201}
    emit: {type: signup.seen, data: {email: "{request.body.email}"}}
`)
	body, ct := multipartBody(t,
		mpPart{name: "email", value: "ann@example.test"},
		mpPart{name: "password", value: "s3cret"},
		mpPart{name: "plan", value: "pro"},
		mpPart{header: hdr("Content-Disposition", `form-data; name="avatar"; filename="a.png"`, "Content-Type", "image/png"), value: "PNG"},
	)
	ex := func(body []byte, ct string) *Exchange {
		return &Exchange{Method: "POST", Path: "/signup", Status: 201, RequestHeader: http.Header{"Content-Type": {ct}}, RequestBody: body,
			ResponseHeader: http.Header{"Content-Type": {"application/json"}}, ResponseBody: []byte(`{"id":"u_1"}`)}
	}
	evs, errs := s.Evaluate(ex(body, ct), EmitOptions{})
	if len(errs) > 0 || len(evs) != 2 {
		t.Fatalf("%d events, %v", len(evs), errs)
	}
	if want := `{"email":"ann@example.test","all":{"email":"ann@example.test","password":"[REDACTED]","plan":"pro"}}`; string(evs[0].Data) != want || evs[0].Subject != "u_1" {
		t.Errorf("data %s\nwant %s", evs[0].Data, want)
	}
	// truncated: the body condition fails, and the other rule's placeholder is missing
	evs, _ = s.Evaluate(ex(body[:len(body)-10], ct), EmitOptions{})
	if len(evs) != 1 || evs[0].Type != "signup.seen" || string(evs[0].Data) != `{"email":null}` || evs[0].Source.Missing[0] != "request.body.email" {
		t.Errorf("truncated body: %+v", evs)
	}
}

// BenchmarkMultipart reads a typical multipart sign-up, and each hostile
// body, against the baseline of the same sign-up form-urlencoded.
func BenchmarkMultipart(b *testing.B) {
	body, ct := multipartBody(b, mpPart{name: "email", value: "ann@example.test"}, mpPart{name: "name", value: "Ann Lee"},
		mpPart{name: "password", value: "s3cret"}, mpPart{name: "plan", value: "pro"})
	b.Run("sign-up-4-fields", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			if _, ok := bodyAsJSON(body, ct); !ok {
				b.Fatal("not read")
			}
		}
	})
	form := []byte("email=ann%40example.test&name=Ann+Lee&password=s3cret&plan=pro")
	b.Run("baseline-form-urlencoded-4-fields", func(b *testing.B) {
		b.ReportAllocs()
		defer reportCPU(b)()
		for b.Loop() {
			bodyAsJSON(form, "application/x-www-form-urlencoded")
		}
	})
	for _, h := range hostileMultipart {
		in := h.body()
		b.Run("hostile/"+strings.ReplaceAll(h.name, " ", "-"), func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			defer reportCPU(b)()
			for b.Loop() {
				bodyAsJSON(in, "multipart/form-data; boundary=B")
			}
		})
	}
	mib := bytes.Repeat([]byte("x"), 1<<20)
	b.Run("baseline-bytes.Index-1MiB", func(b *testing.B) {
		b.SetBytes(int64(len(mib)))
		defer reportCPU(b)()
		for b.Loop() {
			bytes.Index(mib, []byte("\n--B"))
		}
	})
}
