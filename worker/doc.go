// Package worker delivers authtap's events: it keeps the endpoints (in Redis,
// merged with read-only ones from the configuration), fans each event:fanout
// task out into one webhook:deliver task per subscribed endpoint, signs and
// sends each delivery per the Standard Webhooks spec with retries, records
// every attempt in a bounded delivery log, and disables endpoints that answer
// 410 Gone or keep failing.
//
// The worker runs inside Caddy (the authtap app) or standalone
// ("authtap worker"). It talks to Redis through asynq and go-redis only.
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
// Redis keys start with "authtap:"; the endpoint registry shares one hash tag
// so that its transactions work on Redis Cluster too.
package worker
