package rules

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/tidwall/gjson"
	"gopkg.in/yaml.v3"
)

// Which keys are password-like. A key is normalized first (normKey: lower
// case, without '_', '-', '.' and spaces), so totpURI, totp_uri and TOTP-URI
// are one key. It is password-like when the normalized key
//
//   - contains one of secretParts (password_hash, client_secret, access_token,
//     x-api-key, sessionId, backup_codes, …);
//   - is one of secretExact's keys (code, pin, sid, session, seed, otp, …);
//   - ends in "code" or "codes" after one of codePrefixes (otp_code,
//     verification_code, pinCode, mfa_code, …): a plain *_code suffix is not
//     enough, so country_code, zip_code, postal_code, status_code, error_code,
//     currency_code and language_code stay visible;
//   - ends in "pin" (new_pin, card_pin) or "session" (user_session).
//
// The lists are the README's; TestRedactionTable checks every name in it.
var (
	secretParts = []string{
		"password", "passwd", "passphrase", "passcode", "secret", "token", "apikey", "privatekey", "privkey",
		"credential", "cookie", "authorization", "otpauth", "jwt", "backupcode", "recoverycode", "recoverykey",
		"accesskey", "sessionid", "sessid", "sessionkey", "signingkey", "encryptionkey", "codeverifier",
		"seedphrase", "mnemonic", "qrcode",
	}
	codePrefixes = []string{
		"otp", "hotp", "totp", "mfa", "twofactor", "2fa", "tfa", "verification", "verify", "confirmation", "confirm",
		"auth", "oauth", "pin", "sms", "email", "security", "reset", "activation", "onetime", "device", "user",
		"login", "signin", "magic", "invite", "invitation", "access", "recovery", "backup", "unlock",
	}
	secretSuffixes = []string{"pin", "session"}
)

// secretExact reports whether n is one of the exact password-like keys.
// A switch, not a map: it runs on every member of data and hashes nothing.
func secretExact(n []byte) bool {
	switch string(n) {
	case "pwd", "otp", "hotp", "totp", "totpuri", "totpurl", "totpseed", "totpkey", "otpseed", "mfaseed", "seed",
		"pin", "pinnumber", "cvv", "cvc", "ssn", "code", "codes", "sid", "session":
		return true
	}
	return false
}

// partsByFirst indexes secretParts by their first byte, so that secretNorm
// reads a key once instead of once per part: it runs on every member of data.
var partsByFirst = func() (t [256][]string) {
	for _, p := range secretParts {
		t[p[0]] = append(t[p[0]], p)
	}
	return t
}()

// normKey lower-cases a key and drops '_', '-', '.' and spaces.
func normKey(k string) string {
	i := 0
	for i < len(k) && (k[i] < 'A' || k[i] > 'Z') && k[i] != '_' && k[i] != '-' && k[i] != '.' && k[i] != ' ' {
		i++
	}
	if i == len(k) {
		return k // already normal: the usual JSON key, no copy
	}
	return string(appendNormKey(make([]byte, 0, len(k)), k))
}

