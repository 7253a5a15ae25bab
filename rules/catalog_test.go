package rules

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

func TestCatalogDescriptionsAndRedactedExamples(t *testing.T) {
	const src = `version: 1
rules:
  - name: sign-up
    description: A user signed up.
    match: {method: POST, path: /api/users}
    emit:
      - type: user.created
        subject: "{response.body.id}"
        data: "{request.body}"
      - type: audit.logged
        description: Something was written to the audit log.
        data: {who: "{response.body.id}"}
  - name: edit
    match: {method: PATCH, path: "/api/users/{id}"}
    emit: {type: "user.{request.body.kind}", types: [user.updated, user.created], data: {id: "{path.id}"}}
tests:
  - name: first
    request: {method: POST, path: /api/users, body: {email: a@x.test, password: hunter2-secret}}
    response: {status: 201, body: {id: u_1}}
    expect: [{type: user.created}, {type: audit.logged}]
  - name: second
    request: {method: POST, path: /api/users, body: {email: b@x.test, password: other-secret}}
    response: {status: 201, body: {id: u_2}}
    expect: [{type: user.created}, {type: audit.logged}]
  - name: same as first again
    request: {method: POST, path: /api/users, body: {email: a@x.test, password: hunter2-secret}}
    response: {status: 201, body: {id: u_1}}
    expect: [{type: user.created}, {type: audit.logged}]
  - name: edit
    request: {method: PATCH, path: /api/users/u_3, body: {kind: updated}}
    expect: [{type: user.updated}]
`
	s := mustSet(t, src)
	ets := s.EventTypes()
	byType := map[string]EventType{}
	for _, et := range ets {
		byType[et.Type] = et
	}
	if d := byType["user.created"].Description; d != "A user signed up." {
		t.Errorf("user.created description %q, want the rule's", d)
	}
	if d := byType["audit.logged"].Description; d != "Something was written to the audit log." {
		t.Errorf("audit.logged description %q, want the emit's", d)
	}
	if d := byType["user.updated"].Description; d != "" {
		t.Errorf("user.updated description %q, want none", d)
	}
	ex := byType["user.created"].Examples
	if len(ex) != 2 {
		t.Fatalf("user.created examples: want 2 (the third test repeats the first), got %d: %s", len(ex), ex)
	}
	for i, e := range ex {
		if strings.Contains(string(e), "hunter2") || strings.Contains(string(e), "other-secret") || !strings.Contains(string(e), `"password":"[REDACTED]"`) {
			t.Errorf("example %d must carry the password redacted: %s", i, e)
		}
		var env struct {
			ID, Type, Timestamp, Subject string
			Source                       struct{ Name, Rule string }
		}
		if err := json.Unmarshal(e, &env); err != nil {
			t.Fatalf("example %d is not JSON: %v", i, err)
		}
		if env.ID != ExampleEventID || env.Timestamp != "2026-01-02T03:04:05.000Z" || env.Source.Name != ExampleSource || env.Source.Rule != "sign-up" || env.Type != "user.created" {
			t.Errorf("example %d envelope %+v", i, env)
		}
	}
	if !strings.Contains(string(ex[0]), `"subject":"u_1"`) || !strings.Contains(string(ex[1]), `"subject":"u_2"`) {
		t.Errorf("examples out of test order: %s", ex)
	}
	tmpl := byType["user.{request.body.kind}"]
	if len(tmpl.Examples) != 1 || !strings.Contains(string(tmpl.Examples[0]), `"type":"user.updated"`) {
		t.Errorf("templated type examples: %s", tmpl.Examples)
	}
	// user.created is declared by the templated emit too, but only sign-up built one
	if got := byType["user.created"].Rules; strings.Join(got, ",") != "sign-up,edit" {
		t.Errorf("user.created rules %v", got)
	}
	// stable: a second load of the same file gives the same catalog
	a, _ := json.Marshal(ets)
	b, _ := json.Marshal(mustSet(t, src).EventTypes())
	if string(a) != string(b) {
		t.Errorf("catalog differs between two loads:\n%s\n%s", a, b)
	}
	// callers get their own slices
	ets[0].Examples[0] = nil
	if s.EventTypes()[0].Examples[0] == nil {
		t.Error("EventTypes returned the cached slices")
	}
}

