package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"go.uber.org/zap/zaptest/observer"
)

func TestClipValue(t *testing.T) {
	long := strings.Repeat("a", 500<<10)
	for i, tc := range []struct {
		in, want string
	}{
		{"", ""},
		{"/api/users/u_1", "/api/users/u_1"},
		{"user.created", "user.created"},
		{"a\nb", `"a\nb"`},
		{"\x1b[31mred", `"\x1b[31mred"`},
		{"bad\xffutf8", `"bad\xffutf8"`},
		{long, `"` + long[:logValueMax] + `"... (512000 bytes)`},
		// cut at a character boundary: 63 a's, then a 2-byte rune across byte 64
		{strings.Repeat("a", 63) + "é" + long, `"` + strings.Repeat("a", 63) + `"... (512065 bytes)`},
	} {
		if got := clipValue(tc.in); got != tc.want {
			t.Errorf("%d: clipValue = %q, want %q", i, got, tc.want)
		}
		if got := clipValue(tc.in); len(got) > logValueMax+40 || !utf8.ValidString(got) {
			t.Errorf("%d: %d bytes, valid UTF-8 %v", i, len(got), utf8.ValidString(got))
		}
	}
	if got := clipError(errors.New("lookup timed out after 300ms")); got != "lookup timed out after 300ms" {
		t.Errorf("a short error is kept as it is: %q", got)
	}
	if got := clipError(errors.New("rule \"t\": " + long)); len(got) > logErrorMax+40 || !strings.HasSuffix(got, "(512010 bytes)") {
		t.Errorf("a long error is cut: %d bytes, %q", len(got), got[len(got)-20:])
	}
	if clipError(nil) != "" {
		t.Error("clipError(nil)")
	}
}

// hostileLogRules is a rule file whose placeholders a hostile request fills.
const hostileLogRules = `version: 1
rules:
  - name: typed
    match: {method: POST, path: /api/typed}
    emit: {type: "user.{request.body.action}", types: [user.created], data: {a: "{request.body.action}"}}
  - name: item
    match: {method: PUT, path: "/api/items/{id}", response: {body: {"id": exists}}}
    emit: {type: item.changed, subject: "{path.id}"}
  - name: looked-up
    match: {method: POST, path: /api/look}
    lookup: {get: "/api/me?u={request.body.u}", as: me, timeout: 500ms}
    emit: {type: user.looked_up, data: {u: "{me.body.id}"}}
`

// maxLogLine bounds a whole log line (message and fields, without a panic's
// stack) that a hostile request causes.
const maxLogLine = 1024

// TestLogsCarryNoRequestContent sends 500 KB hostile values to every log line
// a request can reach and checks each line stays short and shows no request
// content past the short prefix: neither the body's other fields nor a
// credential placed after the prefix.
func TestLogsCarryNoRequestContent(t *testing.T) {
	const secret = "hunter2-sekrit-credential"
	// past the prefix, a credential; around it, bytes a terminal would obey
	hostile := strings.Repeat("A", 100) + "\x1b[2J\n" + secret + strings.Repeat("B", 500<<10)
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close() // lookups to it fail

	e := newTestHandler(t, hostileLogRules, func(h *Handler) { h.LookupUpstream = dead.URL })
	send := func(method, path, body string, respond func(w http.ResponseWriter)) {
		t.Helper()
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(method, "/", strings.NewReader(body))
		req.URL.Path = path
		req.Header.Set("Authorization", "Bearer "+secret)
		err := e.serve(rec, req, func(w http.ResponseWriter, r *http.Request) error {
			respond(w)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	ok := func(w http.ResponseWriter) { w.WriteHeader(http.StatusOK) }
	body := func(k, v string) string { return fmt.Sprintf(`{%q:%q,"password":%q}`, k, v, secret) }

	// a type rendered from the request: undeclared, then declared but failing to queue
	send(http.MethodPost, "/api/typed", body("action", hostile), ok)
	e.q.err = errors.New("redis refused " + hostile)
	send(http.MethodPost, "/api/typed", body("action", "created"), ok)
	e.q.err = nil
	// a hostile path and a response body that does not decode; a hostile coding
	for _, enc := range []string{"gzip", "zstd", "br", "deflate", hostile, strings.Repeat("gzip,", 100<<10)} {
		send(http.MethodPut, "/api/items/"+hostile, "", func(w http.ResponseWriter) {
			w.Header().Set("Content-Encoding", enc)
			w.WriteHeader(http.StatusOK)
			w.Write([]byte("not " + hostile)) //nolint:errcheck
		})
	}
	// a lookup whose path carries the hostile value, to an upstream that is gone
	send(http.MethodPost, "/api/look", body("u", hostile), ok)

	for _, msg := range []string{
		"cannot decode response body for extraction",
		"event lost: cannot queue or spool it",
		"lookup failed; event will list what is missing",
	} {
		if e.logs.FilterMessage(msg).Len() == 0 {
			t.Errorf("no %q line: the test does not reach it", msg)
		}
	}
	if n := e.logs.FilterMessage("cannot decode response body for extraction").Len(); n != 6 {
		t.Errorf("%d decode lines, want one per encoding", n)
	}
	checkLogLines(t, e.logs, maxLogLine, secret, "BBBBBBBB", "\x1b", "\n")
}

// checkLogLines fails on a log line (message and fields, without a stack)
// longer than max bytes or holding one of the strings.
func checkLogLines(t *testing.T, logs *observer.ObservedLogs, max int, never ...string) {
	t.Helper()
	if logs.Len() == 0 {
		t.Fatal("nothing logged")
	}
	for _, entry := range logs.All() {
		line := entry.Message
		for _, f := range entry.Context {
			if f.Key == "stack" {
				continue
			}
			line += " " + f.Key + "=" + f.String
			if f.String == "" && f.Interface != nil {
				line += fmt.Sprint(f.Interface)
			}
		}
		if len(line) > max {
			t.Errorf("log line of %d bytes (max %d): %.200q", len(line), max, line)
		}
		for _, s := range never {
			if strings.Contains(line, s) {
				t.Errorf("log line carries %q: %.300q", s, line)
			}
		}
	}
}
