package caddymodule

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	return nil, nil
}
