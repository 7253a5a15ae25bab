package tasks

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/worker/enqueue"
)

// NewDeliverTask returns the webhook:deliver task for p, with queue
// QueueDeliver and TaskID DeliverTaskID(p.EventID, p.EndpointID). opts are
// appended after the defaults (e.g. asynq.MaxRetry, asynq.Retention, or
// asynq.TaskID to give a replay its own id).
func NewDeliverTask(p DeliverPayload, opts ...asynq.Option) (*asynq.Task, error) {
	b, err := encodeDeliver(p)
	if err != nil {
		return nil, err
	}
	all := append([]asynq.Option{
		asynq.Queue(QueueDeliver),
		asynq.TaskID(DeliverTaskID(p.EventID, p.EndpointID)),
	}, opts...)
	return asynq.NewTask(TypeDeliver, b, all...), nil
}

// DeliverMessage is the webhook:deliver task for p as an enqueue.Message:
// what NewDeliverTask(p, asynq.MaxRetry(maxRetry), asynq.Retention(retention))
// describes.
func DeliverMessage(p DeliverPayload, maxRetry int, retention time.Duration) (enqueue.Message, error) {
	b, err := encodeDeliver(p)
	if err != nil {
		return enqueue.Message{}, err
	}
	return enqueue.Message{Type: TypeDeliver, Payload: b, ID: DeliverTaskID(p.EventID, p.EndpointID),
		Queue: QueueDeliver, MaxRetry: maxRetry, Retention: retention}, nil
}

// encodeDeliver checks p and returns its JSON.
func encodeDeliver(p DeliverPayload) ([]byte, error) {
	if p.EventID == "" || p.EndpointID == "" {
		return nil, fmt.Errorf("building %s task: event id and endpoint id are required", TypeDeliver)
	}
	if !json.Valid(p.Body) {
		return nil, fmt.Errorf("building %s task for %s: body is not valid JSON", TypeDeliver, DeliverTaskID(p.EventID, p.EndpointID))
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encoding %s payload for %s: %w", TypeDeliver, DeliverTaskID(p.EventID, p.EndpointID), err)
	}
	return b, nil
}

// ParseDeliver reads the payload of a webhook:deliver task.
func ParseDeliver(t *asynq.Task) (DeliverPayload, error) {
	var p DeliverPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return p, fmt.Errorf("decoding %s payload: %w", TypeDeliver, err)
	}
	if p.EventID == "" || p.EndpointID == "" {
		return p, fmt.Errorf("decoding %s payload: event id and endpoint id are required", TypeDeliver)
	}
	return p, nil
}
