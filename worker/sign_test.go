package worker

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	svix "github.com/svix/svix-webhooks/go"
)

// The Standard Webhooks / svix reference vector (used by the official
// libraries' tests in every language).
const (
	vecSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vecMsgID  = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vecTS     = 1614265330
	vecBody   = `{"test": 2432232314}`
	vecSig    = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func mustSecret(t testing.TB) (string, []byte) {
	t.Helper()
	s, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	k, err := DecodeSecret(s)
	if err != nil {
		t.Fatal(err)
	}
	return s, k
}

func TestSignKnownVector(t *testing.T) {
	key, err := DecodeSecret(vecSecret)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Sign([][]byte{key}, vecMsgID, time.Unix(vecTS, 0), []byte(vecBody))
	if err != nil {
		t.Fatal(err)
	}
	if got != vecSig {
		t.Fatalf("Sign = %q, want %q", got, vecSig)
	}
	// Rotation: two secrets give both signatures, space separated, in order.
	_, other := mustSecret(t)
	both, err := Sign([][]byte{other, key}, vecMsgID, time.Unix(vecTS, 0), []byte(vecBody))
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(both, " ")
	if len(parts) != 2 || parts[1] != vecSig || !strings.HasPrefix(parts[0], "v1,") || parts[0] == vecSig {
		t.Fatalf("rotation signature %q, want two v1 signatures ending with %q", both, vecSig)
	}
}

func TestSignErrors(t *testing.T) {
	_, key := mustSecret(t)
	for i, tc := range []struct {
		name    string
		secrets [][]byte
		msgID   string
		wantErr string
	}{
		{name: "no secrets", secrets: nil, msgID: "m", wantErr: "no secret"},
		{name: "empty list", secrets: [][]byte{}, msgID: "m", wantErr: "no secret"},
		{name: "short secret", secrets: [][]byte{make([]byte, 23)}, msgID: "m", wantErr: "secret 0 is 23 bytes"},
		{name: "empty secret", secrets: [][]byte{key, {}}, msgID: "m", wantErr: "secret 1 is 0 bytes"},
		{name: "long secret", secrets: [][]byte{make([]byte, 65)}, msgID: "m", wantErr: "secret 0 is 65 bytes"},
		{name: "empty id", secrets: [][]byte{key}, msgID: "", wantErr: "empty message id"},
	} {
		_, err := Sign(tc.secrets, tc.msgID, time.Now(), []byte("{}"))
		if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%d %s: error %v, want %q", i, tc.name, err, tc.wantErr)
		}
	}
}

// TestSignVerifiesWithReferenceLibraries checks Sign against the official
// Standard Webhooks Go library and svix's verifier, with one and two secrets.
func TestSignVerifiesWithReferenceLibraries(t *testing.T) {
	oldS, oldK := mustSecret(t)
	newS, newK := mustSecret(t)
	_, strangerK := mustSecret(t)
	body := []byte(`{"id":"evt_1","type":"user.created","data":{"email":"a@x.test","name":"Zoë"}}`)
	now := time.Now()

	for i, tc := range []struct {
		name    string
		signers [][]byte
		verify  string
		wantOK  bool
	}{
		{name: "single secret", signers: [][]byte{oldK}, verify: oldS, wantOK: true},
		{name: "rotation, verify old", signers: [][]byte{oldK, newK}, verify: oldS, wantOK: true},
		{name: "rotation, verify new", signers: [][]byte{oldK, newK}, verify: newS, wantOK: true},
		{name: "wrong secret", signers: [][]byte{strangerK}, verify: oldS, wantOK: false},
	} {
		sig, err := Sign(tc.signers, "evt_1", now, body)
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{}
		h.Set(HeaderWebhookID, "evt_1")
		h.Set(HeaderWebhookTimestamp, strconv.FormatInt(now.Unix(), 10))
		h.Set(HeaderWebhookSignature, sig)

		sw, err := standardwebhooks.NewWebhook(tc.verify)
		if err != nil {
			t.Fatal(err)
		}
		if err := sw.Verify(body, h); (err == nil) != tc.wantOK {
			t.Errorf("%d %s: standardwebhooks.Verify = %v, want ok=%v", i, tc.name, err, tc.wantOK)
		}
		sv, err := svix.NewWebhook(tc.verify)
		if err != nil {
			t.Fatal(err)
		}
		if err := sv.Verify(body, h); (err == nil) != tc.wantOK {
			t.Errorf("%d %s: svix.Verify = %v, want ok=%v", i, tc.name, err, tc.wantOK)
		}
		// A changed body byte must fail.
		if tc.wantOK {
			tampered := append([]byte(nil), body...)
			tampered[len(tampered)-2] ^= 1
			if sw.Verify(tampered, h) == nil || sv.Verify(tampered, h) == nil {
				t.Errorf("%d %s: tampered body verified", i, tc.name)
			}
		}
	}
}

// ExampleSign signs the Standard Webhooks reference message.
func ExampleSign() {
	key, _ := DecodeSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	sig, _ := Sign([][]byte{key}, "msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	fmt.Println(sig)
	// Output: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=
}
