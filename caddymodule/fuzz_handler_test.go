package caddymodule

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/andybalholm/brotli"
	"github.com/hibiken/asynq"
	"github.com/klauspost/compress/zstd"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/http/httpguts"

	"github.com/caddyserver/caddy/v2"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/rules/examples"
	"github.com/authtap/authtap/worker"
	"github.com/authtap/authtap/worker/tasks"
)

// FuzzHandler drives the whole "authtap" HTTP handler (ServeHTTP, with the
// upstream as a fake next handler and lookups answered by a loopback server)
// with a random request, a random upstream response and rules drawn from the
// example packs (rules/examples/*.yaml) plus a hostile pack, and checks, for
// every input:
//
//  1. the client receives exactly what the upstream wrote (informational and
//     final status, header snapshot, body bytes), and the upstream receives
//     exactly what the client sent (method, path, query, host, headers but
//     authtap's own X-Authtap-* marker, content length, body bytes and the
//     body's read error); the handler returns the upstream's error;
//  2. nothing panics, not even inside authtap's own recover (any Error-level
//     log line fails the input: a recovered panic or a lost event);
//  3. memory is bounded: the bytes allocated while serving stay under
//     fuzzMemBase + fuzzMemPerInputByte×(input bytes) +
//     fuzzMemPerMaxBody×max_body, and time under fuzzTimeBase +
//     fuzzTimePerMiB×(input MiB);
//  4. every queued event decodes in the worker exactly as the fan-out decodes
//     it: the event:fanout payload the app builds (tasks.AppendFanoutMessage)
//     parses back (tasks.ParseFanout) into the same event, its envelope
//     encodes, the webhook:deliver payload of both body formats builds
//     (worker.DeliverPayloadFor, tasks.DeliverMessage) and parses
//     (tasks.ParseDeliver); the same holds after the spool's round trip and
//     for the stored envelope a replay reads back. Its type is one the rule
//     declares and its source names the handler.
//
// The input is six values: ctl (bytes that choose the pack, rule, path
// template, method, status, max_body, encodings, content types, framing,
// lookup answer and body amplifiers; see fuzzCtl), params (path parameters
// separated by "|", then "?" and the query), the request header lines, the
// request body, the response header lines and the response body. The
// amplifiers turn a small body into a hostile shape (nesting 100,000 deep,
// 100,000 keys, duplicate keys, megabyte strings) so that the corpus stays
// small and the fuzzer can mutate what surrounds the shape.
//
// Seeds live in testdata/fuzz/FuzzHandler; they are written by
// TestWriteFuzzHandlerSeeds (AUTHTAP_FUZZ_WRITE_SEEDS=1) from fuzzSeeds.
// AUTHTAP_FUZZ_STATS=1 logs each input's allocation and time (with -v);
// Run: go test ./caddymodule -run '^$' -fuzz '^FuzzHandler$' -fuzztime 10m -parallel 1
func FuzzHandler(f *testing.F) {
	fz := newFuzzEnv(f)
	f.Fuzz(func(t *testing.T, ctl []byte, params, reqHdr string, reqBody []byte, respHdr string, respBody []byte) {
		fz.run(t, ctl, params, reqHdr, reqBody, respHdr, respBody)
	})
}

// Bounds the fuzz target holds the handler to. They are generous (a factor
// of several over what the handler needs on friendly input) so that they are
// stable on a loaded machine, and tight enough to catch a decoder that
// allocates a declared window (hundreds of MiB) or a quadratic algorithm.
const (
	// fuzzMemBase is the allocation allowed whatever the input: decoder
	// state, a lookup round trip, the event and its payload.
	fuzzMemBase = 4 << 20
	// fuzzMemPerInputByte is the allocation allowed per byte of input (both
	// bodies as sent, the lookup answer and the headers).
	fuzzMemPerInputByte = 24
	// fuzzMemPerMaxBody is the allocation allowed per byte of max_body: the
	// buffers a capture or a decoder fills up to max_body.
	fuzzMemPerMaxBody = 8
	// fuzzTimeBase and fuzzTimePerMiB bound the time one exchange takes.
	fuzzTimeBase   = 2 * time.Second
	fuzzTimePerMiB = 4 * time.Second
	// fuzzMaxAmplified caps the size an amplifier may make a body.
	fuzzMaxAmplified = 1300 << 10
)

// fuzzMaxBodies are the max_body values the handlers are provisioned with.
var fuzzMaxBodies = []int64{512, 64 << 10, DefaultMaxBody}

// fuzzHostilePack is a rule file made to stress rendering: catch-all rules
// that copy whole bodies, text templates holding objects, every placeholder
// kind, dedupe keys, chained lookups, and before-lookups whose answers feed
// later lookups' paths and headers.
const fuzzHostilePack = `version: 1
rules:
  - name: catch-all-body
    match: {method: "*", path: ["/{rest...}", "/"], status: 100-599}
    emit:
      - type: any.response
        subject: "{response.body.id}"
        data: "{response.body}"
      - type: any.request
        subject: "{request.body.id}"
        data: "{request.body}"
        dedupe: "{request.header.Idempotency-Key}"
      - type: any.text
        subject: "u={response.body.u}"
        data:
          text: "user={response.body.u} req={request.body}"
          header: "{request.header.X-Test}"
          cookie: "{request.cookie.sid}"
          query: "{request.query.q}"
          content_type: "{response.header.Content-Type}"
          status: "{response.status}"
          line: "{request.method} {request.host}{request.path}"
  - name: catch-all-lookup
    match: {method: [POST, PUT, PATCH, DELETE], path: "/lk/{rest...}"}
    lookup:
      - {get: "/lookup/{path.rest}?q={request.query.q}", as: first, timeout: 500ms}
      - {get: "/lookup/{first.body.id}/more", as: second, timeout: 500ms}
    emit:
      type: lookup.done
      subject: "{first.body.id}"
      data: {first: "{first.body}", second: "{second.body.user}", status: "{second.status}", all: "x{first.body}"}
  - name: catch-all-before
    match: {method: [POST, PUT, PATCH, DELETE], path: "/bl/{rest...}"}
    lookup:
      - {get: "/lookup/{path.rest}?q={request.query.q}", as: old, when: before, timeout: 500ms, header: {X-Tenant: "{request.header.X-Test}", Authorization: "Bearer {request.cookie.sid}"}}
      - {get: "/lookup/{old.body.id}/more", as: older, when: before, timeout: 500ms, header: {X-Old: "{old.body.user}"}}
      - {get: "/lookup/after/{response.body.id}", as: after, timeout: 500ms, header: {Authorization: "Bearer {response.body.token}", X-Old: "{old.body.id}"}}
    emit:
      type: before.done
      subject: "{old.body.id}"
      data: {old: "{old.body}", older: "{older.body.user}", after: "{after.status}", text: "was {old.body}"}
  - name: catch-all-funcs
    match: {method: "*", path: "/fn/{rest...}", status: 100-599}
    emit:
      type: funcs.read
      subject: "{jwt(request.header.Authorization).sub}"
      data:
        claims: "{jwt(request.body.token)}"
        cookie: "{jwt(request.cookie.sid).org.id}"
        location: "{last_segment(response.header.Location)}"
        id: '{match(response.header.Location, "/Users/([^/?]+)$")}'
        part: '{match(last_segment(jwt(request.body.token).url), "^(.{0,16})")}'
        text: "sub={jwt(request.body.token).sub} seg={last_segment(request.path)} claims={jwt(request.cookie.sid)}"
        form: "{request.body.email}"
`

