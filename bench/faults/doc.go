// Command faults is authtap's whole-system fault recovery benchmark (issue 11).
// Each scenario starts its own real processes — a redis-server with AOF
// persistence on a free loopback port, Caddy built from ./cmd/caddy with the
// authtap handler in front of an upstream in this process, a standalone
// `authtap worker`, and a receiver in this process that verifies every
// delivery's Standard Webhooks signature — sends sign-ups through Caddy at a
// steady rate, injects one fault, ends it, and measures from the fault's end
// until every event the upstream created (every 201) has been delivered:
//
//  1. redis-stop: Redis stopped (SIGTERM, or SIGKILL with -redis-signal kill),
//     restarted with its data on the same port;
//  2. redis-freeze: Redis frozen (SIGSTOP, then SIGCONT);
//  3. worker-kill: the worker SIGKILLed just into a burst, a new one started;
//  4. receiver-short and 5. receiver-long: the receiver down 4 s and 10 s.
//
// Run it from the repository root with
//
//	go run ./bench/faults                                   # about 5 minutes
//	go run ./bench/faults -outage 5s -scenarios redis-stop  # one short scenario
//
// and see bench/faults/README.md for the flags and how to read the table.
package main
