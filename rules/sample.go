package rules

import (
	"net/url"
	"strings"
)

// Redaction of coverage samples. The exchanges that no rule matched are
// sampled (see RouteShape) so that an admin sees what the rules miss and
// `authtap rules suggest` can draft rules with tests; a sample goes through
// the same redaction as event data, by key and by shape, before it is kept:
// bodies with RedactBody, header values with RedactHeaderValue, query
// strings with RedactQuery and paths with RedactPath.

// IsSecretName reports whether a body key, header, cookie, query parameter
// or path parameter name is password-like, by the key rule of event data
// (README: "Redaction"): Authorization, Cookie, Set-Cookie, X-Api-Key,
// password, access_token, otp_code, ….
func IsSecretName(name string) bool { return secretNorm(normKey(name)) }

// HasSecretShape reports whether s contains a secret shape: an otpauth URI,
// a JWT, a PEM private key or a Standard Webhooks secret.
func HasSecretShape(s string) bool { return secretShape(s) != 0 }

// RedactBody returns body as JSON (a form-encoded body as an object of its
// fields, as placeholders read it) with the redaction of event data applied
// at every depth: password-like keys and secret-shaped strings become
// Redacted, nesting past MaxDataDepth becomes Truncated. ok is false for a
// body that is not JSON (or is empty); such a body must not be kept. It runs
// in one pass, linear in len(body).
func RedactBody(body []byte, contentType string) (redacted []byte, ok bool) {
	js, ok := bodyAsJSON(body, contentType)
	if !ok {
		return nil, false
	}
	rc := &renderCtx{}
	return rc.appendJSONValue(nil, string(js), nil, 0), true
}

// RedactHeaderValue returns the value of the header name as a sample may
// keep it: Redacted for a password-like header (Authorization, Cookie,
// Set-Cookie, X-Api-Key, X-CSRF-Token, …) or a value of a secret shape; the
// query and fragment of a Location or Content-Location redacted as
// RedactQuery does; anything else as is.
func RedactHeaderValue(name, value string) string {
	switch {
	case IsSecretName(name):
		return Redacted
	case strings.EqualFold(name, "Location") || strings.EqualFold(name, "Content-Location"):
		return RedactURL(value)
	case HasSecretShape(value):
		return Redacted
	}
	return value
}

// RedactURL redacts the query and the fragment of a URL or path (an OAuth
// redirect carries its code and tokens there) as RedactQuery does, and
// returns Redacted for one with a secret shape left.
func RedactURL(u string) string {
	base, frag, hasFrag := strings.Cut(u, "#")
	base, q, hasQuery := strings.Cut(base, "?")
	out := base
	if hasQuery {
		out += "?" + RedactQuery(q)
	}
	if hasFrag {
		out += "#" + RedactQuery(frag)
	}
	if HasSecretShape(out) {
		return Redacted
	}
	return out
}

// RedactQuery redacts a raw query string (without "?"): the value of every
// password-like parameter (token, code, access_token, …) and every value of
// a secret shape becomes Redacted (escaped); the rest is kept as written.
func RedactQuery(raw string) string {
	if raw == "" {
		return ""
	}
	var b strings.Builder
	b.Grow(len(raw))
	for i, part := range strings.Split(raw, "&") {
		if i > 0 {
			b.WriteByte('&')
		}
		k, v, hasEq := strings.Cut(part, "=")
		name, err := url.QueryUnescape(k)
		if err != nil {
			name = k
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			val = v
		}
		b.WriteString(k)
		if !hasEq {
			continue
		}
		b.WriteByte('=')
		if IsSecretName(name) || HasSecretShape(val) || HasSecretShape(v) {
			b.WriteString(url.QueryEscape(Redacted))
			continue
		}
		b.WriteString(v)
	}
	return b.String()
}

// RedactPath redacts a request path for a sample: a segment that RouteShape
// collapses is replaced by Redacted when it has a secret shape or follows a
// password-like literal segment (/reset-password/<token>, /sessions/<id>,
// /api-keys/<id>); other ids (/users/u_1) stay, so that the sample still
// shows what the route was called with, and so do plain words after a
// password-like segment (/password/reset). Segments past MaxShapeSegments are
// redacted when they have a secret shape.
func RedactPath(path string) string {
	if path == "" || path[0] != '/' || path == "/" {
		if HasSecretShape(path) {
			return Redacted
		}
		return path
	}
	var b strings.Builder
	b.Grow(len(path))
	prev := ""
	for i, n := 1, 0; ; n++ {
		seg, next := nextSeg(path, i)
		b.WriteByte('/')
		switch {
		case HasSecretShape(seg):
			b.WriteString(Redacted)
		case n < MaxShapeSegments && seg != "" && !plainWord(seg) && secretLiteral(prev):
			b.WriteString(Redacted)
		default:
			b.WriteString(seg)
		}
		prev = seg
		if next == len(path) {
			return b.String()
		}
		i = next + 1
	}
}
