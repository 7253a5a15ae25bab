// Command backlog measures how fast one endpoint's backlog drains through its
// concurrency (and rate) limit (issue 11): it queues -n events for an
// endpoint with -max-concurrency slots and -others for a second endpoint,
// starts a standalone `authtap worker` on them, and times the deliveries at a
// receiver in this process that takes -receiver-delay over each. Each binary
// of -authtap runs -runs times, alternated, each run on a fresh private
// redis-server, so that an old and a new build are measured in the same
// session.
//
// Run it from the repository root with
//
//	go run ./bench/backlog                                   # the current tree
//	go run ./bench/backlog -authtap /tmp/authtap-old,new     # an old build next to it
//
// and see bench/backlog/README.md for the flags and how to read the table.
package main
