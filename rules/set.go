package rules

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// Set is an immutable, indexed collection of rules from one or more files.
// It is safe for concurrent use.
type Set struct {
	files    []*File
	rules    []*Rule
	byMethod map[string]*trie
	anyMeth  *trie
	catalog  catalogCache // EventTypes, built on first use

	// anyBefore: some rule has a before-lookup (MatchBefore has work to do)
	anyBefore bool
}

// Load reads rule files named by paths or glob patterns and merges them into a
// Set. A pattern that matches no file, an unreadable file, a parse problem or a
// rule name used twice is an error; the error is an ErrorList with every problem.
func Load(patterns ...string) (*Set, error) {
	files, err := ExpandPatterns(patterns...)
	if err != nil {
		return nil, err
	}
	if len(files) > MaxFiles {
		return nil, ErrorList{{File: strings.Join(patterns, " "), Msg: fmt.Sprintf("the patterns match %d files; one rule set may load at most %d (rules.MaxFiles)", len(files), MaxFiles)}}
	}
	var errs ErrorList
	var parsed []*File
	var total int64
	for _, name := range files {
		data, err := readRuleFile(name)
		if err != nil {
			errs = append(errs, asErrorList(name, err)...)
			continue
		}
		if total += int64(len(data)); total > MaxTotalSize {
			errs = append(errs, &Error{File: name, Msg: fmt.Sprintf("the files loaded up to this one hold %d bytes; one rule set may hold at most %s (rules.MaxTotalSize)", total, sizeMiB(MaxTotalSize))})
			break
		}
		f, err := Parse(name, data)
		if err != nil {
			errs = append(errs, asErrorList(name, err)...)
			continue
		}
		parsed = append(parsed, f)
	}
	if len(errs) > 0 {
		return nil, errs.err()
	}
	return NewSet(parsed...)
}

// readRuleFile reads one rule file, refusing one larger than MaxFileSize
// before reading a byte of it (and reading no more than MaxFileSize+1 bytes
// of one that grows meanwhile, which Parse then refuses).
func readRuleFile(name string) ([]byte, error) {
	// stat before opening: opening a FIFO would block until someone writes
	st, err := os.Stat(name)
	if err != nil {
		return nil, &Error{File: name, Msg: fmt.Sprintf("reading rules: %v", err)}
	}
	if !st.Mode().IsRegular() {
		return nil, &Error{File: name, Msg: "reading rules: not a regular file"}
	}
	if st.Size() > MaxFileSize {
		return nil, tooLargeError(name, st.Size(), nil)
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, &Error{File: name, Msg: fmt.Sprintf("reading rules: %v", err)}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, &Error{File: name, Msg: fmt.Sprintf("reading rules: %v", err)}
	}
	return data, nil
}

