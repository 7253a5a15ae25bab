package tasks

import (
	"bytes"
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/rules"
)

// queuedRules copy response and request bodies into data whole, as text and
// as a subject, under a nested template, and diff them into previous: every
// way a body reaches an event.
const queuedRules = `version: 1
rules:
  - name: whole
    match: {method: POST, path: /x}
    emit:
      - type: user.created
        subject: "{response.body}"
        data: "{response.body}"
        previous: {before: "{request.body}"}
      - type: user.updated
        subject: "u={response.body.user}"
        data: {a: {b: ["{response.body}", "{request.body}"]}, t: "t={response.body.user}", s: "{response.body.user.id}"}
`

// queueAndDeliver does to ev what the handler and the worker do: encode the
// event:fanout payload the way caddymodule queues it (AppendFanoutMessage,
// also behind NewFanoutTask), decode it as the fan-out does (ParseFanout),
// build both delivery bodies (worker.DeliverPayloadFor: the envelope and the
// data format) as webhook:deliver payloads (DeliverMessage), and decode those
// as the deliverer does (ParseDeliver). It fails the test if any step refuses
// the event or changes it.
func queueAndDeliver(t *testing.T, ev rules.Event) {
	t.Helper()
	m, err := AppendFanoutMessage(nil, ev)
	if err != nil {
		t.Fatalf("queueing: %v", err)
	}
	p, err := ParseFanout(asynq.NewTask(m.Type, m.Payload))
	if err != nil {
		t.Fatalf("the fan-out cannot decode what was queued (%d bytes): %v", len(m.Payload), err)
	}
	got := p.Event
	if !bytes.Equal(got.Data, ev.Data) || !bytes.Equal(got.Previous, ev.Previous) || got.Subject != ev.Subject || got.ID != ev.ID || got.Type != ev.Type ||
		!reflect.DeepEqual(got.Source, ev.Source) || got.DedupeWindow != ev.DedupeWindow {
		t.Fatalf("the fan-out reads a different event:\n got  %+v\n want %+v", got.Source, ev.Source)
	}
	envelope, err := got.Envelope()
	if err != nil {
		t.Fatalf("the fan-out cannot encode the envelope: %v", err)
	}
	for _, body := range []json.RawMessage{envelope, got.Data} {
		dm, err := DeliverMessage(DeliverPayload{EventID: got.ID, EventType: got.Type, EndpointID: "ep_1", Body: body}, 3, time.Hour)
		if err != nil {
			t.Fatalf("building the delivery: %v", err)
		}
		dp, err := ParseDeliver(asynq.NewTask(dm.Type, dm.Payload))
		if err != nil {
			t.Fatalf("the deliverer cannot decode the delivery: %v", err)
		}
		// a subscriber decoding the body with encoding/json gets a value (numbers
		// are copied as written: 1e400 is JSON, if no float64)
		var v any
		dec := json.NewDecoder(bytes.NewReader(dp.Body))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("a subscriber cannot decode the body: %v", err)
		}
	}
}

func renderQueued(t *testing.T, s *rules.Set, reqBody, respBody []byte) []rules.Event {
	ex := &rules.Exchange{Method: "POST", Path: "/x", Status: 201,
		RequestHeader: http.Header{"Content-Type": {"application/json"}}, RequestBody: reqBody,
		ResponseHeader: http.Header{"Content-Type": {"application/json"}}, ResponseBody: respBody}
	evs, errs := s.Evaluate(ex, rules.EmitOptions{Source: "fuzz"})
	if len(errs) > 0 {
		t.Fatalf("emit errors: %v", errs)
	}
	if len(evs) != 2 {
		t.Fatalf("%d events", len(evs))
	}
	return evs
}

func queuedSet(tb testing.TB) *rules.Set {
	f, err := rules.Parse("queued.yaml", []byte(queuedRules))
	if err != nil {
		tb.Fatal(err)
	}
	s, err := rules.NewSet(f)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// FuzzQueuedEventDecodes renders random bodies through rules that copy them
// whole and checks that everything the handler would queue is delivered: the
// fan-out and the deliverer decode it (encoding/json, nesting limit 10,000),
// whatever the body's shape.
func FuzzQueuedEventDecodes(f *testing.F) {
	s := queuedSet(f)
	f.Add([]byte(`{"a":1}`), []byte(`{"user":{"id":"u_1","password":"p","roles":["a"]}}`))
	f.Add([]byte(strings.Repeat("[", 20_000)+strings.Repeat("]", 20_000)), []byte(strings.Repeat(`{"user":`, 12_000)+"1"+strings.Repeat("}", 12_000)))
	f.Add([]byte("\"\xff\xfe\u2028\""), []byte(`{"user":"\ud800\u0000<&>"}`))
	f.Add([]byte(`[1,]`), []byte(`{"user":{"id":1e400}}`))
	f.Fuzz(func(t *testing.T, reqBody, respBody []byte) {
		for _, ev := range renderQueued(t, s, reqBody, respBody) {
			queueAndDeliver(t, ev)
		}
	})
}

// TestQueuedDeepEventsDecode: data nested far past encoding/json's limit is
// cut at rules.MaxDataDepth, says so in source.truncated, and is delivered.
func TestQueuedDeepEventsDecode(t *testing.T) {
	s := queuedSet(t)
	for _, body := range []string{
		strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000),
		strings.Repeat(`{"user":`, 100_000) + `"x"` + strings.Repeat("}", 100_000),
		`{"user":` + strings.Repeat(`[{"k":`, 9_999) + "1" + strings.Repeat("}]", 9_999) + "}",
	} {
		for _, ev := range renderQueued(t, s, []byte(body), []byte(body)) {
			if ev.Source.Truncated == nil || ev.Source.Truncated.MaxDepth != rules.MaxDataDepth || ev.Source.Truncated.Count == 0 {
				t.Fatalf("%s: not marked truncated: %+v", ev.Type, ev.Source)
			}
			queueAndDeliver(t, ev)
		}
	}
}
