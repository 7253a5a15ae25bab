package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/rules"
)

// Delivery log defaults.
const (
	// DefaultRetention is how long attempts, events and the event index are kept.
	DefaultRetention = 14 * 24 * time.Hour
	// DefaultMaxAttemptsPerEndpoint caps the attempts kept per endpoint.
	DefaultMaxAttemptsPerEndpoint = 10000
	// MaxResponseExcerpt bounds Attempt.ResponseExcerpt, in bytes.
	MaxResponseExcerpt = 1024
	// DefaultMaxEvents caps the events kept for listing and replay.
	DefaultMaxEvents = 100000
	// MaxEventsPerQuery bounds EventsBetween and RecentEvents.
	MaxEventsPerQuery = 10000
)

const (
	keyAttemptsByEndpoint = keyPrefix + "attempts:endpoint:" // + endpoint id → ZSET of Attempt JSON by time (µs)
	keyAttemptsByEvent    = keyPrefix + "attempts:event:"    // + event id → ZSET of Attempt JSON by time (µs)
	keyEventPrefix        = keyPrefix + "event:"             // + event id → envelope JSON, with TTL
	keyEvents             = keyPrefix + "events"             // ZSET event id by event time (µs)
	keyEventsByEndpoint   = keyPrefix + "events:endpoint:"   // + endpoint id → ZSET event id by event time (µs)
	keyFailingPrefix      = keyPrefix + "failing:"           // + endpoint id → unix ms of the first failure since the last success
)

func failingKey(id string) string { return keyFailingPrefix + id }

// Attempt is one delivery attempt, as kept in the delivery log.
type Attempt struct {
	// DeliveryID is the asynq task id of the delivery (event id + ":" + endpoint id).
	DeliveryID string `json:"delivery_id"`
	EventID    string `json:"event_id"`
	EventType  string `json:"event_type"`
	EndpointID string `json:"endpoint_id"`
	// Tenant is the event's tenant, empty for an operator-only event (and
	// for deliveries queued before attempts recorded it).
	Tenant string `json:"tenant,omitempty"`
	// Attempt counts from 1.
	Attempt int       `json:"attempt"`
	Time    time.Time `json:"time"`
	// Status is the HTTP status, 0 when no response arrived.
	Status    int     `json:"status,omitempty"`
	LatencyMS float64 `json:"latency_ms"`
	// ResponseExcerpt is the start of the response body, at most 1 KiB.
	ResponseExcerpt string `json:"response,omitempty"`
	Error           string `json:"error,omitempty"`
	Success         bool   `json:"success"`
	Replay          bool   `json:"replay,omitempty"`
}

// recordAttempt appends a to the delivery log (per endpoint and per event),
// trims both by age and size, and tracks since when the endpoint has been
// failing: it returns that time, or the zero time after a success. also, when
// set, adds commands to the same pipeline.
func (s *Store) recordAttempt(ctx context.Context, a Attempt, also func(redis.Pipeliner)) (failingSince time.Time, err error) {
	a.ResponseExcerpt = truncateUTF8(a.ResponseExcerpt, MaxResponseExcerpt)
	b, err := json.Marshal(a)
	if err != nil {
		return time.Time{}, fmt.Errorf("encoding attempt: %w", err)
	}
	score := unixMicro(a.Time)
	cutoff := "(" + scoreString(a.Time.Add(-s.retention))
	epKey, evKey := keyAttemptsByEndpoint+a.EndpointID, keyAttemptsByEvent+a.EventID
	var since *redis.StringCmd
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if also != nil {
			also(p)
		}
		p.ZAdd(ctx, epKey, redis.Z{Score: score, Member: b})
		p.ZRemRangeByScore(ctx, epKey, "-inf", cutoff)
		p.ZRemRangeByRank(ctx, epKey, 0, int64(-s.maxAttempts-1))
		p.Expire(ctx, epKey, s.retention)
		p.ZAdd(ctx, evKey, redis.Z{Score: score, Member: b})
		p.Expire(ctx, evKey, s.retention)
		fk := failingKey(a.EndpointID)
		if a.Success {
			p.Del(ctx, fk)
		} else {
			p.SetNX(ctx, fk, a.Time.UnixMilli(), s.retention)
			since = p.Get(ctx, fk)
		}
		return nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("recording attempt of %s: %w", a.DeliveryID, err)
	}
	if since == nil {
		return time.Time{}, nil
	}
	ms, err := since.Int64()
	if err != nil {
		return time.Time{}, fmt.Errorf("reading failure start of endpoint %s: %w", a.EndpointID, err)
	}
	return time.UnixMilli(ms), nil
}

