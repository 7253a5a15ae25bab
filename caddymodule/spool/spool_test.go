package spool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/authtap/authtap/rules"
)

func event(i int) rules.Event {
	return rules.Event{
		ID: fmt.Sprintf("evt_%04d", i), Type: "user.created",
		Timestamp: time.Date(2026, 11, 23, 10, 0, 0, 123e6, time.UTC),
		Data:      json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)),
		Source:    rules.Source{Name: "legacy-auth", Rule: "user-created"}, Mode: rules.ModeLive,
		DedupeWindow: time.Hour,
	}
}

func collect(t *testing.T, s *Spool) []rules.Event {
	t.Helper()
	var got []rules.Event
	n, err := s.Replay(context.Background(), func(_ context.Context, ev rules.Event) error {
		got = append(got, ev)
		return nil
	})
	if err != nil {
		t.Fatalf("Replay: %v", err)
	}
	if n != len(got) {
		t.Fatalf("Replay returned %d, handed out %d", n, len(got))
	}
	return got
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*"+segmentExt))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAppendReplayInOrder(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{SegmentBytes: 300}) // a few records per segment
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Empty() {
		t.Fatal("new spool not empty")
	}
	for i := range 10 {
		if err := s.Append(event(i)); err != nil {
			t.Fatal(err)
		}
	}
	if s.Empty() || s.Bytes() == 0 {
		t.Fatalf("after appends: empty=%v bytes=%d", s.Empty(), s.Bytes())
	}
	if n := len(segments(t, dir)); n < 3 {
		t.Fatalf("want several segments, got %d", n)
	}
	got := collect(t, s)
	if len(got) != 10 {
		t.Fatalf("replayed %d events, want 10", len(got))
	}
	for i, ev := range got {
		want := event(i)
		if ev.ID != want.ID || string(ev.Data) != string(want.Data) || !ev.Timestamp.Equal(want.Timestamp) ||
			ev.Source.Name != want.Source.Name || ev.Source.Rule != want.Source.Rule || ev.DedupeWindow != want.DedupeWindow || ev.Mode != want.Mode {
			t.Fatalf("record %d = %+v, want %+v", i, ev, want)
		}
	}
	if !s.Empty() || s.Bytes() != 0 || len(segments(t, dir)) != 0 {
		t.Fatalf("after replay: empty=%v bytes=%d segments=%v", s.Empty(), s.Bytes(), segments(t, dir))
	}
	if got := collect(t, s); len(got) != 0 {
		t.Fatalf("second replay handed out %d", len(got))
	}
}

func TestSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := s.Append(event(i)); err != nil {
			t.Fatal(err)
		}
	}
	// No Close: as if the process died after the appends returned (which releases its lock).
	s.unlock()
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Empty() || s2.Bytes() != s.Bytes() {
		t.Fatalf("reopened: empty=%v bytes=%d want %d", s2.Empty(), s2.Bytes(), s.Bytes())
	}
	// New records go to a new segment after the old ones.
	if err := s2.Append(event(3)); err != nil {
		t.Fatal(err)
	}
	got := collect(t, s2)
	if len(got) != 4 || got[0].ID != "evt_0000" || got[3].ID != "evt_0003" {
		t.Fatalf("replayed %v", ids(got))
	}
}

func ids(evs []rules.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.ID)
	}
	return out
}