func TestCatalogLimitsHostileFile(t *testing.T) {
	var b strings.Builder
	b.WriteString(`version: 1
rules:
  - name: sign-up
    match: {method: POST, path: /api/users}
    emit: {type: user.created, data: "{request.body}"}
tests:
`)
	// a huge example first: it must be left out, not cut or kept
	fmt.Fprintf(&b, "  - {name: huge, request: {method: POST, path: /api/users, body: {blob: %q}}, expect: [{type: user.created}]}\n", strings.Repeat("x", MaxExampleSize))
	for i := range 100 {
		fmt.Fprintf(&b, "  - {name: t%d, request: {method: POST, path: /api/users, body: {n: %d}}, expect: [{type: user.created}]}\n", i, i)
	}
	s := mustSet(t, b.String())
	if n := s.Tests(); n != 101 {
		t.Fatalf("tests %d", n)
	}
	ets := s.EventTypes()
	if len(ets) != 1 || len(ets[0].Examples) != MaxExamplesPerType {
		t.Fatalf("want %d examples, got %+v", MaxExamplesPerType, ets)
	}
	for i, e := range ets[0].Examples {
		if len(e) > MaxExampleSize || strings.Contains(string(e), "xxxx") {
			t.Errorf("example %d is the huge one (%d bytes)", i, len(e))
		}
		if !strings.Contains(string(e), fmt.Sprintf(`{"n":%d}`, i)) {
			t.Errorf("example %d is not test t%d: %s", i, i, e)
		}
	}
	// a description past the limit is refused where the file enters
	long := strings.Repeat("d", MaxDescriptionLen+1)
	for _, where := range []string{"rule", "emit"} {
		src := "version: 1\nrules:\n  - name: r\n    match: {method: POST, path: /a}\n    emit: {type: a.b}\n    description: " + long + "\n"
		if where == "emit" {
			src = "version: 1\nrules:\n  - name: r\n    match: {method: POST, path: /a}\n    emit: {type: a.b, description: " + long + "}\n"
		}
		_, err := Parse("long.yaml", []byte(src))
		if err == nil || !strings.Contains(err.Error(), "rules.MaxDescriptionLen") {
			t.Errorf("%s description of %d bytes: want an error naming MaxDescriptionLen, got %v", where, len(long), err)
		}
	}
	if _, err := Parse("ok.yaml", []byte("version: 1\nrules:\n  - name: r\n    match: {method: POST, path: /a}\n    emit: {type: a.b, description: "+long[:MaxDescriptionLen]+"}\n")); err != nil {
		t.Errorf("a description of exactly MaxDescriptionLen bytes: %v", err)
	}
}

func TestMergeEventTypes(t *testing.T) {
	ex := func(s string) json.RawMessage { return json.RawMessage(s) }
	got := MergeEventTypes(
		[]EventType{{Type: "b.x", Rules: []string{"r2"}, Examples: []json.RawMessage{ex(`1`), ex(`2`)}}, {Type: "a.x", Description: "first", Rules: []string{"r1"}}},
		[]EventType{{Type: "b.x", Description: "later", Rules: []string{"r1", "r2"}, Examples: []json.RawMessage{ex(`2`), ex(`3`), ex(`4`)}}, {Type: "a.x", Description: "second", Rules: []string{"r0"}}},
	)
	if len(got) != 2 || got[0].Type != "a.x" || got[0].Description != "first" || strings.Join(got[0].Rules, ",") != "r0,r1" ||
		got[1].Description != "later" || strings.Join(got[1].Rules, ",") != "r1,r2" {
		t.Fatalf("%+v", got)
	}
	var e []string
	for _, x := range got[1].Examples {
		e = append(e, string(x))
	}
	if strings.Join(e, ",") != "1,2,3" {
		t.Errorf("merged examples %v, want the first %d distinct", e, MaxExamplesPerType)
	}
	if m := MergeEventTypes(); m == nil || len(m) != 0 {
		t.Errorf("MergeEventTypes() = %#v, want an empty non-nil slice", m)
	}
}

// TestExamplePacksCatalog: every event type of the example packs has a
// description and at least one example, and none leaks a test's secret.
func TestExamplePacksCatalog(t *testing.T) {
	packs, err := filepath.Glob("examples/*.yaml")
	if err != nil || len(packs) == 0 {
		t.Fatalf("no example packs: %v", err)
	}
	for _, p := range packs {
		s, err := Load(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		for _, et := range s.EventTypes() {
			if et.Description == "" {
				t.Errorf("%s: %s has no description", p, et.Type)
			}
			if len(et.Examples) == 0 {
				t.Errorf("%s: %s has no example (no inline test produces it)", p, et.Type)
			}
			for _, e := range et.Examples {
				for _, secret := range []string{"$2y$", "hunter2", "s3cret"} {
					if strings.Contains(string(e), secret) {
						t.Errorf("%s: an example of %s carries %q: %s", p, et.Type, secret, e)
					}
				}
			}
		}
	}
}

// TestCatalogBuiltOnce: the tests run on the first call only; later calls
// copy the cached catalog (a few slices per type), whatever the number of tests.
func TestCatalogBuiltOnce(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nrules:\n  - {name: r, match: {method: POST, path: /a}, emit: {type: a.b, data: \"{request.body}\"}}\ntests:\n")
	for i := range 200 {
		fmt.Fprintf(&b, "  - {name: t%d, request: {method: POST, path: /b, body: {n: %d}}, expect: []}\n", i, i)
	}
	s := mustSet(t, b.String())
	first := s.EventTypes()
	if len(first) != 1 || len(first[0].Examples) != 0 {
		t.Fatalf("%+v", first)
	}
	// one EventType: the outer slice plus at most one clone of each of its three slices
	if n := testing.AllocsPerRun(20, func() { s.EventTypes() }); n > 4 {
		t.Errorf("EventTypes allocates %.0f times per call after the first: the catalog is rebuilt", n)
	}
}
