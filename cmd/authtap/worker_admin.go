package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"go.uber.org/zap"

	"github.com/authtap/authtap/admin"
	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

// adminServer is the standalone worker's management API with asynqmon at
// /monitor/ and the tenant portal at /portal/.
type adminServer struct {
	addr string
	srv  *http.Server
	mon  *asynqmon.HTTPHandler
}

// adminListenAddr applies the --admin address rule: a bare port ("8081" or
// ":8081") means 127.0.0.1:8081, so the management API stays on this
// machine unless a host is named; any other host:port is used as given.
func adminListenAddr(addr string) (string, error) {
	if isPort(addr) {
		return net.JoinHostPort("127.0.0.1", addr), nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || !isPort(port) {
		return "", fmt.Errorf("--admin %q: want a port (8081, meaning 127.0.0.1:8081) or host:port (127.0.0.1:8081, [::1]:8081, 0.0.0.0:8081)", addr)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// isPort reports whether s is a decimal port number, 0 to 65535.
func isPort(s string) bool {
	n, err := strconv.Atoi(s)
	return err == nil && n >= 0 && n <= 65535 && strconv.Itoa(n) == s
}

// listenAdmin listens on the --admin address (see adminListenAddr) and warns
// when what it bound is not a loopback address: then anyone who can reach the
// port can try the admin token.
func listenAdmin(addr string, log *zap.Logger) (net.Listener, error) {
	a, err := adminListenAddr(addr)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", a)
	if err != nil {
		return nil, fmt.Errorf("listening for the management API on %s: %w", a, err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		log.Warn("the management API listens on a non-loopback address: anyone who can reach it can try the admin token; "+
			"give a bare port (--admin 8081) to keep it on 127.0.0.1",
			zap.String("addr", ln.Addr().String()))
	}
	return ln, nil
}

// portalOptions are the --portal-* flags.
type portalOptions struct {
	url            string
	frameAncestors []string
	testEndpoints  bool
}

// startAdmin serves the management API on addr (see adminListenAddr) behind
// the browser guard (admin.BrowserGuard: cross-origin and framing
// protection, as Caddy's authtap_admin has) and the bearer token, and the
// tenant portal under /portal/, which takes portal links only (its own
// cross-origin check and framing policy; the admin token opens nothing there).
func startAdmin(addr, token string, opt asynq.RedisConnOpt, w *worker.Worker, cfg worker.Config, eventTypes func() []rules.EventType, po portalOptions) (*adminServer, error) {
	mon := asynqmon.New(asynqmon.Options{RootPath: "/monitor", RedisConnOpt: opt})
	apiCfg := admin.APIConfig{
		Store: w.Store(), Client: w.Client(), EventTypes: eventTypes, Retry: cfg.Retry, Logger: cfg.Logger, Monitor: mon,
		CheckEndpointURL: w.CheckEndpointURL, PortalURL: po.url,
	}
	api, err := admin.NewAPI(apiCfg)
	if err != nil {
		mon.Close()
		return nil, fmt.Errorf("building the management API: %w", err)
	}
	authed, err := admin.RequireBearer(token, api)
	if err != nil {
		mon.Close()
		return nil, err
	}
	apiCfg.Monitor = nil
	portal, err := admin.NewPortal(admin.PortalConfig{APIConfig: apiCfg, FrameAncestors: po.frameAncestors, AllowTestEndpoints: po.testEndpoints})
	if err != nil {
		mon.Close()
		return nil, fmt.Errorf("building the portal: %w", err)
	}
	mux := http.NewServeMux()
	// The guard goes first, so that refusals and 401s forbid framing too.
	mux.Handle("/", admin.NewBrowserGuard().Handler(authed))
	mux.Handle("/portal/", http.StripPrefix("/portal", portal))
	ln, err := listenAdmin(addr, cfg.Logger)
	if err != nil {
		mon.Close()
		return nil, err
	}
	s := &adminServer{addr: ln.Addr().String(), mon: mon, srv: &http.Server{
		Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute,
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
