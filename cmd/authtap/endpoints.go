package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/authtap/authtap/worker"
)

func init() {
	register("endpoints", command{
		usage:   "endpoints list|add|update|rm|rotate|test",
		summary: "manage webhook endpoints through the management API",
		run:     runEndpoints,
	})
}

// defaultAPI is the management API of "authtap worker --admin" when neither
// --api nor $AUTHTAP_API says otherwise.
const defaultAPI = "http://127.0.0.1:8081"

const endpointsUsage = `usage:
  authtap endpoints list [--json]
  authtap endpoints add --url URL [--events a.b,c.*] [--mode live|test] [--tenant ID] [--id ID] [flags]
  authtap endpoints update ID [--url URL] [--events ...] [--enabled=true|false] [flags]
  authtap endpoints rm ID
  authtap endpoints rotate ID [--keep-old-for 24h]
  authtap endpoints test ID

Every command takes --api URL (default $AUTHTAP_API or ` + defaultAPI + `; include the
mount prefix, e.g. https://auth.example.com/_authtap, and user:password@ for basic auth)
and --token TOKEN (default $AUTHTAP_ADMIN_TOKEN, sent as a bearer token).
add and rotate print the signing secret once; it cannot be read again.
Errors of the API go to stderr and exit with status 1. Run a command with -h for its flags.`

func runEndpoints(args []string, stdout, stderr io.Writer) int {
	sub, rest := splitSub(args)
	cmds := map[string]func([]string, io.Writer, io.Writer) int{
		"list": endpointsList, "ls": endpointsList,
		"add": endpointsAdd, "create": endpointsAdd,
		"update": endpointsUpdate,
		"rm":     endpointsRemove, "delete": endpointsRemove,
		"rotate": endpointsRotate,
		"test":   endpointsTest,
	}
	run, ok := cmds[sub]
	if !ok {
		fmt.Fprintln(stderr, endpointsUsage)
		if sub == "" || sub == "help" {
			return 0
		}
		fmt.Fprintf(stderr, "\nauthtap endpoints: unknown command %q\n", sub)
		return 2
	}
	return run(rest, stdout, stderr)
}

// apiClient talks to the management API.
type apiClient struct {
	base  string
	token string
	name  string // "authtap endpoints add", for messages
	http  *http.Client
}

// apiOpts are the --api and --token flags. Their defaults come from the
// environment when the flags are not given, and are not printed in the usage
// (the token is a secret).
type apiOpts struct {
	fs         *flag.FlagSet
	api, token *string
}

// apiFlags adds --api and --token to fs.
func apiFlags(fs *flag.FlagSet) *apiOpts {
	return &apiOpts{
		fs:    fs,
		api:   fs.String("api", "", "management API base URL (default $AUTHTAP_API or "+defaultAPI+")"),
		token: fs.String("token", "", "admin bearer token (default $AUTHTAP_ADMIN_TOKEN)"),
	}
}

// client returns the API client named name, after the flags were parsed.
func (o *apiOpts) client(name string) (*apiClient, error) {
	set := map[string]bool{}
	o.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	base, token := *o.api, *o.token
	if !set["api"] {
		if base = os.Getenv("AUTHTAP_API"); base == "" {
			base = defaultAPI
		}
	}
	if !set["token"] {
		token = os.Getenv("AUTHTAP_ADMIN_TOKEN")
	}
	return newAPIClient(name, base, token)
}

func newAPIClient(name, base, token string) (*apiClient, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--api %q: want an http or https URL such as %s", redactURL(base), defaultAPI)
	}
	return &apiClient{base: strings.TrimSuffix(base, "/"), token: token, name: name, http: &http.Client{Timeout: 30 * time.Second}}, nil
}

// redactURL hides the password of a URL for messages.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return u.Redacted()
	}
	return "(unparsable URL)"
}

// errAPI marks an error answered by the API (exit status 1).
var errAPI = errors.New("api error")

