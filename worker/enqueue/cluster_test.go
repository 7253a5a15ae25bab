package enqueue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/internal/redistest"
)

// On a Redis Cluster, a batch spanning queues on different nodes is written
// (one script call per queue, each within its queue's hash slot), the script
// is loaded again on every node after a flush, and asynq's Inspector and
// server see the tasks.
func TestWriterOnRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	ctx := context.Background()
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: cl.Addrs})
	t.Cleanup(func() { _ = rdb.Close() })
	w := writer(t, rdb)

	queues := []string{"authtap_fanout", "qa", "qb", "qc", "qd"}
	slots := map[int64]bool{}
	for _, q := range queues {
		slot, err := rdb.ClusterKeySlot(ctx, "asynq:{"+q+"}:pending").Result()
		if err != nil {
			t.Fatal(err)
		}
		slots[slot] = true
	}
	if len(slots) < 2 {
		t.Fatalf("the queues share one hash slot; the test needs several")
	}

	const callers, each = 16, 40
	enqueueAll := func(round int) {
		var wg sync.WaitGroup
		for g := range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					m := Message{Type: "job", ID: fmt.Sprintf("r%d-%d-%d", round, g, i), Queue: queues[(g+i)%len(queues)], Payload: []byte("x")}
					if err := w.Enqueue(ctx, m, 5*time.Second); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
	enqueueAll(1)
	// Every node forgets the script: the writer loads it again.
	if err := rdb.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		return n.ScriptFlush(ctx).Err()
	}); err != nil {
		t.Fatal(err)
	}
	enqueueAll(2)
	if t.Failed() {
		return
	}
	err := w.Enqueue(ctx, Message{Type: "job", ID: "r1-0-0", Queue: queues[0]}, 5*time.Second)
	if !errors.Is(err, asynq.ErrTaskIDConflict) {
		t.Fatalf("duplicate on a cluster: %v", err)
	}

	ins := asynq.NewInspectorFromRedisClient(rdb)
	total := 0
	for _, q := range queues {
		info, err := ins.GetQueueInfo(q)
		if err != nil {
			t.Fatalf("inspector, queue %s: %v", q, err)
		}
		total += info.Pending
	}
	if want := 2 * callers * each; total != want {
		t.Fatalf("%d tasks pending, want %d", total, want)
	}

	var mu sync.Mutex
	seen := map[string]bool{}
	done := make(chan struct{})
	weights := map[string]int{}
	for _, q := range queues {
		weights[q] = 1
	}
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{Concurrency: 8, Queues: weights, LogLevel: asynq.ErrorLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc("job", func(_ context.Context, task *asynq.Task) error {
		mu.Lock()
		defer mu.Unlock()
		seen[string(task.ResultWriter().TaskID())] = true
		if len(seen) == total {
			select {
			case <-done:
			default:
				close(done)
			}
		}
		return nil
	})
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("asynq processed %d of %d tasks", len(seen), total)
	}
}
