package rules

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// Limits of the event catalog (Set.EventTypes). The examples are built from
// the rule files' inline tests, which an attacker who can write a rule file
// controls, and are served to every subscriber, so both their number and
// their size are bounded.
const (
	// MaxExamplesPerType is how many example events the catalog keeps per
	// event type: those of the first tests, in file order, that produce the
	// type (identical examples count once).
	MaxExamplesPerType = 3
	// MaxExampleSize is the largest example, in bytes of its JSON envelope;
	// a larger one is left out of the catalog (the test still runs).
	MaxExampleSize = 16 << 10
)

// Placeholders of an example event, so that the catalog is the same on every
// load: the id (a ULID of time zero), the timestamp and the source name.
const (
	ExampleEventID = "evt_00000000000000000000000000"
	ExampleSource  = "example"
)

// ExampleTime is the timestamp of every example event (and of the inline tests).
var ExampleTime = testNow

// EventType describes one event type the loaded rules can emit, with what a
// subscriber to it receives.
type EventType struct {
	// Type is the event type, or a templated type as written.
	Type string `json:"type"`
	// Templated says Type has placeholders; Types then lists the types it
	// may render to (its emit.types), sorted.
	Templated bool     `json:"templated,omitempty"`
	Types     []string `json:"types,omitempty"`
	// Description is the emit's description, or else its rule's: that of
	// the first rule, in file order, that has one. Empty when none has.
	Description string `json:"description,omitempty"`
	// Rules names the rules that emit it.
	Rules []string `json:"rules"`
	// Examples are event envelopes, exactly as delivered, that the rules
	// build for their inline tests' exchanges, redacted as live events are,
	// with ExampleEventID, ExampleTime and ExampleSource in place of the
	// id, timestamp and source name: at most MaxExamplesPerType, each at
	// most MaxExampleSize bytes. For a templated type they are those of the
	// types it renders to. Callers must not modify them.
	Examples []json.RawMessage `json:"examples,omitempty"`
}

type catalogCache struct {
	once  sync.Once
	types []EventType
}

// EventTypes returns the event catalog: the distinct event types the rules
// emit, sorted, each with its description and examples. A templated type
// appears as written (e.g. "user.{request.body.action}"), with Templated set
// and Types listing what it may render to; each of those declared types is
// listed as a type of its own too, since it is what a subscriber receives.
// It is built once per Set, on first use (running the inline tests once);
// each call returns fresh slices.
func (s *Set) EventTypes() []EventType {
	s.catalog.once.Do(func() { s.catalog.types = s.buildCatalog() })
	out := make([]EventType, len(s.catalog.types))
	for i, et := range s.catalog.types {
		out[i] = et.clone()
	}
	return out
}

func (et EventType) clone() EventType {
	et.Types = slices.Clone(et.Types)
	et.Rules = slices.Clone(et.Rules)
	et.Examples = slices.Clone(et.Examples)
	return et
}

func (s *Set) buildCatalog() []EventType {
	byType := map[string]*EventType{}
	add := func(typ, rule, desc string) *EventType {
		et := byType[typ]
		if et == nil {
			et = &EventType{Type: typ}
			byType[typ] = et
		}
		if !slices.Contains(et.Rules, rule) {
			et.Rules = append(et.Rules, rule)
		}
		if et.Description == "" {
			et.Description = desc
		}
		return et
	}
	for _, r := range s.rules {
		for _, e := range r.emits {
			desc := e.description
			if desc == "" {
				desc = r.Description
			}
			et := add(e.typ.raw, r.Name, desc)
			if len(e.typ.phs) == 0 {
				continue
			}
			et.Templated = true
			for _, t := range e.typeList {
				if !slices.Contains(et.Types, t) {
					et.Types = append(et.Types, t)
				}
				add(t, r.Name, desc)
			}
		}
	}
	s.addExamples(byType)
	out := make([]EventType, 0, len(byType))
	for _, k := range sortedKeys(byType) {
		et := byType[k]
		slices.Sort(et.Types)
		out = append(out, *et)
	}
	return out
}

// example is one rendered example event, with the rule that built it.
type example struct {
	rule string
	body json.RawMessage
}

