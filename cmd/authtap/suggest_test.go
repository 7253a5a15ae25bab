package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/admin"
	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/rules"
)

func sampleOf(method, path string, reqBody string, status int, respBody string) admin.UnmatchedSample {
	s := admin.UnmatchedSample{
		At:       time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC),
		Request:  admin.SampleRequest{Method: method, Path: path},
		Response: admin.SampleResponse{Status: status},
	}
	if reqBody != "" {
		s.Request.Body = json.RawMessage(reqBody)
		s.Request.Header = http.Header{"Content-Type": {"application/json"}, "Authorization": {rules.Redacted}}
	}
	if respBody != "" {
		s.Response.Body = json.RawMessage(respBody)
		s.Response.Header = http.Header{"Content-Type": {"application/json"}}
	}
	return s
}

func testShapes() []admin.UnmatchedShape {
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	sh := func(method, route string, count int64, samples ...admin.UnmatchedSample) admin.UnmatchedShape {
		return admin.UnmatchedShape{ID: admin.UnmatchedID(method, route), Method: method, Route: route, Count: count,
			FirstSeen: t0, LastSeen: t0.Add(time.Hour), Samples: samples}
	}
	return []admin.UnmatchedShape{
		sh("PUT", "/api/users/{id}/password", 12,
			sampleOf("PUT", "/api/users/u_1/password", `{"current_password":"[REDACTED]","new_password":"[REDACTED]"}`, 204, ""),
			sampleOf("PUT", "/api/users/u_2/password", `{"current_password":"[REDACTED]","new_password":"[REDACTED]"}`, 204, "")),
		sh("POST", "/api/orgs/{id}/members", 5,
			sampleOf("POST", "/api/orgs/org_7/members", `{"user_id":"u_1","role":"admin"}`, 201,
				`{"member":{"id":"m_1","user_id":"u_1","role":"admin","org_id":"org_7","token":"[REDACTED]","tags":["x"]}}`)),
		sh("DELETE", "/api/orgs/{id}/members/{id}", 3,
			sampleOf("DELETE", "/api/orgs/org_7/members/u_1", "", 204, "")),
		sh("POST", "/reset-password/{id}", 2,
			sampleOf("POST", "/reset-password/[REDACTED]", `{"password":"[REDACTED]"}`, 200, `{"ok":true,"user":"u_1"}`)),
		sh("PATCH", "/api/users/{id}", 7,
			sampleOf("PATCH", "/api/users/u_1", `{"name":"Ann O'Neil \"A\"","email":"a@x.test"}`, 200, `{"id":"u_1","name":"Ann O'Neil \"A\"","email":"a@x.test","n":12.5,"big":12345678901234567890}`)),
		sh("POST", "/auth/login", 40),
		sh("POST", "/files/{rest...}", 1, sampleOf("POST", "/files/a/b/c", "", 201, `[1,2]`)),
		sh("POST", "other", 99),
		sh("GET", "/api/me", 1),
	}
}

func TestDraftRulesCheckClean(t *testing.T) {
	doc, notes, err := draftRules(suggestSource{shapes: testShapes(), origin: "test"}, time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	t.Logf("notes: %v\n%s", notes, text)
	for _, want := range []string{
		"# DRAFT rules",
		"name: put-api-users-user-id-password",
		"path: '/api/users/{user_id}/password'",
		"type: user.password_updated",
		"type: member.created",
		"path: '/api/orgs/{org_id}/members/{member_id}'",
		"type: member.deleted",
		"path: '/reset-password/{token}'",
		"type: user.updated",
		"subject: '{response.body.member.id}'",
		"path: '/files/{rest...}'",
		"(no sample: add a test)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("draft lacks %q", want)
		}
	}
	if strings.Contains(text, "{path.token}") || strings.Contains(text, "response.body.member.token") {
		t.Error("the draft reads a secret")
	}
	if len(notes) != 2 { // other, and GET
		t.Errorf("notes = %v", notes)
	}
	// and `authtap rules check` accepts it as is
	file := write(t, t.TempDir(), "draft.yaml", text)
	var out, errb bytes.Buffer
	if code := run([]string{"rules", "check", file}, &out, &errb); code != 0 {
		t.Fatalf("rules check: exit %d\n%s%s", code, out.String(), errb.String())
	}
	if !strings.Contains(out.String(), "tests: 7 passed, 0 failed") {
		t.Errorf("rules check:\n%s", out.String())
	}
}

