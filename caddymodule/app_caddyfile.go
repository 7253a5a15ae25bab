package caddymodule

import (
	"net/netip"
	"strconv"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

// parseGlobalOption parses the global option that configures the app:
//
//	{
//		authtap {
//			redis <url>
//			worker [off] {
//				concurrency <n>
//				delivery_timeout <duration>
//				shutdown_timeout <duration>
//				allow <cidr...>
//				recovery_interval <duration>
//				run_lease <duration>
//				fanout_retry <first> <max>
//				probe_interval <duration>
//			}
//			spool_dir <path>
//			spool_max_size <size>
//			enqueue_timeout <duration>
//			spool_probe_interval <duration>
//			endpoint <id> {
//				url <url>
//				events <filter...>
//				mode live|test
//				tenant <id>
//				secret <whsec_…>
//				bearer_token <token>
//				event_header <name>
//				format envelope|data
//				description <text>
//				rate_limit <per second>
//				max_concurrency <n>
//				disabled
//			}
//		}
//	}
//
// A bare "authtap" (no block) configures the defaults: the embedded Redis and
// the in-process worker.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the authtap global option may appear only once")
	}
	app := new(App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "authtap", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from Caddyfile tokens; see parseGlobalOption for the syntax.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "redis":
			if !d.NextArg() {
				return d.ArgErr()
			}
			a.Redis = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "worker":
			if a.Worker != nil {
				return d.Err("worker given more than once")
			}
			wc, err := parseWorker(d)
			if err != nil {
				return err
			}
			a.Worker = wc
		case "spool_dir":
			if !d.NextArg() {
				return d.ArgErr()
			}
			a.SpoolDir = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "spool_max_size":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(d.Val())
			if err != nil || n == 0 || n > 1<<50 {
				return d.Errf("spool_max_size: invalid size %q (e.g. 512MiB, 1GiB)", d.Val())
			}
			a.SpoolMaxSize = int64(n)
			if d.NextArg() {
				return d.ArgErr()
			}
		case "enqueue_timeout":
			dur, err := parseDurationArg(d, "enqueue_timeout")
			if err != nil {
				return err
			}
			a.EnqueueTimeout = dur
		case "spool_probe_interval":
			dur, err := parseDurationArg(d, "spool_probe_interval")
			if err != nil {
				return err
			}
			a.SpoolProbeInterval = dur
		case "endpoint":
			ep, err := parseEndpoint(d)
			if err != nil {
				return err
			}
			a.Endpoints = append(a.Endpoints, ep)
		default:
			return d.Errf("unrecognized authtap option %q (want redis, worker, spool_dir, spool_max_size, enqueue_timeout, spool_probe_interval or endpoint)", d.Val())
		}
	}
	return nil
}

// handlerDirective is the Caddyfile parser of a handler directive whose
// handler reads its own tokens: a new *T, unmarshaled.
func handlerDirective[T any, P interface {
	*T
	caddyhttp.MiddlewareHandler
	caddyfile.Unmarshaler
}](h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	p := P(new(T))
	if err := p.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return p, nil
}

// blockOnly reads the name of a directive that takes its options in a block
// only, refusing an argument after it.
func blockOnly(d *caddyfile.Dispenser, directive string) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("unexpected argument %q: %s takes its options in a block", d.Val(), directive)
	}
	return nil
}

// oneArg reads the one argument of the option at hand.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return v, nil
}

// parseDurationArg reads the one positive duration argument of the option named name.
func parseDurationArg(d *caddyfile.Dispenser, name string) (caddy.Duration, error) {
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s: invalid duration %q (e.g. 250ms, 2s)", name, d.Val())
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return caddy.Duration(dur), nil
}

