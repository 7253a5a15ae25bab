package caddymodule

import (
	"fmt"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"
)

// newEmbeddedBackend starts the embedded in-memory Redis (miniredis) on a
// loopback port and connects to it. It is for trying authtap out: everything
// in it is lost when Caddy stops.
//
// asynq works against miniredis v2.40: its Lua scripts (enqueue with a task
// id, dequeue, retry, archive, completion with retention) run on miniredis's
// Lua engine, and asynq computes lease and schedule times itself. What needs
// care is key expiry: miniredis only counts TTLs down when told to (FastForward)
// unless ClockTTL is on, and asynq's unique locks, the worker's rate and
// concurrency leases and the delivery-log retention all rely on TTLs. ClockTTL
// makes TTLs follow the wall clock, which is what a real Redis does; no ticker
// is needed. TestEmbeddedRedisExpiresKeys and TestEmbeddedWorkerDelivers check
// this.
func newEmbeddedBackend() (*backend, error) {
	m := miniredis.NewMiniRedis()
	m.ClockTTL(true)
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("starting embedded redis: %w", err)
	}
	b, err := newBackend(asynq.RedisClientOpt{Addr: m.Addr()})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("starting embedded redis: %w", err)
	}
	b.embedded, b.mini = true, m
	return b, nil
}
