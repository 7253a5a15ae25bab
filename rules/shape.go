package rules

import "strings"

// Route shapes name the routes that no rule covers (coverage: the handler's
// authtap_unmatched_total{method,route} metric, the samples GET /unmatched
// lists and `authtap rules suggest`). A shape is the request path with every
// segment that looks like an id collapsed to ShapeParam, so that
// /users/u_123/password and /users/u_456/password are one route,
// /users/{id}/password. A shape is also a valid path template.
//
// A segment is taken for an id (and collapsed) when it
//
//   - is longer than MaxShapeSegmentLen bytes, or at least 32 bytes long;
//   - holds a byte that is not a plain URL path character: anything but ASCII
//     letters, digits and - . _ ~ ! $ & ' ( ) * + , ; = : @ (so spaces, %,
//     braces, control bytes and non-ASCII text never reach a label);
//   - is a number (123), a UUID (any case), or hex of 8 or more characters
//     with a digit in it (5f2b9c1e, a Mongo ObjectId);
//   - is a prefixed id: 1 to 12 letters, _ or -, then letters and digits that
//     are all digits or at least 3 long with a digit (u_1, usr_01J8ZQ…,
//     cus_NffrFeUfNV2Hib, org-42; not sign-up or api-v2);
//   - is 16 or more characters with a digit (ULIDs, KSUIDs, base64 tokens),
//     or 8 or more with two digits and a letter (X7K2P9AB);
//   - is an email address (a@x.test), or has a secret shape (a JWT, …);
//   - follows a segment with a password-like name (reset-password, tokens,
//     sessions, api-keys; the key rule of event data, a plural s dropped)
//     and is not a plain word of at most 24 lower-case letters, - and _:
//     /reset-password/Xk2… and /sessions/Ab-9… collapse, /password/reset
//     stays.
//
// Everything else stays literal: /users/alice is its own shape (the label
// cap below bounds how many such shapes there can be). At most
// MaxShapeSegments segments are kept; the rest of a longer path becomes one
// ShapeRest.
// (rules.MaxShapeSegments and rules.MaxShapeSegmentLen are in limits.go.)
const (
	// ShapeParam replaces a segment that looks like an id.
	ShapeParam = "{id}"
	// ShapeRest replaces the segments past MaxShapeSegments.
	ShapeRest = "{rest...}"
)

// RouteShape returns the route shape of a request path (see MaxShapeSegments
// for the heuristic). A path that does not start with "/" has the shape
// "/{id}".
func RouteShape(path string) string { return string(AppendRouteShape(nil, path)) }

// AppendRouteShape appends the route shape of path to dst. It reads each
// byte of path a bounded number of times and allocates nothing when dst has
// room (about 1 KiB at most).
func AppendRouteShape(dst []byte, path string) []byte {
	if path == "" || path[0] != '/' {
		return append(dst, "/"+ShapeParam...)
	}
	if path == "/" {
		return append(dst, '/')
	}
	prev := ""
	for i, n := 1, 0; ; n++ {
		if n == MaxShapeSegments {
			return append(dst, "/"+ShapeRest...)
		}
		seg, next := nextSeg(path, i)
		dst = append(dst, '/')
		if idLike(seg) || seg != "" && !plainWord(seg) && secretLiteral(prev) {
			dst = append(dst, ShapeParam...)
		} else {
			dst = append(dst, seg...)
		}
		prev = seg
		if next == len(path) {
			return dst
		}
		i = next + 1
	}
}

// secretLiteral reports a path segment that names secrets (tokens,
// sessions, reset-password, api-keys): the segment after it may be one. It
// allocates nothing.
func secretLiteral(seg string) bool {
	if seg == "" || len(seg) > MaxShapeSegmentLen {
		return false
	}
	var buf [MaxShapeSegmentLen]byte
	n := appendNormKey(buf[:0], seg)
	return secretNormBytes(n) || len(n) > 1 && n[len(n)-1] == 's' && secretNormBytes(n[:len(n)-1])
}

// plainWord reports a segment of at most 24 lower-case letters, - and _
// (reset, change-email): a route word, not a token.
func plainWord(seg string) bool {
	if seg == "" || len(seg) > 24 {
		return false
	}
	for i := 0; i < len(seg); i++ {
		if c := seg[i]; !(c >= 'a' && c <= 'z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// idLike reports whether a path segment looks like an id; see MaxShapeSegments.
func idLike(seg string) bool {
	if seg == "" {
		return false
	}
	if len(seg) > MaxShapeSegmentLen || len(seg) >= 32 {
		return true
	}
	var letters, digits, hex, dots int
	var colon, underscore bool
	at := -1
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case c >= '0' && c <= '9':
			digits++
			hex++
		case c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F':
			letters++
			hex++
		case c >= 'g' && c <= 'z' || c >= 'G' && c <= 'Z':
			letters++
		case c == '@':
			if at < 0 {
				at = i
			}
		case c == '.':
			dots++
		case c == ':':
			colon = true
		case c == '_':
			underscore = true
		case c == '-' || c == '~' || c == '!' || c == '$' || c == '&' || c == '\'' || c == '(' || c == ')' ||
			c == '*' || c == '+' || c == ',' || c == ';' || c == '=':
		default:
			return true // not a plain path character
		}
	}
	switch {
	case digits == len(seg):
		return true
	case at > 0 && strings.IndexByte(seg[at+1:], '.') > 0:
		return true // an email address
	case isUUID(seg):
		return true
	case hex == len(seg) && len(seg) >= 8 && digits > 0:
		return true
	case len(seg) >= 16 && digits > 0:
		return true
	case len(seg) >= 8 && digits >= 2 && letters > 0:
		return true
	case prefixedID(seg):
		return true
	}
	// a secret shape needs a colon (otpauth:), two dots (a JWT) or whsec_
	// and 16 more; a PEM key has spaces, which collapsed it above
	return (colon || dots >= 2 || underscore && len(seg) >= 22) && secretShape(seg) != 0
}

// isUUID reports an RFC 9562 UUID in its 8-4-4-4-12 text form.
func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if i == 8 || i == 13 || i == 18 || i == 23 {
			if c != '-' {
				return false
			}
			continue
		}
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// prefixedID reports ids like u_1, usr_01J8ZQ, cus_NffrFeUfNV2Hib, org-42: 1
// to 12 letters, '_' or '-', then letters and digits that are all digits or
// at least 3 long with a digit.
func prefixedID(s string) bool {
	i := 0
	for i < len(s) && i <= 12 && (s[i] >= 'a' && s[i] <= 'z' || s[i] >= 'A' && s[i] <= 'Z') {
		i++
	}
	if i == 0 || i > 12 || i >= len(s)-1 || s[i] != '_' && s[i] != '-' {
		return false
	}
	rest := s[i+1:]
	digits := 0
	for j := 0; j < len(rest); j++ {
		c := rest[j]
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		default:
			return false
		}
	}
	return digits == len(rest) || len(rest) >= 3 && digits > 0
}
