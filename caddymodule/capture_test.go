package caddymodule

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestCaptureWriterModes(t *testing.T) {
	for i, tc := range []struct {
		name     string
		method   string
		write    func(w http.ResponseWriter)
		wantHeld bool // nothing reached the client before release
		wantBody string
		complete bool
	}{
		{name: "small response is held", write: func(w http.ResponseWriter) {
			w.WriteHeader(201)
			io.WriteString(w, "hello") //nolint:errcheck
		}, wantHeld: true, wantBody: "hello", complete: true},
		{name: "ReadFrom goes through the capture", write: func(w http.ResponseWriter) {
			w.(io.ReaderFrom).ReadFrom(strings.NewReader("from a reader")) //nolint:errcheck
		}, wantHeld: true, wantBody: "from a reader", complete: true},
		{name: "declared too large streams", write: func(w http.ResponseWriter) {
			w.Header().Set("Content-Length", "100")
			io.WriteString(w, strings.Repeat("z", 100)) //nolint:errcheck
		}, wantBody: strings.Repeat("z", 100)},
		{name: "grows past max while held spills", write: func(w http.ResponseWriter) {
			for range 5 {
				io.WriteString(w, strings.Repeat("q", 10)) //nolint:errcheck
			}
		}, wantBody: strings.Repeat("q", 50)},
		{name: "trailers stay chunked", write: func(w http.ResponseWriter) {
			w.Header().Set("Trailer", "X-Checksum")
			io.WriteString(w, "abc") //nolint:errcheck
			w.Header().Set("X-Checksum", "1")
		}, wantBody: "abc", complete: true},
		{name: "server-sent events stream", write: func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
			io.WriteString(w, "data: x\n\n") //nolint:errcheck
		}, wantBody: "data: x\n\n"},
		{name: "CONNECT tunnels stream", method: http.MethodConnect, write: func(w http.ResponseWriter) {
			w.WriteHeader(200)
			io.WriteString(w, "tunnel") //nolint:errcheck
		}, wantBody: "tunnel"},
		{name: "switching protocols passes", write: func(w http.ResponseWriter) {
			w.WriteHeader(http.StatusSwitchingProtocols)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			w := &sentWriter{ResponseRecorder: httptest.NewRecorder()}
			cw := newCaptureWriter(w, httptest.NewRequest(method, "/", nil), 32, true, nil)
			tc.write(cw)
			if held := !w.sent; held != tc.wantHeld {
				t.Errorf("%d: held = %v, want %v", i, held, tc.wantHeld)
			}
			body, complete := cw.body()
			if complete != tc.complete || complete && string(body) != tc.wantBody {
				t.Errorf("%d: captured %q (complete %v)", i, body, complete)
			}
			if err := cw.release(); err != nil {
				t.Fatal(err)
			}
			if w.Body.String() != tc.wantBody {
				t.Errorf("%d: client got %q, want %q", i, w.Body.String(), tc.wantBody)
			}
		})
	}
}

func TestInformationalStatusPassesAtOnce(t *testing.T) {
	w := &sentWriter{ResponseRecorder: httptest.NewRecorder()}
	cw := newCaptureWriter(w, httptest.NewRequest(http.MethodPost, "/", nil), 1024, true, nil)
	cw.Header().Set("Link", "</app.css>; rel=preload")
	cw.WriteHeader(http.StatusEarlyHints)
	if !w.sent {
		t.Fatal("103 Early Hints must reach the client at once")
	}
	cw.WriteHeader(http.StatusCreated)
	if cw.mode != modeHold || cw.status != http.StatusCreated {
		t.Errorf("the final status must still be held, mode %d status %d", cw.mode, cw.status)
	}
}

func TestHijackReleasesHeldBytes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cw := newCaptureWriter(w, r, 1024, true, nil)
		conn, brw, err := http.NewResponseController(cw).Hijack()
		if err != nil {
			t.Errorf("hijack through the capture writer: %v", err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi") //nolint:errcheck
		brw.Flush()                                                                            //nolint:errcheck
		if !cw.upgraded() {
			t.Errorf("a hijacked exchange is not observed")
		}
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if string(b) != "hi" {
		t.Errorf("got %q", b)
	}
}

// A status no rule wants is passed through at once, neither held nor copied.
func TestCaptureUnwantedStatusPassesThrough(t *testing.T) {
	rec := httptest.NewRecorder()
	cw := newCaptureWriter(rec, httptest.NewRequest(http.MethodPost, "/", nil), 1024, true, func(code int) bool { return code == 201 })
	cw.WriteHeader(http.StatusInternalServerError)
	if _, err := cw.Write([]byte("boom")); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 500 || rec.Body.String() != "boom" {
		t.Fatalf("a 500 no rule wants must reach the client before release: %d %q", rec.Code, rec.Body.String())
	}
	if _, complete := cw.body(); complete {
		t.Fatal("nothing should have been copied")
	}
	held := httptest.NewRecorder()
	cw = newCaptureWriter(held, httptest.NewRequest(http.MethodPost, "/", nil), 1024, true, func(code int) bool { return code == 201 })
	cw.WriteHeader(http.StatusCreated)
	_, _ = cw.Write([]byte("ok"))
	if held.Body.Len() != 0 {
		t.Fatal("a wanted status is held until release")
	}
	if err := cw.release(); err != nil || held.Code != 201 || held.Body.String() != "ok" {
		t.Fatalf("release: %v %d %q", err, held.Code, held.Body.String())
	}
}

// TestCaptureReadFromNothing: copying an empty reader writes nothing, not
// even a status, as net/http's ReadFrom does: the server (or an error
// handler) still decides the status. One that copies bytes is decided by
// its first byte, as Write is, and copies every byte.
func TestCaptureReadFromNothing(t *testing.T) {
	w := &sentWriter{ResponseRecorder: httptest.NewRecorder()}
	cw := newCaptureWriter(w, httptest.NewRequest(http.MethodPost, "/", nil), 32, true, nil)
	if n, err := cw.ReadFrom(strings.NewReader("")); n != 0 || err != nil {
		t.Fatalf("ReadFrom(empty) = %d, %v", n, err)
	}
	if err := cw.release(); err != nil {
		t.Fatal(err)
	}
	if w.sent || cw.status != 0 {
		t.Fatalf("an empty copy wrote a status (%d) or bytes", cw.status)
	}
	for _, max := range []int64{32, 4} { // held, and streamed past max_body
		w := &sentWriter{ResponseRecorder: httptest.NewRecorder()}
		cw := newCaptureWriter(w, httptest.NewRequest(http.MethodPost, "/", nil), max, true, nil)
		if n, err := cw.ReadFrom(strings.NewReader("from a reader")); n != 13 || err != nil {
			t.Fatalf("max %d: ReadFrom = %d, %v", max, n, err)
		}
		if err := cw.release(); err != nil {
			t.Fatal(err)
		}
		if w.Code != http.StatusOK || w.Body.String() != "from a reader" {
			t.Fatalf("max %d: client got %d %q", max, w.Code, w.Body.String())
		}
	}
}
