// Command caddy is authtap's whole-system Caddy benchmark. In one run, on one
// machine, it compares plain Caddy (`reverse_proxy` only) with Caddy running
// the authtap handler in front of the same `reverse_proxy`, both proxying to
// the same upstream:
//
//  1. GET /static/app.js, a route no rule can match, at -conns keep-alive
//     connections: requests per second (goal: authtap ≥ 0.98 × plain);
//  2. POST /api/users answered 201, which the rule user-created of
//     rules/examples/basic-users-tenants.yaml turns into a user.created event
//     queued in a real Redis before the response is released, at -conns
//     connections (goal: authtap ≥ 0.85 × plain);
//  3. both again on one connection (concurrency 1): the p50 latency authtap
//     adds (goal: ≤ 0.3 ms).
//
// Run it from the repository root:
//
//	go run ./bench/caddy                       # about 4 minutes with the defaults
//	go run ./bench/caddy -duration 10s -rounds 3 -c1-duration 5s   # longer, fewer runs
//	go run ./bench/caddy -conns 64
//	go run ./bench/caddy -with-worker          # add authtap with its in-process worker on
//	go run ./bench/caddy -profile /tmp/prof    # then: go tool pprof -top /tmp/prof/authtap-post.pprof
//
// What it starts: Caddy built from ./cmd/caddy into a temp dir (or -caddy
// PATH), a private redis-server (internal/redistest.Launch, nothing
// persisted), the upstream as a separate process (this binary re-executed
// with AUTHTAP_BENCH_UPSTREAM set, so it does not share the load generator's
// scheduler), and one Caddy process per target, each from a JSON config with
// admin off (on a loopback port with -profile), logs at WARN and automatic
// HTTPS off. The authtap target's app uses the private Redis (db 0) with the
// in-process worker off, so no delivery competes for CPU and every event stays
// queued; -with-worker adds a third target on db 1 with the worker on (no
// endpoints: each event is fanned out to nobody).
//
// The load generator runs in this process: a fixed number of keep-alive
// connections, each writing a prepared HTTP/1.1 request and reading the
// response in a loop for the run's duration; every latency is kept and
// sorted for p50 and p99. After a warm-up, each round runs every scenario
// against every target, in an order that alternates per round, so drift on
// the machine affects both alike. Runs are short (3 s) and rounds many (10)
// so that each authtap run has a plain run right next to it in time: the
// headline ratio is the median of these per-round ratios (the ratio of the
// medians is printed too). Next to the rates it prints the CPU time per
// request of each process (Caddy, redis-server, upstream, load generator)
// from /proc, which is steadier than the rates on a busy machine and shows
// where an added cost lands, and a CPU-bound estimate of each ratio from it.
//
// Correctness: after the rounds it counts the event:fanout tasks in the
// authtap queue (worker/tasks.QueueFanout) through asynq's Inspector and
// fails unless they equal the 201 responses that went through authtap.
//
// Every process shares the machine's cores, so the POST ratio is a
// whole-system figure: the CPU authtap adds in Caddy and in Redis per event
// is taken from the same cores that serve the requests.
package main
