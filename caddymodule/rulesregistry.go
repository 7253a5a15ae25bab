package caddymodule

import (
	"slices"
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

// loadedEventTypes returns the event catalog of every registered rule set,
// merged by rules.MergeEventTypes (sets taken in the order of their keys, so
// the answer does not depend on map order). It never returns nil.
func loadedEventTypes() []rules.EventType {
	loadedRules.RLock()
	keys := make([]string, 0, len(loadedRules.sets))
	for k := range loadedRules.sets {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	sets := make([]*rules.Set, len(keys))
	for i, k := range keys {
		sets[i] = loadedRules.sets[k]
	}
	loadedRules.RUnlock()

	catalogs := make([][]rules.EventType, len(sets))
	for i, s := range sets {
		catalogs[i] = s.EventTypes()
	}
	return rules.MergeEventTypes(catalogs...)
}