// do sends a request; a 2xx answer is decoded into out (when not nil), any
// other answer becomes an error carrying the API's message.
func (c *apiClient) do(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := c.http.Do(req)
	if err != nil {
		// The error quotes the URL; url.Error redacts its password.
		return fmt.Errorf("calling the management API: %w", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(io.LimitReader(res.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the management API's answer: %w", err)
	}
	if res.StatusCode < 200 || res.StatusCode > 299 {
		var e struct {
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
			return fmt.Errorf("%w: %s (HTTP %d)", errAPI, e.Error.Message, res.StatusCode)
		}
		return fmt.Errorf("%w: HTTP %d from %s %s: %s", errAPI, res.StatusCode, method, redactURL(c.base+path),
			strings.TrimSpace(string(b[:min(len(b), 200)])))
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = b
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decoding the management API's answer: %w", err)
	}
	return nil
}

// fail prints err for the command and returns its exit status.
func (c *apiClient) fail(stderr io.Writer, err error) int {
	msg := err.Error()
	if after, ok := strings.CutPrefix(msg, errAPI.Error()+": "); ok {
		msg = after
	}
	fmt.Fprintf(stderr, "%s: %s\n", c.name, msg)
	return 1
}

// parseArgs parses flags around at most one positional argument (the
// endpoint id), which may come before or after the flags.
func parseArgs(fs *flag.FlagSet, args []string, wantID bool) (id string, code int, ok bool) {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		id, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", 0, false
		}
		return "", 2, false
	}
	rest := fs.Args()
	if id == "" && len(rest) > 0 {
		id, rest = rest[0], rest[1:]
	}
	switch {
	case len(rest) > 0:
		fmt.Fprintf(fs.Output(), "authtap endpoints %s: unexpected argument %q\n", fs.Name(), rest[0])
		return "", 2, false
	case wantID && id == "":
		fmt.Fprintf(fs.Output(), "authtap endpoints %s: want an endpoint ID\n", fs.Name())
		return "", 2, false
	case !wantID && id != "":
		fmt.Fprintf(fs.Output(), "authtap endpoints %s: unexpected argument %q\n", fs.Name(), id)
		return "", 2, false
	}
	return id, 0, true
}

func newFlagSet(name, usage string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: authtap endpoints %s\n\nFlags:\n", usage)
		fs.PrintDefaults()
	}
	return fs
}

func endpointsList(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("list", "list [--json]", stderr)
	opts := apiFlags(fs)
	asJSON := fs.Bool("json", false, "print the endpoints as a JSON array")
	if _, code, ok := parseArgs(fs, args, false); !ok {
		return code
	}
	c, err := opts.client("authtap endpoints list")
	if err != nil {
		fmt.Fprintln(stderr, "authtap endpoints list:", err)
		return 2
	}
	var resp struct {
		Webhooks []json.RawMessage `json:"webhooks"`
	}
	if err := c.do("GET", "/webhooks", nil, &resp); err != nil {
		return c.fail(stderr, err)
	}
	if *asJSON {
		if resp.Webhooks == nil {
			resp.Webhooks = []json.RawMessage{}
		}
		return printJSON(stdout, resp.Webhooks)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tMODE\tENABLED\tEVENTS\tURL")
	for _, raw := range resp.Webhooks {
		var ep worker.Endpoint
		if err := json.Unmarshal(raw, &ep); err != nil {
			return c.fail(stderr, fmt.Errorf("decoding an endpoint: %w", err))
		}
		events := strings.Join(ep.Events, ",")
		if events == "" {
			events = "*"
		}
		enabled := "yes"
		if !ep.Enabled {
			enabled = "no"
			if ep.DisabledReason != "" {
				enabled = "no (" + ep.DisabledReason + ")"
			}
		}
		id := ep.ID
		if ep.ReadOnly {
			id += " (config)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", id, ep.Mode, enabled, events, ep.URL)
	}
	if err := tw.Flush(); err != nil {
		return 1
	}
	return 0
}

func printJSON(w io.Writer, v any) int {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return 1
	}
	_, _ = w.Write(append(b, '\n'))
	return 0
}

// endpointFlags are the flags of add and update.
type endpointFlags struct {
	url, events, mode, tenant, description, bearerToken, eventHeader, format, id *string
	rateLimit                                                                    *float64
	maxConcurrency                                                               *int
	enabled                                                                      *bool
	asJSON                                                                       *bool
}

