package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"gopkg.in/yaml.v3"
)

// File is one parsed rule file.
type File struct {
	// Name is the file name as given.
	Name  string
	rules []*Rule
	tests []*Test
}

// Rules returns the file's rules in order.
func (f *File) Rules() []*Rule { return f.rules }

// Rule is one compiled rule. It is immutable once parsed.
type Rule struct {
	// Name is unique across a Set.
	Name string
	// Description is the rule's description: free text, at most
	// MaxDescriptionLen bytes, shown in the event catalog for the types the
	// rule emits (unless an emit has a description of its own).
	Description string
	// File and Line say where the rule is defined.
	File         string
	Line, Column int

	methods []string // upper-case; "*" = any
	paths   []*pathTmpl
	hosts   []string // lower-case; "*.x" wildcard
	status  statusSpec
	req     *condSet
	resp    *condSet
	lookups []*lookupSpec
	emits   []*emitSpec
	batch   *batchSpec // batch: instead of emit; nil for a rule that emits
	hasEach bool       // some emit has each
	need    Need
	// digestsResponse: an emit has a dedupe key, whose event id depends on
	// the response body, so the body is captured when it fits (Plan), but
	// the rule still emits when it does not (Need leaves it out).
	digestsResponse bool
	index           int // position in the Set
}

// Need says which bodies a rule reads, and whether it has lookups to run
// before the request is forwarded.
type Need struct {
	RequestBody  bool
	ResponseBody bool
	// BeforeLookups: a rule has a lookup with when: before; call
	// Set.MatchBefore before forwarding the request.
	BeforeLookups bool
}

type lookupSpec struct {
	as      string
	get     *tmpl
	timeout time.Duration
	// before: when: before, run before the request is forwarded (see lookup.go)
	before bool
	// headers are lookup.header: request headers set from templates, in the
	// order written; each replaces the forwarded header of that name
	headers []lookupHeaderSpec
}

type emitSpec struct {
	path        string    // "emit" or "emit[2]", for messages
	each        *eachSpec // emit.each: one event per element; nil for one event
	typ         *tmpl
	description string // emit.description; the event catalog falls back to the rule's
	subject     *tmpl
	tenant      *tmpl // emit.tenant; nil = operator-only events
	data        *dataNode
	omit        []string
	redact      []string
	keepSecrets map[string]bool
	keepShapes  shapeSet // secret shapes delivered anyway (keep_shapes)
	mode        string
	// types is the set a templated type may render to (emit.types), nil
	// for a constant type; typeList is the same in the order written.
	types     map[string]bool
	typeList  []string
	dedupeKey *tmpl
	dedupeWin time.Duration
	policy    *sanitizer // omit, redact and keep_secrets, read-only once parsed
	// previous is emit.previous (nil: the events carry none); cmpPolicy is
	// policy rendering for comparison, set with it.
	previous  *previousSpec
	cmpPolicy *sanitizer
	// dataSize is the largest data rendered so far: the next render's buffer
	// starts that large instead of growing step by step.
	dataSize atomic.Int64

	// lookups are the lookups the emit reads, directly or through other
	// lookups: their LookupResult.Missing goes into its source.missing
	lookups []string
}

