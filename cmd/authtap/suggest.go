package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/authtap/authtap/admin"
	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

// Drafting rules from coverage: `authtap rules suggest` reads the route
// shapes that successful mutations took without any rule matching them
// (GET /unmatched, or Redis directly) and writes a rule file with one rule
// per shape and inline tests made from the shape's redacted samples. The
// file is a draft: the names, types and data are guesses an admin edits;
// what is promised is that `authtap rules check` accepts it as written.

const suggestUsage = `usage: authtap rules suggest [--api URL] [--token TOKEN] [-o FILE] [flags]
       authtap rules suggest --redis URL [-o FILE] [flags]
       authtap rules suggest --input FILE [-o FILE] [flags]

Drafts a rule file from the successful mutations that no rule matched (the
route shapes of GET /unmatched, with their redacted samples): one rule per
shape, its event type guessed from the route and method, its data from the
sampled bodies, and an inline test per sample. Edit the draft, then run
"authtap rules check FILE".

The shapes come from the management API (--api, default $AUTHTAP_API or ` + defaultAPI + `,
with --token or $AUTHTAP_ADMIN_TOKEN, as for "authtap endpoints"), from Redis
itself (--redis URL or $AUTHTAP_REDIS), or from a saved answer of
GET /unmatched (--input FILE, - for stdin).`

// suggestSource says where the shapes came from, for the header comment.
type suggestSource struct {
	shapes []admin.UnmatchedShape
	origin string
}

func rulesSuggest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("rules suggest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, suggestUsage+"\n\nFlags:"); fs.PrintDefaults() }
	api := apiFlags(fs)
	redisURL := fs.String("redis", "", "read the shapes from this Redis instead of the API (default $AUTHTAP_REDIS when --api is not given either)")
	input := fs.String("input", "", "read the shapes from this file holding the JSON of GET /unmatched; - for stdin")
	out := fs.String("o", "", "write the draft to this file instead of stdout")
	minCount := fs.Int64("min-count", 1, "leave out shapes seen fewer times")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "authtap rules suggest: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if n := btoi(set["api"] || set["token"]) + btoi(set["redis"]) + btoi(set["input"]); n > 1 {
		fmt.Fprintln(stderr, "authtap rules suggest: give one of --api, --redis and --input")
		return 2
	}
	if !set["api"] && !set["token"] && !set["input"] && *redisURL == "" && os.Getenv("AUTHTAP_API") == "" {
		*redisURL = os.Getenv("AUTHTAP_REDIS")
	}
	var src suggestSource
	var err error
	switch {
	case *input != "":
		src, err = shapesFromFile(*input)
	case *redisURL != "":
		src, err = shapesFromRedis(*redisURL)
	default:
		var c *apiClient
		if c, err = api.client("authtap rules suggest"); err == nil {
			src, err = shapesFromAPI(c)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "authtap rules suggest: %s\n", strings.TrimPrefix(err.Error(), errAPI.Error()+": "))
		return 1
	}
	src.shapes = slices.DeleteFunc(src.shapes, func(s admin.UnmatchedShape) bool { return s.Count < *minCount })
	draft, notes, err := draftRules(src, time.Now().UTC())
	if err != nil {
		fmt.Fprintf(stderr, "authtap rules suggest: %v\n", err)
		return 1
	}
	for _, n := range notes {
		fmt.Fprintf(stderr, "note: %s\n", n)
	}
	if *out == "" {
		_, err = stdout.Write(draft)
	} else {
		err = os.WriteFile(*out, draft, 0o644)
	}
	if err != nil {
		fmt.Fprintf(stderr, "authtap rules suggest: writing the draft: %v\n", err)
		return 1
	}
	if *out != "" {
		fmt.Fprintf(stderr, "wrote %s; edit it, then run: authtap rules check %s\n", *out, *out)
	}
	return 0
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// unmatchedList is the answer of GET /unmatched.
type unmatchedList struct {
	Unmatched []admin.UnmatchedShape `json:"unmatched"`
}

