// Command worker is authtap's whole-system worker benchmark. In one run it
// starts a private redis-server and a loopback webhook receiver, then measures
//
//  1. throughput: deliveries per second from one worker, for a backlog of
//     queued events (each fanned out and delivered to one endpoint);
//  2. latency: queued → received, with events enqueued at a steady pace;
//  3. idle cost: Redis commands per second of a worker with nothing to do.
//
// Run it with
//
//	go run ./bench/worker
//
// and see bench/worker/README.md for the flags and how to read the output.
package main
