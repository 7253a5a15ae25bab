package rules

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"
)

// EmitOptions are the handler's settings applied to every event.
type EmitOptions struct {
	// Source names the origin (the handler's `source`); default "authtap".
	Source string
	// Mode is "live" (default) or "test"; a rule's emit.mode overrides it.
	Mode string
	// Now is the observation time. When it is zero, the time is read once
	// per exchange, at its first Events call, and kept: every event of the
	// exchange, and of each sub-exchange of a batch envelope (Match.Batch),
	// carries the same timestamp.
	Now time.Time
	// Unchanged, when set, is called with the rule name and the event type
	// of each event not built because its emit's previous found that nothing
	// changed and says skip_unchanged. Such an event is neither built nor an
	// error.
	Unchanged func(rule, typ string)
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
	// Before says the lookup runs before the request is forwarded (when:
	// before); see Set.MatchBefore.
	Before bool
	// Header holds the request headers to send the lookup with: the
	// caller's Authorization and Cookie (for an after-lookup, the cookies the
	// client holds once the response's Set-Cookie lines are applied), then
	// the rule's lookup.header values, each replacing the header of its
	// name. Header values are credentials: never log them.
	Header http.Header
	// HeaderMissing lists placeholders of lookup.header values that did not
	// render (the header is left out of Header). Copy it into the result's
	// Missing before SetLookup, so the events list it in source.missing.
	HeaderMissing []string
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
	var missing, headerMissing []string
	p := lk.get.renderURL(ex, m.Params, &missing)
	h := lk.requestHeader(ex, m.Params, &headerMissing)
	return LookupRequest{As: lk.as, Path: p, Timeout: lk.timeout, Missing: missing,
		Before: lk.before, Header: h, HeaderMissing: headerMissing}
}

// NumLookups returns how many lookups the rule declares.
func (m *Match) NumLookups() int { return len(m.Rule.lookups) }

// EmitError is a problem building one event at run time (the rule itself
// is valid). The event was not built. Its message never carries a whole
// request or response value: rendered values are cut by QuoteCut.
type EmitError struct {
	// Rule is the name of the rule.
	Rule string
	// Reason is one of the fixed Refused* values: safe as a metric label.
	Reason string
	// Msg says what went wrong.
	Msg string
	// Count is how many events the error stands for (0 means one): the
	// elements past MaxEachItems, or the sub-requests past MaxBatchOps.
	Count int
}

// Events returns how many events the error stands for (at least one).
func (e *EmitError) Events() int { return max(1, e.Count) }

func (e *EmitError) Error() string { return fmt.Sprintf("rule %q: %s", e.Rule, e.Msg) }

// Reasons an event is refused at run time (EmitError.Reason).
const (
	// RefusedUndeclared: a templated type rendered to a valid name that its
	// emit.types does not list.
	RefusedUndeclared = "undeclared_type"
	// RefusedInvalid: a templated type rendered to something that is not a
	// dot-separated event name (empty, say, or with spaces).
	RefusedInvalid = "invalid_type"
	// RefusedTooLong: a templated type rendered to more than MaxEventTypeLen bytes.
	RefusedTooLong = "type_too_long"
	// RefusedTooManyItems: an emit's each found more elements than the
	// exchange may still turn into events (MaxEachItems).
	RefusedTooManyItems = "too_many_items"
	// RefusedTooManyOps: a batch envelope holds more sub-requests than
	// MaxBatchOps; the rest are not matched.
	RefusedTooManyOps = "too_many_operations"
)

// MaxQuotedValue is how many bytes of a rendered value an error message or
// log line shows (QuoteCut).
const MaxQuotedValue = 64

// QuoteCut renders a value taken from a request or response for an error
// message or a log line: at most MaxQuotedValue bytes of it, %q-escaped,
// followed by "…(N bytes)" when it was cut.
func QuoteCut(v string) string {
	if len(v) <= MaxQuotedValue {
		return strconv.Quote(v)
	}
	return strconv.Quote(runePrefix(v, MaxQuotedValue)) + cutNote(v)
}

// runePrefix is at most max bytes of s, cut where a character starts so that
// none is split in two.
func runePrefix(s string, max int) string {
	if len(s) <= max {
		return s
	}
	for max > 0 && !utf8.RuneStart(s[max]) {
		max--
	}
	return s[:max]
}

// cutNote follows a value cut short: "…(N bytes)", N its whole length.
func cutNote(s string) string { return "…(" + strconv.Itoa(len(s)) + " bytes)" }

