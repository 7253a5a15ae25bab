package rules

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// The functions as they were before the micro-optimizations, as baselines
// for the benchmarks below and references for the equivalence tests.

var idRandRef = sync.Pool{New: func() any {
	var seed [32]byte
	_, _ = rand.Read(seed[:])
	return mrand.NewChaCha8(seed)
}}

func newULIDRef(t time.Time) [16]byte {
	var b [16]byte
	ms := uint64(t.UnixMilli())
	binary.BigEndian.PutUint64(b[:8], ms<<16)
	g := idRandRef.Get().(*mrand.ChaCha8)
	r1, r2 := g.Uint64(), g.Uint64()
	idRandRef.Put(g)
	b[6], b[7] = byte(r1>>8), byte(r1)
	binary.BigEndian.PutUint64(b[8:], r2)
	return b
}

func putEventIDRef(out []byte, b [16]byte) []byte {
	out = out[:eventIDLen]
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	copy(out, "evt_")
	for i := len(out) - 1; i >= 4; i-- {
		out[i] = crockfordAlphabet[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return out
}

func TestPutEventIDMatchesReference(t *testing.T) {
	var a, b [eventIDLen]byte
	r := mrand.New(mrand.NewPCG(1, 2))
	for i := 0; i < 100000; i++ {
		var x [16]byte
		switch i {
		case 0:
		case 1:
			for j := range x {
				x[j] = 0xff
			}
		default:
			binary.BigEndian.PutUint64(x[:8], r.Uint64())
			binary.BigEndian.PutUint64(x[8:], r.Uint64())
			if i < 130 { // one bit set, every position
				x = [16]byte{}
				x[(i-2)/8] = 0x80 >> ((i - 2) % 8)
			}
		}
		if got, want := string(putEventID(a[:], x)), string(putEventIDRef(b[:], x)); got != want {
			t.Fatalf("%x: got %s, want %s", x, got, want)
		}
	}
}

// TestNewULIDBits checks that newULID keeps the layout (48 bits of
// milliseconds, then 80 random bits) and that every random bit takes both
// values across draws.
func TestNewULIDBits(t *testing.T) {
	at := time.UnixMilli(0x0123456789ab)
	var or, and [16]byte
	for i := range and {
		and[i] = 0xff
	}
	for i := 0; i < 4096; i++ {
		u := newULID(at)
		if binary.BigEndian.Uint64(u[:8])>>16 != 0x0123456789ab {
			t.Fatalf("%x: not the time %x", u, 0x0123456789ab)
		}
		for j := 6; j < 16; j++ {
			or[j] |= u[j]
			and[j] &= u[j]
		}
	}
	for j := 6; j < 16; j++ {
		if or[j] != 0xff || and[j] != 0 {
			t.Fatalf("byte %d: or %08b and %08b", j, or[j], and[j])
		}
	}
}

var idSink string

func BenchmarkNewEventID(b *testing.B) {
	now := time.Now()
	space := make([]byte, eventIDLen)
	b.Run("base", func(b *testing.B) {
		for b.Loop() {
			bb := putEventIDRef(space, newULIDRef(now))
			idSink = string(bb[:0])
		}
	})
	b.Run("new", func(b *testing.B) {
		for b.Loop() {
			idSink = newEventIDIn(space, now)
		}
	})
	b.Run("base/encode", func(b *testing.B) {
		u := newULID(now)
		for b.Loop() {
			u[15]++
			putEventIDRef(space, u)
		}
	})
	b.Run("new/encode", func(b *testing.B) {
		u := newULID(now)
		for b.Loop() {
			u[15]++
			putEventID(space, u)
		}
	})
}

// secretShapeRef is secretShape before its cue pre-filter.
func secretShapeRef(s string) shapeSet {
	var found shapeSet
	if hasOTPAuth(s) {
		found |= shapeOTPAuth
	}
	if strings.Contains(s, "PRIVATE KEY-----") && strings.Contains(s, "-----BEGIN") {
		found |= shapePrivateKey
	}
	if hasWhsec(s) {
		found |= shapeWhsec
	}
	if strings.Count(s, ".") >= 2 && hasJWT(s) {
		found |= shapeJWT
	}
	return found
}

// shapeCorpus returns ordinary strings (ids, UUIDs, emails, names, URLs,
// dates) and hostile ones: every secret shape, and near misses of each, at
// every offset of a word, in both cases, mixed with random bytes from an
// alphabet heavy in the cues and in what the shapes are made of.
func shapeCorpus() []string {
	r := mrand.New(mrand.NewPCG(7, 11))
	jwt := func(hdr string) string {
		return base64.RawURLEncoding.EncodeToString([]byte(hdr)) + ".eyJzdWIiOiIxIn0.c2ln"
	}
	pieces := []string{
		"otpauth:", "OTPAUTH:", "OtPaUtH:", "otpauth", "otpaut:", "tpauth:", "otpauth://totp/a?secret=B",
		"-----BEGIN", "PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----", "PRIVATE KEY----", "-----BEGI",
		"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----", "KEY-----", "Y", "YY",
		"whsec_", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La", "whsec_abc", "whsec_0123456789abcde", "whsec_0123456789abcdef", "whsec", "_",
		jwt(`{"alg":"HS256"}`), jwt(` {"alg":"none"}`), jwt(`{"typ":"JWT"}`), jwt("\u00a0{\"alg\":1}"), jwt(`{"alg"`),
		"eyJhbGciOiJIUzI1NiJ9", "..", ".", "a.b.c", "aGVsbG8.d29ybGQ.eHl6", "Bearer ", ":", "::", "h:", "H:",
		"\xff", "\u2028", "é", "\x00", " ", "\n", "/", "+", "=", "-", "@", "ann", "example.test",
	}
	alphabet := ":Y_.-/+=@ otpauthwhsecPRIVATEKEYBGINeyJ0123456789abcdefXYZ\x00\xff\xc2\xa0{}\"'\n"
	var out []string
	for i := 0; i < 2000; i++ {
		out = append(out, fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", r.Uint32(), r.Uint32()&0xffff, r.Uint32()&0xffff, r.Uint32()&0xffff, r.Uint64()&0xffffffffffff),
			fmt.Sprintf("user%d", i), fmt.Sprintf("u_%d", r.Uint64()), fmt.Sprintf("ann.example%d@mail.example.test", i),
			fmt.Sprintf("https://example.test/scim/v2/Users/%d?x=%d", i, r.Int()), "Ann Example", "2026-11-27T03:04:05Z",
			fmt.Sprintf("m%d-%d", i, i%3), fmt.Sprintf("v%d.%d.%d", i%7, i%5, i%3))
	}
	for i := 0; i < 30000; i++ {
		var b strings.Builder
		for n := r.IntN(6); n >= 0; n-- {
			switch r.IntN(3) {
			case 0:
				b.WriteString(pieces[r.IntN(len(pieces))])
			default:
				for k := r.IntN(12); k > 0; k-- {
					b.WriteByte(alphabet[r.IntN(len(alphabet))])
				}
			}
		}
		out = append(out, b.String())
	}
	// each piece at every offset within a word, and cut at every length
	for _, p := range pieces {
		for off := 0; off < 17; off++ {
			out = append(out, strings.Repeat("a", off)+p, strings.Repeat("a", off)+p+strings.Repeat("b", 16-off))
		}
		for n := 0; n <= len(p); n++ {
			out = append(out, p[:n], p[n:])
		}
	}
	for _, tc := range shapeCases {
		out = append(out, tc.value)
	}
	return out
}

func TestSecretShapeMatchesReference(t *testing.T) {
	found := map[shapeSet]int{}
	for _, s := range shapeCorpus() {
		got, want := secretShape(s), secretShapeRef(s)
		if got != want {
			t.Fatalf("secretShape(%q) = %v, want %v", s, got, want)
		}
		found[want]++
	}
	// the corpus holds every shape, and strings with none
	for _, sh := range []shapeSet{0, shapeOTPAuth, shapeJWT, shapePrivateKey, shapeWhsec} {
		n := 0
		for set, c := range found {
			if set&sh != 0 || set == sh {
				n += c
			}
		}
		if n < 10 {
			t.Errorf("the corpus has %d strings of shape %v", n, sh)
		}
	}
}

func FuzzSecretShape(f *testing.F) {
	for _, tc := range shapeCases {
		f.Add(tc.value)
	}
	f.Add("otpauth:")
	f.Add("aaaaaaaY_.")
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := secretShape(s), secretShapeRef(s); got != want {
			t.Fatalf("secretShape(%q) = %v, want %v", s, got, want)
		}
	})
}

