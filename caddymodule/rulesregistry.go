package caddymodule

import (
	"slices"
	"strings"
	"sync"

	"github.com/authtap/authtap/rules"
)

// loadedRules is the process-wide registry of the rule sets in force: every
// authtap handler reports its set here (again after each reload of its rule
// files) and withdraws it in Cleanup, and authtap_admin answers GET
// /event-types from it. It is process-wide rather than per configuration
// because, during a config reload, the handlers of the old and the new
// configuration both run for a moment; listing the union is harmless.
var loadedRules = struct {
	sync.RWMutex
	sets map[string]*rules.Set
}{sets: map[string]*rules.Set{}}

// registerRules records s as the rule set in force under key (one key per
// handler instance), replacing what key held before. A nil s withdraws key.
func registerRules(key string, s *rules.Set) {
	if s == nil {
		unregisterRules(key)
		return
	}
	loadedRules.Lock()
	loadedRules.sets[key] = s
	loadedRules.Unlock()
}

// unregisterRules withdraws the rule set recorded under key, if any.
func unregisterRules(key string) {
	loadedRules.Lock()
	delete(loadedRules.sets, key)
	loadedRules.Unlock()
}

// loadedEventTypes returns the event types of every registered rule set,
// merged by type and sorted: the rule names of one type are the sorted union
// over all sets, a type is templated when it is in any set, and the types a
// templated type declares are the sorted union too. It never
// returns nil.
func loadedEventTypes() []rules.EventType {
	loadedRules.RLock()
	sets := make([]*rules.Set, 0, len(loadedRules.sets))
	for _, s := range loadedRules.sets {
		sets = append(sets, s)
	}
	loadedRules.RUnlock()

	byType := map[string]*rules.EventType{}
	for _, s := range sets {
		for _, et := range s.EventTypes() {
			m := byType[et.Type]
			if m == nil {
				m = &rules.EventType{Type: et.Type}
				byType[et.Type] = m
			}
			m.Templated = m.Templated || et.Templated
			m.Types = append(m.Types, et.Types...)
			m.Rules = append(m.Rules, et.Rules...)
		}
	}
	out := make([]rules.EventType, 0, len(byType))
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
	slices.SortFunc(out, func(a, b rules.EventType) int { return strings.Compare(a.Type, b.Type) })
	return out
}
