package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/internal/redistest"
)

func newTestCoverage(t *testing.T, o CoverageOptions) (*Coverage, *redis.Client) {
	t.Helper()
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	return NewCoverage(rdb, o), rdb
}

func testSample(i int) UnmatchedSample {
	return UnmatchedSample{
		At:       time.UnixMilli(int64(1e12 + i)).UTC(),
		Request:  SampleRequest{Method: "POST", Path: fmt.Sprintf("/users/u_%d/password", i), Body: json.RawMessage(`{"password":"[REDACTED]"}`)},
		Response: SampleResponse{Status: 204, Header: http.Header{"X-N": {fmt.Sprint(i)}}},
	}
}

func TestCoverageReportAndSamples(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	c, _ := newTestCoverage(t, CoverageOptions{Now: func() time.Time { return now }})

	n, err := c.Report(ctx, []UnmatchedCount{{"POST", "/users/{id}/password", 3}, {"DELETE", "/sessions/{id}", 1}})
	if err != nil || len(n) != 2 || n[0] != 0 || n[1] != 0 {
		t.Fatalf("Report = %v, %v", n, err)
	}
	now = now.Add(time.Minute)
	if _, err := c.Report(ctx, []UnmatchedCount{{"POST", "/users/{id}/password", 2}}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		kept, err := c.AddSample(ctx, "POST", "/users/{id}/password", testSample(i), 3)
		if err != nil || kept != min(i+1, 3) {
			t.Fatalf("AddSample %d = %d, %v", i, kept, err)
		}
	}
	shapes, err := c.List(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(shapes) != 2 {
		t.Fatalf("List = %+v", shapes)
	}
	sh := shapes[0]
	if sh.Method != "POST" || sh.Route != "/users/{id}/password" || sh.Count != 5 || sh.ID != UnmatchedID("POST", "/users/{id}/password") {
		t.Errorf("first shape = %+v", sh)
	}
	if !sh.FirstSeen.Equal(now.Add(-time.Minute)) || !sh.LastSeen.Equal(now) {
		t.Errorf("first/last seen = %v, %v", sh.FirstSeen, sh.LastSeen)
	}
	if len(sh.Samples) != 3 || sh.Samples[0].Request.Path != "/users/u_4/password" || sh.Samples[2].Request.Path != "/users/u_2/password" {
		t.Errorf("samples (newest 3, newest first) = %+v", sh.Samples)
	}
	if shapes[1].Count != 1 || len(shapes[1].Samples) != 0 {
		t.Errorf("second shape = %+v", shapes[1])
	}
	n, err = c.Report(ctx, []UnmatchedCount{{"POST", "/users/{id}/password", 1}})
	if err != nil || n[0] != 3 {
		t.Errorf("Report after samples = %v, %v; want 3 kept", n, err)
	}

	got, err := c.Get(ctx, sh.ID)
	if err != nil || got.Count != 6 || len(got.Samples) != 3 {
		t.Errorf("Get = %+v, %v", got, err)
	}
	if _, err := c.Get(ctx, "0000000000000000"); !errors.Is(err, ErrUnmatchedNotFound) {
		t.Errorf("Get(unknown) = %v", err)
	}
	if _, err := c.Get(ctx, "../../x"); !errors.Is(err, ErrUnmatchedNotFound) {
		t.Errorf("Get(bad id) = %v", err)
	}
	if ok, err := c.Delete(ctx, sh.ID); !ok || err != nil {
		t.Errorf("Delete = %v, %v", ok, err)
	}
	if ok, _ := c.Delete(ctx, sh.ID); ok {
		t.Error("Delete twice reported a shape")
	}
	// seen again: starts over, no samples
	n, _ = c.Report(ctx, []UnmatchedCount{{"POST", "/users/{id}/password", 1}})
	if n[0] != 0 {
		t.Errorf("samples after delete = %d", n[0])
	}
	if cleared, err := c.Clear(ctx); cleared != 2 || err != nil {
		t.Errorf("Clear = %d, %v", cleared, err)
	}
	if shapes, _ := c.List(ctx, 0); len(shapes) != 0 {
		t.Errorf("after Clear: %+v", shapes)
	}
}

// Many shapes: no more than MaxShapes are kept, in Redis too, and a refused
// shape is said to be so.
func TestCoverageBoundsShapesAndTTL(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	c, rdb := newTestCoverage(t, CoverageOptions{MaxShapes: 20, TTL: time.Hour, Now: func() time.Time { return now }})
	var counts []UnmatchedCount
	for i := range 50 {
		counts = append(counts, UnmatchedCount{"POST", fmt.Sprintf("/r%d", i), 1})
	}
	res, err := c.Report(ctx, counts)
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range res {
		if (i < 20) != (n == 0) || i >= 20 && n != -1 {
			t.Fatalf("result %d = %d", i, n)
		}
	}
	if n, _ := c.AddSample(ctx, "POST", "/r49", testSample(1), 3); n != -1 {
		t.Errorf("AddSample on a refused shape = %d", n)
	}
	keys, _ := rdb.Keys(ctx, "authtap:{authtap-unmatched}:*").Result()
	if len(keys) != 21 { // the index and 20 hashes
		t.Errorf("%d keys: %v", len(keys), keys)
	}
	for _, k := range keys {
		if ttl := rdb.PTTL(ctx, k).Val(); ttl <= 0 || ttl > time.Hour {
			t.Errorf("key %s has TTL %v", k, ttl)
		}
	}
	// an hour later the old shapes make room
	now = now.Add(time.Hour + time.Second)
	res, _ = c.Report(ctx, []UnmatchedCount{{"POST", "/new", 1}})
	if res[0] != 0 {
		t.Errorf("new shape after the TTL = %d", res[0])
	}
	if shapes, _ := c.List(ctx, 0); len(shapes) != 1 || shapes[0].Route != "/new" {
		t.Errorf("List after the TTL = %+v", shapes)
	}
}

func TestCoverageRefusesLargeSamples(t *testing.T) {
	c, _ := newTestCoverage(t, CoverageOptions{})
	s := testSample(1)
	s.Response.Body = json.RawMessage(`"` + strings.Repeat("x", MaxSampleSize) + `"`)
	if _, err := c.AddSample(context.Background(), "POST", "/x", s, 3); !errors.Is(err, ErrSampleTooLarge) {
		t.Errorf("AddSample(huge) = %v", err)
	}
}