// addExamples runs the inline tests, in file order, and gives each
// constant type the first MaxExamplesPerType distinct events of that type
// that fit MaxExampleSize, and each templated type those of the types it
// renders to that its own rules built. It stops running tests once every
// type is full.
func (s *Set) addExamples(byType map[string]*EventType) {
	byRendered := map[string][]example{}
	open := 0 // constant types still short of examples
	for _, et := range byType {
		if !et.Templated {
			open++
		}
	}
	for _, f := range s.files {
		for _, t := range f.tests {
			if open == 0 {
				break
			}
			ex := t.ex // copy: lazily parsed state must not leak between runs
			events, _ := s.Evaluate(&ex, EmitOptions{Source: ExampleSource, Now: ExampleTime})
			for _, ev := range events {
				have := byRendered[ev.Type]
				if len(have) >= MaxExamplesPerType {
					continue
				}
				body, ok := exampleJSON(ev)
				if !ok || slices.ContainsFunc(have, func(e example) bool { return bytes.Equal(e.body, body) }) {
					continue
				}
				byRendered[ev.Type] = append(have, example{rule: ev.Source.Rule, body: body})
				if len(have)+1 == MaxExamplesPerType && byType[ev.Type] != nil {
					open--
				}
			}
		}
	}
	for _, et := range byType {
		if !et.Templated {
			for _, e := range byRendered[et.Type] {
				et.Examples = append(et.Examples, e.body)
			}
			continue
		}
		for _, t := range et.Types {
			for _, e := range byRendered[t] {
				if len(et.Examples) < MaxExamplesPerType && slices.Contains(et.Rules, e.rule) {
					et.Examples = append(et.Examples, e.body)
				}
			}
		}
	}
}

// exampleJSON renders ev as an example: its envelope with the placeholder
// id, timestamp and source; false when that is larger than MaxExampleSize.
func exampleJSON(ev Event) (json.RawMessage, bool) {
	ev.ID = ExampleEventID
	ev.Timestamp = ExampleTime.UTC().Truncate(time.Millisecond)
	ev.Source.Name = ExampleSource
	ev.DedupeWindow = 0
	b, err := ev.MarshalJSON()
	if err != nil || len(b) > MaxExampleSize {
		return nil, false
	}
	return b, true
}

// MergeEventTypes merges the catalogs of several Sets (in the order given)
// into one, sorted by type: a type's rules and declared types are the sorted
// union, it is templated when it is in any catalog, its description is the
// first non-empty one, and its examples are the first MaxExamplesPerType
// distinct ones. It never returns nil, and a type's Rules is never nil.
func MergeEventTypes(catalogs ...[]EventType) []EventType {
	byType := map[string]*EventType{}
	for _, c := range catalogs {
		for _, et := range c {
			m := byType[et.Type]
			if m == nil {
				m = &EventType{Type: et.Type}
				byType[et.Type] = m
			}
			m.Templated = m.Templated || et.Templated
			m.Types = append(m.Types, et.Types...)
			m.Rules = append(m.Rules, et.Rules...)
			if m.Description == "" {
				m.Description = et.Description
			}
			for _, e := range et.Examples {
				if len(m.Examples) < MaxExamplesPerType && !slices.ContainsFunc(m.Examples, func(h json.RawMessage) bool { return bytes.Equal(h, e) }) {
					m.Examples = append(m.Examples, e)
				}
			}
		}
	}
	out := make([]EventType, 0, len(byType))
	for _, m := range byType {
		slices.Sort(m.Rules)
		m.Rules = slices.Compact(m.Rules)
		slices.Sort(m.Types)
		m.Types = slices.Compact(m.Types)
		if m.Rules == nil {
			m.Rules = []string{}
		}
		out = append(out, *m)
	}
	slices.SortFunc(out, func(a, b EventType) int { return strings.Compare(a.Type, b.Type) })
	return out
}

// description reads a rule's or an emit's description: text of at most
// MaxDescriptionLen bytes.
func (d *dec) description(n *yaml.Node, path string) string {
	s, ok := d.str(n, path)
	if !ok {
		return ""
	}
	if len(s) > MaxDescriptionLen {
		d.errf(n, path, "the description is %d bytes; descriptions may be at most %d (rules.MaxDescriptionLen)", len(s), MaxDescriptionLen)
		return ""
	}
	return s
}
