package rules

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// Redacted and visible keys: every field the README names, and the
// lookalikes that must stay visible.
var (
	secretKeyNames = []string{
		// passwords and generic secrets
		"password", "Password_Confirmation", "new_password", "password_hash", "passwd", "pwd", "passphrase", "passcode",
		"secret", "client_secret", "token", "api_key", "apiKey", "X-Api-Key", "private_key", "privateKey", "privkey",
		"credential", "credentials", "cookie", "authorization", "signing_key", "encryption_key",
		// TOTP URIs and seeds
		"totp", "totpURI", "totp_uri", "totpUrl", "totp_secret", "totp_seed", "totp_key", "otpauth", "otpauth_url",
		"mfa_secret", "mfa_seed", "otp_secret", "otp_seed", "seed", "seed_phrase", "mnemonic", "hotp", "qr_code", "qrCodeUrl",
		// backup and recovery codes
		"backupCodes", "backup_codes", "backup_code", "recovery_key", "recoveryKey", "recoveryCodes", "recovery_codes", "recovery_code",
		// one-time and verification codes
		"otp", "otpCode", "otp_code", "code", "codes", "verification_code", "verificationCode", "verify_code", "mfa_code", "mfaCode",
		"totp_code", "two_factor_code", "2fa_code", "tfa_code", "sms_code", "email_code", "confirmation_code", "confirm_code",
		"auth_code", "authorization_code", "oauth_code", "security_code", "reset_code", "activation_code", "one_time_code",
		"device_code", "user_code", "login_code", "magic_code", "invite_code", "access_code", "unlock_code", "code_verifier",
		// PINs
		"pin", "PIN", "pinCode", "pin_code", "pin_number", "new_pin", "card_pin",
		// session ids
		"session", "sessionId", "session_id", "SESSIONID", "sid", "sessid", "PHPSESSID", "JSESSIONID", "session_key",
		"user_session", "session_token", "sessionCookie",
		// JWTs
		"jwt", "jwt_token", "id_token", "idToken", "access_token", "accessToken", "refresh_token", "refresh-token",
		// access keys
		"accessKey", "access_key", "access_key_id", "aws_access_key_id", "secret_access_key", "AWSSecretAccessKey",
		// card and identity numbers
		"cvv", "cvc", "ssn",
	}
	visibleKeyNames = []string{
		"id", "user_id", "email", "name", "username", "display_name", "role", "tenant", "locale", "phone", "created_at",
		"country_code", "countryCode", "zip_code", "zipcode", "postal_code", "area_code", "status_code", "error_code",
		"currency_code", "language_code", "phone_code", "promo_code", "region_code", "barcode", "code_challenge",
		"code_challenge_method", "session_expires_at", "sessions", "sessions_count", "mfa_enabled", "totp_enabled",
		"mfa_methods", "seeds_planted", "pinned", "shipping", "opinion", "key", "keys", "public_key_id", "alg", "kid",
	}
)

const redactRules = `version: 1
rules:
  - name: whole
    match: {method: POST, path: /whole}
    emit: {type: a.b, data: "{response.body}"}
  - name: text
    match: {method: POST, path: /text}
    emit: {type: a.b, subject: "{response.body.u}", data: {t: "user={response.body.u}", v: "{response.body.value}", vt: "v={response.body.value}"}}
  - name: kept
    match: {method: POST, path: /kept}
    emit: {type: a.b, data: "{response.body}", keep_shapes: [jwt, whsec], keep_secrets: [code, sid]}
`

func responseExchange(path, body string) *Exchange {
	return &Exchange{Method: "POST", Path: path, Status: 200, ResponseHeader: http.Header{"Content-Type": {"application/json"}}, ResponseBody: []byte(body)}
}

func TestRedactionKeyTable(t *testing.T) {
	s := mustSet(t, redactRules)
	check := func(key string, secret bool) {
		t.Helper()
		kj, _ := json.Marshal(key)
		body := fmt.Sprintf(`{%s:"v4lue-%s","id":"u1"}`, kj, key)
		got := string(eval(t, s, responseExchange("/whole", body))[0].Data)
		want := body
		if secret {
			want = fmt.Sprintf(`{%s:"[REDACTED]","id":"u1"}`, kj)
		}
		if got != want {
			t.Errorf("key %q: got %s, want %s", key, got, want)
		}
		if secretNorm(normKey(key)) != secret {
			t.Errorf("key %q: secretNorm %v", key, !secret)
		}
		// the same key read by a placeholder, under an innocuous data key
		if !strings.ContainsAny(key, ".#@*?|\\") {
			p := mustSet(t, fmt.Sprintf("version: 1\nrules:\n  - name: r\n    match: {method: POST, path: /p}\n    emit: {type: a.b, data: {x: \"{response.body.%s}\"}}\n", key))
			got := string(eval(t, p, responseExchange("/p", body))[0].Data)
			want := fmt.Sprintf(`{"x":"v4lue-%s"}`, key)
			if secret {
				want = `{"x":"[REDACTED]"}`
			}
			if got != want {
				t.Errorf("placeholder {response.body.%s}: got %s, want %s", key, got, want)
			}
		}
	}
	for _, k := range secretKeyNames {
		check(k, true)
	}
	for _, k := range visibleKeyNames {
		check(k, false)
	}
}

