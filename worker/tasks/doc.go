// Package tasks holds authtap's asynq task contract: the task type names, the
// queues, the payload structs, their constructors and their parsers. The Caddy
// handler enqueues [TypeFanout] tasks; workers process them and enqueue one
// [TypeDeliver] task per subscribed endpoint.
//
// Payloads are plain JSON so they read well in asynqmon. Secrets never go
// into a payload: a delivery task names its endpoint, and the worker looks the
// endpoint's secrets up when it sends.
//
//	task, err := tasks.NewFanoutTask(ev)
//	info, err := client.EnqueueContext(ctx, task)
package tasks
