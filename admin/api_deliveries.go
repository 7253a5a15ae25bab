package admin

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
	"github.com/authtap/authtap/worker/tasks"
)

// deliveriesResponse is the answer to GET /webhooks/{id}/deliveries.
type deliveriesResponse struct {
	Deliveries []worker.Attempt `json:"deliveries"`
	// NextBefore, when set, is the ?before value of the next (older) page.
	NextBefore string `json:"next_before,omitempty"`
}

// maxDeliveriesScan bounds how many attempts one filtered listing reads.
const maxDeliveriesScan = 10 * MaxListLimit

// listDeliveries answers GET /webhooks/{id}/deliveries, newest first;
// ?tenant=ID keeps the deliveries of that tenant's events (reading at most
// maxDeliveriesScan attempts per page).
func (a *api) listDeliveries(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	limit, e := limitParam(r)
	if e != nil {
		return e
	}
	before, e := timeParam(r, "before")
	if e != nil {
		return e
	}
	tenant, byTenant, e := tenantParam(r)
	if e != nil {
		return e
	}
	if scopeOf(r) != nil {
		byTenant = false // its endpoint receives only its own tenant's events
	}
	ctx := r.Context()
	if _, e := a.endpoint(r, id); e != nil {
		return e
	}
	resp := deliveriesResponse{Deliveries: []worker.Attempt{}}
	for scanned := 0; ; {
		atts, err := a.store.Attempts(ctx, id, limit, before)
		if err != nil {
			return internal(err)
		}
		scanned += len(atts)
		for _, at := range atts {
			if !byTenant || at.Tenant == tenant {
				resp.Deliveries = append(resp.Deliveries, at)
			}
		}
		if len(atts) < limit { // the log holds no more
			resp.NextBefore = ""
			break
		}
		// More may follow; a page keeps one microsecond's attempts together.
		before = atts[len(atts)-1].Time
		resp.NextBefore = before.UTC().Format(time.RFC3339Nano)
		if len(resp.Deliveries) >= limit || scanned >= maxDeliveriesScan {
			break
		}
	}
	if n := len(resp.Deliveries); n > limit {
		// Filtered pages overshot: cut after limit, but not inside a microsecond.
		last := resp.Deliveries[limit-1].Time.Truncate(time.Microsecond)
		cut := limit
		for cut < n && resp.Deliveries[cut].Time.Truncate(time.Microsecond).Equal(last) {
			cut++
		}
		if cut < n {
			resp.Deliveries = resp.Deliveries[:cut]
			resp.NextBefore = resp.Deliveries[cut-1].Time.UTC().Format(time.RFC3339Nano)
		}
	}
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// retryResponse is the answer to POST /deliveries/{id}/retry.
type retryResponse struct {
	// DeliveryID is the id of the task that will run: the same id when a
	// waiting or archived delivery was moved forward, a new one when the
	// delivery had completed or was gone and a fresh one was enqueued.
	DeliveryID string `json:"delivery_id"`
	// Action is "requeued" (the existing task runs now) or "enqueued" (a new task).
	Action string `json:"action"`
	// PreviousState is the asynq state the delivery was in: archived, retry,
	// scheduled, completed, or "gone" when Redis no longer holds it.
	PreviousState string `json:"previous_state"`
}

// parseDeliveryID splits "<event id>:<endpoint id>[:suffix]".
func parseDeliveryID(id string) (eventID, endpointID string, ok bool) {
	parts := strings.SplitN(id, ":", 3)
	if len(parts) < 2 || parts[0] == "" || parts[1] == "" {
		return "", "", false
	}
	return parts[0], parts[1], true
}

func (a *api) retryDelivery(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	eventID, endpointID, ok := parseDeliveryID(id)
	if !ok {
		return errorf(http.StatusNotFound, CodeNotFound,
			"delivery %q does not exist: a delivery id is \"<event id>:<endpoint id>\"", id)
	}
	ctx := r.Context()
	ep, e := a.endpoint(r, endpointID)
	if e != nil {
		if e.Code == CodeNotFound {
			return errorf(http.StatusNotFound, CodeNotFound, "delivery %q: endpoint %q does not exist", id, endpointID)
		}
		return e
	}
	if !ep.Enabled {
		return errorf(http.StatusConflict, CodeDisabled,
			"endpoint %q is disabled (%s); enable it (PATCH {\"enabled\": true}) before retrying its deliveries", ep.ID, ep.DisabledReason)
	}
	state := "gone"
	info, err := a.inspector.GetTaskInfo(tasks.QueueDeliver, id)
	switch {
	case err == nil:
		state = info.State.String()
		switch info.State {
		case asynq.TaskStateArchived, asynq.TaskStateRetry, asynq.TaskStateScheduled, asynq.TaskStateAggregating:
			if err := a.inspector.RunTask(tasks.QueueDeliver, id); err != nil {
				if !errors.Is(err, asynq.ErrTaskNotFound) {
					return internal(fmt.Errorf("running delivery %s: %w", id, err))
				}
				state = "gone" // completed or deleted meanwhile
				break
			}
			a.log.Info("delivery requeued", append(scopeOf(r).logFields(), zap.String("delivery_id", id), zap.String("previous_state", state))...)
			writeJSON(w, http.StatusAccepted, retryResponse{DeliveryID: id, Action: "requeued", PreviousState: state})
			return nil
		case asynq.TaskStatePending, asynq.TaskStateActive:
			return errorf(http.StatusConflict, CodeConflict, "delivery %q is already %s", id, state)
		}
	case errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
	default:
		return internal(fmt.Errorf("looking up delivery %s: %w", id, err))
	}
	// Completed or gone: deliver the kept event again under a new task id.
	ev, err := a.store.GetEvent(ctx, eventID)
	if err != nil {
		if errors.Is(err, worker.ErrEventNotFound) {
			return errorf(http.StatusNotFound, CodeNotFound,
				"delivery %q cannot be retried: its event %q is no longer kept", id, eventID)
		}
		return internal(err)
	}
	if !worker.TenantTakes(ep.Tenant, ev.Tenant) {
		// Never hand one tenant's event to another tenant's endpoint, whatever
		// delivery id is asked for.
		return errorf(http.StatusNotFound, CodeNotFound,
			"delivery %q does not exist: endpoint %q never receives event %q", id, endpointID, eventID)
	}
	newID, err := a.enqueueDelivery(r.Context(), ev, ep, true, "retry-"+strings.ToLower(rand.Text()[:12]))
	if err != nil {
		return internal(err)
	}
	a.log.Info("delivery enqueued again", append(scopeOf(r).logFields(), zap.String("delivery_id", id), zap.String("new_delivery_id", newID),
		zap.String("previous_state", state))...)
	writeJSON(w, http.StatusAccepted, retryResponse{DeliveryID: newID, Action: "enqueued", PreviousState: state})
	return nil
}

// enqueueDelivery enqueues a delivery of ev to ep (marked as a replay when
// replay is set) and returns its task id: "<event id>:<endpoint id>", with
// ":<suffix>" after it when suffix is not empty.
func (a *api) enqueueDelivery(ctx context.Context, ev rules.Event, ep worker.Endpoint, replay bool, suffix string) (string, error) {
	p, err := worker.DeliverPayloadFor(ev, ep, replay)
	if err != nil {
		return "", err
	}
	id := tasks.DeliverTaskID(ev.ID, ep.ID)
	if suffix != "" {
		id += ":" + suffix
	}
	task, err := tasks.NewDeliverTask(p, asynq.TaskID(id), asynq.MaxRetry(a.maxRetry), asynq.Retention(a.dedupe))
	if err != nil {
		return "", err
	}
	if _, err := a.client.EnqueueContext(ctx, task); err != nil {
		return "", fmt.Errorf("enqueuing delivery %s: %w", id, err)
	}
	return id, nil
}

// replayResponse is the answer to POST /webhooks/{id}/replay.
type replayResponse struct {
	Replayed int      `json:"replayed"`
	EventIDs []string `json:"event_ids"`
}

func (a *api) replay(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	since, e := timeParam(r, "since")
	if e != nil {
		return e
	}
	if since.IsZero() {
		return &apiError{Status: http.StatusBadRequest, Code: CodeInvalidParameter, Field: "since",
			Message: "since: required, an RFC 3339 time such as 2026-11-23T10:00:00Z"}
	}
	until, e := timeParam(r, "until")
	if e != nil {
		return e
	}
	if until.IsZero() {
		until = a.now()
	}
	if !since.Before(until) {
		return &apiError{Status: http.StatusBadRequest, Code: CodeInvalidParameter, Field: "until",
			Message: fmt.Sprintf("until: must be after since (%s), got %s", since.Format(time.RFC3339), until.Format(time.RFC3339))}
	}
	if until.Sub(since) > MaxReplayWindow {
		return &apiError{Status: http.StatusBadRequest, Code: CodeInvalidParameter, Field: "since",
			Message: fmt.Sprintf("since: the window may span at most %s (14 days), got %s", MaxReplayWindow, until.Sub(since).Round(time.Second))}
	}
	ctx := r.Context()
	ep, e := a.endpoint(r, id)
	if e != nil {
		return e
	}
	if !ep.Enabled {
		return errorf(http.StatusConflict, CodeDisabled,
			"endpoint %q is disabled (%s); enable it (PATCH {\"enabled\": true}) before replaying events to it", id, ep.DisabledReason)
	}
	evs, err := a.store.EventsBetween(ctx, since, until)
	if err != nil {
		return internal(err)
	}
	// Test events went to one endpoint only; replay them only to that one.
	own := map[string]bool{}
	if mine, err := a.store.EndpointEventsBetween(ctx, id, since, until); err == nil {
		for _, ev := range mine {
			own[ev.ID] = true
		}
	} else {
		return internal(err)
	}
	evs = slices.DeleteFunc(evs, func(ev rules.Event) bool {
		return !endpointTakes(ep, ev) || ev.Type == EventTest && ev.Source.Name == worker.SourceName && !own[ev.ID]
	})
	if scopeOf(r) != nil && len(evs) > MaxPortalReplayEvents {
		return &apiError{Status: http.StatusBadRequest, Code: CodeInvalidParameter, Field: "since",
			Message: fmt.Sprintf("since: the window holds %d events for this endpoint; a replay through the portal sends at most %d: pick a shorter window",
				len(evs), MaxPortalReplayEvents)}
	}
	nonce := "replay-" + strings.ToLower(rand.Text()[:12])
	resp := replayResponse{EventIDs: []string{}}
	for _, ev := range evs {
		if _, err := a.enqueueDelivery(r.Context(), ev, ep, true, nonce); err != nil {
			return internal(fmt.Errorf("replaying to %s after %d events: %w", id, resp.Replayed, err))
		}
		resp.Replayed++
		resp.EventIDs = append(resp.EventIDs, ev.ID)
	}
	a.log.Info("events replayed", append(scopeOf(r).logFields(), zap.String("endpoint_id", id), zap.Time("since", since), zap.Time("until", until),
		zap.Int("replayed", resp.Replayed))...)
	writeJSON(w, http.StatusAccepted, resp)
	return nil
}

// endpointTakes reports whether ep's mode and filters take ev (enabled or not).
func endpointTakes(ep worker.Endpoint, ev rules.Event) bool {
	mode := ev.Mode
	if mode == "" {
		mode = rules.ModeLive
	}
	if mode != ep.Mode || !worker.TenantTakes(ep.Tenant, ev.Tenant) {
		return false
	}
	if len(ep.Events) == 0 {
		return true
	}
	for _, f := range ep.Events {
		if worker.MatchEventFilter(f, ev.Type) {
			return true
		}
	}
	return false
}

// listEvents answers GET /events, newest first; ?type=FILTER and
// ?tenant=ID keep the events of matching types and of that tenant.
func (a *api) listEvents(w http.ResponseWriter, r *http.Request) *apiError {
	limit, e := limitParam(r)
	if e != nil {
		return e
	}
	typ := r.URL.Query().Get("type")
	if typ != "" {
		if err := worker.ValidateEventFilter(typ); err != nil {
			return &apiError{Status: http.StatusBadRequest, Code: CodeInvalidParameter, Field: "type",
				Message: fmt.Sprintf("type: %v", err)}
		}
	}
	tenant, byTenant, e := tenantParam(r)
	if e != nil {
		return e
	}
	fetch := limit
	if typ != "" || byTenant {
		fetch = worker.MaxEventsPerQuery
	}
	evs, err := a.store.RecentEvents(r.Context(), fetch)
	if err != nil {
		return internal(err)
	}
	out := make([]rules.Event, 0, min(limit, len(evs)))
	for _, ev := range evs {
		if len(out) == limit {
			break
		}
		if (typ == "" || worker.MatchEventFilter(typ, ev.Type)) && (!byTenant || ev.Tenant == tenant) {
			out = append(out, ev)
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": out})
	return nil
}

// eventResponse is the answer to GET /events/{id}.
type eventResponse struct {
	Event    rules.Event      `json:"event"`
	Attempts []worker.Attempt `json:"attempts"`
}

func (a *api) getEvent(w http.ResponseWriter, r *http.Request) *apiError {
	id := r.PathValue("id")
	ctx := r.Context()
	ev, err := a.store.GetEvent(ctx, id)
	if err != nil {
		if errors.Is(err, worker.ErrEventNotFound) {
			return errorf(http.StatusNotFound, CodeNotFound, "event %q is not (or no longer) kept", id)
		}
		return internal(err)
	}
	atts, err := a.store.EventAttempts(ctx, id)
	if err != nil {
		return internal(err)
	}
	writeJSON(w, http.StatusOK, eventResponse{Event: ev, Attempts: atts})
	return nil
}
