// Package worker delivers authtap's events: it keeps the endpoints (in Redis,
// merged with read-only ones from the configuration), fans each event:fanout
// task out into one webhook:deliver task per subscribed endpoint, signs and
// sends each delivery per the Standard Webhooks spec with retries, records
// every attempt in a bounded delivery log, and disables endpoints that answer
// 410 Gone or keep failing (announcing it with an endpoint.disabled event).
//
// The worker runs inside Caddy (the authtap app) or standalone
// ("authtap worker"). It talks to Redis through asynq and go-redis; the
// fan-out enqueues its deliveries in batches through worker/enqueue. It is
// delivery and nothing else: the management API and the tenant portal, which
// work on its Store, and the coverage store of unmatched route shapes live in
// package admin.
//
//	opt, err := worker.ParseRedisURL("redis://127.0.0.1:6379/0")
//	w, err := worker.New(worker.Config{Redis: opt, Logger: logger})
//	if err := w.Start(); err != nil { … }
//	defer w.Shutdown()
//	ep, err := w.Store().Create(ctx, worker.EndpointConfig{
//		URL: "https://hooks.example.com/authtap", Events: []string{"user.*"},
//	})
//	fmt.Println(ep.Secret()) // shown once
//
// Pieces, one file each: endpoint.go (the Endpoint model, validation and
// event-type filters), store.go (the endpoint registry), fanout.go and
// deliver.go (the two asynq handlers), attempts.go (delivery log and event
// index), limits.go (per-endpoint concurrency and rate limits, kept in Redis
// so they hold across workers), drain.go (the deliveries waiting for an
// endpoint, in line for a slot or on the retry schedule, handed its free
// slots oldest first, and the probe of a failing endpoint), worker.go (Config, New, Start, Shutdown),
// redisurl.go (Redis URLs, including redis-sentinel:// and redis-cluster://),
// recover.go (run locks, and the recovery of tasks whose worker is gone within
// seconds instead of asynq's minute), presence.go (the per-worker connection
// whose closing tells a killed worker from a stopped one);
// secret.go, sign.go, send.go, ssrf.go and retry.go are the delivery core.
//
// Redis keys start with "authtap:". The endpoint registry shares the hash tag
// {authtap-endpoints} and an endpoint's limit keys, line and waiting list the tag
// {<endpoint id>}, so
// that every transaction and script works on Redis Cluster too; a task's run
// lock, authtap:{<queue>}:run:<task id>, shares asynq's tag {<queue>}. A
// presence connection blocks on authtap:presence:<its name>, which holds
// nothing. Attempts and
// events expire after Config.Retention (14 days); at most
// Config.MaxAttemptsPerEndpoint (10000) attempts are kept per endpoint.
package worker
