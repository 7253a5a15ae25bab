package rules

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

// referenceJSON is the envelope as encoding/json writes its wire form: what
// AppendJSON must reproduce byte for byte.
func referenceJSON(e Event) ([]byte, error) {
	data := e.Data
	if len(data) == 0 {
		data = json.RawMessage("null")
	}
	w := eventJSON{ID: e.ID, Type: e.Type, Timestamp: e.Timestamp.UTC().Format(TimestampFormat),
		Subject: e.Subject, Tenant: e.Tenant, Data: data, Previous: e.Previous, Source: e.Source, Mode: e.Mode}
	if e.DedupeWindow > 0 {
		w.Dedupe = e.DedupeWindow.String()
	}
	return json.Marshal(w)
}

// checkEnvelope checks that AppendJSON writes valid, compact JSON that reads
// back as what encoding/json writes for the wire form (the bytes may differ in
// escapes: encoding/json also escapes <, > and &, and writes \b for U+0008),
// and refuses what encoding/json refuses.
func checkEnvelope(t *testing.T, ev Event) {
	t.Helper()
	want, wantErr := referenceJSON(ev)
	got, err := ev.MarshalJSON()
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("%+v: error %v, encoding/json says %v", ev, err, wantErr)
	}
	if err != nil {
		return
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, got); err != nil || !bytes.Equal(compact.Bytes(), got) {
		t.Fatalf("envelope is not compact, valid JSON (%v): %s", err, got)
	}
	// numbers as written (json.Number): data copies them verbatim, and one
	// beyond float64 (a 300-digit id, 1e400) is valid JSON
	var gotV, wantV any
	if err := decodeNumbers(got, &gotV); err != nil {
		t.Fatalf("reading the envelope back: %v", err)
	}
	_ = decodeNumbers(want, &wantV)
	if !reflect.DeepEqual(gotV, wantV) {
		t.Fatalf("envelope reads back differently:\n got  %s\n want %s", got, want)
	}
	// appending keeps what is already in the buffer
	pre := []byte(`{"event":`)
	if got2, err := ev.AppendJSON(pre); err != nil || !bytes.HasPrefix(got2, pre) || !bytes.Equal(got2[len(pre):], got) {
		t.Fatalf("AppendJSON after a prefix: %s (%v)", got2, err)
	}
}

func TestEnvelopeMatchesEncodingJSON(t *testing.T) {
	ts := time.Date(2026, 11, 27, 3, 4, 5, 678901234, time.FixedZone("x", 3600))
	odd := []string{"", "plain", `quo"te`, `back\slash`, "<script>&amp;</script>", "tab\tnew\nline\r", "\x00\x1f\x7f",
		"héllo wörld", "emoji 🎉", "line\u2028sep\u2029", "bad utf8 \xff\xfe", strings.Repeat("long ", 200)}
	datas := []string{"", `null`, `{"a":1}`, "{ \"a\" : [1, 2,\n 3], \"b\": \"<x>&\" }", `"str"`, `12.5e3`, `[true,false,null]`,
		`{"html":"\u003cb\u003e"}`, "{\"ls\":\"\u2028\"}", `{"unterminated":`, `not json`}
	for _, s := range odd {
		for _, d := range datas {
			checkEnvelope(t, Event{ID: "evt_" + s, Type: s, Timestamp: ts, Subject: s, Tenant: s, Data: json.RawMessage(d),
				Source: Source{Name: s, Rule: s, Missing: []string{s, "lookup.x"}}, Mode: s, DedupeWindow: 90 * time.Minute})
		}
	}
	checkEnvelope(t, Event{})
	for _, tr := range []*Truncation{{MaxDepth: MaxDataDepth, Count: 7, Paths: []string{"a.0.b", "", "x\xff\u2028\"<&>"}}, {MaxDepth: 1}} {
		ev := Event{ID: "evt_1", Type: "a.b", Timestamp: ts, Data: json.RawMessage(`{"a":"[TRUNCATED]"}`), Mode: ModeLive,
			Source: Source{Name: "s", Rule: "r", Missing: []string{"x"}, Truncated: tr}}
		checkEnvelope(t, ev)
		b, _ := ev.MarshalJSON()
		var back Event
		if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back.Source.Truncated.Count, tr.Count) || back.Source.Truncated.MaxDepth != tr.MaxDepth {
			t.Fatalf("truncation does not read back: %s (%v)", b, err)
		}
	}
	checkEnvelope(t, Event{ID: "evt_1", Type: "user.created", Timestamp: ts, Data: json.RawMessage(`{"id":"u_1"}`),
		Source: Source{Name: "legacy-auth", Rule: "user-created"}, Mode: ModeLive})
}

// TestEnvelopeTenant checks the tenant field: written after subject when set,
// absent when empty (an operator-only event), and read back by the decoder.
func TestEnvelopeTenant(t *testing.T) {
	ts := time.Date(2026, 11, 27, 3, 4, 5, 0, time.UTC)
	ev := Event{ID: "evt_1", Type: "user.created", Timestamp: ts, Subject: "u_1", Tenant: "org_1", Data: json.RawMessage(`{}`),
		Source: Source{Name: "s", Rule: "r"}, Mode: ModeLive}
	b, err := ev.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	if want := `"subject":"u_1","tenant":"org_1","data":{}`; !strings.Contains(string(b), want) {
		t.Errorf("envelope %s lacks %s", b, want)
	}
	var back Event
	if err := json.Unmarshal(b, &back); err != nil || back.Tenant != "org_1" {
		t.Errorf("tenant reads back as %q (%v) from %s", back.Tenant, err, b)
	}
	ev.Tenant = ""
	if b, _ = ev.MarshalJSON(); strings.Contains(string(b), "tenant") {
		t.Errorf("an operator-only envelope names a tenant: %s", b)
	}
}

