package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// receiver is the demo's subscriber: it verifies every delivery with the
// official Standard Webhooks library (an implementation independent of
// authtap's own signing) and prints each event.
type receiver struct {
	wh  *standardwebhooks.Webhook
	out io.Writer

	mu       sync.Mutex
	verified map[string]int // event id → deliveries seen
	byType   map[string]int
	failed   int
	notify   chan struct{}
}

func newReceiver(secret string, out io.Writer) (*receiver, error) {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		return nil, fmt.Errorf("creating the demo receiver's verifier: %w", err)
	}
	return &receiver{wh: wh, out: out, verified: map[string]int{}, byType: map[string]int{}, notify: make(chan struct{}, 1)}, nil
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
	if err != nil {
		http.Error(w, "reading body", http.StatusBadRequest)
		return
	}
	if err := rc.wh.Verify(body, r.Header); err != nil {
		rc.mu.Lock()
		rc.failed++
		rc.mu.Unlock()
		fmt.Fprintf(rc.out, "receiver  ✗ signature REJECTED for %s: %v\n", r.Header.Get("webhook-id"), err)
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var ev struct {
		ID      string          `json:"id"`
		Type    string          `json:"type"`
		Subject string          `json:"subject"`
		Data    json.RawMessage `json:"data"`
	}
	_ = json.Unmarshal(body, &ev)
	rc.mu.Lock()
	rc.verified[ev.ID]++
	rc.byType[ev.Type]++
	again := rc.verified[ev.ID] > 1
	rc.mu.Unlock()
	note := ""
	if again {
		note = " (again: same webhook-id, a retry)"
	}
	data := string(ev.Data)
	if len(data) > 160 {
		data = data[:157] + "..."
	}
	fmt.Fprintf(rc.out, "receiver  ✔ verified %-16s %s subject=%s%s\n          data=%s\n", ev.Type, ev.ID, ev.Subject, note, data)
	w.WriteHeader(http.StatusNoContent)
	select {
	case rc.notify <- struct{}{}:
	default:
	}
}

// counts returns distinct events verified, deliveries rejected, and a summary by type.
func (rc *receiver) counts() (events, failed int, summary string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var parts []string
	for _, t := range sortedMapKeys(rc.byType) {
		parts = append(parts, fmt.Sprintf("%s×%d", t, rc.byType[t]))
	}
	return len(rc.verified), rc.failed, strings.Join(parts, " ")
}

func sortedMapKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
