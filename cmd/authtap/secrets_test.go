package main

import (
	"strings"
	"testing"
)

// No usage text and no error of any authtap subcommand prints a secret taken
// from the environment or the command line: the admin token, a Redis
// password, the password in a management API URL, an endpoint's bearer token.
func TestNoUsageOrErrorPrintsSecrets(t *testing.T) {
	const (
		token     = "tok-Zq8wE3vN"
		redisPass = "redis-pw-K7pX2"
		apiPass   = "api-pw-M4rT9"
		bearer    = "bearer-Hj5sL1"
	)
	secrets := []string{token, redisPass, apiPass, bearer}
	t.Setenv("AUTHTAP_ADMIN_TOKEN", token)
	t.Setenv("AUTHTAP_REDIS", "redis://admin:"+redisPass+"@127.0.0.1:1/0")
	t.Setenv("AUTHTAP_API", "http://ops:"+apiPass+"@127.0.0.1:1/_authtap")

	cases := [][]string{
		// Every usage text.
		{"help"},
		{"worker", "-h"},
		{"rules", "check", "-h"},
		{"rules", "test", "-h"},
		{"rules"},
		{"endpoints"},
		{"demo", "-h"},
		// Errors with the secrets in the environment or on the command line.
		{"worker"}, // Redis from the environment, unreachable
		{"worker", "--redis", "redis://admin:" + redisPass + "@127.0.0.1:99999/0"},
		{"worker", "--redis", "redis://admin:" + redisPass + "@[::1/0"},
		{"worker", "--redis", "redis-sentinel://:" + redisPass + "@127.0.0.1:1"},
		{"worker", "--redis", "redis-cluster://admin:" + redisPass + "@127.0.0.1:1/3"},
		{"worker", "--redis", "ftp://admin:" + redisPass + "@127.0.0.1:1"},
		{"worker", "--admin", "nope", "--admin-token", token},
		{"worker", "--admin", "127.0.0.1:1"}, // token from the environment, Redis unreachable
		{"endpoints", "list"},                // API URL with a password from the environment, unreachable
		{"endpoints", "list", "--api", "http://ops:" + apiPass + "@127.0.0.1:1", "--token", token},
		{"endpoints", "list", "--api", "http://ops:" + apiPass + "@bad host/%zz", "--token", token},
		{"endpoints", "add", "--url", "https://hooks.example.com/in", "--bearer-token", bearer},
		{"endpoints", "add", "--url", "https://hooks.example.com/in", "--bearer-token", bearer, "--nope"},
	}
	for _, c := range []string{"list", "add", "update", "rm", "rotate", "test"} {
		cases = append(cases, []string{"endpoints", c, "-h"})
	}
	for _, args := range cases {
		var out, errb syncBuffer
		code := run(args, &out, &errb)
		text := out.String() + errb.String()
		if text == "" {
			t.Errorf("%v: no output (exit %d)", args, code)
		}
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%v (exit %d) printed the secret %q:\n%s", args, code, s, text)
			}
		}
	}
}
