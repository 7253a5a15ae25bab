package rules

import (
	"fmt"
	"time"
)

// EmitOptions are the handler's settings applied to every event.
type EmitOptions struct {
	// Source names the origin (the handler's `source`); default "authtap".
	Source string
	// Mode is "live" (default) or "test"; a rule's emit.mode overrides it.
	Mode string
	// Now is the observation time; default time.Now().
	Now time.Time
}

// LookupRequest is one lookup to run against the upstream for a match.
type LookupRequest struct {
	// As is the name the result is stored under (Exchange.SetLookup).
	As string
	// Path is the rendered path and query to GET on the upstream; placeholder
	// values are escaped as path segments or query values.
	Path string
	// Timeout bounds the lookup.
	Timeout time.Duration
	// Missing lists placeholders of the path that resolved to nothing; when
	// non-empty the lookup should not be sent (its result would be wrong).
	Missing []string
}

// Lookups returns the rule's lookups in order, rendered against the exchange.
// A lookup's path may use earlier lookups' results, so run them in order and
// call Lookup(i, ex) again after each SetLookup if you rely on that.
func (m *Match) Lookups(ex *Exchange) []LookupRequest {
	out := make([]LookupRequest, 0, len(m.Rule.lookups))
	for i := range m.Rule.lookups {
		out = append(out, m.Lookup(i, ex))
	}
	return out
}

// Lookup renders the i-th lookup of the rule against the exchange.
func (m *Match) Lookup(i int, ex *Exchange) LookupRequest {
	lk := m.Rule.lookups[i]
	var missing []string
	p := lk.get.renderURL(ex, m.Params, &missing)
	return LookupRequest{As: lk.as, Path: p, Timeout: lk.timeout, Missing: missing}
}

// NumLookups returns how many lookups the rule declares.
func (m *Match) NumLookups() int { return len(m.Rule.lookups) }

// EmitError is a problem building one event at run time (the rule itself is valid).
type EmitError struct {
	Rule string
	Msg  string
}

func (e *EmitError) Error() string { return fmt.Sprintf("rule %q: %s", e.Rule, e.Msg) }

// Events builds the events of the match. An event that cannot be built (e.g.
// its templated type renders empty) is skipped with an *EmitError; the others
// are still returned.
func (m *Match) Events(ex *Exchange, o EmitOptions) ([]Event, []error) {
	if o.Source == "" {
		o.Source = "authtap"
	}
	if o.Mode == "" {
		o.Mode = ModeLive
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	ts := o.Now.UTC().Truncate(time.Millisecond)
	var events []Event
	var errs []error
	for _, e := range m.Rule.emits {
		var missing []string
		typ := e.typ.renderText(ex, m.Params, nil)
		if !validEventType(typ) {
			errs = append(errs, &EmitError{Rule: m.Rule.Name, Msg: fmt.Sprintf("event type %q rendered to %q, which is not a dot-separated event name", e.typ.raw, typ)})
			continue
		}
		ev := Event{Type: typ, Timestamp: ts, Mode: o.Mode, Source: Source{Name: o.Source, Rule: m.Rule.Name}}
		if e.mode != "" {
			ev.Mode = e.mode
		}
		rc := &renderCtx{ex: ex, params: m.Params, missing: &missing, policy: e.policy}
		ev.Subject = rc.renderText(e.subject, nil)
		ev.Data = e.data.render(make([]byte, 0, max(256, e.dataSize.Load())), rc, make([]string, 0, 8), 0)
		ev.Source.Truncated = rc.notes.truncation()
		if n := int64(len(ev.Data)); n > e.dataSize.Load() && n <= maxDataSizeHint {
			e.dataSize.Store(n)
		}
		ev.dataCompact = true
		if e.dedupeKey != nil {
			if key := e.dedupeKey.renderText(ex, m.Params, nil); key != "" {
				ev.ID = DedupeEventID(o.Source, m.Rule.Name, key)
				ev.DedupeWindow = e.dedupeWin
			}
		}
		if ev.ID == "" {
			ev.ID = NewEventID(o.Now)
		}
		ev.Source.Missing = missing
		events = append(events, ev)
	}
	return events, errs
}

// maxDataSizeHint caps the starting size of a data buffer: one huge event must
// not make every later one allocate as much.
const maxDataSizeHint = 16 << 10

// Evaluate matches the exchange and builds every event, using whatever lookup
// results the exchange already holds. It is what `authtap rules test` and the
// inline tests run; the Caddy handler runs lookups between Match and Events.
func (s *Set) Evaluate(ex *Exchange, o EmitOptions) ([]Event, []error) {
	var events []Event
	var errs []error
	for _, m := range s.Match(ex) {
		ev, er := m.Events(ex, o)
		events = append(events, ev...)
		errs = append(errs, er...)
	}
	return events, errs
}

// validEventType reports whether s is a dot-separated name of letters, digits,
// '_' and '-' (what eventTypeRE says, without a regexp on the hot path).
func validEventType(s string) bool {
	if s == "" {
		return false
	}
	seg := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '.':
			if seg == 0 {
				return false
			}
			seg = 0
		case c == '_' || c == '-' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9':
			seg++
		default:
			return false
		}
	}
	return seg > 0
}