// fuzzBatchPack is a rule file of batch envelopes and emits with each:
// SCIM /Bulk with string statuses, a $batch paired by id, a list of answers,
// sub-exchange rules with lookups (the exchange's lookup budget) and each
// (where, captures, then), and a catch-all each over any request list.
const fuzzBatchPack = `version: 1
rules:
  - name: scim-user-created
    match: {method: POST, path: /scim/v2/Users, status: 2xx}
    lookup: {get: "/lookup/{response.body.id}", as: user, timeout: 500ms}
    emit:
      type: user.created
      subject: "{response.body.id}"
      data: {id: "{response.body.id}", user: "{user.body}", location: "{response.header.Location}", all: "{request.body}"}
      dedupe: "{request.header.Idempotency-Key}"
  - name: scim-user-deleted
    match: {method: DELETE, path: "/scim/v2/Users/{id}"}
    lookup: {get: "/lookup/{path.id}", as: old, when: before, timeout: 500ms, header: {X-Op: "{request.query.op}"}}
    emit: {type: user.deleted, subject: "{path.id}", data: {old: "{old.body}"}}
  - name: scim-group-members
    match: {method: PATCH, path: "/scim/v2/Groups/{id}"}
    emit:
      - type: "group.member_{where.op}"
        types: [group.member_add, group.member_remove]
        each: {items: "{request.body.Operations}", where: {op: {regex: "^(?P<op>add|remove)$"}, path: members}, then: "{item.value}"}
        subject: "{path.id}"
        data: {member: "{item.value}", i: "{index}", whole: "{item}"}
      - type: group.member_removed
        each:
          items: "{request.body.Operations}"
          where: {path: {regex: '^members\[value eq "(?P<m>[^"]*)"\]$'}}
        data: {member: "{where.m}", text: "m={where.m} #{index} {item}"}
  - name: each-any
    match: {method: "*", path: "/each/{rest...}", status: 100-599}
    emit:
      type: each.element
      each: "{request.body.list}"
      subject: "{item.id}"
      data: "{item}"
      dedupe: "{request.header.Idempotency-Key}"
  - name: scim-bulk
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "{item.path}", body: "{item.data}"}
      response: {items: "{response.body.Operations}", status: "{item.status}", body: "{item.response}", location: "{item.location}"}
  - name: json-batch
    match: {method: POST, path: "/v1/{rest...}"}
    batch:
      atomic: true
      request: {items: "{request.body.requests}", id: "{item.id}", method: "{item.method}", url: "{item.url}", body: "{item.body}"}
      response: {items: "{response.body.responses}", id: "{item.id}", status: "{item.status}", body: "{item.body}"}
  - name: list-batch
    match: {method: POST, path: /batch}
    batch:
      request: {items: "{request.body.requests}", method: "{item.method}", url: "{item.url}", body: "{item.body}"}
      response: {items: "{response.body}", status: "{item.status}", body: "{item.body}"}
`

// fuzzPack is one rule file and the handlers provisioned on it, one per
// fuzzMaxBodies value.
type fuzzPack struct {
	name     string
	rules    []*rules.Rule
	handlers []*Handler
	// types maps a rule name to the event types it declares.
	types map[string][]string
}

// fuzzEnv is provisioned once per fuzzing process.
type fuzzEnv struct {
	packs  []*fuzzPack
	queue  *fuzzQueue
	logs   *fuzzLogCore
	lookup *httptest.Server
	// answer is what the lookup server replies to the input being run.
	answer atomic.Pointer[fuzzAnswer]
	// lookups records the lookup requests of the input being run.
	lookupMu    sync.Mutex
	lookupPaths []string
	// run serializes inputs: the queue, logs and lookup answer are per input.
	mu  sync.Mutex
	enc *fuzzEncoders
	// cov gives every handler coverage (on an in-memory store), so that
	// counting and sampling uncovered mutations are held to the same checks.
	cov *coverage
}

// fuzzCovQueue is the fuzz queue with coverage.
type fuzzCovQueue struct {
	*fuzzQueue
	cov *coverage
}

func (q fuzzCovQueue) coverage() *coverage { return q.cov }

// fuzzDeep is encoding/json's nesting limit, which the worker decodes with;
// the event:fanout and webhook:deliver payloads wrap an event's data in two
// levels, so data deeper than fuzzDeep-2 cannot reach a subscriber.
const fuzzDeep = 10000

type fuzzAnswer struct {
	status int
	body   []byte
}

func newFuzzEnv(f *testing.F) *fuzzEnv {
	fz := &fuzzEnv{queue: &fuzzQueue{}, logs: &fuzzLogCore{}, enc: newFuzzEncoders(f)}
	fz.cov = newCoverage(newFakeCovStore(), func() bool { return false })
	f.Cleanup(fz.cov.close)
	fz.lookup = httptest.NewServer(http.HandlerFunc(fz.serveLookup))
	f.Cleanup(fz.lookup.Close)

	dir := f.TempDir()
	names, err := fs.Glob(examples.FS, "*.yaml")
	if err != nil || len(names) == 0 {
		f.Fatalf("no example packs embedded: %v", err)
	}
	texts := map[string][]byte{}
	for _, n := range names {
		b, err := examples.FS.ReadFile(n)
		if err != nil {
			f.Fatal(err)
		}
		texts[n] = b
	}
	names = append(names, "hostile.yaml", "hostile-batch.yaml")
	texts["hostile.yaml"] = []byte(fuzzHostilePack)
	texts["hostile-batch.yaml"] = []byte(fuzzBatchPack)
	for _, n := range names {
		file := filepath.Join(dir, n)
		if err := os.WriteFile(file, texts[n], 0o600); err != nil {
			f.Fatal(err)
		}
		parsed, err := rules.Parse(n, texts[n])
		if err != nil {
			f.Fatalf("parsing %s: %v", n, err)
		}
		p := &fuzzPack{name: n, rules: parsed.Rules(), types: map[string][]string{}}
		for _, r := range p.rules {
			p.types[r.Name] = r.EventTypes()
		}
		for _, max := range fuzzMaxBodies {
			h := &Handler{Rules: []string{file}, ReloadInterval: -1, MaxBody: max, Source: "fuzz", LookupUpstream: fz.lookup.URL}
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			f.Cleanup(cancel)
			if err := h.provision(ctx, fuzzCovQueue{fz.queue, fz.cov}); err != nil {
				f.Fatalf("provisioning %s: %v", n, err)
			}
			f.Cleanup(func() { _ = h.Cleanup() })
			h.logger = zap.New(fz.logs)
			h.watch.logger = h.logger
			p.handlers = append(p.handlers, h)
		}
		fz.packs = append(fz.packs, p)
	}
	fz.warmUp(f)
	return fz
}

