package caddymodule

import (
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/rules/examples"
	"github.com/authtap/authtap/worker/tasks"
)

// tasksFanoutPayload is the event:fanout payload the app queues for ev.
func tasksFanoutPayload(ev rules.Event) ([]byte, error) {
	m, err := tasks.AppendFanoutMessage(nil, ev)
	return m.Payload, err
}

// fuzzSeed is one seed of FuzzHandler, written for people: the pack and rule
// by name, the control bytes as a fuzzCtl.
type fuzzSeed struct {
	name       string
	pack, rule string
	ctl        fuzzCtl
	params     string
	reqHdr     string
	reqBody    string
	respHdr    string
	respBody   string
}

const (
	seedJSON      = "Content-Type: application/json\n"
	seedSession   = "Cookie: session=s_abc; sid=sess_123\nAuthorization: Bearer tok_sekrit\n"
	seedUserBody  = `{"id":"u_1","email":"ada@acme.test","name":"Ada","tenant_id":"t_1","role":"member","password_hash":"$2y$10$abc","internal_notes":"VIP","created_at":"2026-11-23T10:00:00Z"}`
	seedSaasUser  = `{"user":{"id":"usr_1","email":"grace@acme.test","phone":"+1 555","totpURI":"otpauth://totp/x?secret=JBSWY3DPEHPK3PXP","backup_codes":["a","b"],"sessionId":"s1"}}`
	seedGuardUser = `{"user":{"id":7,"username":"jdoe","email":"jdoe@example.com","totp_enabled":true},"devices":[]}`
	// seedJWT's claims: {"sub":"u_1","email":"ada@acme.test","url":"https://app.test/u/u_1","password":"p"}
	seedJWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1XzEiLCJlbWFpbCI6ImFkYUBhY21lLnRlc3QiLCJ1cmwiOiJodHRwczovL2FwcC50ZXN0L3UvdV8xIiwicGFzc3dvcmQiOiJwIn0.c2ln"
	// seedJWTNested's claims: {"sub":"u_2","org":{"id":"o_1"},"inner":"eyJhbGciOiJIUzI1NiJ9.e30.c2ln"}
	seedJWTNested = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1XzIiLCJvcmciOnsiaWQiOiJvXzEifSwiaW5uZXIiOiJleUpoYkdjaU9pSklVekkxTmlKOS5lMzAuYzJsbiJ9.c2ln"
)

// Status indexes into fuzzStatuses.
const (
	st200 = 0
	st201 = 1
	st204 = 2
	st404 = 7
	st409 = 8
	st101 = 14
)

