package admin_test

import (
	"log"
	"net/http"
	"os"

	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/admin"
	"github.com/authtap/authtap/worker"
)

// ExampleNewAPI serves the management API of a worker on its own port,
// behind a bearer token, as "authtap worker --admin" does.
func ExampleNewAPI() {
	opt, err := worker.ParseRedisURL("redis://127.0.0.1:6379/0")
	if err != nil {
		log.Fatal(err)
	}
	w, err := worker.New(worker.Config{Redis: opt})
	if err != nil {
		log.Fatal(err)
	}
	api, err := admin.NewAPI(admin.APIConfig{
		Store:     w.Store(),
		Client:    w.Client(),
		Inspector: asynq.NewInspector(opt),
	})
	if err != nil {
		log.Fatal(err)
	}
	token := os.Getenv("AUTHTAP_ADMIN_TOKEN")
	if token == "" {
		log.Fatal("AUTHTAP_ADMIN_TOKEN is not set")
	}
	mux := http.NewServeMux()
	authed, err := admin.RequireBearer(token, api)
	if err != nil {
		log.Fatal(err)
	}
	mux.Handle("/", authed)
	// Mounted under a prefix instead: mux.Handle("/admin/", http.StripPrefix("/admin", ...)).
	log.Fatal(http.ListenAndServe("127.0.0.1:8081", mux))
}
