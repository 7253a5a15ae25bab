package rules

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"sync"
	"time"
	"unsafe"
)

// Event modes.
const (
	ModeLive = "live"
	ModeTest = "test"
)

// Event is one typed event built from an HTTP exchange. Its JSON form is the
// envelope delivered to subscribers: the Standard Webhooks envelope (type,
// timestamp, data) plus id, source and mode, and the optional subject,
// tenant and previous.
type Event struct {
	// ID is "evt_" followed by a 26-character ULID (time-ordered), or, when the
	// rule sets a dedupe key, by a hash of the rule, source and key so that a
	// retried client request yields the same id.
	ID string `json:"id"`
	// Type is the dot-separated event name, e.g. "user.created".
	Type string `json:"type"`
	// Timestamp is when the exchange was observed, in UTC with milliseconds.
	Timestamp time.Time `json:"timestamp"`
	// Subject names the thing the event is about (e.g. the user id); empty when the rule sets none.
	Subject string `json:"subject,omitempty"`
	// Tenant is whose customer the event belongs to (emit.tenant, a valid
	// tenant id, see ValidTenant); empty for operator-only events, which only
	// endpoints without a tenant receive.
	Tenant string `json:"tenant,omitempty"`
	// Data is the event payload, a JSON value.
	Data json.RawMessage `json:"data"`
	// Previous holds the old values of the fields an update changed (the
	// rule's emit.previous): a JSON object, like Stripe's
	// data.previous_attributes; nil when the rule asks for none, when nothing
	// changed, or when the state before is unknown (then source.missing
	// says why).
	Previous json.RawMessage `json:"previous,omitempty"`
	// Source says where the event came from.
	Source Source `json:"source"`
	// Mode is "live" or "test".
	Mode string `json:"mode"`

	// DedupeWindow is how long the id is remembered for deduplication; zero when the rule sets no dedupe key.
	DedupeWindow time.Duration `json:"-"`

	// dataCompact says Data is compact, valid JSON as the data renderer
	// writes it, so encoding the envelope need not scan it again.
	dataCompact bool
	// previousCompact says the same of Previous.
	previousCompact bool
}

// Source names the origin of an event.
type Source struct {
	// Name is the handler's configured source name, e.g. "legacy-auth".
	Name string `json:"name"`
	// Rule is the name of the rule that emitted the event.
	Rule string `json:"rule"`
	// Missing lists the placeholders that resolved to nothing (e.g. a failed lookup),
	// so that a subscriber can tell an incomplete event from a complete one.
	Missing []string `json:"missing,omitempty"`
	// Truncated, when set, says that data was nested deeper than MaxDataDepth
	// and where it was cut; nil when nothing was.
	Truncated *Truncation `json:"truncated,omitempty"`
}

// Truncation says where an event's data was cut short.
type Truncation struct {
	// MaxDepth is the nesting limit the data hit (MaxDataDepth).
	MaxDepth int `json:"max_depth"`
	// Count is how many values were replaced by the string Truncated.
	Count int `json:"count"`
	// Paths are the first MaxTruncatedPaths of them, as dotted paths from the
	// root of data (object keys and array indices), each cut to
	// MaxTruncatedPathLen bytes.
	Paths []string `json:"paths"`
}

// eventJSON is the wire form; the timestamp is rendered with exactly three fractional digits.
type eventJSON struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Timestamp string          `json:"timestamp"`
	Subject   string          `json:"subject,omitempty"`
	Tenant    string          `json:"tenant,omitempty"`
	Data      json.RawMessage `json:"data"`
	Previous  json.RawMessage `json:"previous,omitempty"`
	Source    Source          `json:"source"`
	Mode      string          `json:"mode"`
	Dedupe    string          `json:"dedupe_window,omitempty"`
}

// TimestampFormat is the layout of Event.Timestamp on the wire.
const TimestampFormat = "2006-01-02T15:04:05.000Z07:00"

// MarshalJSON renders the event envelope.
func (e Event) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(make([]byte, 0, len(e.Data)+len(e.Previous)+len(e.ID)+len(e.Type)+len(e.Subject)+len(e.Tenant)+len(e.Source.Name)+len(e.Source.Rule)+120))
}