func shapesFromAPI(c *apiClient) (suggestSource, error) {
	var l unmatchedList
	if err := c.do("GET", "/unmatched?limit="+strconv.Itoa(admin.MaxListLimit), nil, &l); err != nil {
		return suggestSource{}, err
	}
	return suggestSource{shapes: l.Unmatched, origin: "GET " + redactURL(c.base) + "/unmatched"}, nil
}

func shapesFromRedis(raw string) (suggestSource, error) {
	opt, err := worker.ParseRedisURL(raw)
	if err != nil {
		return suggestSource{}, err
	}
	rdb, err := worker.RedisClient(opt)
	if err != nil {
		return suggestSource{}, err
	}
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	shapes, err := admin.NewCoverage(rdb, admin.CoverageOptions{}).List(ctx, admin.MaxUnmatchedShapes)
	if err != nil {
		return suggestSource{}, err
	}
	return suggestSource{shapes: shapes, origin: "Redis " + redactURL(raw)}, nil
}

func shapesFromFile(name string) (suggestSource, error) {
	b, err := readArg(name)
	if err != nil {
		return suggestSource{}, err
	}
	var l unmatchedList
	if err := json.Unmarshal(b, &l); err != nil {
		return suggestSource{}, fmt.Errorf("%s: want the JSON of GET /unmatched: %w", name, err)
	}
	return suggestSource{shapes: l.Unmatched, origin: name}, nil
}

// Bounds of a draft, whatever the shapes hold.
const (
	maxDraftFields   = 12  // data fields taken from the sampled bodies
	maxDraftNameLen  = 100 // rule names
	maxDraftTypeSeg  = 40  // each segment of a guessed event type
	draftSampleTests = admin.MaxUnmatchedSamples
)

// draftRule is one drafted rule and its tests.
type draftRule struct {
	shape   admin.UnmatchedShape
	name    string
	path    string
	params  []string // path parameter names, in order
	secret  []bool   // params[i] stands for a secret (after a password-like segment)
	typ     string
	status  int // 0: the default 2xx
	subject string
	data    [][2]string // key, template
}

// draftRules writes the draft rule file for the shapes.
func draftRules(src suggestSource, now time.Time) ([]byte, []string, error) {
	var notes []string
	names := map[string]bool{}
	var drafts []*draftRule
	for _, sh := range src.shapes {
		d, why := draftFor(sh, names)
		if d == nil {
			notes = append(notes, fmt.Sprintf("%s %s left out: %s", sh.Method, sh.Route, why))
			continue
		}
		drafts = append(drafts, d)
	}
	if len(drafts) == 0 {
		return nil, notes, errors.New("no unmatched route shapes to draft rules from (GET /unmatched is empty: every successful mutation matched a rule, or nothing was seen yet)")
	}
	// the draft without tests: what the tests' expectations are computed with
	set, err := draftSet(drafts, nil)
	if err != nil {
		return nil, notes, fmt.Errorf("drafting rules: %w", err)
	}
	var tests []*yaml.Node
	for _, d := range drafts {
		for i, s := range d.shape.Samples {
			if i == draftSampleTests {
				break
			}
			if t := sampleTest(set, d, i+1, s); t != nil {
				tests = append(tests, t)
			}
		}
	}
	// keep only the tests that pass as written (a sample that the YAML round
	// trip changes, say): `rules check` must accept the draft as is
	for {
		doc := draftDoc(drafts, tests, src, now)
		f, err := rules.Parse("draft.yaml", doc)
		if err != nil {
			return nil, notes, fmt.Errorf("drafting rules: the draft does not parse: %w", err)
		}
		s, err := rules.NewSet(f)
		if err != nil {
			return nil, notes, fmt.Errorf("drafting rules: %w", err)
		}
		failed := -1
		for i, r := range s.RunTests() {
			if !r.Passed {
				failed = i
				notes = append(notes, fmt.Sprintf("test %q left out: %s", r.Name, r.Failure))
				break
			}
		}
		if failed < 0 {
			return doc, notes, nil
		}
		tests = slices.Delete(tests, failed, failed+1)
	}
}

