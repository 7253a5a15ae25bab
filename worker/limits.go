package worker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Per-endpoint limits are kept in Redis so that they hold across every worker
// on the same Redis. The keys of one endpoint share a hash tag (Redis Cluster).
func inflightKey(id string) string { return keyPrefix + "limit:{" + id + "}:inflight" }
func bucketKey(id string) string   { return keyPrefix + "limit:{" + id + "}:bucket" }

// acquireScript takes one concurrency slot and one rate token for an endpoint.
//
// KEYS[1] in-flight ZSET (member = slot token, score = lease expiry in ms: a
// slot of a killed worker frees itself), KEYS[2] token bucket HASH.
// ARGV: now (ms), lease (ms), slot token, max concurrency (0 = none),
// rate per second (0 = none), burst, the token prefix of this delivery's
// earlier runs ("" for none).
// Returns {1, 0} when granted, {0, wait ms, reason} when not.
//
// When every slot is taken, slots whose token starts with that prefix are
// given back first: they were taken by an earlier run of the same delivery,
// and the run that asks holds the delivery's run lock (recover.go), so that
// run is over — its worker died, or it was recovered after its send's
// deadline — and without this its slot would stay taken for the whole lease.
var acquireScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local maxc = tonumber(ARGV[4])
local rate = tonumber(ARGV[5])
local burst = tonumber(ARGV[6])
local own = ARGV[7] or ''
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= maxc and own ~= '' then
    for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
      if string.sub(m, 1, #own) == own then redis.call('ZREM', KEYS[1], m) end
    end
  end
  if redis.call('ZCARD', KEYS[1]) >= maxc then
    return {0, 0, 'concurrency'}
  end
end
if rate > 0 then
  local b = redis.call('HMGET', KEYS[2], 't', 'ts')
  local tokens = tonumber(b[1])
  local ts = tonumber(b[2])
  if tokens == nil or ts == nil then
    tokens = burst
    ts = now
  end
  if now > ts then
    tokens = math.min(burst, tokens + (now - ts) * rate / 1000)
  end
  if tokens < 1 then
    return {0, math.ceil((1 - tokens) * 1000 / rate), 'rate'}
  end
  redis.call('HSET', KEYS[2], 't', tostring(tokens - 1), 'ts', tostring(math.max(now, ts)))
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
end
if maxc > 0 then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], lease)
end
return {1, 0}
`)

// limiter enforces an endpoint's MaxConcurrency and RateLimit.
type limiter struct {
	rdb redis.UniversalClient
	now func() time.Time
	// lease bounds how long a slot outlives a worker that died holding it.
	lease time.Duration
	// concurrencyWait is the base re-delay when all slots are taken.
	concurrencyWait time.Duration
}

// slot is a granted concurrency slot of one delivery.
type slot struct {
	endpointID string
	token      string
}

// acquire takes a slot for one delivery, or returns a *ThrottledError when a
// limit is reached. A token "<task id>@<anything>" marks the slot as the
// delivery's: only a run that holds the delivery's run lock may use one, and
// it takes back the slots of the delivery's earlier runs when all are taken.
// Give the slot back with release or, to save a round trip, with releaseIn in
// a pipeline that runs anyway.
func (l *limiter) acquire(ctx context.Context, r *endpointRecord, token string) (slot, error) {
	maxc := r.maxConcurrency()
	burst := max(1, r.RateLimit)
	now := l.now()
	own := ""
	if task, _, ok := strings.Cut(token, "@"); ok && task != "" {
		own = task + "@"
	}
	res, err := acquireScript.Run(ctx, l.rdb, []string{inflightKey(r.ID), bucketKey(r.ID)},
		now.UnixMilli(), l.lease.Milliseconds(), token, maxc, r.RateLimit, burst, own).Slice()
	if err != nil {
		return slot{}, fmt.Errorf("checking limits of endpoint %s: %w", r.ID, err)
	}
	if len(res) >= 2 && res[0] == int64(1) {
		return slot{endpointID: r.ID, token: token}, nil
	}
	reason, _ := res[len(res)-1].(string)
	wait := l.concurrencyWait
	if ms, ok := res[1].(int64); ok && ms > 0 {
		wait = time.Duration(ms) * time.Millisecond
	}
	// Spread re-tries so that throttled deliveries do not come back in lockstep.
	wait += time.Duration(rand.Int64N(int64(wait)/2 + 1))
	return slot{}, &ThrottledError{Wait: wait, Reason: reason + " limit of endpoint " + r.ID}
}

// release gives a slot back, even when ctx is done (shutdown, deadline).
func (l *limiter) release(ctx context.Context, s slot) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = l.rdb.ZRem(ctx, inflightKey(s.endpointID), s.token).Err()
}

// releaseIn queues the release of s in pipeline p.
func (s slot) releaseIn(ctx context.Context, p redis.Pipeliner) {
	p.ZRem(ctx, inflightKey(s.endpointID), s.token)
}