var (
	ruleNameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
	eventTypeRE = regexp.MustCompile(`^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$`)
	methodRE    = regexp.MustCompile(`^[A-Z][A-Z0-9_-]*$`)
	hostRE      = regexp.MustCompile(`^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)
)

// DefaultLookupTimeout and MaxLookupTimeout bound a lookup.
const (
	DefaultLookupTimeout = 2 * time.Second
	MaxLookupTimeout     = 10 * time.Second
	DefaultDedupeWindow  = 24 * time.Hour
)

// Parse parses one rule file (YAML or JSON). The error, if any, is an
// ErrorList naming every problem with file:line:col.
func Parse(filename string, data []byte) (*File, error) {
	d := &dec{file: filename}
	f := &File{Name: filename}
	if len(data) > MaxFileSize {
		return nil, ErrorList{tooLargeError(filename, int64(len(data)), data)}
	}
	var doc yaml.Node
	dc := yaml.NewDecoder(bytes.NewReader(data))
	if err := dc.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.errf(nil, "", "the file is empty: want a mapping with version: 1 and rules:")
			return nil, d.errs.err()
		}
		d.errs = append(d.errs, yamlSyntaxError(filename, err))
		return nil, d.errs.err()
	}
	// nothing walks the tree before its size with aliases expanded is known
	if !d.checkLimits(&doc) {
		return nil, d.errs.err()
	}
	var extra yaml.Node
	if err := dc.Decode(&extra); err == nil {
		d.errf(&extra, "", "want a single document; found a second one (remove the \"---\")")
		return nil, d.errs.err()
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) > 0 {
		root = root.Content[0]
	}
	root = resolve(root)
	if root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" {
		d.errf(root, "", "the file is empty: want a mapping with version: 1 and rules:")
		return nil, d.errs.err()
	}
	var rulesNode, testsNode *yaml.Node
	d.mapping(root, "",
		field{name: "version", required: true, fn: func(v *yaml.Node, p string) {
			if n, ok := d.intVal(v, p); ok && n != 1 {
				d.errf(v, p, "want 1 (the only version so far), got %d", n)
			}
		}},
		field{name: "rules", required: true, fn: func(v *yaml.Node, p string) { rulesNode = v }},
		field{name: "tests", fn: func(v *yaml.Node, p string) { testsNode = v }},
		// "$schema" lets editors (VS Code's JSON support) find rules/schema.json.
		field{name: "$schema", fn: func(v *yaml.Node, p string) { d.str(v, p) }},
	)
	if rulesNode != nil {
		rn := resolve(rulesNode)
		if rn.Kind != yaml.SequenceNode {
			d.errf(rn, "rules", "want a list of rules, got %s", kindName(rn))
		} else if len(rn.Content) == 0 {
			d.errf(rn, "rules", "want at least one rule, got an empty list")
		} else {
			names := map[string]*Rule{}
			for _, c := range rn.Content {
				r := d.parseRule(resolve(c))
				if r == nil {
					continue
				}
				if prev, dup := names[r.Name]; dup {
					d.errf(c, "name", "duplicate rule name %q (first defined at line %d)", r.Name, prev.Line)
					continue
				}
				names[r.Name] = r
				f.rules = append(f.rules, r)
			}
		}
	}
	if testsNode != nil {
		f.tests = d.parseTests(resolve(testsNode))
	}
	if err := d.errs.err(); err != nil {
		return nil, err
	}
	return f, nil
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// yamlSyntaxError turns a yaml.v3 syntax error into an Error with the line it names.
func yamlSyntaxError(file string, err error) *Error {
	msg := err.Error()
	e := &Error{File: file, Msg: "invalid YAML/JSON syntax: " + strings.TrimPrefix(msg, "yaml: ")}
	m := yamlLineRE.FindStringSubmatch(msg)
	if m == nil {
		return e
	}
	fmt.Sscanf(m[1], "%d", &e.Line)
	e.Column = 1
	e.Msg = "invalid YAML/JSON syntax: " + m[2]
	// yaml.v3 reports parser errors at the 0-based line where the enclosing
	// collection starts, and scanner errors at the 1-based line of the problem.
	for _, pe := range yamlParserErrors {
		if strings.Contains(m[2], pe) {
			e.Line++
			break
		}
	}
	if strings.Contains(m[2], "',' or '}'") || strings.Contains(m[2], "',' or ']'") {
		e.Msg += " in the flow collection that starts on this line; inside {…} or […] quote values that contain braces, brackets, commas or '?', e.g. path: \"/api/users/{id}\""
	}
	return e
}

var yamlParserErrors = []string{"did not find expected <document start>", "did not find expected node content", "did not find expected key", "did not find expected '-' indicator", "did not find expected ',' or ']'", "did not find expected ',' or '}'"}

func (d *dec) parseRule(n *yaml.Node) *Rule {
	if n.Kind != yaml.MappingNode {
		d.errf(n, "rules", "want a rule (a mapping with name, match and emit), got %s", kindName(n))
		return nil
	}
	r := &Rule{File: d.file, Line: n.Line, Column: n.Column}
	before := len(d.errs)
	var matchNode, lookupNode, emitNode, batchNode *yaml.Node
	d.mapping(n, "",
		field{name: "name", required: true, fn: func(v *yaml.Node, p string) {
			if s, ok := d.str(v, p); ok {
				if !ruleNameRE.MatchString(s) {
					d.errf(v, p, "want a name of lower-case letters, digits, '.', '_' and '-' such as user-created, got %q", s)
				}
				r.Name = s
			}
		}},
		field{name: "description", fn: func(v *yaml.Node, p string) { r.Description = d.description(v, p) }},
		field{name: "match", required: true, fn: func(v *yaml.Node, p string) { matchNode = v }},
		field{name: "lookup", fn: func(v *yaml.Node, p string) { lookupNode = v }},
		field{name: "emit", fn: func(v *yaml.Node, p string) { emitNode = v }},
		field{name: "batch", fn: func(v *yaml.Node, p string) { batchNode = v }},
	)
	switch {
	case emitNode == nil && batchNode == nil:
		d.errf(n, "", "missing required key \"emit\" (or \"batch\", for a batch endpoint whose sub-requests the other rules match)")
	case emitNode != nil && batchNode != nil:
		d.errf(batchNode, "batch", "a rule has emit or batch, not both: a batch rule emits nothing itself, the rules its sub-exchanges match do; move emit to a rule of its own")
		batchNode = nil
	case batchNode != nil && lookupNode != nil:
		d.errf(lookupNode, "lookup", "a batch rule emits nothing itself, so its lookups would never be used; put them on the rules its sub-exchanges match")
		lookupNode = nil
	}
	if matchNode != nil {
		d.parseMatch(r, matchNode)
	}
	sc := &scope{lookups: map[string]bool{}, before: map[string]bool{}}
	for _, pt := range r.paths {
		sc.params = append(sc.params, pt.params)
	}
	if lookupNode != nil {
		d.parseLookups(r, lookupNode, sc)
	}
	if emitNode != nil {
		items := d.listOrOne(emitNode)
		if len(items) == 0 {
			d.errf(emitNode, "emit", "want at least one event, got an empty list")
		}
		if len(items) > MaxEmits {
			d.errf(emitNode, "emit", "the rule emits %d events; a rule may emit at most %d (rules.MaxEmits)", len(items), MaxEmits)
			items = nil
		}
		for i, item := range items {
			p := "emit"
			if resolve(emitNode).Kind == yaml.SequenceNode {
				p = index("emit", i)
			}
			if e := d.parseEmit(item, p, sc); e != nil {
				e.policy = newSanitizer(e) // fixed per emit: built once, read by every event
				if e.previous != nil {
					e.cmpPolicy = e.policy.forComparison()
				}
				r.emits = append(r.emits, e)
			}
		}
		r.groupEach()
	}
	if batchNode != nil {
		r.batch = d.parseBatch(batchNode, sc)
	}
	// Unused lookups are a mistake worth reporting: they cost an upstream call.
	// When an emit failed to parse, its references are unknown, so say nothing.
	if len(d.errs) > before {
		return nil
	}
	used := map[string]bool{}
	for _, e := range r.emits {
		for _, t := range []*tmpl{e.typ, e.subject, e.tenant, e.dedupeKey} {
			t.lookupNames(used)
		}
		e.data.lookupNames(used)
		if e.each != nil && e.each.items.kind == phLookupBody {
			used[e.each.items.name] = true
		}
		e.previous.walkData(func(dn *dataNode) { dn.lookupNames(used) })
	}
	for _, lk := range r.lookups {
		lk.get.lookupNames(used)
		for _, h := range lk.headers {
			h.t.lookupNames(used)
		}
	}
	for _, lk := range r.lookups {
		if !used[lk.as] {
			d.errf(n, "lookup", "lookup %q is never used: reference it as {%s.body…} in emit, or remove it", lk.as, lk.as)
		}
	}
	for _, e := range r.emits {
		e.lookups = r.lookupDeps(e)
	}
	r.computeNeed()
	if len(d.errs) > before {
		return nil
	}
	return r
}

func (d *dec) parseMatch(r *Rule, n *yaml.Node) {
	d.mapping(n, "match",
		field{name: "method", required: true, fn: func(v *yaml.Node, p string) {
			seen := map[string]bool{}
			d.eachStr(v, p, func(s string, m *yaml.Node, ip string) {
				up := strings.ToUpper(s)
				if up != "*" && !methodRE.MatchString(up) {
					d.errf(m, ip, "want an HTTP method such as POST, PUT, PATCH, DELETE, or \"*\" for any, got %q", s)
					return
				}
				if !seen[up] {
					seen[up] = true
					r.methods = append(r.methods, up)
				}
			})
		}},
		field{name: "path", required: true, fn: func(v *yaml.Node, p string) {
			d.eachStr(v, p, func(s string, pn *yaml.Node, ip string) {
				pt, err := parsePathTmpl(s)
				if err != nil {
					d.errf(pn, ip, "%v", err)
					return
				}
				r.paths = append(r.paths, pt)
			})
		}},
		field{name: "host", fn: func(v *yaml.Node, p string) {
			d.eachStr(v, p, func(s string, hn *yaml.Node, ip string) {
				h := strings.ToLower(strings.TrimSuffix(s, "."))
				if !hostRE.MatchString(h) {
					d.errf(hn, ip, "want a host name such as auth.example.com or *.example.com (no scheme, port or path), got %q", s)
					return
				}
				r.hosts = append(r.hosts, h)
			})
		}},
		field{name: "status", fn: func(v *yaml.Node, p string) { r.status = d.parseStatus(v, p) }},
		field{name: "request", fn: func(v *yaml.Node, p string) { r.req = d.parseCondSet(v, p, true) }},
		field{name: "response", fn: func(v *yaml.Node, p string) { r.resp = d.parseCondSet(v, p, false) }},
	)
	if r.status == nil {
		r.status = statusSpec{{200, 299}}
	}
}

var reservedLookupNames = map[string]bool{"request": true, "response": true, "path": true, "item": true, "index": true, "where": true}

func (d *dec) parseLookups(r *Rule, n *yaml.Node, sc *scope) {
	items := d.listOrOne(n)
	if len(items) > MaxLookups {
		d.errf(n, "lookup", "the rule declares %d lookups; a rule may declare at most %d (rules.MaxLookups)", len(items), MaxLookups)
		return
	}
	for i, item := range items {
		p := "lookup"
		if resolve(n).Kind == yaml.SequenceNode {
			p = index("lookup", i)
		}
		lk := &lookupSpec{timeout: DefaultLookupTimeout}
		var getNode, headerNode *yaml.Node
		d.mapping(item, p,
			field{name: "get", required: true, fn: func(v *yaml.Node, fp string) { getNode = v }},
			field{name: "as", required: true, fn: func(v *yaml.Node, fp string) {
				s, ok := d.str(v, fp)
				if !ok {
					return
				}
				switch {
				case !validParamName(s):
					d.errf(v, fp, "want a name of letters, digits and _ such as me, got %q", s)
				case reservedLookupNames[s]:
					d.errf(v, fp, "%q is reserved for placeholders; pick another name such as me or user", s)
				case sc.lookups[s]:
					d.errf(v, fp, "lookup %q is declared twice in this rule", s)
				default:
					lk.as = s
				}
			}},
			field{name: "when", fn: func(v *yaml.Node, fp string) {
				if s, ok := d.str(v, fp); ok {
					switch s {
					case LookupBefore:
						lk.before = true
					case LookupAfter:
					default:
						d.errf(v, fp, "want before (before the request is forwarded) or after (after the response, the default), got %q", s)
					}
				}
			}},
			field{name: "timeout", fn: func(v *yaml.Node, fp string) {
				if dur, ok := d.duration(v, fp); ok {
					if dur <= 0 || dur > MaxLookupTimeout {
						d.errf(v, fp, "want a timeout between 1ms and %s, got %s", MaxLookupTimeout, dur)
						return
					}
					lk.timeout = dur
				}
			}},
			field{name: "header", fn: func(v *yaml.Node, fp string) { headerNode = v }},
		)
		if getNode != nil {
			if s, ok := d.str(getNode, join(p, "get")); ok {
				if !strings.HasPrefix(s, "/") {
					d.errf(getNode, join(p, "get"), "want a path on the same upstream starting with \"/\", such as /api/me, got %q", s)
				} else if t, err := parseTmpl(s, sc); err != nil {
					d.errf(getNode, join(p, "get"), "%v", err)
				} else {
					lk.get = t
					d.checkBefore(lk, getNode, join(p, "get"), t, sc)
				}
			}
		}
		if headerNode != nil {
			d.parseLookupHeaders(lk, headerNode, join(p, "header"), sc)
		}
		// registered even when a template broke a rule, so that the emits'
		// placeholders do not add a second, misleading error
		if lk.as != "" && lk.get != nil {
			sc.lookups[lk.as] = true
			if lk.before {
				sc.before[lk.as] = true
			}
			r.lookups = append(r.lookups, lk)
		}
	}
}

func (d *dec) duration(n *yaml.Node, path string) (time.Duration, bool) {
	s, ok := d.str(n, path)
	if !ok {
		return 0, false
	}
	dur, err := parseDuration(s)
	if err != nil {
		d.errf(n, path, "want a duration such as 500ms, 2s, 10m, 24h or 7d, got %q", s)
		return 0, false
	}
	return dur, true
}

// parseDuration accepts Go durations plus a "d" (day) unit.
func parseDuration(s string) (time.Duration, error) {
	if strings.HasSuffix(s, "d") {
		var days int
		if _, err := fmt.Sscanf(s, "%dd", &days); err == nil && fmt.Sprintf("%dd", days) == s && days >= 0 {
			return time.Duration(days) * 24 * time.Hour, nil
		}
		return 0, fmt.Errorf("bad duration %q", s)
	}
	return time.ParseDuration(s)
}

func (d *dec) tmplField(n *yaml.Node, path string, sc *scope) *tmpl {
	s, ok := d.str(n, path)
	if !ok {
		return nil
	}
	t, err := parseTmpl(s, sc)
	if err != nil {
		d.errf(n, path, "%v", err)
		return nil
	}
	return t
}

func (d *dec) parseEmit(n *yaml.Node, path string, sc *scope) *emitSpec {
	e := &emitSpec{path: path, dedupeWin: DefaultDedupeWindow}
	before := len(d.errs)
	// each comes first wherever it is written: it makes {item…} known to
	// the other fields
	if v := mappingValue(n, "each"); v != nil {
		if e.each, sc = d.parseEach(v, join(path, "each"), sc); e.each == nil {
			return nil
		}
	}
	keyList := func(into *[]string) func(v *yaml.Node, p string) {
		return func(v *yaml.Node, p string) {
			v = resolve(v)
			if v.Kind != yaml.SequenceNode {
				d.errf(v, p, "want a list of key names or dotted paths, got %s", kindName(v))
				return
			}
			for i, c := range v.Content {
				if s, ok := d.str(c, index(p, i)); ok {
					if s == "" || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") {
						d.errf(c, index(p, i), "want a key name such as phone or a dotted path such as user.phone, got %q", s)
						continue
					}
					*into = append(*into, s)
				}
			}
		}
	}
	var typeNode, typesNode, previousNode *yaml.Node
	d.mapping(n, path,
		field{name: "type", required: true, fn: func(v *yaml.Node, p string) {
			typeNode = v
			t := d.tmplField(v, p, sc)
			if t == nil {
				return
			}
			if len(t.phs) == 0 && !eventTypeRE.MatchString(t.raw) {
				d.errf(v, p, "want a dot-separated event name of letters, digits, '_' and '-' such as user.created, got %q", t.raw)
				return
			}
			if len(t.phs) == 0 && len(t.raw) > MaxEventTypeLen {
				d.errf(v, p, "the event type is %d bytes; event types may be at most %d (rules.MaxEventTypeLen)", len(t.raw), MaxEventTypeLen)
				return
			}
			for _, l := range t.lits {
				if strings.ContainsAny(l, " \t/\\\"'") {
					d.errf(v, p, "want a dot-separated event name of letters, digits, '_' and '-' such as user.{request.body.action}, got %q", t.raw)
					return
				}
			}
			e.typ = t
		}},
		field{name: "types", fn: func(v *yaml.Node, p string) { typesNode = v }},
		field{name: "each", fn: func(v *yaml.Node, p string) {}}, // parsed above
		field{name: "description", fn: func(v *yaml.Node, p string) { e.description = d.description(v, p) }},
		field{name: "subject", fn: func(v *yaml.Node, p string) { e.subject = d.tmplField(v, p, sc) }},
		field{name: "tenant", fn: func(v *yaml.Node, p string) {
			t := d.tmplField(v, p, sc)
			if t != nil && len(t.phs) == 0 {
				if err := ValidTenant(t.lits[0]); err != nil {
					d.errf(v, p, "%v", err)
					return
				}
			}
			e.tenant = t
		}},
		field{name: "data", fn: func(v *yaml.Node, p string) { e.data = d.parseData(v, p, sc) }},
		field{name: "previous", fn: func(v *yaml.Node, p string) { previousNode, e.previous = v, d.parsePrevious(v, p, sc) }},
		field{name: "omit", fn: keyList(&e.omit)},
		field{name: "redact", fn: keyList(&e.redact)},
		field{name: "keep_secrets", fn: func(v *yaml.Node, p string) {
			var keys []string
			keyList(&keys)(v, p)
			e.keepSecrets = map[string]bool{}
			for _, k := range keys {
				e.keepSecrets[normKey(lastElement(k))] = true
			}
		}},
		field{name: "keep_shapes", fn: func(v *yaml.Node, p string) { e.keepShapes = d.shapeList(v, p) }},
		field{name: "mode", fn: func(v *yaml.Node, p string) {
			if s, ok := d.str(v, p); ok {
				if s != ModeLive && s != ModeTest {
					d.errf(v, p, "want live or test, got %q", s)
					return
				}
				e.mode = s
			}
		}},
		field{name: "dedupe", fn: func(v *yaml.Node, p string) {
			v = resolve(v)
			if v.Kind == yaml.ScalarNode {
				e.dedupeKey = d.tmplField(v, p, sc)
				return
			}
			d.mapping(v, p,
				field{name: "key", required: true, fn: func(kv *yaml.Node, kp string) { e.dedupeKey = d.tmplField(kv, kp, sc) }},
				field{name: "window", fn: func(wv *yaml.Node, wp string) {
					if dur, ok := d.duration(wv, wp); ok {
						if dur <= 0 {
							d.errf(wv, wp, "want a positive duration such as 24h, got %q", wv.Value)
							return
						}
						e.dedupeWin = dur
					}
				}},
			)
		}},
	)
	if e.typ != nil {
		d.parseTypes(e, typeNode, typesNode, path)
	}
	if e.previous != nil && e.previous.after == nil && e.data == nil {
		d.errf(previousNode, join(path, "previous"), "previous compares before with after, which defaults to the event's data, and this emit has no data: add data: or previous.after:")
	}
	if e.dedupeKey != nil && len(e.dedupeKey.phs) == 0 {
		d.errf(n, join(path, "dedupe"), "want a key with a placeholder such as {request.header.Idempotency-Key}; a constant key would merge every event of this rule")
	}
	if len(d.errs) > before {
		return nil
	}
	return e
}

// parseTypes reads emit.types, the closed set a templated type may render
// to. A templated type must have one (otherwise a client would choose the
// type, and every value it sent would become a metric label); a constant
// type must not.
func (d *dec) parseTypes(e *emitSpec, typeNode, typesNode *yaml.Node, path string) {
	tp := join(path, "types")
	if len(e.typ.phs) == 0 {
		if typesNode != nil {
			d.errf(typesNode, tp, "types lists what a templated type may render to; type %q has no placeholder, so remove types", e.typ.raw)
		}
		return
	}
	if typesNode == nil {
		d.errf(typeNode, join(path, "type"), "templated type %q needs the list of types it may render to, or a client chooses the type: add types: [%s] next to it", e.typ.raw, exampleTypes(e.typ))
		return
	}
	n := resolve(typesNode)
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		d.errf(n, tp, "want a list of the event types %q may render to, such as [%s], got %s", e.typ.raw, exampleTypes(e.typ), kindName(n))
		return
	}
	e.types = map[string]bool{}
	for i, c := range n.Content {
		ip := index(tp, i)
		s, ok := d.str(c, ip)
		switch {
		case !ok:
		case !eventTypeRE.MatchString(s):
			d.errf(c, ip, "want a dot-separated event name of letters, digits, '_' and '-' such as user.created, got %q", s)
		case len(s) > MaxEventTypeLen:
			d.errf(c, ip, "the event type is %d bytes; event types may be at most %d (rules.MaxEventTypeLen)", len(s), MaxEventTypeLen)
		case !e.typ.canRender(s):
			d.errf(c, ip, "%q can never be rendered from type %q (its fixed text does not fit); list only names it can produce", s, e.typ.raw)
		case e.types[s]:
			d.errf(c, ip, "%q is listed twice", s)
		default:
			e.types[s] = true
			e.typeList = append(e.typeList, s)
		}
	}
}

// exampleTypes suggests a types list for a templated type: its fixed text
// around example values.
func exampleTypes(t *tmpl) string {
	var out []string
	for _, v := range []string{"created", "updated"} {
		var b strings.Builder
		for i, l := range t.lits {
			b.WriteString(l)
			if i < len(t.phs) {
				b.WriteString(v)
			}
		}
		out = append(out, b.String())
	}
	return strings.Join(out, ", ")
}

// canRender reports whether s fits the template's fixed text, each
// placeholder standing for any text (possibly empty).
func (t *tmpl) canRender(s string) bool {
	if !strings.HasPrefix(s, t.lits[0]) {
		return false
	}
	s = s[len(t.lits[0]):]
	last := t.lits[len(t.lits)-1]
	for _, l := range t.lits[1 : len(t.lits)-1] {
		i := strings.Index(s, l)
		if i < 0 {
			return false
		}
		s = s[i+len(l):]
	}
	return strings.HasSuffix(s, last)
}

func (r *Rule) computeNeed() {
	var n Need
	for _, cs := range []*condSet{r.req, r.resp} {
		if cs != nil && len(cs.body) > 0 {
			if cs == r.req {
				n.RequestBody = true
			} else {
				n.ResponseBody = true
			}
		}
	}
	for _, lk := range r.lookups {
		lk.get.needs(&n)
		for _, h := range lk.headers {
			h.t.needs(&n)
		}
		n.BeforeLookups = n.BeforeLookups || lk.before
	}
	if r.batch != nil {
		r.batch.needs(&n)
	}
	for _, e := range r.emits {
		if e.each != nil {
			(&tmpl{phs: []*placeholder{e.each.items}}).needs(&n)
		}
		e.typ.needs(&n)
		e.subject.needs(&n)
		e.tenant.needs(&n)
		e.dedupeKey.needs(&n)
		e.data.needs(&n)
		e.previous.walkData(func(dn *dataNode) { dn.needs(&n) })
		r.digestsResponse = r.digestsResponse || e.dedupeKey != nil
	}
	r.need = n
}

// Need reports which bodies the rule reads.
func (r *Rule) Need() Need { return r.need }

// groupEach marks the rule's emits with each, and gives the emits whose
// each reads the same list one group, so their events keep the list's order.
func (r *Rule) groupEach() {
	for i, e := range r.emits {
		if e.each == nil {
			continue
		}
		r.hasEach = true
		e.each.group = i
		for j := 0; j < i; j++ {
			if o := r.emits[j].each; o != nil && o.items.raw == e.each.items.raw {
				e.each.group = o.group
				break
			}
		}
	}
}

// mappingValue returns the value of key in the mapping n, or nil.
func mappingValue(n *yaml.Node, key string) *yaml.Node {
	n = resolve(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := resolve(n.Content[i]); k.Kind == yaml.ScalarNode && k.Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// EventTypes returns the event types the rule emits, as written (a templated
// type keeps its placeholders; DeclaredTypes lists what it may render to).
func (r *Rule) EventTypes() []string {
	out := make([]string, len(r.emits))
	for i, e := range r.emits {
		out[i] = e.typ.raw
	}
	return out
}

// DeclaredTypes returns every event type the rule can emit: its constant
// types and the types its templated ones declare, in the order written,
// without repeats. Only these can appear in an event or a metric label.
func (r *Rule) DeclaredTypes() []string {
	var out []string
	for _, e := range r.emits {
		list := e.typeList
		if len(e.typ.phs) == 0 {
			list = []string{e.typ.raw}
		}
		for _, t := range list {
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	return out
}

// Methods returns the methods the rule matches ("*" for any).
func (r *Rule) Methods() []string { return append([]string(nil), r.methods...) }

// Paths returns the rule's path templates as written.
func (r *Rule) Paths() []string {
	out := make([]string, len(r.paths))
	for i, p := range r.paths {
		out[i] = p.raw
	}
	return out
}