// draftFor drafts the rule of one shape; nil (and why) for a shape that
// cannot have one.
func draftFor(sh admin.UnmatchedShape, names map[string]bool) (*draftRule, string) {
	switch sh.Method {
	case "POST", "PUT", "PATCH", "DELETE":
	default:
		return nil, "not a mutation"
	}
	if sh.Route == "other" || !strings.HasPrefix(sh.Route, "/") {
		return nil, "the shapes past the cap are counted together, without samples"
	}
	d := &draftRule{shape: sh}
	segs := strings.Split(strings.TrimPrefix(sh.Route, "/"), "/")
	used := map[string]bool{}
	var out []string
	var lits []string // literal segments, in order
	prev := ""
	for i, seg := range segs {
		switch {
		case seg == rules.ShapeRest && i == len(segs)-1:
			name := uniqueName("rest", used)
			d.params, d.secret = append(d.params, name), append(d.secret, false)
			out = append(out, "{"+name+"...}")
		case seg == rules.ShapeParam:
			name, secret := paramName(prev)
			name = uniqueName(name, used)
			d.params, d.secret = append(d.params, name), append(d.secret, secret)
			out = append(out, "{"+name+"}")
			prev = ""
		case strings.ContainsAny(seg, "{}"):
			return nil, fmt.Sprintf("segment %q cannot be a path template literal", seg)
		default:
			out = append(out, seg)
			if seg != "" {
				lits = append(lits, seg)
			}
			prev = seg
		}
	}
	d.path = "/" + strings.Join(out, "/")
	d.typ = guessType(sh.Method, segs, lits)
	d.name = uniqueRuleName(strings.ToLower(sh.Method)+"-"+ruleWords(segs, d.params), names)

	statuses := map[int]bool{}
	for _, s := range sh.Samples {
		statuses[s.Response.Status] = true
	}
	if len(statuses) == 1 {
		for st := range statuses {
			if st >= 200 && st <= 299 {
				d.status = st
			}
		}
	}
	for i, p := range d.params {
		if !d.secret[i] && !rules.IsSecretName(p) {
			d.data = append(d.data, [2]string{p, "{path." + p + "}"})
		}
	}
	base, fields := bodyFields(sh.Samples, true)
	side := "response"
	if len(fields) == 0 {
		base, fields = bodyFields(sh.Samples, false)
		side = "request"
	}
	prefix := "{" + side + ".body."
	if base != "" {
		prefix += base + "."
	}
	for _, f := range fields {
		if len(d.data) == maxDraftFields {
			break
		}
		if slices.ContainsFunc(d.data, func(kv [2]string) bool { return kv[0] == f }) {
			continue // a path parameter of that name says it already
		}
		d.data = append(d.data, [2]string{f, prefix + f + "}"})
	}
	switch {
	case side == "response" && slices.Contains(fields, "id"):
		d.subject = prefix + "id}"
	default:
		for i := len(d.params) - 1; i >= 0; i-- {
			if !d.secret[i] && !rules.IsSecretName(d.params[i]) && !strings.HasPrefix(d.params[i], "rest") {
				d.subject = "{path." + d.params[i] + "}"
				break
			}
		}
	}
	return d, ""
}

// paramName names the parameter after a literal segment: /users/{id} gives
// user_id, /reset-password/{id} gives token; with no literal before, id.
func paramName(prev string) (string, bool) {
	if prev == "" {
		return "id", false
	}
	if rules.IsSecretName(prev) || rules.IsSecretName(strings.TrimSuffix(prev, "s")) {
		return "token", true
	}
	w := singular(word(prev))
	if w == "" {
		return "id", false
	}
	return w + "_id", false
}

func uniqueName(name string, used map[string]bool) string {
	n := name
	for i := 2; used[n]; i++ {
		n = name + "_" + strconv.Itoa(i)
	}
	used[n] = true
	return n
}

// word turns a path segment into a name: lower case letters, digits and _.
func word(seg string) string {
	var b strings.Builder
	for _, c := range strings.ToLower(seg) {
		switch {
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9':
			b.WriteRune(c)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "_"):
			b.WriteByte('_')
		}
	}
	return strings.Trim(b.String(), "_")
}

