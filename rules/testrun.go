package rules

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Test is one inline example from a rule file's tests: section.
type Test struct {
	Name string
	File string
	Line int

	ex     Exchange
	expect []expectSpec
}

type expectSpec struct {
	line    int
	typ     string
	subject *string
	tenant  *string // "" expects an operator-only event
	data    []byte  // JSON; nil = not checked
	mode    string
	missing []string
	hasMiss bool
	// previous is the expected previous (JSON): nil = not checked, "null" = none
	previous []byte
}

// TestResult is the outcome of one inline test.
type TestResult struct {
	File    string
	Line    int
	Name    string
	Passed  bool
	Failure string // why it failed; empty when passed
}

func (d *dec) parseTests(n *yaml.Node) []*Test {
	if n.Kind != yaml.SequenceNode {
		d.errf(n, "tests", "want a list of tests, got %s", kindName(n))
		return nil
	}
	var out []*Test
	for i, c := range n.Content {
		c = resolve(c)
		p := index("tests", i)
		t := &Test{File: d.file, Line: c.Line}
		d.mapping(c, p,
			field{name: "name", required: true, fn: func(v *yaml.Node, fp string) { t.Name, _ = d.str(v, fp) }},
			field{name: "request", required: true, fn: func(v *yaml.Node, fp string) { d.parseRequestSpec(v, fp, &t.ex) }},
			field{name: "response", fn: func(v *yaml.Node, fp string) { d.parseResponseSpec(v, fp, &t.ex) }},
			field{name: "lookup", fn: func(v *yaml.Node, fp string) {
				keys, vals := d.pairs(v, fp)
				for j, k := range keys {
					var lr LookupResult
					lr.Status = 200
					d.parseLookupResult(vals[j], join(fp, k.Value), &lr)
					t.ex.SetLookup(k.Value, lr)
				}
			}},
			field{name: "expect", required: true, fn: func(v *yaml.Node, fp string) {
				v = resolve(v)
				if v.Kind != yaml.SequenceNode {
					d.errf(v, fp, "want a list of expected events ([] for none), got %s", kindName(v))
					return
				}
				for j, ec := range v.Content {
					t.expect = append(t.expect, d.parseExpect(resolve(ec), index(fp, j)))
				}
			}},
		)
		if t.ex.Status == 0 {
			t.ex.Status = 200
		}
		out = append(out, t)
	}
	return out
}

func (d *dec) parseExpect(n *yaml.Node, path string) expectSpec {
	e := expectSpec{line: n.Line}
	d.mapping(n, path,
		field{name: "type", required: true, fn: func(v *yaml.Node, p string) { e.typ, _ = d.str(v, p) }},
		field{name: "subject", fn: func(v *yaml.Node, p string) {
			if s, ok := d.text(v, p); ok {
				e.subject = &s
			}
		}},
		field{name: "tenant", fn: func(v *yaml.Node, p string) {
			if s, ok := d.text(v, p); ok {
				e.tenant = &s
			}
		}},
		field{name: "data", fn: func(v *yaml.Node, p string) {
			if b, ok := d.jsonValue(v, p); ok {
				e.data = b
			}
		}},
		field{name: "previous", fn: func(v *yaml.Node, p string) {
			rv := resolve(v)
			if rv.Kind != yaml.MappingNode && (rv.Kind != yaml.ScalarNode || rv.ShortTag() != "!!null") {
				d.errf(v, p, "want the expected previous, a mapping such as {email: old@x.test}, or null for none; got %s", kindName(rv))
				return
			}
			if b, ok := d.jsonValue(v, p); ok {
				if string(b) == "{}" {
					b = []byte("null") // previous is never empty: it is left out
				}
				e.previous = b
			}
		}},
		field{name: "mode", fn: func(v *yaml.Node, p string) {
			if s, ok := d.str(v, p); ok {
				if s != ModeLive && s != ModeTest {
					d.errf(v, p, "want live or test, got %q", s)
				}
				e.mode = s
			}
		}},
		field{name: "missing", fn: func(v *yaml.Node, p string) {
			e.hasMiss = true
			v = resolve(v)
			if v.Kind != yaml.SequenceNode {
				d.errf(v, p, "want a list of placeholders such as [me.body.id], got %s", kindName(v))
				return
			}
			for j, c := range v.Content {
				if s, ok := d.str(c, index(p, j)); ok {
					e.missing = append(e.missing, strings.Trim(s, "{}"))
				}
			}
		}},
	)
	return e
}