// parseWorker parses "worker [on|off] { … }".
func parseWorker(d *caddyfile.Dispenser) (*WorkerConfig, error) {
	wc := new(WorkerConfig)
	if d.NextArg() {
		switch d.Val() {
		case "on":
			wc.Enabled = new(true)
		case "off":
			wc.Enabled = new(false)
		default:
			return nil, d.Errf("worker: unexpected argument %q (want on or off)", d.Val())
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "concurrency":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 {
				return nil, d.Errf("worker concurrency: want a positive number, got %q", d.Val())
			}
			wc.Concurrency = n
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "delivery_timeout":
			dur, err := parseDurationArg(d, "worker delivery_timeout")
			if err != nil {
				return nil, err
			}
			wc.DeliveryTimeout = dur
		case "shutdown_timeout":
			dur, err := parseDurationArg(d, "worker shutdown_timeout")
			if err != nil {
				return nil, err
			}
			wc.ShutdownTimeout = dur
		case "allow":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			for {
				if _, err := netip.ParsePrefix(d.Val()); err != nil {
					return nil, d.Errf("worker allow: %q is not an address range (e.g. 10.0.0.0/8)", d.Val())
				}
				wc.Allowlist = append(wc.Allowlist, d.Val())
				if !d.NextArg() {
					break
				}
			}
		case "recovery_interval":
			dur, err := parseDurationArg(d, "worker recovery_interval")
			if err != nil {
				return nil, err
			}
			wc.RecoveryInterval = dur
		case "run_lease":
			dur, err := parseDurationArg(d, "worker run_lease")
			if err != nil {
				return nil, err
			}
			wc.RunLease = dur
		case "fanout_retry":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return nil, d.Errf("worker fanout_retry: want the first delay and the cap (e.g. fanout_retry 1s 30s), got %d values", len(args))
			}
			for i, a := range args {
				dur, err := caddy.ParseDuration(a)
				if err != nil || dur <= 0 {
					return nil, d.Errf("worker fanout_retry: invalid duration %q (e.g. 1s 30s)", a)
				}
				if i == 0 {
					wc.FanoutRetryFirst = caddy.Duration(dur)
				} else {
					wc.FanoutRetryMax = caddy.Duration(dur)
				}
			}
		case "probe_interval":
			dur, err := parseDurationArg(d, "worker probe_interval")
			if err != nil {
				return nil, err
			}
			wc.ProbeInterval = dur
		default:
			return nil, d.Errf("unrecognized worker option %q (want concurrency, delivery_timeout, shutdown_timeout, allow, recovery_interval, run_lease, fanout_retry or probe_interval)", d.Val())
		}
	}
	if err := wc.check(); err != nil {
		return nil, d.Err(err.Error())
	}
	return wc, nil
}

// parseEndpoint parses "endpoint <id> { … }".
func parseEndpoint(d *caddyfile.Dispenser) (worker.EndpointConfig, error) {
	var ep worker.EndpointConfig
	if !d.NextArg() {
		return ep, d.Errf("endpoint: missing id (e.g. endpoint crm { … })")
	}
	ep.ID = d.Val()
	if d.NextArg() {
		return ep, d.ArgErr()
	}
	one := func(field string) (string, error) {
		if !d.NextArg() {
			return "", d.ArgErr()
		}
		v := d.Val()
		if d.NextArg() {
			return "", d.Errf("endpoint %s %s: want one value, got another: %q", ep.ID, field, d.Val())
		}
		return v, nil
	}
	var err error
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch field := d.Val(); field {
		case "url":
			ep.URL, err = one(field)
		case "events":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return ep, d.ArgErr()
			}
			ep.Events = append(ep.Events, args...)
		case "mode":
			ep.Mode, err = one(field)
			if err == nil && ep.Mode != "live" && ep.Mode != "test" {
				return ep, d.Errf("endpoint %s mode: want live or test, got %q", ep.ID, ep.Mode)
			}
		case "tenant":
			ep.Tenant, err = one(field)
			if err == nil {
				if terr := rules.ValidTenant(ep.Tenant); terr != nil {
					return ep, d.Errf("endpoint %s tenant: %v", ep.ID, terr)
				}
			}
		case "secret":
			ep.Secret, err = one(field)
		case "bearer_token":
			ep.BearerToken, err = one(field)
		case "event_header":
			ep.EventHeader, err = one(field)
		case "format":
			ep.Format, err = one(field)
			if err == nil && ep.Format != worker.FormatEnvelope && ep.Format != worker.FormatData {
				return ep, d.Errf("endpoint %s format: want envelope or data, got %q", ep.ID, ep.Format)
			}
		case "description":
			ep.Description, err = one(field)
		case "rate_limit":
			var v string
			if v, err = one(field); err == nil {
				f, perr := strconv.ParseFloat(v, 64)
				if perr != nil || f <= 0 {
					return ep, d.Errf("endpoint %s rate_limit: want deliveries per second (e.g. 10 or 0.5), got %q", ep.ID, v)
				}
				ep.RateLimit = f
			}
		case "max_concurrency":
			var v string
			if v, err = one(field); err == nil {
				n, perr := strconv.Atoi(v)
				if perr != nil || n < 1 || n > worker.MaxMaxConcurrency {
					return ep, d.Errf("endpoint %s max_concurrency: want 1 to %d, got %q", ep.ID, worker.MaxMaxConcurrency, v)
				}
				ep.MaxConcurrency = n
			}
		case "disabled":
			if d.NextArg() {
				return ep, d.ArgErr()
			}
			ep.Disabled = true
		default:
			return ep, d.Errf("unrecognized endpoint option %q (want url, events, mode, tenant, secret, bearer_token, event_header, format, description, rate_limit, max_concurrency or disabled)", field)
		}
		if err != nil {
			return ep, err
		}
	}
	if ep.URL == "" {
		return ep, d.Errf("endpoint %s: missing url", ep.ID)
	}
	if ep.Secret == "" {
		return ep, d.Errf("endpoint %s: missing secret (e.g. secret {env.WEBHOOK_SECRET})", ep.ID)
	}
	return ep, nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*App)(nil)
