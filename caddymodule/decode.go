package caddymodule

import (
	"bytes"
	"compress/flate"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// errTooLarge reports a decoded body larger than max_body.
var errTooLarge = errors.New("decoded body larger than max_body")

// decodeBody undoes the response's Content-Encoding (gzip, x-gzip, deflate,
// zstd, br, identity; several in the order they were applied) into a new
// buffer, for extraction only: what the client receives is never touched.
// The decoded size is bounded by max, so a small compressed body cannot
// expand into a large allocation.
func decodeBody(encodings []string, body []byte, max int64) ([]byte, error) {
	var codings []string
	for _, v := range encodings {
		for _, c := range strings.Split(v, ",") {
			if c = strings.ToLower(strings.TrimSpace(c)); c != "" && c != "identity" {
				codings = append(codings, c)
			}
		}
	}
	if len(codings) == 0 {
		return body, nil
	}
	out := body
	for i := len(codings) - 1; i >= 0; i-- {
		var err error
		if out, err = decodeOne(codings[i], out, max); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func decodeOne(coding string, body []byte, max int64) ([]byte, error) {
	var (
		r   io.Reader
		err error
	)
	src := bytes.NewReader(body)
	switch coding {
	case "gzip", "x-gzip":
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(src); err == nil {
			defer zr.Close()
			r = zr
		}
	case "deflate":
		// RFC 9110 "deflate" is zlib; some servers send raw deflate
		var zr io.ReadCloser
		if zr, err = zlib.NewReader(src); err == nil {
			defer zr.Close()
			r = zr
		} else {
			src.Reset(body)
			fr := flate.NewReader(src)
			defer fr.Close()
			r, err = fr, nil
		}
	case "zstd":
		var zr *zstd.Decoder
		// streamed, not DecodeAll: the history grows only as far as we read
		if zr, err = zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true)); err == nil {
			defer zr.Close()
			r = zr
		}
	case "br":
		r = brotli.NewReader(src)
	default:
		return nil, fmt.Errorf("unsupported content-encoding %q", coding)
	}
	if err != nil {
		return nil, fmt.Errorf("decoding %s body: %w", coding, err)
	}
	var out bytes.Buffer
	n, err := io.Copy(&out, io.LimitReader(r, max+1))
	if err != nil {
		if n > max {
			return nil, errTooLarge
		}
		return nil, fmt.Errorf("decoding %s body: %w", coding, err)
	}
	if n > max {
		return nil, errTooLarge
	}
	return out.Bytes(), nil
}
