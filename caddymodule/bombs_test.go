package caddymodule

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"sync"
	"testing"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zlib"
)

// Decompression bombs, built by the tests themselves so the repository holds
// no binary fixtures. Each is small on the wire and huge (or greedy) decoded.

// zstdFrame returns a zstd frame whose header declares a window of
// 1<<windowLog bytes (no content size, no checksum), followed by blocks RLE
// blocks of 128 KiB of zeros each. With windowLog 29 and one block it is the
// 10-byte frame that made a decoder allocate 512 MiB.
func zstdFrame(windowLog, blocks int) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, byte(windowLog-10) << 3}
	for i := range blocks {
		h := uint32(1)<<1 | uint32(128<<10)<<3 // RLE, 128 KiB
		if i == blocks-1 {
			h |= 1 // last block
		}
		b = append(b, byte(h), byte(h>>8), byte(h>>16), 0)
	}
	return b
}

// zstdRawFrame returns a zstd frame declaring a window of 1<<windowLog bytes
// that holds p (under 128 KiB) in one raw block.
func zstdRawFrame(windowLog int, p []byte) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, byte(windowLog-10) << 3}
	h := uint32(1) | uint32(len(p))<<3 // last, raw
	return append(append(b, byte(h), byte(h>>8), byte(h>>16)), p...)
}

// zstdSizedFrame returns a single-segment zstd frame declaring a content size
// (and so a window) of size bytes, with one RLE block.
func zstdSizedFrame(size uint64) []byte {
	b := []byte{0x28, 0xb5, 0x2f, 0xfd, 0xe0} // single segment, 8-byte content size
	b = binary.LittleEndian.AppendUint64(b, size)
	h := uint32(1) | uint32(1)<<1 | uint32(128<<10)<<3
	return append(b, byte(h), byte(h>>8), byte(h>>16), 0)
}

// zeros streams n bytes of zeros into w, 1 MiB at a time.
func zeros(w interface{ Write([]byte) (int, error) }, n int64) {
	chunk := make([]byte, 1<<20)
	for ; n > 0; n -= int64(len(chunk)) {
		w.Write(chunk[:min(n, int64(len(chunk)))]) //nolint:errcheck
	}
}

var bombOnce struct {
	gzip, deflate, brotli sync.Once
	gz, zl, br            []byte
}

// gzipBomb is gzip of 1 GiB of zeros (about 1 MiB), made once per test run.
func gzipBomb() []byte {
	bombOnce.gzip.Do(func() {
		var b bytes.Buffer
		w, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
		zeros(w, 1<<30)
		w.Close()
		bombOnce.gz = b.Bytes()
	})
	return bombOnce.gz
}

// deflateBomb is zlib ("deflate") of 1 GiB of zeros (about 1 MiB).
func deflateBomb() []byte {
	bombOnce.deflate.Do(func() {
		var b bytes.Buffer
		w, _ := zlib.NewWriterLevel(&b, zlib.BestSpeed)
		zeros(w, 1<<30)
		w.Close()
		bombOnce.zl = b.Bytes()
	})
	return bombOnce.zl
}

// brotliBomb is brotli of 256 MiB of zeros with a 16 MiB window (a few
// hundred bytes): its metablocks declare 16 MiB each, so a decoder sizes its
// ring buffer to the whole window.
func brotliBomb() []byte {
	bombOnce.brotli.Do(func() {
		var b bytes.Buffer
		w := brotli.NewWriterOptions(&b, brotli.WriterOptions{Quality: 5, LGWin: 24})
		zeros(w, 256<<20)
		w.Close()
		bombOnce.br = b.Bytes()
	})
	return bombOnce.br
}

// stackedGzipBomb is gzip applied layers times to 1 GiB of zeros.
func stackedGzipBomb(layers int) []byte {
	p := gzipBomb()
	for range layers - 1 {
		p = gzipBytes(p)
	}
	return p
}

// allocDuring returns how many bytes f allocated (TotalAlloc) and how much
// the heap in use grew, across every goroutine of the process.
func allocDuring(f func()) (total uint64, inuse int64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc, int64(after.HeapInuse) - int64(before.HeapInuse)
}

// TestBombs checks the bombs are what they claim: small, and (decoded
// without limits) big.
func TestBombs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 1 GiB bombs")
	}
	for name, b := range map[string][]byte{"gzip": gzipBomb(), "deflate": deflateBomb(), "br": brotliBomb()} {
		if len(b) > 2<<20 {
			t.Errorf("%s bomb is %d bytes", name, len(b))
		}
		t.Logf("%s bomb: %d bytes", name, len(b))
	}
	if got := brotliBomb()[0]; got&1 != 1 || (got>>1)&7 != 7 {
		t.Errorf("brotli bomb header %08b does not declare a 16 MiB window", got)
	}
	if n := len(zstdFrame(29, 1)); n != 10 {
		t.Errorf("zstd window bomb is %d bytes, want 10", n)
	}
}
