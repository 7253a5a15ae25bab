package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// trafficStep is one scripted request and the number of events it should cause.
type trafficStep struct {
	desc   string
	method string
	path   string // may contain {t1}, {u1}… filled from earlier answers
	body   map[string]any
	header map[string]string
	save   string // name under which to remember the answer's id
	events int
}

// demoScript is what --traffic sends through the proxy: the life of two
// tenants and their users, with the failures a real API sees.
func demoScript() []trafficStep {
	return []trafficStep{
		{desc: "create tenant Acme", method: "POST", path: "/api/tenants", body: map[string]any{"name": "Acme", "plan": "pro"}, save: "t1", events: 1},
		{desc: "create tenant Globex", method: "POST", path: "/api/tenants", body: map[string]any{"name": "Globex"}, save: "t2", events: 1},
		{desc: "a tenant without a name is refused (422: no event)", method: "POST", path: "/api/tenants", body: map[string]any{"name": ""}},
		{desc: "sign up Ada", method: "POST", path: "/api/users", body: map[string]any{"email": "ada@acme.test", "name": "Ada", "tenant_id": "{t1}", "password": "correct horse"}, header: map[string]string{"Idempotency-Key": "signup-ada"}, save: "u1", events: 1},
		{desc: "Ada's client retries the same sign-up (409, same Idempotency-Key: no second event)", method: "POST", path: "/api/users", body: map[string]any{"email": "ada@acme.test", "name": "Ada", "tenant_id": "{t1}", "password": "correct horse"}, header: map[string]string{"Idempotency-Key": "signup-ada"}},
		{desc: "sign up Grace", method: "POST", path: "/api/users", body: map[string]any{"email": "grace@acme.test", "name": "Grace", "tenant_id": "{t1}", "password": "hunter2"}, save: "u2", events: 1},
		{desc: "sign up Hank at Globex", method: "POST", path: "/api/users", body: map[string]any{"email": "hank@globex.test", "name": "Hank", "tenant_id": "{t2}", "password": "s3cret"}, save: "u3", events: 1},
		{desc: "list users (a read: no event)", method: "GET", path: "/api/users"},
		{desc: "Ada changes her name", method: "PATCH", path: "/api/users/{u1}", body: map[string]any{"name": "Ada Lovelace"}, events: 1},
		{desc: "Grace becomes an admin", method: "PUT", path: "/api/users/{u2}", body: map[string]any{"email": "grace@acme.test", "name": "Grace", "role": "admin"}, events: 1},
		{desc: "Globex upgrades its plan", method: "PATCH", path: "/api/tenants/{t2}", body: map[string]any{"plan": "enterprise"}, events: 1},
		{desc: "update an unknown user (404: no event)", method: "PATCH", path: "/api/users/u_404", body: map[string]any{"name": "Nobody"}},
		{desc: "delete Hank (204, no body: the user is read just before, by a before-lookup)", method: "DELETE", path: "/api/users/{u3}", events: 1},
		{desc: "delete tenant Globex", method: "DELETE", path: "/api/tenants/{t2}", events: 1},
	}
}

// sendTraffic runs the script against base (the proxy) and returns how many
// events the rules should have produced.
func sendTraffic(base string, out io.Writer) (int, error) {
	ids := map[string]string{}
	fill := func(s string) string {
		for k, v := range ids {
			s = strings.ReplaceAll(s, "{"+k+"}", v)
		}
		return s
	}
	client := &http.Client{Timeout: 10 * time.Second}
	want := 0
	for _, st := range demoScript() {
		var body io.Reader
		if st.body != nil {
			b := map[string]any{}
			for k, v := range st.body {
				if s, ok := v.(string); ok {
					v = fill(s)
				}
				b[k] = v
			}
			raw, _ := json.Marshal(b)
			body = bytes.NewReader(raw)
		}
		req, err := http.NewRequest(st.method, base+fill(st.path), body)
		if err != nil {
			return want, err
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range st.header {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			return want, fmt.Errorf("%s: %w", st.desc, err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Fprintf(out, "traffic   %-6s %-22s → %d  %s\n", st.method, fill(st.path), resp.StatusCode, st.desc)
		if st.save != "" {
			var v struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(raw, &v) != nil || v.ID == "" {
				return want, fmt.Errorf("%s: answer %d without an id: %s", st.desc, resp.StatusCode, raw)
			}
			ids[st.save] = v.ID
		}
		want += st.events
	}
	return want, nil
}