// parseRequestSpec reads {method, path, host, header, cookie, body} into ex.
func (d *dec) parseRequestSpec(n *yaml.Node, path string, ex *Exchange) {
	ex.RequestHeader = http.Header{}
	var cookies []string
	structured := false
	d.mapping(n, path,
		field{name: "method", required: true, fn: func(v *yaml.Node, p string) {
			if s, ok := d.str(v, p); ok {
				ex.Method = strings.ToUpper(s)
			}
		}},
		field{name: "path", required: true, fn: func(v *yaml.Node, p string) {
			s, ok := d.str(v, p)
			if !ok {
				return
			}
			if !strings.HasPrefix(s, "/") {
				d.errf(v, p, "want a path starting with \"/\", got %q", s)
				return
			}
			pth, q, _ := strings.Cut(s, "?")
			if up, err := url.PathUnescape(pth); err == nil {
				pth = up
			}
			ex.Path, ex.RawQuery = pth, q
		}},
		field{name: "host", fn: func(v *yaml.Node, p string) { ex.Host, _ = d.str(v, p) }},
		field{name: "header", fn: func(v *yaml.Node, p string) { d.headerSpec(v, p, ex.RequestHeader) }},
		field{name: "cookie", fn: func(v *yaml.Node, p string) {
			keys, vals := d.pairs(v, p)
			for i, k := range keys {
				if s, ok := d.text(vals[i], join(p, k.Value)); ok {
					cookies = append(cookies, k.Value+"="+s)
				}
			}
		}},
		field{name: "body", fn: func(v *yaml.Node, p string) {
			ex.RequestBody, structured = d.bodySpec(v, p)
		}},
	)
	if len(cookies) > 0 {
		ex.RequestHeader.Set("Cookie", strings.Join(cookies, "; "))
	}
	if structured && ex.RequestHeader.Get("Content-Type") == "" {
		ex.RequestHeader.Set("Content-Type", "application/json")
	}
}

func (d *dec) parseResponseSpec(n *yaml.Node, path string, ex *Exchange) {
	ex.ResponseHeader = http.Header{}
	structured := false
	d.mapping(n, path,
		field{name: "status", fn: func(v *yaml.Node, p string) {
			if c, ok := d.intVal(v, p); ok {
				if c < 100 || c > 599 {
					d.errf(v, p, "want a status code from 100 to 599, got %d", c)
					return
				}
				ex.Status = c
			}
		}},
		field{name: "header", fn: func(v *yaml.Node, p string) { d.headerSpec(v, p, ex.ResponseHeader) }},
		field{name: "body", fn: func(v *yaml.Node, p string) { ex.ResponseBody, structured = d.bodySpec(v, p) }},
	)
	if structured && ex.ResponseHeader.Get("Content-Type") == "" {
		ex.ResponseHeader.Set("Content-Type", "application/json")
	}
}

func (d *dec) parseLookupResult(n *yaml.Node, path string, lr *LookupResult) {
	lr.Header = http.Header{}
	d.mapping(n, path,
		field{name: "status", fn: func(v *yaml.Node, p string) { lr.Status, _ = d.intVal(v, p) }},
		field{name: "header", fn: func(v *yaml.Node, p string) { d.headerSpec(v, p, lr.Header) }},
		field{name: "body", fn: func(v *yaml.Node, p string) { lr.Body, _ = d.bodySpec(v, p) }},
		field{name: "error", fn: func(v *yaml.Node, p string) {
			lr.Err, _ = d.str(v, p)
			lr.Status = 0
		}},
	)
}

func (d *dec) headerSpec(n *yaml.Node, path string, h http.Header) {
	keys, vals := d.pairs(n, path)
	for i, k := range keys {
		for _, item := range d.strOrList(vals[i], join(path, k.Value)) {
			if s, ok := d.text(item, join(path, k.Value)); ok {
				h.Add(k.Value, s)
			}
		}
	}
}

