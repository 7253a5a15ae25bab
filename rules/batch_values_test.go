package rules

import (
	"net/http"
	"strings"
	"testing"
)

// Placeholder functions wrap element placeholders like any other: inside an
// emit with each, and in a batch's own templates (its url, its ids), where
// {item.…} is otherwise read straight from the element.
func TestFuncsAroundElementPlaceholders(t *testing.T) {
	tok := tokenOf(`{"alg":"HS256"}`, `{"sub":"u_tok"}`)
	s := mustSet(t, `version: 1
rules:
  - name: imported
    match: {method: POST, path: /import}
    emit:
      type: user.imported
      each: "{response.body.results}"
      subject: "{last_segment(item.location)}"
      data: {id: "{match(item.location, \"/Users/([^/?]+)\")}", by: "{jwt(item.token).sub}", whole: "{last_segment(item.location)}"}
  - name: deleted
    match: {method: DELETE, path: "/v1/users/{id}", status: 204}
    emit: {type: user.deleted, subject: "{path.id}", data: {loc: "{last_segment(response.header.Location)}"}}
  - name: batch
    match: {method: POST, path: /batch}
    batch:
      base: /v1
      request: {items: "{request.body.ops}", id: "{item.uid}", method: "{item.verb}", url: "/users/{last_segment(item.ref)}"}
      response: {items: "{response.body}", id: "{last_segment(item.location)}", status: "{item.status}", location: "{item.location}"}
`)
	ex := &Exchange{Method: "POST", Path: "/import", Status: 200,
		RequestHeader: http.Header{}, ResponseHeader: http.Header{"Content-Type": {"application/json"}},
		ResponseBody: []byte(`{"results":[{"location":"https://h/Users/2819c223?x=1","token":"Bearer ` + tok + `"},{"location":"/Users/"},{"location":7}]}`)}
	got := strings.Join(dataOf(eval(t, s, ex)), "\n")
	want := strings.Join([]string{
		`user.imported 2819c223 {"id":"2819c223","by":"u_tok","whole":"2819c223"}`,
		`user.imported Users {"id":null,"by":null,"whole":"Users"}`,
		`user.imported 7 {"id":null,"by":null,"whole":"7"}`,
	}, "\n")
	if got != want {
		t.Errorf("each with functions:\n%s\nwant:\n%s", got, want)
	}

	// the answers come in another order: paired by the id at the end of their location
	ex = &Exchange{Method: "POST", Path: "/batch", Status: 200,
		RequestHeader:  http.Header{"Content-Type": {"application/json"}},
		RequestBody:    []byte(`{"ops":[{"uid":"u_1","verb":"DELETE","ref":"urn:x:users/u_1"},{"uid":"u_2","verb":"DELETE","ref":"/people/u_2?v=1"}]}`),
		ResponseHeader: http.Header{"Content-Type": {"application/json"}},
		ResponseBody:   []byte(`[{"location":"/v1/users/u_2","status":"204"},{"location":"/v1/users/u_1","status":204}]`)}
	got = strings.Join(dataOf(eval(t, s, ex)), "\n")
	want = strings.Join([]string{
		`user.deleted u_1 {"loc":"u_1"}`,
		`user.deleted u_2 {"loc":"u_2"}`,
	}, "\n")
	if got != want {
		t.Errorf("batch with functions:\n%s\nwant:\n%s", got, want)
	}
}

// previous is built per element of an each (skip_unchanged drops only the
// element that did not change) and per sub-exchange of a batch, each with
// its own before state.
func TestPreviousPerElementAndSubExchange(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: bulk-update
    match: {method: PATCH, path: /users}
    emit:
      type: user.updated
      each: "{request.body.users}"
      subject: "{item.id}"
      data: "{item.now}"
      previous: {before: "{item.was}", skip_unchanged: true}
  - name: replaced
    match: {method: PUT, path: "/scim/v2/Users/{id}"}
    lookup: {get: "/scim/v2/Users/{path.id}", as: old, when: before}
    emit:
      type: user.updated
      subject: "{path.id}"
      data: "{request.body}"
      previous: {before: "{old.body}", skip_unchanged: true}
  - name: bulk
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "{item.path}", body: "{item.data}"}
      response: {items: "{response.body.Operations}", status: "{item.status}"}
