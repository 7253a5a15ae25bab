package rules

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"mime"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestFormMediaType checks that the shortcut past mime.ParseMediaType gives
// its answer for every type bodyAsJSON cares about, and no form type where
// ParseMediaType gives none (case folding included: ParseMediaType lowers
// with strings.ToLower, which maps the Kelvin sign to "k" and "İ" to "i").
func TestFormMediaType(t *testing.T) {
	for _, ct := range []string{
		"", "application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain",
		"application/x-www-form-urlencoded", "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
		" application/x-www-form-urlencoded ;", "application/x-www-form-urlencoded; =bad",
		"multipart/form-data; boundary=abc", "MULTIPART/FORM-DATA; boundary=\"a b\"", "multipart/form-data",
		"multipart/form-data; boundary=abc; boundary=def", "multipart/form-data;;", "multipart/form-data; boundary",
		"applİcation/x-www-form-urlencoded", "multipart/form-data\u212a", "multipart /form-data", "multipart/form-data x",
		";multipart/form-data", "multipart/mixed; boundary=x", "application/x-www-form-urlencoded\x00",
	} {
		want, wantParams, _ := mime.ParseMediaType(ct)
		if want != "multipart/form-data" && want != "application/x-www-form-urlencoded" {
			want, wantParams = "", nil
		}
		got, params := formMediaType(ct)
		if got != want || fmt.Sprint(params) != fmt.Sprint(wantParams) {
			t.Errorf("%q: got %q %v, want %q %v", ct, got, params, want, wantParams)
		}
	}
}

// ulidReference is how ids were rendered before eventID: the same bits
// must give the same id.
func ulidReference(b [16]byte) string {
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	var out [26]byte
	for i := 25; i >= 0; i-- {
		out[i] = crockfordAlphabet[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return "evt_" + string(out[:])
}

func TestEventIDEncoding(t *testing.T) {
	for i := 0; i < 1000; i++ {
		var b [16]byte
		_, _ = rand.Read(b[:])
		if i == 0 {
			b = [16]byte{}
		} else if i == 1 {
			b = [16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		}
		if got, want := eventID(b), ulidReference(b); got != want {
			t.Fatalf("%x: got %s, want %s", b, got, want)
		}
	}
	// a dedupe id is the first 128 bits of the hash of its inputs
	h := sha256.Sum256([]byte("src\x00rule\x00key"))
	if got, want := DedupeEventID("src", "rule", "key"), ulidReference([16]byte(h[:16])); got != want {
		t.Errorf("DedupeEventID = %s, want %s", got, want)
	}
}

// TestNewEventIDUnique draws ids from many goroutines at once in one
// millisecond: every id is new, carries that millisecond, and is a ULID.
func TestNewEventIDUnique(t *testing.T) {
	now := time.UnixMilli(1764583200123)
	const goroutines, each = 8, 20000
	ids := make([][]string, goroutines)
	var wg sync.WaitGroup
	for g := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				ids[g] = append(ids[g], NewEventID(now))
			}
		}()
	}
	wg.Wait()
	seen := make(map[string]bool, goroutines*each)
	var tb [16]byte
	binary.BigEndian.PutUint64(tb[:8], uint64(now.UnixMilli())<<16)
	prefix := ulidReference(tb)[:4+10] // "evt_" and the 48-bit time
	for _, l := range ids {
		for _, id := range l {
			if seen[id] {
				t.Fatalf("duplicate id %s", id)
			}
			seen[id] = true
			if len(id) != 30 || !strings.HasPrefix(id, prefix) || strings.Trim(id[4:], crockfordAlphabet) != "" {
				t.Fatalf("id %s: want %s… of 30 Crockford characters", id, prefix)
			}
		}
	}
	// the 80 random bits are spread: every character after the time takes many values
	for pos := 14; pos < 30; pos++ {
		vals := map[byte]bool{}
		for id := range seen {
			vals[id[pos]] = true
		}
		if len(vals) < 32 && pos > 14 || len(vals) < 4 {
			t.Errorf("character %d takes %d values", pos, len(vals))
		}
	}
}