// warmUp runs one exchange per encoding, so that one-time initialisation
// (decoder tables, pools, connections) is not charged to the first input.
func (fz *fuzzEnv) warmUp(f *testing.F) {
	for enc := range fuzzEncodingCount {
		for pack := range fz.packs {
			in := fuzzCtl{pack: byte(pack), status: 1, encoding: byte(enc), maxBody: 2}
			fz.mu.Lock()
			c := fz.build(in.bytes(), "u_1", "Content-Type: application/json\n", []byte(`{"a":1}`), "", []byte(`{"id":"u_1","user":{"id":"u_1"}}`))
			fz.queue.reset()
			fz.logs.reset()
			rec := newWireRecorder()
			_ = c.handler.ServeHTTP(rec, c.request(), c.next(&fuzzSeen{}))
			fz.mu.Unlock()
		}
	}
	if errs := fz.logs.take(); len(errs) > 0 {
		f.Fatalf("warm-up logged errors: %v", errs)
	}
}

func (fz *fuzzEnv) serveLookup(w http.ResponseWriter, r *http.Request) {
	fz.lookupMu.Lock()
	fz.lookupPaths = append(fz.lookupPaths, r.URL.EscapedPath())
	fz.lookupMu.Unlock()
	a := fz.answer.Load()
	if a == nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	_, _ = w.Write(a.body)
}

// fuzzCtl is the decoded control input. Each field is one byte of ctl, in
// this order; a missing byte is 0.
type fuzzCtl struct {
	pack, rule, path, method byte
	status                   byte // index into fuzzStatuses; 240.. : 100 + 2×(b-240)… a raw code
	maxBody                  byte // index into fuzzMaxBodies
	encoding                 byte // fuzzEncoding
	zstdWindow               byte // window descriptor of the hand-built zstd frames
	respType                 byte // index into fuzzRespTypes
	respFlags                byte // fuzzResp* bits
	chunk                    byte // index into fuzzChunks
	reqType                  byte // index into fuzzReqTypes
	reqFlags                 byte // fuzzReq* bits
	lookupStatus             byte // index into fuzzLookupStatuses
	lookupBody               byte // 0: the response body, 1: the request body, 2: empty, 3: amplified
	respAmp                  byte // amplifier kind of the response body (fuzzAmp*)
	respAmpN1, respAmpN2     byte // amplifier count, big-endian, ×2
	reqAmp                   byte // amplifier kind of the request body
	reqAmpN1, reqAmpN2       byte
	zstdRLE                  byte // hand-built zstd: number of 128 KiB RLE blocks ×64
}

func parseCtl(b []byte) fuzzCtl {
	var c fuzzCtl
	fields := c.fields()
	for i, p := range fields {
		if i < len(b) {
			*p = b[i]
		}
	}
	return c
}

func (c *fuzzCtl) fields() []*byte {
	return []*byte{&c.pack, &c.rule, &c.path, &c.method, &c.status, &c.maxBody, &c.encoding, &c.zstdWindow,
		&c.respType, &c.respFlags, &c.chunk, &c.reqType, &c.reqFlags, &c.lookupStatus, &c.lookupBody,
		&c.respAmp, &c.respAmpN1, &c.respAmpN2, &c.reqAmp, &c.reqAmpN1, &c.reqAmpN2, &c.zstdRLE}
}

func (c fuzzCtl) bytes() []byte {
	var out []byte
	for _, p := range c.fields() {
		out = append(out, *p)
	}
	return out
}

var fuzzStatuses = []int{200, 201, 204, 202, 200, 201, 400, 404, 409, 422, 500, 206, 301, 304, 101, 299, 599, 201}

