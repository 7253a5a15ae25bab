package rules

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// When a lookup runs (lookup.when).
const (
	// LookupBefore runs the lookup before the request is forwarded, with the
	// credentials the caller sent: it sees the state a delete or a session
	// change is about to destroy.
	LookupBefore = "before"
	// LookupAfter (the default) runs the lookup after the response, before
	// the event is queued.
	LookupAfter = "after"
)

// LookupMarkerHeader is the header the Caddy handler marks the lookups it
// sends back through Caddy with. Rules may not set it, nor any other
// X-Authtap- header (lookup.header).
const LookupMarkerHeader = "X-Authtap-Lookup"

// lookupHeaderSpec is one entry of lookup.header.
type lookupHeaderSpec struct {
	name string // canonical
	t    *tmpl
}

// forbiddenLookupHeaders are the headers lookup.header may not set, and why:
// the transport owns them, or they would let a rule smuggle a second
// request, pick another virtual host, or forge authtap's own marker.
var forbiddenLookupHeaders = map[string]string{
	"Connection":          "it is a hop-by-hop header, owned by the connection",
	"Keep-Alive":          "it is a hop-by-hop header, owned by the connection",
	"Proxy-Connection":    "it is a hop-by-hop header, owned by the connection",
	"Proxy-Authenticate":  "it is a hop-by-hop header, owned by the connection",
	"Proxy-Authorization": "it is a hop-by-hop header, owned by the connection",
	"Te":                  "it is a hop-by-hop header, owned by the connection",
	"Trailer":             "it is a hop-by-hop header, owned by the connection",
	"Transfer-Encoding":   "it is a hop-by-hop header, owned by the connection",
	"Upgrade":             "it is a hop-by-hop header, owned by the connection",
	"Host":                "a lookup goes to the caller's host (or lookup_upstream), never to another",
	"Content-Length":      "a lookup is a GET without a body",
}

// forbiddenLookupHeader says why a rule may not set the (canonical) header name.
func forbiddenLookupHeader(name string) (string, bool) {
	if why, ok := forbiddenLookupHeaders[name]; ok {
		return why, true
	}
	if strings.HasPrefix(name, "X-Authtap-") {
		return "X-Authtap- headers are authtap's own (" + LookupMarkerHeader + " marks its lookups)", true
	}
	return "", false
}

// validHeaderName reports whether s is an HTTP field name (RFC 9110 token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// badHeaderValue says why a rendered value cannot be sent as a header
// value: empty, too long, or holding a control character (CR, LF and NUL
// among them: a value must not end the header or start another); "" when it
// can be sent.
func badHeaderValue(v string) string {
	if strings.TrimSpace(v) == "" {
		return "it is empty"
	}
	if len(v) > MaxLookupHeaderValue {
		return fmt.Sprintf("it is %d bytes, more than %d (rules.MaxLookupHeaderValue)", len(v), MaxLookupHeaderValue)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return fmt.Sprintf("it holds the control byte %#02x", c)
		}
	}
	return ""
}

// parseLookupHeaders reads lookup.header: a mapping of header name to template.
func (d *dec) parseLookupHeaders(lk *lookupSpec, n *yaml.Node, path string, sc *scope) {
	keys, vals := d.pairs(n, path)
	if len(keys) > MaxLookupHeaders {
		d.errf(n, path, "the lookup sets %d headers; a lookup may set at most %d (rules.MaxLookupHeaders)", len(keys), MaxLookupHeaders)
		return
	}
	seen := map[string]bool{}
	for i, k := range keys {
		hp := join(path, k.Value)
		if !validHeaderName(k.Value) {
			d.errf(k, hp, "want a header name such as Authorization or X-Tenant (letters, digits and !#$%%&'*+-.^_`|~), got %q", k.Value)
			continue
		}
		name := canonicalHeader(k.Value)
		if why, bad := forbiddenLookupHeader(name); bad {
			d.errf(k, hp, "header %s cannot be set on a lookup: %s", name, why)
			continue
		}
		if seen[name] {
			d.errf(k, hp, "header %s is set twice (header names are case-insensitive)", name)
			continue
		}
		seen[name] = true
		s, ok := d.str(vals[i], hp)
		if !ok {
			continue
		}
		t, err := parseTmpl(s, sc)
		if err != nil {
			d.errf(vals[i], hp, "%v", err)
			continue
		}
		if len(t.phs) == 0 {
			if why := badHeaderValue(t.lits[0]); why != "" {
				d.errf(vals[i], hp, "want a header value such as \"Bearer {response.body.token}\"; %q cannot be sent: %s", s, why)
				continue
			}
		}
		d.checkBefore(lk, vals[i], hp, t, sc)
		lk.headers = append(lk.headers, lookupHeaderSpec{name: name, t: t})
	}
}