// TestPooledCopierHoldsNothing builds an event whose data is cut at
// MaxDataDepth, then one that is not: the pooled copier the first used
// carries neither its truncation nor its policy into the second.
func TestPooledCopierHoldsNothing(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: whole
    match: {method: POST, path: /x}
    emit: {type: x.done, data: "{request.body}", redact: [secret]}
`)
	deep := strings.Repeat(`{"a":`, MaxDataDepth+5) + "1" + strings.Repeat("}", MaxDataDepth+5)
	ev := func(body string) Event {
		ex := &Exchange{Method: "POST", Path: "/x", Status: 200, RequestBody: []byte(body)}
		ms := s.Match(ex)
		evs, errs := ms[0].Events(ex, EmitOptions{})
		if len(evs) != 1 || len(errs) > 0 {
			t.Fatalf("%d events, %v", len(evs), errs)
		}
		return evs[0]
	}
	for i := 0; i < 50; i++ {
		if e := ev(deep); e.Source.Truncated == nil || e.Source.Truncated.Count != 1 {
			t.Fatalf("deep: truncated %+v", e.Source.Truncated)
		}
		e := ev(`{"b":{"c":[1,2,{"secret":"x","d":"e"}]},"password":"p"}`)
		if e.Source.Truncated != nil {
			t.Fatalf("shallow event truncated: %+v", e.Source.Truncated)
		}
		if got, want := string(e.Data), `{"b":{"c":[1,2,{"secret":"[REDACTED]","d":"e"}]},"password":"[REDACTED]"}`; got != want {
			t.Fatalf("data %s, want %s", got, want)
		}
	}
}

// TestBodyReadOnce checks that placeholders read a body, small or large, and
// a lookup's body the same way, before and after a placeholder reads it
// whole (which keeps a string of it).
func TestBodyReadOnce(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /x, response: {body: {"user.id": exists}}}
    lookup: {get: /u, as: u}
    emit:
      type: x.done
      subject: "{response.body.user.id}"
      data: {id: "{response.body.user.id}", name: "{request.body.name}", all: "{response.body.user}", org: "{u.body.org}", u: "{u.body}"}
`)
	for _, pad := range []int{0, 100 << 10} {
		resp := fmt.Sprintf(`{"pad":%q,"user":{"id":"u_1","tags":["a"]}}`, strings.Repeat("p", pad))
		ex := &Exchange{Method: "POST", Path: "/x", Status: 200, RequestBody: []byte(`{"name":"Ann"}`),
			ResponseHeader: http.Header{"Content-Type": {"application/json"}}, ResponseBody: []byte(resp)}
		ms := s.Match(ex)
		if len(ms) != 1 {
			t.Fatalf("pad %d: %d matches", pad, len(ms))
		}
		ex.SetLookup("u", LookupResult{Status: 200, Body: []byte(`{"org":"o_1"}`)})
		evs, errs := ms[0].Events(ex, EmitOptions{})
		if len(evs) != 1 || len(errs) > 0 {
			t.Fatalf("pad %d: %d events, %v", pad, len(evs), errs)
		}
		want := `{"id":"u_1","name":"Ann","all":{"id":"u_1","tags":["a"]},"org":"o_1","u":{"org":"o_1"}}`
		if string(evs[0].Data) != want || evs[0].Subject != "u_1" || evs[0].Source.Missing != nil {
			t.Errorf("pad %d: data %s subject %q missing %v", pad, evs[0].Data, evs[0].Subject, evs[0].Source.Missing)
		}
	}
}

// TestEventBuildAllocs bounds what building an event of scalar values
// allocates: its data, its id, the event itself and the list of what is
// missing, plus one copy per value read from a body that has no string
// (one read whole, or a batch's sub-exchange, has one). The render context,
// the copier and the data buffer cost nothing.
func TestEventBuildAllocs(t *testing.T) {
	s, src := benchSCIM55(t)
	ex := &src[0] // a user created: subject and data read 3 values of the bodies
	ms := s.Match(ex)
	ms[0].Events(ex, EmitOptions{}) // bodies parsed once
	o := EmitOptions{Source: "bench", Now: time.Now()}
	if n := testing.AllocsPerRun(200, func() { ms[0].Events(ex, o) }); n > 4+3 {
		t.Errorf("building an event allocates %v times, want at most 7", n)
	}
	ex.bodies[0].text()
	ex.bodies[1].text()
	if n := testing.AllocsPerRun(200, func() { ms[0].Events(ex, o) }); n > 4 {
		t.Errorf("building an event from bodies with strings allocates %v times, want at most 4", n)
	}
}
