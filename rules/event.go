package rules

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"time"
)

// Event modes.
const (
	ModeLive = "live"
	ModeTest = "test"
)

// Event is one typed event built from an HTTP exchange. Its JSON form is the
// envelope delivered to subscribers: the Standard Webhooks envelope (type,
// timestamp, data) plus id, source and mode.
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
	// Data is the event payload, a JSON value.
	Data json.RawMessage `json:"data"`
	// Source says where the event came from.
	Source Source `json:"source"`
	// Mode is "live" or "test".
	Mode string `json:"mode"`

	// DedupeWindow is how long the id is remembered for deduplication; zero when the rule sets no dedupe key.
	DedupeWindow time.Duration `json:"-"`
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
}

// eventJSON is the wire form; the timestamp is rendered with exactly three fractional digits.
type eventJSON struct {
	ID        string          `json:"id"`
	Type      string          `json:"type"`
	Timestamp string          `json:"timestamp"`
	Subject   string          `json:"subject,omitempty"`
	Data      json.RawMessage `json:"data"`
	Source    Source          `json:"source"`
	Mode      string          `json:"mode"`
	Dedupe    string          `json:"dedupe_window,omitempty"`
}

// TimestampFormat is the layout of Event.Timestamp on the wire.
const TimestampFormat = "2006-01-02T15:04:05.000Z07:00"

// MarshalJSON renders the event envelope.
func (e Event) MarshalJSON() ([]byte, error) {
	data := e.Data
	if len(data) == 0 {
		data = json.RawMessage("null")
	}
	w := eventJSON{
		ID: e.ID, Type: e.Type, Timestamp: e.Timestamp.UTC().Format(TimestampFormat),
		Subject: e.Subject, Data: data, Source: e.Source, Mode: e.Mode,
	}
	if e.DedupeWindow > 0 {
		w.Dedupe = e.DedupeWindow.String()
	}
	return json.Marshal(w)
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
	*e = Event{ID: w.ID, Type: w.Type, Timestamp: ts, Subject: w.Subject, Data: w.Data, Source: w.Source, Mode: w.Mode}
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
// so ids sort by time.
func NewEventID(t time.Time) string {
	var b [16]byte
	ms := uint64(t.UnixMilli())
	binary.BigEndian.PutUint64(b[:8], ms<<16)
	_, _ = rand.Read(b[6:])
	return "evt_" + encodeULID(b)
}

// DedupeEventID returns the id shared by every event of one rule, source and dedupe key.
func DedupeEventID(source, rule, key string) string {
	h := sha256.Sum256([]byte(source + "\x00" + rule + "\x00" + key))
	var b [16]byte
	copy(b[:], h[:16])
	return "evt_" + encodeULID(b)
}

// encodeULID renders 128 bits as 26 Crockford base32 characters (two leading zero bits), as ULID does.
func encodeULID(b [16]byte) string {
	hi := binary.BigEndian.Uint64(b[:8])
	lo := binary.BigEndian.Uint64(b[8:])
	var out [26]byte
	for i := 25; i >= 0; i-- {
		out[i] = crockfordAlphabet[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}

const crockfordAlphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
