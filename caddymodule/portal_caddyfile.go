package caddymodule

import (
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("authtap_portal", parsePortalCaddyfile)
	// A responding handler like authtap_admin (see there), also right after
	// metrics: Caddy orders plugins only relative to standard directives.
	httpcaddyfile.RegisterDirectiveOrder("authtap_portal", httpcaddyfile.After, "metrics")
}

func parsePortalCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	p := new(Portal)
	if err := p.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return p, nil
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
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("unexpected argument %q: authtap_portal takes its options in a block", d.Val())
	}
	for d.NextBlock(0) {
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
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 1 {
				return d.Errf("%s: want a positive integer, got %q", opt, d.Val())
			}
			if opt == "max_endpoints" {
				h.MaxEndpoints = n
			} else {
				h.ChangesPerMinute = n
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "prefix":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Prefix = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		default:
			return d.Errf("unrecognized authtap_portal option %q (want frame_ancestors, allow_test_endpoints, max_endpoints, changes_per_minute or prefix)", opt)
		}
	}
	return nil
}

// Interface guard.
var _ caddyfile.Unmarshaler = (*Portal)(nil)
