package caddymodule

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/andybalholm/brotli"
	"github.com/klauspost/compress/zstd"

	"github.com/caddyserver/caddy/v2"

	"github.com/authtap/authtap/rules"
)

// onlyReader hides every method but Read, so a body looks like a stream of
// unknown length (chunked).
type onlyReader struct{ io.Reader }

func TestNonCandidatePassesOriginalWriterAndRequest(t *testing.T) {
	e := newTestHandler(t, testRules, nil)
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/somewhere/else", strings.NewReader("x"))
	body := req.Body
	var gotW http.ResponseWriter
	var gotBody io.ReadCloser
	err := e.h.ServeHTTP(rec, req, handlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		gotW, gotBody = w, r.Body
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	if gotW != http.ResponseWriter(rec) || gotBody != body {
		t.Errorf("a request no rule can match must reach next with the original writer and body")
	}
}

func TestRequestBodyReachesUpstreamByteIdentical(t *testing.T) {
	small := `{"email":"a@x.test","password":"s3cret"}`
	large := `{"email":"a@x.test","pad":"` + strings.Repeat("p", 300) + `"}`
	for i, tc := range []struct {
		name      string
		body      string
		chunked   bool
		wantEvent bool
	}{
		{"content-length", small, false, true},
		{"chunked", small, true, true},
		{"larger than max_body, content-length", large, false, false},
		{"larger than max_body, chunked", large, true, false},
		{"exactly max_body", small + strings.Repeat(" ", 256-len(small)), true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestHandler(t, testRules, func(h *Handler) { h.MaxBody = 256 })
			var r io.Reader = strings.NewReader(tc.body)
			if tc.chunked {
				r = onlyReader{r}
			}
			req := httptest.NewRequest(http.MethodPost, "/api/signup", r)
			wantCL := int64(len(tc.body))
			if tc.chunked {
				req.ContentLength = -1
				wantCL = -1
			}
			var got []byte
			var gotCL int64
			rec := httptest.NewRecorder()
			err := e.serve(rec, req, func(w http.ResponseWriter, r *http.Request) error {
				var err error
				got, err = io.ReadAll(r.Body)
				if err != nil {
					return err
				}
				gotCL = r.ContentLength
				w.WriteHeader(http.StatusCreated)
				return r.Body.Close()
			})
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.body || gotCL != wantCL {
				t.Errorf("%d: upstream got %d bytes (content-length %d), want the %d sent (content-length %d)", i, len(got), gotCL, len(tc.body), wantCL)
			}
			evs := e.q.got()
			if tc.wantEvent {
				if len(evs) != 1 || string(evs[0].Data) != `{"email":"a@x.test"}` {
					t.Errorf("events = %+v, want one user.signed_up with the email", evs)
				}
				return
			}
			if len(evs) != 0 {
				t.Errorf("an oversized body must emit nothing, got %+v", evs)
			}
			if n := counterValue(e.h.metrics.tooLarge.WithLabelValues("request")); n != 1 {
				t.Errorf("bodies_too_large_total{side=request} = %v, want 1", n)
			}
		})
	}
}

