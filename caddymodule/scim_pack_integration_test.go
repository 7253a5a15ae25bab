package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/rules/examples"
)

// scimTenantHost is the host the SCIM pack reads the tenant from
// (<tenant>.scim.example.test, see rules/examples/scim.yaml).
const scimTenantHost = "acme.scim.example.test"

// scimPackService is a SCIM 2.0 service provider (RFC 7644) for one tenant
// host, as the example pack describes it: users and groups with whole
// resources, PUT, PATCH operations (path and path-less forms, member
// filters), deletes answering 204, and /Bulk with failOnErrors and
// maxOperations, whose successful operations carry only their location.
type scimPackService struct {
	mu      sync.Mutex
	next    int
	tick    int
	users   map[string]map[string]any
	groups  map[string]map[string]any
	gets    atomic.Int64 // GETs of a resource: the pack's lookups
	maxOps  int
	applied atomic.Int64 // operations a /Bulk applied
}

func newSCIMPackService() *scimPackService {
	return &scimPackService{users: map[string]map[string]any{}, groups: map[string]map[string]any{}, maxOps: 5}
}

func (s *scimPackService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer scim-acme-token" || r.Host != scimTenantHost {
		scimError(w, http.StatusUnauthorized, "", "unknown tenant or token")
		return
	}
	if r.Method == http.MethodPost && r.URL.Path == "/scim/v2/Bulk" {
		s.bulk(w, r)
		return
	}
	if r.Method == http.MethodGet {
		s.gets.Add(1)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.one(w, r)
}

func scimError(w http.ResponseWriter, status int, scimType, detail string) {
	w.Header().Set("Content-Type", "application/scim+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{ //nolint:errcheck
		"schemas": []string{"urn:ietf:params:scim:api:messages:2.0:Error"},
		"status":  fmt.Sprint(status), "scimType": scimType, "detail": detail,
	})
}

func writeSCIM(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/scim+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v) //nolint:errcheck
}

// one serves one resource request; s.mu is held.
func (s *scimPackService) one(w http.ResponseWriter, r *http.Request) {
	kind, id, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/scim/v2/"), "/")
	store := map[string]map[string]map[string]any{"Users": s.users, "Groups": s.groups}[kind]
	if store == nil || strings.Contains(id, "/") {
		scimError(w, http.StatusNotFound, "", "no such endpoint")
		return
	}
	var in map[string]any
	if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			scimError(w, http.StatusBadRequest, "invalidSyntax", err.Error())
			return
		}
	}
	s.tick++
	now := fmt.Sprintf("2026-11-23T10:%02d:%02dZ", s.tick/60, s.tick%60)
	stamp := func(res map[string]any, id string) {
		meta, _ := res["meta"].(map[string]any)
		if meta == nil {
			meta = map[string]any{"resourceType": strings.TrimSuffix(kind, "s"), "created": now}
		}
		meta["lastModified"] = now
		meta["location"] = "https://" + scimTenantHost + "/scim/v2/" + kind + "/" + id
		meta["version"] = fmt.Sprintf(`W/"v%d"`, s.tick)
		res["meta"] = meta
		res["id"] = id
	}
	name := map[string]string{"Users": "userName", "Groups": "displayName"}[kind]
	if id == "" {
		if r.Method != http.MethodPost {
			scimError(w, http.StatusMethodNotAllowed, "", "")
			return
		}
		if v, _ := in[name].(string); v == "" {
			scimError(w, http.StatusBadRequest, "invalidValue", name+" is required")
			return
		}
		for _, u := range store {
			if u[name] == in[name] {
				scimError(w, http.StatusConflict, "uniqueness", name+" is already taken")
				return
			}
		}
		delete(in, "password") // returned: never (RFC 7643 §4.1.1)
		s.next++
		id = fmt.Sprintf("2819c223-7f76-453a-919d-%012d", s.next)
		if kind == "Users" {
			in["active"] = in["active"] != false
		}
		stamp(in, id)
		store[id] = in
		w.Header().Set("Location", in["meta"].(map[string]any)["location"].(string))
		writeSCIM(w, http.StatusCreated, in)
		return
	}
	res, ok := store[id]
	if !ok {
		scimError(w, http.StatusNotFound, "", "Resource "+id+" not found")
		return
	}
	switch r.Method {
	case http.MethodGet:
		writeSCIM(w, http.StatusOK, res)
	case http.MethodPut:
		delete(in, "password")
		in["meta"] = res["meta"]
		stamp(in, id)
		store[id] = in
		writeSCIM(w, http.StatusOK, in)
	case http.MethodPatch:
		ops, _ := in["Operations"].([]any)
		for _, o := range ops {
			op, _ := o.(map[string]any)
			if !s.patch(res, op) {
				scimError(w, http.StatusBadRequest, "invalidPath", fmt.Sprint(op["path"]))
				return
			}
		}
		stamp(res, id)
		if kind == "Groups" {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeSCIM(w, http.StatusOK, res)
	case http.MethodDelete:
		delete(store, id)
		w.WriteHeader(http.StatusNoContent)
	default:
		scimError(w, http.StatusMethodNotAllowed, "", "")
	}
}

