package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// legacyAPI is the demo's stand-in for a legacy user/tenant service: JSON in,
// JSON out, no webhooks. It follows the API described in the header of
// rules/examples/basic-users-tenants.yaml, including its habits: creations
// answer 201 with the object, deletions answer 204 with no body, errors carry
// {"error": …}.
type legacyAPI struct {
	mu      sync.Mutex
	seq     int
	tenants map[string]map[string]any
	users   map[string]map[string]any
	now     func() time.Time
}

func newLegacyAPI() *legacyAPI {
	return &legacyAPI{tenants: map[string]map[string]any{}, users: map[string]map[string]any{}, now: time.Now}
}

func (a *legacyAPI) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/tenants", a.list(func() map[string]map[string]any { return a.tenants }))
	mux.HandleFunc("GET /api/users", a.list(func() map[string]map[string]any { return a.users }))
	mux.HandleFunc("GET /api/tenants/{id}", a.get(func() map[string]map[string]any { return a.tenants }))
	mux.HandleFunc("GET /api/users/{id}", a.get(func() map[string]map[string]any { return a.users }))
	mux.HandleFunc("POST /api/tenants", a.createTenant)
	mux.HandleFunc("POST /api/users", a.createUser)
	mux.HandleFunc("PUT /api/tenants/{id}", a.update(func() map[string]map[string]any { return a.tenants }, "name", "plan"))
	mux.HandleFunc("PATCH /api/tenants/{id}", a.update(func() map[string]map[string]any { return a.tenants }, "name", "plan"))
	mux.HandleFunc("PUT /api/users/{id}", a.update(func() map[string]map[string]any { return a.users }, "email", "name", "role"))
	mux.HandleFunc("PATCH /api/users/{id}", a.update(func() map[string]map[string]any { return a.users }, "email", "name", "role"))
	mux.HandleFunc("DELETE /api/tenants/{id}", a.remove(func() map[string]map[string]any { return a.tenants }))
	mux.HandleFunc("DELETE /api/users/{id}", a.remove(func() map[string]map[string]any { return a.users }))
	return mux
}

func (a *legacyAPI) nextID(prefix string) string {
	a.seq++
	return fmt.Sprintf("%s_%d", prefix, a.seq)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func readBody(w http.ResponseWriter, r *http.Request) (map[string]any, bool) {
	var body map[string]any
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	if err := dec.Decode(&body); err != nil {
		apiError(w, http.StatusBadRequest, "invalid JSON: "+err.Error())
		return nil, false
	}
	return body, true
}

func text(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return strings.TrimSpace(s)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (a *legacyAPI) createTenant(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	if text(body, "name") == "" {
		apiError(w, http.StatusUnprocessableEntity, "name is required")
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	t := map[string]any{
		"id": a.nextID("t"), "name": text(body, "name"), "plan": firstNonEmpty(text(body, "plan"), "free"),
		"api_key": "ak_live_" + randomHex(8), "created_at": a.now().UTC().Format(time.RFC3339),
	}
	a.tenants[t["id"].(string)] = t
	writeJSON(w, http.StatusCreated, t)
}

func (a *legacyAPI) createUser(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	email := strings.ToLower(text(body, "email"))
	if email == "" || !strings.Contains(email, "@") {
		apiError(w, http.StatusBadRequest, "a valid email is required")
		return
	}
	if text(body, "password") == "" {
		apiError(w, http.StatusBadRequest, "password is required")
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, u := range a.users {
		if u["email"] == email {
			apiError(w, http.StatusConflict, "email already registered")
			return
		}
	}
	tenant := text(body, "tenant_id")
	if tenant != "" && a.tenants[tenant] == nil {
		apiError(w, http.StatusBadRequest, "unknown tenant_id")
		return
	}
	u := map[string]any{
		"id": a.nextID("u"), "email": email, "name": text(body, "name"), "tenant_id": tenant,
		"role": firstNonEmpty(text(body, "role"), "member"), "password_hash": "$2y$10$" + randomHex(12),
		"internal_notes": "created via the demo", "created_at": a.now().UTC().Format(time.RFC3339),
	}
	a.users[u["id"].(string)] = u
	writeJSON(w, http.StatusCreated, u)
}

func (a *legacyAPI) list(coll func() map[string]map[string]any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		out := []map[string]any{}
		for _, v := range coll() {
			out = append(out, v)
		}
		sort.Slice(out, func(i, j int) bool { return out[i]["id"].(string) < out[j]["id"].(string) })
		writeJSON(w, http.StatusOK, out)
	}
}

func (a *legacyAPI) get(coll func() map[string]map[string]any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		v := coll()[r.PathValue("id")]
		if v == nil {
			apiError(w, http.StatusNotFound, "not found")
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

func (a *legacyAPI) update(coll func() map[string]map[string]any, fields ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		v := coll()[r.PathValue("id")]
		if v == nil {
			apiError(w, http.StatusNotFound, "not found")
			return
		}
		for _, f := range fields {
			if s := text(body, f); s != "" {
				v[f] = s
			}
		}
		v["updated_at"] = a.now().UTC().Format(time.RFC3339)
		writeJSON(w, http.StatusOK, v)
	}
}

func (a *legacyAPI) remove(coll func() map[string]map[string]any) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		defer a.mu.Unlock()
		id := r.PathValue("id")
		if coll()[id] == nil {
			apiError(w, http.StatusNotFound, "not found")
			return
		}
		delete(coll(), id)
		w.WriteHeader(http.StatusNoContent) // as real APIs do: no body
	}
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}
