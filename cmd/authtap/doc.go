// Command authtap is the standalone companion of the authtap Caddy module.
//
//	authtap worker --redis redis://127.0.0.1:6379/0 [--admin :8081 --admin-token-file F]
//	authtap rules check rules/*.yaml
//	authtap rules test rules.yaml --request req.json --response resp.json
//	authtap endpoints list|add|update|rm|rotate|test
//	authtap demo [--traffic]
//
// Each subcommand lives in its own file and registers itself in init(). It may
// import worker, admin, rules and caddymodule; nothing imports it.
package main
