package worker

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// SecretPrefix starts every endpoint signing secret. The rest of the secret
// is the standard base64 encoding of the raw HMAC key, as the Standard
// Webhooks specification and svix use.
const SecretPrefix = "whsec_"

// Secret length bounds, in raw (decoded) bytes.
const (
	// MinSecretBytes is the shortest raw key a secret may hold (192 bits).
	MinSecretBytes = 24
	// MaxSecretBytes is the longest raw key a secret may hold (512 bits).
	MaxSecretBytes = 64
	// newSecretBytes is the key length NewSecret generates (256 bits).
	newSecretBytes = 32
)

// NewSecret returns a fresh signing secret: SecretPrefix followed by the
// base64 encoding of 32 bytes from crypto/rand.
func NewSecret() (string, error) {
	key := make([]byte, newSecretBytes)
	if _, err := rand.Read(key); err != nil {
		return "", fmt.Errorf("generating webhook secret: %w", err)
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(key), nil
}

// DecodeSecret returns the raw HMAC key held by secret s. It refuses an empty
// secret, a missing SecretPrefix, invalid base64 and keys shorter than
// MinSecretBytes or longer than MaxSecretBytes. Errors describe the problem
// without ever repeating the secret.
func DecodeSecret(s string) ([]byte, error) {
	if s == "" {
		return nil, errors.New("decoding webhook secret: secret is empty")
	}
	rest, ok := strings.CutPrefix(s, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("decoding webhook secret: secret must start with %q", SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(rest)
	if err != nil {
		// The base64 error quotes an offset into the secret, never its
		// bytes, but we drop it anyway to keep the promise simple.
		return nil, fmt.Errorf("decoding webhook secret: text after %q is not valid standard base64", SecretPrefix)
	}
	switch {
	case len(key) < MinSecretBytes:
		return nil, fmt.Errorf("decoding webhook secret: key is %d bytes, want at least %d", len(key), MinSecretBytes)
	case len(key) > MaxSecretBytes:
		return nil, fmt.Errorf("decoding webhook secret: key is %d bytes, want at most %d", len(key), MaxSecretBytes)
	}
	return key, nil
}