var fuzzMethods = []string{"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "PROPFIND"}

var fuzzRespTypes = []string{"application/json", "application/json; charset=utf-8", "", "text/plain",
	"text/event-stream", "application/problem+json", "text/html", "application/x-www-form-urlencoded"}

var fuzzReqTypes = []string{"application/json", "application/json; charset=utf-8", "application/x-www-form-urlencoded",
	"text/plain", "", "multipart/form-data; boundary=xyz", "application/vnd.api+json", "application/x-www-form-urlencoded; charset=\xff"}

var fuzzChunks = []int{0, 1, 7, 512, 4096, 65536, 3}

var fuzzLookupStatuses = []int{200, 200, 404, 500, 204, 302, 201}

// Response framing flags.
const (
	fuzzRespContentLength = 1 << iota // declare the body's length
	fuzzRespTrailer                   // announce a trailer (streams)
	fuzzRespImplicit                  // Write without WriteHeader (status 200)
	fuzzRespFlush                     // flush after every chunk
	fuzzRespError                     // next returns an error after writing
	fuzzRespReadFrom                  // io.Copy from a reader (ReadFrom)
	fuzzRespWrongLength               // declare a length one byte short
	fuzzRespEarlyHints                // 103 Early Hints before the final status
)

// Request flags.
const (
	fuzzReqChunked   = 1 << iota // unknown length
	fuzzReqReadError             // the body fails after its bytes
	fuzzReqRawPath               // params is the whole path, not template values
	fuzzReqHost                  // a host with a port
)

// Response encodings.
const (
	fuzzEncIdentity = iota
	fuzzEncGzip
	fuzzEncXGzip
	fuzzEncZlib
	fuzzEncFlate
	fuzzEncZstd
	fuzzEncBrotli
	fuzzEncBrGzip // br, then gzip: "br, gzip"
	fuzzEncGarbageGzip
	fuzzEncGarbageZstd
	fuzzEncGarbageBrotli
	fuzzEncGarbageDeflate
	fuzzEncUnknown
	fuzzEncIdentityNamed
	fuzzEncZstdFrame // hand-built frame: window descriptor from ctl, raw or RLE blocks
	fuzzEncodingCount
)

// Body amplifiers: kinds 0–9 leave the body alone.
const (
	fuzzAmpNestArrays = 10 + iota
	fuzzAmpNestObjects
	fuzzAmpManyKeys
	fuzzAmpDuplicateKeys
	fuzzAmpLongString
	fuzzAmpRepeat
	fuzzAmpKinds = 16
)

// fuzzCase is one input, built.
type fuzzCase struct {
	fz      *fuzzEnv
	ctl     fuzzCtl
	pack    *fuzzPack
	handler *Handler
	maxBody int64

	method, host, path, query string
	reqHeader                 http.Header
	reqBody                   []byte

	status    int
	header    http.Header
	body      []byte // as sent, encoded
	plain     []byte // before encoding
	answer    fuzzAnswer
	nextErr   error
	inputSize int
}

var errFuzzUpstream = errors.New("fuzz: upstream failed")
var errFuzzClientBody = errors.New("fuzz: client went away")

func (fz *fuzzEnv) build(ctlBytes []byte, params, reqHdr string, reqBody []byte, respHdr string, respBody []byte) *fuzzCase {
	ctl := parseCtl(ctlBytes)
	c := &fuzzCase{fz: fz, ctl: ctl}
	c.pack = fz.packs[int(ctl.pack)%len(fz.packs)]
	mi := int(ctl.maxBody) % len(fuzzMaxBodies)
	c.handler, c.maxBody = c.pack.handlers[mi], fuzzMaxBodies[mi]

	// request line
	query := ""
	if i := strings.IndexByte(params, '?'); i >= 0 {
		params, query = params[:i], params[i+1:]
	}
	c.query = query
	rule := c.pack.rules[int(ctl.rule)%len(c.pack.rules)]
	methods := rule.Methods()
	c.method = methods[int(ctl.method)%len(methods)]
	if c.method == "*" {
		c.method = fuzzMethods[int(ctl.method)%len(fuzzMethods)]
	}
	if ctl.reqFlags&fuzzReqRawPath != 0 {
		c.path = params
		if !strings.HasPrefix(c.path, "/") {
			c.path = "/" + c.path
		}
	} else {
		paths := rule.Paths()
		c.path = fillTemplate(paths[int(ctl.path)%len(paths)], strings.Split(params, "|"))
	}
	c.host = "auth.example.test"
	if ctl.reqFlags&fuzzReqHost != 0 {
		c.host = "auth.example.test:8443"
	}

	// request headers and body
	c.reqHeader = parseHeaderLines(reqHdr)
	if ct := fuzzReqTypes[int(ctl.reqType)%len(fuzzReqTypes)]; ct != "" {
		c.reqHeader.Set("Content-Type", ct)
	}
	if h := c.reqHeader.Get("Host"); h != "" {
		c.host = h
	}
	c.reqHeader.Del("Host")
	c.reqBody = amplify(ctl.reqAmp, ctl.reqAmpN1, ctl.reqAmpN2, reqBody)

	// response
	switch s := int(ctl.status); {
	case s >= 240:
		c.status = 200 + (s-240)*25 // 200..575
	default:
		c.status = fuzzStatuses[s%len(fuzzStatuses)]
	}
	c.plain = amplify(ctl.respAmp, ctl.respAmpN1, ctl.respAmpN2, respBody)
	c.header = parseHeaderLines(respHdr)
	if ct := fuzzRespTypes[int(ctl.respType)%len(fuzzRespTypes)]; ct != "" {
		c.header.Set("Content-Type", ct)
	}
	if _, ok := c.header["Content-Type"]; !ok {
		// As a proxied upstream's response does, and so that no recorder
		// sniffs a type from whatever the first write holds.
		c.header["Content-Type"] = nil
	}
	coding, body := fz.enc.encode(int(ctl.encoding)%fuzzEncodingCount, c.plain, ctl.zstdWindow, ctl.zstdRLE)
	if coding != "" {
		c.header.Add("Content-Encoding", coding)
	}
	c.body = body
	if ctl.respFlags&fuzzRespContentLength != 0 {
		c.header.Set("Content-Length", strconv.Itoa(len(c.body)))
	}
	if ctl.respFlags&fuzzRespWrongLength != 0 && len(c.body) > 0 {
		c.header.Set("Content-Length", strconv.Itoa(len(c.body)-1))
	}
	if ctl.respFlags&fuzzRespTrailer != 0 {
		c.header.Set("Trailer", "X-Checksum")
	}
	if ctl.respFlags&fuzzRespError != 0 {
		c.nextErr = errFuzzUpstream
	}

	// lookup answer
	c.answer.status = fuzzLookupStatuses[int(ctl.lookupStatus)%len(fuzzLookupStatuses)]
	switch ctl.lookupBody % 4 {
	case 0:
		c.answer.body = c.plain
	case 1:
		c.answer.body = c.reqBody
	case 3:
		c.answer.body = amplify(fuzzAmpNestArrays+ctl.lookupBody/4%(fuzzAmpKinds-fuzzAmpNestArrays), ctl.respAmpN1, ctl.respAmpN2, respBody)
	}

	c.inputSize = len(c.reqBody) + len(c.body) + len(c.plain) + len(c.answer.body) + len(reqHdr) + len(respHdr) + len(params)
	return c
}

// request builds the client's request (a new one for each run).
func (c *fuzzCase) request() *http.Request {
	var body io.Reader = bytes.NewReader(c.reqBody)
	length := int64(len(c.reqBody))
	if c.ctl.reqFlags&fuzzReqReadError != 0 {
		body = io.MultiReader(body, fuzzErrReader{})
		length = -1
	}
	if c.ctl.reqFlags&fuzzReqChunked != 0 {
		body = fuzzStream{body}
		length = -1
	}
	r := httptest.NewRequest(http.MethodGet, "/", body)
	r.Method = c.method
	r.Host = c.host
	r.URL.Path, r.URL.RawPath, r.URL.RawQuery = c.path, "", c.query
	r.RequestURI = r.URL.RequestURI()
	r.Header = c.reqHeader.Clone()
	r.ContentLength = length
	if len(c.reqBody) == 0 && length == 0 {
		r.Body = http.NoBody
	}
	repl := caddy.NewReplacer()
	return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
}

// fuzzSeen is what the upstream received.
type fuzzSeen struct {
	called                    bool
	method, host, path, query string
	header                    http.Header
	length                    int64
	body                      []byte
	bodyErr                   error
}

// next is the upstream: it records the request and writes the response the
// way a proxied upstream does.
func (c *fuzzCase) next(seen *fuzzSeen) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		seen.called = true
		seen.method, seen.host, seen.path, seen.query = r.Method, r.Host, r.URL.Path, r.URL.RawQuery
		seen.header = r.Header.Clone()
		seen.length = r.ContentLength
		if r.Body != nil {
			seen.body, seen.bodyErr = io.ReadAll(r.Body)
			_ = r.Body.Close()
		}
		maps.Copy(w.Header(), c.header)
		flags := c.ctl.respFlags
		if flags&fuzzRespEarlyHints != 0 {
			w.WriteHeader(http.StatusEarlyHints)
		}
		if flags&fuzzRespImplicit == 0 || c.status != http.StatusOK {
			w.WriteHeader(c.status)
		}
		if flags&fuzzRespReadFrom != 0 {
			if _, err := io.Copy(w, fuzzStream{bytes.NewReader(c.body)}); err != nil {
				return err
			}
		} else {
			chunk := fuzzChunks[int(c.ctl.chunk)%len(fuzzChunks)]
			rest := c.body
			for len(rest) > 0 {
				n := len(rest)
				if chunk > 0 && chunk < n {
					n = chunk
				}
				if _, err := w.Write(rest[:n]); err != nil {
					return err
				}
				rest = rest[n:]
				if flags&fuzzRespFlush != 0 {
					if err := http.NewResponseController(w).Flush(); err != nil {
						return err
					}
				}
			}
		}
		return c.nextErr
	}
}

