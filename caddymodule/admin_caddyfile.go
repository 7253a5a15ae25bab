package caddymodule

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("authtap_admin", handlerDirective[Admin])
	// authtap_admin answers every request it gets, like metrics (another
	// operational endpoint): it goes with the responding handlers, after
	// respond and metrics and before reverse_proxy, php_fastcgi and
	// file_server, so that `authtap_admin /_authtap/*` next to a catch-all
	// reverse_proxy is not shadowed by it. (Inside handle_path it is usually
	// alone with basic_auth, which always runs first.)
	httpcaddyfile.RegisterDirectiveOrder("authtap_admin", httpcaddyfile.After, "metrics")
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	authtap_admin [<matcher>] {
//	    prefix  <path>               # the path clients see, e.g. /_authtap
//	    monitor on|off|read_only     # the asynqmon UI at /monitor/; default on
//	    portal_url <url>             # where authtap_portal is, for portal links
//	}
func (h *Admin) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := blockOnly(d, "authtap_admin"); err != nil {
		return err
	}
	for d.NextBlock(0) {
		var err error
		switch opt := d.Val(); opt {
		case "prefix":
			h.Prefix, err = oneArg(d)
		case "monitor":
			var v string
			if v, err = oneArg(d); err != nil {
				return err
			}
			switch v {
			case "on":
				h.DisableMonitor, h.MonitorReadOnly = false, false
			case "off":
				h.DisableMonitor, h.MonitorReadOnly = true, false
			case "read_only":
				h.DisableMonitor, h.MonitorReadOnly = false, true
			default:
				return d.Errf("monitor: want on, off or read_only, got %q", v)
			}
		case "portal_url":
			h.PortalURL, err = oneArg(d)
		default:
			return d.Errf("unrecognized authtap_admin option %q (want prefix, monitor or portal_url)", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Admin)(nil)
