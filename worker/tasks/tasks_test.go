package tasks

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

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
