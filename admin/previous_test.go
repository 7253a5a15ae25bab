package admin

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
	"github.com/authtap/authtap/worker/tasks"
)

// previousEvent builds a user.updated event with previous the way the
// handler does (rules renders it, tasks queues it).
func previousEvent(t *testing.T) rules.Event {
	t.Helper()
	f, err := rules.Parse("p.yaml", []byte(`version: 1
rules:
  - name: user-updated
    match: {method: PATCH, path: "/api/users/{id}"}
    lookup: {get: "/api/users/{path.id}", as: old, when: before}
    emit:
      type: user.updated
      subject: "{path.id}"
      data: "{response.body}"
      mode: test
      previous: {before: "{old.body}", skip_unchanged: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.NewSet(f)
	if err != nil {
		t.Fatal(err)
	}
	json := http.Header{"Content-Type": {"application/json"}}
	ex := &rules.Exchange{Method: "PATCH", Path: "/api/users/u_1", Status: 200, ResponseHeader: json,
		ResponseBody: []byte(`{"id":"u_1","name":"Ada Lovelace","profile":{"city":"London","tz":"UTC"},"password_hash":"h2"}`)}
	ex.SetLookup("old", rules.LookupResult{Status: 200, Header: json,
		Body: []byte(`{"id":"u_1","name":"Ada","profile":{"city":"Paris","tz":"UTC"},"password_hash":"h1"}`)})
	evs, errs := set.Evaluate(ex, rules.EmitOptions{Source: "legacy-auth", Now: time.Now()})
	if len(evs) != 1 || len(errs) != 0 {
		t.Fatalf("events %+v errors %v", evs, errs)
	}
	return evs[0]
}

const wantPrevious = `{"name":"Ada","profile":{"city":"Paris"},"password_hash":"[REDACTED]"}`

// TestPreviousDeliveredEverywhere: with real Redis, an event's previous
// reaches an envelope endpoint as it was built, is left out for a data
// endpoint (which gets data alone), is listed by GET /events and
// GET /events/{id}, and comes back in a replay.
func TestPreviousDeliveredEverywhere(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{})
	env := newAPIReceiver(t, 200)
	dat := newAPIReceiver(t, 200)
	f.create(worker.EndpointConfig{ID: "env", URL: env.srv.URL, Mode: "test", Events: []string{"user.*"}})
	f.create(worker.EndpointConfig{ID: "dat", URL: dat.srv.URL, Mode: "test", Events: []string{"user.*"}, Format: worker.FormatData})
	start := time.Now().Add(-time.Second)

	ev := previousEvent(t)
	if string(ev.Previous) != wantPrevious {
		t.Fatalf("built previous %s", ev.Previous)
	}
	m, err := tasks.FanoutMessage(ev) // what the handler queues
	if err != nil {
		t.Fatal(err)
	}
	c := asynq.NewClient(asynq.RedisClientOpt{Addr: f.redis.Addr})
	defer c.Close()
	if _, err := c.Enqueue(asynq.NewTask(m.Type, m.Payload, m.Options()...)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "both deliveries", func() bool { return len(env.deliveries()) == 1 && len(dat.deliveries()) == 1 })

	wantEnvelope, err := ev.Envelope()
	if err != nil {
		t.Fatal(err)
	}
	checkPrevious := func(where string, body []byte) {
		t.Helper()
		var got struct {
			ID       string          `json:"id"`
			Data     json.RawMessage `json:"data"`
			Previous json.RawMessage `json:"previous"`
		}
		if err := json.Unmarshal(body, &got); err != nil {
			t.Fatalf("%s: %v: %s", where, err, body)
		}
		if got.ID != ev.ID || string(got.Previous) != wantPrevious || !bytes.Equal(got.Data, ev.Data) {
			t.Errorf("%s: got %s", where, body)
		}
	}
	if d := env.deliveries()[0]; !bytes.Equal(d.body, wantEnvelope) {
		t.Errorf("envelope delivered\n got %s\nwant %s", d.body, wantEnvelope)
	}
	checkPrevious("envelope delivery", env.deliveries()[0].body)
	if d := dat.deliveries()[0]; !bytes.Equal(d.body, ev.Data) || bytes.Contains(d.body, []byte("previous")) {
		t.Errorf("data delivery: %s, want the data alone %s", d.body, ev.Data)
	}

	var evs struct{ Events []json.RawMessage }
	f.must(200, "GET", "/events", nil, &evs)
	if len(evs.Events) != 1 {
		t.Fatalf("GET /events: %d events", len(evs.Events))
	}
	checkPrevious("GET /events", evs.Events[0])
	var one struct{ Event json.RawMessage }
	f.must(200, "GET", "/events/"+ev.ID, nil, &one)
	checkPrevious("GET /events/{id}", one.Event)

	var rr replayResponse
	f.must(202, "POST", "/webhooks/env/replay?since="+url.QueryEscape(start.Format(time.RFC3339Nano)), nil, &rr)
	if rr.Replayed != 1 {
		t.Fatalf("replay: %+v", rr)
	}
	waitUntil(t, "the replayed delivery", func() bool { return len(env.deliveries()) == 2 })
	if d := env.deliveries()[1]; !bytes.Equal(d.body, wantEnvelope) {
		t.Errorf("replayed envelope\n got %s\nwant %s", d.body, wantEnvelope)
	}
}
