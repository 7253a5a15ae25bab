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
)

// scimRules is how an admin covers a SCIM 2.0 service (RFC 7644): users
// created (with a lookup of the stored record) and deleted, group members
// added and removed by PATCH operations, and /Bulk, whose operations the
// same rules match.
const scimRules = `version: 1
rules:
  - name: scim-user-created
    match: {method: POST, path: /scim/v2/Users, status: 201}
    lookup: {get: "/scim/v2/Users/{response.body.id}", as: user}
    emit:
      type: user.created
      subject: "{response.body.id}"
      data: {id: "{response.body.id}", userName: "{user.body.userName}", location: "{response.header.Location}"}
  - name: scim-user-deleted
    match: {method: DELETE, path: "/scim/v2/Users/{id}", status: 204}
    emit: {type: user.deleted, subject: "{path.id}", data: {id: "{path.id}"}}
  - name: scim-group-members
    match: {method: PATCH, path: "/scim/v2/Groups/{id}"}
    emit:
      - type: group.member_added
        each: {items: "{request.body.Operations}", where: {op: {regex: "(?i)^add$"}, path: members}, then: "{item.value}"}
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{item.value}"}
      - type: group.member_removed
        each:
          items: "{request.body.Operations}"
          where: {op: {regex: "(?i)^remove$"}, path: {regex: '^members\[value eq "(?P<member>[^"]+)"\]$'}}
        subject: "{path.id}"
        data: {group: "{path.id}", member: "{where.member}"}
  - name: scim-bulk
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "{item.path}", body: "{item.data}"}
      response: {items: "{response.body.Operations}", status: "{item.status}", body: "{item.response}", location: "{item.location}"}
`

// scimService is a small SCIM 2.0 service with bearer auth: users and
// groups in memory, and /Bulk applying each operation through the same
// handlers, as real services do.
type scimService struct {
	mu      sync.Mutex
	next    int
	users   map[string]string // id → userName
	members map[string][]string
	lookups atomic.Int64 // GETs of a user
}

func newSCIMService() *scimService {
	return &scimService{users: map[string]string{"carol-1": "carol"}, members: map[string][]string{"g_1": {"c3a26dd3"}}}
}

func (s *scimService) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer scim-token" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if r.Method == http.MethodPost && r.URL.Path == "/scim/v2/Bulk" {
		s.bulk(w, r)
		return
	}
	s.one(w, r)
}

func (s *scimService) one(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/scim+json")
	id, isUser := strings.CutPrefix(r.URL.Path, "/scim/v2/Users/")
	group, isGroup := strings.CutPrefix(r.URL.Path, "/scim/v2/Groups/")
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/scim/v2/Users":
		var u struct{ UserName string }
		if json.NewDecoder(r.Body).Decode(&u) != nil || u.UserName == "" {
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"scimType":"invalidValue","status":"400"}`) //nolint:errcheck
			return
		}
		s.next++
		id := fmt.Sprintf("u-%d", s.next)
		s.users[id] = u.UserName
		w.Header().Set("Location", "https://scim.example.test/scim/v2/Users/"+id)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":%q,"userName":%q}`, id, u.UserName)
	case r.Method == http.MethodGet && isUser:
		s.lookups.Add(1)
		name, ok := s.users[id]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		fmt.Fprintf(w, `{"id":%q,"userName":%q}`, id, name)
	case r.Method == http.MethodDelete && isUser:
		if _, ok := s.users[id]; !ok {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		delete(s.users, id)
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPatch && isGroup:
		var p struct {
			Operations []struct {
				Op, Path string
				Value    []struct{ Value string }
			}
		}
		if json.NewDecoder(r.Body).Decode(&p) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		for _, op := range p.Operations {
			switch {
			case strings.EqualFold(op.Op, "add"):
				for _, v := range op.Value {
					s.members[group] = append(s.members[group], v.Value)
				}
			case strings.EqualFold(op.Op, "remove"):
				m := strings.TrimSuffix(strings.TrimPrefix(op.Path, `members[value eq "`), `"]`)
				s.members[group] = slices.DeleteFunc(s.members[group], func(x string) bool { return x == m })
			}
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		w.WriteHeader(http.StatusNotFound)
	}
}

// bulk applies RFC 7644 §3.7 operations one by one and answers with their
// statuses as strings.
func (s *scimService) bulk(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Operations []struct {
			Method, Path, BulkID string
			Data                 json.RawMessage
		}
	}
	if json.NewDecoder(r.Body).Decode(&in) != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	type result struct {
		Method   string          `json:"method"`
		BulkID   string          `json:"bulkId,omitempty"`
		Location string          `json:"location,omitempty"`
		Status   string          `json:"status"`
		Response json.RawMessage `json:"response,omitempty"`
	}
	var out []result
	for _, op := range in.Operations {
		req := httptest.NewRequest(op.Method, "/scim/v2"+op.Path, bytes.NewReader(op.Data))
		rec := httptest.NewRecorder()
		s.one(rec, req)
		res := result{Method: op.Method, BulkID: op.BulkID, Status: fmt.Sprint(rec.Code), Location: rec.Header().Get("Location")}
		if op.Method == http.MethodDelete && rec.Code == http.StatusNoContent {
			res.Location = "https://scim.example.test/scim/v2" + op.Path
		}
		if b := rec.Body.Bytes(); len(b) > 0 {
			res.Response = b
		}
		out = append(out, res)
	}
	w.Header().Set("Content-Type", "application/scim+json")
	json.NewEncoder(w).Encode(map[string]any{ //nolint:errcheck
		"schemas": []string{"urn:ietf:params:scim:api:messages:2.0:BulkResponse"}, "Operations": out,
	})
}

