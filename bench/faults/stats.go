package main

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// ledger records what the upstream created and what the receiver got, keyed
// by the user id the upstream answered with (the event's data.id). It is the
// ground truth of a scenario: every user the upstream created (every 201)
// must arrive at the receiver, under exactly one webhook-id.
type ledger struct {
	mu        sync.Mutex
	created   map[string]time.Time // user id → when the upstream answered 201
	delivered map[string]*arrival  // user id → what the receiver saw
	perID     map[string]int       // webhook-id → verified deliveries
	badSig    int                  // deliveries whose signature did not verify
	badBody   int                  // verified deliveries the receiver could not attribute to a user
	mismatch  int                  // webhook-id header differs from the envelope's id
}

// arrival is what the receiver saw of one user's event.
type arrival struct {
	first      time.Time // first verified delivery
	webhookIDs []string  // distinct webhook-ids it arrived under, in order
}

func newLedger() *ledger {
	return &ledger{created: map[string]time.Time{}, delivered: map[string]*arrival{}, perID: map[string]int{}}
}

func (l *ledger) create(user string, at time.Time) {
	l.mu.Lock()
	l.created[user] = at
	l.mu.Unlock()
}

// deliver records one verified delivery of user's event under webhookID.
func (l *ledger) deliver(user, webhookID string, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.perID[webhookID]++
	a := l.delivered[user]
	if a == nil {
		a = &arrival{first: at}
		l.delivered[user] = a
	}
	if !slices.Contains(a.webhookIDs, webhookID) {
		a.webhookIDs = append(a.webhookIDs, webhookID)
	}
}

func (l *ledger) count(bad *int) {
	l.mu.Lock()
	*bad++
	l.mu.Unlock()
}

// counts returns the number of users created and of those delivered.
func (l *ledger) counts() (created, delivered int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for u := range l.created {
		if l.delivered[u] != nil {
			delivered++
		}
	}
	return len(l.created), delivered
}

// outcome is one scenario's figures.
type outcome struct {
	created       int           // users the upstream created (201s)
	atStart       int           // created before the fault began and delivered after it began
	backlog       int           // of those created by the fault's end, not yet delivered at its end
	drained       bool          // every event created by the fault's end was delivered within the wait
	drain         time.Duration // fault end → last delivery of an event created by the fault's end (0: none waited)
	allDelivered  time.Duration // fault end → last first-delivery of any event (traffic went on after the end)
	slowest       time.Duration // the largest creation → first-delivery latency
	slowestOpen   bool          // an event is undelivered: slowest is how long it has waited so far
	p99           time.Duration // 99th percentile of that latency
	lost          int           // created, never delivered within the wait
	lostBacklog   int           // of lost, created by the fault's end
	secondID      int           // events delivered under more than one webhook-id
	redelivered   int           // deliveries beyond the first under the same webhook-id
	unexpected    int           // deliveries of users the upstream never created
	badSig        int
	badBody       int
	mismatch      int
	clientErrors  int // requests through Caddy that failed or did not answer 201
	requestsTotal int
}

// summarize computes the outcome of a scenario whose fault began at start
// and ended at end, when the wait for deliveries ended at until.
func (l *ledger) summarize(start, end, until time.Time) outcome {
	l.mu.Lock()
	defer l.mu.Unlock()
	o := outcome{created: len(l.created), badSig: l.badSig, badBody: l.badBody, mismatch: l.mismatch}
	var lat []time.Duration
	o.drained = true
	for u, at := range l.created {
		a := l.delivered[u]
		if a == nil {
			o.lost++
			o.slowest = max(o.slowest, until.Sub(at))
			o.slowestOpen = true
			if !at.After(end) {
				o.lostBacklog++
				o.drained = false
			}
			continue
		}
		if at.Before(start) && !a.first.Before(start) {
			o.atStart++
		}
		d := a.first.Sub(at)
		lat = append(lat, d)
		o.slowest = max(o.slowest, d)
		if since := a.first.Sub(end); since > 0 {
			o.allDelivered = max(o.allDelivered, since)
			if !at.After(end) {
				o.backlog++
				o.drain = max(o.drain, since)
			}
		}
		if len(a.webhookIDs) > 1 {
			o.secondID++
		}
	}
	o.backlog += o.lostBacklog
	for u := range l.delivered {
		if _, ok := l.created[u]; !ok {
			o.unexpected++
		}
	}
	for _, n := range l.perID {
		o.redelivered += n - 1
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		o.p99 = lat[min(len(lat)-1, len(lat)*99/100)]
	}
	return o
}

// ok reports whether the outcome meets issue 11's goal: nothing lost, no
// event under a second webhook-id, every signature good, drained within goal.
func (o outcome) ok(goal time.Duration) bool {
	return o.drained && o.lost == 0 && o.secondID == 0 && o.badSig == 0 && o.badBody == 0 &&
		o.mismatch == 0 && o.unexpected == 0 && o.drain <= goal
}

// drainText is the drain column: the time, or why there is none.
func (o outcome) drainText(maxDrain time.Duration) string {
	if !o.drained {
		return fmt.Sprintf("not drained within %s, %d waiting", maxDrain, o.lostBacklog)
	}
	return fmt.Sprintf("%.1f s", o.drain.Seconds())
}

// slowestText is the slowest-event column: "≥" when an event has not arrived.
func (o outcome) slowestText() string {
	if o.slowestOpen {
		return fmt.Sprintf("≥ %.1f s", o.slowest.Seconds())
	}
	return fmt.Sprintf("%.1f s", o.slowest.Seconds())
}
