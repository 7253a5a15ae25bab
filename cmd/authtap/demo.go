package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"

	// the standard Caddy modules (reverse_proxy, rewrite, …) and authtap's own
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/authtap/authtap/caddymodule"
	"github.com/authtap/authtap/rules/examples"
	"github.com/authtap/authtap/worker"
)

func init() {
	register("demo", command{
		usage:   "demo [--traffic] [--listen ADDR]",
		summary: "run a legacy API, Caddy+authtap, an embedded Redis, a worker and a verifying receiver in one process",
		run:     runDemo,
	})
}

const demoPack = "basic-users-tenants.yaml"

func runDemo(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	traffic := fs.Bool("traffic", false, "send a scripted burst of sign-ups, edits and deletions through the proxy")
	listen := fs.String("listen", "127.0.0.1:8080", "address of the proxy (Caddy with authtap); a free port is used when it is taken")
	exit := fs.Bool("exit", false, "with --traffic: exit once every event is verified (status 0) or the wait times out (status 1)")
	wait := fs.Duration("wait", 30*time.Second, "with --exit: how long to wait for the deliveries")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := demo(ctx, demoOptions{traffic: *traffic, listen: *listen, exit: *exit, wait: *wait}, stdout); err != nil {
		fmt.Fprintf(stderr, "authtap demo: %v\n", err)
		return 1
	}
	return 0
}

type demoOptions struct {
	traffic bool
	listen  string
	exit    bool
	wait    time.Duration
}

func demo(ctx context.Context, o demoOptions, out io.Writer) error {
	tmp, err := os.MkdirTemp("", "authtap-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	// 1. The legacy API: knows nothing about webhooks.
	apiLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("starting the demo API: %w", err)
	}
	apiSrv := &http.Server{Handler: newLegacyAPI().handler(), ReadHeaderTimeout: 5 * time.Second}
	go apiSrv.Serve(apiLn)
	defer apiSrv.Close()

	// 2. The subscriber: verifies every signature with the official Standard Webhooks library.
	secret, err := worker.NewSecret()
	if err != nil {
		return err
	}
	rc, err := newReceiver(secret, out)
	if err != nil {
		return err
	}
	rcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("starting the demo receiver: %w", err)
	}
	rcSrv := &http.Server{Handler: rc, ReadHeaderTimeout: 5 * time.Second}
	go rcSrv.Serve(rcLn)
	defer rcSrv.Close()

	// 3. Caddy with authtap in front of the API, the embedded Redis and the in-process worker.
	pack, err := examples.FS.ReadFile(demoPack)
	if err != nil {
		return err
	}
	rulesPath := filepath.Join(tmp, demoPack)
	if err := os.WriteFile(rulesPath, pack, 0o644); err != nil {
		return err
	}
	proxyAddr, err := freeAddr(o.listen)
	if err != nil {
		return err
	}
	receiverURL := "http://" + rcLn.Addr().String() + "/webhooks"
	cfg, hasAdmin, err := demoConfig(proxyAddr, apiLn.Addr().String(), rulesPath, filepath.Join(tmp, "spool"), receiverURL, secret)
	if err != nil {
		return err
	}
	if err := caddy.Load(cfg, true); err != nil {
		return fmt.Errorf("starting Caddy with authtap: %w", err)
	}
	defer caddy.Stop()

	base := "http://" + proxyAddr
	fmt.Fprintf(out, `
authtap demo — everything in this process, nothing to install
  legacy API (direct, not observed)  http://%[1]s/api/users
  through Caddy + authtap            %[2]s/api/users
  subscriber (verifies signatures)   %[3]s
  rules                              rules/examples/%[4]s
`, apiLn.Addr(), base, receiverURL, demoPack)
	if hasAdmin {
		fmt.Fprintf(out, "  monitor (asynqmon)                 %[1]s/_authtap/monitor/\n  management API                     %[1]s/_authtap/webhooks\n", base)
		link, err := demoPortalLink(base, demoTenant)
		if err != nil {
			return fmt.Errorf("issuing the demo's portal link: %w", err)
		}
		fmt.Fprintf(out, "  tenant portal of %-17s %s\n", demoTenant+" (Acme)", link)
	}
	fmt.Fprintf(out, `
Try:  curl -X POST %s/api/users -H 'Content-Type: application/json' \
           -d '{"email":"you@example.test","name":"You","password":"pw"}'
Ctrl-C stops the demo.

`, base)

	if o.traffic {
		want, err := sendTraffic(base, out)
		if err != nil {
			return fmt.Errorf("sending demo traffic: %w", err)
		}
		got, failed := waitVerified(ctx, rc, want, o.wait)
		_, _, summary := rc.counts()
		fmt.Fprintf(out, "\ndemo: %d of %d events delivered and verified, %d deliveries rejected (%s)\n", got, want, failed, summary)
		if o.exit {
			if got < want || failed > 0 {
				return fmt.Errorf("only %d of %d events were delivered and verified (%d rejected)", got, want, failed)
			}
			return nil
		}
	}
	<-ctx.Done()
	fmt.Fprintln(out, "\nstopping")
	return nil
}

// waitVerified waits until the receiver has verified want distinct events, the
// timeout passes or ctx ends.
func waitVerified(ctx context.Context, rc *receiver, want int, timeout time.Duration) (got, failed int) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		got, failed, _ = rc.counts()
		if got >= want {
			return got, failed
		}
		select {
		case <-rc.notify:
		case <-deadline.C:
			return got, failed
		case <-ctx.Done():
			return got, failed
		}
	}
}