var shapeSink shapeSet

// BenchmarkSecretShape runs secretShape over strings like those of the SCIM
// benchmarks' events: UUIDs, user names, group ids, location URLs.
func BenchmarkSecretShape(b *testing.B) {
	var strs []string
	for i := 0; i < 20; i++ {
		id := fmt.Sprintf("2819c223-7f76-453a-919d-%012d", i)
		strs = append(strs, id, fmt.Sprintf("user%d", i), "https://example.test/scim/v2/Users/"+id, fmt.Sprintf("m%d-1", 45+i%5), fmt.Sprintf("g%d", 45+i%5))
	}
	strs = append(strs, "ann@example.test", "Ann Example", "2026-11-27T03:04:05Z")
	for _, v := range []struct {
		name string
		fn   func(string) shapeSet
	}{{"base", secretShapeRef}, {"new", secretShape}} {
		b.Run(v.name, func(b *testing.B) {
			for b.Loop() {
				for _, s := range strs {
					shapeSink |= v.fn(s)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(strs)), "ns/string")
		})
	}
}

// appendQuoteRef is appendQuote before its word-at-a-time runs.
func appendQuoteRef(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// checkQuote checks appendQuote against appendQuoteRef, and that what it
// writes reads back with encoding/json as s (with U+FFFD for invalid UTF-8).
func checkQuote(t *testing.T, s string) {
	t.Helper()
	got, want := appendQuote([]byte("x"), s), appendQuoteRef([]byte("x"), s)
	if string(got) != string(want) {
		t.Fatalf("appendQuote(%q) = %s, want %s", s, got, want)
	}
	var back string
	if err := json.Unmarshal(got[1:], &back); err != nil || back != strings.ToValidUTF8(s, "\uFFFD") && utf8.ValidString(s) {
		t.Fatalf("appendQuote(%q) = %s reads back as %q, %v", s, got, back, err)
	}
}

func TestAppendQuoteMatchesReference(t *testing.T) {
	// every byte at every place of a word, after and before runs of safe bytes
	for c := 0; c < 256; c++ {
		for pre := 0; pre < 18; pre++ {
			for _, post := range []int{0, 1, 7, 8, 9} {
				checkQuote(t, strings.Repeat("a", pre)+string([]byte{byte(c)})+strings.Repeat("b", post))
			}
		}
	}
	r := mrand.New(mrand.NewPCG(3, 5))
	pieces := []string{"\u2028", "\u2029", "\u2027", "é", "🎉", "\xff", "\xe2\x80", "\xe2\x80\xa8", "\xed\xa0\x80", "\x00", "\x1f", " ", "\x7f",
		"\"", "\\", "\n", "\r", "\t", "\b", "\f", "<", ">", "&", "!", "#", "[", "]", "~", "abcdefgh", "ABCDEFGHIJKLMNOP", "0123456"}
	for _, s := range shapeCorpus() {
		checkQuote(t, s)
	}
	for i := 0; i < 50000; i++ {
		var b strings.Builder
		for n := r.IntN(10); n >= 0; n-- {
			if r.IntN(2) == 0 {
				b.WriteString(pieces[r.IntN(len(pieces))])
			} else {
				b.WriteByte(byte(r.Uint32()))
			}
		}
		checkQuote(t, b.String())
	}
}

func FuzzAppendQuote(f *testing.F) {
	f.Add("plain ascii, long enough for words")
	f.Add("line\u2028sep\u2029 \"q\" \\ \x00\x1f\x7f \xff\xfe é 🎉")
	f.Fuzz(func(t *testing.T, s string) { checkQuote(t, s) })
}

var quoteSink []byte

// BenchmarkAppendQuote quotes strings like those of the SCIM benchmarks'
// events: member keys, UUIDs, user names, location URLs, and one with
// escapes and non-ASCII text.
func BenchmarkAppendQuote(b *testing.B) {
	strs := []string{"id", "userName", "location", "active", "group", "member", "g45", "user7",
		"2819c223-7f76-453a-919d-000000000007", "https://example.test/scim/v2/Users/2819c223-7f76-453a-919d-000000000007",
		"evt_01KB9Z3F5Q8W2N4M6R7T9V0XYZ", "user.created", "Ann Example", "ann@example.test", "h\u00e9llo \"w\u00f6rld\"\n"}
	buf := make([]byte, 0, 4096)
	for _, v := range []struct {
		name string
		fn   func([]byte, string) []byte
	}{{"base", appendQuoteRef}, {"new", appendQuote}} {
		b.Run(v.name, func(b *testing.B) {
			for b.Loop() {
				out := buf[:0]
				for _, s := range strs {
					out = v.fn(out, s)
				}
				quoteSink = out
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(strs)), "ns/string")
		})
	}
}
