package rules

// eventArena hands out the Event slots and the data bytes of the events a
// batch envelope's sub-exchanges build, from chunks that double in size up
// to a cap: a batch of 50 operations costs a dozen allocations for its
// events instead of two per event. It lives on the envelope (its
// exchangeMemo), so its chunks are freed with the envelope's events.
//
// What it hands out is capped at its length: appending to it copies
// instead of writing over a neighbour, and nothing it handed out is handed
// out again. A chunk stays alive while any event in it does; the events of
// one envelope are queued together, and a chunk is at most a few KiB.
type eventArena struct {
	slots []Event // the current chunk of slots; len is what is handed out
	bytes []byte  // the current chunk of bytes; len is what is handed out
}

const (
	// maxArenaSlots is the most Event slots in one chunk (32 × 232 bytes).
	maxArenaSlots = 32
	// maxArenaBytes is the largest chunk of bytes; a need of more than a
	// quarter of it gets an allocation of its own.
	maxArenaBytes = 8 << 10
)

// eventSlots returns room for n events: a slice of length 0 and capacity n
// (an allocation of its own from a nil arena).
func (a *eventArena) eventSlots(n int) []Event {
	if a == nil {
		return make([]Event, 0, n)
	}
	if cap(a.slots)-len(a.slots) < n {
		size := max(min(2*cap(a.slots), maxArenaSlots), 2, n)
		a.slots = make([]Event, 0, size)
	}
	at := len(a.slots)
	a.slots = a.slots[:at+n]
	return a.slots[at : at : at+n]
}

// alloc returns n zeroed bytes (an allocation of their own from a nil
// arena, or when n is large).
func (a *eventArena) alloc(n int) []byte {
	if a == nil || n > maxArenaBytes/4 {
		return make([]byte, n)
	}
	if cap(a.bytes)-len(a.bytes) < n {
		size := max(min(2*cap(a.bytes), maxArenaBytes), 512)
		a.bytes = make([]byte, 0, size)
	}
	at := len(a.bytes)
	a.bytes = a.bytes[:at+n]
	return a.bytes[at : at+n : at+n]
}

// eventArenaOf returns the arena for the events of ex: its envelope's when
// ex is a sub-exchange of a batch, nil (allocate as usual) otherwise.
func eventArenaOf(ex *Exchange) *eventArena {
	if ex.parent == nil {
		return nil
	}
	return &ex.root().memoOf().events
}