// run runs one input: once straight into the upstream (what the client
// would get without authtap), once through the handler, and compares.
func (fz *fuzzEnv) run(t *testing.T, ctl []byte, params, reqHdr string, reqBody []byte, respHdr string, respBody []byte) {
	fz.mu.Lock()
	defer fz.mu.Unlock()
	c := fz.build(ctl, params, reqHdr, reqBody, respHdr, respBody)

	want := newWireRecorder()
	var wantSeen fuzzSeen
	wantErr := c.next(&wantSeen)(want, c.request())

	fz.queue.reset()
	fz.logs.reset()
	fz.lookupMu.Lock()
	fz.lookupPaths = fz.lookupPaths[:0]
	fz.lookupMu.Unlock()
	fz.answer.Store(&c.answer)
	got := newWireRecorder()
	var gotSeen fuzzSeen
	req, next := c.request(), c.next(&gotSeen)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	gotErr := c.handler.ServeHTTP(got, req, next)
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	fz.answer.Store(nil)

	desc := c.describe()
	// (b) no panic, no lost event
	if errs := fz.logs.take(); len(errs) > 0 {
		t.Fatalf("%s: the handler logged errors:\n%s", desc, strings.Join(errs, "\n"))
	}
	// (a) the client's and the upstream's bytes
	if !errors.Is(gotErr, wantErr) || (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("%s: handler returned %v, the upstream %v", desc, gotErr, wantErr)
	}
	if d := want.diff(got); d != "" {
		t.Fatalf("%s: the client's response changed: %s", desc, d)
	}
	if d := wantSeen.diff(&gotSeen); d != "" {
		t.Fatalf("%s: the upstream's request changed: %s", desc, d)
	}
	// (c) memory and time
	alloc := after.TotalAlloc - before.TotalAlloc
	allowed := uint64(fuzzMemBase + fuzzMemPerInputByte*int64(c.inputSize) + fuzzMemPerMaxBody*c.maxBody)
	if alloc > allowed {
		t.Fatalf("%s: serving allocated %d bytes, more than the %d allowed for %d input bytes and max_body %d",
			desc, alloc, allowed, c.inputSize, c.maxBody)
	}
	if limit := fuzzTimeBase + time.Duration(float64(fuzzTimePerMiB)*float64(c.inputSize)/(1<<20)); took > limit {
		t.Fatalf("%s: serving took %v, more than the %v allowed for %d input bytes", desc, took, limit, c.inputSize)
	}
	fz.lookupMu.Lock()
	paths := slices.Clone(fz.lookupPaths)
	fz.lookupMu.Unlock()
	for _, p := range paths {
		for _, seg := range strings.Split(p, "/") {
			if seg == "." || seg == ".." {
				t.Fatalf("%s: a lookup went to %q, with a dot segment from a placeholder", desc, p)
			}
		}
	}
	// (d) every queued event decodes in the worker
	queued := fz.queue.take()
	if os.Getenv("AUTHTAP_FUZZ_STATS") != "" {
		fz.lookupMu.Lock()
		t.Logf("%s: allocated %d bytes in %v for %d input bytes; %d events, lookups %q",
			desc, alloc, took, c.inputSize, len(queued), fz.lookupPaths)
		fz.lookupMu.Unlock()
	}
	if wantErr != nil && len(queued) > 0 {
		t.Fatalf("%s: the upstream failed, yet %d events were queued", desc, len(queued))
	}
	for _, q := range queued {
		if err := c.checkEvent(q); err != nil {
			t.Fatalf("%s: queued event %s (%s, rule %s, %d bytes of data): %v", desc, q.ev.ID, truncate(q.ev.Type, 80), q.ev.Source.Rule, len(q.ev.Data), err)
		}
	}
}

var errFuzzUndecodable = errors.New("the worker cannot decode it")