// fuzzSeeds are the committed seeds: each example pack's own scenarios
// (through every encoding), then hostile shapes.
var fuzzSeeds = []fuzzSeed{
	// ---- the example packs, friendly ------------------------------------------------
	{name: "basic-user-created", pack: "basic-users-tenants.yaml", rule: "user-created",
		ctl:    fuzzCtl{status: st201, maxBody: 2, respFlags: fuzzRespContentLength},
		reqHdr: seedJSON + "Idempotency-Key: 3f1c-signup\n", reqBody: `{"email":"ada@acme.test","name":"Ada","password":"correct horse"}`,
		respHdr: seedJSON, respBody: seedUserBody},
	{name: "basic-user-created-409", pack: "basic-users-tenants.yaml", rule: "user-created",
		ctl:     fuzzCtl{status: st409, maxBody: 1},
		reqBody: `{"email":"ada@acme.test"}`, respBody: `{"error":"email already registered"}`},
	{name: "basic-tenant-created-gzip", pack: "basic-users-tenants.yaml", rule: "tenant-created",
		ctl:      fuzzCtl{status: st201, maxBody: 1, encoding: fuzzEncGzip, chunk: 2},
		reqBody:  `{"name":"Acme","plan":"pro"}`,
		respBody: `{"id":"t_1","name":"Acme","plan":"pro","api_key":"ak_live_9f8e7d","created_at":"2026-11-23T10:00:00Z"}`},
	{name: "basic-tenant-updated-zstd", pack: "basic-users-tenants.yaml", rule: "tenant-updated", params: "t_1",
		ctl:      fuzzCtl{method: 1, status: st200, maxBody: 1, encoding: fuzzEncZstd},
		respBody: `{"id":"t_1","name":"Acme Corp","plan":"pro","api_key":"ak_live_9f8e7d"}`},
	{name: "basic-user-updated-br", pack: "basic-users-tenants.yaml", rule: "user-updated", params: "u_1",
		ctl:      fuzzCtl{status: st200, maxBody: 2, encoding: fuzzEncBrotli, respFlags: fuzzRespFlush, chunk: 1},
		respBody: seedUserBody},
	{name: "basic-user-deleted-204", pack: "basic-users-tenants.yaml", rule: "user-deleted", params: "u_1",
		ctl: fuzzCtl{status: st204, maxBody: 0}},
	{name: "basic-user-updated-deflate-zlib", pack: "basic-users-tenants.yaml", rule: "user-updated", params: "u_2",
		ctl:      fuzzCtl{status: st200, maxBody: 1, encoding: fuzzEncZlib},
		respBody: seedUserBody},
	{name: "basic-user-updated-deflate-raw", pack: "basic-users-tenants.yaml", rule: "user-updated", params: "u_3",
		ctl:      fuzzCtl{status: st200, maxBody: 1, encoding: fuzzEncFlate, respFlags: fuzzRespReadFrom},
		respBody: seedUserBody},
	{name: "defguard-user-modified-lookup", pack: "defguard-style.yaml", rule: "user-modified", params: "jdoe",
		ctl:    fuzzCtl{status: st200, maxBody: 1, lookupStatus: 0, lookupBody: 0},
		reqHdr: seedSession, reqBody: `{"username":"jdoe"}`, respBody: seedGuardUser},
	{name: "defguard-user-keys-lookup-404", pack: "defguard-style.yaml", rule: "user-keys", params: "jdoe|12",
		ctl:     fuzzCtl{path: 1, method: 1, status: st200, maxBody: 1, lookupStatus: 2},
		reqHdr:  seedSession,
		respHdr: "X-Request-Id: r1\n", respBody: `{"error":"not found"}`},
	{name: "defguard-user-created-form", pack: "defguard-style.yaml", rule: "user-created",
		ctl:     fuzzCtl{status: st201, maxBody: 1, reqType: 2},
		reqBody: "username=jdoe&password=Passw0rd%21&email=jdoe%40example.com", respBody: `{"id":7,"username":"jdoe","password":"leak?"}`},
	{name: "saas-user-created-secrets", pack: "saas-catalog.yaml", rule: "user-created",
		ctl:    fuzzCtl{status: st201, maxBody: 2, encoding: fuzzEncBrGzip},
		reqHdr: seedJSON + seedSession, reqBody: `{"email":"grace@acme.test","password":"x","otpCode":"123456"}`,
		respBody: seedSaasUser},
	{name: "saas-user-deleted-dry-run", pack: "saas-catalog.yaml", rule: "user-deleted", params: "usr_1?dry_run=true",
		ctl:      fuzzCtl{status: st200, maxBody: 1},
		respBody: `{"would_delete":{"id":"usr_1"}}`},
	{name: "saas-member-left-lookup", pack: "saas-catalog.yaml", rule: "organization-member-left", params: "org_1",
		ctl:    fuzzCtl{status: st204, maxBody: 1, lookupBody: 1},
		reqHdr: seedSession, reqBody: `{"user":{"id":"usr_1"}}`},
	{name: "saas-2fa-enabled", pack: "saas-catalog.yaml", rule: "security-2fa-enabled",
		ctl:      fuzzCtl{status: st200, maxBody: 1, lookupBody: 0},
		reqHdr:   seedSession,
		respBody: `{"enabled":true,"method":"totp","recovery_codes":["1","2"],"totpURI":"otpauth://totp/a?secret=ABC","user":{"id":"usr_1"}}`},
	{name: "saas-user-and-membership", pack: "saas-catalog.yaml", rule: "organization-user-created-and-added", params: "org_1",
		ctl:      fuzzCtl{status: st201, maxBody: 1, respFlags: fuzzRespContentLength | fuzzRespEarlyHints},
		respBody: `{"user":{"id":"usr_3","phone":"+1"},"membership":{"organization_id":"org_1","user_id":"usr_3","role":"member"}}`},
	{name: "sync-membership-two-events", pack: "sync-thin.yaml", rule: "sync-membership-changed", params: "o_1|u_1",
		ctl:     fuzzCtl{status: st204, maxBody: 0, reqFlags: fuzzReqChunked},
		reqBody: `{"role":"admin"}`},
	{name: "sync-user-created-stream", pack: "sync-thin.yaml", rule: "sync-user-created",
		ctl:      fuzzCtl{status: st201, maxBody: 1, respType: 4, chunk: 1, respFlags: fuzzRespFlush},
		respBody: `{"id":"u_1"}`},
	{name: "scim-group-patched-members", pack: "scim.yaml", rule: "scim-group-patched", params: "e9e30dba",
		ctl:    fuzzCtl{status: st204, maxBody: 1, reqType: 6},
		reqHdr: "Host: acme.scim.example.test\nAuthorization: Bearer scim-acme-token\n",
		reqBody: `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[` +
			`{"op":"add","path":"members","value":[{"value":"2819c223"},{"value":"902c246b"}]},` +
			`{"op":"remove","path":"members[value eq \"a1b2c3d4\"]"},{"op":"Add","value":{"members":[{"value":"6c5bb468"}]}},` +
			`{"op":"Remove","path":"members","value":[{"value":"902c246b"}]},{"op":"Replace","path":"displayName","value":"Guides"}]}`},
	{name: "scim-user-patched-deactivate", pack: "scim.yaml", rule: "scim-user-patched", params: "2819c223",
		ctl:      fuzzCtl{status: st200, maxBody: 1, lookupBody: 1},
		reqHdr:   "Host: acme.scim.example.test\nContent-Type: application/scim+json\n",
		reqBody:  `{"id":"2819c223","active":true,"Operations":[{"op":"Replace","path":"active","value":"False"},{"op":"replace","value":{"active":true}}]}`,
		respBody: `{"id":"2819c223","userName":"bjensen@acme.test","active":false,"meta":{"version":"W/\"d2\""}}`},
	{name: "scim-user-created-location-only", pack: "scim.yaml", rule: "scim-user-created-location-only",
		ctl:     fuzzCtl{status: st201, maxBody: 1, lookupBody: 0},
		reqBody: `{"userName":"alice@acme.test"}`,
		respHdr: "Location: https://acme.scim.example.test/scim/v2/Users/92b725cd?attributes=id\n"},
	{name: "scim-pack-bulk-partial", pack: "scim.yaml", rule: "scim-bulk",
		ctl:    fuzzCtl{status: st200, maxBody: 2, lookupBody: 0},
		reqHdr: "Host: acme.scim.example.test\nContent-Type: application/scim+json\n",
		reqBody: `{"failOnErrors":2,"Operations":[{"method":"POST","path":"/Users","bulkId":"q","data":{"userName":"alice"}},` +
			`{"method":"POST","path":"/Users","data":{}},{"method":"PATCH","path":"/Groups/g1","data":{"Operations":[{"op":"add","path":"members","value":[{"value":"u1"}]}]}},` +
			`{"method":"DELETE","path":"/Users/b7c14771"},{"method":"PUT","path":"/Groups/g1","data":{"displayName":"x"}}]}`,
		respBody: `{"Operations":[{"status":"201","location":"https://acme.scim.example.test/scim/v2/Users/u1","response":{"id":"u1"}},` +
			`{"status":"409"},{"status":"204"},{"status":"204","location":"/scim/v2/Users/b7c14771"}]}`},

	// ---- framing -----------------------------------------------------------------------
	{name: "trailer-announced", pack: "hostile.yaml", rule: "catch-all-body", params: "a|b",
		ctl:      fuzzCtl{status: st200, maxBody: 1, respFlags: fuzzRespTrailer},
		respBody: `{"id":"t","u":"x"}`},
	{name: "implicit-status-early-hints", pack: "hostile.yaml", rule: "catch-all-body", params: "x",
		ctl:      fuzzCtl{status: st200, maxBody: 1, respFlags: fuzzRespImplicit | fuzzRespEarlyHints | fuzzRespReadFrom},
		respBody: `{"id":"i"}`},
	{name: "upstream-error", pack: "hostile.yaml", rule: "catch-all-body", params: "e",
		ctl:     fuzzCtl{method: 1, status: st201, maxBody: 1, respFlags: fuzzRespError},
		reqBody: `{"id":"r"}`, respBody: `{"id":"half`},
	{name: "request-read-error", pack: "hostile.yaml", rule: "catch-all-body", params: "r",
		ctl:     fuzzCtl{method: 1, status: st201, maxBody: 1, reqFlags: fuzzReqReadError | fuzzReqChunked},
		reqBody: `{"id":"partial`, respBody: `{"id":"x"}`},
	{name: "response-over-max-body", pack: "hostile.yaml", rule: "catch-all-body", params: "big",
		ctl:      fuzzCtl{status: st200, maxBody: 0, respFlags: fuzzRespContentLength, respAmp: fuzzAmpLongString, respAmpN2: 200},
		respBody: `0123456789abcdef`},
	{name: "wrong-content-length", pack: "hostile.yaml", rule: "catch-all-body", params: "cl",
		ctl:      fuzzCtl{status: st200, maxBody: 0, respFlags: fuzzRespWrongLength},
		respBody: `{"id":"cl"}`},
	{name: "switching-protocols", pack: "hostile.yaml", rule: "catch-all-body", params: "ws",
		ctl:    fuzzCtl{status: st101, maxBody: 1},
		reqHdr: "Connection: Upgrade\nUpgrade: websocket\n"},
	{name: "replayed-lookup-marker", pack: "basic-users-tenants.yaml", rule: "user-created",
		ctl:      fuzzCtl{status: st201, maxBody: 1},
		reqHdr:   seedJSON + "X-Authtap-Lookup: 0123456789abcdef0123456789abcdef\n",
		respBody: `{"id":"u_hidden"}`},
	{name: "raw-path-nul", pack: "hostile.yaml", rule: "catch-all-body", params: "/a\x00b/%2e%2e/\xff?q=%zz&q=2",
		ctl:      fuzzCtl{method: 5, status: st200, maxBody: 1, reqFlags: fuzzReqRawPath | fuzzReqHost},
		respBody: `{"id":"nul"}`},

	// ---- encodings, hostile -------------------------------------------------------------
	{name: "zstd-window-512mib", pack: "hostile.yaml", rule: "catch-all-body", params: "z",
		ctl:      fuzzCtl{status: st200, maxBody: 2, encoding: fuzzEncZstdFrame, zstdWindow: 0x98},
		respBody: `{"id":"z"}`},
	{name: "zstd-rle-bomb", pack: "hostile.yaml", rule: "catch-all-body", params: "rle",
		ctl:      fuzzCtl{status: st200, maxBody: 1, encoding: fuzzEncZstdFrame, zstdWindow: 0x58, zstdRLE: 255},
		respBody: `{"id":"`},
	{name: "gzip-bomb", pack: "hostile.yaml", rule: "catch-all-body", params: "gz",
		ctl:      fuzzCtl{status: st200, maxBody: 0, encoding: fuzzEncGzip, respAmp: fuzzAmpRepeat, respAmpN1: 255, respAmpN2: 255},
		respBody: `aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa`},
	{name: "garbage-gzip", pack: "hostile.yaml", rule: "catch-all-body", params: "g",
		ctl:      fuzzCtl{status: st200, maxBody: 1, encoding: fuzzEncGarbageGzip},
		respBody: "\x1f\x8b\x08\x00garbage"},
	{name: "garbage-brotli-unknown", pack: "hostile.yaml", rule: "catch-all-body", params: "b",
		ctl:     fuzzCtl{status: st200, maxBody: 1, encoding: fuzzEncGarbageBrotli},
		respHdr: "Content-Encoding: compress\n", respBody: "\xce\xb2\xcf\x81"},

	// ---- bodies, hostile ----------------------------------------------------------------
	{name: "deep-arrays-20000-literal", pack: "hostile.yaml", rule: "catch-all-body", params: "deep",
		ctl:      fuzzCtl{status: st200, maxBody: 1},
		respBody: strings.Repeat("[", 20000) + strings.Repeat("]", 20000)},
	{name: "deep-arrays-100000", pack: "hostile.yaml", rule: "catch-all-body", params: "deeper",
		ctl:      fuzzCtl{status: st200, maxBody: 2, respAmp: fuzzAmpNestArrays, respAmpN1: 0xc3, respAmpN2: 0x50},
		respBody: `1`},
	{name: "deep-objects-request-20000", pack: "hostile.yaml", rule: "catch-all-body", params: "deepreq",
		ctl:    fuzzCtl{method: 1, status: st201, maxBody: 2, reqAmp: fuzzAmpNestObjects, reqAmpN1: 0x27, reqAmpN2: 0x10},
		reqHdr: seedJSON, reqBody: `{"password":"p","id":"x"}`},
	// data 9,999 deep is within encoding/json's 10,000, but the event:fanout
	// payload wraps it in two more levels ({"event":{"data":…}})
	{name: "deep-9999-whole-response", pack: "basic-users-tenants.yaml", rule: "user-created",
		ctl:      fuzzCtl{status: st201, maxBody: 1, respAmp: fuzzAmpNestArrays, respAmpN1: 0x13, respAmpN2: 0x87},
		respBody: `[1]`},
	// a lookup answer 10,000 deep, placed one level down in data
	{name: "lookup-answer-10000-wrapped", pack: "hostile.yaml", rule: "catch-all-lookup", params: "w?q=1",
		ctl:      fuzzCtl{method: 0, status: st200, maxBody: 1, lookupBody: 3, respAmpN1: 0x13, respAmpN2: 0x88},
		respBody: `1`},
	{name: "keys-100000", pack: "hostile.yaml", rule: "catch-all-body", params: "keys",
		ctl:      fuzzCtl{status: st200, maxBody: 2, respAmp: fuzzAmpManyKeys, respAmpN1: 0xc3, respAmpN2: 0x50},
		respBody: `{"secret":"s"}`},
	{name: "duplicate-keys", pack: "hostile.yaml", rule: "catch-all-body", params: "dup",
		ctl:      fuzzCtl{status: st200, maxBody: 2, respAmp: fuzzAmpDuplicateKeys, respAmpN1: 0x13, respAmpN2: 0x88},
		respBody: `"u_1"`},
	{name: "long-string-1mib", pack: "hostile.yaml", rule: "catch-all-body", params: "long",
		ctl:      fuzzCtl{status: st200, maxBody: 2, respAmp: fuzzAmpLongString, respAmpN1: 0x7f, respAmpN2: 0xff},
		respBody: `\u00e9\"\\<>&x`},
	{name: "invalid-utf8", pack: "hostile.yaml", rule: "catch-all-body", params: "\xff\xfe",
		ctl:    fuzzCtl{method: 1, status: st201, maxBody: 1},
		reqHdr: seedJSON + "X-Test: \xc3\x28\n", reqBody: "{\"id\":\"\xff\xfe\xfd\",\"\xc0\xaf\":\"\\ud800\"}",
		respBody: "{\"id\":\"\xed\xa0\x80\",\"u\":{\"password\":\"\xff\",\"jwt\":\"eyJhbGciOiJIUzI1NiJ9.e30.sig\"},\"\u2028\":1}"},
	{name: "text-template-objects", pack: "hostile.yaml", rule: "catch-all-body", params: "t",
		ctl:      fuzzCtl{method: 1, status: st201, maxBody: 1},
		reqHdr:   seedJSON + "Cookie: sid=sess_abc\nIdempotency-Key: k1\n",
		reqBody:  `{"id":"r","password":"p","token":"t"}`,
		respBody: `{"id":"x","u":{"name":"n","password":"p","api_key":"k","nested":{"secret":"s"}}}`},
	{name: "lookup-dot-segments", pack: "hostile.yaml", rule: "catch-all-lookup", params: "..?q=..",
		ctl:      fuzzCtl{method: 0, status: st200, maxBody: 1, lookupBody: 0},
		respBody: `{"id":"..","user":{"id":"."}}`},
	{name: "lookup-deep-answer", pack: "hostile.yaml", rule: "catch-all-lookup", params: "a/b?q=1",
		ctl:      fuzzCtl{method: 2, status: st200, maxBody: 2, lookupBody: 3, respAmpN1: 0x27, respAmpN2: 0x10},
		respBody: `{"id":"x"}`},

	// ---- batch envelopes and each ----------------------------------------------------
	{name: "scim-bulk", pack: "hostile-batch.yaml", rule: "scim-bulk",
		ctl:    fuzzCtl{status: st200, maxBody: 2},
		reqHdr: seedJSON + seedSession + "Idempotency-Key: bulk-1\n",
		reqBody: `{"Operations":[{"method":"POST","path":"/Users","bulkId":"a","data":{"userName":"ada","password":"p"}},` +
			`{"method":"DELETE","path":"/Users/u_9"},{"method":"POST","path":"/Users","data":{}},` +
			`{"method":"PATCH","path":"/Groups/g_1","data":{"Operations":[{"op":"add","path":"members","value":[{"value":"u_1"},{"value":"u_2"}]},{"op":"remove","path":"members[value eq \"u_3\"]"}]}}]}`,
		respHdr: seedJSON,
		respBody: `{"Operations":[{"status":"201","location":"https://x.test/scim/v2/Users/u_1","response":{"id":"u_1"}},{"status":"204"},` +
			`{"status":"2O1","response":{"id":"nope"}},{"status":200}]}`},
	{name: "scim-bulk-mismatched", pack: "hostile-batch.yaml", rule: "scim-bulk",
		ctl:      fuzzCtl{status: st200, maxBody: 1},
		reqBody:  `{"Operations":[{"method":"DELETE","path":"/Users/1"},{"method":"DELETE","path":"/Users/2"},{"method":"DELETE","path":"http://h/scim/v2/Users/3?x#f"}]}`,
		respBody: `{"Operations":[{"status":"204"}]}`},
	{name: "scim-bulk-deep", pack: "hostile-batch.yaml", rule: "scim-bulk",
		ctl:      fuzzCtl{status: st200, maxBody: 2, reqAmp: fuzzAmpNestArrays, reqAmpN1: 0xc3, reqAmpN2: 0x50},
		reqBody:  `{"Operations":[{"method":"POST","path":"/Users","data":1}]}`,
		respBody: `{"Operations":[{"status":"201","response":{"id":"u"}}]}`},
	{name: "json-batch-by-id", pack: "hostile-batch.yaml", rule: "json-batch", params: "$batch",
		ctl:      fuzzCtl{status: st200, maxBody: 1},
		reqBody:  `{"requests":[{"id":"1","method":"POST","url":"/scim/v2/Users?x=1","body":{"a":1}},{"id":"1","method":"DELETE","url":"/scim/v2/Users/7"},{"id":{"o":1},"method":["x"],"url":7}]}`,
		respBody: `{"responses":[{"id":"1","status":201,"body":{"id":"u_5"}},{"id":"2","status":"204"}]}`},
	{name: "list-batch-many", pack: "hostile-batch.yaml", rule: "list-batch",
		ctl:      fuzzCtl{status: st200, maxBody: 2, reqAmp: fuzzAmpDuplicateKeys, reqAmpN1: 0x13, reqAmpN2: 0x88},
		reqBody:  `{"requests":[{"method":"POST","url":"/each/x","body":{"list":[{"id":1},{"id":2}]}}]}`,
		respBody: `[{"status":200},{"status":200}]`},
	{name: "list-batch-each", pack: "hostile-batch.yaml", rule: "list-batch",
		ctl:      fuzzCtl{status: st200, maxBody: 1},
		reqHdr:   seedJSON + "Idempotency-Key: k\n",
		reqBody:  `{"requests":[{"method":"PUT","url":"/each/a","body":{"list":[{"id":1},{"id":1}]}},{"method":"POST","url":"/scim/v2/Users","body":{"n":1}}]}`,
		respBody: `[{"status":200},{"status":"201","body":{"id":"u_7","password":"p"}}]`},
	{name: "each-list", pack: "hostile-batch.yaml", rule: "each-any", params: "y",
		ctl:     fuzzCtl{method: 1, status: st201, maxBody: 1},
		reqHdr:  seedJSON,
		reqBody: `{"list":[{"id":"a","token":"t"},{"id":"a"},1,null,[],"s"]}`},
	{name: "each-huge-list", pack: "hostile-batch.yaml", rule: "each-any", params: "x",
		ctl:     fuzzCtl{method: 1, status: st201, maxBody: 2, reqAmp: fuzzAmpManyKeys, reqAmpN1: 0xc3, reqAmpN2: 0x50},
		reqHdr:  seedJSON + "Idempotency-Key: k\n",
		reqBody: `{"list":[{"id":"a"},{"id":"a"},1,null,[],"s"]}`},

	// ---- before-lookups and lookup headers ------------------------------------------------
	{name: "before-lookup-chain", pack: "hostile.yaml", rule: "catch-all-before", params: "m_1?q=1",
		ctl:    fuzzCtl{method: 3, status: st204, maxBody: 1, lookupBody: 0},
		reqHdr: seedSession + "X-Test: t_1\n", respBody: `{"id":"m_1","user":"usr_2","token":"tok_new"}`},
	{name: "before-lookup-refused-request", pack: "hostile.yaml", rule: "catch-all-before", params: "m_1?q=2",
		ctl:    fuzzCtl{method: 3, status: st404, maxBody: 1, lookupBody: 0},
		reqHdr: seedSession, respBody: `{"id":"m_1"}`},
	{name: "before-lookup-dot-segments", pack: "hostile.yaml", rule: "catch-all-before", params: "..?q=..",
		ctl:      fuzzCtl{status: st200, maxBody: 1, lookupBody: 0},
		respBody: `{"id":"..","user":"."}`},
	{name: "before-lookup-header-crlf", pack: "hostile.yaml", rule: "catch-all-before", params: "h?q=3",
		ctl:      fuzzCtl{status: st200, maxBody: 1, lookupBody: 0},
		reqHdr:   "Cookie: sid=a\tb\n",
		respBody: "{\"id\":\"x\",\"user\":\"a\\r\\nX-Admin: 1\",\"token\":\"a\\u0000b\"}"},
	{name: "before-lookup-answer-500-deep", pack: "hostile.yaml", rule: "catch-all-before", params: "d?q=4",
		ctl:      fuzzCtl{method: 1, status: st200, maxBody: 2, lookupStatus: 3, lookupBody: 3, respAmpN1: 0x27, respAmpN2: 0x10},
		respBody: `{"id":"x"}`},
	{name: "before-lookup-request-read-error", pack: "hostile.yaml", rule: "catch-all-before", params: "r?q=5",
		ctl:     fuzzCtl{method: 1, status: st201, maxBody: 1, reqFlags: fuzzReqReadError | fuzzReqChunked},
		reqBody: `{"id":"partial`, respBody: `{"id":"x"}`},
	{name: "saas-member-removed-before", pack: "saas-catalog.yaml", rule: "organization-member-removed", params: "org_1|usr_2",
		ctl:      fuzzCtl{status: st204, maxBody: 1, lookupBody: 1},
		reqHdr:   seedSession,
		reqBody:  `{"membership":{"organization_id":"org_1","user_id":"usr_2","role":"admin"}}`,
		respBody: ``},
	// ---- values inside values, multipart bodies ------------------------------------------
	{name: "jwt-everywhere", pack: "hostile.yaml", rule: "catch-all-funcs", params: "a/b",
		ctl:      fuzzCtl{method: 1, status: st201, maxBody: 1},
		reqHdr:   seedJSON + "Authorization: Bearer " + seedJWT + "\nCookie: sid=" + seedJWTNested + "\n",
		reqBody:  `{"token":"` + seedJWT + `"}`,
		respHdr:  "Location: https://scim.example.test/scim/v2/Users/2819c223?x=1\n",
		respBody: `{"id":"2819c223"}`},
	{name: "jwt-hostile", pack: "hostile.yaml", rule: "catch-all-funcs", params: "%2e%2e/x",
		ctl:     fuzzCtl{method: 1, status: st200, maxBody: 2},
		reqHdr:  seedJSON + "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.%%%.sig\nCookie: sid=a.b.c\n",
		reqBody: `{"token":"eyJhbGciOiJub25lIn0.` + strings.Repeat("eyJhIjp7ImEiOnsiYSI6", 3000) + `.x"}`,
		respHdr: "Location: /\n"},
	{name: "multipart-sign-up", pack: "hostile.yaml", rule: "catch-all-funcs", params: "signup",
		ctl: fuzzCtl{method: 1, status: st201, maxBody: 1, reqType: 5},
		reqBody: "--xyz\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\nada@acme.test\r\n" +
			"--xyz\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\ns3cret\r\n" +
			"--xyz\r\nContent-Disposition: form-data; name=\"token\"\r\n\r\n" + seedJWT + "\r\n" +
			"--xyz\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n--xyz--\r\n"},
	{name: "multipart-5000-parts", pack: "hostile.yaml", rule: "catch-all-body", params: "mp",
		ctl:     fuzzCtl{method: 1, status: st201, maxBody: 1, reqType: 5},
		reqBody: strings.Repeat("--xyz\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\nx\r\n", 5000) + "--xyz--"},
	{name: "multipart-truncated", pack: "hostile.yaml", rule: "catch-all-body", params: "mpt",
		ctl:     fuzzCtl{method: 1, status: st201, maxBody: 0, reqType: 5},
		reqBody: "--xyz\r\nContent-Disposition: form-data; name=\"id\"\r\n\r\n" + strings.Repeat("--xy", 200)},
}