// patch applies one PatchOp operation (RFC 7644 §3.5.2) to res.
func (s *scimPackService) patch(res map[string]any, op map[string]any) bool {
	verb, _ := op["op"].(string)
	path, _ := op["path"].(string)
	value := op["value"]
	if b, ok := value.(string); ok && (strings.EqualFold(b, "true") || strings.EqualFold(b, "false")) && path == "active" {
		value = strings.EqualFold(b, "true") // Entra ID sends "False"
	}
	members := func() []any { m, _ := res["members"].([]any); return m }
	switch {
	case strings.EqualFold(verb, "add") && path == "members":
		list, _ := value.([]any)
		res["members"] = append(members(), list...)
	case strings.EqualFold(verb, "add") && path == "":
		v, _ := value.(map[string]any)
		list, _ := v["members"].([]any)
		res["members"] = append(members(), list...)
	case strings.EqualFold(verb, "remove") && strings.HasPrefix(path, `members[value eq "`):
		gone := strings.TrimSuffix(strings.TrimPrefix(path, `members[value eq "`), `"]`)
		res["members"] = slices.DeleteFunc(members(), func(m any) bool { return m.(map[string]any)["value"] == gone })
	case strings.EqualFold(verb, "remove") && path == "members":
		list, _ := value.([]any)
		res["members"] = slices.DeleteFunc(members(), func(m any) bool {
			return slices.ContainsFunc(list, func(x any) bool { return x.(map[string]any)["value"] == m.(map[string]any)["value"] })
		})
	case strings.EqualFold(verb, "replace") && path != "" && !strings.ContainsAny(path, "[]."):
		res[path] = value
	case strings.EqualFold(verb, "replace") && path == "":
		v, _ := value.(map[string]any)
		for k, x := range v {
			res[k] = x
		}
	default:
		return false
	}
	return true
}

