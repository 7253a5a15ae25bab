package tasks

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/rules"
)

func TestFanoutTaskRoundTrip(t *testing.T) {
	ev := rules.Event{ID: "evt_01", Type: "user.created", Timestamp: time.Date(2026, 11, 23, 10, 0, 0, 123e6, time.UTC),
		Data: json.RawMessage(`{"id":"u_1"}`), Source: rules.Source{Name: "legacy-auth", Rule: "user-created"}, Mode: "live", DedupeWindow: 48 * time.Hour}
	task, err := NewFanoutTask(ev)
	if err != nil {
		t.Fatal(err)
	}
	if task.Type() != TypeFanout {
		t.Fatalf("type %q", task.Type())
	}
	// the payload reads well in asynqmon: plain JSON with the envelope inside
	if !strings.Contains(string(task.Payload()), `"event":{"id":"evt_01","type":"user.created","timestamp":"2026-11-23T10:00:00.123Z"`) {
		t.Fatalf("payload %s", task.Payload())
	}
	back, err := ParseFanout(task)
	if err != nil {
		t.Fatal(err)
	}
	if back.Event.ID != ev.ID || back.Event.DedupeWindow != ev.DedupeWindow || string(back.Event.Data) != string(ev.Data) || !back.Event.Timestamp.Equal(ev.Timestamp) {
		t.Fatalf("round trip %+v", back.Event)
	}
	if _, err := NewFanoutTask(rules.Event{}); err == nil {
		t.Fatal("an event without id must be refused")
	}
}

func TestDeliverTaskIDIsStable(t *testing.T) {
	if DeliverTaskID("evt_1", "ep_1") != DeliverTaskID("evt_1", "ep_1") || DeliverTaskID("evt_1", "ep_1") == DeliverTaskID("evt_1", "ep_2") {
		t.Fatal("delivery task ids must be one per event and endpoint")
	}
}

// DeliverMessage describes the task NewDeliverTask builds with the same options.
func TestDeliverMessageMatchesNewDeliverTask(t *testing.T) {
	p := DeliverPayload{EventID: "evt_1", EventType: "user.created", EndpointID: "ep_1", Body: json.RawMessage(`{"id":"u_1"}`)}
	m, err := DeliverMessage(p, 9, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	task, err := NewDeliverTask(p, asynq.MaxRetry(9), asynq.Retention(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != task.Type() || string(m.Payload) != string(task.Payload()) {
		t.Errorf("message %s %s, task %s %s", m.Type, m.Payload, task.Type(), task.Payload())
	}
	if m.ID != DeliverTaskID("evt_1", "ep_1") || m.Queue != QueueDeliver || m.MaxRetry != 9 || m.Retention != time.Hour {
		t.Errorf("message options %+v", m)
	}
	back, err := ParseDeliver(m.Task())
	if err != nil || back.EndpointID != "ep_1" || string(back.Body) != `{"id":"u_1"}` {
		t.Errorf("ParseDeliver = %+v, %v", back, err)
	}
	for _, bad := range []DeliverPayload{{EventID: "evt_1", Body: json.RawMessage(`{}`)}, {EventID: "evt_1", EndpointID: "ep_1", Body: json.RawMessage(`{`)}} {
		if _, err := DeliverMessage(bad, 0, 0); err == nil {
			t.Errorf("DeliverMessage(%+v) accepted", bad)
		}
	}
}
