package worker

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestNewSecret(t *testing.T) {
	seen := map[string]bool{}
	for range 20 {
		s, err := NewSecret()
		if err != nil {
			t.Fatalf("NewSecret: %v", err)
		}
		if !strings.HasPrefix(s, SecretPrefix) {
			t.Fatalf("secret lacks prefix %q", SecretPrefix)
		}
		key, err := DecodeSecret(s)
		if err != nil {
			t.Fatalf("DecodeSecret(NewSecret()): %v", err)
		}
		if len(key) != 32 {
			t.Fatalf("key is %d bytes, want 32", len(key))
		}
		if seen[s] {
			t.Fatal("NewSecret repeated a secret")
		}
		seen[s] = true
	}
}

func TestDecodeSecret(t *testing.T) {
	enc := func(n int) string {
		return SecretPrefix + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", n)))
	}
	for i, tc := range []struct {
		name    string
		in      string
		wantLen int    // when no error
		wantErr string // substring
	}{
		{name: "spec example (24 bytes)", in: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", wantLen: 24},
		{name: "24 bytes", in: enc(24), wantLen: 24},
		{name: "32 bytes", in: enc(32), wantLen: 32},
		{name: "64 bytes", in: enc(64), wantLen: 64},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "prefix only", in: SecretPrefix, wantErr: "at least 24"},
		{name: "23 bytes", in: enc(23), wantErr: "at least 24"},
		{name: "65 bytes", in: enc(65), wantErr: "at most 64"},
		{name: "missing prefix", in: base64.StdEncoding.EncodeToString(make([]byte, 32)), wantErr: "must start with"},
		{name: "wrong prefix case", in: "WHSEC_" + base64.StdEncoding.EncodeToString(make([]byte, 32)), wantErr: "must start with"},
		{name: "bad base64", in: SecretPrefix + "not*base64!!secretvalue", wantErr: "not valid standard base64"},
		{name: "url base64 alphabet", in: SecretPrefix + strings.Repeat("-_", 16), wantErr: "not valid standard base64"},
		{name: "missing padding", in: strings.TrimRight(enc(25), "="), wantErr: "not valid standard base64"},
	} {
		key, err := DecodeSecret(tc.in)
		if tc.wantErr != "" {
			if err == nil {
				t.Errorf("%d %s: no error, want %q", i, tc.name, tc.wantErr)
				continue
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%d %s: error %q, want it to contain %q", i, tc.name, err, tc.wantErr)
			}
			if body := strings.TrimPrefix(tc.in, SecretPrefix); len(body) >= 8 && strings.Contains(err.Error(), body) {
				t.Errorf("%d %s: error %q echoes the secret", i, tc.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%d %s: %v", i, tc.name, err)
			continue
		}
		if len(key) != tc.wantLen {
			t.Errorf("%d %s: key is %d bytes, want %d", i, tc.name, len(key), tc.wantLen)
		}
	}
}
