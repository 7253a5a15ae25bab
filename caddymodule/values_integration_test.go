package caddymodule

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker/tasks"
)

// valuesRules read values inside values (JWT claims, the end of a Location)
// and multipart/form-data sign-ups.
const valuesRules = `version: 1
rules:
  - name: email-verified
    match: {method: POST, path: /verify, status: 204}
    emit:
      type: user.email_verified
      subject: "{jwt(request.body.token).sub}"
      data: {email: "{jwt(request.body.token).email}", token: "{request.body.token}", claims: "{jwt(request.body.token)}"}
  - name: scim-user-created
    match: {method: POST, path: /scim/v2/Users, status: 201}
    emit:
      type: user.created
      subject: "{last_segment(response.header.Location)}"
      data: {id: '{match(response.header.Location, "/Users/([^/?]+)$")}', by: "{jwt(request.header.Authorization).sub}"}
  - name: sign-up
    match: {method: POST, path: /signup, status: 201}
    emit: {type: user.signed_up, subject: "{request.body.email}", data: "{request.body}"}
`

// valuesMaxBody is max_body in these tests.
const valuesMaxBody = 64 << 10

// valuesUpstream answers the routes of valuesRules. Sign-ups are read as a
// stream; read counts their bytes as they arrive.
type valuesUpstream struct {
	read atomic.Int64
}

func (u *valuesUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method + " " + r.URL.Path {
	case "POST /verify":
		io.Copy(io.Discard, r.Body) //nolint:errcheck
		w.WriteHeader(http.StatusNoContent)
	case "POST /scim/v2/Users":
		io.Copy(io.Discard, r.Body) //nolint:errcheck
		w.Header().Set("Location", "https://scim.example.test/scim/v2/Users/2819c223")
		w.Header().Set("Content-Type", "application/scim+json")
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, `{"id":"2819c223"}`) //nolint:errcheck
	case "POST /signup":
		u.read.Store(0)
		h := sha256.New()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Body.Read(buf)
			h.Write(buf[:n])
			u.read.Add(int64(n))
			if err == io.EOF {
				break
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"sha":"%x","n":%d}`, h.Sum(nil), u.read.Load())
	default:
		http.NotFound(w, r)
	}
}

// startValues runs Caddy (max_body valuesMaxBody) with valuesRules, a
// private Redis and a valuesUpstream.
func startValues(t *testing.T) (*integration, *valuesUpstream) {
	it := startIntegration(t)
	up := &valuesUpstream{}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	it.upstream = strings.TrimPrefix(srv.URL, "http://")
	rulesFile := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(rulesFile, []byte(valuesRules), 0o600); err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(it.configWith("values", rulesFile)), &cfg); err != nil {
		t.Fatal(err)
	}
	handle := cfg["apps"].(map[string]any)["http"].(map[string]any)["servers"].(map[string]any)["srv0"].(map[string]any)["routes"].([]any)[0].(map[string]any)["handle"].([]any)
	tap := handle[1].(map[string]any)
	if tap["handler"] != "authtap" {
		t.Fatalf("unexpected route %v", handle)
	}
	tap["max_body"] = valuesMaxBody
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := it.load(string(b)); err != nil {
		t.Fatal(err)
	}
	return it, up
}

// queuedEvent waits for the event of type typ and subject subject and
// returns it with its raw fan-out payload.
func (it *integration) queuedEvent(typ, subject string, within time.Duration) (rules.Event, []byte) {
	it.t.Helper()
	deadline := time.Now().Add(within)
	for {
		infos, _ := it.insp.ListPendingTasks(tasks.QueueFanout, asynq.PageSize(1000))
		for _, ti := range infos {
			p, err := tasks.ParseFanout(asynq.NewTask(ti.Type, ti.Payload))
			if err != nil {
				it.t.Fatalf("task %s: %v", ti.ID, err)
			}
			if p.Event.Type == typ && p.Event.Subject == subject {
				return p.Event, ti.Payload
			}
		}
		if time.Now().After(deadline) {
			it.t.Fatalf("event %s %q never queued; queued: %v", typ, subject, it.queuedEvents())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testJWT(claims string) string {
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256","typ":"JWT"}`)) + "." + enc([]byte(claims)) + ".c2lnbmF0dXJlLXNlY3JldC1wYXJ0"
}

