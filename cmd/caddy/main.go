// Command caddy is Caddy with its standard modules and authtap: what
// "xcaddy build --with github.com/authtap/authtap/caddymodule" produces.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/authtap/authtap/caddymodule"
)

func main() {
	caddycmd.Main()
}