`)
	ex := &Exchange{Method: "PATCH", Path: "/users", Status: 200,
		RequestHeader: http.Header{"Content-Type": {"application/json"}},
		RequestBody: []byte(`{"users":[{"id":"a","was":{"name":"Ann","pin":"1"},"now":{"name":"Bob","pin":"1"}},` +
			`{"id":"b","was":{"name":"Cy"},"now":{"name":"Cy"}},{"id":"c","was":{"n":1},"now":{"n":2}}]}`)}
	var skipped []string
	evs, errs := s.Evaluate(ex, EmitOptions{Unchanged: func(rule, typ string) { skipped = append(skipped, rule+" "+typ) }})
	if len(errs) > 0 || len(evs) != 2 || evs[0].Subject != "a" || string(evs[0].Previous) != `{"name":"Ann"}` ||
		evs[1].Subject != "c" || string(evs[1].Previous) != `{"n":1}` || strings.Join(skipped, ",") != "bulk-update user.updated" {
		t.Fatalf("each previous: %v %v skipped %v", evs, errs, skipped)
	}

	ex = scimExchange(`{"Operations":[{"method":"PUT","path":"/Users/u_1","data":{"name":"Bob"}},{"method":"PUT","path":"/Users/u_2","data":{"name":"Cy"}},{"method":"PUT","path":"/Users/u_3","data":{"name":"Di"}}]}`,
		`{"Operations":[{"status":"200"},{"status":"200"},{"status":"200"}]}`, 200)
	ms := s.Match(ex)
	if len(ms) != 1 || !ms[0].IsBatch() {
		t.Fatalf("matches %v", names(ms))
	}
	bt, err := ms[0].Batch(ex)
	if err != nil || len(bt.Subs) != 3 {
		t.Fatalf("batch %v %v", bt, err)
	}
	// each sub-exchange gets its own before state, as the handler gives them
	bt.Subs[0].SetLookup("old", LookupResult{Status: 200, Body: []byte(`{"name":"Ann"}`)})
	bt.Subs[1].SetLookup("old", LookupResult{Status: 200, Body: []byte(`{"name":"Cy"}`)})
	bt.Subs[2].SetLookup("old", LookupResult{Status: 200, Body: []byte(`{"name":"Al"}`)})
	skipped = nil
	var got []string
	for _, sub := range bt.Subs {
		for _, m := range s.Match(sub) {
			evs, errs := m.Events(sub, EmitOptions{Unchanged: func(rule, typ string) { skipped = append(skipped, rule) }})
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			for _, ev := range evs {
				got = append(got, ev.Subject+" "+string(ev.Previous))
			}
		}
	}
	if strings.Join(got, ",") != `u_1 {"name":"Ann"},u_3 {"name":"Al"}` || strings.Join(skipped, ",") != "replaced" {
		t.Errorf("sub-exchange previous: %v, skipped %v", got, skipped)
	}
}

// An after-lookup of a sub-exchange is sent with the cookies the client
// holds once the envelope's response applied its Set-Cookie lines.
func TestSubExchangeLookupCookiesFollowEnvelopeSetCookie(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: created
    match: {method: POST, path: /scim/v2/Users, status: 201}
    lookup: {get: "/scim/v2/Users/{response.body.id}", as: user, header: {X-Op: "{request.body.userName}"}}
    emit: {type: user.created, subject: "{response.body.id}", data: {name: "{user.body.userName}"}}
  - name: bulk
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "{item.path}", body: "{item.data}"}
      response: {items: "{response.body.Operations}", status: "{item.status}", body: "{item.response}"}
`)
	ex := scimExchange(`{"Operations":[{"method":"POST","path":"/Users","data":{"userName":"ada"}}]}`,
		`{"Operations":[{"status":"201","response":{"id":"u_1"}}]}`, 200)
	ex.RequestHeader.Set("Cookie", "sid=old; theme=dark")
	ex.ResponseHeader.Add("Set-Cookie", "sid=new; Path=/")
	bt, err := s.Match(ex)[0].Batch(ex)
	if err != nil || len(bt.Subs) != 1 {
		t.Fatalf("batch %v %v", bt, err)
	}
	ms := s.Match(bt.Subs[0])
	if len(ms) != 1 {
		t.Fatalf("matches %v", names(ms))
	}
	lk := ms[0].Lookup(0, bt.Subs[0])
	if c := strings.Join(lk.Header.Values("Cookie"), "; "); !strings.Contains(c, "sid=new") || strings.Contains(c, "sid=old") || !strings.Contains(c, "theme=dark") {
		t.Errorf("lookup cookies %q", c)
	}
	if lk.Path != "/scim/v2/Users/u_1" || lk.Header.Get("X-Op") != "ada" || lk.Header.Get("Authorization") != "Bearer t0k" {
		t.Errorf("lookup %+v", lk)
	}
}