// appendNormKey appends the normalized form of k to dst.
func appendNormKey(dst []byte, k string) []byte {
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c == '_' || c == '-' || c == '.' || c == ' ':
		case c >= 'A' && c <= 'Z':
			dst = append(dst, c+'a'-'A')
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// secretNorm reports whether the normalized key n is password-like.
func secretNorm(n string) bool { return secretNormBytes([]byte(n)) }

// secretNormBytes is secretNorm on bytes, for the copier's scratch buffer: it
// runs on every member of data, so it allocates nothing.
func secretNormBytes(n []byte) bool {
	if secretExact(n) {
		return true
	}
	for i := 0; i < len(n); i++ {
		for _, p := range partsByFirst[n[i]] {
			if bytes.HasPrefix(n[i:], []byte(p)) {
				return true
			}
		}
	}
	for _, suf := range []string{"codes", "code"} {
		if pre, ok := bytes.CutSuffix(n, []byte(suf)); ok {
			for _, p := range codePrefixes {
				if bytes.HasSuffix(pre, []byte(p)) {
					return true
				}
			}
			break
		}
	}
	for _, suf := range secretSuffixes {
		if bytes.HasSuffix(n, []byte(suf)) {
			return true
		}
	}
	return false
}

// shapeSet is a set of secret shapes (bits).
type shapeSet uint8

// Secret shapes: string values redacted by what they look like, whatever key
// they sit under. The names are what keep_shapes takes.
const (
	shapeOTPAuth    shapeSet = 1 << iota // an otpauth:// URI (a TOTP/HOTP seed)
	shapeJWT                             // a JWT: base64url header.payload.signature, the header a JSON object with "alg"
	shapePrivateKey                      // a PEM private key: -----BEGIN … PRIVATE KEY-----
	shapeWhsec                           // a Standard Webhooks secret: whsec_ and 16 or more base64 characters
)

// shapeNames maps the keep_shapes names to shapes, in the order the docs list them.
var shapeNames = []struct {
	name  string
	shape shapeSet
}{{"otpauth", shapeOTPAuth}, {"jwt", shapeJWT}, {"private_key", shapePrivateKey}, {"whsec", shapeWhsec}}

// minWhsecLen is how many base64 characters must follow "whsec_" for a
// string to be taken for a webhook secret (real ones have 32 or more), so that
// prose naming the prefix stays visible.
const minWhsecLen = 16

// shapeList reads keep_shapes: a list of shape names.
func (d *dec) shapeList(n *yaml.Node, path string) shapeSet {
	n = resolve(n)
	if n.Kind != yaml.SequenceNode {
		d.errf(n, path, "want a list of secret shapes (%s), got %s", shapeHelp(), kindName(n))
		return 0
	}
	var set shapeSet
	for i, c := range n.Content {
		s, ok := d.str(c, index(path, i))
		if !ok {
			continue
		}
		found := false
		for _, sn := range shapeNames {
			if sn.name == s {
				set |= sn.shape
				found = true
			}
		}
		if !found {
			d.errf(c, index(path, i), "want a secret shape (%s), got %q", shapeHelp(), s)
		}
	}
	return set
}

func shapeHelp() string {
	names := make([]string, len(shapeNames))
	for i, sn := range shapeNames {
		names[i] = sn.name
	}
	return strings.Join(names, ", ")
}

// secretShape reports which secret shapes occur in s (0 for none). It reads s
// a few times over, each pass linear: it runs on every string an event gets.
// A first pass (shapeCues) looks for a byte each shape cannot do without,
// so that ordinary strings (ids, names, emails) skip the others.
func secretShape(s string) shapeSet {
	cues := shapeCues(s)
	if cues == 0 {
		return 0
	}
	var found shapeSet
	if cues&cueColon != 0 && hasOTPAuth(s) {
		found |= shapeOTPAuth
	}
	if cues&cueY != 0 && strings.Contains(s, "PRIVATE KEY-----") && strings.Contains(s, "-----BEGIN") {
		found |= shapePrivateKey
	}
	if cues&cueUnderscore != 0 && hasWhsec(s) {
		found |= shapeWhsec
	}
	if cues&cueDot != 0 && strings.Count(s, ".") >= 2 && hasJWT(s) {
		found |= shapeJWT
	}
	return found
}

// The cues shapeCues looks for, each a byte a shape cannot do without:
// "otpauth:" has a colon, "PRIVATE KEY-----" a 'Y', "whsec_" an underscore,
// and a JWT (three or more segments) dots.
const (
	cueColon uint8 = 1 << iota
	cueY
	cueUnderscore
	cueDot
)

// shapeCueOf is the cue of each byte (0 for most).
var shapeCueOf = [256]uint8{':': cueColon, 'Y': cueY, '_': cueUnderscore, '.': cueDot}

// Byte-wise constants of the word-at-a-time scans: every byte 0x01, every byte 0x80.
const (
	swarOnes  = 0x0101010101010101
	swarHighs = 0x8080808080808080
)

// swarHas returns a word that is not 0 exactly when w has a byte equal to c
// (in its high bits, once masked with swarHighs): v-swarOnes&^v sets the
// high bit of every zero byte of v and, through borrows, maybe of bytes
// above one, never any in a word with no zero byte.
func swarHas(w uint64, c byte) uint64 {
	v := w ^ (uint64(c) * swarOnes)
	return (v - swarOnes) &^ v
}

// shapeCues reports which cues occur in s, eight bytes at a time. The last
// word overlaps the one before it when the length is not a multiple of
// eight: rereading a byte changes no "occurs".
func shapeCues(s string) uint8 {
	var c uint8
	if len(s) < 8 {
		for i := 0; i < len(s); i++ {
			c |= shapeCueOf[s[i]]
		}
		return c
	}
	var colon, y, under, dot uint64
	for i := 0; i < len(s); i += 8 {
		w := loadWord(s, min(i, len(s)-8))
		colon |= swarHas(w, ':')
		y |= swarHas(w, 'Y')
		under |= swarHas(w, '_')
		dot |= swarHas(w, '.')
	}
	if colon&swarHighs != 0 {
		c |= cueColon
	}
	if y&swarHighs != 0 {
		c |= cueY
	}
	if under&swarHighs != 0 {
		c |= cueUnderscore
	}
	if dot&swarHighs != 0 {
		c |= cueDot
	}
	return c
}

// loadWord returns the eight bytes of s from i as a little-endian word (the
// compiler makes it one load).
func loadWord(s string, i int) uint64 {
	s = s[i : i+8]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// hasOTPAuth reports whether s contains "otpauth:" in any case.
func hasOTPAuth(s string) bool {
	for i := 0; ; {
		j := strings.IndexByte(s[i:], ':')
		if j < 0 {
			return false
		}
		i += j
		if i >= 7 && strings.EqualFold(s[i-7:i], "otpauth") {
			return true
		}
		i++
	}
}

// hasWhsec reports whether s contains "whsec_" followed by minWhsecLen base64 characters.
func hasWhsec(s string) bool {
	for i := 0; ; {
		j := strings.Index(s[i:], "whsec_")
		if j < 0 {
			return false
		}
		i += j + len("whsec_")
		n := 0
		for i < len(s) && n < minWhsecLen && isBase64Std(s[i]) {
			i++
			n++
		}
		if n >= minWhsecLen {
			return true
		}
	}
}

func isBase64Std(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '-' || c == '_'
}

func isBase64URL(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// maxJWTHeader bounds the header segment decoded to test for a JWT: real
// headers are well under 1 KiB.
const maxJWTHeader = 4 << 10

// hasJWT reports whether s contains a JWT: a run of base64url characters and
// dots with at least three segments (JWS; JWE has five) where a segment
// followed by two or more others decodes to a JSON object with an "alg"
// member (the JOSE header). Each segment is read at most twice.
func hasJWT(s string) bool {
	for i := 0; i < len(s); {
		if !isBase64URL(s[i]) && s[i] != '.' {
			i++
			continue
		}
		start, dots := i, 0
		for i < len(s) && (isBase64URL(s[i]) || s[i] == '.') {
			if s[i] == '.' {
				dots++
			}
			i++
		}
		if dots < 2 {
			continue
		}
		run := s[start:i]
		for seen := 0; dots-seen >= 2; seen++ {
			seg, rest, _ := strings.Cut(run, ".")
			if isJOSEHeader(seg) {
				return true
			}
			run = rest
		}
	}
	return false
}

// isJOSEHeader reports whether seg is base64url (unpadded) of a JSON object with "alg".
func isJOSEHeader(seg string) bool {
	if len(seg) < 4 || len(seg) > maxJWTHeader {
		return false
	}
	hdr, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return false
	}
	hdr = bytes.TrimSpace(hdr)
	return len(hdr) > 0 && hdr[0] == '{' && gjson.ValidBytes(hdr) && gjson.GetBytes(hdr, "alg").Exists()
}

// String names the shapes of the set, for errors and tests.
func (s shapeSet) String() string {
	var names []string
	for _, sn := range shapeNames {
		if s&sn.shape != 0 {
			names = append(names, sn.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return fmt.Sprint(names)
}
