package caddymodule

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("authtap_admin", parseAdminCaddyfile)
	// authtap_admin answers every request it gets, like metrics (another
	// operational endpoint): it goes with the responding handlers, after
	// respond and metrics and before reverse_proxy, php_fastcgi and
	// file_server, so that `authtap_admin /_authtap/*` next to a catch-all
	// reverse_proxy is not shadowed by it. (Inside handle_path it is usually
	// alone with basic_auth, which always runs first.)
	httpcaddyfile.RegisterDirectiveOrder("authtap_admin", httpcaddyfile.After, "metrics")
}

func parseAdminCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	a := new(Admin)
	if err := a.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return a, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	authtap_admin [<matcher>] {
//	    prefix  <path>               # the path clients see, e.g. /_authtap
//	    monitor on|off|read_only     # the asynqmon UI at /monitor/; default on
//	    portal_url <url>             # where authtap_portal is, for portal links
//	}
func (h *Admin) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("unexpected argument %q: authtap_admin takes its options in a block", d.Val())
	}
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "prefix":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Prefix = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "monitor":
			if !d.NextArg() {
				return d.ArgErr()
			}
			switch v := d.Val(); v {
			case "on":
				h.DisableMonitor, h.MonitorReadOnly = false, false
			case "off":
				h.DisableMonitor, h.MonitorReadOnly = true, false
			case "read_only":
				h.DisableMonitor, h.MonitorReadOnly = false, true
			default:
				return d.Errf("monitor: want on, off or read_only, got %q", v)
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "portal_url":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.PortalURL = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized authtap_admin option %q (want prefix, monitor or portal_url)", opt)
		}
	}
	return nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Admin)(nil)