// ExpandPatterns turns file names and glob patterns into a sorted list of files.
func ExpandPatterns(patterns ...string) ([]string, error) {
	if len(patterns) == 0 {
		return nil, fmt.Errorf("loading rules: no rule files given")
	}
	seen := map[string]bool{}
	var out []string
	var errs ErrorList
	for _, p := range patterns {
		var matches []string
		if strings.ContainsAny(p, "*?[") {
			m, err := filepath.Glob(p)
			if err != nil {
				errs = append(errs, &Error{File: p, Msg: fmt.Sprintf("bad glob pattern: %v", err)})
				continue
			}
			if len(m) == 0 {
				errs = append(errs, &Error{File: p, Msg: "no rule files match this pattern"})
				continue
			}
			matches = m
		} else {
			st, err := os.Stat(p)
			if err != nil {
				errs = append(errs, &Error{File: p, Msg: fmt.Sprintf("reading rules: %v", err)})
				continue
			}
			if st.IsDir() {
				errs = append(errs, &Error{File: p, Msg: "is a directory; want a file or a glob such as " + filepath.Join(p, "*.yaml")})
				continue
			}
			matches = []string{p}
		}
		sort.Strings(matches)
		for _, m := range matches {
			if st, err := os.Stat(m); err == nil && st.IsDir() {
				continue
			}
			if !seen[m] {
				seen[m] = true
				out = append(out, m)
			}
		}
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return out, nil
}

func asErrorList(file string, err error) ErrorList {
	if l, ok := err.(ErrorList); ok {
		return l
	}
	return ErrorList{{File: file, Msg: err.Error()}}
}

// NewSet merges parsed files into a Set; a rule name defined in two files is an error.
func NewSet(files ...*File) (*Set, error) {
	s := &Set{files: files, byMethod: map[string]*trie{}, anyMeth: &trie{}}
	names := map[string]*Rule{}
	var errs ErrorList
	for _, f := range files {
		for _, r := range f.rules {
			if prev, dup := names[r.Name]; dup {
				errs = append(errs, &Error{File: r.File, Line: r.Line, Column: r.Column, Field: "name",
					Msg: fmt.Sprintf("duplicate rule name %q (also defined at %s:%d)", r.Name, prev.File, prev.Line)})
				continue
			}
			names[r.Name] = r
			r.index = len(s.rules)
			s.rules = append(s.rules, r)
		}
	}
	if len(s.rules) > MaxRules {
		r := s.rules[MaxRules]
		errs = append(errs, &Error{File: r.File, Line: r.Line, Column: r.Column,
			Msg: fmt.Sprintf("the files hold %d rules; one rule set may hold at most %d (rules.MaxRules)", len(s.rules), MaxRules)})
	}
	if len(errs) > 0 {
		return nil, errs.err()
	}
	for _, r := range s.rules {
		s.anyBefore = s.anyBefore || r.need.BeforeLookups
		for _, m := range r.methods {
			t := s.anyMeth
			if m != "*" {
				t = s.byMethod[m]
				if t == nil {
					t = &trie{}
					s.byMethod[m] = t
				}
			}
			for _, p := range r.paths {
				t.insert(p, r.index)
			}
		}
	}
	return s, nil
}

// Rules returns every rule in file order.
func (s *Set) Rules() []*Rule { return append([]*Rule(nil), s.rules...) }

// Files returns the names of the files the Set was built from.
func (s *Set) Files() []string {
	out := make([]string, len(s.files))
	for i, f := range s.files {
		out[i] = f.Name
	}
	return out
}

// CanMatch reports whether any rule could match an exchange with this method
// and path, before anything is buffered. It does not allocate.
func (s *Set) CanMatch(method, path string) bool {
	if s == nil || path == "" || path[0] != '/' {
		return false
	}
	if t := s.byMethod[method]; t != nil && t.any(path, 1) {
		return true
	}
	return s.anyMeth.any(path, 1)
}

// Plan reports whether any rule could match method and path, and which bodies
// the candidate rules read, so the caller buffers only what is needed.
func (s *Set) Plan(method, path string) (Need, bool) {
	var need Need
	if s == nil || path == "" || path[0] != '/' {
		return need, false
	}
	var buf [8]int
	cands := s.candidates(method, path, buf[:0])
	for _, i := range cands {
		r := s.rules[i]
		need.RequestBody = need.RequestBody || r.need.RequestBody
		// a dedupe key's id depends on the response body: capture it when
		// it fits, though the rule does not need it to emit
		need.ResponseBody = need.ResponseBody || r.need.ResponseBody || r.digestsResponse
		// a batch's sub-requests may match any rule with a before-lookup
		need.BeforeLookups = need.BeforeLookups || r.need.BeforeLookups || r.batch != nil && s.anyBefore
	}
	return need, len(cands) > 0
}

// StatusCanMatch reports whether some rule for method and path accepts the
// response status, so a caller can let responses that no rule wants (say, a
// 500 on a sign-up route) stream through without holding them.
func (s *Set) StatusCanMatch(method, path string, status int) bool {
	if s == nil || path == "" || path[0] != '/' {
		return false
	}
	var buf [8]int
	for _, i := range s.candidates(method, path, buf[:0]) {
		if s.rules[i].status.match(status) {
			return true
		}
	}
	return false
}

func (s *Set) candidates(method, path string, buf []int) []int {
	if t := s.byMethod[method]; t != nil {
		buf = t.collect(path, 1, buf)
	}
	buf = s.anyMeth.collect(path, 1, buf)
	return sortUnique(buf)
}

// Match is a rule that matched an exchange.
type Match struct {
	Rule   *Rule
	Params []Param
}

// Match returns the rules that match the exchange, in file order. Status,
// host and every request/response condition are checked. A sub-exchange of a
// batch (Match.Batch) is matched the same way, except that batch rules never
// match it: batches do not nest.
func (s *Set) Match(ex *Exchange) []*Match {
	if s == nil || ex.Path == "" || ex.Path[0] != '/' {
		return nil
	}
	var buf [8]int
	cands := s.candidates(ex.Method, ex.Path, buf[:0])
	if len(cands) == 0 {
		return nil
	}
	var out []*Match
	var pbuf [4]Param
	for _, i := range cands {
		r := s.rules[i]
		if r.batch != nil && ex.parent != nil {
			continue
		}
		if params, ok := r.match(ex, pbuf[:0]); ok {
			out = appendMatch(out, r, params)
		}
	}
	return out
}

// firstMatch holds the first match of an exchange and the slice Set.Match
// returns it in, firstMatch1 with a path parameter too: one allocation,
// where the usual exchange (one rule matches, with at most one parameter)
// would take two or three.
type firstMatch struct {
	out [1]*Match
	m   Match
}

type firstMatch1 struct {
	firstMatch
	p [1]Param
}

// appendMatch appends to out a match of r with a copy of params (which
// view a caller's buffer).
func appendMatch(out []*Match, r *Rule, params []Param) []*Match {
	if out != nil || len(params) > 1 {
		return append(out, newMatch(r, params))
	}
	var f *firstMatch
	if len(params) == 0 {
		f = &firstMatch{m: Match{Rule: r}}
	} else {
		f1 := &firstMatch1{firstMatch: firstMatch{m: Match{Rule: r}}, p: [1]Param{params[0]}}
		f1.m.Params = f1.p[:1:1]
		f = &f1.firstMatch
	}
	f.out[0] = &f.m
	return f.out[:1:1]
}

// newMatch returns a match of r with a copy of params (nil when there are
// none), in one allocation with one parameter.
func newMatch(r *Rule, params []Param) *Match {
	switch len(params) {
	case 0:
		return &Match{Rule: r}
	case 1:
		mp := &struct {
			m Match
			p [1]Param
		}{m: Match{Rule: r}, p: [1]Param{params[0]}}
		mp.m.Params = mp.p[:1:1]
		return &mp.m
	}
	return &Match{Rule: r, Params: slices.Clone(params)}
}

// match checks the status, then what matchRequest checks, then the
// response conditions; the path parameters are appended to buf.
func (r *Rule) match(ex *Exchange, buf []Param) ([]Param, bool) {
	if !r.status.match(ex.Status) {
		return nil, false
	}
	params, ok := r.matchRequest(ex, buf)
	if !ok || !r.resp.eval(ex, true) {
		return nil, false
	}
	return params, true
}

// matchRequest checks what is known before the response: host, path and
// request conditions. The path parameters are appended to buf (so a
// caller's buffer holds them: copy them to keep them, see newMatch).
func (r *Rule) matchRequest(ex *Exchange, buf []Param) ([]Param, bool) {
	if len(r.hosts) > 0 && !r.matchHost(ex.Host) {
		return nil, false
	}
	params := buf
	ok := false
	for _, pt := range r.paths {
		if params, ok = pt.match(ex.Path, buf); ok {
			break
		}
	}
	if !ok {
		return nil, false
	}
	if !r.req.eval(ex, false) {
		return nil, false
	}
	return params, true
}

func (r *Rule) matchHost(host string) bool {
	h := hostOnly(host)
	for _, want := range r.hosts {
		if strings.HasPrefix(want, "*.") {
			if strings.HasSuffix(h, want[1:]) && len(h) > len(want)-1 {
				return true
			}
		} else if h == want {
			return true
		}
	}
	return false
}