// bodySpec: a string is sent raw; anything else is sent as JSON.
func (d *dec) bodySpec(n *yaml.Node, path string) ([]byte, bool) {
	n = resolve(n)
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		return []byte(n.Value), false
	}
	b, _ := d.jsonValue(n, path)
	return b, true
}

// RunTests runs the inline tests of every file against the whole Set, in file order.
func (s *Set) RunTests() []TestResult {
	var out []TestResult
	for _, f := range s.files {
		for _, t := range f.tests {
			out = append(out, s.runTest(t))
		}
	}
	return out
}

// Tests returns the number of inline tests in the Set.
func (s *Set) Tests() int {
	n := 0
	for _, f := range s.files {
		n += len(f.tests)
	}
	return n
}

var testNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func (s *Set) runTest(t *Test) TestResult {
	res := TestResult{File: t.File, Line: t.Line, Name: t.Name}
	ex := t.ex // copy: lazily parsed state must not leak between runs
	events, errs := s.Evaluate(&ex, EmitOptions{Source: "test", Now: testNow})
	var problems []string
	for _, e := range errs {
		problems = append(problems, e.Error())
	}
	if len(events) != len(t.expect) {
		problems = append(problems, fmt.Sprintf("want %d event(s) %s, got %d %s", len(t.expect), expectTypes(t.expect), len(events), eventTypes(events)))
	} else {
		for i, ev := range events {
			want := t.expect[i]
			where := fmt.Sprintf("event %d (line %d)", i+1, want.line)
			if ev.Type != want.typ {
				problems = append(problems, fmt.Sprintf("%s: want type %q, got %q", where, want.typ, ev.Type))
			}
			if want.subject != nil && ev.Subject != *want.subject {
				problems = append(problems, fmt.Sprintf("%s: want subject %q, got %q", where, *want.subject, ev.Subject))
			}
			if want.tenant != nil && ev.Tenant != *want.tenant {
				problems = append(problems, fmt.Sprintf("%s: want tenant %q, got %q", where, *want.tenant, ev.Tenant))
			}
			if want.mode != "" && ev.Mode != want.mode {
				problems = append(problems, fmt.Sprintf("%s: want mode %q, got %q", where, want.mode, ev.Mode))
			}
			if want.data != nil && !JSONEqual(want.data, ev.Data) {
				problems = append(problems, fmt.Sprintf("%s: want data %s, got %s", where, want.data, ev.Data))
			}
			if want.previous != nil {
				got := []byte(ev.Previous)
				if got == nil {
					got = []byte("null")
				}
				if !JSONEqual(want.previous, got) {
					problems = append(problems, fmt.Sprintf("%s: want previous %s, got %s", where, want.previous, got))
				}
			}
			if want.hasMiss && !sameStrings(want.missing, ev.Source.Missing) {
				problems = append(problems, fmt.Sprintf("%s: want missing %q, got %q", where, want.missing, ev.Source.Missing))
			}
		}
	}
	res.Passed = len(problems) == 0
	res.Failure = strings.Join(problems, "; ")
	return res
}

func sameStrings(a, b []string) bool {
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	return reflect.DeepEqual(a, b)
}

func expectTypes(es []expectSpec) string {
	t := make([]string, len(es))
	for i, e := range es {
		t[i] = e.typ
	}
	return "[" + strings.Join(t, " ") + "]"
}

func eventTypes(es []Event) string {
	t := make([]string, len(es))
	for i, e := range es {
		t[i] = e.Type
	}
	return "[" + strings.Join(t, " ") + "]"
}

// JSONEqual reports whether two JSON texts hold the same value (object key
// order and number formatting aside).
func JSONEqual(a, b []byte) bool {
	var va, vb any
	da := json.NewDecoder(bytes.NewReader(a))
	da.UseNumber()
	db := json.NewDecoder(bytes.NewReader(b))
	db.UseNumber()
	if da.Decode(&va) != nil || db.Decode(&vb) != nil {
		return false
	}
	return reflect.DeepEqual(normNumbers(va), normNumbers(vb))
}

func normNumbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if f, err := strconv.ParseFloat(string(x), 64); err == nil {
			return f
		}
		return string(x)
	case map[string]any:
		for k, e := range x {
			x[k] = normNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = normNumbers(e)
		}
	}
	return v
}

// ParseRequest reads one request for `authtap rules test`: either JSON/YAML
// of the tests' request form ({method, path, host, header, cookie, body}) or a
// raw HTTP/1.1 request message.
func ParseRequest(name string, data []byte) (*Exchange, error) {
	ex := &Exchange{Status: 200}
	if looksLikeRawHTTP(data, false) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(normalizeCRLF(data))))
		if err != nil {
			return nil, fmt.Errorf("%s: reading raw HTTP request: %w", name, err)
		}
		body, err := io.ReadAll(req.Body)
		if err != nil && len(body) == 0 {
			return nil, fmt.Errorf("%s: reading raw HTTP request body: %w", name, err)
		}
		ex.Method, ex.Host, ex.Path, ex.RawQuery = req.Method, req.Host, req.URL.Path, req.URL.RawQuery
		ex.RequestHeader, ex.RequestBody = req.Header, body
		return ex, nil
	}
	d := &dec{file: name}
	n, err := parseDoc(name, data)
	if err != nil {
		return nil, err
	}
	d.parseRequestSpec(n, "request", ex)
	return ex, d.errs.err()
}

// ParseResponse reads one response for `authtap rules test` into ex: JSON/YAML
// of the tests' response form ({status, header, body}) or a raw HTTP response.
func ParseResponse(name string, data []byte, ex *Exchange) error {
	if looksLikeRawHTTP(data, true) {
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(normalizeCRLF(data))), nil)
		if err != nil {
			return fmt.Errorf("%s: reading raw HTTP response: %w", name, err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil && len(body) == 0 {
			return fmt.Errorf("%s: reading raw HTTP response body: %w", name, err)
		}
		ex.Status, ex.ResponseHeader, ex.ResponseBody = resp.StatusCode, resp.Header, body
		return nil
	}
	d := &dec{file: name}
	n, err := parseDoc(name, data)
	if err != nil {
		return err
	}
	d.parseResponseSpec(n, "response", ex)
	return d.errs.err()
}

func parseDoc(name string, data []byte) (*yaml.Node, error) {
	if len(data) > MaxFileSize {
		return nil, ErrorList{tooLargeError(name, int64(len(data)), data)}
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, ErrorList{yamlSyntaxError(name, err)}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, ErrorList{{File: name, Msg: "empty input: want a mapping or a raw HTTP message"}}
	}
	d := &dec{file: name}
	if !d.checkLimits(&doc) {
		return nil, d.errs.err()
	}
	return doc.Content[0], nil
}

func looksLikeRawHTTP(data []byte, response bool) bool {
	line, _, _ := bytes.Cut(bytes.TrimLeft(data, " \r\n"), []byte("\n"))
	line = bytes.TrimSpace(line)
	if response {
		return bytes.HasPrefix(line, []byte("HTTP/"))
	}
	return bytes.Contains(line, []byte(" HTTP/1.")) || bytes.HasSuffix(line, []byte(" HTTP/2"))
}

// normalizeCRLF makes a message typed with plain newlines acceptable to net/http,
// while leaving the body as written.
func normalizeCRLF(data []byte) []byte {
	data = bytes.TrimLeft(data, " \r\n")
	head, body, found := bytes.Cut(data, []byte("\r\n\r\n"))
	if !found {
		head, body, found = bytes.Cut(data, []byte("\n\n"))
	}
	head = bytes.ReplaceAll(bytes.ReplaceAll(head, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
	out := append(head, "\r\n\r\n"...)
	if found {
		out = append(out, body...)
		// a message written by hand rarely carries Content-Length; add it so the body is read
		if !bytes.Contains(bytes.ToLower(head), []byte("content-length:")) && !bytes.Contains(bytes.ToLower(head), []byte("transfer-encoding:")) && len(body) > 0 {
			out = append(head, []byte("\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")...)
			out = append(out, body...)
		}
	}
	return out
}
