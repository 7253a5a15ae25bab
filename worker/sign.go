package worker

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Header names of a Standard Webhooks delivery.
const (
	HeaderWebhookID        = "webhook-id"
	HeaderWebhookTimestamp = "webhook-timestamp"
	HeaderWebhookSignature = "webhook-signature"
)

// signatureVersion prefixes every signature ("v1,<base64>").
const signatureVersion = "v1"

// Sign returns the value of the webhook-signature header for a message: for
// each secret, "v1," followed by the standard base64 of
// HMAC-SHA256(secret, msgID + "." + unix seconds of ts + "." + body), the
// signatures separated by single spaces. Several secrets sign during a
// secret rotation, so that receivers holding either the old or the new secret
// accept the message.
//
// Sign fails when there is no secret, a secret is outside
// [MinSecretBytes, MaxSecretBytes], or msgID is empty.
func Sign(secrets [][]byte, msgID string, ts time.Time, body []byte) (string, error) {
	if len(secrets) == 0 {
		return "", errors.New("signing webhook: no secret")
	}
	if msgID == "" {
		return "", errors.New("signing webhook: empty message id")
	}
	for i, key := range secrets {
		if len(key) < MinSecretBytes || len(key) > MaxSecretBytes {
			return "", fmt.Errorf("signing webhook: secret %d is %d bytes, want %d to %d", i, len(key), MinSecretBytes, MaxSecretBytes)
		}
	}
	unix := strconv.FormatInt(ts.Unix(), 10)

	var sb strings.Builder
	sb.Grow(len(secrets) * (len(signatureVersion) + 1 + base64.StdEncoding.EncodedLen(sha256.Size) + 1))
	for i, key := range secrets {
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(msgID))
		mac.Write([]byte{'.'})
		mac.Write([]byte(unix))
		mac.Write([]byte{'.'})
		mac.Write(body)
		var sum [sha256.Size]byte
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(signatureVersion)
		sb.WriteByte(',')
		sb.WriteString(base64.StdEncoding.EncodeToString(mac.Sum(sum[:0])))
	}
	return sb.String(), nil
}
