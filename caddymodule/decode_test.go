package caddymodule

import (
	"bytes"
	"compress/zlib"
	"errors"
	"strings"
	"testing"

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
