package authtap

import (
	// Registers the authtap Caddy modules.
	_ "github.com/authtap/authtap/caddymodule"
)