// Whatever the shapes and samples hold, the draft checks clean (a failing
// test is left out) and its size follows the input's.
func TestDraftRulesHostileShapes(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	const chars = "abcXYZ09-_.~{}/@:%' \"\\\n\x00é"
	rnd := func(n int) string {
		b := make([]rune, n)
		for i := range b {
			b[i] = []rune(chars)[r.IntN(len([]rune(chars)))]
		}
		return string(b)
	}
	for round := range 30 {
		var shapes []admin.UnmatchedShape
		for range 20 {
			path := "/" + rnd(1+r.IntN(30))
			route := rules.RouteShape(path)
			body, _ := json.Marshal(map[string]any{rnd(5): rnd(10), "id": rnd(4), "n": r.IntN(100), rnd(3): map[string]any{"x": rnd(3)}})
			shapes = append(shapes, admin.UnmatchedShape{Method: []string{"POST", "PUT", "PATCH", "DELETE"}[r.IntN(4)], Route: route, Count: 1,
				Samples: []admin.UnmatchedSample{sampleOf("POST", path, string(body), 200+r.IntN(5), string(body))}})
		}
		doc, _, err := draftRules(suggestSource{shapes: shapes}, time.Now())
		if err != nil {
			if strings.Contains(err.Error(), "no unmatched route shapes") {
				continue
			}
			t.Fatalf("round %d: %v", round, err)
		}
		f, err := rules.Parse("d.yaml", doc)
		if err != nil {
			t.Fatalf("round %d: %v\n%s", round, err, doc)
		}
		set, err := rules.NewSet(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, res := range set.RunTests() {
			if !res.Passed {
				t.Fatalf("round %d: %s: %s\n%s", round, res.Name, res.Failure, doc)
			}
		}
	}
}

// suggest reads the shapes from the management API, from Redis, or from a
// file; all three give the same draft.
func TestRulesSuggestSources(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()
	cov := admin.NewCoverage(rdb, admin.CoverageOptions{})
	for _, sh := range testShapes()[:3] {
		if _, err := cov.Report(ctx, []admin.UnmatchedCount{{Method: sh.Method, Route: sh.Route, Count: sh.Count}}); err != nil {
			t.Fatal(err)
		}
		for _, s := range sh.Samples {
			if _, err := cov.AddSample(ctx, sh.Method, sh.Route, s, 3); err != nil {
				t.Fatal(err)
			}
		}
	}
	shapes, err := cov.List(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	listing, _ := json.Marshal(map[string]any{"unmatched": shapes})
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" || r.URL.Path != "/unmatched" || r.URL.Query().Get("limit") != "500" {
			http.Error(w, `{"error":{"code":"unauthorized","message":"no"}}`, 401)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(listing)
	}))
	defer api.Close()

	dir := t.TempDir()
	in := write(t, dir, "unmatched.json", string(listing))
	strip := func(s string) string { // the header names the source and the time
		_, rest, _ := strings.Cut(s, "\nversion: 1")
		return rest
	}
	var drafts []string
	for _, args := range [][]string{
		{"--api", api.URL, "--token", "tok"},
		{"--redis", srv.URL},
		{"--input", in},
	} {
		out := filepath.Join(dir, fmt.Sprintf("draft%d.yaml", len(drafts)))
		var stdout, stderr bytes.Buffer
		if code := run(append([]string{"rules", "suggest", "-o", out}, args...), &stdout, &stderr); code != 0 {
			t.Fatalf("suggest %v: exit %d: %s", args, code, stderr.String())
		}
		var check bytes.Buffer
		if code := run([]string{"rules", "check", out}, &check, &stderr); code != 0 {
			t.Fatalf("check of the draft from %v: exit %d\n%s", args, code, check.String())
		}
		b, _ := readArg(out)
		drafts = append(drafts, strip(string(b)))
	}
	if drafts[0] != drafts[1] || drafts[1] != drafts[2] {
		t.Errorf("drafts differ:\n%s\n----\n%s\n----\n%s", drafts[0], drafts[1], drafts[2])
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"rules", "suggest", "--api", api.URL, "--token", "wrong"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "no (HTTP 401)") {
		t.Errorf("wrong token: exit %d: %s", code, stderr.String())
	}
	if code := run([]string{"rules", "suggest", "--api", api.URL, "--redis", srv.URL}, &stdout, &stderr); code != 2 {
		t.Errorf("two sources: exit %d", code)
	}
	empty := write(t, dir, "empty.json", `{"unmatched":[]}`)
	stderr.Reset()
	if code := run([]string{"rules", "suggest", "--input", empty}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "no unmatched route shapes") {
		t.Errorf("nothing to draft: exit %d: %s", code, stderr.String())
	}
}
