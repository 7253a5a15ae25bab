package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// valuesPackYAML reads a multipart sign-up and the claims of a JWT.
const valuesPackYAML = `version: 1
rules:
  - name: sign-up
    match: {method: POST, path: /signup, status: 201}
    emit: {type: user.created, subject: "{request.body.email}", data: "{request.body}"}
  - name: email-verified
    match: {method: POST, path: /verify, status: 204}
    emit: {type: user.email_verified, subject: "{jwt(request.body.token).sub}", data: {token: "{request.body.token}"}}
`

// TestRulesTestValues: authtap rules test reads a raw multipart/form-data
// request as a client sends it, and a token's claims, as the handler does.
func TestRulesTestValues(t *testing.T) {
	dir := t.TempDir()
	pack := write(t, dir, "pack.yaml", valuesPackYAML)
	for _, tc := range []struct{ name, req, resp, subject, data string }{
		{"raw multipart sign-up",
			"POST /signup HTTP/1.1\nHost: auth.test\nContent-Type: multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxkTrZu0gW\n\n" +
				"------WebKitFormBoundary7MA4YWxkTrZu0gW\nContent-Disposition: form-data; name=\"email\"\n\nann@example.test\n" +
				"------WebKitFormBoundary7MA4YWxkTrZu0gW\nContent-Disposition: form-data; name=\"password\"\n\ns3cret\n" +
				"------WebKitFormBoundary7MA4YWxkTrZu0gW\nContent-Disposition: form-data; name=\"avatar\"; filename=\"me.png\"\nContent-Type: image/png\n\nPNG\n" +
				"------WebKitFormBoundary7MA4YWxkTrZu0gW--\n",
			`{"status":201}`, "ann@example.test", `{"email":"ann@example.test","password":"[REDACTED]"}`},
		{"the sub claim of a token",
			`{"method":"POST","path":"/verify","body":{"token":"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1XzEiLCJlbWFpbCI6ImFubkBleGFtcGxlLnRlc3QiLCJwdXJwb3NlIjoiZW1haWxfdmVyaWZpY2F0aW9uIiwiZXhwIjoxNzY3MjI1NjAwfQ.3q2YZ8fJmVbC1u6l0pVQ2xk7d9rTn4s1uWcZy3bN0eA"}}`,
			`{"status":204}`, "u_1", `{"token":"[REDACTED]"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := write(t, dir, "req", tc.req)
			resp := write(t, dir, "resp", tc.resp)
			var out, errb bytes.Buffer
			if code := run([]string{"rules", "test", pack, "--request", req, "--response", resp}, &out, &errb); code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			var evs []struct {
				Subject string
				Data    json.RawMessage
			}
			if err := json.Unmarshal(out.Bytes(), &evs); err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			var data bytes.Buffer
			if len(evs) == 1 {
				json.Compact(&data, evs[0].Data) //nolint:errcheck
			}
			if len(evs) != 1 || evs[0].Subject != tc.subject || data.String() != tc.data {
				t.Fatalf("events %s", out.String())
			}
			if strings.Contains(out.String(), "s3cret") || strings.Contains(out.String(), "3q2YZ8fJ") {
				t.Fatalf("a secret in the output: %s", out.String())
			}
		})
	}
}