// singular guesses the singular of an English plural: users → user,
// addresses → address, categories → category; status stays.
func singular(w string) string {
	switch {
	case strings.HasSuffix(w, "ies") && len(w) > 4:
		return w[:len(w)-3] + "y"
	case strings.HasSuffix(w, "sses"), strings.HasSuffix(w, "shes"), strings.HasSuffix(w, "ches"), strings.HasSuffix(w, "xes"):
		return w[:len(w)-2]
	case strings.HasSuffix(w, "ss"), strings.HasSuffix(w, "us"), strings.HasSuffix(w, "is"):
		return w
	case strings.HasSuffix(w, "s") && len(w) > 2:
		return w[:len(w)-1]
	}
	return w
}

// guessType guesses the event type: a collection's POST creates
// (/orgs/{org_id}/members → member.created), a route ending in an id updates
// or deletes it (/users/{user_id} → user.updated, user.deleted), and a route
// ending in a word names what changed on what is before it
// (/users/{user_id}/password → user.password_updated, /password/reset →
// password.reset).
func guessType(method string, segs, lits []string) string {
	action := map[string]string{"POST": "created", "PUT": "updated", "PATCH": "updated", "DELETE": "deleted"}[method]
	seg := func(s string) string {
		w := word(s)
		if len(w) > maxDraftTypeSeg {
			w = w[:maxDraftTypeSeg]
		}
		return strings.Trim(w, "_")
	}
	typ := "resource." + action
	last := segs[len(segs)-1]
	switch {
	case len(lits) == 0:
	case last == rules.ShapeParam || last == rules.ShapeRest:
		if r := seg(singular(word(lits[len(lits)-1]))); r != "" {
			if method == "POST" {
				action = "updated" // a POST to one thing changes it
			}
			typ = r + "." + action
		}
	default:
		l := seg(last)
		sing := seg(singular(word(last)))
		var parent string
		if len(lits) >= 2 {
			parent = seg(singular(word(lits[len(lits)-2])))
		}
		switch {
		case l == "":
		case sing != l || parent == "": // a collection, or a word alone: the thing itself
			typ = sing + "." + action
		case method == "POST":
			typ = parent + "." + l
		default:
			typ = parent + "." + l + "_" + action
		}
	}
	if !validType(typ) {
		return "resource." + action
	}
	return typ
}

func validType(s string) bool {
	if s == "" || len(s) > rules.MaxEventTypeLen {
		return false
	}
	for _, part := range strings.Split(s, ".") {
		if part == "" {
			return false
		}
	}
	return true
}

// ruleWords names a rule after its route: users-user_id-password.
func ruleWords(segs, params []string) string {
	var words []string
	p := 0
	for _, s := range segs {
		switch s {
		case rules.ShapeParam, rules.ShapeRest:
			if p < len(params) {
				words = append(words, params[p])
			}
			p++
		default:
			if w := word(s); w != "" {
				words = append(words, w)
			}
		}
	}
	if len(words) == 0 {
		return "root"
	}
	return strings.Join(words, "-")
}

func uniqueRuleName(name string, used map[string]bool) string {
	name = strings.ReplaceAll(name, "_", "-")
	if len(name) > maxDraftNameLen {
		name = strings.TrimRight(name[:maxDraftNameLen], "-._")
	}
	n := name
	for i := 2; used[n]; i++ {
		n = name + "-" + strconv.Itoa(i)
	}
	used[n] = true
	return n
}

