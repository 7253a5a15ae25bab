package enqueue

import (
	"context"
	"errors"
	"fmt"
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
		enqueueConcurrently(t, w, callers, each, 5*time.Second, func(g, i int) Message {
			return Message{Type: "job", ID: fmt.Sprintf("r%d-%d-%d", round, g, i), Queue: queues[(g+i)%len(queues)], Payload: []byte("x")}
		})
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

	processAll(t, rdb, queues, total)
}
