package caddymodule

import (
	"bufio"
	"bytes"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/authtap/authtap/admin"
)

// How a captureWriter passes the response on, decided when the final status
// is known.
const (
	modeUndecided = iota
	// modeHold keeps status and body back until release: the events are
	// queued before the client sees the response. Used while the body fits in
	// max_body.
	modeHold
	// modeTee streams every byte to the client at once and copies up to
	// max_body aside for extraction.
	modeTee
	// modePass streams untouched and copies nothing: server-sent events,
	// incremental responses, protocol upgrades, hijacked connections.
	modePass
	// modeReleased: a held response has been written out.
	modeReleased
)

// captureWriter wraps the ResponseWriter of a candidate exchange. It never
// changes a byte, a header or the status the client receives; it only
// decides when they go out (held until the events are queued, or at once)
// and keeps a bounded copy of the body for extraction.
type captureWriter struct {
	*caddyhttp.ResponseWriterWrapper

	max     int64
	capture bool // some candidate rule reads the response body
	// wants reports whether some rule accepts a status; a response that no
	// rule wants streams through untouched. Nil means every status may match.
	wants  func(status int) bool
	tunnel bool // a CONNECT request (e.g. websocket over HTTP/2): never held

	mode      int
	status    int           // the final status, 0 until written
	buf       *bytes.Buffer // held body, or the tee's copy; from bufPool
	truncated bool          // buf does not hold the whole body
	hijacked  bool
	own       bool // authtap_admin answered: not counted by coverage (markOwnTraffic)
	// sampleTee: coverage samples this exchange should no rule match it, so
	// a 2xx response that no rule wants is teed (its first
	// admin.MaxSampleBody bytes copied) instead of passed untouched.
	sampleTee bool
}

func newCaptureWriter(w http.ResponseWriter, r *http.Request, max int64, capture bool, wants func(int) bool) *captureWriter {
	return &captureWriter{
		ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		max:                   max,
		capture:               capture,
		wants:                 wants,
		tunnel:                r.Method == http.MethodConnect,
	}
}

// WriteHeader records the final status and decides how the response flows.
// Informational (1xx) statuses other than 101 are passed through at once.
func (cw *captureWriter) WriteHeader(code int) {
	if cw.mode != modeUndecided {
		if cw.mode == modeTee || cw.mode == modePass {
			// let the server report a superfluous call as it would without us
			cw.ResponseWriter.WriteHeader(code)
		}
		return
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		cw.ResponseWriter.WriteHeader(code)
		return
	}
	cw.status = code
	h := cw.Header()
	switch {
	case cw.sampleTee && code >= 200 && code <= 299 && !cw.tunnel && !isStreaming(h) && cw.wants != nil && !cw.wants(code):
		// no rule wants it: streamed, with a copy of its start for a sample
		cw.mode = modeTee
		cw.max = admin.MaxSampleBody
		cw.buf = getBuf()
	case code == http.StatusSwitchingProtocols || cw.tunnel || isStreaming(h) || (cw.wants != nil && !cw.wants(code)):
		cw.mode = modePass
		cw.truncated = true
	case fitsIn(h, cw.max) && h.Get("Trailer") == "":
		// (a response announcing trailers must stay chunked, so it streams)
		cw.mode = modeHold
		cw.buf = getBuf()
		return
	default:
		cw.mode = modeTee
		if cw.capture {
			cw.buf = getBuf()
		} else {
			cw.truncated = true
		}
	}
	cw.ResponseWriter.WriteHeader(code)
}

// Write holds, tees or passes p, as decided by WriteHeader.
func (cw *captureWriter) Write(p []byte) (int, error) {
	if cw.mode == modeUndecided {
		cw.WriteHeader(http.StatusOK)
	}
	switch cw.mode {
	case modeHold:
		if int64(cw.buf.Len())+int64(len(p)) <= cw.max {
			return cw.buf.Write(p)
		}
		// larger than we may hold: send what we have and stream the rest
		if err := cw.spill(); err != nil {
			return 0, err
		}
		return cw.ResponseWriter.Write(p)
	case modeTee:
		n, err := cw.ResponseWriter.Write(p)
		cw.keep(p[:n])
		return n, err
	default:
		return cw.ResponseWriter.Write(p)
	}
}

// keep copies what was sent into the extraction buffer, up to max.
func (cw *captureWriter) keep(p []byte) {
	if cw.truncated || cw.buf == nil {
		return
	}
	room := cw.max - int64(cw.buf.Len())
	if int64(len(p)) > room {
		cw.truncated = true
		return
	}
	cw.buf.Write(p)
}

// spill ends holding: the status and the held bytes go out and the rest of
// the response streams. The copy is incomplete from here on.
func (cw *captureWriter) spill() error {
	cw.mode = modeTee
	cw.truncated = true
	cw.ResponseWriter.WriteHeader(cw.status)
	_, err := cw.ResponseWriter.Write(cw.buf.Bytes())
	return err
}