// bulk applies RFC 7644 §3.7 operations in order, stops after failOnErrors
// errors, refuses more than maxOps operations (413), and answers each
// success with its location and status only, each error with its response.
func (s *scimPackService) bulk(w http.ResponseWriter, r *http.Request) {
	var in struct {
		FailOnErrors int
		Operations   []struct {
			Method, Path, BulkID string
			Data                 json.RawMessage
		}
	}
	if json.NewDecoder(r.Body).Decode(&in) != nil {
		scimError(w, http.StatusBadRequest, "invalidSyntax", "")
		return
	}
	if len(in.Operations) > s.maxOps {
		scimError(w, http.StatusRequestEntityTooLarge, "", fmt.Sprintf("more than maxOperations (%d)", s.maxOps))
		return
	}
	type result struct {
		Method   string          `json:"method"`
		BulkID   string          `json:"bulkId,omitempty"`
		Location string          `json:"location,omitempty"`
		Status   string          `json:"status"`
		Response json.RawMessage `json:"response,omitempty"`
	}
	out := []result{}
	errs := 0
	s.mu.Lock()
	for _, op := range in.Operations {
		if in.FailOnErrors > 0 && errs >= in.FailOnErrors {
			break
		}
		req := httptest.NewRequest(op.Method, "/scim/v2"+op.Path, bytes.NewReader(op.Data))
		rec := httptest.NewRecorder()
		s.one(rec, req)
		res := result{Method: op.Method, BulkID: op.BulkID, Status: fmt.Sprint(rec.Code), Location: rec.Header().Get("Location")}
		if rec.Code >= 300 {
			errs++
			res.Response = bytes.TrimSpace(rec.Body.Bytes())
		} else {
			s.applied.Add(1)
			if res.Location == "" {
				res.Location = "https://" + scimTenantHost + "/scim/v2" + op.Path
			}
		}
		out = append(out, res)
	}
	s.mu.Unlock()
	writeSCIM(w, http.StatusOK, map[string]any{
		"schemas": []string{"urn:ietf:params:scim:api:messages:2.0:BulkResponse"}, "Operations": out,
	})
}

