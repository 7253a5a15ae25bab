package rules

import (
	"bytes"
	"testing"
)

// TestBatchEventsArena: the events of a batch's sub-exchanges share the
// envelope's arena, yet each is its own: appending to one's data or to
// the slice Events returned writes over no other event, and every event
// encodes as it did when it was built.
func TestBatchEventsArena(t *testing.T) {
	s, envelope, _ := benchBatch(t)
	ex := envelope()
	b, err := s.Match(ex)[0].Batch(ex)
	if err != nil {
		t.Fatal(err)
	}
	var all [][]Event
	var enc [][]byte
	for _, sub := range b.Subs {
		for _, m := range s.Match(sub) {
			evs, errs := m.Events(sub, EmitOptions{Source: "test"})
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			all = append(all, evs)
			for _, ev := range evs {
				j, _ := ev.MarshalJSON()
				enc = append(enc, j)
			}
		}
	}
	if len(enc) != 55 {
		t.Fatalf("%d events, want 55", len(enc))
	}
	seen := map[string]bool{}
	for i, evs := range all {
		for j := range evs {
			if seen[evs[j].ID] {
				t.Fatalf("id %s twice", evs[j].ID)
			}
			seen[evs[j].ID] = true
			if cap(evs[j].Data) != len(evs[j].Data) {
				t.Fatalf("event data has room past its end (%d > %d): an append would write over the next", cap(evs[j].Data), len(evs[j].Data))
			}
			evs[j].Data = append(evs[j].Data, bytes.Repeat([]byte("X"), 64)...)
		}
		if cap(evs) != len(evs) {
			t.Fatalf("events slice %d has room past its end (%d > %d)", i, cap(evs), len(evs))
		}
		all[i] = append(evs, Event{ID: "evt_overwritten", Data: []byte(`"x"`)})
	}
	k := 0
	for _, evs := range all {
		for _, ev := range evs[:len(evs)-1] {
			ev.Data = ev.Data[:len(ev.Data)-64]
			if j, _ := ev.MarshalJSON(); !bytes.Equal(j, enc[k]) {
				t.Fatalf("event %d changed after the others were appended to:\n%s\nwas\n%s", k, j, enc[k])
			}
			k++
		}
	}
}

// TestEventArenaBounds: chunks double up to their caps, a large need gets
// an allocation of its own, and nothing is handed out twice.
func TestEventArenaBounds(t *testing.T) {
	var a eventArena
	var got [][]byte
	for i := 0; i < 500; i++ {
		b := a.alloc(i%97 + 1)
		if len(b) != i%97+1 || cap(b) != len(b) {
			t.Fatalf("alloc(%d): len %d cap %d", i%97+1, len(b), cap(b))
		}
		for j := range b {
			b[j] = byte(i)
		}
		got = append(got, b)
	}
	for i, b := range got {
		for _, c := range b {
			if c != byte(i) {
				t.Fatalf("bytes %d were handed out twice", i)
			}
		}
	}
	if cap(a.bytes) > maxArenaBytes {
		t.Fatalf("a chunk of %d bytes, more than %d", cap(a.bytes), maxArenaBytes)
	}
	if big := a.alloc(maxArenaBytes); len(big) != maxArenaBytes || cap(a.bytes) > maxArenaBytes {
		t.Fatal("a large need must be its own allocation")
	}
	for i := 0; i < 200; i++ {
		if s := a.eventSlots(3); len(s) != 0 || cap(s) != 3 {
			t.Fatalf("eventSlots(3): len %d cap %d", len(s), cap(s))
		}
	}
	if cap(a.slots) > maxArenaSlots {
		t.Fatalf("a chunk of %d slots, more than %d", cap(a.slots), maxArenaSlots)
	}
	if s := a.eventSlots(100); cap(s) != 100 {
		t.Fatalf("eventSlots(100): cap %d", cap(s))
	}
}
