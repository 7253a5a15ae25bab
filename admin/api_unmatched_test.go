package admin

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func TestAPIUnmatched(t *testing.T) {
	f := newAPIFixture(t, apiFixtureOptions{})
	c := NewCoverage(f.worker.Store().Redis(), CoverageOptions{})
	ctx := context.Background()
	if _, err := c.Report(ctx, []UnmatchedCount{{Method: "POST", Route: "/users/{id}/password", Count: 4}, {Method: "DELETE", Route: "/sessions/{id}", Count: 9}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddSample(ctx, "POST", "/users/{id}/password", testSample(7), 3); err != nil {
		t.Fatal(err)
	}
	status, body := f.call("GET", "/unmatched", nil)
	if status != 200 {
		t.Fatalf("GET /unmatched = %d %s", status, body)
	}
	var list struct {
		Unmatched []UnmatchedShape `json:"unmatched"`
		MaxShapes int              `json:"max_shapes"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Unmatched) != 2 || list.Unmatched[0].Route != "/sessions/{id}" || list.MaxShapes != MaxUnmatchedShapes {
		t.Fatalf("GET /unmatched = %s", body)
	}
	if s := list.Unmatched[1].Samples; len(s) != 1 || s[0].Request.Path != "/users/u_7/password" {
		t.Errorf("samples = %+v", s)
	}
	if status, body := f.call("GET", "/unmatched?limit=1", nil); status != 200 || strings.Count(string(body), `"route"`) != 1 {
		t.Errorf("limit=1: %d %s", status, body)
	}
	if status, _ := f.call("GET", "/unmatched?limit=0", nil); status != 400 {
		t.Errorf("limit=0: %d", status)
	}
	id := list.Unmatched[1].ID
	if status, body := f.call("GET", "/unmatched/"+id, nil); status != 200 || !strings.Contains(string(body), `"count":4`) {
		t.Errorf("GET one: %d %s", status, body)
	}
	if status, _ := f.call("DELETE", "/unmatched/"+id, nil); status != 204 {
		t.Errorf("DELETE one: %d", status)
	}
	if status, _ := f.call("GET", "/unmatched/"+id, nil); status != 404 {
		t.Errorf("GET deleted: %d", status)
	}
	if status, _ := f.call("DELETE", "/unmatched/"+id, nil); status != 404 {
		t.Errorf("DELETE deleted: %d", status)
	}
	if status, body := f.call("DELETE", "/unmatched", nil); status != 200 || strings.TrimSpace(string(body)) != `{"deleted":1}` {
		t.Errorf("DELETE all: %d %s", status, body)
	}
	if status, body := f.call("GET", "/unmatched", nil); status != 200 || !strings.Contains(string(body), `"unmatched":[]`) {
		t.Errorf("after clear: %d %s", status, body)
	}
	// operator-only: no token, no list
	res, err := http.Get(f.server.URL + "/unmatched")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 401 {
		t.Errorf("GET /unmatched without a token = %d", res.StatusCode)
	}
}
