package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// The plugin's module root, as "xcaddy build --with github.com/authtap/authtap" imports it.
	_ "github.com/authtap/authtap"
)

func main() {
	caddycmd.Main()
}