// TestBatchAndEachThroughCaddy runs real Caddy, a private Redis and a SCIM
// service: a /Bulk creating two users, deleting one and failing one
// operation (400) queues events for the three successes only, each from its
// own rule (the creates after their lookup, sent with the envelope's
// credentials); a PATCH adding two members and removing one queues three.
func TestBatchAndEachThroughCaddy(t *testing.T) {
	rulesFile := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rulesFile, []byte(scimRules), 0o600); err != nil {
		t.Fatal(err)
	}
	svc := newSCIMService()
	it := startTapCaddy(t, svc, map[string]any{"rules": []string{rulesFile}, "source": "scim"}, "")
	send := func(method, path, body string, want int) string {
		t.Helper()
		req, _ := http.NewRequest(method, it.base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/scim+json")
		req.Header.Set("Authorization", "Bearer scim-token")
		resp, err := it.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		return string(b)
	}

	bulk := send(http.MethodPost, "/scim/v2/Bulk", `{"schemas":["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],"Operations":[
	  {"method":"POST","path":"/Users","bulkId":"a","data":{"userName":"alice","password":"s3cret"}},
	  {"method":"POST","path":"/Users","bulkId":"b","data":{"userName":"bob"}},
	  {"method":"DELETE","path":"/Users/carol-1"},
	  {"method":"POST","path":"/Users","bulkId":"c","data":{"displayName":"no userName"}}
	]}`, http.StatusOK)
	if !strings.Contains(bulk, `"status":"400"`) || strings.Count(bulk, `"status":"201"`) != 2 || !strings.Contains(bulk, `"status":"204"`) {
		t.Fatalf("the service answered the bulk with %s", bulk)
	}
	evs := it.waitForEvents(3, 10*time.Second, func(rules.Event) bool { return true })
	time.Sleep(300 * time.Millisecond) // anything that should not be there
	evs = it.pendingEvents()
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Source.Rule+" "+ev.Type+" "+ev.Subject+" "+string(ev.Data))
	}
	slices.Sort(got)
	want := []string{
		`scim-user-created user.created u-1 {"id":"u-1","userName":"alice","location":"https://scim.example.test/scim/v2/Users/u-1"}`,
		`scim-user-created user.created u-2 {"id":"u-2","userName":"bob","location":"https://scim.example.test/scim/v2/Users/u-2"}`,
		`scim-user-deleted user.deleted carol-1 {"id":"carol-1"}`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events of the bulk\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := svc.lookups.Load(); n != 2 {
		t.Errorf("the service answered %d lookups, want one per created user", n)
	}
	for _, ev := range evs {
		if len(ev.Source.Missing) > 0 {
			t.Errorf("event %s lists missing %v: its lookup failed", ev.ID, ev.Source.Missing)
		}
	}

	send(http.MethodPatch, "/scim/v2/Groups/g_1", `{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[
	  {"op":"Add","path":"members","value":[{"value":"u-1","display":"alice"},{"value":"u-2","display":"bob"}]},
	  {"op":"remove","path":"members[value eq \"c3a26dd3\"]"}
	]}`, http.StatusNoContent)
	members := it.waitForEvents(3, 10*time.Second, func(ev rules.Event) bool { return strings.HasPrefix(ev.Type, "group.") })
	time.Sleep(300 * time.Millisecond)
	got = nil
	for _, ev := range it.pendingEvents() {
		if strings.HasPrefix(ev.Type, "group.") {
			got = append(got, ev.Type+" "+ev.Subject+" "+string(ev.Data))
		}
	}
	slices.Sort(got)
	want = []string{
		`group.member_added g_1 {"group":"g_1","member":"u-1"}`,
		`group.member_added g_1 {"group":"g_1","member":"u-2"}`,
		`group.member_removed g_1 {"group":"g_1","member":"c3a26dd3"}`,
	}
	if len(members) != 3 || strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events of the PATCH\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// scimBeforeRules read the user a DELETE removes before the request is
// forwarded (when: before), so user.deleted carries what was deleted, also
// for the DELETE operations inside a /Bulk.
const scimBeforeRules = `version: 1
rules:
  - name: scim-user-created
    match: {method: POST, path: /scim/v2/Users, status: 201}
    lookup: {get: "/scim/v2/Users/{response.body.id}", as: user}
    emit: {type: user.created, subject: "{response.body.id}", data: {userName: "{user.body.userName}"}}
  - name: scim-user-deleted
    match: {method: DELETE, path: "/scim/v2/Users/{id}", status: 204}
    lookup: {get: "/scim/v2/Users/{path.id}", as: old, when: before}
    emit: {type: user.deleted, subject: "{path.id}", data: {id: "{path.id}", user: "{old.body}"}}
  - name: scim-bulk
    match: {method: POST, path: /scim/v2/Bulk}
    batch:
      base: /scim/v2
      request: {items: "{request.body.Operations}", method: "{item.method}", url: "{item.path}", body: "{item.data}"}
      response: {items: "{response.body.Operations}", status: "{item.status}", body: "{item.response}", location: "{item.location}"}
`

// TestBatchBeforeLookupsThroughCaddy runs real Caddy, a private Redis and a
// SCIM service: the DELETE operations of a /Bulk get their rule's
// before-lookup, sent before the envelope is forwarded (the user is gone
// after it), each answer going to its own operation; a bulk of 100 deletes
// sends at most rules.MaxExchangeLookups of them, and the rest of its events
// list what is missing.
func TestBatchBeforeLookupsThroughCaddy(t *testing.T) {
	rulesFile := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rulesFile, []byte(scimBeforeRules), 0o600); err != nil {
		t.Fatal(err)
	}
	svc := newSCIMService()
	svc.users["u_1"], svc.users["u_2"], svc.users["u_3"] = "ann", "bob", "cy"
	it := startTapCaddy(t, svc, map[string]any{"rules": []string{rulesFile}, "source": "scim"}, "")
	send := func(body string) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, it.base+"/scim/v2/Bulk", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/scim+json")
		req.Header.Set("Authorization", "Bearer scim-token")
		resp, err := it.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("bulk: %d %s", resp.StatusCode, b)
		}
		return string(b)
	}
	bulk := send(`{"schemas":["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],"Operations":[
	  {"method":"POST","path":"/Users","bulkId":"a","data":{"userName":"dee"}},
	  {"method":"DELETE","path":"/Users/u_2"},
	  {"method":"DELETE","path":"/Users/nobody"},
	  {"method":"DELETE","path":"/Users/u_3"}
	]}`)
	if strings.Count(bulk, `"status":"204"`) != 2 || !strings.Contains(bulk, `"status":"404"`) {
		t.Fatalf("the service answered the bulk with %s", bulk)
	}
	it.waitForEvents(3, 10*time.Second, func(rules.Event) bool { return true })
	time.Sleep(300 * time.Millisecond) // anything that should not be there
	var got []string
	for _, ev := range it.pendingEvents() {
		got = append(got, fmt.Sprintf("%s %s %s %v", ev.Type, ev.Subject, ev.Data, ev.Source.Missing))
	}
	slices.Sort(got)
	want := []string{
		`user.created u-1 {"userName":"dee"} []`,
		`user.deleted u_2 {"id":"u_2","user":{"id":"u_2","userName":"bob"}} []`,
		`user.deleted u_3 {"id":"u_3","user":{"id":"u_3","userName":"cy"}} []`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events of the bulk\n got %s\nwant %s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// one before-lookup per DELETE (the refused one too: its status is not
	// known when it is sent), one after-lookup for the create
	if n := svc.lookups.Load(); n != 4 {
		t.Errorf("the service answered %d lookups, want 4", n)
	}

	// 100 deletes: at most rules.MaxExchangeLookups before-lookups
	svc.lookups.Store(0)
	var ops []string
	svc.mu.Lock()
	for i := range 100 {
		svc.users[fmt.Sprintf("m_%d", i)] = fmt.Sprintf("m%d", i)
		ops = append(ops, fmt.Sprintf(`{"method":"DELETE","path":"/Users/m_%d"}`, i))
	}
	svc.mu.Unlock()
	send(`{"Operations":[` + strings.Join(ops, ",") + `]}`)
	evs := it.waitForEvents(103, 10*time.Second, func(rules.Event) bool { return true })
	if n := svc.lookups.Load(); n != rules.MaxExchangeLookups {
		t.Errorf("a bulk of 100 deletes sent %d before-lookups, want %d (rules.MaxExchangeLookups)", n, rules.MaxExchangeLookups)
	}
	complete, missing := 0, 0
	for _, ev := range evs {
		if ev.Type != "user.deleted" || !strings.HasPrefix(ev.Subject, "m_") {
			continue
		}
		switch {
		case len(ev.Source.Missing) == 0 && strings.Contains(string(ev.Data), `"userName":"m`):
			complete++
		case slices.Equal(ev.Source.Missing, []string{"old.body"}):
			missing++
		default:
			t.Errorf("event %s %s", ev.Data, ev.Source.Missing)
		}
	}
	if complete != rules.MaxExchangeLookups || missing != 100-rules.MaxExchangeLookups {
		t.Errorf("%d events with the deleted user, %d listing it missing", complete, missing)
	}
}
