package caddymodule

import (
	"bytes"
	"compress/zlib"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

func gzipBytes(p []byte) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write(p) //nolint:errcheck
	w.Close()
	return b.Bytes()
}

func TestDecodeBody(t *testing.T) {
	plain := []byte(`{"ok":true}`)
	zl := func() []byte {
		var b bytes.Buffer
		w := zlib.NewWriter(&b)
		w.Write(plain) //nolint:errcheck
		w.Close()
		return b.Bytes()
	}()
	enc, _ := zstd.NewWriter(nil)
	gzThenZstd := enc.EncodeAll(gzipBytes(plain), nil)
	bomb := gzipBytes(bytes.Repeat([]byte{0}, 10<<20)) // 10 MiB of zeros in ~10 KiB
	// a frame as a streaming encoder makes it: it declares an 8 MiB window
	// (RFC 9659's limit) whatever the size of the body, which must still
	// decode with a far smaller max_body
	zs := zstdRawFrame(23, plain)
	zstd16 := zstdFrame(24, 1) // 16 MiB window: over RFC 9659's limit

	for i, tc := range []struct {
		enc     []string
		body    []byte
		max     int64
		want    string
		wantErr string
	}{
		{nil, plain, 100, string(plain), ""},
		{[]string{"identity"}, plain, 100, string(plain), ""},
		{[]string{"GZIP"}, gzipBytes(plain), 100, string(plain), ""},
		{[]string{"x-gzip"}, gzipBytes(plain), 100, string(plain), ""},
		{[]string{"deflate"}, zl, 100, string(plain), ""},
		{[]string{"gzip, zstd"}, gzThenZstd, 100, string(plain), ""},
		{[]string{"gzip", "zstd"}, gzThenZstd, 100, string(plain), ""},
		{[]string{"gzip"}, bomb, 1 << 20, "", "larger than max_body"},
		{[]string{"gzip"}, gzipBytes(plain), int64(len(plain)), string(plain), ""},
		{[]string{"gzip"}, gzipBytes(plain), int64(len(plain)) - 1, "", "larger than max_body"},
		{[]string{"compress"}, plain, 100, "", `unsupported content-encoding "compress"`},
		{[]string{strings.Repeat("x", 500<<10)}, plain, 100, "", `(512000 bytes)`},
		{[]string{"zstd"}, enc.EncodeAll(plain, nil), 100, string(plain), ""},
		{[]string{"zstd"}, enc.EncodeAll(plain, nil), int64(len(plain)) - 1, "", "larger than max_body"},
		{[]string{"zstd"}, nil, 100, "", ""},
		{[]string{"zstd"}, zs, 100, string(plain), ""},
		{[]string{"zstd"}, zstd16, 1 << 30, "", "window size exceeded"},
		{[]string{"gzip"}, plain, 0, "", "larger than max_body"},
		{[]string{"gzip"}, []byte("not gzip"), 100, "", "decoding gzip body"},
		{[]string{"zstd"}, []byte("not zstd"), 100, "", "decoding zstd body"},
	} {
		got, err := decodeBody(tc.enc, tc.body, tc.max)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%d: err = %v, want %q", i, err, tc.wantErr)
			}
			if strings.Contains(tc.wantErr, "max_body") && !errors.Is(err, errTooLarge) {
				t.Errorf("%d: want errTooLarge", i)
			}
			continue
		}
		if err != nil || string(got) != tc.want {
			t.Errorf("%d: got %q, %v", i, got, err)
		}
	}
}

// Every decoder is bounded in output and in memory: each bomb decodes (or is
// refused) within a few × max, whatever it declares.
func TestDecodeBombsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 1 GiB bombs")
	}
	const max = 1 << 20
	// the limit: the output buffer (doubling up to max+1, so under 2 × max
	// allocated in all), the compressed layer of a stacked coding, and the
	// decoders' own window and tables
	const limit = 4 * max
	for _, tc := range []struct {
		name    string
		enc     string
		body    []byte
		wantErr string
	}{
		{"gzip of 1 GiB of zeros", "gzip", gzipBomb(), "larger than max_body"},
		{"deflate of 1 GiB of zeros", "deflate", deflateBomb(), "larger than max_body"},
		{"brotli, 16 MiB window, 256 MiB of zeros", "br", brotliBomb(), "larger than max_body"},
		{"zstd declaring a 512 MiB window", "zstd", zstdFrame(29, 1), "window size exceeded"},
		{"zstd declaring a 1 GiB window", "zstd", zstdFrame(30, 1), "decoding zstd body"},
		{"zstd, 8 MiB window, 1 GiB of zeros", "zstd", zstdFrame(23, 8192), "larger than max_body"},
		{"zstd declaring 512 MiB of content", "zstd", zstdSizedFrame(512 << 20), "larger than max_body"},
		{"zstd declaring 1 TiB of content", "zstd", zstdSizedFrame(1 << 40), "larger than max_body"},
		{"gzip, gzip, gzip of 1 GiB of zeros", "gzip, gzip, gzip", stackedGzipBomb(3), "larger than max_body"},
		{"gzip × 5 (more than maxContentCodings)", "gzip, gzip, gzip, gzip, gzip", stackedGzipBomb(5), "content codings"},
		{"1000 stacked codings", strings.Repeat("gzip,", 1000), stackedGzipBomb(2), "content codings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			total, inuse := allocDuring(func() { _, err = decodeBody([]string{tc.enc}, tc.body, max) })
			t.Logf("%s (%d bytes): TotalAlloc +%d, HeapInuse %+d, %v", tc.name, len(tc.body), total, inuse, err)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want %q", err, tc.wantErr)
			}
			if total > limit {
				t.Errorf("decoding allocated %d bytes; want at most %d (4 × max_body)", total, limit)
			}
		})
	}
}

