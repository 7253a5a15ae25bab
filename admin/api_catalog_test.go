package admin

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

// TestAPIEventCatalog: GET /event-types serves the rules' catalog, with the
// descriptions and the redacted examples built from the inline tests.
func TestAPIEventCatalog(t *testing.T) {
	f, err := rules.Parse("catalog.yaml", []byte(`version: 1
rules:
  - name: sign-up
    description: A user signed up.
    match: {method: POST, path: /api/users}
    emit: {type: user.created, subject: "{response.body.id}", data: "{request.body}"}
tests:
  - name: sign-up
    request: {method: POST, path: /api/users, body: {email: a@x.test, password: s3cret-pass}}
    response: {status: 201, body: {id: u_1}}
    expect: [{type: user.created, subject: u_1}]
`))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.NewSet(f)
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled: the catalog needs no Redis
	t.Cleanup(func() { _ = rdb.Close() })
	store, err := worker.NewStore(rdb, worker.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewAPI(APIConfig{Store: store, EventTypes: set.EventTypes})
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/event-types", nil))
	if rec.Code != 200 {
		t.Fatalf("GET /event-types: %d %s", rec.Code, rec.Body)
	}
	if strings.Contains(rec.Body.String(), "s3cret-pass") {
		t.Fatalf("the catalog leaks a test's password: %s", rec.Body)
	}
	var got struct {
		EventTypes []struct {
			Type        string            `json:"type"`
			Description string            `json:"description"`
			Rules       []string          `json:"rules"`
			Examples    []json.RawMessage `json:"examples"`
		} `json:"event_types"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got.EventTypes) != 1 {
		t.Fatalf("event types %s", rec.Body)
	}
	et := got.EventTypes[0]
	if et.Type != "user.created" || et.Description != "A user signed up." || strings.Join(et.Rules, ",") != "sign-up" || len(et.Examples) != 1 {
		t.Fatalf("event type %+v", et)
	}
	var ev struct {
		ID      string         `json:"id"`
		Subject string         `json:"subject"`
		Data    map[string]any `json:"data"`
	}
	if err := json.Unmarshal(et.Examples[0], &ev); err != nil {
		t.Fatal(err)
	}
	if ev.ID != rules.ExampleEventID || ev.Subject != "u_1" || ev.Data["password"] != "[REDACTED]" || ev.Data["email"] != "a@x.test" {
		t.Errorf("example %s", et.Examples[0])
	}
}
