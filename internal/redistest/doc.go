// Package redistest starts a private, throw-away redis-server for tests: on a
// free loopback port, with nothing persisted, stopped when the test ends. Tests
// never use a Redis they did not start (such as one on 6379) and never share
// data with another test.
//
//	srv := redistest.Start(t)
//	client := redis.NewClient(&redis.Options{Addr: srv.Addr})
package redistest
