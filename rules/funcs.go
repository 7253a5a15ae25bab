package rules

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/tidwall/gjson"
)

// Placeholder functions read a value inside a value: the claims of a JWT, the
// last segment of a URL, a regex capture. They wrap any placeholder, and each
// other, as calls: {jwt(request.body.token).sub},
// {last_segment(response.header.Location)},
// {match(response.header.Location, "/Users/([^/?]+)$")}. A function works on
// what its argument resolves to (phCall.apply), whatever kind of placeholder
// that is, so a new kind of placeholder can be wrapped without a change here.
// A value that does not fit (not a JWT, no match) resolves to nothing: the
// placeholder is missing, never an error.

// fnKind is a placeholder function.
type fnKind uint8

const (
	fnJWT fnKind = iota + 1
	fnLastSegment
	fnMatch
)

// funcs are the placeholder functions by name, with how many arguments each takes.
var funcs = map[string]struct {
	fn    fnKind
	nargs int
	usage string
}{
	"jwt":          {fnJWT, 1, "jwt(request.body.token) or jwt(request.body.token).sub"},
	"last_segment": {fnLastSegment, 1, "last_segment(response.header.Location)"},
	"match":        {fnMatch, 2, `match(response.header.Location, "/Users/([^/?]+)$")`},
}

const funcHelp = `want jwt(…), last_segment(…) or match(…, "regex")`

// phCall is a function applied to a placeholder.
type phCall struct {
	fn   fnKind
	name string       // as written: jwt, last_segment, match
	arg  *placeholder // what the function reads: a reference or another call
	re   *regexp.Regexp
	// path is jwt's gjson path into the claims, after ")."; "" for all of them.
	path string
}

// isCall reports whether a placeholder is a function call: a lower-case name
// (letters, digits, '_') and "(". No reference starts that way: theirs are
// followed by '.'.
func isCall(s string) bool {
	i := 0
	for i < len(s) && (s[i] >= 'a' && s[i] <= 'z' || s[i] == '_' || i > 0 && s[i] >= '0' && s[i] <= '9') {
		i++
	}
	if i == 0 {
		return false
	}
	for i < len(s) && s[i] == ' ' {
		i++
	}
	return i < len(s) && s[i] == '('
}

// skipString returns the index of the '"' that closes the string opening at
// s[i], or -1. A backslash takes the next byte with it, so \" does not close.
func skipString(s string, i int) int {
	for j := i + 1; j < len(s); j++ {
		switch s[j] {
		case '\\':
			j++
		case '"':
			return j
		}
	}
	return -1
}

// parseCall parses raw, a call "name(args)[.path]", nested inside calls others.
func parseCall(raw string, sc *scope, calls int) (*placeholder, error) {
	open := strings.IndexByte(raw, '(')
	name := strings.TrimSpace(raw[:open])
	f, ok := funcs[name]
	if !ok {
		return nil, fmt.Errorf("unknown function %s(…) in {%s}: %s", name, raw, funcHelp)
	}
	if calls >= MaxFuncNesting {
		return nil, fmt.Errorf("{%s}: functions nest more than %d deep (rules.MaxFuncNesting)", raw, MaxFuncNesting)
	}
	args, tail, err := splitArgs(raw, open+1)
	if err != nil {
		return nil, fmt.Errorf("{%s}: %v", raw, err)
	}
	if len(args) != f.nargs || strings.TrimSpace(args[0]) == "" {
		want := "one value"
		if f.nargs == 2 {
			want = "a value and a quoted regex"
		}
		return nil, fmt.Errorf("{%s}: %s(…) takes %s, as in {%s}", raw, name, want, f.usage)
	}
	inner := strings.TrimSpace(args[0])
	if strings.HasPrefix(inner, "{") {
		return nil, fmt.Errorf("{%s}: write the value inside %s(…) without braces, as in {%s}", raw, name, f.usage)
	}
	arg, err := parsePlaceholderIn(inner, sc, calls+1)
	if err != nil {
		return nil, err
	}
	c := &phCall{fn: f.fn, name: name, arg: arg}
	if f.fn == fnMatch {
		if c.re, err = parseRegexArg(strings.TrimSpace(args[1])); err != nil {
			return nil, fmt.Errorf("{%s}: %v", raw, err)
		}
	}
	tail = strings.TrimSpace(tail)
	switch {
	case tail == "":
	case f.fn != fnJWT:
		return nil, fmt.Errorf("{%s}: %s(…) gives a string; only jwt(…) takes a claim path after it, as in {jwt(request.body.token).sub}", raw, name)
	case !strings.HasPrefix(tail, ".") || len(tail) == 1:
		return nil, fmt.Errorf("{%s}: want .<claim path> or nothing after jwt(…), as in {jwt(request.body.token).sub}, got %q", raw, tail)
	default:
		c.path = tail[1:]
	}
	// the placeholder reads what its innermost argument reads (see placeholder.call)
	ph := &placeholder{raw: raw, kind: arg.kind, name: arg.name, gpath: arg.gpath, call: c}
	ph.secretKeys = secretElements(ph)
	return ph, nil
}