// checkBefore refuses, in a before-lookup's template, what is not known
// before the request is forwarded: the response, and lookups that run after
// it. (A lookup can only name the lookups declared above it.)
func (d *dec) checkBefore(lk *lookupSpec, n *yaml.Node, path string, t *tmpl, sc *scope) {
	if !lk.before {
		return
	}
	const allowed = "a before-lookup may use only path parameters, request placeholders and the before-lookups declared above it"
	for _, ph := range t.phs {
		switch ph.kind {
		case phResponseBody, phResponseHeader, phStatus:
			d.errf(n, path, "placeholder {%s} reads the response, which a before-lookup (when: before) runs ahead of; %s", ph.raw, allowed)
		case phLookupBody, phLookupStatus:
			if !sc.before[ph.name] {
				d.errf(n, path, "placeholder {%s} reads lookup %q, which runs after the response; %s (give %q when: before, or make this lookup an after-lookup)", ph.raw, ph.name, allowed, ph.name)
			}
		}
	}
}

// lookupDeps returns the lookups an emit reads, directly or through the
// templates of other lookups, in the order declared.
func (r *Rule) lookupDeps(e *emitSpec) []string {
	used := map[string]bool{}
	for _, t := range []*tmpl{e.typ, e.subject, e.tenant, e.dedupeKey} {
		t.lookupNames(used)
	}
	e.data.lookupNames(used)
	// a lookup names only lookups above it: one pass from the bottom closes the set
	for i := len(r.lookups) - 1; i >= 0; i-- {
		lk := r.lookups[i]
		if !used[lk.as] {
			continue
		}
		lk.get.lookupNames(used)
		for _, h := range lk.headers {
			h.t.lookupNames(used)
		}
	}
	var out []string
	for _, lk := range r.lookups {
		if used[lk.as] {
			out = append(out, lk.as)
		}
	}
	return out
}

// requestHeader builds the headers a lookup is sent with: the caller's
// Authorization and Cookie (for an after-lookup, the cookies as the client
// holds them once the response's Set-Cookie lines are applied — for a
// sub-exchange of a batch, the envelope's response), then the
// rule's lookup.header values, each replacing the header of its name. A
// header whose template does not render (a placeholder resolved to nothing,
// or the value is empty, too long or holds a control character) is left out
// (and the caller's header of that name with it), and its placeholders are
// added to missing.
func (lk *lookupSpec) requestHeader(ex *Exchange, params []Param, missing *[]string) http.Header {
	h := http.Header{}
	req := http.Header(ex.RequestHeader)
	if v := req.Values("Authorization"); len(v) > 0 {
		h["Authorization"] = slices.Clone(v)
	}
	cookies := req.Values("Cookie")
	if !lk.before {
		// a sub-exchange's client is the envelope's: its cookies are those
		// the envelope's response set
		cookies = lookupCookies(cookies, http.Header(ex.root().ResponseHeader).Values("Set-Cookie"), time.Now())
	}
	if len(cookies) > 0 {
		h["Cookie"] = slices.Clone(cookies)
	}
	for _, hs := range lk.headers {
		var unresolved []string
		v := hs.t.renderText(ex, params, &unresolved)
		if len(unresolved) == 0 && badHeaderValue(v) == "" {
			h[hs.name] = []string{v}
			continue
		}
		delete(h, hs.name)
		if len(unresolved) == 0 {
			for _, ph := range hs.t.phs {
				unresolved = append(unresolved, ph.raw)
			}
		}
		for _, u := range unresolved {
			addMissing(missing, u)
		}
	}
	return h
}

