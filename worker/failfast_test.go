package worker

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/worker/enqueue"
)

// refusedAddr is a loopback address nothing listens on.
func refusedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// A fail-fast client's command, dial and retries included, ends by the
// caller's deadline: at once when the connection is refused (go-redis's
// default dials five times, 100ms apart), at the deadline when Redis hangs
// (its default read timeout is seconds).
func TestFailFastRedisClient(t *testing.T) {
	const deadline = 250 * time.Millisecond
	for _, tc := range []struct {
		name    string
		addr    string
		atLeast time.Duration // the wait the failure itself must cost
		within  time.Duration
	}{
		// Generous bounds for a loaded machine; go-redis's defaults take the
		// whole deadline when refused, and 5s (its read timeout) when hanging.
		{"refused", refusedAddr(t), 0, 150 * time.Millisecond},
		{"hanging", redistest.Hanging(t), deadline - 10*time.Millisecond, deadline + 750*time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, opt := range []asynq.RedisConnOpt{
				asynq.RedisClientOpt{Addr: tc.addr},
				asynq.RedisClusterClientOpt{Addrs: []string{tc.addr}},
			} {
				c, err := FailFastRedisClient(opt)
				if err != nil {
					t.Fatal(err)
				}
				for i := range 3 { // the second and third find a pool that saw failures
					ctx, cancel := context.WithTimeout(context.Background(), deadline)
					start := time.Now()
					err := c.Ping(ctx).Err()
					took := time.Since(start)
					cancel()
					if err == nil {
						t.Fatalf("%T: PING %d answered", opt, i)
					}
					if took < tc.atLeast || took > tc.within {
						t.Errorf("%T: PING %d failed after %s (%v), want %s to %s", opt, i, took, err, tc.atLeast, tc.within)
					}
				}
				_ = c.Close()
			}
		})
	}

	// Against a real Redis it is an ordinary client.
	srv := redistest.Start(t)
	opt, err := ParseRedisURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := FailFastRedisClient(opt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*redis.Client); !ok {
		t.Fatalf("client is %T", c)
	}
	if err := c.Set(context.Background(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// With no deadline, a hanging Redis is given up after FailFastTimeout, not never.
	if FailFastTimeout <= 0 || FailFastTimeout > 10*time.Second {
		t.Fatalf("FailFastTimeout = %s", FailFastTimeout)
	}
}

// The enqueue writer on a fail-fast client: a round trip to a hanging Redis
// ends when its caller stops waiting (its enqueue timeout), not after the
// writer's 5s round-trip timeout, so the next batch is not held up.
func TestWriterRoundTripEndsWithItsCaller(t *testing.T) {
	c, err := FailFastRedisClient(asynq.RedisClientOpt{Addr: redistest.Hanging(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ended := make(chan time.Time, 4)
	w := enqueue.New(c, enqueue.Options{OnRoundTrip: func(err error) {
		if err != nil {
			ended <- time.Now()
		}
	}})
	defer w.Close()
	const timeout = 200 * time.Millisecond
	start := time.Now()
	err = w.Enqueue(context.Background(), enqueue.Message{Type: "t", ID: "id1", Payload: []byte("{}")}, timeout)
	if err == nil {
		t.Fatal("enqueue to a hanging Redis succeeded")
	}
	select {
	case at := <-ended:
		if took := at.Sub(start); took > timeout+300*time.Millisecond {
			t.Fatalf("the round trip ended %s after it began, want about %s", took, timeout)
		}
	case <-time.After(enqueue.DefaultRoundTripTimeout):
		t.Fatal("the round trip did not end within the writer's round-trip timeout")
	}
}