// freeAddr returns addr when it can be listened on, else a free port on the same host.
func freeAddr(addr string) (string, error) {
	if ln, err := net.Listen("tcp", addr); err == nil {
		got := ln.Addr().String() // the real port when addr asked for port 0
		ln.Close()
		return got, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--listen %q: %w", addr, err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", fmt.Errorf("--listen %q: %w", addr, err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// demoTenant is the tenant whose portal link the demo prints: the demo API's
// first tenant (Acme, once --traffic or a POST /api/tenants made it).
const demoTenant = "t_1"

// demoPortalLink asks the demo's own management API for a portal link of
// tenant, valid for a day.
func demoPortalLink(base, tenant string) (string, error) {
	body := strings.NewReader(`{"tenant":"` + tenant + `","ttl":"24h"}`)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Post(base+"/_authtap/portal-links", "application/json", body)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	var link struct {
		URL string `json:"url"`
	}
	if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &link) != nil || link.URL == "" {
		return "", fmt.Errorf("POST /_authtap/portal-links: %d %s", resp.StatusCode, b)
	}
	return link.URL, nil
}

// demoAdminHosts lists the Host values the demo's admin API answers: the
// loopback names of the proxy's port, and the proxy's own address when it
// listens on a specific one.
func demoAdminHosts(proxy string) []string {
	host, port, err := net.SplitHostPort(proxy)
	if err != nil {
		return nil
	}
	hosts := []string{net.JoinHostPort("127.0.0.1", port), net.JoinHostPort("localhost", port), net.JoinHostPort("::1", port)}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
		hosts = append(hosts, net.JoinHostPort(ip.String(), port))
	}
	return hosts
}

// demoConfig is the Caddy JSON config of the demo; the Caddyfile equivalent is
// in Caddyfile.example.
func demoConfig(proxy, upstream, rulesPath, spoolDir, receiverURL, secret string) ([]byte, bool, error) {
	_, err := caddy.GetModule("http.handlers.authtap_admin")
	hasAdmin := err == nil
	var routes []any
	if hasAdmin {
		// The demo's admin API has no login, so it answers only requests
		// addressed to its own listener by name: a page whose host name an
		// attacker rebinds to 127.0.0.1 (DNS rebinding) sends its own Host
		// and gets 421 instead of the API.
		hosts := demoAdminHosts(proxy)
		routes = append(routes, map[string]any{
			"match": []any{map[string]any{"path": []string{"/_authtap/*"}, "header": map[string]any{"Host": hosts}}},
			"handle": []any{map[string]any{"handler": "subroute", "routes": []any{map[string]any{"handle": []any{
				map[string]any{"handler": "rewrite", "strip_path_prefix": "/_authtap"},
				map[string]any{"handler": "authtap_admin"},
			}}}}},
			"terminal": true,
		}, map[string]any{
			"match": []any{map[string]any{"path": []string{"/_authtap", "/_authtap/*"}}},
			"handle": []any{map[string]any{
				"handler": "static_response", "status_code": http.StatusMisdirectedRequest,
				"headers": map[string][]string{"Content-Type": {"text/plain; charset=utf-8"}},
				"body":    "the demo's admin API answers only requests for " + strings.Join(hosts, ", ") + "\n",
			}},
			"terminal": true,
		})
		// The tenant portal takes only portal links (such as the one the demo
		// prints), so it needs no Host check. The demo's receivers are local
		// test endpoints, so portal users may make test endpoints here.
		if _, err := caddy.GetModule("http.handlers.authtap_portal"); err == nil {
			routes = append(routes, map[string]any{
				"match": []any{map[string]any{"path": []string{"/portal/*"}}},
				"handle": []any{map[string]any{"handler": "subroute", "routes": []any{map[string]any{"handle": []any{
					map[string]any{"handler": "rewrite", "strip_path_prefix": "/portal"},
					map[string]any{"handler": "authtap_portal", "allow_test_endpoints": true},
				}}}}},
				"terminal": true,
			})
		}
	}
	routes = append(routes, map[string]any{"handle": []any{
		map[string]any{"handler": "authtap", "rules": []string{rulesPath}, "source": "demo-legacy-api", "mode": "test"},
		map[string]any{"handler": "reverse_proxy", "upstreams": []any{map[string]any{"dial": upstream}}},
	}})
	cfg := map[string]any{
		"admin":   map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "WARN", "exclude": []string{"admin"}}}},
		"apps": map[string]any{
			"authtap": map[string]any{
				"spool_dir": spoolDir,
				"endpoints": []any{map[string]any{
					"id": "demo-receiver", "url": receiverURL, "mode": "test", "secret": secret,
					"description": "the demo's verifying receiver", "events": []string{"*"},
				}},
			},
			"http": map[string]any{"servers": map[string]any{"demo": map[string]any{
				"listen":          []string{proxy},
				"automatic_https": map[string]any{"disable": true},
				"protocols":       []string{"h1"}, // plain HTTP on loopback: no TLS, so no HTTP/2 or 3
				"routes":          routes,
			}}},
		},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return nil, false, fmt.Errorf("encoding the demo's Caddy config: %w", err)
	}
	return b, hasAdmin, nil
}