// RecordEvent keeps ev's envelope for the retention period and indexes it
// globally and for each endpoint it was fanned out to, so that a time window
// can be replayed. Beyond MaxEvents the oldest events are dropped.
func (s *Store) RecordEvent(ctx context.Context, ev rules.Event, envelope []byte, endpointIDs []string) error {
	score := unixMicro(ev.Timestamp)
	cutoff := "(" + scoreString(s.now().Add(-s.retention))
	var card *redis.IntCmd
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, keyEventPrefix+ev.ID, envelope, s.retention)
		p.ZAdd(ctx, keyEvents, redis.Z{Score: score, Member: ev.ID})
		p.ZRemRangeByScore(ctx, keyEvents, "-inf", cutoff)
		card = p.ZCard(ctx, keyEvents)
		for _, id := range endpointIDs {
			k := keyEventsByEndpoint + id
			p.ZAdd(ctx, k, redis.Z{Score: score, Member: ev.ID})
			p.ZRemRangeByScore(ctx, k, "-inf", cutoff)
			p.ZRemRangeByRank(ctx, k, 0, int64(-s.maxEvents-1))
			p.Expire(ctx, k, s.retention)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("recording event %s: %w", ev.ID, err)
	}
	// Trim in batches of about 1%, so that most fan-outs skip this.
	if over := card.Val() - int64(s.maxEvents); over > int64(s.maxEvents/100) {
		if err := s.dropOldestEvents(ctx, over); err != nil {
			return err
		}
	}
	return nil
}

