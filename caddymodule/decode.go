package caddymodule

import (
	"bytes"
	"compress/flate"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Limits of decoding a response body for extraction. The upstream's response
// is treated as hostile: a few compressed bytes must not turn into a large
// allocation, whatever the encoding. Each decoded layer is bounded by max_body
// (the output) and each decoder's working memory by the limits below, so one
// decode allocates at most a few × max_body (plus each decoder's fixed-size
// state and tables); the compressed input itself was already bounded by
// max_body when it was captured.
const (
	// maxContentCodings is the most content codings (other than identity) a
	// response may stack in Content-Encoding ("gzip, gzip, …"); a response
	// with more is not decoded, and the rules that read its body emit
	// nothing. Real servers apply one, rarely two.
	maxContentCodings = 4

	// zstdMaxWindow is the largest zstd window accepted: 8 MiB, the limit
	// RFC 9659 sets for the "zstd" content coding. A frame declaring more is
	// refused before anything is allocated. (zstd is decoded whole, with
	// DecodeAll into a buffer of max_body+1 bytes, so its memory follows
	// the output, which max_body bounds, and not the declared window.)
	zstdMaxWindow = 8 << 20

	// brotliMinWindowBits and brotliMaxWindowBits are the window sizes
	// (log2) a brotli stream header can declare in its 4-bit form; see
	// boundBrotliWindow.
	brotliMinWindowBits = 18
	brotliMaxWindowBits = 24

	// maxPooledScratch is the largest decode buffer kept for reuse.
	maxPooledScratch = 4*DefaultMaxBody + 1
)

// errTooLarge reports a decoded body larger than max_body.
var errTooLarge = errors.New("decoded body larger than max_body")

// zstdDecoders holds zstd decoders for DecodeAll. A decoder made with a nil
// reader runs no goroutines, so one the pool drops needs no Close.
var zstdDecoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
		// the window bound; the library also caps the window at the max
		// memory, so that is the window too, and the output is bounded by
		// the capacity of the buffer DecodeAll is given
		zstd.WithDecoderMaxWindow(zstdMaxWindow),
		zstd.WithDecoderMaxMemory(zstdMaxWindow),
		zstd.WithDecodeAllCapLimit(true),
	)
	if err != nil {
		return err // the options are constants: this does not happen
	}
	return d
}}

