package rules

import (
	"crypto/rand"
	"encoding/binary"
	mrand "math/rand/v2"
	"sync"
	"testing"
	"time"
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
