package worker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"

	"github.com/authtap/authtap/worker/enqueue"
	"github.com/authtap/authtap/worker/tasks"
)

// clientWriter is the baseline: asynq's client, one round trip per delivery;
// with serial set, one delivery at a time, as the fan-out did before.
type clientWriter struct {
	c      *asynq.Client
	serial *sync.Mutex
}

func (w clientWriter) Enqueue(ctx context.Context, m enqueue.Message, _ time.Duration) error {
	if w.serial != nil {
		w.serial.Lock()
		defer w.serial.Unlock()
	}
	_, err := w.c.EnqueueContext(ctx, m.Task())
	return err
}

// BenchmarkFanout fans one event out to 1 and to 20 endpoints, enqueuing the
// deliveries with asynq's client one at a time (the baseline: the fan-out
// before the writer), with asynq's client concurrently, and with the batching
// writer, in the same run. The time per op is one whole fan-out (endpoint match,
// event kept, deliveries enqueued) against a private redis-server.
//
//	go test ./worker -run XXX -bench Fanout -benchtime 2000x
func BenchmarkFanout(b *testing.B) {
	for _, endpoints := range []int{1, 20} {
		for _, name := range []string{"asynq-client-serial", "asynq-client", "writer"} {
			b.Run(fmt.Sprintf("endpoints=%d/%s", endpoints, name), func(b *testing.B) {
				ctx := context.Background()
				s, rdb := newTestStore(b, StoreOptions{})
				for i := range endpoints {
					if _, err := s.Create(ctx, EndpointConfig{ID: fmt.Sprintf("ep%02d", i), URL: "https://a.example", Events: []string{"user.*"}}); err != nil {
						b.Fatal(err)
					}
				}
				var w taskWriter
				switch name {
				case "asynq-client-serial":
					w = clientWriter{c: asynq.NewClientFromRedisClient(rdb), serial: new(sync.Mutex)}
				case "asynq-client":
					w = clientWriter{c: asynq.NewClientFromRedisClient(rdb)}
				default:
					ew := enqueue.New(rdb, enqueue.Options{})
					b.Cleanup(func() { _ = ew.Close() })
					w = ew
				}
				h := &fanoutHandler{store: s, w: w, maxRetry: 3, dedupe: time.Hour, log: zap.NewNop()}
				fanouts := make([]*asynq.Task, b.N)
				for i := range fanouts {
					t, err := tasks.NewFanoutTask(testEvent(fmt.Sprintf("evt_%d", i), "user.created", "live"))
					if err != nil {
						b.Fatal(err)
					}
					fanouts[i] = t
				}
				b.ResetTimer()
				for _, t := range fanouts {
					if err := h.ProcessTask(ctx, t); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
