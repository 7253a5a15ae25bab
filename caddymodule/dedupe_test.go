package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/authtap/authtap/rules"
)

const dedupeRules = `version: 1
rules:
  - name: user-created
    match: {method: POST, path: /api/users}
    emit:
      type: user.created
      subject: "{response.body.user.id}"
      data: {id: "{response.body.user.id}"}
      dedupe: "{request.header.Idempotency-Key}"
  - name: invite-sent
    match: {method: POST, path: /api/invites}
    emit:
      type: invite.sent
      data: {email: "{request.body.email}"}
      dedupe: "{request.header.Idempotency-Key}"
`

// idempotentAPI honours Idempotency-Key on /api/users as far as a request
// repeats exactly (the same key and body replay the first answer), and
// ignores it on /api/invites (every request creates an invite), as legacy
// APIs do.
type idempotentAPI struct {
	mu     sync.Mutex
	next   int
	replay map[string]string // key + body → response body
}

func (a *idempotentAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	defer a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/api/users":
		k := r.Header.Get("Idempotency-Key") + "\x00" + string(body)
		resp, ok := a.replay[k]
		if !ok {
			a.next++
			resp = fmt.Sprintf(`{"user":{"id":"u_%d"}}`, a.next)
			a.replay[k] = resp
		}
		w.WriteHeader(http.StatusCreated)
		io.WriteString(w, resp) //nolint:errcheck
	case "/api/invites":
		a.next++
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"invite":"i_%d"}`, a.next)
	default:
		http.NotFound(w, r)
	}
}

// TestDedupeKeyNeverMergesDistinctMutations runs real Caddy and Redis: two
// sign-ups sharing an Idempotency-Key but creating two users are two events;
// a true retry (same key, same answer) is one; two invites with the same key
// and body that the upstream answered differently are two events, though the
// rule reads nothing of the response.
func TestDedupeKeyNeverMergesDistinctMutations(t *testing.T) {
	rulesFile := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rulesFile, []byte(dedupeRules), 0o600); err != nil {
		t.Fatal(err)
	}
	it := startTapCaddy(t, &idempotentAPI{replay: map[string]string{}}, map[string]any{"rules": []string{rulesFile}, "source": "legacy-auth"}, "")
	post := func(path, key, body string) string {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, it.base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := it.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST %s: %d %s", path, resp.StatusCode, b)
		}
		return string(b)
	}
	a1 := post("/api/users", "k-1", `{"email":"a@x.test"}`)
	b1 := post("/api/users", "k-1", `{"email":"b@x.test"}`) // same key, another sign-up
	a2 := post("/api/users", "k-1", `{"email":"a@x.test"}`) // a true retry
	if a1 == b1 || a1 != a2 {
		t.Fatalf("upstream answers %s %s %s: want two users and one replay", a1, b1, a2)
	}
	i1 := post("/api/invites", "k-2", `{"email":"c@x.test"}`)
	i2 := post("/api/invites", "k-2", `{"email":"c@x.test"}`)
	if i1 == i2 {
		t.Fatalf("invites %s %s: want two", i1, i2)
	}

	// the retry's event is refused by Redis as a duplicate; wait for the four
	// others, then a moment more for anything that should not be there
	users := it.waitForEvents(2, 10*time.Second, func(ev rules.Event) bool { return ev.Type == "user.created" })
	invites := it.waitForEvents(2, 10*time.Second, func(ev rules.Event) bool { return ev.Type == "invite.sent" })
	time.Sleep(300 * time.Millisecond)
	all := it.pendingEvents()
	if len(all) != 4 {
		t.Fatalf("%d events queued, want 4: %+v", len(all), all)
	}
	var subjects []string
	for _, ev := range users {
		subjects = append(subjects, ev.Subject)
		if ev.DedupeWindow != rules.DefaultDedupeWindow {
			t.Errorf("event %s has dedupe window %v", ev.ID, ev.DedupeWindow)
		}
	}
	slices.Sort(subjects)
	if strings.Join(subjects, ",") != "u_1,u_2" {
		t.Errorf("user.created subjects %v, want u_1 and u_2 (one each; the retry merged)", subjects)
	}
	if len(invites) != 2 || invites[0].ID == invites[1].ID {
		t.Errorf("invites %+v: want two events with distinct ids", invites)
	}
}