// ReadFrom copies from r through Write so that nothing bypasses the capture;
// only a passed-through response keeps the underlying ReaderFrom (sendfile).
// Before a status is written, the first byte decides, as it does for Write:
// copying nothing writes nothing, as net/http's ReadFrom does (the server
// then answers 200 itself, or an error handler does).
func (cw *captureWriter) ReadFrom(r io.Reader) (int64, error) {
	var n int64
	if cw.mode == modeUndecided {
		var first [1]byte
		if k, err := io.ReadFull(r, first[:]); k == 0 {
			if err == io.EOF {
				err = nil
			}
			return 0, err
		}
		if _, err := cw.Write(first[:]); err != nil {
			return 0, err
		}
		n = 1
	}
	if cw.mode == modePass {
		m, err := cw.ResponseWriterWrapper.ReadFrom(r)
		return n + m, err
	}
	m, err := io.Copy(writerOnly{cw}, r)
	return n + m, err
}

// writerOnly hides ReadFrom so io.Copy uses Write (as caddy's encode does).
type writerOnly struct{ io.Writer }

// FlushError flushes a streamed response; a held one stays held (as
// caddyhttp's ResponseRecorder does), and goes out whole at release.
func (cw *captureWriter) FlushError() error {
	if cw.mode == modeUndecided {
		cw.WriteHeader(http.StatusOK)
	}
	if cw.mode == modeHold {
		return nil
	}
	//nolint:bodyclose
	return http.NewResponseController(cw.ResponseWriter).Flush()
}

// Flush implements http.Flusher for handlers that assert it directly.
func (cw *captureWriter) Flush() { _ = cw.FlushError() }

// Hijack hands the connection over; whatever was held is written first.
func (cw *captureWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if cw.mode == modeHold {
		if err := cw.spill(); err != nil {
			return nil, nil, err
		}
	}
	cw.mode = modePass
	cw.truncated = true
	cw.hijacked = true
	//nolint:bodyclose
	return http.NewResponseController(cw.ResponseWriter).Hijack()
}

// upgraded reports a protocol switch or a hijacked connection.
func (cw *captureWriter) upgraded() bool {
	return cw.hijacked || cw.status == http.StatusSwitchingProtocols
}

// release writes a held response out. It is idempotent.
func (cw *captureWriter) release() error {
	if cw.mode != modeHold {
		return nil
	}
	cw.mode = modeReleased
	cw.ResponseWriter.WriteHeader(cw.status)
	if cw.buf.Len() == 0 {
		return nil
	}
	_, err := cw.ResponseWriter.Write(cw.buf.Bytes())
	return err
}

// body returns the captured body and whether it is the whole body.
func (cw *captureWriter) body() ([]byte, bool) {
	if cw.truncated {
		return nil, false
	}
	if cw.buf == nil {
		return nil, true // nothing was written
	}
	return cw.buf.Bytes(), true
}

// isStreaming reports responses that must flow as they come: server-sent
// events and responses marked incremental.
func isStreaming(h http.Header) bool {
	if ct := h.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err == nil && mt == "text/event-stream" {
			return true
		}
	}
	return caddyhttp.IsIncremental(h)
}

// fitsIn reports whether a response may be held: its declared length, if
// any, is at most max.
func fitsIn(h http.Header, max int64) bool {
	cl := h.Get("Content-Length")
	if cl == "" {
		return true
	}
	n, err := strconv.ParseInt(cl, 10, 64)
	return err == nil && n >= 0 && n <= max
}

// Interface guards
var (
	_ http.ResponseWriter = (*captureWriter)(nil)
	_ http.Flusher        = (*captureWriter)(nil)
	_ http.Hijacker       = (*captureWriter)(nil)
	_ io.ReaderFrom       = (*captureWriter)(nil)
)

// readAhead reads the request body ahead, up to limit+1 bytes (so that a
// larger body shows), and puts a reader back that yields exactly the bytes
// (and the error) the original would have. A declared length is trusted for
// the buffer's size only as far as DefaultMaxBody. The buffer is not pooled:
// the proxy transport may still read the replayed body from its own
// goroutine after the handler chain has returned.
func readAhead(r *http.Request, limit int64) (*bytes.Buffer, error) {
	buf := new(bytes.Buffer)
	if r.ContentLength > 0 {
		buf.Grow(int(min(r.ContentLength+1, DefaultMaxBody)))
	}
	_, err := io.CopyN(buf, r.Body, limit+1)
	rest := io.Reader(r.Body)
	switch {
	case err == io.EOF:
		err = nil
	case err != nil:
		// hand the same error on to whoever reads the body next
		rest = errReader{err}
	}
	r.Body = &replayBody{Reader: io.MultiReader(bytes.NewReader(buf.Bytes()), rest), closer: r.Body}
	return buf, err
}
