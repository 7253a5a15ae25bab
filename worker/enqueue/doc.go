// Package enqueue puts asynq tasks into Redis in batches: the enqueues of
// concurrent callers that arrive while a round trip is in flight go together
// in the next one (a group commit), as one script call per queue.
//
// asynq's Client makes one Redis round trip and one script call per task. At
// the rate of an HTTP proxy that waits for every enqueue, that round trip costs
// more CPU, on both sides, than everything else the proxy adds. A [Writer]
// writes the same keys and values as asynq.Client.Enqueue for a task without a
// schedule, group or uniqueness lock: the task hash (msg, state "pending",
// pending_since) under asynq:{queue}:t:<id>, its id pushed onto
// asynq:{queue}:pending, and the queue named in asynq:queues (again at most
// every second, so a Redis that lost its data lists it again). The message is
// asynq's TaskMessage protobuf, encoded here field by field in the order
// protobuf-go writes it. A task id that already exists is refused with
// asynq.ErrTaskIDConflict, as asynq refuses it.
//
// Under load the writer lets the ready goroutines run before a round trip so
// that more callers join it; an idle writer sends at once. A round trip ends
// when the last of its callers stops waiting (with a client whose waits follow
// the context, such as worker.FailFastRedisClient, the dial, read and write end
// then too), so a Redis that hangs holds up the next batch no longer than its
// callers' timeouts. [Writer.EnqueueBatch] hands several tasks over in their
// order (the Caddy app's spool replay); Options.OnRoundTrip reports each round
// trip's outcome.
//
// The layout is asynq's internal one (v0.26); the tests pin it by comparing,
// byte for byte, what a Writer and asynq.Client write for the same task, and
// by running the tasks through an asynq server.
//
//	w := enqueue.New(rdb, enqueue.Options{})
//	defer w.Close()
//	err := w.Enqueue(ctx, enqueue.Message{Type: "event:fanout", ID: id, Queue: "authtap_fanout", Payload: b}, time.Second)
package enqueue