// decodeBody undoes the response's Content-Encoding (gzip, x-gzip, deflate,
// zstd, br, identity; several in the order they were applied, at most
// maxContentCodings) into a new buffer, for extraction only: what the client
// receives is never touched. Every decoded layer is bounded by max (a larger
// one is errTooLarge), and so is each decoder's memory (see the limits
// above), so a small compressed body cannot expand into a large allocation.
func decodeBody(encodings []string, body []byte, max int64) ([]byte, error) {
	codings, err := contentCodings(encodings)
	if err != nil {
		return nil, err
	}
	if len(codings) == 0 {
		return body, nil
	}
	if max < 1 {
		return nil, errTooLarge
	}
	out := body
	for i := len(codings) - 1; i >= 0; i-- {
		if out, err = decodeOne(codings[i], out, max); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// contentCodings lists the codings of Content-Encoding values in the order
// they were applied, without identity; more than maxContentCodings is an
// error (counted as they are split, so a header of a million commas costs
// nothing).
func contentCodings(values []string) ([]string, error) {
	var codings []string
	for _, v := range values {
		for v != "" {
			var c string
			c, v, _ = strings.Cut(v, ",")
			if c = strings.TrimSpace(c); c == "" || strings.EqualFold(c, "identity") {
				continue
			}
			if len(codings) == maxContentCodings {
				return nil, fmt.Errorf("more than %d content codings", maxContentCodings)
			}
			codings = append(codings, strings.ToLower(c))
		}
	}
	return codings, nil
}

func decodeOne(coding string, body []byte, max int64) ([]byte, error) {
	var (
		r   io.Reader
		err error
	)
	src := bytes.NewReader(body)
	switch coding {
	case "gzip", "x-gzip":
		// a 32 KiB window and fixed tables per member
		var zr *gzip.Reader
		if zr, err = gzip.NewReader(src); err == nil {
			defer zr.Close()
			r = zr
		}
	case "deflate":
		// RFC 9110 "deflate" is zlib; some servers send raw deflate. Both
		// have a 32 KiB window.
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
		return decodeZstd(body, max)
	case "br":
		r = brotli.NewReader(boundBrotliWindow(body, max))
	default:
		return nil, fmt.Errorf("unsupported content-encoding %s", clip(coding, logValueMax))
	}
	if err != nil {
		return nil, fmt.Errorf("decoding %s body: %w", coding, err)
	}
	scratch := getScratch(max + 1)
	defer putScratch(scratch)
	out, err := readBounded(r, (*scratch)[:0:max+1])
	switch {
	case errors.Is(err, errTooLarge):
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("decoding %s body: %w", coding, err)
	}
	return bytes.Clone(out), nil
}

// decodeZstd decodes a whole zstd body with a pooled decoder into a buffer
// of max+1 bytes. DecodeAll writes into that buffer and keeps no window of
// its own, and stops (before decoding anything, when the frame declares its
// size) once the output passes the buffer.
func decodeZstd(body []byte, max int64) ([]byte, error) {
	v := zstdDecoders.Get()
	d, ok := v.(*zstd.Decoder)
	if !ok {
		return nil, fmt.Errorf("making zstd decoder: %v", v)
	}
	defer zstdDecoders.Put(d)
	scratch := getScratch(max + 1)
	defer putScratch(scratch)
	out, err := d.DecodeAll(body, (*scratch)[:0:max+1])
	switch {
	case errors.Is(err, zstd.ErrDecoderSizeExceeded):
		return nil, errTooLarge
	case errors.Is(err, zstd.ErrWindowSizeExceeded):
		return nil, fmt.Errorf("decoding zstd body: %w (the limit is %d bytes)", err, zstdMaxWindow)
	case err != nil:
		return nil, fmt.Errorf("decoding zstd body: %w", err)
	case int64(len(out)) > max:
		return nil, errTooLarge
	}
	if len(out) == 0 {
		return nil, nil
	}
	return bytes.Clone(out), nil
}

// scratchPool holds decode buffers (*[]byte); a decoded body is copied out
// of its buffer at its exact size.
var scratchPool sync.Pool

// getScratch returns an empty buffer of capacity at least n.
func getScratch(n int64) *[]byte {
	if b, ok := scratchPool.Get().(*[]byte); ok && int64(cap(*b)) >= n {
		return b
	}
	b := make([]byte, 0, n)
	return &b
}

func putScratch(b *[]byte) {
	if cap(*b) <= maxPooledScratch {
		*b = (*b)[:0]
		scratchPool.Put(b)
	}
}

// boundBrotliWindow returns a reader of the brotli stream body whose declared
// window is cut to the smallest one that still holds max+1 bytes, so the
// decoder's ring buffer (which it sizes from the window, up to 16 MiB) stays
// within about 2 × max_body.
//
// This decodes the same bytes, as far as they are read: a brotli distance is
// a back-reference when it is at most min(bytes decoded so far, window - 16)
// and a static-dictionary reference otherwise, and since at most max+1 bytes
// are read, the bytes decoded so far never exceed the cut window - 16 either;
// every distance means the same under both windows. Only the 4-bit form of
// the header (windows of 2^18 to 2^24) is rewritten, in place of the same
// bits; the other forms declare at most 2^17 already. The caller's body is
// not modified (it is the response the client receives). A stream longer than
// max may then fail to decode past max instead of being reported as too
// large; either way the rules that read it emit nothing.
func boundBrotliWindow(body []byte, max int64) io.Reader {
	if len(body) == 0 || body[0]&1 == 0 {
		return bytes.NewReader(body) // WBITS 16
	}
	n := (body[0] >> 1) & 7
	if n == 0 {
		return bytes.NewReader(body) // WBITS 10–15 or 17 (7-bit form)
	}
	bits := brotliMinWindowBits
	for bits < brotliMaxWindowBits && int64(1)<<bits-16 < max+1 {
		bits++
	}
	if bits >= 17+int(n) {
		return bytes.NewReader(body) // already small enough
	}
	first := body[0]&^0x0e | byte(bits-17)<<1
	return io.MultiReader(bytes.NewReader([]byte{first}), bytes.NewReader(body[1:]))
}

// readBounded reads r to the end into buf, which it never grows: more than
// cap(buf)-1 bytes is errTooLarge.
func readBounded(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			return nil, errTooLarge
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case len(buf) == cap(buf):
			return nil, errTooLarge
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return nil, err
		}
	}
}