// AppendJSON appends the event envelope, as MarshalJSON renders it, to b:
// compact JSON, strings quoted as encoding/json quotes them but without
// escaping <, > and &. It runs once per event on the request path, so it
// writes the fields itself instead of going through reflection.
func (e Event) AppendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"id":`...)
	b = appendQuote(b, e.ID)
	b = append(b, `,"type":`...)
	b = appendQuote(b, e.Type)
	b = append(b, `,"timestamp":"`...)
	b = e.Timestamp.UTC().AppendFormat(b, TimestampFormat)
	b = append(b, '"')
	if e.Subject != "" {
		b = append(b, `,"subject":`...)
		b = appendQuote(b, e.Subject)
	}
	if e.Tenant != "" {
		b = append(b, `,"tenant":`...)
		b = appendQuote(b, e.Tenant)
	}
	b = append(b, `,"data":`...)
	switch {
	case len(e.Data) == 0:
		b = append(b, "null"...)
	case e.dataCompact:
		b = append(b, e.Data...)
	default:
		buf := bytes.NewBuffer(b)
		if err := json.Compact(buf, e.Data); err != nil {
			return nil, fmt.Errorf("encoding event %s: its data is not JSON: %w", e.ID, err)
		}
		b = buf.Bytes()
	}
	if len(e.Previous) > 0 {
		b = append(b, `,"previous":`...)
		if e.previousCompact {
			b = append(b, e.Previous...)
		} else {
			buf := bytes.NewBuffer(b)
			if err := json.Compact(buf, e.Previous); err != nil {
				return nil, fmt.Errorf("encoding event %s: its previous is not JSON: %w", e.ID, err)
			}
			b = buf.Bytes()
		}
	}
	b = append(b, `,"source":{"name":`...)
	b = appendQuote(b, e.Source.Name)
	b = append(b, `,"rule":`...)
	b = appendQuote(b, e.Source.Rule)
	if len(e.Source.Missing) > 0 {
		b = append(b, `,"missing":[`...)
		for i, m := range e.Source.Missing {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendQuote(b, m)
		}
		b = append(b, ']')
	}
	if t := e.Source.Truncated; t != nil {
		b = append(b, `,"truncated":{"max_depth":`...)
		b = strconv.AppendInt(b, int64(t.MaxDepth), 10)
		b = append(b, `,"count":`...)
		b = strconv.AppendInt(b, int64(t.Count), 10)
		b = append(b, `,"paths":`...)
		if t.Paths == nil {
			b = append(b, "null"...)
		} else {
			b = append(b, '[')
			for i, p := range t.Paths {
				if i > 0 {
					b = append(b, ',')
				}
				b = appendQuote(b, p)
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	b = append(b, `},"mode":`...)
	b = appendQuote(b, e.Mode)
	if e.DedupeWindow > 0 {
		b = append(b, `,"dedupe_window":"`...)
		b = append(b, e.DedupeWindow.String()...)
		b = append(b, '"')
	}
	return append(b, '}'), nil
}

// UnmarshalJSON reads an event envelope written by MarshalJSON.
func (e *Event) UnmarshalJSON(b []byte) error {
	var w eventJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	ts, err := time.Parse(time.RFC3339Nano, w.Timestamp)
	if err != nil && w.Timestamp != "" {
		return err
	}
	*e = Event{ID: w.ID, Type: w.Type, Timestamp: ts, Subject: w.Subject, Tenant: w.Tenant, Data: w.Data, Previous: w.Previous, Source: w.Source, Mode: w.Mode}
	if string(e.Previous) == "null" {
		e.Previous = nil // omitted when empty, as AppendJSON writes it
	}
	if w.Dedupe != "" {
		if e.DedupeWindow, err = time.ParseDuration(w.Dedupe); err != nil {
			return err
		}
	}
	return nil
}

// Envelope returns the JSON delivered to subscribers that asked for the whole
// envelope: the event without its internal dedupe bookkeeping.
func (e Event) Envelope() ([]byte, error) {
	e.DedupeWindow = 0
	return json.Marshal(e)
}

// NewEventID returns "evt_" plus a ULID for t: 48 bits of milliseconds and 80 random bits,
// so ids sort by time. The random bits come from a ChaCha8 generator (a
// cryptographically strong one) seeded from crypto/rand, one per goroutine
// at a time (idRand): as unguessable as crypto/rand's own, without a call
// into the kernel's random source per event.
func NewEventID(t time.Time) string {
	var out [eventIDLen]byte
	return string(putEventID(out[:], newULID(t)))
}

// newEventIDIn is NewEventID written into space when it has room for it
// (cap at least eventIDLen), without an allocation of its own: renderData
// leaves room past an event's data, so that the two take one. The string
// views space, whose bytes nothing writes again: the event's data is cut at
// its length and capacity, so that no append to it reaches them.
func newEventIDIn(space []byte, t time.Time) string {
	if cap(space) < eventIDLen {
		return NewEventID(t)
	}
	b := putEventID(space[:eventIDLen], newULID(t))
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// newULID returns the 128 bits of a ULID for t (see NewEventID).
func newULID(t time.Time) [16]byte {
	var b [16]byte
	ms := uint64(t.UnixMilli())
	binary.BigEndian.PutUint64(b[:8], ms<<16)
	g := idRand.Get().(*idGen)
	r := g.c.Uint64()
	if g.nspare == 0 {
		g.spare, g.nspare = g.c.Uint64(), 4
	}
	hi := uint16(g.spare)
	g.spare >>= 16
	g.nspare--
	idRand.Put(g)
	binary.BigEndian.PutUint16(b[6:8], hi)
	binary.BigEndian.PutUint64(b[8:], r)
	return b
}

// idGen is one of NewEventID's generators: a ChaCha8 stream and what is
// left of its last draw. An id takes 80 random bits, so one draw of 64 and
// a quarter of another: the 16-bit quarters of a draw serve four ids, each
// handed out once, so every id still takes bits of the stream no other id
// sees.
type idGen struct {
	c      mrand.ChaCha8
	spare  uint64 // the undrawn 16-bit quarters of a draw, low first
	nspare int    // how many of them are left
}

// idRand holds the generators of NewEventID, each seeded with 32 bytes from
// crypto/rand (which never fails: it crashes the program instead).
var idRand = sync.Pool{New: func() any {
	var seed [32]byte
	_, _ = rand.Read(seed[:])
	g := &idGen{}
	g.c.Seed(seed)
	return g
}}

// DedupeEventID returns the id shared by every event of one rule, source and dedupe key.
func DedupeEventID(source, rule, key string) string {
	h := sha256.Sum256([]byte(source + "\x00" + rule + "\x00" + key))
	var b [16]byte
	copy(b[:], h[:16])
	return eventID(b)
}

// eventID renders "evt_" and 128 bits as 26 Crockford base32 characters
// (two leading zero bits), as ULID does, in one allocation.
func eventID(b [16]byte) string {
	var out [eventIDLen]byte
	return string(putEventID(out[:], b))
}

// eventIDLen is the length of an event id: "evt_" and 26 characters.
const eventIDLen = 4 + 26

// putEventID writes the id of b (see eventID) into out, eventIDLen bytes
// long, and returns it. The 26 characters go in pairs (10 bits each, looked
// up in crockfordPairs): the first from b[0], its top 3 bits and 5, then four
// from each of three groups of 40 bits (five bytes), so that no character
// waits on the shifts of those before it.
func putEventID(out []byte, b [16]byte) []byte {
	o := (*[eventIDLen]byte)(out[:eventIDLen])
	copy(o[:4], "evt_")
	v1 := uint64(b[1])<<32 | uint64(binary.BigEndian.Uint32(b[2:6]))
	v2 := uint64(b[6])<<32 | uint64(binary.BigEndian.Uint32(b[7:11]))
	v3 := uint64(b[11])<<32 | uint64(binary.BigEndian.Uint32(b[12:16]))
	p := &crockfordPairs
	*(*[2]byte)(o[4:]) = p[b[0]]
	*(*[2]byte)(o[6:]) = p[v1>>30&1023]
	*(*[2]byte)(o[8:]) = p[v1>>20&1023]
	*(*[2]byte)(o[10:]) = p[v1>>10&1023]
	*(*[2]byte)(o[12:]) = p[v1&1023]
	*(*[2]byte)(o[14:]) = p[v2>>30&1023]
	*(*[2]byte)(o[16:]) = p[v2>>20&1023]
	*(*[2]byte)(o[18:]) = p[v2>>10&1023]
	*(*[2]byte)(o[20:]) = p[v2&1023]
	*(*[2]byte)(o[22:]) = p[v3>>30&1023]
	*(*[2]byte)(o[24:]) = p[v3>>20&1023]
	*(*[2]byte)(o[26:]) = p[v3>>10&1023]
	*(*[2]byte)(o[28:]) = p[v3&1023]
	return o[:]
}

// crockfordPairs holds the two Crockford base32 characters of every 10-bit value.
var crockfordPairs = func() (t [1024][2]byte) {
	for i := range t {
		t[i] = [2]byte{crockfordAlphabet[i>>5], crockfordAlphabet[i&31]}
	}
	return t
}()

const crockfordAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