// dropOldestEvents forgets the n oldest events: index entry, envelope and
// per-event attempts (the per-endpoint logs keep their own copies).
func (s *Store) dropOldestEvents(ctx context.Context, n int64) error {
	ids, err := s.rdb.ZRange(ctx, keyEvents, 0, n-1).Result()
	if err != nil {
		return fmt.Errorf("trimming events: %w", err)
	}
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, id := range ids {
			p.Del(ctx, keyEventPrefix+id)
			p.Del(ctx, keyAttemptsByEvent+id)
		}
		if len(ids) > 0 {
			members := make([]any, len(ids))
			for i, id := range ids {
				members[i] = id
			}
			p.ZRem(ctx, keyEvents, members...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("trimming events: %w", err)
	}
	return nil
}

// Attempts returns up to limit attempts to an endpoint, newest first, older
// than before (the zero time means now). Pass the Time of the last attempt
// of a page as before to get the next page. A page never splits the attempts
// recorded in one microsecond (the log's resolution), so that the next page,
// which starts strictly before that microsecond, skips none: it runs past
// limit by as many as share the last one's microsecond.
func (s *Store) Attempts(ctx context.Context, endpointID string, limit int, before time.Time) ([]Attempt, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	maxScore := "+inf"
	if !before.IsZero() {
		maxScore = "(" + scoreString(before)
	}
	key := keyAttemptsByEndpoint + endpointID
	zs, err := s.rdb.ZRevRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{
		Max: maxScore, Min: scoreString(s.now().Add(-s.retention)), Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("listing attempts of endpoint %s: %w", endpointID, err)
	}
	if len(zs) == limit {
		// The rest of the last microsecond, in the same (reverse) order.
		last := zs[len(zs)-1].Score
		tie := len(zs) - 1
		for tie > 0 && zs[tie-1].Score == last {
			tie--
		}
		bound := strconv.FormatFloat(last, 'f', -1, 64)
		same, err := s.rdb.ZRevRangeByScoreWithScores(ctx, key, &redis.ZRangeBy{Max: bound, Min: bound}).Result()
		if err != nil {
			return nil, fmt.Errorf("listing attempts of endpoint %s: %w", endpointID, err)
		}
		if len(same) > len(zs)-tie {
			zs = append(zs[:tie], same...)
		}
	}
	vals := make([]string, len(zs))
	for i, z := range zs {
		vals[i], _ = z.Member.(string)
	}
	return decodeAttempts(vals)
}

// EventAttempts returns every kept attempt to deliver one event, oldest first.
func (s *Store) EventAttempts(ctx context.Context, eventID string) ([]Attempt, error) {
	vals, err := s.rdb.ZRange(ctx, keyAttemptsByEvent+eventID, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("listing attempts of event %s: %w", eventID, err)
	}
	return decodeAttempts(vals)
}

func decodeAttempts(vals []string) ([]Attempt, error) {
	out := make([]Attempt, 0, len(vals))
	for _, v := range vals {
		var a Attempt
		if err := json.Unmarshal([]byte(v), &a); err != nil {
			return nil, fmt.Errorf("decoding attempt: %w", err)
		}
		out = append(out, a)
	}
	return out, nil
}

// GetEvent returns a kept event; errors wrap ErrEventNotFound once it is gone.
func (s *Store) GetEvent(ctx context.Context, id string) (rules.Event, error) {
	raw, err := s.rdb.Get(ctx, keyEventPrefix+id).Bytes()
	if errors.Is(err, redis.Nil) {
		return rules.Event{}, fmt.Errorf("event %s: %w", id, ErrEventNotFound)
	}
	if err != nil {
		return rules.Event{}, fmt.Errorf("loading event %s: %w", id, err)
	}
	var ev rules.Event
	if err := json.Unmarshal(raw, &ev); err != nil {
		return rules.Event{}, fmt.Errorf("decoding event %s: %w", id, err)
	}
	return ev, nil
}

// ErrEventNotFound is wrapped by errors about an event that is not (or no longer) kept.
var ErrEventNotFound = errors.New("event not found")

// RecentEvents returns up to limit kept events, newest first.
func (s *Store) RecentEvents(ctx context.Context, limit int) ([]rules.Event, error) {
	if limit <= 0 || limit > MaxEventsPerQuery {
		limit = MaxEventsPerQuery
	}
	ids, err := s.rdb.ZRevRangeByScore(ctx, keyEvents, &redis.ZRangeBy{
		Max: "+inf", Min: scoreString(s.now().Add(-s.retention)), Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("listing events: %w", err)
	}
	return s.events(ctx, ids)
}

// EventsBetween returns the kept events with since <= timestamp < until, oldest
// first (at most 10000).
func (s *Store) EventsBetween(ctx context.Context, since, until time.Time) ([]rules.Event, error) {
	return s.eventsBetween(ctx, keyEvents, since, until)
}

// EndpointEventsBetween returns the kept events fanned out to one endpoint with
// since <= timestamp < until, oldest first (at most 10000): what a replay of
// that window resends.
func (s *Store) EndpointEventsBetween(ctx context.Context, endpointID string, since, until time.Time) ([]rules.Event, error) {
	return s.eventsBetween(ctx, keyEventsByEndpoint+endpointID, since, until)
}

func (s *Store) eventsBetween(ctx context.Context, key string, since, until time.Time) ([]rules.Event, error) {
	ids, err := s.rdb.ZRangeByScore(ctx, key, &redis.ZRangeBy{
		Min: scoreString(since), Max: "(" + scoreString(until), Count: MaxEventsPerQuery,
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("listing events between %s and %s: %w", since.Format(time.RFC3339), until.Format(time.RFC3339), err)
	}
	return s.events(ctx, ids)
}

// events loads the envelopes of ids, skipping those that expired.
func (s *Store) events(ctx context.Context, ids []string) ([]rules.Event, error) {
	out := make([]rules.Event, 0, len(ids))
	const chunk = 500
	for i := 0; i < len(ids); i += chunk {
		part := ids[i:min(i+chunk, len(ids))]
		cmds := make([]*redis.StringCmd, len(part))
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j, id := range part {
				cmds[j] = p.Get(ctx, keyEventPrefix+id)
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("loading events: %w", err)
		}
		for j, c := range cmds {
			raw, err := c.Bytes()
			if err != nil {
				continue // expired
			}
			var ev rules.Event
			if err := json.Unmarshal(raw, &ev); err != nil {
				return nil, fmt.Errorf("decoding event %s: %w", part[j], err)
			}
			out = append(out, ev)
		}
	}
	return out, nil
}

// FailingSince returns since when deliveries to the endpoint have been failing
// without a success in between; the zero time when they are not.
func (s *Store) FailingSince(ctx context.Context, endpointID string) (time.Time, error) {
	v, err := s.rdb.Get(ctx, failingKey(endpointID)).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("reading failure start of endpoint %s: %w", endpointID, err)
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("reading failure start of endpoint %s: %w", endpointID, err)
	}
	return time.UnixMilli(ms), nil
}

// truncateUTF8 cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && n-i < utf8.UTFMax-1 && !utf8.RuneStart(s[i]) {
		i--
	}
	if !utf8.RuneStart(s[i]) {
		i = n // not valid UTF-8 anyway
	}
	return s[:i]
}