// TestValuesAndMultipartThroughCaddy: placeholder functions and
// multipart/form-data bodies through a real Caddy, Redis and upstream; a
// multipart body larger than max_body streams through, never buffered past it.
func TestValuesAndMultipartThroughCaddy(t *testing.T) {
	it, up := startValues(t)
	post := func(t *testing.T, path, ct string, body io.Reader, h http.Header) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, it.base+path, body)
		req.Header.Set("Content-Type", ct)
		for k, v := range h {
			req.Header[k] = v
		}
		resp, err := it.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	t.Run("email verification: the subject is the sub claim of the token in the body", func(t *testing.T) {
		it.t = t
		tok := testJWT(`{"sub":"u_42","email":"ann@example.test","purpose":"verify","password":"p"}`)
		if status, _ := post(t, "/verify", "application/json", strings.NewReader(`{"token":"`+tok+`"}`), nil); status != http.StatusNoContent {
			t.Fatalf("status %d", status)
		}
		ev, payload := it.queuedEvent("user.email_verified", "u_42", 10*time.Second)
		want := `{"email":"ann@example.test","token":"[REDACTED]","claims":{"sub":"u_42","email":"ann@example.test","purpose":"verify","password":"[REDACTED]"}}`
		if string(ev.Data) != want {
			t.Errorf("data %s\nwant %s", ev.Data, want)
		}
		if bytes.Contains(payload, []byte("c2lnbmF0dXJl")) || bytes.Contains(payload, []byte(tok[:20])) {
			t.Errorf("the token reached Redis: %s", payload)
		}
	})

	t.Run("SCIM: the id at the end of the Location header", func(t *testing.T) {
		it.t = t
		h := http.Header{"Authorization": {"Bearer " + testJWT(`{"sub":"admin_1"}`)}}
		if status, _ := post(t, "/scim/v2/Users", "application/scim+json", strings.NewReader(`{"userName":"bjensen"}`), h); status != http.StatusCreated {
			t.Fatalf("status %d", status)
		}
		ev, _ := it.queuedEvent("user.created", "2819c223", 10*time.Second)
		if string(ev.Data) != `{"id":"2819c223","by":"admin_1"}` || len(ev.Source.Missing) > 0 {
			t.Errorf("data %s missing %v", ev.Data, ev.Source.Missing)
		}
	})

	signUp := func(w *multipart.Writer, email string, file int64) {
		w.WriteField("email", email)     //nolint:errcheck
		w.WriteField("name", "Ann Lee")  //nolint:errcheck
		w.WriteField("password", "s3cr") //nolint:errcheck
		w.WriteField("plan", "pro")      //nolint:errcheck
		h := textproto.MIMEHeader{}
		h.Set("Content-Disposition", `form-data; name="avatar"; filename="me.png"`)
		h.Set("Content-Type", "image/png")
		pw, _ := w.CreatePart(h)
		io.CopyN(pw, zeroReader{}, file) //nolint:errcheck
		w.Close()                        //nolint:errcheck
	}

	t.Run("multipart sign-up: text fields, the file skipped, bytes unchanged", func(t *testing.T) {
		it.t = t
		var b bytes.Buffer
		w := multipart.NewWriter(&b)
		signUp(w, "mp@example.test", 16<<10)
		status, resp := post(t, "/signup", w.FormDataContentType(), bytes.NewReader(b.Bytes()), nil)
		if want := fmt.Sprintf(`{"sha":"%x","n":%d}`, sha256.Sum256(b.Bytes()), b.Len()); status != http.StatusCreated || resp != want {
			t.Fatalf("upstream saw %d %s, want %s", status, resp, want)
		}
		ev, _ := it.queuedEvent("user.signed_up", "mp@example.test", 10*time.Second)
		if want := `{"email":"mp@example.test","name":"Ann Lee","password":"[REDACTED]","plan":"pro"}`; string(ev.Data) != want {
			t.Errorf("data %s\nwant %s", ev.Data, want)
		}
	})

	t.Run("malformed multipart: the request is unaffected, the placeholders missing", func(t *testing.T) {
		it.t = t
		body := "--B\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nbroken@example.test\r\n" // no close delimiter
		status, resp := post(t, "/signup", "multipart/form-data; boundary=B", strings.NewReader(body), nil)
		if want := fmt.Sprintf(`{"sha":"%x","n":%d}`, sha256.Sum256([]byte(body)), len(body)); status != http.StatusCreated || resp != want {
			t.Fatalf("upstream saw %d %s, want %s", status, resp, want)
		}
		ev, _ := it.queuedEvent("user.signed_up", "", 10*time.Second)
		if string(ev.Data) != "null" || strings.Join(ev.Source.Missing, ",") != "request.body.email,request.body" {
			t.Errorf("data %s missing %v", ev.Data, ev.Source.Missing)
		}
	})

	t.Run("multipart over max_body streams: the upstream reads past max_body before the client has sent it all", func(t *testing.T) {
		it.t = t
		pr, pw := io.Pipe()
		const file = 1 << 20
		sent := &countingWriter{w: pw}
		w2 := multipart.NewWriter(sent)
		errc := make(chan error, 1)
		go func() {
			// the fields and the first max_body + 32 KiB of the file …
			w2.WriteField("email", "big@example.test") //nolint:errcheck
			h := textproto.MIMEHeader{}
			h.Set("Content-Disposition", `form-data; name="avatar"; filename="big.bin"`)
			part, _ := w2.CreatePart(h)
			if _, err := io.CopyN(part, zeroReader{}, valuesMaxBody+32<<10); err != nil {
				errc <- err
				return
			}
			// … then wait until the upstream has read more than max_body:
			// authtap holds at most max_body+1 bytes back, so it must
			deadline := time.Now().Add(10 * time.Second)
			for up.read.Load() <= valuesMaxBody {
				if time.Now().After(deadline) {
					errc <- fmt.Errorf("the upstream has read %d bytes of the %d sent: the request is held back", up.read.Load(), sent.n.Load())
					pw.CloseWithError(io.ErrUnexpectedEOF)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
			_, err := io.CopyN(part, zeroReader{}, file)
			if err == nil {
				err = w2.Close()
			}
			pw.CloseWithError(err)
			errc <- err
		}()
		h := sha256.New()
		req, _ := http.NewRequest(http.MethodPost, it.base+"/signup", io.TeeReader(pr, h))
		req.Header.Set("Content-Type", w2.FormDataContentType())
		res, err := it.client.Do(req)
		if werr := <-errc; werr != nil {
			t.Fatal(werr) // says the request was held back
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		status, resp := res.StatusCode, string(b)
		if want := fmt.Sprintf(`{"sha":"%x","n":%d}`, h.Sum(nil), sent.n.Load()); status != http.StatusCreated || resp != want {
			t.Fatalf("upstream saw %d %s, want %s", status, resp, want)
		}
		// the body was over max_body, and the rule reads it: no event
		time.Sleep(200 * time.Millisecond)
		for _, e := range it.queuedEvents() {
			if strings.Contains(e, "big@example.test") {
				t.Errorf("an event for a body over max_body: %s", e)
			}
		}
	})

	t.Run("a 32 MiB multipart upload on a candidate route allocates under 2 MiB", func(t *testing.T) {
		it.t = t
		upload := func(size int64) {
			pr, pw := io.Pipe()
			w := multipart.NewWriter(pw)
			go func() { signUp(w, "huge@example.test", size); pw.Close() }()
			req, _ := http.NewRequest(http.MethodPost, it.base+"/signup", pr)
			req.Header.Set("Content-Type", w.FormDataContentType())
			resp, err := it.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body) //nolint:errcheck
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated || up.read.Load() < size {
				t.Fatalf("status %d, upstream read %d", resp.StatusCode, up.read.Load())
			}
		}
		upload(1 << 20) // warm the pools and the connection
		total, inuse := allocDuring(func() { upload(32 << 20) })
		t.Logf("32 MiB multipart through Caddy: TotalAlloc +%d bytes, HeapInuse %+d", total, inuse)
		if total > 2<<20 {
			t.Errorf("%d bytes allocated for a streamed upload; want under 2 MiB (max_body is %d)", total, valuesMaxBody)
		}
	})
}

// zeroReader reads as endless zero bytes.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// countingWriter counts what it passes on.
type countingWriter struct {
	w io.Writer
	n atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