// TestWriteFuzzHandlerSeeds writes fuzzSeeds to testdata/fuzz/FuzzHandler
// (go test fuzz v1 files). It runs only with AUTHTAP_FUZZ_WRITE_SEEDS=1:
//
//	AUTHTAP_FUZZ_WRITE_SEEDS=1 go test ./caddymodule -run TestWriteFuzzHandlerSeeds
func TestWriteFuzzHandlerSeeds(t *testing.T) {
	if os.Getenv("AUTHTAP_FUZZ_WRITE_SEEDS") != "1" {
		t.Skip("set AUTHTAP_FUZZ_WRITE_SEEDS=1 to rewrite testdata/fuzz/FuzzHandler")
	}
	packs, err := fs.Glob(examples.FS, "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	packs = append(packs, "hostile.yaml", "hostile-batch.yaml")
	ruleIndex := func(pack, rule string) (byte, byte) {
		for pi, name := range packs {
			if name != pack {
				continue
			}
			text := []byte(fuzzHostilePack)
			if name == "hostile-batch.yaml" {
				text = []byte(fuzzBatchPack)
			} else if name != "hostile.yaml" {
				if text, err = examples.FS.ReadFile(name); err != nil {
					t.Fatal(err)
				}
			}
			f, err := rules.Parse(name, text)
			if err != nil {
				t.Fatal(err)
			}
			for ri, r := range f.Rules() {
				if r.Name == rule {
					return byte(pi), byte(ri)
				}
			}
		}
		t.Fatalf("no rule %s in %s", rule, pack)
		return 0, 0
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzHandler")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, s := range fuzzSeeds {
		if seen[s.name] {
			t.Fatalf("seed %s twice", s.name)
		}
		seen[s.name] = true
		ctl := s.ctl
		ctl.pack, ctl.rule = ruleIndex(s.pack, s.rule)
		text := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nstring(%q)\nstring(%q)\n[]byte(%q)\nstring(%q)\n[]byte(%q)\n",
			ctl.bytes(), s.params, s.reqHdr, s.reqBody, s.respHdr, s.respBody)
		if err := os.WriteFile(filepath.Join(dir, s.name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFuzzHandlerChecksFail shows that FuzzHandler's comparisons see what
// they are for: a changed response byte, header or status, a changed
// upstream body or read error, an event that decodes differently, and a
// payload the fan-out refuses.
func TestFuzzHandlerChecksFail(t *testing.T) {
	rec := func(status int, hdr, body string) *wireRecorder {
		w := newWireRecorder()
		w.Header().Set("X-A", hdr)
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
		return w
	}
	base := rec(201, "a", `{"id":1}`)
	for i, got := range []*wireRecorder{rec(200, "a", `{"id":1}`), rec(201, "b", `{"id":1}`), rec(201, "a", `{"id":2}`)} {
		if base.diff(got) == "" {
			t.Errorf("%d: a changed response went unseen", i)
		}
	}
	if d := base.diff(rec(201, "a", `{"id":1}`)); d != "" {
		t.Errorf("the same response differs: %s", d)
	}
	seen := fuzzSeen{called: true, method: "POST", path: "/u", header: http.Header{"X-Authtap-Lookup": {"t"}}, length: 2, body: []byte("ab")}
	other := seen
	other.header = http.Header{}
	if d := seen.diff(&other); d != "" {
		t.Errorf("authtap's own marker header must not count: %s", d)
	}
	other.body = []byte("ac")
	if seen.diff(&other) == "" {
		t.Error("a changed request body went unseen")
	}
	other.body, other.bodyErr = seen.body, errFuzzClientBody
	if seen.diff(&other) == "" {
		t.Error("a read error the client did not cause went unseen")
	}

	ev := rules.Event{ID: "evt_1", Type: "a.b", Subject: "s\xff", Data: []byte(`{"x":"<&>"}`), Source: rules.Source{Name: "fuzz", Rule: "r"}, Mode: rules.ModeLive}
	m, err := tasksFanoutPayload(ev)
	if err != nil {
		t.Fatal(err)
	}
	got, err := fanOut(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := sameEvent(ev, got); err != nil {
		t.Errorf("an event compared with its own decoding: %v", err)
	}
	got.Data = []byte(`{"x":"<&>","y":1}`)
	if sameEvent(ev, got) == nil {
		t.Error("changed data went unseen")
	}
	deep := ev
	deep.Data = []byte(strings.Repeat("[", fuzzDeep+1) + strings.Repeat("]", fuzzDeep+1))
	m, err = tasksFanoutPayload(deep)
	if err == nil {
		_, err = fanOut(m)
	}
	if err == nil {
		t.Error("data nested deeper than encoding/json allows was queued and decoded")
	}
}