func TestTornLastRecordIsSkipped(t *testing.T) {
	for i, tc := range []struct {
		name string
		tear func(t *testing.T, path string, size int64)
	}{
		{"half a header", func(t *testing.T, path string, _ int64) { appendBytes(t, path, []byte{0, 0, 1}) }},
		{"short payload", func(t *testing.T, path string, size int64) {
			// Cut the last record (of the three) in the middle of its payload.
			if err := os.Truncate(path, size-5); err != nil {
				t.Fatal(err)
			}
		}},
		{"bad checksum at the end", func(t *testing.T, path string, size int64) {
			b, _ := os.ReadFile(path)
			b[size-2] ^= 0xff
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{"zero-filled tail", func(t *testing.T, path string, _ int64) { appendBytes(t, path, make([]byte, 64)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := Open(dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			for j := range 3 {
				if err := s.Append(event(j)); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			segs := segments(t, dir)
			if len(segs) != 1 {
				t.Fatalf("segments %v", segs)
			}
			info, _ := os.Stat(segs[0])
			tc.tear(t, segs[0], info.Size())

			core, logs := observer.New(zap.WarnLevel)
			s2, err := Open(dir, Options{Logger: zap.New(core)})
			if err != nil {
				t.Fatal(err)
			}
			got := collect(t, s2)
			want := 3
			if i == 1 || i == 2 { // the last record itself was damaged
				want = 2
			}
			if len(got) != want {
				t.Fatalf("replayed %v, want %d records", ids(got), want)
			}
			if logs.FilterMessageSnippet("spool: skipping").Len() != 1 {
				t.Fatalf("want one warning about the torn record, got %v", logs.All())
			}
			if len(segments(t, dir)) != 0 || s2.Bytes() != 0 {
				t.Fatal("replayed segment not removed")
			}
		})
	}
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptMiddleIsSetAside(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for j := range 3 {
		if err := s.Append(event(j)); err != nil {
			t.Fatal(err)
		}
	}
	_ = s.Close()
	seg := segments(t, dir)[0]
	b, _ := os.ReadFile(seg)
	rec := len(b) / 3
	b[rec+headerLen+2] ^= 0xff // inside the second record's payload
	if err := os.WriteFile(seg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	s2, _ := Open(dir, Options{Logger: zap.New(core)})
	got := collect(t, s2)
	if len(got) != 1 || got[0].ID != "evt_0000" {
		t.Fatalf("replayed %v", ids(got))
	}
	if logs.FilterMessageSnippet("checksum mismatch").Len() != 1 {
		t.Fatalf("logs %v", logs.All())
	}
	if _, err := os.Stat(seg + corruptExt); err != nil {
		t.Fatalf("corrupt segment not set aside: %v", err)
	}
	if !s2.Empty() {
		t.Fatal("set-aside segment still counted")
	}
}

func TestReplayFailureKeepsSegmentForRetry(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{SegmentBytes: 1}) // one record per segment
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 4 {
		if err := s.Append(event(i)); err != nil {
			t.Fatal(err)
		}
	}
	down := errors.New("redis down")
	var seen []string
	n, err := s.Replay(context.Background(), func(_ context.Context, ev rules.Event) error {
		if ev.ID == "evt_0002" {
			return down
		}
		seen = append(seen, ev.ID)
		return nil
	})
	if !errors.Is(err, down) || n != 2 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	if len(segments(t, dir)) != 2 {
		t.Fatalf("segments left %v", segments(t, dir))
	}
	got := collect(t, s)
	if len(got) != 2 || got[0].ID != "evt_0002" || got[1].ID != "evt_0003" {
		t.Fatalf("retry replayed %v", ids(got))
	}
	// Cancelled context: nothing lost either.
	_ = s.Append(event(9))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Replay(ctx, func(context.Context, rules.Event) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled replay: %v", err)
	}
	if got := collect(t, s); len(got) != 1 {
		t.Fatalf("after cancel: %v", ids(got))
	}
}

func TestConcurrentAppends(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{SegmentBytes: 4 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const writers, each = 8, 50
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := s.Append(event(w*1000 + i)); err != nil {
					errs <- err
				}
			}
		}()
	}
	// A replay racing the appends must not lose or double anything.
	seen := map[string]int{}
	var mu sync.Mutex
	replayOnce := func() {
		_, err := s.Replay(context.Background(), func(_ context.Context, ev rules.Event) error {
			mu.Lock()
			seen[ev.ID]++
			mu.Unlock()
			return nil
		})
		if err != nil {
			errs <- err
		}
	}
	replayOnce()
	wg.Wait()
	replayOnce()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if len(seen) != writers*each {
		t.Fatalf("replayed %d distinct events, want %d", len(seen), writers*each)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("%s replayed %d times", id, n)
		}
	}
}

func TestBound(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{MaxBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var i int
	for ; ; i++ {
		err := s.Append(event(i))
		if errors.Is(err, ErrFull) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if i > 100 {
			t.Fatal("bound never reached")
		}
	}
	if s.Bytes() > 1000 {
		t.Fatalf("spool holds %d bytes, bound 1000", s.Bytes())
	}
	// Everything accepted is still there; replay frees the space.
	if got := collect(t, s); len(got) != i {
		t.Fatalf("replayed %d, appended %d", len(got), i)
	}
	if err := s.Append(event(i)); err != nil {
		t.Fatalf("after replay: %v", err)
	}
}

func TestClosed(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	if err := s.Append(event(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func BenchmarkAppend(b *testing.B) {
	s, err := Open(b.TempDir(), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ev := event(1)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.Append(ev); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func TestOneProcessPerDirectory(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open of a spool in use: %v", err)
	}
	_ = s.Close()
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	_ = s2.Close()
}

func TestVanishedSegmentIsForgotten(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{SegmentBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 2 {
		if err := s.Append(event(i)); err != nil {
			t.Fatal(err)
		}
	}
	segs := segments(t, dir)
	if err := os.Remove(segs[0]); err != nil {
		t.Fatal(err)
	}
	got := collect(t, s)
	if len(got) != 1 || got[0].ID != "evt_0001" || !s.Empty() || s.Bytes() != 0 {
		t.Fatalf("replayed %v, empty=%v bytes=%d", ids(got), s.Empty(), s.Bytes())
	}
}

func Example() {
	dir, _ := os.MkdirTemp("", "spool-example")
	defer os.RemoveAll(dir)

	sp, err := Open(dir, Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sp.Close()
	// Redis did not answer: keep the event on disk.
	_ = sp.Append(rules.Event{ID: "evt_1", Type: "user.created", Data: json.RawMessage(`{"id":"u_1"}`), Mode: rules.ModeLive})
	_ = sp.Append(rules.Event{ID: "evt_2", Type: "user.deleted", Data: json.RawMessage(`{"id":"u_1"}`), Mode: rules.ModeLive})

	// Redis is back: hand the events over, oldest first.
	n, err := sp.Replay(context.Background(), func(_ context.Context, ev rules.Event) error {
		fmt.Println("queue", ev.ID, ev.Type)
		return nil // an error would keep the segment for the next Replay
	})
	fmt.Println(n, err, sp.Empty())
	// Output:
	// queue evt_1 user.created
	// queue evt_2 user.deleted
	// 2 <nil> true
}

// ReplayBatch hands records in order, in batches of at most the size asked
// for and never across segments; a batch that is accepted only in part keeps
// its segment, whose records all come again on the next replay.
func TestReplayBatch(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 10 {
		if err := s.Append(event(i)); err != nil {
			t.Fatal(err)
		}
	}
	var sizes []int
	var ids []string
	failOnce := true
	fn := func(_ context.Context, evs []rules.Event) (int, error) {
		sizes = append(sizes, len(evs))
		for _, ev := range evs {
			ids = append(ids, ev.ID)
		}
		if failOnce && len(sizes) == 2 {
			failOnce = false
			return 2, errors.New("redis went away")
		}
		return len(evs), nil
	}
	n, err := s.ReplayBatch(context.Background(), 3, fn)
	if err == nil || n != 5 || fmt.Sprint(sizes) != "[3 3]" {
		t.Fatalf("first ReplayBatch = %d, %v; batches %v", n, err, sizes)
	}
	if s.Empty() {
		t.Fatal("a partly accepted segment was removed")
	}
	sizes, ids = nil, nil
	n, err = s.ReplayBatch(context.Background(), 3, fn)
	if err != nil || n != 10 || fmt.Sprint(sizes) != "[3 3 3 1]" {
		t.Fatalf("second ReplayBatch = %d, %v; batches %v", n, err, sizes)
	}
	for i, id := range ids {
		if id != event(i).ID {
			t.Fatalf("record %d is %s, want %s (in order)", i, id, event(i).ID)
		}
	}
	if !s.Empty() {
		t.Fatal("spool not empty after a full replay")
	}

	// A batch never spans segments, and hostile sizes mean 1; an fn that
	// claims more than it was given counts only what it was given.
	s2, err := Open(t.TempDir(), Options{SegmentBytes: 300})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for i := range 6 {
		if err := s2.Append(event(i)); err != nil {
			t.Fatal(err)
		}
	}
	segs := len(segments(t, s2.Dir()))
	sizes = nil
	n, err = s2.ReplayBatch(context.Background(), MaxReplayBatch+1, func(_ context.Context, evs []rules.Event) (int, error) {
		sizes = append(sizes, len(evs))
		return len(evs) + 100, nil
	})
	if err != nil || n != 6 || len(sizes) != 6 {
		t.Fatalf("ReplayBatch(MaxReplayBatch+1) = %d, %v; batches %v", n, err, sizes)
	}
	for i := range 4 {
		if err := s2.Append(event(i)); err != nil {
			t.Fatal(err)
		}
	}
	sizes = nil
	if n, err := s2.ReplayBatch(context.Background(), 100, func(_ context.Context, evs []rules.Event) (int, error) {
		sizes = append(sizes, len(evs))
		return len(evs), nil
	}); err != nil || n != 4 || len(sizes) < 2 {
		t.Fatalf("ReplayBatch over %d-record segments = %d, %v; batches %v (want one per segment)", segs, n, err, sizes)
	}
}