func addEndpointFlags(fs *flag.FlagSet, update bool) endpointFlags {
	f := endpointFlags{
		url:            fs.String("url", "", "URL that receives the deliveries (https for live endpoints)"),
		events:         fs.String("events", "", "comma-separated event-type filters, e.g. user.created,tenant.* (empty: every type)"),
		mode:           fs.String("mode", "", "live (default) or test"),
		tenant:         fs.String("tenant", "", "tenant id: the endpoint receives only that tenant's events (empty: an operator endpoint, every event)"),
		description:    fs.String("description", "", "free text for people"),
		bearerToken:    fs.String("bearer-token", "", "sent as Authorization: Bearer TOKEN with each delivery"),
		eventHeader:    fs.String("event-header", "", "header that carries the event type, e.g. X-Defguard-Event"),
		format:         fs.String("format", "", "envelope (default, the whole event) or data (only its data)"),
		rateLimit:      fs.Float64("rate-limit", 0, "deliveries per second at most (0: unlimited)"),
		maxConcurrency: fs.Int("max-concurrency", 0, "deliveries in flight at most (0: the default of 5)"),
		asJSON:         fs.Bool("json", false, "print the API's JSON answer instead of text"),
	}
	if update {
		f.enabled = fs.Bool("enabled", true, "enable (true) or disable (false) the endpoint")
	} else {
		f.id = fs.String("id", "", "endpoint id (default: generated ep_…)")
	}
	return f
}