// checkEvent decodes one queued event the way the worker does.
func (c *fuzzCase) checkEvent(q fuzzQueued) error {
	ev := q.ev
	if q.err != nil {
		return fmt.Errorf("the app cannot build its event:fanout payload: %w (%w)", q.err, errFuzzUndecodable)
	}
	if !strings.HasPrefix(ev.ID, "evt_") {
		return fmt.Errorf("id %q is not evt_…", ev.ID)
	}
	declared, ok := c.pack.types[ev.Source.Rule]
	if !ok {
		return fmt.Errorf("source.rule %q is no rule of %s", ev.Source.Rule, c.pack.name)
	}
	if !slices.ContainsFunc(declared, func(d string) bool { return d == ev.Type || strings.Contains(d, "{") }) {
		return fmt.Errorf("type %q is none of the rule's declared types %q", truncate(ev.Type, 80), declared)
	}
	if ev.Source.Name != c.handler.Source {
		return fmt.Errorf("source.name %q, want %q", ev.Source.Name, c.handler.Source)
	}
	if ev.Mode != rules.ModeLive && ev.Mode != rules.ModeTest {
		return fmt.Errorf("mode %q", ev.Mode)
	}
	if len(ev.Data) > 0 && !json.Valid(ev.Data) {
		return fmt.Errorf("data is not valid JSON (%w)", errFuzzUndecodable)
	}
	// the fan-out, from the payload the app queued
	decoded, err := fanOut(q.payload)
	if err != nil {
		return err
	}
	if err := sameEvent(ev, decoded); err != nil {
		return fmt.Errorf("the fan-out decoded another event: %w", err)
	}
	// the spool: json.Marshal on append, json.Unmarshal on replay, then queued again
	spooled, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("the spool cannot encode it: %w (%w)", err, errFuzzUndecodable)
	}
	var back rules.Event
	if err := json.Unmarshal(spooled, &back); err != nil {
		return fmt.Errorf("the spool cannot read it back: %w (%w)", err, errFuzzUndecodable)
	}
	m, err := tasks.FanoutMessage(back)
	if err != nil {
		return fmt.Errorf("a replayed event cannot be queued: %w (%w)", err, errFuzzUndecodable)
	}
	replayed, err := fanOut(m.Payload)
	if err != nil {
		return fmt.Errorf("replayed from the spool: %w", err)
	}
	if err := sameEvent(ev, replayed); err != nil {
		return fmt.Errorf("replayed from the spool: %w", err)
	}
	return nil
}

// fanOut does with an event:fanout payload what worker's fan-out does: parse
// it, encode the envelope (kept for replays, read back by them), and build
// and parse the webhook:deliver task of each body format. It returns the
// decoded event.
func fanOut(payload []byte) (rules.Event, error) {
	p, err := tasks.ParseFanout(asynq.NewTask(tasks.TypeFanout, payload))
	if err != nil {
		return rules.Event{}, fmt.Errorf("fan-out: %w (%w)", err, errFuzzUndecodable)
	}
	ev := p.Event
	envelope, err := ev.Envelope()
	if err != nil {
		return ev, fmt.Errorf("fan-out: encoding envelope: %w (%w)", err, errFuzzUndecodable)
	}
	var stored rules.Event
	if err := json.Unmarshal(envelope, &stored); err != nil {
		return ev, fmt.Errorf("replay: reading the stored envelope: %w (%w)", err, errFuzzUndecodable)
	}
	for _, format := range []string{worker.FormatEnvelope, worker.FormatData} {
		dp, err := worker.DeliverPayloadFor(ev, worker.Endpoint{ID: "ep_fuzz", Format: format}, false)
		if err != nil {
			return ev, fmt.Errorf("fan-out: %s body: %w (%w)", format, err, errFuzzUndecodable)
		}
		dm, err := tasks.DeliverMessage(dp, 3, time.Hour)
		if err != nil {
			return ev, fmt.Errorf("fan-out: %s delivery task: %w (%w)", format, err, errFuzzUndecodable)
		}
		back, err := tasks.ParseDeliver(asynq.NewTask(dm.Type, dm.Payload))
		if err != nil {
			return ev, fmt.Errorf("delivery: %s payload: %w (%w)", format, err, errFuzzUndecodable)
		}
		if back.EventID != ev.ID || back.EventType != ev.Type || !sameJSON(back.Body, dp.Body) {
			return ev, fmt.Errorf("delivery: the %s payload reads back as %s/%s, another body", format, back.EventID, truncate(back.EventType, 80))
		}
	}
	return ev, nil
}

// sameEvent compares a decoded event with the one queued. The queued
// event's strings are compared as JSON carries them: invalid UTF-8 becomes
// U+FFFD on the wire, as encoding/json writes it.
func sameEvent(want, got rules.Event) error {
	want.Type, want.Subject, want.Mode = wireString(want.Type), wireString(want.Subject), wireString(want.Mode)
	want.Source.Name, want.Source.Rule = wireString(want.Source.Name), wireString(want.Source.Rule)
	want.Source.Missing = slices.Clone(want.Source.Missing)
	for i, m := range want.Source.Missing {
		want.Source.Missing[i] = wireString(m)
	}
	switch {
	case got.ID != want.ID:
		return fmt.Errorf("id %q, want %q", got.ID, want.ID)
	case got.Type != want.Type:
		return fmt.Errorf("type %q, want %q", truncate(got.Type, 80), truncate(want.Type, 80))
	case got.Subject != want.Subject:
		return fmt.Errorf("subject %q, want %q", truncate(got.Subject, 80), truncate(want.Subject, 80))
	case got.Mode != want.Mode:
		return fmt.Errorf("mode %q, want %q", got.Mode, want.Mode)
	case got.Source.Name != want.Source.Name || got.Source.Rule != want.Source.Rule:
		return fmt.Errorf("source %+v, want %+v", got.Source, want.Source)
	case !slices.Equal(got.Source.Missing, want.Source.Missing):
		return fmt.Errorf("source.missing %q, want %q", got.Source.Missing, want.Source.Missing)
	case !got.Timestamp.Equal(want.Timestamp.Truncate(time.Millisecond)):
		return fmt.Errorf("timestamp %v, want %v", got.Timestamp, want.Timestamp)
	case got.DedupeWindow != want.DedupeWindow:
		return fmt.Errorf("dedupe window %v, want %v", got.DedupeWindow, want.DedupeWindow)
	}
	wd, gd := want.Data, got.Data
	if len(wd) == 0 {
		wd = json.RawMessage("null")
	}
	if !sameJSON(gd, wd) {
		return fmt.Errorf("data %s, want %s", truncate(string(gd), 200), truncate(string(wd), 200))
	}
	return nil
}

// sameJSON reports whether a and b are the same JSON value. Both sides come
// from encoders that differ at most in spacing and HTML escaping, so a linear
// comparison of their compact, escaped forms decides; only when that differs
// does the slower rules.JSONEqual have the last word.
func sameJSON(a, b []byte) bool {
	canon := func(v []byte) []byte {
		var c, e bytes.Buffer
		if json.Compact(&c, v) != nil {
			return nil
		}
		json.HTMLEscape(&e, c.Bytes())
		return e.Bytes()
	}
	ca, cb := canon(a), canon(b)
	if ca != nil && bytes.Equal(ca, cb) {
		return true
	}
	return rules.JSONEqual(a, b)
}

// wireString is s as a JSON string decodes: each byte of invalid UTF-8
// replaced by U+FFFD.
func wireString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		b.WriteRune(r) // utf8.RuneError for an invalid byte
		i += size
	}
	return b.String()
}