// A request body that fails mid-read reaches the upstream with the same bytes
// and then the same error.
func TestRequestBodyReadErrorIsReplayed(t *testing.T) {
	e := newTestHandler(t, testRules, nil)
	boom := errors.New("client went away")
	req := httptest.NewRequest(http.MethodPost, "/api/signup", io.MultiReader(strings.NewReader(`{"email":`), errReader{boom}))
	req.ContentLength = -1
	var got []byte
	var gotErr error
	err := e.serve(httptest.NewRecorder(), req, func(w http.ResponseWriter, r *http.Request) error {
		got, gotErr = io.ReadAll(r.Body)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != `{"email":` || !errors.Is(gotErr, boom) {
		t.Errorf("upstream read %q, %v; want the partial body and the client's error", got, gotErr)
	}
	if len(e.q.got()) != 0 {
		t.Errorf("a broken body must emit nothing")
	}
}

// sentWriter records when the status goes out to the client.
type sentWriter struct {
	*httptest.ResponseRecorder
	sent bool
}

func (w *sentWriter) WriteHeader(code int) { w.sent = true; w.ResponseRecorder.WriteHeader(code) }
func (w *sentWriter) Write(p []byte) (int, error) {
	w.sent = true
	return w.ResponseRecorder.Write(p)
}

func TestResponseHeldUntilEventQueuedAndByteIdentical(t *testing.T) {
	e := newTestHandler(t, testRules, nil)
	w := &sentWriter{ResponseRecorder: httptest.NewRecorder()}
	sentBeforeQueued := true
	e.q.hook = func(rules.Event) { sentBeforeQueued = w.sent }
	parts := []string{`{"user":{"id":"u_1",`, `"email":"a@x.test"}}`}
	err := e.serve(w, httptest.NewRequest(http.MethodPost, "/api/users", strings.NewReader(`{}`)), func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Upstream", "yes")
		w.WriteHeader(http.StatusCreated)
		for _, p := range parts {
			if _, err := w.Write([]byte(p)); err != nil {
				return err
			}
			http.NewResponseController(w).Flush() //nolint:errcheck // held: a no-op
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if sentBeforeQueued {
		t.Error("the response reached the client before its event was queued")
	}
	if w.Code != http.StatusCreated || w.Body.String() != strings.Join(parts, "") || w.Header().Get("X-Upstream") != "yes" {
		t.Errorf("client got %d %q %v", w.Code, w.Body.String(), w.Header())
	}
	if evs := e.q.got(); len(evs) != 1 || evs[0].Type != "user.created" || evs[0].Subject != "u_1" {
		t.Errorf("events = %+v", evs)
	}
}

func TestFailedStatusEmitsNothingButPassesThrough(t *testing.T) {
	e := newTestHandler(t, testRules, nil)
	rec := httptest.NewRecorder()
	body := `{"user":{"id":"u_1"},"error":"exists"}`
	err := e.serve(rec, httptest.NewRequest(http.MethodPost, "/api/users", nil), func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusConflict)
		_, err := io.WriteString(w, body)
		return err
	})
	if err != nil || rec.Code != http.StatusConflict || rec.Body.String() != body {
		t.Fatalf("client got %d %q, err %v", rec.Code, rec.Body.String(), err)
	}
	if len(e.q.got()) != 0 {
		t.Errorf("a 409 must emit nothing, got %v", e.q.types())
	}
}

func TestResponseLargerThanMaxBodyStreamsAndEmitsNothing(t *testing.T) {
	for _, declared := range []bool{true, false} {
		t.Run("content-length declared "+strconv.FormatBool(declared), func(t *testing.T) {
			e := newTestHandler(t, testRules, func(h *Handler) { h.MaxBody = 64 })
			body := `{"user":{"id":"u_1","pad":"` + strings.Repeat("x", 200) + `"}}`
			w := &sentWriter{ResponseRecorder: httptest.NewRecorder()}
			var sentDuring bool
			err := e.serve(w, httptest.NewRequest(http.MethodPost, "/api/users", nil), func(rw http.ResponseWriter, r *http.Request) error {
				if declared {
					rw.Header().Set("Content-Length", strconv.Itoa(len(body)))
				}
				rw.WriteHeader(http.StatusCreated)
				for i := 0; i < len(body); i += 50 {
					if _, err := io.WriteString(rw, body[i:min(i+50, len(body))]); err != nil {
						return err
					}
				}
				sentDuring = w.sent
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !sentDuring {
				t.Error("a response larger than max_body must stream, not be held")
			}
			if w.Code != http.StatusCreated || w.Body.String() != body {
				t.Errorf("client got %d, %d bytes; want 201 and the %d bytes sent", w.Code, w.Body.Len(), len(body))
			}
			if len(e.q.got()) != 0 {
				t.Errorf("no event from a truncated body, got %v", e.q.types())
			}
			if n := counterValue(e.h.metrics.tooLarge.WithLabelValues("response")); n != 1 {
				t.Errorf("bodies_too_large_total{side=response} = %v, want 1", n)
			}
		})
	}
}

// A rule that does not read the response body still emits when the response
// is larger than max_body.
func TestLargeResponseStillEmitsForRulesWithoutBody(t *testing.T) {
	e := newTestHandler(t, testRules, func(h *Handler) { h.MaxBody = 16 })
	rec := httptest.NewRecorder()
	body := strings.Repeat("y", 100)
	err := e.serve(rec, httptest.NewRequest(http.MethodPost, "/api/logout", nil), func(w http.ResponseWriter, r *http.Request) error {
		_, err := io.WriteString(w, body)
		return err
	})
	if err != nil || rec.Body.String() != body {
		t.Fatalf("client got %q, err %v", rec.Body.String(), err)
	}
	if got := e.q.types(); len(got) != 1 || got[0] != "session.ended" {
		t.Errorf("events = %v, want [session.ended]", got)
	}
}

func TestCompressedResponseDecodedForExtractionOnly(t *testing.T) {
	plain := []byte(`{"user":{"id":"u_7"}}`)
	gz := func() []byte {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write(plain) //nolint:errcheck
		zw.Close()
		return b.Bytes()
	}()
	zs := func() []byte {
		enc, _ := zstd.NewWriter(nil)
		return enc.EncodeAll(plain, nil)
	}()
	br := func() []byte {
		var b bytes.Buffer
		bw := brotli.NewWriter(&b)
		bw.Write(plain) //nolint:errcheck
		bw.Close()
		return b.Bytes()
	}()
	for _, tc := range []struct {
		enc  string
		body []byte
	}{{"gzip", gz}, {"zstd", zs}, {"br", br}, {"identity", plain}} {
		t.Run(tc.enc, func(t *testing.T) {
			e := newTestHandler(t, testRules, nil)
			rec := httptest.NewRecorder()
			err := e.serve(rec, httptest.NewRequest(http.MethodPost, "/api/users", nil), func(w http.ResponseWriter, r *http.Request) error {
				w.Header().Set("Content-Encoding", tc.enc)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusCreated)
				_, err := w.Write(tc.body)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rec.Body.Bytes(), tc.body) || rec.Header().Get("Content-Encoding") != tc.enc {
				t.Errorf("client must get the encoded bytes as sent")
			}
			if evs := e.q.got(); len(evs) != 1 || evs[0].Subject != "u_7" {
				t.Errorf("events = %+v, want user.created for u_7", evs)
			}
		})
	}
}

func TestSSEPassesThroughWithFlushes(t *testing.T) {
	e := newTestHandler(t, testRules, nil)
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = e.serve(w, r, func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			io.WriteString(w, "data: first\n\n") //nolint:errcheck
			if err := http.NewResponseController(w).Flush(); err != nil {
				return err
			}
			select { // the client must see the first event while we are still streaming
			case <-release:
			case <-time.After(10 * time.Second):
			}
			_, err := io.WriteString(w, "data: second\n\n")
			return err
		})
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/api/feed")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	close(release)
	if err != nil || line != "data: first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	rest, _ := io.ReadAll(br)
	if string(rest) != "\ndata: second\n\n" {
		t.Errorf("rest = %q", rest)
	}
	// the feed rule reads the response body, which a stream never gives whole
	if evs := e.q.got(); len(evs) != 0 {
		t.Errorf("a stream is not captured; rules that read its body emit nothing, got %v", e.q.types())
	}
}

func TestLookups(t *testing.T) {
	type seen struct{ cookie, auth, marker, path string }
	got := make(chan seen, 4)
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Header.Get("Cookie"), r.Header.Get("Authorization"), r.Header.Get(lookupHeader), r.URL.RequestURI()}
		switch r.URL.Query().Get("u") {
		case "ok":
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"id":"ok","name":"Ann","password":"hunter2"}`) //nolint:errcheck
		case "boom":
			w.WriteHeader(http.StatusInternalServerError)
		case "slow":
			select {
			case <-block:
			case <-r.Context().Done():
			}
		}
	}))
	defer upstream.Close()

	for _, tc := range []struct {
		id          string
		wantData    string
		wantMissing bool
	}{
		{"ok", `{"id":"ok","name":"Ann","password":"[REDACTED]"}`, false},
		{"boom", `null`, true},
		{"slow", `null`, true},
	} {
		t.Run(tc.id, func(t *testing.T) {
			e := newTestHandler(t, testRules, func(h *Handler) { h.LookupUpstream = upstream.URL })
			req := httptest.NewRequest(http.MethodPatch, "/api/users/"+tc.id, strings.NewReader(`{"name":"Ann"}`))
			req.Header.Set("Cookie", "session=sekrit-cookie")
			req.Header.Set("Authorization", "Bearer sekrit-token")
			rec := httptest.NewRecorder()
			start := time.Now()
			err := e.serve(rec, req, func(w http.ResponseWriter, r *http.Request) error {
				w.WriteHeader(http.StatusNoContent)
				return nil
			})
			if err != nil || rec.Code != http.StatusNoContent {
				t.Fatalf("client got %d, err %v", rec.Code, err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("lookup not bounded by its 300ms timeout: took %v", d)
			}
			s := <-got
			if s.cookie != "session=sekrit-cookie" || s.auth != "Bearer sekrit-token" || s.path != "/api/me?u="+tc.id || s.marker != "" {
				t.Errorf("upstream saw %+v; want the caller's credentials and the rendered path, and no marker (lookup_upstream is not Caddy)", s)
			}
			evs := e.q.got()
			if len(evs) != 1 {
				t.Fatalf("events = %+v, want one (a failed lookup still emits)", evs)
			}
			if string(evs[0].Data) != tc.wantData || (len(evs[0].Source.Missing) > 0) != tc.wantMissing {
				t.Errorf("event data %s, missing %v", evs[0].Data, evs[0].Source.Missing)
			}
			fails := counterValue(e.h.metrics.lookupFailures.WithLabelValues("profile-updated"))
			if (fails == 1) != tc.wantMissing {
				t.Errorf("lookup_failures_total = %v", fails)
			}
			assertNoSecrets(t, e.logs, "sekrit-cookie", "sekrit-token", "hunter2", "Ann")
		})
	}
}

// With no lookup_upstream the lookup goes back through the same server, and
// the handler lets it pass unobserved; a client forging the marker is still observed.
func TestLookupThroughSelfIsNotObserved(t *testing.T) {
	e := newTestHandler(t, testRules, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = e.serve(w, r, func(w http.ResponseWriter, r *http.Request) error {
			if r.Header.Get(lookupHeader) != "" {
				t.Errorf("the marker header must not reach the upstream")
			}
			switch r.Method + " " + r.URL.Path {
			case "GET /api/me":
				_, err := io.WriteString(w, `{"id":"`+r.URL.Query().Get("u")+`","sess":"`+strings.TrimPrefix(r.Header.Get("Cookie"), "session=")+`"}`)
				return err
			default:
				w.WriteHeader(http.StatusNoContent)
			}
			return nil
		})
	}))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPatch, srv.URL+"/api/users/u_9", nil)
	req.Header.Set("Cookie", "session=abc")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := e.q.types(); len(got) != 1 || got[0] != "user.updated" {
		t.Fatalf("events = %v, want only user.updated (the lookup itself is not observed)", got)
	}
	if d := string(e.q.got()[0].Data); d != `{"id":"u_9","sess":"abc"}` {
		t.Errorf("data = %s", d)
	}
	// a client cannot hide a request behind the marker
	req, _ = http.NewRequest(http.MethodGet, srv.URL+"/api/me", nil)
	req.Header.Set(lookupHeader, "guess")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := e.q.types(); len(got) != 2 || got[1] != "me.read" {
		t.Errorf("events = %v, want the forged-marker request observed", got)
	}
}

func TestFailOpen(t *testing.T) {
	body := `{"user":{"id":"u_1"}}`
	next := func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusCreated)
		_, err := io.WriteString(w, body)
		return err
	}
	t.Run("queue panics", func(t *testing.T) {
		e := newTestHandler(t, testRules, nil)
		e.q.panic = true
		rec := httptest.NewRecorder()
		if err := e.serve(rec, httptest.NewRequest(http.MethodPost, "/api/users", nil), next); err != nil {
			t.Fatal(err)
		}
		if rec.Code != http.StatusCreated || rec.Body.String() != body {
			t.Errorf("client got %d %q", rec.Code, rec.Body.String())
		}
		if e.logs.FilterMessage("authtap failed; request passed through").Len() != 1 {
			t.Errorf("the panic must be logged")
		}
	})
	t.Run("queue fails", func(t *testing.T) {
		e := newTestHandler(t, testRules, nil)
		e.q.err = errQueueDown
		rec := httptest.NewRecorder()
		if err := e.serve(rec, httptest.NewRequest(http.MethodPost, "/api/users", nil), next); err != nil {
			t.Fatal(err)
		}
		if rec.Code != http.StatusCreated || rec.Body.String() != body {
			t.Errorf("client got %d %q", rec.Code, rec.Body.String())
		}
		if n := counterValue(e.h.metrics.enqueueErrors); n != 1 {
			t.Errorf("enqueue_errors_total = %v", n)
		}
		lost := e.logs.FilterMessage("event lost: cannot queue or spool it").All()
		if len(lost) != 1 || lost[0].ContextMap()["type"] != "user.created" || lost[0].ContextMap()["event_id"] == "" {
			t.Errorf("want one error line with event id and type, got %+v", lost)
		}
		assertNoSecrets(t, e.logs, "u_1")
	})
	t.Run("next aborts", func(t *testing.T) {
		e := newTestHandler(t, testRules, nil)
		rec := httptest.NewRecorder()
		var recovered any
		func() {
			defer func() { recovered = recover() }()
			_ = e.serve(rec, httptest.NewRequest(http.MethodPost, "/api/users", nil), func(w http.ResponseWriter, r *http.Request) error {
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, `{"user":`) //nolint:errcheck
				panic(http.ErrAbortHandler)   // as reverse_proxy does when the upstream breaks mid-body
			})
		}()
		if recovered != http.ErrAbortHandler {
			t.Errorf("the abort must propagate, got %v", recovered)
		}
		if rec.Code != http.StatusCreated || rec.Body.String() != `{"user":` {
			t.Errorf("what next wrote must go out before the abort: %d %q", rec.Code, rec.Body.String())
		}
		if len(e.q.got()) != 0 {
			t.Errorf("an aborted exchange emits nothing")
		}
	})
	t.Run("next fails", func(t *testing.T) {
		e := newTestHandler(t, testRules, nil)
		boom := errors.New("upstream died mid-body")
		rec := httptest.NewRecorder()
		err := e.serve(rec, httptest.NewRequest(http.MethodPost, "/api/users", nil), func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(http.StatusCreated)
			io.WriteString(w, `{"user":`) //nolint:errcheck
			return boom
		})
		if !errors.Is(err, boom) {
			t.Errorf("err = %v, want next's error", err)
		}
		if rec.Code != http.StatusCreated || rec.Body.String() != `{"user":` {
			t.Errorf("what next wrote must still go out: %d %q", rec.Code, rec.Body.String())
		}
		if len(e.q.got()) != 0 {
			t.Errorf("an incomplete exchange emits nothing")
		}
	})
}

func TestNothingWrittenIsStatusOK(t *testing.T) {
	e := newTestHandler(t, testRules, nil)
	rec := httptest.NewRecorder()
	if err := e.serve(rec, httptest.NewRequest(http.MethodPost, "/api/logout", nil), func(http.ResponseWriter, *http.Request) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if got := e.q.types(); len(got) != 1 {
		t.Errorf("events = %v", got)
	}
}

func TestEventEnvelope(t *testing.T) {
	e := newTestHandler(t, testRules, func(h *Handler) { h.Source = "legacy-auth"; h.Mode = "test" })
	rec := httptest.NewRecorder()
	err := e.serve(rec, httptest.NewRequest(http.MethodPost, "/api/users", nil), func(w http.ResponseWriter, r *http.Request) error {
		_, err := io.WriteString(w, `{"user":{"id":"u_2"}}`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	evs := e.q.got()
	if len(evs) != 1 {
		t.Fatalf("events = %+v", evs)
	}
	b, _ := json.Marshal(evs[0])
	var env struct {
		Source struct{ Name, Rule string }
		Mode   string
	}
	_ = json.Unmarshal(b, &env)
	if env.Source.Name != "legacy-auth" || env.Source.Rule != "user-created" || env.Mode != "test" {
		t.Errorf("envelope = %s", b)
	}
	if n := counterValue(e.h.metrics.matched.WithLabelValues("user-created", "user.created")); n != 1 {
		t.Errorf("events_matched_total = %v", n)
	}
}

func TestValidate(t *testing.T) {
	for i, tc := range []struct {
		h    Handler
		want string
	}{
		{Handler{}, "rules: at least one"},
		{Handler{Rules: []string{"a"}, Mode: "prod"}, "mode: want"},
		{Handler{Rules: []string{"a"}, MaxBody: -1}, "max_body"},
		{Handler{Rules: []string{"a"}, ReloadInterval: 1}, "reload_interval: want at least 10ms"},
		{Handler{Rules: []string{"a"}, ReloadInterval: -1}, ""},
		{Handler{Rules: []string{"a"}, LookupUpstream: "ftp://x"}, "lookup_upstream"},
		{Handler{Rules: []string{"a"}, LookupUpstream: "http://u:p@x"}, "lookup_upstream"},
		{Handler{Rules: []string{"a"}, LookupUpstream: "http://127.0.0.1:9000/base", Mode: "test"}, ""},
		{Handler{Rules: []string{"a"}, BeforeLookupBudget: caddy.Duration(11 * time.Second)}, "before_lookup_budget"},
		{Handler{Rules: []string{"a"}, BeforeLookupBudget: -1}, "before_lookup_budget"},
		{Handler{Rules: []string{"a"}, BeforeLookupBudget: caddy.Duration(10 * time.Second)}, ""},
	} {
		err := tc.h.Validate()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%d: Validate() = %v, want %q", i, err, tc.want)
		}
	}
}

func TestInvalidRulesAtProvisionNameFileLineCol(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/bad.yaml"
	if err := writeFile(file, "version: 1\nrules:\n  - name: x\n    match: {method: POST, path: /a, status: ok}\n    emit: {type: a.b}\n"); err != nil {
		t.Fatal(err)
	}
	h := &Handler{Rules: []string{file}, ReloadInterval: -1}
	ctx, cancel := newCaddyContext()
	defer cancel()
	err := h.provision(ctx, &fakeQueue{})
	if err == nil || !strings.Contains(err.Error(), file+":4:") {
		t.Errorf("provision error = %v, want one naming %s:4:col", err, file)
	}
}

// handlerFunc adapts a function to caddyhttp.Handler.
type handlerFunc func(http.ResponseWriter, *http.Request) error

func (f handlerFunc) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

func BenchmarkNonCandidate(b *testing.B) {
	e := newTestHandler(b, testRules, nil)
	req := httptest.NewRequest(http.MethodGet, "/static/app.js", nil)
	w := httptest.NewRecorder()
	next := handlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		_ = e.h.ServeHTTP(w, req, next)
	}
}

func BenchmarkCandidateHeld(b *testing.B) {
	e := newTestHandler(b, testRules, nil)
	body := []byte(`{"user":{"id":"u_1","email":"a@x.test"}}`)
	next := handlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, err := w.Write(body)
		return err
	})
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/api/users", bytes.NewReader([]byte(`{"email":"a@x.test"}`)))
		_ = e.h.ServeHTTP(httptest.NewRecorder(), req, next)
	}
}

// Without a listener address (and without lookup_upstream) a lookup is not
// sent anywhere: the Host is never dialed by name.
func TestLookupWithoutListenerAddressFails(t *testing.T) {
	e := newTestHandler(t, testRules, nil)
	req := httptest.NewRequest(http.MethodPatch, "/api/users/u_1", nil)
	req.Host = "auth.example.com"
	err := e.serve(httptest.NewRecorder(), req, func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	evs := e.q.got()
	if len(evs) != 1 || len(evs[0].Source.Missing) == 0 {
		t.Fatalf("events = %+v, want one listing the lookup as missing", evs)
	}
	failed := e.logs.FilterMessage("lookup failed; event will list what is missing").All()
	if len(failed) != 1 || !strings.Contains(failed[0].ContextMap()["error"].(string), "no listener address") {
		t.Errorf("log = %+v", failed)
	}
}
