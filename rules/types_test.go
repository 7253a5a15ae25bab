package rules

import (
	"errors"
	"strings"
	"testing"
)

const templatedTypeRules = `version: 1
rules:
  - name: user-action
    match: {method: POST, path: "/u/{id}"}
    emit:
      type: "user.{request.body.action}"
      types: [user.created, user.updated, user.deleted]
      subject: "{path.id}"
`

func TestTemplatedTypeRendersOnlyDeclaredTypes(t *testing.T) {
	s := mustSet(t, templatedTypeRules)
	long := strings.Repeat("x", 900<<10)
	for _, tc := range []struct {
		action, wantType, reason string
	}{
		{"created", "user.created", ""},
		{"deleted", "user.deleted", ""},
		{"suspended", "", RefusedUndeclared},              // valid, but not declared
		{"created.admin", "", RefusedUndeclared},          // no prefix tricks
		{"", "", RefusedInvalid},                          // renders "user."
		{"has space", "", RefusedInvalid},                 // not a name
		{"a\nb", "", RefusedInvalid},                      // nor a log-line breaker
		{strings.Repeat("a", 124), "", RefusedTooLong},    // "user." + 124 = 129 bytes
		{long, "", RefusedTooLong},                        // 900 KiB from the client
		{strings.Repeat("a", 123), "", RefusedUndeclared}, // 128 bytes: within the cap, undeclared
	} {
		ex := &Exchange{Method: "POST", Path: "/u/7", Status: 201, RequestBody: []byte(`{"action":` + string(appendQuote(nil, tc.action)) + `}`)}
		evs, errs := s.Evaluate(ex, EmitOptions{})
		name := QuoteCut(tc.action)
		if tc.reason == "" {
			if len(errs) != 0 || len(evs) != 1 || evs[0].Type != tc.wantType {
				t.Errorf("%s: events %+v errors %v, want one %s", name, evs, errs, tc.wantType)
			}
			continue
		}
		if len(evs) != 0 || len(errs) != 1 {
			t.Errorf("%s: events %+v errors %v, want none and one error", name, evs, errs)
			continue
		}
		var ee *EmitError
		if !errors.As(errs[0], &ee) || ee.Reason != tc.reason || ee.Rule != "user-action" {
			t.Errorf("%s: error %#v, want reason %s", name, errs[0], tc.reason)
		}
		if msg := errs[0].Error(); len(msg) > 400 || (len(tc.action) > MaxQuotedValue && strings.Contains(msg, tc.action[:MaxQuotedValue+1])) {
			t.Errorf("%s: the error carries the request value (%d bytes): %.200s", name, len(msg), msg)
		}
	}
}

func TestTypesDeclarationErrors(t *testing.T) {
	for _, tc := range []struct {
		name, emit, want string
	}{
		{"missing", `{type: "user.{request.body.a}"}`, `r.yaml:3:61: emit.type: templated type "user.{request.body.a}" needs the list of types it may render to, or a client chooses the type: add types: [user.created, user.updated] next to it`},
		{"on a constant type", `{type: user.created, types: [user.created]}`, `emit.types: types lists what a templated type may render to`},
		{"empty list", `{type: "user.{request.body.a}", types: []}`, `emit.types: want a list of the event types`},
		{"not a name", `{type: "user.{request.body.a}", types: ["user.a b"]}`, `emit.types[0]: want a dot-separated event name`},
		{"placeholder in the list", `{type: "user.{request.body.a}", types: ["user.{request.body.a}"]}`, `emit.types[0]: want a dot-separated event name`},
		{"cannot render", `{type: "user.{request.body.a}", types: [user.a, tenant.a]}`, `emit.types[1]: "tenant.a" can never be rendered`},
		{"suffix", `{type: "{request.body.a}.created", types: [user.created, user.deleted]}`, `emit.types[1]: "user.deleted" can never be rendered`},
		{"twice", `{type: "user.{request.body.a}", types: [user.a, user.a]}`, `emit.types[1]: "user.a" is listed twice`},
		{"too long", `{type: "user.{request.body.a}", types: [user.` + strings.Repeat("a", 124) + `]}`, `emit.types[0]: the event type is 129 bytes; event types may be at most 128 (rules.MaxEventTypeLen)`},
		{"constant too long", `{type: user.` + strings.Repeat("a", 124) + `}`, `emit.type: the event type is 129 bytes`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "version: 1\nrules:\n  - {name: r, match: {method: POST, path: /x}, emit: " + tc.emit + "}\n"
			_, err := Parse("r.yaml", []byte(src))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant %s", err, tc.want)
			}
		})
	}
	// two placeholders: the fixed text between them must fit too
	if _, err := Parse("r.yaml", []byte("version: 1\nrules:\n  - {name: r, match: {method: POST, path: /x}, emit: {type: \"{request.body.a}.x.{request.body.b}\", types: [user.x.created, org.x.y]}}\n")); err != nil {
		t.Errorf("two placeholders: %v", err)
	}
}

func TestDeclaredTypes(t *testing.T) {
	s := mustSet(t, `version: 1
rules:
  - {name: r, match: {method: POST, path: /x}, emit: [{type: a.b}, {type: "a.{request.body.x}", types: [a.c, a.b]}]}
`)
	if got := strings.Join(s.Rules()[0].DeclaredTypes(), ","); got != "a.b,a.c" {
		t.Errorf("DeclaredTypes = %s", got)
	}
}

func TestQuoteCut(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"abc", `"abc"`},
		{"a\nb\x00", `"a\nb\x00"`},
		{strings.Repeat("x", 64), `"` + strings.Repeat("x", 64) + `"`},
		{strings.Repeat("x", 65), `"` + strings.Repeat("x", 64) + `"…(65 bytes)`},
		{strings.Repeat("x", 63) + "é", `"` + strings.Repeat("x", 63) + `"…(65 bytes)`}, // never half a character
	} {
		if got := QuoteCut(tc.in); got != tc.want {
			t.Errorf("QuoteCut(%.20q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