func (c *fuzzCase) describe() string {
	return fmt.Sprintf("pack %s, %s %s (query %d bytes), max_body %d, status %d, %s, %d request / %d response body bytes",
		c.pack.name, c.method, truncate(strconv.Quote(c.path), 80), len(c.query), c.maxBody, c.status,
		truncate(fmt.Sprint(c.header["Content-Encoding"]), 40), len(c.reqBody), len(c.body))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("…(%d bytes)", len(s))
}

// nestingDepth is the deepest [ or { nesting of b, strings ignored.
func nestingDepth(b []byte) int {
	depth, deepest, inString, escaped := 0, 0, false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			depth++
			deepest = max(deepest, depth)
		case c == ']' || c == '}':
			depth = max(depth-1, 0)
		}
	}
	return deepest
}

// fillTemplate fills a path template's parameters with values in order.
func fillTemplate(tmpl string, values []string) string {
	if tmpl == "/" {
		return tmpl
	}
	segs := strings.Split(tmpl[1:], "/")
	next := 0
	for i, s := range segs {
		if !strings.HasPrefix(s, "{") || !strings.HasSuffix(s, "}") {
			continue
		}
		v := ""
		if next < len(values) {
			v = values[next]
		}
		next++
		if v == "" {
			v = "p" + strconv.Itoa(next)
		}
		segs[i] = v
	}
	return "/" + strings.Join(segs, "/")
}

// parseHeaderLines reads "Name: value" lines; lines a server would refuse
// (an invalid name or value) are left out.
func parseHeaderLines(text string) http.Header {
	h := http.Header{}
	for _, line := range strings.Split(text, "\n") {
		name, value, ok := strings.Cut(strings.TrimSuffix(line, "\r"), ":")
		if !ok || !httpguts.ValidHeaderFieldName(name) {
			continue
		}
		value = strings.TrimLeft(value, " \t")
		if !httpguts.ValidHeaderFieldValue(value) {
			continue
		}
		name = textproto.CanonicalMIMEHeaderKey(name)
		if name == "Content-Length" || name == "Transfer-Encoding" {
			continue // framing is the recorder's, set from the flags
		}
		h[name] = append(h[name], value)
	}
	return h
}

// amplify turns body into a hostile shape of about n elements.
func amplify(kind, n1, n2 byte, body []byte) []byte {
	kind %= fuzzAmpKinds
	if kind < fuzzAmpNestArrays {
		return body
	}
	n := int(binary.BigEndian.Uint16([]byte{n1, n2})) * 2
	var b bytes.Buffer
	room := func() bool { return b.Len() < fuzzMaxAmplified }
	core := body
	if len(core) == 0 {
		core = []byte("1")
	}
	switch kind {
	case fuzzAmpNestArrays, fuzzAmpNestObjects:
		open, close := "[", "]"
		if kind == fuzzAmpNestObjects {
			open, close = `{"a":`, "}"
		}
		depth := 0
		for ; depth < n && room(); depth++ {
			b.WriteString(open)
		}
		b.Write(core)
		for range depth {
			b.WriteString(close)
		}
	case fuzzAmpManyKeys, fuzzAmpDuplicateKeys:
		b.WriteByte('{')
		for i := 0; i < n && room(); i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			// short keys, so that 100,000 of them fit in 1 MiB
			switch {
			case kind == fuzzAmpDuplicateKeys:
				b.WriteString(`"id":`)
			case i%7 == 3:
				b.WriteString(`"token` + strconv.FormatInt(int64(i), 36) + `":`)
			default:
				b.WriteString(`"` + strconv.FormatInt(int64(i), 36) + `":`)
			}
			if i%1000 == 0 || kind == fuzzAmpDuplicateKeys {
				b.Write(core)
			} else {
				b.WriteByte('0' + byte(i%10))
			}
		}
		b.WriteByte('}')
	case fuzzAmpLongString:
		b.WriteString(`{"id":"`)
		for i := 0; i < n && room(); i++ {
			b.Write(core)
		}
		b.WriteString(`","u":{"password":"p"}}`)
	case fuzzAmpRepeat:
		for i := 0; i < n && room(); i++ {
			b.Write(core)
		}
	}
	return b.Bytes()
}

// fuzzEncoders compress response bodies; one set per process, reused.
type fuzzEncoders struct {
	buf  bytes.Buffer
	gz   *gzip.Writer
	zl   *zlib.Writer
	fl   *flate.Writer
	zs   *zstd.Encoder
	br   *brotli.Writer
	junk []byte
}

func newFuzzEncoders(f *testing.F) *fuzzEncoders {
	e := &fuzzEncoders{}
	var err error
	e.gz, _ = gzip.NewWriterLevel(&e.buf, gzip.BestSpeed)
	e.zl, _ = zlib.NewWriterLevel(&e.buf, zlib.BestSpeed)
	e.fl, _ = flate.NewWriter(&e.buf, flate.BestSpeed)
	if e.zs, err = zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithWindowSize(1<<17)); err != nil {
		f.Fatal(err)
	}
	e.br = brotli.NewWriterLevel(&e.buf, 1)
	return e
}

func (e *fuzzEncoders) stream(w interface {
	io.Writer
	Close() error
}, reset func(), plain []byte) []byte {
	e.buf.Reset()
	reset()
	_, _ = w.Write(plain)
	_ = w.Close()
	return bytes.Clone(e.buf.Bytes())
}

// encode returns the Content-Encoding and the body as sent.
func (e *fuzzEncoders) encode(enc int, plain []byte, window, rle byte) (string, []byte) {
	switch enc {
	case fuzzEncGzip, fuzzEncXGzip:
		name := "gzip"
		if enc == fuzzEncXGzip {
			name = "x-gzip"
		}
		return name, e.stream(e.gz, func() { e.gz.Reset(&e.buf) }, plain)
	case fuzzEncZlib:
		return "deflate", e.stream(e.zl, func() { e.zl.Reset(&e.buf) }, plain)
	case fuzzEncFlate:
		return "deflate", e.stream(e.fl, func() { e.fl.Reset(&e.buf) }, plain)
	case fuzzEncZstd:
		return "zstd", e.zs.EncodeAll(plain, nil)
	case fuzzEncBrotli:
		return "br", e.stream(e.br, func() { e.br.Reset(&e.buf) }, plain)
	case fuzzEncBrGzip:
		inner := e.stream(e.br, func() { e.br.Reset(&e.buf) }, plain)
		return "br, gzip", e.stream(e.gz, func() { e.gz.Reset(&e.buf) }, inner)
	case fuzzEncGarbageGzip:
		return "gzip", plain
	case fuzzEncGarbageZstd:
		return "zstd", plain
	case fuzzEncGarbageBrotli:
		return "br", plain
	case fuzzEncGarbageDeflate:
		return "deflate", plain
	case fuzzEncUnknown:
		return "compress", plain
	case fuzzEncIdentityNamed:
		return "identity", plain
	case fuzzEncZstdFrame:
		return "zstd", zstdFuzzFrame(plain, window, int(rle)*64)
	}
	return "", plain
}

