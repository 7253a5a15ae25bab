package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

// adminServer is the standalone worker's management API with asynqmon at /monitor/.
type adminServer struct {
	addr string
	srv  *http.Server
	mon  *asynqmon.HTTPHandler
}

// startAdmin serves the management API behind the bearer token on addr.
func startAdmin(addr, token string, opt asynq.RedisConnOpt, w *worker.Worker, cfg worker.Config, eventTypes func() []rules.EventType) (*adminServer, error) {
	mon := asynqmon.New(asynqmon.Options{RootPath: "/monitor", RedisConnOpt: opt})
	api, err := worker.NewAPI(worker.APIConfig{
		Store: w.Store(), Client: w.Client(), EventTypes: eventTypes, Retry: cfg.Retry, Logger: cfg.Logger, Monitor: mon,
		CheckLiveURL: w.CheckLiveURL,
	})
	if err != nil {
		mon.Close()
		return nil, fmt.Errorf("building the management API: %w", err)
	}
	authed, err := worker.RequireBearer(token, api)
	if err != nil {
		mon.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		mon.Close()
		return nil, fmt.Errorf("listening for the management API on %s: %w", addr, err)
	}
	s := &adminServer{addr: ln.Addr().String(), mon: mon, srv: &http.Server{
		Handler: authed, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
	}}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Logger.Sugar().Errorw("management API stopped", "error", err)
		}
	}()
	return s, nil
}

func (s *adminServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	_ = s.mon.Close()
}