// renderType renders the emit's type and checks it: a constant type is
// fixed at parse time; a templated one must render to a name its
// emit.types lists.
func (e *emitSpec) renderType(rule string, ex *Exchange, params []Param) (string, *EmitError) {
	if len(e.typ.phs) == 0 {
		return e.typ.raw, nil
	}
	typ := e.typ.renderText(ex, params, nil)
	refuse := func(reason, format string, args ...any) (string, *EmitError) {
		return "", &EmitError{Rule: rule, Reason: reason, Msg: fmt.Sprintf("event type %q ", e.typ.raw) + fmt.Sprintf(format, args...) + "; no event built"}
	}
	switch {
	case len(typ) > MaxEventTypeLen:
		return refuse(RefusedTooLong, "rendered to %d bytes (%s), more than %d (rules.MaxEventTypeLen)", len(typ), QuoteCut(typ), MaxEventTypeLen)
	case !validEventType(typ):
		return refuse(RefusedInvalid, "rendered to %s, which is not a dot-separated event name", QuoteCut(typ))
	case !e.types[typ]:
		return refuse(RefusedUndeclared, "rendered to %s, which its types list does not declare", QuoteCut(typ))
	}
	return typ, nil
}

// Events builds the events of the match. An event that cannot be built (e.g.
// its templated type renders empty) is skipped with an *EmitError; the others
// are still returned. An emit with each builds one event per element of its
// list; a batch rule builds none (see Batch).
func (m *Match) Events(ex *Exchange, o EmitOptions) ([]Event, []error) {
	if o.Source == "" {
		o.Source = "authtap"
	}
	if o.Mode == "" {
		o.Mode = ModeLive
	}
	if o.Now.IsZero() {
		o.Now = ex.root().observed()
	}
	ts := o.Now.UTC().Truncate(time.Millisecond)
	if m.Rule.hasEach {
		return m.eachEvents(ex, o, ts)
	}
	arena := eventArenaOf(ex)
	var events []Event
	var errs []error
	for _, e := range m.Rule.emits {
		ev, ok, err := m.buildEvent(e, ex, o, ts, arena)
		if events == nil && ok {
			events = arena.eventSlots(len(m.Rule.emits)) // no regrowing for a rule of several emits
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			events = append(events, ev)
		}
	}
	return events, errs
}

// buildEvent builds the event of one emit (for the element ex.elem, if any).
// It reports false, with no error, when the emit's previous found that nothing
// changed and says skip_unchanged: no event, and o.Unchanged told.
func (m *Match) buildEvent(e *emitSpec, ex *Exchange, o EmitOptions, ts time.Time, arena *eventArena) (Event, bool, error) {
	typ, terr := e.renderType(m.Rule.Name, ex, m.Params)
	if terr != nil {
		return Event{}, false, terr
	}
	ev := Event{Type: typ, Timestamp: ts, Mode: o.Mode, Source: Source{Name: o.Source, Rule: m.Rule.Name}}
	if e.mode != "" {
		ev.Mode = e.mode
	}
	rc := &renderCtx{ex: ex, params: m.Params, policy: e.policy}
	missing := &rc.missing // in rc, which stays on the stack: nothing allocated unless a value is missing
	ev.Subject = rc.renderText(e.subject, nil)
	if e.tenant != nil {
		if t := rc.renderText(e.tenant, nil); t != "" {
			if ValidTenant(t) == nil {
				ev.Tenant = t
			} else {
				*missing = append(*missing, TenantMissing)
			}
		}
	}
	reserve := eventIDLen // for a random id, in the data's allocation
	if e.dedupeKey != nil {
		reserve = 0 // most likely a dedupe id, allocated by DedupeEventID
	}
	var idSpace []byte
	ev.Data, idSpace = e.renderData(rc, reserve, arena)
	if n := int64(len(ev.Data)); n > e.dataSize.Load() && n <= maxDataSizeHint {
		e.dataSize.Store(n)
	}
	ev.dataCompact = true
	if e.previous != nil {
		prev, known := e.previous.build(e, ex, m.Params, missing, &rc.notes, max(256, len(ev.Data)))
		if known && prev == nil && e.previous.skipUnchanged {
			if o.Unchanged != nil {
				o.Unchanged(m.Rule.Name, typ)
			}
			return Event{}, false, nil
		}
		ev.Previous, ev.previousCompact = prev, true
	}
	ev.Source.Truncated = rc.notes.truncation()
	if e.dedupeKey != nil {
		if key := e.dedupeKey.renderText(ex, m.Params, nil); key != "" {
			ev.ID = DedupeEventID(o.Source, m.Rule.Name, key+"\x00"+resultDigest(&ev, ex)+ordinal(ex))
			ev.DedupeWindow = e.dedupeWin
		}
	}
	if ev.ID == "" {
		ev.ID = newEventIDIn(idSpace, o.Now)
	}
	for _, as := range e.lookups {
		for _, u := range ex.Lookups[as].Missing {
			addMissing(missing, u)
		}
	}
	ev.Source.Missing = *missing
	return ev, true, nil
}

