package tasks

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker/enqueue"
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
	m, err := FanoutMessage(ev)
	if err != nil {
		return nil, err
	}
	return asynq.NewTask(m.Type, m.Payload, append(m.Options(), opts...)...), nil
}

// FanoutMessage is the event:fanout task for ev as an [enqueue.Message], for a
// batching [enqueue.Writer]: the same task as [NewFanoutTask].
func FanoutMessage(ev rules.Event) (enqueue.Message, error) {
	return AppendFanoutMessage(make([]byte, 0, len(ev.Data)+len(ev.Subject)+len(ev.Tenant)+len(ev.Source.Name)+len(ev.Source.Rule)+200), ev)
}

// AppendFanoutMessage is FanoutMessage with the payload appended to buf, so
// that a caller can reuse buffers: the payload is buf extended.
func AppendFanoutMessage(buf []byte, ev rules.Event) (enqueue.Message, error) {
	if ev.ID == "" {
		return enqueue.Message{}, fmt.Errorf("building %s task: event has no id", TypeFanout)
	}
	// The FanoutPayload JSON, written around the event's own encoding: marshalling
	// the wrapper would make encoding/json scan and compact the event a second time.
	b, err := ev.AppendJSON(append(buf, `{"event":`...))
	if err != nil {
		return enqueue.Message{}, fmt.Errorf("encoding %s payload for %s: %w", TypeFanout, ev.ID, err)
	}
	b = append(b, '}')
	retention := DefaultRetention
	if ev.DedupeWindow > retention {
		retention = ev.DedupeWindow
	}
	return enqueue.Message{Type: TypeFanout, Payload: b, ID: ev.ID, Queue: QueueFanout,
		MaxRetry: FanoutMaxRetry, Retention: retention}, nil
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
	// Tenant is the event's tenant (rules.Event.Tenant), empty for an
	// operator-only event; the delivery log records it so that deliveries
	// can be listed per tenant.
	Tenant string `json:"tenant,omitempty"`
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