// splitArgs splits the arguments of the call whose "(" ends at raw[start-1]:
// commas and the closing ")" count only outside strings and brackets (a gjson
// path may hold both). tail is what follows the ")".
func splitArgs(raw string, start int) (args []string, tail string, err error) {
	depth, from := 0, start
	for i := start; i < len(raw); i++ {
		switch raw[i] {
		case '"':
			if i = skipString(raw, i); i < 0 {
				return nil, "", fmt.Errorf("unterminated string: close it with \"")
			}
		case '(', '[', '{':
			depth++
		case ']', '}':
			depth--
		case ')':
			if depth == 0 {
				return append(args, raw[from:i]), raw[i+1:], nil
			}
			depth--
		case ',':
			if depth == 0 {
				args = append(args, raw[from:i])
				from = i + 1
			}
		}
	}
	return nil, "", fmt.Errorf("want a \")\" to close the call")
}

// parseRegexArg reads match's second argument: an RE2 regex in double
// quotes, where \" stands for a quote and every other backslash is the
// regex's own (so "\d+" is the regex \d+).
func parseRegexArg(s string) (*regexp.Regexp, error) {
	if !strings.HasPrefix(s, `"`) || skipString(s, 0) != len(s)-1 {
		return nil, fmt.Errorf(`want the regex in double quotes, as in "/Users/([^/?]+)$", got %s`, QuoteCut(s))
	}
	expr := unescapeQuotes(s[1 : len(s)-1])
	if len(expr) > MaxRegexLen {
		return nil, fmt.Errorf("the regex is %d bytes; a regex may be at most %d (rules.MaxRegexLen)", len(expr), MaxRegexLen)
	}
	re, err := regexp.Compile(expr)
	if err != nil {
		return nil, fmt.Errorf("the regex %s does not compile: %v", QuoteCut(expr), err)
	}
	return re, nil
}