// jwtOf builds a JWT-shaped string with the given header.
func jwtOf(header string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(header)) + "." + enc([]byte(`{"sub":"u_1","exp":1900000000}`)) + "." + enc([]byte("signature-bytes"))
}

var shapeCases = []struct {
	name   string
	value  string
	shape  shapeSet // 0: stays visible
	inJSON string   // the value as a JSON string, when it is not json.Marshal's
}{
	{name: "otpauth URI", value: "otpauth://totp/Acme:ann@example.test?secret=JBSWY3DPEHPK3PXP&issuer=Acme", shape: shapeOTPAuth},
	{name: "otpauth upper case, in prose", value: "scan OTPAUTH://hotp/x?secret=ABC&counter=1", shape: shapeOTPAuth},
	{name: "otpauth with escaped slashes", value: "otpauth://totp/a?secret=B", shape: shapeOTPAuth, inJSON: `"otpauth:\/\/totp\/a?secret=B"`},
	{name: "JWT HS256", value: jwtOf(`{"alg":"HS256","typ":"JWT"}`), shape: shapeJWT},
	{name: "JWT with a Bearer prefix", value: "Bearer " + jwtOf(`{"alg":"RS256","kid":"k1"}`), shape: shapeJWT},
	{name: "JWT alg none, empty signature", value: strings.TrimSuffix(jwtOf(`{"alg":"none"}`), base64.RawURLEncoding.EncodeToString([]byte("signature-bytes"))), shape: shapeJWT},
	{name: "JWT in a URL fragment", value: "https://app.test/cb#id_token=" + jwtOf(`{ "alg" : "ES256" }`) + "&state=x", shape: shapeJWT},
	{name: "JWE (five segments)", value: jwtOf(`{"alg":"RSA-OAEP","enc":"A256GCM"}`) + ".iv.tag", shape: shapeJWT},
	{name: "PEM RSA private key", value: "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n", shape: shapePrivateKey},
	{name: "PEM PKCS#8 private key", value: "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----", shape: shapePrivateKey},
	{name: "PEM OpenSSH private key", value: "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n-----END OPENSSH PRIVATE KEY-----", shape: shapePrivateKey},
	{name: "PEM encrypted private key", value: "x -----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIE", shape: shapePrivateKey},
	{name: "webhook secret", value: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", shape: shapeWhsec},
	{name: "webhook secret in prose", value: "secret is whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD.", shape: shapeWhsec},
	// visible
	{name: "email", value: "ann@example.test"},
	{name: "name", value: "Ann Example"},
	{name: "id", value: "u_1234567890"},
	{name: "hostname", value: "www.example.test"},
	{name: "version", value: "v1.2.3"},
	{name: "dotted words", value: "a.b.c.d"},
	{name: "dotted base64 without a JOSE header", value: "aGVsbG8.d29ybGQ.eHl6"},
	{name: "JSON header without alg", value: jwtOf(`{"typ":"JWT"}`)},
	{name: "one JWT segment", value: base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256"}`))},
	{name: "the word otpauth", value: "otpauth is a URI scheme"},
	{name: "the prefix whsec_", value: "secrets start with whsec_"},
	{name: "short whsec_", value: "whsec_abc"},
	{name: "PEM public key", value: "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----"},
	{name: "PEM certificate", value: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"},
	{name: "URL", value: "https://cdn.example.test/a/u_1.png?v=2"},
}

func TestRedactionShapeTable(t *testing.T) {
	s := mustSet(t, redactRules)
	for _, tc := range shapeCases {
		t.Run(tc.name, func(t *testing.T) {
			if got := secretShape(tc.value); got != tc.shape {
				t.Fatalf("secretShape = %v, want %v", got, tc.shape)
			}
			vj, _ := json.Marshal(tc.value)
			if tc.inJSON != "" {
				vj = []byte(tc.inJSON)
			}
			redacted := tc.shape != 0
			// under an innocuous key, in a whole body, at depth
			body := fmt.Sprintf(`{"value":%s,"list":[{"note":%s}],"u":{"id":"u1","note":%s}}`, vj, vj, vj)
			got := string(eval(t, s, responseExchange("/whole", body))[0].Data)
			mj, _ := json.Marshal(tc.value)
			inData := strings.Trim(string(mj), `"`) // the value as data writes it
			if leaked := strings.Contains(got, inData); leaked == redacted {
				t.Errorf("whole data: %s", got)
			}
			if redacted && strings.Count(got, Redacted) != 3 {
				t.Errorf("whole data: want 3 redactions, got %s", got)
			}
			// whole-value and text placeholders, and objects in text and the subject
			ev := eval(t, s, responseExchange("/text", body))[0]
			var d struct{ T, V, Vt string }
			if err := json.Unmarshal(ev.Data, &d); err != nil {
				t.Fatal(err)
			}
			for what, got := range map[string]string{"subject": ev.Subject, "text object": d.T} {
				if strings.Contains(got, inData) == redacted || strings.Contains(got, Redacted) != redacted {
					t.Errorf("%s: %q", what, got)
				}
			}
			for what, got := range map[string]string{"whole value": d.V, "text value": d.Vt} {
				if strings.Contains(got, tc.value) == redacted || strings.Contains(got, Redacted) != redacted {
					t.Errorf("%s: %q", what, got)
				}
			}
		})
	}
}

func TestKeepShapesAndSecrets(t *testing.T) {
	s := mustSet(t, redactRules)
	jwt := jwtOf(`{"alg":"HS256"}`)
	whsec := "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	otp := "otpauth://totp/a?secret=B"
	body := fmt.Sprintf(`{"a":%q,"b":%q,"c":%q,"code":"123456","sid":"s1","session":"s2"}`, jwt, whsec, otp)
	got := string(eval(t, s, responseExchange("/kept", body))[0].Data)
	want := fmt.Sprintf(`{"a":%q,"b":%q,"c":"[REDACTED]","code":"123456","sid":"s1","session":"[REDACTED]"}`, jwt, whsec)
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	_, err := Parse("t.yaml", []byte(ruleFile(`name: r
match: {method: POST, path: /x}
emit: {type: a.b, keep_shapes: [jwt, passwords]}`)))
	if err == nil || !strings.Contains(err.Error(), `want a secret shape (otpauth, jwt, private_key, whsec), got "passwords"`) || !strings.Contains(err.Error(), "t.yaml:") {
		t.Fatalf("error %v", err)
	}
	_, err = Parse("t.yaml", []byte(ruleFile(`name: r
match: {method: POST, path: /x}
emit: {type: a.b, keep_shapes: jwt}`)))
	if err == nil || !strings.Contains(err.Error(), "want a list of secret shapes") {
		t.Fatalf("error %v", err)
	}
}

// TestRedactionOfHeadersCookiesQuery: request and response values follow the
// key rule by their name, and the shape rule by their value.
func TestRedactionOfHeadersCookiesQuery(t *testing.T) {
	jwt := jwtOf(`{"alg":"HS256"}`)
	for _, tc := range []struct {
		ph, value string
		redacted  bool
	}{
		{"request.cookie.sid", "s%3Aabc", true},
		{"request.cookie.session", "abc", true},
		{"request.cookie.connect.sid", "abc", true},
		{"request.cookie.PHPSESSID", "abc", true},
		{"request.cookie.JSESSIONID", "abc", true},
		{"request.cookie.__Host-session", "abc", true},
		{"request.cookie.auth_token", "abc", true},
		{"request.cookie.theme", "dark", false},
		{"request.cookie.prefs", jwt, true}, // by shape
		{"request.header.Authorization", "Basic YTpi", true},
		{"request.header.Proxy-Authorization", "Basic YTpi", true},
		{"request.header.Cookie", "sid=abc", true},
		{"request.header.X-Api-Key", "k", true},
		{"request.header.X-CSRF-Token", "t", true},
		{"request.header.X-Session-Id", "s", true},
		{"request.header.User-Agent", "curl/8", false},
		{"request.header.X-Request-Id", "req_1", false},
		{"request.header.X-Forwarded-Assertion", jwt, true}, // by shape
		{"response.header.Set-Cookie", "sid=abc; HttpOnly", true},
		{"response.header.Location", "https://app.test/welcome", false},
		{"response.header.Location", "https://app.test/cb?token=" + jwt, true}, // by shape
		{"request.query.code", "4/0Ab", true},
		{"request.query.access_token", "t", true},
		{"request.query.country_code", "GB", false},
		{"request.query.next", "otpauth://totp/x?secret=A", true}, // by shape
		{"path.token", "t", true},
		{"path.id", "u_1", false},
	} {
		path := "/x"
		if strings.HasPrefix(tc.ph, "path.") {
			path = "/x/{" + strings.TrimPrefix(tc.ph, "path.") + "}"
		}
		src := fmt.Sprintf("version: 1\nrules:\n  - name: r\n    match: {method: POST, path: %q}\n    emit: {type: a.b, subject: \"{%s}\", data: {v: \"{%s}\", t: \"v={%s}\"}}\n", path, tc.ph, tc.ph, tc.ph)
		s := mustSet(t, src)
		ex := &Exchange{Method: "POST", Path: "/x", Status: 200, RequestHeader: http.Header{}, ResponseHeader: http.Header{}}
		name, _ := strings.CutPrefix(tc.ph, "request.cookie.")
		switch {
		case strings.HasPrefix(tc.ph, "request.cookie."):
			ex.RequestHeader.Set("Cookie", name+"="+tc.value)
		case strings.HasPrefix(tc.ph, "request.header."):
			ex.RequestHeader.Set(strings.TrimPrefix(tc.ph, "request.header."), tc.value)
		case strings.HasPrefix(tc.ph, "response.header."):
			ex.ResponseHeader.Set(strings.TrimPrefix(tc.ph, "response.header."), tc.value)
		case strings.HasPrefix(tc.ph, "request.query."):
			ex.RawQuery = strings.TrimPrefix(tc.ph, "request.query.") + "=" + tc.value
		case strings.HasPrefix(tc.ph, "path."):
			ex.Path = "/x/" + tc.value
		}
		evs := eval(t, s, ex)
		if len(evs) != 1 {
			t.Fatalf("{%s}: %d events", tc.ph, len(evs))
		}
		ev := evs[0]
		var d struct{ V, T string }
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			t.Fatal(err)
		}
		if len(ev.Source.Missing) > 0 {
			t.Fatalf("{%s}: missing %v", tc.ph, ev.Source.Missing)
		}
		for what, got := range map[string]string{"subject": ev.Subject, "whole value": d.V, "text": d.T} {
			if strings.Contains(got, tc.value) == tc.redacted || strings.Contains(got, Redacted) != tc.redacted {
				t.Errorf("{%s} %s: %q (redacted: want %v)", tc.ph, what, got, tc.redacted)
			}
		}
	}
}

// TestObjectsInTextAreRedacted: an object placed in text or as the subject is
// written as the JSON data would hold, its secrets redacted first.
func TestObjectsInTextAreRedacted(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x}
    emit:
      type: a.b
      subject: "{response.body.u}"
      data: {t: "user={response.body.u} roles={response.body.u.roles}", n: "n={response.body.u.n} ok={response.body.u.ok} nil={response.body.u.nil}"}
      redact: [phone]
`)
	body := `{"u":{"id":"u1","password":"hunter2","mfa":{"totpURI":"x","backup_codes":["a","b"]},"phone":"555","roles":["admin"],"n":1e3,"ok":true,"nil":null,"t":"` + jwtOf(`{"alg":"HS256"}`) + `"}}`
	ev := eval(t, s, responseExchange("/x", body))[0]
	wantU := `{"id":"u1","password":"[REDACTED]","mfa":{"totpURI":"[REDACTED]","backup_codes":"[REDACTED]"},"phone":"[REDACTED]","roles":["admin"],"n":1e3,"ok":true,"nil":null,"t":"[REDACTED]"}`
	if ev.Subject != wantU {
		t.Errorf("subject %s", ev.Subject)
	}
	var d struct{ T, N string }
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		t.Fatal(err)
	}
	if d.T != `user=`+wantU+` roles=["admin"]` || d.N != "n=1000 ok=true nil=" {
		t.Errorf("text %q / %q", d.T, d.N)
	}
}

// TestSubjectIsValidUTF8: a subject reads back from the envelope as it was
// rendered, invalid UTF-8 mended byte by byte as in data.
func TestSubjectIsValidUTF8(t *testing.T) {
	s := mustSet(t, redactRules)
	ev := eval(t, s, responseExchange("/text", "{\"u\":\"a\xff\xfeb\",\"value\":\"\xdd\"}"))[0]
	if ev.Subject != "a\uFFFD\uFFFDb" || string(ev.Data) != `{"t":"user=a`+"\uFFFD\uFFFD"+`b","v":"\ufffd","vt":"v=`+"\uFFFD"+`"}` {
		t.Fatalf("subject %q data %s", ev.Subject, ev.Data)
	}
}