// lookupCookies applies a response's Set-Cookie lines to the Cookie lines a
// request carried, as a browser would for the next request, kept simple:
// a cookie set by the response replaces every request cookie of the same name
// (or is added), one cleared by it (Max-Age of zero or less, or an Expires
// in the past) is dropped, and the other request cookies stay as sent.
// Path, Domain, Secure and the like are not looked at. At most
// MaxLookupSetCookies lines are applied. When no line changes anything the
// request's lines come back as they were.
func lookupCookies(reqLines, setCookies []string, now time.Time) []string {
	if len(setCookies) == 0 {
		return reqLines
	}
	type change struct {
		name, pair string // pair is "" for a cleared cookie
	}
	var changes []change
	for i, line := range setCookies {
		if i == MaxLookupSetCookies {
			break
		}
		c, err := http.ParseSetCookie(line)
		if err != nil || c.Name == "" {
			continue
		}
		cleared := c.MaxAge < 0 || (c.MaxAge == 0 && !c.Expires.IsZero() && c.Expires.Before(now))
		ch := change{name: c.Name}
		if !cleared {
			ch.pair = (&http.Cookie{Name: c.Name, Value: c.Value}).String()
			if ch.pair == "" {
				continue
			}
		}
		// a later line for the same name wins
		changes = slices.DeleteFunc(changes, func(o change) bool { return o.name == ch.name })
		changes = append(changes, ch)
	}
	if len(changes) == 0 {
		return reqLines
	}
	changed := func(name string) bool {
		return slices.ContainsFunc(changes, func(o change) bool { return o.name == name })
	}
	var pairs []string
	for _, line := range reqLines {
		for _, part := range strings.Split(line, ";") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			name, _, _ := strings.Cut(part, "=")
			if changed(strings.TrimSpace(name)) {
				continue
			}
			pairs = append(pairs, part)
		}
	}
	for _, ch := range changes {
		if ch.pair != "" {
			pairs = append(pairs, ch.pair)
		}
	}
	if len(pairs) == 0 {
		return nil
	}
	return []string{strings.Join(pairs, "; ")}
}

// MatchBefore returns the rules with before-lookups (when: before) that may
// match the exchange before it is forwarded: method, path, host and request
// conditions hold. The status and the response are not known yet, so a
// rule returned here may not match in the end (the upstream refuses the
// request, say): its before-lookups are sent all the same. The request
// body, when a candidate rule reads it, must be on the exchange already
// (Plan says so). Run each match's before-lookups in order (m.LookupBefore,
// m.Lookup), keep the results, and hand them to the same rule's Match after
// the response.
//
// When some rule has before-lookups, a batch rule whose method, path, host
// and request conditions hold is returned too (m.IsBatch()): split its
// request side with m.BatchRequests and call MatchBefore on each
// sub-request, whose answers go to the sub-exchange of the same position
// (Exchange.SubIndex) that m.Batch gives after the response.
func (s *Set) MatchBefore(ex *Exchange) []*Match {
	if s == nil || !s.anyBefore || ex.Path == "" || ex.Path[0] != '/' {
		return nil
	}
	var buf [8]int
	var out []*Match
	var pbuf [4]Param
	for _, i := range s.candidates(ex.Method, ex.Path, buf[:0]) {
		r := s.rules[i]
		if r.batch != nil {
			if ex.parent != nil {
				continue // batches never nest
			}
		} else if !r.need.BeforeLookups {
			continue
		}
		if params, ok := r.matchRequest(ex, pbuf[:0]); ok {
			out = append(out, newMatch(r, params))
		}
	}
	return out
}

// LookupBefore reports whether the i-th lookup of the rule runs before the
// request is forwarded (when: before).
func (m *Match) LookupBefore(i int) bool { return m.Rule.lookups[i].before }
