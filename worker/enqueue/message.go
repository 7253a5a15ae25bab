package enqueue

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"google.golang.org/protobuf/encoding/protowire"
)

// DefaultTimeout is the task timeout asynq sets when a task has neither a
// timeout nor a deadline; a [Message] with Timeout 0 gets it too.
const DefaultTimeout = 30 * time.Minute

// DefaultQueue is asynq's default queue, used when a [Message] names none.
const DefaultQueue = "default"

// Message is one task to enqueue: what asynq.NewTask(Type, Payload,
// asynq.TaskID(ID), asynq.Queue(Queue), asynq.MaxRetry(MaxRetry),
// asynq.Timeout(Timeout), asynq.Retention(Retention)) describes.
type Message struct {
	Type    string
	Payload []byte
	// ID is the asynq task id; it is required, since a second enqueue of the
	// same id is what keeps a retried enqueue from doubling a task.
	ID string
	// Queue defaults to [DefaultQueue].
	Queue string
	// MaxRetry is how many times a failed task is retried (0: never).
	MaxRetry int
	// Timeout bounds one run of the task; 0 means [DefaultTimeout].
	Timeout time.Duration
	// Retention is how long the completed task is kept (0: not kept).
	Retention time.Duration
}

// Options are the asynq options that describe m.
func (m Message) Options() []asynq.Option {
	opts := []asynq.Option{asynq.TaskID(m.ID), asynq.Queue(m.queue()), asynq.MaxRetry(m.MaxRetry)}
	if m.Timeout > 0 {
		opts = append(opts, asynq.Timeout(m.Timeout))
	}
	if m.Retention > 0 {
		opts = append(opts, asynq.Retention(m.Retention))
	}
	return opts
}

// Task is m as an asynq task, for enqueueing it with an asynq.Client.
func (m Message) Task() *asynq.Task {
	return asynq.NewTask(m.Type, m.Payload, m.Options()...)
}

func (m Message) queue() string {
	if m.Queue == "" {
		return DefaultQueue
	}
	return m.Queue
}

func (m Message) validate() error {
	switch {
	case strings.TrimSpace(m.Type) == "":
		return errors.New("enqueuing task: the task type is empty")
	case strings.TrimSpace(m.ID) == "":
		return fmt.Errorf("enqueuing %s task: the task id is empty", m.Type)
	case strings.TrimSpace(m.queue()) == "":
		return fmt.Errorf("enqueuing %s task %s: the queue name is blank", m.Type, m.ID)
	}
	return nil
}

// Field numbers of asynq's TaskMessage (internal/proto/asynq.proto, v0.26).
const (
	fieldType      = 1
	fieldPayload   = 2
	fieldID        = 3
	fieldQueue     = 4
	fieldRetry     = 5
	fieldTimeout   = 8
	fieldRetention = 12
)

// encodedSizeHint is about the length of m's encoding.
func (m Message) encodedSizeHint() int {
	return len(m.Type) + len(m.Payload) + len(m.ID) + len(m.queue()) + 40
}

// appendEncoded appends the TaskMessage protobuf asynq.Client writes for m
// to b: fields in field-number order, zero values left out (proto3). The
// deadline is asynq's "none", Unix time 0, so it is left out too.
func (m Message) appendEncoded(b []byte) []byte {
	b = appendString(b, fieldType, m.Type)
	if len(m.Payload) > 0 {
		b = protowire.AppendTag(b, fieldPayload, protowire.BytesType)
		b = protowire.AppendBytes(b, m.Payload)
	}
	b = appendString(b, fieldID, m.ID)
	b = appendString(b, fieldQueue, m.queue())
	b = appendVarint(b, fieldRetry, int64(int32(max(m.MaxRetry, 0))))
	timeout := m.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	b = appendVarint(b, fieldTimeout, int64(timeout.Seconds()))
	b = appendVarint(b, fieldRetention, int64(m.Retention.Seconds()))
	return b
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendVarint(b []byte, num protowire.Number, v int64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

// wrap names m in an enqueue error.
func (m Message) wrap(err error) error {
	return fmt.Errorf("enqueuing %s task %s: %w", m.Type, m.ID, err)
}
