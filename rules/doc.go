// Package rules is authtap's rule language: it parses rule files (YAML or
// JSON), validates them strictly with file:line:col errors, indexes the rules by
// method and path, matches HTTP exchanges against them, and builds the events
// they emit. It is pure: no I/O beyond reading the rule files, and nothing of
// Caddy, asynq or Redis.
//
// The language is documented in README.md beside this file, with a JSON Schema
// in schema.json and complete rule packs in examples/.
//
//	set, err := rules.Load("/etc/authtap/*.yaml")
//	if err != nil { ... }                         // every problem, as file:line:col: field: message
//	if !set.CanMatch(r.Method, r.URL.Path) { ... } // cheap: no rule can match, stream untouched
//	ex := &rules.Exchange{Method: "DELETE", Path: "/api/users/u_1", RequestHeader: r.Header}
//	for _, m := range set.MatchBefore(ex) {      // before forwarding: rules with when: before lookups
//		if m.IsBatch() {                          // a batch envelope: its sub-requests, by position
//			subs, _ := m.BatchRequests(ex)        // (set.MatchBefore(sub) for sub in subs, as here;
//			...                                   // answers go to the sub with the same SubIndex)
//		}
//		for i := 0; i < m.NumLookups(); i++ {     // whose request matches; GET m.Lookup(i, ex) for
//			...                                   // each m.LookupBefore(i), keep the answers
//		}
//	}
//	ex.Status, ex.ResponseBody = 204, body        // after the response
//	for _, m := range set.Match(ex) {
//		if m.IsBatch() {                          // a batch envelope: match each sub-exchange instead
//			b, _ := m.Batch(ex)                   // (set.Match(sub) for sub in b.Subs, as below)
//			...
//		}
//		for i := 0; i < m.NumLookups(); i++ {     // a before-lookup's kept answer, or GET
//			ex.SetLookup(...)                     // m.Lookup(i, ex) upstream now; record it
//		}
//		events, errs := m.Events(ex, rules.EmitOptions{Source: "legacy-auth"})
//		...
//	}
package rules