// TestSCIMPackThroughCaddy loads rules/examples/scim.yaml into real Caddy in
// front of a SCIM service, with a private Redis, and checks the events the
// pack's header promises: a create (with the tenant of the host), a group
// PATCH adding and removing members in its three forms, a user PATCH that
// deactivates (previous from the before-lookup), a DELETE answered 204 with
// the user read before it, and /Bulks: a partly failed one (its DELETE
// carrying the user read before the Bulk was forwarded), one the service
// stopped at failOnErrors, one refused as a whole.
func TestSCIMPackThroughCaddy(t *testing.T) {
	pack, err := examples.FS.ReadFile("scim.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rulesFile := filepath.Join(t.TempDir(), "scim.yaml")
	if err := os.WriteFile(rulesFile, pack, 0o600); err != nil {
		t.Fatal(err)
	}
	svc := newSCIMPackService()
	it := startTapCaddy(t, svc, map[string]any{"rules": []string{rulesFile}, "source": "scim"}, "")

	send := func(method, path, body string, want int) (string, http.Header) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, it.base+path, rd)
		req.Host = scimTenantHost
		req.Header.Set("Content-Type", "application/scim+json")
		req.Header.Set("Authorization", "Bearer scim-acme-token")
		resp, err := it.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d %s, want %d", method, path, resp.StatusCode, b, want)
		}
		return string(bytes.TrimSpace(b)), resp.Header
	}
	seen := map[string]bool{}
	// next waits for n more events than seen so far, makes sure no more come,
	// and returns the new ones, each as "rule type subject tenant data
	// previous missing", sorted.
	next := func(n int) []string {
		t.Helper()
		total := len(seen) + n
		if n > 0 {
			it.waitForEvents(total, 10*time.Second, func(rules.Event) bool { return true })
		}
		time.Sleep(300 * time.Millisecond) // anything that should not be there
		var got []string
		for _, ev := range it.pendingEvents() {
			if seen[ev.ID] {
				continue
			}
			seen[ev.ID] = true
			got = append(got, fmt.Sprintf("%s %s %s %s %s %s %v", ev.Source.Rule, ev.Type, ev.Subject, ev.Tenant, ev.Data, ev.Previous, ev.Source.Missing))
		}
		slices.Sort(got)
		if len(got) != n {
			t.Fatalf("want %d new events, got %d:\n%s", n, len(got), strings.Join(got, "\n"))
		}
		return got
	}
	check := func(what string, got, want []string) {
		t.Helper()
		slices.Sort(want)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("events of %s\n got %s\nwant %s", what, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	}
	id := func(n int) string { return fmt.Sprintf("2819c223-7f76-453a-919d-%012d", n) }

	// creates: the event's data is the resource the service answered
	bjensen, hdr := send(http.MethodPost, "/scim/v2/Users", `{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],
	  "userName":"bjensen@acme.test","displayName":"Barbara Jensen","password":"s3cret-Initial-1"}`, http.StatusCreated)
	if hdr.Get("Location") != "https://"+scimTenantHost+"/scim/v2/Users/"+id(1) || strings.Contains(bjensen, "s3cret") {
		t.Fatalf("the service answered %s %v", bjensen, hdr)
	}
	carol, _ := send(http.MethodPost, "/scim/v2/Users", `{"userName":"carol@acme.test","displayName":"Carol"}`, http.StatusCreated)
	send(http.MethodPost, "/scim/v2/Users", `{"userName":"carol@acme.test"}`, http.StatusConflict)
	group, _ := send(http.MethodPost, "/scim/v2/Groups", `{"displayName":"Tour Guides","members":[{"value":"`+id(1)+`"}]}`, http.StatusCreated)
	check("the creates", next(3), []string{
		"scim-user-created user.created " + id(1) + " acme " + bjensen + "  []",
		"scim-user-created user.created " + id(2) + " acme " + carol + "  []",
		"scim-group-created group.created " + id(3) + " acme " + group + "  []",
	})

	// a group PATCH: add with path members, remove by filter, add without a path
	send(http.MethodPatch, "/scim/v2/Groups/"+id(3), `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[
	  {"op":"add","path":"members","value":[{"value":"`+id(2)+`"}]},
	  {"op":"remove","path":"members[value eq \"`+id(1)+`\"]"},
	  {"op":"Add","value":{"members":[{"value":"`+id(1)+`","display":"Babs"}]}}
	]}`, http.StatusNoContent)
	member := func(typ string, user int) string {
		return fmt.Sprintf(`scim-group-patched group.%s %s acme {"group":%q,"member":%q}  []`, typ, id(3), id(3), id(user))
	}
	check("the group PATCH", next(3), []string{member("member_added", 2), member("member_removed", 1), member("member_added", 1)})
	svc.mu.Lock()
	members, _ := json.Marshal(svc.groups[id(3)]["members"])
	svc.mu.Unlock()
	if want := `[{"value":"` + id(2) + `"},{"display":"Babs","value":"` + id(1) + `"}]`; string(members) != want {
		t.Fatalf("the group's members are %s, want %s", members, want)
	}

	// a user PATCH with several operations: user.updated and user.deactivated,
	// previous from the user read before the PATCH
	gets := svc.gets.Load()
	patched, _ := send(http.MethodPatch, "/scim/v2/Users/"+id(1), `{"Operations":[
	  {"op":"Replace","path":"active","value":"False"},{"op":"replace","path":"displayName","value":"Babs Jensen"}]}`, http.StatusOK)
	check("the user PATCH", next(2), []string{
		"scim-user-patched user.updated " + id(1) + " acme " + patched + ` {"active":true,"displayName":"Barbara Jensen"} []`,
		"scim-user-patched user.deactivated " + id(1) + " acme " + patched + ` {"active":true} []`,
	})
	if n := svc.gets.Load() - gets; n != 1 {
		t.Errorf("the PATCH sent %d before-lookups, want 1 (one for the rule's five emits)", n)
	}
	// deactivating her again changes nothing: user.updated and user.deactivated are skipped
	send(http.MethodPatch, "/scim/v2/Users/"+id(1), `{"Operations":[{"op":"replace","path":"active","value":false}]}`, http.StatusOK)
	next(0)
	// a refused PATCH emits nothing
	send(http.MethodPatch, "/scim/v2/Users/"+id(1), `{"Operations":[{"op":"replace","path":"name[x","value":1}]}`, http.StatusBadRequest)
	next(0)

	// a PUT reactivating her: user.updated and user.reactivated; the three PUT
	// rules' before-lookups of the same user are sent once
	gets = svc.gets.Load()
	replaced, _ := send(http.MethodPut, "/scim/v2/Users/"+id(1), `{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],
	  "userName":"bjensen@acme.test","displayName":"Babs Jensen","active":true}`, http.StatusOK)
	check("the PUT", next(2), []string{
		"scim-user-replaced user.updated " + id(1) + " acme " + replaced + ` {"active":false} []`,
		"scim-user-reactivated-by-replace user.reactivated " + id(1) + " acme " + replaced + ` {"active":false} []`,
	})
	if n := svc.gets.Load() - gets; n != 1 {
		t.Errorf("the PUT sent %d before-lookups, want 1", n)
	}

	// a DELETE answered 204: user.deleted carries Carol as she was
	send(http.MethodDelete, "/scim/v2/Users/"+id(2), "", http.StatusNoContent)
	check("the DELETE", next(1), []string{"scim-user-deleted user.deleted " + id(2) + " acme " + carol + "  []"})
	send(http.MethodDelete, "/scim/v2/Users/"+id(2), "", http.StatusNotFound)
	next(0)

	// a /Bulk, partly failed: a create answered with its location only (the
	// pack reads the user with an after-lookup), a duplicate (409), a member
	// removed, a delete.
	// the user the DELETE inside the Bulk removes, as she is before it
	svc.mu.Lock()
	before, _ := json.Marshal(svc.users[id(1)])
	svc.mu.Unlock()
	gets = svc.gets.Load()
	bulk, _ := send(http.MethodPost, "/scim/v2/Bulk", `{"schemas":["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],"failOnErrors":2,"Operations":[
	  {"method":"POST","path":"/Users","bulkId":"qwerty","data":{"userName":"dave@acme.test","displayName":"Dave"}},
	  {"method":"POST","path":"/Users","bulkId":"ytrewq","data":{"userName":"bjensen@acme.test"}},
	  {"method":"PATCH","path":"/Groups/`+id(3)+`","data":{"Operations":[{"op":"remove","path":"members[value eq \"`+id(1)+`\"]"}]}},
	  {"method":"DELETE","path":"/Users/`+id(1)+`"}
	]}`, http.StatusOK)
	if !strings.Contains(bulk, `"bulkId":"ytrewq","status":"409"`) || strings.Count(bulk, `"status":"204"`) != 2 || strings.Contains(bulk, `"status":"201","response"`) {
		t.Fatalf("the service answered the bulk with %s", bulk)
	}
	svc.mu.Lock()
	dave, _ := json.Marshal(svc.users[id(4)])
	svc.mu.Unlock()
	// the DELETE inside the Bulk got its before-lookup: user.deleted carries her
	check("the bulk", next(3), []string{
		"scim-user-created-location-only user.created " + id(4) + " acme " + string(dave) + "  []",
		fmt.Sprintf(`scim-group-patched group.member_removed %s acme {"group":%q,"member":%q}  []`, id(3), id(3), id(1)),
		"scim-user-deleted user.deleted " + id(1) + " acme " + string(before) + "  []",
	})
	if n := svc.gets.Load() - gets; n != 2 {
		t.Errorf("the bulk sent %d lookups, want 2 (the user deleted, before; the user created, after)", n)
	}

	// a /Bulk the service stopped at failOnErrors: nothing after the error was
	// applied, and nothing is emitted
	applied := svc.applied.Load()
	bulk, _ = send(http.MethodPost, "/scim/v2/Bulk", `{"failOnErrors":1,"Operations":[
	  {"method":"POST","path":"/Users","bulkId":"a","data":{"userName":""}},
	  {"method":"POST","path":"/Users","bulkId":"b","data":{"userName":"erin@acme.test"}}
	]}`, http.StatusOK)
	if strings.Count(bulk, `"method"`) != 1 || svc.applied.Load() != applied {
		t.Fatalf("the service went on after failOnErrors: %s", bulk)
	}
	next(0)

	// a /Bulk refused as a whole (413): nothing
	ops := strings.Repeat(`{"method":"DELETE","path":"/Groups/`+id(3)+`"},`, svc.maxOps+1)
	send(http.MethodPost, "/scim/v2/Bulk", `{"Operations":[`+strings.TrimSuffix(ops, ",")+`]}`, http.StatusRequestEntityTooLarge)
	next(0)
}