// bodyFields picks the fields an event's data may take from the sampled
// bodies (the response's, or the request's): the scalar members with plain
// names, of the object itself or of its one object member ({"user": {...}}
// gives base "user"), leaving out password-like and redacted ones.
func bodyFields(samples []admin.UnmatchedSample, response bool) (string, []string) {
	var base string
	var fields []string
	for i, s := range samples {
		body := s.Request.Body
		if response {
			body = s.Response.Body
		}
		var obj map[string]json.RawMessage
		if json.Unmarshal(body, &obj) != nil || len(obj) == 0 {
			continue
		}
		if i == 0 || base == "" && fields == nil {
			base = ""
			if len(obj) == 1 {
				for k, v := range obj {
					var inner map[string]json.RawMessage
					if plainKey(k) && json.Unmarshal(v, &inner) == nil {
						base, obj = k, inner
					}
				}
			}
		} else if base != "" {
			var inner map[string]json.RawMessage
			if json.Unmarshal(obj[base], &inner) != nil {
				continue
			}
			obj = inner
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			v := bytes.TrimSpace(obj[k])
			if !plainKey(k) || rules.IsSecretName(k) || slices.Contains(fields, k) || len(v) == 0 || v[0] == '{' || v[0] == '[' {
				continue
			}
			if string(v) == `"`+rules.Redacted+`"` {
				continue
			}
			fields = append(fields, k)
		}
	}
	// id first, then by name
	slices.SortStableFunc(fields, func(a, b string) int {
		if (a == "id") != (b == "id") {
			if a == "id" {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	if len(fields) > maxDraftFields {
		fields = fields[:maxDraftFields]
	}
	return base, fields
}

// plainKey reports a key a gjson path can name as is.
func plainKey(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' && i > 0) {
			return false
		}
	}
	return true
}

// draftSet parses the rules of drafts (with tests when given).
func draftSet(drafts []*draftRule, tests []*yaml.Node) (*rules.Set, error) {
	doc := draftDoc(drafts, tests, suggestSource{}, time.Time{})
	f, err := rules.Parse("draft.yaml", doc)
	if err != nil {
		return nil, err
	}
	return rules.NewSet(f)
}

// sampleExchange is the exchange a sample's test describes, as `rules check`
// will build it from the test: the request path escaped per segment, JSON
// bodies, Content-Type set for a body.
func sampleExchange(s admin.UnmatchedSample) (path string, ex *rules.Exchange) {
	segs := strings.Split(s.Request.Path, "/")
	for i, seg := range segs {
		segs[i] = url.PathEscape(seg)
	}
	path = strings.Join(segs, "/")
	ex = &rules.Exchange{
		Method: s.Request.Method, Path: s.Request.Path, RawQuery: s.Request.Query,
		RequestHeader: map[string][]string{}, ResponseHeader: map[string][]string{},
		RequestBody: s.Request.Body, ResponseBody: s.Response.Body, Status: s.Response.Status,
	}
	if s.Request.Query != "" {
		path += "?" + s.Request.Query
	}
	if len(s.Request.Body) > 0 {
		ex.RequestHeader.Set("Content-Type", "application/json")
	}
	if len(s.Response.Body) > 0 {
		ex.ResponseHeader.Set("Content-Type", "application/json")
	}
	if loc := s.Response.Header.Get("Location"); loc != "" {
		ex.ResponseHeader.Set("Location", loc)
	}
	return path, ex
}

// sampleTest makes the inline test of one sample: the exchange, and the
// events the drafted rules build for it.
func sampleTest(set *rules.Set, d *draftRule, n int, s admin.UnmatchedSample) *yaml.Node {
	if !strings.HasPrefix(s.Request.Path, "/") || s.Response.Status < 100 || s.Response.Status > 599 {
		return nil
	}
	path, ex := sampleExchange(s)
	events, errs := set.Evaluate(ex, rules.EmitOptions{Source: "draft"})
	if len(errs) > 0 {
		return nil
	}
	req := mapNode("method", str(s.Request.Method), "path", str(path))
	if v := ex.RequestHeader.Get("Content-Type"); v != "" {
		req.Content = append(req.Content, str("header"), flow(mapNode("Content-Type", str(v))))
	}
	if len(s.Request.Body) > 0 {
		req.Content = append(req.Content, str("body"), quoted(string(s.Request.Body)))
	}
	resp := mapNode("status", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(s.Response.Status)})
	if len(ex.ResponseHeader) > 0 {
		h := mapNode()
		for _, k := range []string{"Content-Type", "Location"} {
			if v := ex.ResponseHeader.Get(k); v != "" {
				h.Content = append(h.Content, str(k), str(v))
			}
		}
		resp.Content = append(resp.Content, str("header"), flow(h))
	}
	if len(s.Response.Body) > 0 {
		resp.Content = append(resp.Content, str("body"), quoted(string(s.Response.Body)))
	}
	expect := &yaml.Node{Kind: yaml.SequenceNode}
	for _, ev := range events {
		e := mapNode("type", str(ev.Type))
		if ev.Subject != "" {
			e.Content = append(e.Content, str("subject"), str(ev.Subject))
		}
		if len(ev.Data) > 0 {
			var data yaml.Node
			if yaml.Unmarshal(ev.Data, &data) != nil || len(data.Content) != 1 {
				return nil
			}
			e.Content = append(e.Content, str("data"), flow(data.Content[0]))
		}
		expect.Content = append(expect.Content, flow(e))
	}
	if len(events) == 0 {
		expect.Style = yaml.FlowStyle
	}
	name := fmt.Sprintf("%s, sample %d: %s %s answered %d", d.name, n, s.Request.Method, cutName(s.Request.Path, 100), s.Response.Status)
	return mapNode("name", str(name), "request", req, "response", resp, "expect", expect)
}

// draftDoc renders the rule file.
func draftDoc(drafts []*draftRule, tests []*yaml.Node, src suggestSource, now time.Time) []byte {
	root := mapNode("version", &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: "1"})
	if !now.IsZero() {
		root.HeadComment = fmt.Sprintf(`DRAFT rules from "authtap rules suggest", %s, from %s:
one rule per route shape that successful mutations took without any rule
matching them, with a test per (redacted) sample. The names, event types and
data are guesses from the route and the sampled bodies: edit them (and the
tests' expectations with them), then run "authtap rules check" on this file.
Values shown as "%s" were redacted when the sample was kept.`, now.Format(time.RFC3339), src.origin, rules.Redacted)
	}
	list := &yaml.Node{Kind: yaml.SequenceNode}
	for _, d := range drafts {
		match := mapNode("method", str(d.shape.Method), "path", str(d.path))
		if d.status != 0 {
			match.Content = append(match.Content, str("status"), &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.Itoa(d.status)})
		}
		emit := mapNode("type", str(d.typ))
		if d.subject != "" {
			emit.Content = append(emit.Content, str("subject"), str(d.subject))
		}
		if len(d.data) > 0 {
			data := mapNode()
			for _, kv := range d.data {
				data.Content = append(data.Content, str(kv[0]), str(kv[1]))
			}
			emit.Content = append(emit.Content, str("data"), data)
		}
		rule := mapNode("name", str(d.name), "match", flow(match), "emit", emit)
		sh := d.shape
		rule.HeadComment = fmt.Sprintf("%s %s: seen %s, %s to %s; %s",
			sh.Method, sh.Route, plural(int(sh.Count), "time"), sh.FirstSeen.UTC().Format(time.RFC3339),
			sh.LastSeen.UTC().Format(time.RFC3339), plural(len(sh.Samples), "sample"))
		if len(sh.Samples) == 0 {
			rule.HeadComment += " (no sample: add a test)"
		}
		list.Content = append(list.Content, rule)
	}
	root.Content = append(root.Content, str("rules"), list)
	if len(tests) > 0 {
		root.Content = append(root.Content, str("tests"), &yaml.Node{Kind: yaml.SequenceNode, Content: tests})
	}
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	_ = enc.Encode(root) // a tree of strings: encoding does not fail
	_ = enc.Close()
	return b.Bytes()
}

// cutName cuts s to at most max bytes at a character boundary, marking the cut.
func cutName(s string, max int) string {
	if len(s) <= max {
		return s
	}
	for max > 0 && !utf8.RuneStart(s[max]) {
		max--
	}
	return s[:max] + "…"
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

func str(s string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s} }

// quoted is a string scalar written in single quotes (a raw JSON body).
func quoted(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s, Style: yaml.SingleQuotedStyle}
}

func mapNode(kv ...any) *yaml.Node {
	n := &yaml.Node{Kind: yaml.MappingNode}
	for i := 0; i+1 < len(kv); i += 2 {
		n.Content = append(n.Content, str(kv[i].(string)), kv[i+1].(*yaml.Node))
	}
	return n
}

// flow writes n (and everything in it) in flow style: {a: 1, b: [x]}.
func flow(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
		n.Style = yaml.FlowStyle
	}
	for _, c := range n.Content {
		flow(c)
	}
	return n
}
