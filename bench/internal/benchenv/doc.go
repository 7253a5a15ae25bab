// Package benchenv describes the machine and build a whole-system benchmark
// under bench/ runs on, for the header and footer of its report, so that a
// figure in BENCHMARKS.md can be traced to its load and commit.
package benchenv