// splitEvents splits a comma list, dropping empty items.
func splitEvents(s string) []string {
	out := []string{}
	for e := range strings.SplitSeq(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// printSecret prints a secret with the warning that it is shown once.
func printSecret(w io.Writer, id, secret string) {
	fmt.Fprintf(w, "signing secret of %s: %s\n", id, secret)
	fmt.Fprintln(w, "This secret will not be shown again: store it now (e.g. in the subscriber's configuration).")
}

func endpointsAdd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("add", "add --url URL [flags]", stderr)
	opts := apiFlags(fs)
	f := addEndpointFlags(fs, false)
	if _, code, ok := parseArgs(fs, args, false); !ok {
		return code
	}
	if *f.url == "" {
		fmt.Fprintln(stderr, "authtap endpoints add: --url is required")
		return 2
	}
	c, err := opts.client("authtap endpoints add")
	if err != nil {
		fmt.Fprintln(stderr, "authtap endpoints add:", err)
		return 2
	}
	cfg := worker.EndpointConfig{
		ID: *f.id, URL: *f.url, Description: *f.description, Mode: *f.mode, Tenant: *f.tenant, BearerToken: *f.bearerToken,
		EventHeader: *f.eventHeader, Format: *f.format, RateLimit: *f.rateLimit, MaxConcurrency: *f.maxConcurrency,
	}
	if *f.events != "" {
		cfg.Events = splitEvents(*f.events)
	}
	var raw json.RawMessage
	if err := c.do("POST", "/webhooks", cfg, &raw); err != nil {
		return c.fail(stderr, err)
	}
	if *f.asJSON {
		_, _ = stdout.Write(raw)
		return 0
	}
	var ep struct {
		worker.Endpoint
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal(raw, &ep); err != nil {
		return c.fail(stderr, fmt.Errorf("decoding the management API's answer: %w", err))
	}
	fmt.Fprintf(stdout, "created endpoint %s (%s, %s)\n", ep.ID, ep.Mode, ep.URL)
	printSecret(stdout, ep.ID, ep.Secret)
	return 0
}

func endpointsUpdate(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("update", "update ID [flags]  (only the flags given change)", stderr)
	opts := apiFlags(fs)
	f := addEndpointFlags(fs, true)
	id, code, ok := parseArgs(fs, args, true)
	if !ok {
		return code
	}
	c, err := opts.client("authtap endpoints update")
	if err != nil {
		fmt.Fprintln(stderr, "authtap endpoints update:", err)
		return 2
	}
	patch := map[string]any{}
	fs.Visit(func(fl *flag.Flag) {
		switch fl.Name {
		case "url":
			patch["url"] = *f.url
		case "events":
			patch["events"] = splitEvents(*f.events)
		case "mode":
			patch["mode"] = *f.mode
		case "tenant":
			patch["tenant"] = *f.tenant
		case "description":
			patch["description"] = *f.description
		case "bearer-token":
			patch["bearer_token"] = *f.bearerToken
		case "event-header":
			patch["event_header"] = *f.eventHeader
		case "format":
			patch["format"] = *f.format
		case "rate-limit":
			patch["rate_limit"] = *f.rateLimit
		case "max-concurrency":
			patch["max_concurrency"] = *f.maxConcurrency
		case "enabled":
			patch["enabled"] = *f.enabled
		}
	})
	if len(patch) == 0 {
		fmt.Fprintln(stderr, "authtap endpoints update: nothing to change; give at least one flag such as --url or --events")
		return 2
	}
	var raw json.RawMessage
	if err := c.do("PATCH", "/webhooks/"+url.PathEscape(id), patch, &raw); err != nil {
		return c.fail(stderr, err)
	}
	if *f.asJSON {
		_, _ = stdout.Write(raw)
		return 0
	}
	fmt.Fprintf(stdout, "updated endpoint %s\n", id)
	return 0
}

func endpointsRemove(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("rm", "rm ID", stderr)
	opts := apiFlags(fs)
	id, code, ok := parseArgs(fs, args, true)
	if !ok {
		return code
	}
	c, err := opts.client("authtap endpoints rm")
	if err != nil {
		fmt.Fprintln(stderr, "authtap endpoints rm:", err)
		return 2
	}
	if err := c.do("DELETE", "/webhooks/"+url.PathEscape(id), nil, nil); err != nil {
		return c.fail(stderr, err)
	}
	fmt.Fprintf(stdout, "deleted endpoint %s\n", id)
	return 0
}

func endpointsRotate(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("rotate", "rotate ID [--keep-old-for 24h]", stderr)
	opts := apiFlags(fs)
	keep := fs.Duration("keep-old-for", worker.DefaultSecretOverlap, "how long the old secret keeps signing next to the new one (0s: drop it at once)")
	asJSON := fs.Bool("json", false, "print the API's JSON answer instead of text")
	id, code, ok := parseArgs(fs, args, true)
	if !ok {
		return code
	}
	if *keep < 0 {
		fmt.Fprintln(stderr, "authtap endpoints rotate: --keep-old-for may not be negative")
		return 2
	}
	c, err := opts.client("authtap endpoints rotate")
	if err != nil {
		fmt.Fprintln(stderr, "authtap endpoints rotate:", err)
		return 2
	}
	var raw json.RawMessage
	body := map[string]string{"keep_old_for": keep.String()}
	if err := c.do("POST", "/webhooks/"+url.PathEscape(id)+"/rotate-secret", body, &raw); err != nil {
		return c.fail(stderr, err)
	}
	if *asJSON {
		_, _ = stdout.Write(raw)
		return 0
	}
	var ep struct {
		worker.Endpoint
		Secret string `json:"secret"`
	}
	if err := json.Unmarshal(raw, &ep); err != nil {
		return c.fail(stderr, fmt.Errorf("decoding the management API's answer: %w", err))
	}
	fmt.Fprintf(stdout, "rotated the signing secret of %s\n", ep.ID)
	if *keep > 0 {
		fmt.Fprintf(stdout, "the old secret keeps signing next to the new one until %s\n",
			time.Now().Add(*keep).UTC().Format(time.RFC3339))
	}
	printSecret(stdout, ep.ID, ep.Secret)
	return 0
}

func endpointsTest(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("test", "test ID", stderr)
	opts := apiFlags(fs)
	asJSON := fs.Bool("json", false, "print the API's JSON answer instead of text")
	id, code, ok := parseArgs(fs, args, true)
	if !ok {
		return code
	}
	c, err := opts.client("authtap endpoints test")
	if err != nil {
		fmt.Fprintln(stderr, "authtap endpoints test:", err)
		return 2
	}
	var raw json.RawMessage
	if err := c.do("POST", "/webhooks/"+url.PathEscape(id)+"/test", nil, &raw); err != nil {
		return c.fail(stderr, err)
	}
	if *asJSON {
		_, _ = stdout.Write(raw)
		return 0
	}
	var resp struct {
		EventID    string `json:"event_id"`
		DeliveryID string `json:"delivery_id"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return c.fail(stderr, fmt.Errorf("decoding the management API's answer: %w", err))
	}
	fmt.Fprintf(stdout, "queued test event %s for %s (delivery %s)\n", resp.EventID, id, resp.DeliveryID)
	return 0
}
