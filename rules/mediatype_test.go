package rules

import (
	"net/http"
	"strings"
	"testing"
)

// TestJSONMediaTypesAreRead: a SCIM service sends application/scim+json
// (RFC 7644 §3.1), other APIs application/merge-patch+json or
// application/vnd.api+json; their bodies are JSON and are read as such, in
// requests, responses and lookup answers, whatever the case of the type and
// its parameters. A body under such a type that is not JSON is not read.
func TestJSONMediaTypesAreRead(t *testing.T) {
	for _, ct := range []string{
		"application/scim+json",
		"application/scim+json; charset=utf-8",
		"APPLICATION/SCIM+JSON",
		"application/merge-patch+json",
		"application/vnd.api+json",
		"", // no Content-Type: read when it parses
	} {
		got, ok := bodyAsJSON([]byte(` {"userName":"bjensen"} `), ct)
		if !ok || string(got) != `{"userName":"bjensen"}` {
			t.Errorf("%q: got %s %v, want the JSON", ct, got, ok)
		}
		if got, ok := bodyAsJSON([]byte(`userName=bjensen`), ct); ok {
			t.Errorf("%q: a body that is not JSON was read as %s", ct, got)
		}
	}

	s := mustSet(t, `version: 1
rules:
  - name: scim-user-created
    match:
      method: POST
      path: /scim/v2/Users
      status: 201
      request: {body: {userName: exists}}
      response: {body: {id: exists}}
    lookup: {get: "/scim/v2/Users/{response.body.id}", as: user}
    emit:
      type: user.created
      subject: "{response.body.id}"
      data: {id: "{response.body.id}", userName: "{request.body.userName}", active: "{user.body.active}"}
`)
	scim := http.Header{"Content-Type": {"application/scim+json; charset=utf-8"}}
	ex := &Exchange{Method: "POST", Path: "/scim/v2/Users", Status: 201,
		RequestHeader: scim, RequestBody: []byte(`{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"bjensen"}`),
		ResponseHeader: scim, ResponseBody: []byte(`{"id":"2819c223","userName":"bjensen"}`)}
	ex.SetLookup("user", LookupResult{Status: 200, Header: scim, Body: []byte(`{"id":"2819c223","active":true}`)})
	evs := eval(t, s, ex)
	if got := strings.Join(dataOf(evs), "\n"); got != `user.created 2819c223 {"id":"2819c223","userName":"bjensen","active":true}` {
		t.Fatalf("events: %s", got)
	}
	if len(evs[0].Source.Missing) != 0 {
		t.Errorf("missing %v", evs[0].Source.Missing)
	}

	// the same exchange whose request body is not JSON: the request condition fails
	ex = &Exchange{Method: "POST", Path: "/scim/v2/Users", Status: 201,
		RequestHeader: scim, RequestBody: []byte(`userName=bjensen`),
		ResponseHeader: scim, ResponseBody: []byte(`{"id":"2819c223"}`)}
	if evs := eval(t, s, ex); len(evs) != 0 {
		t.Errorf("a body that is not JSON matched: %s", dataOf(evs))
	}
}