func TestValidTenant(t *testing.T) {
	for _, ok := range []string{"t1", "T1", "org_1", "a-b.c:d@e", strings.Repeat("x", MaxTenantLen)} {
		if err := ValidTenant(ok); err != nil {
			t.Errorf("ValidTenant(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "t1 ", " t1", "t\x00", "t/1", "t\n1", "a\u200bb", "é", "t1\xff", "{\"$ne\":1}", "*",
		strings.Repeat("x", MaxTenantLen+1)} {
		if err := ValidTenant(bad); err == nil {
			t.Errorf("ValidTenant(%q) = nil, want an error", bad)
		}
	}
}

func FuzzEnvelopeMatchesEncodingJSON(f *testing.F) {
	f.Add("evt_1", "user.created", "u_1", `{"id":"u_1"}`, "legacy-auth", "missing.x", int64(0))
	f.Add("\xff", "<&>", "\u2028", "{ \"a\" : 1 }", `"`, "", int64(3600e9))
	f.Fuzz(func(t *testing.T, id, typ, subject, data, source, missing string, dedupe int64) {
		ev := Event{ID: id, Type: typ, Subject: subject, Tenant: source, Data: json.RawMessage(data), Timestamp: time.Unix(0, dedupe),
			Source: Source{Name: source, Rule: typ}, Mode: subject, DedupeWindow: time.Duration(dedupe)}
		if missing != "" {
			ev.Source.Missing = []string{missing}
		}
		checkEnvelope(t, ev)
	})
}

func BenchmarkEnvelope(b *testing.B) {
	data := json.RawMessage(`{"id":"u_123","email":"ada@example.com","name":"Ada Lovelace","roles":["admin","dev"],"tenant":{"id":"t_1","plan":"pro"},"created_at":"2026-11-27T03:04:05Z"}`)
	ev := Event{ID: NewEventID(time.Now()), Type: "user.created", Timestamp: time.Now(), Subject: "u_123", Data: data,
		Source: Source{Name: "legacy-auth", Rule: "user-created"}, Mode: ModeLive}
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			if _, err := referenceJSON(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	ev.dataCompact = true // as Events sets it
	b.Run("AppendJSON", func(b *testing.B) {
		for b.Loop() {
			if _, err := ev.MarshalJSON(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func decodeNumbers(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	return d.Decode(v)
}

// TestEventIDsOfOneMillisecond checks the ids of the many events one
// exchange builds at one observation time, each written in its data's
// allocation: all different, all of that millisecond (their first ten
// characters), sorting before the ids of a later one; and an event's id
// stays as it is whatever is done to its data.
func TestEventIDsOfOneMillisecond(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - name: r
    match: {method: POST, path: /import}
    emit: {type: user.created, subject: "{item.id}", data: {id: "{item.id}"}, each: "{request.body.users}"}
`)
	var body strings.Builder
	body.WriteString(`{"users":[`)
	for i := 0; i < MaxEachItems; i++ {
		if i > 0 {
			body.WriteString(",")
		}
		fmt.Fprintf(&body, `{"id":"u%d"}`, i)
	}
	body.WriteString("]}")
	at := time.Date(2026, 12, 1, 10, 0, 0, 123_000_000, time.UTC)
	build := func(now time.Time) []Event {
		ex := &Exchange{Method: "POST", Path: "/import", Status: 201, RequestBody: []byte(body.String()),
			RequestHeader: http.Header{"Content-Type": {"application/json"}}}
		evs, errs := s.Evaluate(ex, EmitOptions{Source: "t", Now: now})
		if len(errs) > 0 || len(evs) != MaxEachItems {
			t.Fatalf("%d events, %v", len(evs), errs)
		}
		return evs
	}
	evs := build(at)
	later := build(at.Add(time.Millisecond))
	prefix := NewEventID(at)[:4+10]
	seen := map[string]bool{}
	for i, ev := range evs {
		if len(ev.ID) != 30 || ev.ID[:14] != prefix || seen[ev.ID] {
			t.Fatalf("event %d: id %q (the millisecond's prefix %q, seen before: %v)", i, ev.ID, prefix, seen[ev.ID])
		}
		for _, c := range ev.ID[4:] {
			if !strings.ContainsRune(crockfordAlphabet, c) {
				t.Fatalf("event %d: id %q", i, ev.ID)
			}
		}
		seen[ev.ID] = true
		if later[i].ID <= ev.ID {
			t.Fatalf("a later millisecond's id %q sorts before %q", later[i].ID, ev.ID)
		}
	}
	ev := evs[0]
	id := strings.Clone(ev.ID)
	_ = append(ev.Data, strings.Repeat("x", 64)...)
	for i := range ev.Data {
		ev.Data[i] = '!'
	}
	if ev.ID != id {
		t.Fatalf("the id changed with the data: %q, was %q", ev.ID, id)
	}
}