// unescapeQuotes turns \" into " and keeps every other backslash pair as written.
func unescapeQuotes(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			if s[i+1] != '"' {
				b.WriteByte('\\')
			}
			b.WriteByte(s[i+1])
			i++
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// apply is the function applied to v, the resolved argument.
func (c *phCall) apply(ex *Exchange, v value) value {
	s, ok := v.scalarText()
	if !ok {
		return value{} // missing, an object or a list: nothing to read a part of
	}
	switch c.fn {
	case fnJWT:
		claims, ok := ex.jwtClaims(s)
		if !ok {
			return value{}
		}
		if c.path == "" {
			return value{found: true, isJSON: true, raw: claims}
		}
		// the claims are not the token: no taint (their own keys and shapes
		// are redacted as any value's)
		return jsonResult(gjson.Get(claims, c.path))
	case fnLastSegment:
		seg, scanned, ok := lastSegment(s)
		if !ok {
			return value{}
		}
		return value{found: true, text: seg, taint: v.taint | secretShape(scanned)}
	case fnMatch:
		m := c.re.FindStringSubmatchIndex(s)
		if m == nil {
			return value{}
		}
		lo, hi := m[0], m[1]
		if len(m) >= 4 {
			lo, hi = m[2], m[3] // the first capture group
		}
		if lo < 0 || lo == hi {
			return value{} // the group took no part, or matched nothing
		}
		return value{found: true, text: s[lo:hi], taint: v.taint | secretShape(s)}
	}
	return value{}
}

// scalarText is the value as text when it is a string, a number or a
// boolean; objects, lists, null and nothing give false.
func (v value) scalarText() (string, bool) {
	if !v.found {
		return "", false
	}
	if !v.isJSON {
		return v.text, true
	}
	r := gjson.Parse(v.raw)
	switch r.Type {
	case gjson.String:
		return r.Str, true
	case gjson.Number, gjson.True, gjson.False:
		return r.Raw, true
	}
	return "", false
}

// lastSegment returns the last non-empty path segment of a URL or a path,
// percent-decoded, with the query and fragment dropped: "2819c223" for
// "/scim/v2/Users/2819c223", "https://h/Users/2819c223/?x=1" and
// "Users/2819c223". scanned is the path it was taken from (for the taint).
func lastSegment(s string) (seg, scanned string, ok bool) {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		s = s[:i]
	}
	if i := strings.Index(s, "://"); i > 0 && validScheme(s[:i]) {
		// an absolute URL: the path starts after the authority
		rest := s[i+3:]
		j := strings.IndexByte(rest, '/')
		if j < 0 {
			return "", "", false // no path at all
		}
		s = rest[j:]
	}
	p := strings.TrimRight(s, "/")
	seg = p[strings.LastIndexByte(p, '/')+1:]
	if seg == "" {
		return "", "", false
	}
	dec, err := url.PathUnescape(seg)
	if err != nil || dec == "" {
		return "", "", false
	}
	return dec, s, true
}

// validScheme reports whether s is a URL scheme (RFC 3986: a letter, then letters, digits, + - .).
func validScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return s != ""
}

// jwtMemo remembers the last token an exchange decoded: a rule reading
// several claims of one token decodes it once. It holds no flags, to keep
// Exchange (a batch holds one per sub-request) small: decodeJWT's claims
// are never empty when it succeeds, so an empty claims says it failed; and
// the zero memo, token "", holds what decodeJWT("") returns.
type jwtMemo struct {
	token, claims string
}

// jwtClaims returns the claims of the JWT s as a JSON object (see decodeJWT),
// remembering the last token decoded for this exchange.
func (ex *Exchange) jwtClaims(s string) (string, bool) {
	if ex == nil {
		return decodeJWT(s)
	}
	m := &ex.memoOf().jwt
	if m.token != s {
		m.claims, _ = decodeJWT(s) // "" when it is not a JWT
		m.token = s
	}
	return m.claims, m.claims != ""
}

// maxJWTClaimsSegment is the longest payload segment whose decoded bytes can
// fit in MaxJWTClaims (padding aside).
var maxJWTClaimsSegment = base64.RawURLEncoding.EncodedLen(MaxJWTClaims)

// decodeJWT returns the claims of a JWS compact serialization (header.payload.signature)
// as a JSON object, without verifying anything: s may carry a "Bearer "
// prefix; the header must be base64url of a JSON object with "alg", the
// payload base64url (padded or not) of a JSON object of at most MaxJWTClaims
// bytes. Anything else is not a JWT (false). An encrypted JWT (JWE, five
// segments) has no claims to read.
func decodeJWT(s string) (string, bool) {
	s = strings.TrimSpace(s)
	if len(s) > 7 && strings.EqualFold(s[:7], "bearer ") {
		s = strings.TrimLeft(s[7:], " ")
	}
	hdr, rest, ok1 := strings.Cut(s, ".")
	payload, sig, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || strings.IndexByte(sig, '.') >= 0 {
		return "", false
	}
	for i := 0; i < len(sig); i++ {
		if !isBase64URL(sig[i]) && sig[i] != '=' {
			return "", false
		}
	}
	if !isJOSEHeader(strings.TrimRight(hdr, "=")) {
		return "", false
	}
	payload = strings.TrimRight(payload, "=")
	if payload == "" || len(payload) > maxJWTClaimsSegment {
		return "", false
	}
	claims, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return "", false
	}
	claims = bytes.TrimSpace(claims)
	if len(claims) == 0 || claims[0] != '{' || len(claims) > MaxJWTClaims || !validJSON(claims) {
		return "", false
	}
	return string(claims), true
}
