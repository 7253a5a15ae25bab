package caddymodule

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("authtap_portal", handlerDirective[Portal])
	// A responding handler like authtap_admin (see there), also right after
	// metrics: Caddy orders plugins only relative to standard directives.
	httpcaddyfile.RegisterDirectiveOrder("authtap_portal", httpcaddyfile.After, "metrics")
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	authtap_portal [<matcher>] {
//	    frame_ancestors <source>...   # sites that may embed the portal; default none
//	    allow_test_endpoints          # portal users may make test (http, loopback) endpoints
//	    max_endpoints <n>             # per tenant; default 25
//	    changes_per_minute <n>        # per tenant; default 60
//	    prefix <path>                 # the path clients see, when nothing strips it
//	}
func (h *Portal) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if err := blockOnly(d, "authtap_portal"); err != nil {
		return err
	}
	for d.NextBlock(0) {
		var err error
		switch opt := d.Val(); opt {
		case "frame_ancestors":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.FrameAncestors = append(h.FrameAncestors, args...)
		case "allow_test_endpoints":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.AllowTestEndpoints = true
		case "max_endpoints", "changes_per_minute":
			var v string
			if v, err = oneArg(d); err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return d.Errf("%s: want a positive integer, got %q", opt, v)
			}
			if opt == "max_endpoints" {
				h.MaxEndpoints = n
			} else {
				h.ChangesPerMinute = n
			}
		case "prefix":
			h.Prefix, err = oneArg(d)
		default:
			return d.Errf("unrecognized authtap_portal option %q (want frame_ancestors, allow_test_endpoints, max_endpoints, changes_per_minute or prefix)", opt)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Portal)(nil)
