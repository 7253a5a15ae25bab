package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/authtap/authtap/rules"
)

func TestAttemptsLog(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s, rdb := newTestStore(t, StoreOptions{Now: clock.Now, MaxAttemptsPerEndpoint: 5, Retention: time.Hour})
	rec := func(ep, ev string, n int, ok bool) time.Time {
		t.Helper()
		clock.Add(time.Second)
		since, err := s.recordAttempt(ctx, Attempt{
			DeliveryID: ev + ":" + ep, EventID: ev, EventType: "user.created", EndpointID: ep, Attempt: n,
			Time: clock.Now(), Status: 500, Success: ok, ResponseExcerpt: strings.Repeat("é", 600),
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return since
	}
	first := rec("ep1", "evt_1", 1, false)
	if !first.Equal(clock.Now().Truncate(time.Millisecond)) {
		t.Errorf("failing since = %v, want the first failure %v", first, clock.Now())
	}
	if again := rec("ep1", "evt_1", 2, false); !again.Equal(first) {
		t.Errorf("failing since moved to %v on the second failure", again)
	}
	if since := rec("ep1", "evt_1", 3, true); !since.IsZero() {
		t.Errorf("failing since = %v after a success, want zero", since)
	}
	if fs, _ := s.FailingSince(ctx, "ep1"); !fs.IsZero() {
		t.Errorf("FailingSince after a success = %v", fs)
	}
	for i := range 6 {
		rec("ep1", fmt.Sprintf("evt_x%d", i), 1, true)
	}
	rec("ep2", "evt_1", 1, true)

	got, err := s.Attempts(ctx, "ep1", 100, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 {
		t.Fatalf("kept %d attempts, want the cap of 5", len(got))
	}
	if got[0].EventID != "evt_x5" || !got[0].Time.After(got[1].Time) {
		t.Errorf("attempts not newest first: %s, %s", got[0].EventID, got[1].EventID)
	}
	if len(got[0].ResponseExcerpt) > MaxResponseExcerpt {
		t.Errorf("excerpt is %d bytes", len(got[0].ResponseExcerpt))
	}
	page, err := s.Attempts(ctx, "ep1", 2, got[1].Time)
	if err != nil || len(page) != 2 || page[0].EventID != got[2].EventID {
		t.Errorf("second page = %+v, %v", page, err)
	}
	evs, err := s.EventAttempts(ctx, "evt_1")
	if err != nil || len(evs) != 4 || evs[0].Attempt != 1 || evs[3].EndpointID != "ep2" {
		t.Errorf("EventAttempts = %+v, %v", evs, err)
	}
	// Retention: attempts older than an hour are gone, and keys expire.
	clock.Add(2 * time.Hour)
	if got, _ := s.Attempts(ctx, "ep1", 100, time.Time{}); len(got) != 0 {
		t.Errorf("%d attempts outlived the retention", len(got))
	}
	if ttl, _ := rdb.TTL(ctx, keyAttemptsByEndpoint+"ep1").Result(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("attempt key TTL = %v", ttl)
	}
}

// Attempts recorded in the same microsecond are neither skipped nor repeated
// by paging: a page takes the whole microsecond that it ends in.
func TestAttemptsPagingKeepsOneMicrosecondTogether(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s, _ := newTestStore(t, StoreOptions{Now: clock.Now, Retention: time.Hour})
	rec := func(ev string) {
		t.Helper()
		if _, err := s.recordAttempt(ctx, Attempt{DeliveryID: ev + ":ep", EventID: ev, EndpointID: "ep",
			Attempt: 1, Time: clock.Now(), Success: true}, nil); err != nil {
			t.Fatal(err)
		}
	}
	rec("evt_old")
	clock.Add(time.Second)
	for i := range 5 { // a burst: five attempts within one microsecond
		rec(fmt.Sprintf("evt_burst%d", i))
		clock.Add(100 * time.Nanosecond)
	}
	clock.Add(time.Second)
	rec("evt_new")

	seen := map[string]int{}
	var pages [][]string
	var before time.Time
	for len(pages) < 10 {
		page, err := s.Attempts(ctx, "ep", 2, before)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for i, a := range page {
			seen[a.EventID]++
			ids = append(ids, a.EventID)
			if i > 0 && a.Time.Truncate(time.Microsecond).After(page[i-1].Time) {
				t.Errorf("page %v not newest first", ids)
			}
		}
		pages = append(pages, ids)
		if len(page) < 2 {
			break
		}
		before = page[len(page)-1].Time
	}
	if len(seen) != 7 {
		t.Errorf("paging saw %d of 7 attempts: %v", len(seen), pages)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s on %d pages: %v", id, n, pages)
		}
	}
}

func TestEventIndex(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s, rdb := newTestStore(t, StoreOptions{Now: clock.Now, Retention: time.Hour})
	base := clock.Now()
	for i := range 5 {
		ev := rules.Event{ID: fmt.Sprintf("evt_%d", i), Type: "user.created", Timestamp: base.Add(time.Duration(i) * time.Minute),
			Data: json.RawMessage(`{"i":` + fmt.Sprint(i) + `}`), Mode: "live", Source: rules.Source{Name: "t"}}
		env, _ := ev.Envelope()
		eps := []string{"a"}
		if i%2 == 0 {
			eps = append(eps, "b")
		}
		if err := s.RecordEvent(ctx, ev, env, eps); err != nil {
			t.Fatal(err)
		}
	}
	ev, err := s.GetEvent(ctx, "evt_3")
	if err != nil || string(ev.Data) != `{"i":3}` || !ev.Timestamp.Equal(base.Add(3*time.Minute)) {
		t.Fatalf("GetEvent = %+v, %v", ev, err)
	}
	if _, err := s.GetEvent(ctx, "evt_nope"); err == nil {
		t.Error("GetEvent of a missing event did not fail")
	}
	recent, _ := s.RecentEvents(ctx, 2)
	if len(recent) != 2 || recent[0].ID != "evt_4" || recent[1].ID != "evt_3" {
		t.Errorf("RecentEvents = %v", recent)
	}
	between, _ := s.EventsBetween(ctx, base.Add(time.Minute), base.Add(3*time.Minute))
	if len(between) != 2 || between[0].ID != "evt_1" || between[1].ID != "evt_2" {
		t.Errorf("EventsBetween = %v", between)
	}
	forB, _ := s.EndpointEventsBetween(ctx, "b", base, base.Add(time.Hour))
	if len(forB) != 3 || forB[2].ID != "evt_4" {
		t.Errorf("EndpointEventsBetween(b) = %v", forB)
	}
	if ttl, _ := rdb.TTL(ctx, keyEventPrefix+"evt_0").Result(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("event TTL = %v", ttl)
	}
}

func TestTruncateUTF8(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"abc", 5, "abc"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"},
		{"aé", 3, "aé"},
		{"a€b", 3, "a"},
	} {
		if got := truncateUTF8(tc.s, tc.n); got != tc.want {
			t.Errorf("truncateUTF8(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
}

func TestMaxEvents(t *testing.T) {
	ctx := context.Background()
	clock := newTestClock()
	s, rdb := newTestStore(t, StoreOptions{Now: clock.Now, MaxEvents: 100})
	for i := range 250 {
		ev := rules.Event{ID: fmt.Sprintf("evt_%03d", i), Type: "user.created",
			Timestamp: clock.Now().Add(time.Duration(i) * time.Millisecond), Data: json.RawMessage(`1`), Mode: "live"}
		if err := s.RecordEvent(ctx, ev, []byte(`{}`), []string{"ep"}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.recordAttempt(ctx, Attempt{EventID: ev.ID, EndpointID: "ep", Time: ev.Timestamp, Success: true}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := rdb.ZCard(ctx, keyEvents).Result(); n < 100 || n > 102 {
		t.Errorf("%d events indexed, want about 100", n)
	}
	if n, _ := rdb.ZCard(ctx, keyEventsByEndpoint+"ep").Result(); n != 100 {
		t.Errorf("%d events in the endpoint index, want 100", n)
	}
	if _, err := s.GetEvent(ctx, "evt_000"); err == nil {
		t.Error("the oldest event is still kept")
	}
	if atts, _ := s.EventAttempts(ctx, "evt_000"); len(atts) != 0 {
		t.Error("the oldest event's attempts are still kept")
	}
	if _, err := s.GetEvent(ctx, "evt_249"); err != nil {
		t.Errorf("the newest event is gone: %v", err)
	}
}
