package caddymodule

import (
	"strconv"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/authtap/authtap/admin"
	"github.com/authtap/authtap/rules"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("authtap", parseCaddyfile)
	// inside encode: authtap sees the upstream's body before Caddy compresses it
	httpcaddyfile.RegisterDirectiveOrder("authtap", httpcaddyfile.After, "encode")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	if err := m.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return m, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	authtap [<matcher>] {
//	    rules           <files or globs...>
//	    source          <name>
//	    mode            live|test
//	    max_body        <size>          # e.g. 1MiB, 512KB, 65536
//	    lookup_upstream <url>
//	    before_lookup_budget <duration> # e.g. 2s: the most a request waits for before-lookups
//	    reload_interval <duration>      # e.g. 2s; off disables reloading
//	    coverage        off             # or: coverage { samples <n> }, n from 0 (count only) to 10; default 3
//	}
//
// At least one rule file is required. Rule files are not taken on the first
// line, where a path would read as a request matcher.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.Errf("unexpected argument %q: give rule files with the rules option inside the block", d.Val())
	}
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "rules":
			files := d.RemainingArgs()
			if len(files) == 0 {
				return d.ArgErr()
			}
			h.Rules = append(h.Rules, files...)
		case "source":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Source = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "mode":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if v := d.Val(); v != rules.ModeLive && v != rules.ModeTest {
				return d.Errf("mode: want live or test, got %q", v)
			}
			h.Mode = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "max_body":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := humanize.ParseBytes(d.Val())
			if err != nil || n == 0 || n > 1<<40 {
				return d.Errf("max_body: want a size such as 1MiB or 65536, got %q", d.Val())
			}
			h.MaxBody = int64(n)
			if d.NextArg() {
				return d.ArgErr()
			}
		case "lookup_upstream":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.LookupUpstream = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "before_lookup_budget":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 || dur > MaxBeforeLookupBudget {
				return d.Errf("before_lookup_budget: want a duration from 1ms to %s such as 2s, got %q", MaxBeforeLookupBudget, d.Val())
			}
			h.BeforeLookupBudget = caddy.Duration(dur)
			if d.NextArg() {
				return d.ArgErr()
			}
		case "reload_interval":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if d.Val() == "off" {
				h.ReloadInterval = -1
			} else {
				dur, err := caddy.ParseDuration(d.Val())
				if err != nil || dur <= 0 {
					return d.Errf("reload_interval: want a duration such as 2s, or off, got %q", d.Val())
				}
				h.ReloadInterval = caddy.Duration(dur)
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "coverage":
			if h.Coverage != nil {
				return d.Err("coverage given more than once")
			}
			cc, err := parseCoverage(d)
			if err != nil {
				return err
			}
			h.Coverage = cc
		default:
			return d.Errf("unrecognized authtap option %q (want rules, source, mode, max_body, lookup_upstream, before_lookup_budget, reload_interval or coverage)", opt)
		}
	}
	if len(h.Rules) == 0 {
		return d.Err("authtap: missing rules: give rule files or globs with `rules FILE...` inside the block (a path on the directive line is a request matcher)")
	}
	if h.LookupUpstream != "" {
		if err := (&Handler{Rules: h.Rules, LookupUpstream: h.LookupUpstream}).Validate(); err != nil {
			return d.Errf("%v", err)
		}
	}
	return nil
}

// parseCoverage reads `coverage off`, `coverage on` or
//
//	coverage {
//	    samples <n>   # 0 to 10; 0 counts without keeping samples
//	}
func parseCoverage(d *caddyfile.Dispenser) (*CoverageConfig, error) {
	cc := &CoverageConfig{}
	if d.NextArg() {
		switch d.Val() {
		case "off":
			cc.Disabled = true
		case "on":
		default:
			return nil, d.Errf("coverage: want off, on or a block, got %q", d.Val())
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch d.Val() {
		case "samples":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil || n < 0 || n > admin.MaxUnmatchedSamples {
				return nil, d.Errf("coverage: samples: want a number from 0 (count only) to %d, got %q", admin.MaxUnmatchedSamples, d.Val())
			}
			cc.Samples = n
			if n == 0 {
				cc.Samples = -1 // JSON: negative keeps none
			}
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		default:
			return nil, d.Errf("coverage: unrecognized option %q (want samples)", d.Val())
		}
	}
	if cc.Disabled && cc.Samples != 0 {
		return nil, d.Err("coverage: samples given with coverage off")
	}
	return cc, nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