// ordinal tells apart, in a dedupe id, the events that one rule builds for
// the sub-exchanges of a batch or the elements of an each: two identical
// elements are two events, and a retried request gives the same ids again.
// It is empty for an exchange of its own without each, whose ids stay as
// they were.
func ordinal(ex *Exchange) string {
	if ex.parent == nil && ex.elem == nil {
		return ""
	}
	s := "\x00"
	if ex.parent != nil {
		s += "b" + strconv.Itoa(int(ex.subIndex))
	}
	if ex.elem != nil {
		s += "e" + ex.elem.ordinal()
	}
	return s
}

// eachEvents is Events for a rule with an emit with each. Emits whose each
// reads the same list give their events in the list's order (an add and a
// remove operation of one PATCH come as the request lists them), at the
// place of the first of them.
func (m *Match) eachEvents(ex *Exchange, o EmitOptions, ts time.Time) ([]Event, []error) {
	// the events in the order they were built, and where each goes: at the
	// place of its emit (plain) or of its each's group, a group's events by
	// their element's place in the list
	type place struct{ at, each, pos, sub, built int }
	var builtBuf [4]Event
	var placesBuf [8]place
	built, places := builtBuf[:0], placesBuf[:0]
	var errs []error
	arena := eventArenaOf(ex)
	root := ex.root()
	prev := ex.elem
	defer func() { ex.elem = prev }()
	var list value // the list of the each group listGroup
	listGroup := -1
	for i, e := range m.Rule.emits {
		if e.each == nil {
			ex.elem = prev
			if ev, ok, err := m.buildEvent(e, ex, o, ts, arena); err != nil {
				errs = append(errs, err)
			} else if ok {
				built, places = append(built, ev), append(places, place{at: i, built: len(built)})
			}
			continue
		}
		refused := 0
		if e.each.group != listGroup {
			// emits of one group read the same list: resolved once for them
			list, listGroup = e.each.items.resolve(ex, m.Params), e.each.group
		}
		e.each.forEach(list, func(el *elemCtx) bool {
			if root.eachBuilt >= MaxEachItems {
				refused++ // counted, not built
				return true
			}
			root.eachBuilt++
			ex.elem = el
			ev, ok, err := m.buildEvent(e, ex, o, ts, arena)
			ex.elem = prev
			if err != nil {
				errs = append(errs, err)
				return true
			}
			if !ok {
				return true
			}
			built, places = append(built, ev), append(places, place{at: e.each.group, each: 1, pos: el.pos, sub: el.sub, built: len(built)})
			return true
		})
		if refused > 0 {
			errs = append(errs, &EmitError{Rule: m.Rule.Name, Reason: RefusedTooManyItems, Count: refused,
				Msg: fmt.Sprintf("%s: %d more elements than the %d events each may build for one exchange (rules.MaxEachItems); they emit nothing", e.path, refused, MaxEachItems)})
		}
	}
	if len(built) == 0 {
		return nil, errs
	}
	slices.SortStableFunc(places, func(pa, pb place) int {
		switch {
		case pa.at != pb.at:
			return pa.at - pb.at
		case pa.each != pb.each:
			return pa.each - pb.each // an emit's own event before the group placed there
		case pa.pos != pb.pos:
			return pa.pos - pb.pos
		}
		return pa.sub - pb.sub
	})
	events := arena.eventSlots(len(built))
	for _, p := range places {
		events = append(events, built[p.built])
	}
	return events, errs
}

// resultDigest sums up what an exchange produced, for the dedupe id: the
// event's type, subject and data, the response status and the response body
// (when it was captured). A client retrying a request with the same dedupe
// key and getting the same answer gets the same id; two requests that share
// a key but created different things (another user id in the response, other
// data) get different ids, so neither event is dropped as a duplicate. It is
// hex, of fixed length, so "key\x00digest" is unambiguous.
func resultDigest(ev *Event, ex *Exchange) string {
	h := sha256.New()
	var n [8]byte
	field := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field([]byte(ev.Type))
	field([]byte(ev.Subject))
	if ev.Tenant != "" {
		field([]byte(ev.Tenant)) // only when set, so ids of rules without a tenant stay as they were
	}
	field(ev.Data)
	binary.BigEndian.PutUint64(n[:], uint64(ex.Status))
	h.Write(n[:])
	if ex.ResponseBody != nil {
		h.Write([]byte{1})
		field(ex.ResponseBody)
	} else {
		h.Write([]byte{0}) // not captured (larger than max_body): the data stands in for it
	}
	return hex.EncodeToString(h.Sum(nil))
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
		if m.IsBatch() {
			b, err := m.Batch(ex)
			if err != nil {
				errs = append(errs, err)
			}
			for _, sub := range b.Subs {
				for _, sm := range s.Match(sub) {
					ev, er := sm.Events(sub, o)
					events = append(events, ev...)
					errs = append(errs, er...)
				}
			}
			continue
		}
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
