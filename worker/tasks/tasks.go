package tasks

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/rules"
)

// Task types.
const (
	// TypeFanout is one task per event; its TaskID is the event id.
	TypeFanout = "event:fanout"
	// TypeDeliver is one task per event and endpoint; its TaskID is DeliverTaskID(event, endpoint).
	TypeDeliver = "webhook:deliver"
)

// Queues. Both are named so that they stand out in asynqmon next to other
// applications' queues on the same Redis.
const (
	QueueFanout  = "authtap_fanout"
	QueueDeliver = "authtap_deliver"
)

// Queues maps each authtap queue to its asynq priority weight: fan-out is
// cheap and unblocks deliveries, so it goes first.
var Queues = map[string]int{QueueFanout: 6, QueueDeliver: 4}

// FanoutPayload is the payload of an event:fanout task: the event itself.
type FanoutPayload struct {
	Event rules.Event `json:"event"`
}

// DefaultRetention is how long a completed fan-out task is kept when the event
// sets no dedupe window; while it is kept, a second enqueue of the same event id
// is refused by asynq, so a replayed spool never doubles an event.
const DefaultRetention = 24 * time.Hour

// FanoutMaxRetry bounds the fan-out retries (fan-out only talks to Redis).
const FanoutMaxRetry = 25

// NewFanoutTask returns the event:fanout task for ev, with TaskID = ev.ID.
// opts are appended after the defaults (queue, task id, retention, max retry).
func NewFanoutTask(ev rules.Event, opts ...asynq.Option) (*asynq.Task, error) {
	if ev.ID == "" {
		return nil, fmt.Errorf("building %s task: event has no id", TypeFanout)
	}
	// The FanoutPayload JSON, written around the event's own encoding: marshalling
	// the wrapper would make encoding/json scan and compact the event a second time.
	evb, err := ev.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encoding %s payload for %s: %w", TypeFanout, ev.ID, err)
	}
	b := make([]byte, 0, len(evb)+10)
	b = append(append(append(b, `{"event":`...), evb...), '}')
	retention := DefaultRetention
	if ev.DedupeWindow > retention {
		retention = ev.DedupeWindow
	}
	all := append([]asynq.Option{
		asynq.Queue(QueueFanout),
		asynq.TaskID(ev.ID),
		asynq.Retention(retention),
		asynq.MaxRetry(FanoutMaxRetry),
	}, opts...)
	return asynq.NewTask(TypeFanout, b, all...), nil
}

// ParseFanout reads the payload of an event:fanout task.
func ParseFanout(t *asynq.Task) (FanoutPayload, error) {
	var p FanoutPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return p, fmt.Errorf("decoding %s payload: %w", TypeFanout, err)
	}
	if p.Event.ID == "" {
		return p, fmt.Errorf("decoding %s payload: event has no id", TypeFanout)
	}
	return p, nil
}

// DeliverPayload is the payload of a webhook:deliver task. It carries the exact
// body bytes to send, so that every retry signs and sends the same bytes.
type DeliverPayload struct {
	EventID    string `json:"event_id"`
	EventType  string `json:"event_type"`
	EndpointID string `json:"endpoint_id"`
	// Body is the exact request body (the envelope or just its data, per the endpoint's format).
	Body json.RawMessage `json:"body"`
	// Replay is true when the delivery was made by a replay or manual retry request.
	Replay bool `json:"replay,omitempty"`
}

// DeliverTaskID is the TaskID of the delivery of event to endpoint, so that a
// repeated fan-out never doubles a delivery.
func DeliverTaskID(eventID, endpointID string) string {
	return eventID + ":" + endpointID
}