// The brotli window cut decodes exactly the same bytes, including
// back-references that reach far back, for every body up to max.
func TestDecodeBrotliWindowCutKeepsBytes(t *testing.T) {
	rnd := func(n int, seed byte) []byte {
		b := make([]byte, n)
		x := uint32(seed) + 1
		for i := range b {
			x ^= x << 13
			x ^= x >> 17
			x ^= x << 5
			b[i] = byte(x)
		}
		return b
	}
	for _, tc := range []struct {
		name  string
		data  []byte
		max   int64
		lgwin int
	}{
		// a random block and its repeat: the copy refers a whole block back
		{"1.2 MiB, 600 KiB back, max = size", append(rnd(600<<10, 1), rnd(600<<10, 1)...), 1200 << 10, 24},
		{"1.2 MiB, max 1 MiB + ", append(rnd(600<<10, 2), rnd(600<<10, 2)...), 4 << 20, 22},
		{"290 KiB, 250 KiB back, max 300 KiB", append(rnd(250<<10, 3), rnd(40<<10, 3)...), 300 << 10, 24},
		{"text at lgwin 18", bytes.Repeat([]byte(`{"user":{"id":"u_1","email":"a@x.test"}},`), 5000), 1 << 20, 18},
		{"small at lgwin 16", []byte(`{"ok":true}`), 100, 16},
		{"small at lgwin 10", []byte(`{"ok":true}`), 100, 10},
		{"empty", nil, 100, 24},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, q := range []int{1, 5, 11} {
				if q == 11 && len(tc.data) > 300<<10 {
					continue // slow to compress; quality 5 already uses the window
				}
				var b bytes.Buffer
				w := brotli.NewWriterOptions(&b, brotli.WriterOptions{Quality: q, LGWin: tc.lgwin})
				w.Write(tc.data) //nolint:errcheck
				w.Close()
				got, err := decodeBody([]string{"br"}, b.Bytes(), tc.max)
				if err != nil || !bytes.Equal(got, tc.data) {
					t.Fatalf("quality %d: decoded %d bytes (%v), want the %d bytes encoded", q, len(got), err, len(tc.data))
				}
			}
		})
	}
	// the caller's body (the client's response) is not touched
	var b bytes.Buffer
	w := brotli.NewWriterOptions(&b, brotli.WriterOptions{Quality: 5, LGWin: 24})
	w.Write([]byte("hello")) //nolint:errcheck
	w.Close()
	orig := bytes.Clone(b.Bytes())
	if _, err := decodeBody([]string{"br"}, b.Bytes(), 100); err != nil || !bytes.Equal(b.Bytes(), orig) {
		t.Errorf("body changed or not decoded: %v", err)
	}
}

func TestBoundBrotliWindow(t *testing.T) {
	for _, tc := range []struct {
		first byte
		max   int64
		want  byte // the first byte the decoder sees
	}{
		{0b0000_1111, 1 << 20, 0b0000_1001},  // WBITS 24 → 21 (2 MiB - 16 ≥ 1 MiB + 1)
		{0b0000_1111, 100, 0b0000_0011},      // WBITS 24 → 18, the smallest of the 4-bit form
		{0b0000_1111, 16 << 20, 0b0000_1111}, // max past 2^23: kept
		{0b0000_0011, 100, 0b0000_0011},      // WBITS 18: kept
		{0b0000_0000, 100, 0b0000_0000},      // WBITS 16
		{0b0110_0001, 100, 0b0110_0001},      // 7-bit form (WBITS 14)
		{0b1111_1111, 1 << 20, 0b1111_1001},  // the other bits are kept
	} {
		r := boundBrotliWindow([]byte{tc.first, 0xaa}, tc.max)
		got, _ := io.ReadAll(r)
		if len(got) != 2 || got[0] != tc.want || got[1] != 0xaa {
			t.Errorf("%08b, max %d: got %08b, want %08b", tc.first, tc.max, got, tc.want)
		}
	}
}

func TestContentCodings(t *testing.T) {
	for i, tc := range []struct {
		in      []string
		want    string
		wantErr bool
	}{
		{nil, "", false},
		{[]string{"identity"}, "", false},
		{[]string{"GZip , identity,, br"}, "gzip br", false},
		{[]string{"gzip", "zstd"}, "gzip zstd", false},
		{[]string{"gzip, gzip", "gzip, gzip"}, "gzip gzip gzip gzip", false},
		{[]string{"gzip, gzip", "gzip, gzip, gzip"}, "", true},
		{[]string{strings.Repeat(",", 1<<20) + "gzip"}, "gzip", false},
	} {
		got, err := contentCodings(tc.in)
		if (err != nil) != tc.wantErr || strings.Join(got, " ") != tc.want {
			t.Errorf("%d: %q, %v; want %q", i, got, err, tc.want)
		}
	}
}