// zstdFuzzFrame builds a zstd frame by hand: the window descriptor wd (the
// window is 2^(10+wd>>3) plus wd&7 eighths: 0x98 declares 512 MiB), no
// content size, the plain bytes in raw blocks, then rle run-length blocks of
// 128 KiB each (a few bytes that decode to rle×128 KiB).
func zstdFuzzFrame(plain []byte, wd byte, rle int) []byte {
	out := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, wd}
	exp := int(wd >> 3)
	window := 1 << min(10+exp, 30)
	window += window / 8 * int(wd&7)
	block := min(window, 128<<10)
	header := func(size, typ int, last bool) {
		v := size<<3 | typ<<1
		if last {
			v |= 1
		}
		out = append(out, byte(v), byte(v>>8), byte(v>>16))
	}
	for len(plain) > 0 || rle == 0 {
		n := min(len(plain), block)
		header(n, 0, n == len(plain) && rle == 0)
		out = append(out, plain[:n]...)
		plain = plain[n:]
		if len(plain) == 0 {
			break
		}
	}
	for i := range rle {
		header(block, 1, i == rle-1)
		out = append(out, 'a')
	}
	return out
}

type fuzzErrReader struct{}

func (fuzzErrReader) Read([]byte) (int, error) { return 0, errFuzzClientBody }

// fuzzStream hides every method but Read (a body of unknown length).
type fuzzStream struct{ io.Reader }

// fuzzQueue is the in-memory app: it builds the event:fanout payload exactly
// as App.Enqueue does before handing it to Redis, and keeps it.
type fuzzQueue struct {
	mu     sync.Mutex
	queued []fuzzQueued
}

type fuzzQueued struct {
	ev      rules.Event
	payload []byte
	err     error
}

func (q *fuzzQueue) Enqueue(_ context.Context, ev rules.Event) (Outcome, error) {
	m, err := tasks.AppendFanoutMessage(nil, ev)
	q.mu.Lock()
	defer q.mu.Unlock()
	q.queued = append(q.queued, fuzzQueued{ev: ev, payload: m.Payload, err: err})
	return Queued, nil
}

func (q *fuzzQueue) reset() {
	q.mu.Lock()
	q.queued = nil
	q.mu.Unlock()
}

func (q *fuzzQueue) take() []fuzzQueued {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.queued
	q.queued = nil
	return out
}

// fuzzLogCore keeps the Error-level entries (a recovered panic, a lost
// event) of the input being run; lower levels are dropped unencoded.
type fuzzLogCore struct {
	mu   sync.Mutex
	errs []string
}

func (c *fuzzLogCore) Enabled(l zapcore.Level) bool      { return l >= zapcore.ErrorLevel }
func (c *fuzzLogCore) With([]zapcore.Field) zapcore.Core { return c }
func (c *fuzzLogCore) Sync() error                       { return nil }

func (c *fuzzLogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *fuzzLogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	line := e.Message
	for _, k := range slices.Sorted(maps.Keys(enc.Fields)) {
		line += fmt.Sprintf("\n  %s: %v", k, enc.Fields[k])
	}
	c.mu.Lock()
	c.errs = append(c.errs, line)
	c.mu.Unlock()
	return nil
}

func (c *fuzzLogCore) reset() {
	c.mu.Lock()
	c.errs = nil
	c.mu.Unlock()
}

func (c *fuzzLogCore) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.errs
	c.errs = nil
	return out
}

// wireRecorder records what a server puts on the wire for a handler:
// informational statuses, the final status with the header as it was then,
// and the body. (httptest.ResponseRecorder takes a 103 for the final status.)
type wireRecorder struct {
	header  http.Header
	infos   []int
	status  int
	snap    http.Header
	body    bytes.Buffer
	flushes int
}

func newWireRecorder() *wireRecorder { return &wireRecorder{header: http.Header{}} }

func (w *wireRecorder) Header() http.Header { return w.header }

func (w *wireRecorder) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		w.infos = append(w.infos, code)
		return
	}
	w.status = code
	w.snap = w.header.Clone()
}

func (w *wireRecorder) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

func (w *wireRecorder) Flush() {
	w.WriteHeader(http.StatusOK)
	w.flushes++
}

// diff describes how got differs from w; empty when it does not.
func (w *wireRecorder) diff(got *wireRecorder) string {
	switch {
	case !slices.Equal(w.infos, got.infos):
		return fmt.Sprintf("informational statuses %v, want %v", got.infos, w.infos)
	case w.status != got.status:
		return fmt.Sprintf("status %d, want %d", got.status, w.status)
	case !reflect.DeepEqual(w.snap, got.snap):
		return fmt.Sprintf("header %v, want %v", got.snap, w.snap)
	case !bytes.Equal(w.body.Bytes(), got.body.Bytes()):
		return fmt.Sprintf("body of %d bytes, want the %d the upstream wrote", got.body.Len(), w.body.Len())
	}
	return ""
}

// diff describes how got differs from s (authtap's own marker headers aside).
func (s *fuzzSeen) diff(got *fuzzSeen) string {
	strip := func(h http.Header) http.Header {
		h = h.Clone()
		for k := range h {
			if strings.HasPrefix(k, "X-Authtap-") {
				delete(h, k)
			}
		}
		return h
	}
	switch {
	case s.called != got.called:
		return fmt.Sprintf("upstream called %v, want %v", got.called, s.called)
	case s.method != got.method || s.host != got.host || s.path != got.path || s.query != got.query:
		return fmt.Sprintf("request line %s %s%s?%s, want %s %s%s?%s", got.method, got.host, got.path, got.query, s.method, s.host, s.path, s.query)
	case !reflect.DeepEqual(strip(s.header), strip(got.header)):
		return fmt.Sprintf("header %v, want %v", got.header, s.header)
	case s.length != got.length:
		return fmt.Sprintf("content length %d, want %d", got.length, s.length)
	case !bytes.Equal(s.body, got.body):
		return fmt.Sprintf("body of %d bytes, want the %d the client sent", len(got.body), len(s.body))
	case !errors.Is(got.bodyErr, s.bodyErr) || (got.bodyErr == nil) != (s.bodyErr == nil):
		return fmt.Sprintf("body read error %v, want %v", got.bodyErr, s.bodyErr)
	}
	return ""
}
