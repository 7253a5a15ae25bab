package worker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Per-endpoint limits are kept in Redis so that they hold across every worker
// on the same Redis. The keys of one endpoint share a hash tag (Redis
// Cluster) with its waiting list and drain lock (drain.go), so that one script
// sees them all.
func inflightKey(id string) string { return keyPrefix + "limit:{" + id + "}:inflight" }
func bucketKey(id string) string   { return keyPrefix + "limit:{" + id + "}:bucket" }

// reservedKey is a ZSET of the deliveries a drain handed a slot (task id →
// when the reservation lapses, ms); placesKey a HASH of their places (task id
// → score in the waiting list or line), kept so that one that does not take
// its slot goes back to its place, and one that fails keeps it.
func reservedKey(id string) string { return keyPrefix + "limit:{" + id + "}:reserved" }
func placesKey(id string) string   { return keyPrefix + "limit:{" + id + "}:places" }

// limitKeys are the KEYS of the limit scripts.
func limitKeys(id string) []string {
	return []string{inflightKey(id), bucketKey(id), waitingKey(id), reservedKey(id), placesKey(id), drainKey(id), lineKey(id)}
}

const (
	// reserveLease is how long a slot handed to a waiting delivery stays
	// reserved for it: the delivery takes it when it runs, normally within
	// milliseconds (it is at the head of the pending list); one that does not
	// (every worker busy, or gone) gives it back and returns to its place.
	reserveLease = 10 * time.Second
	// maxParkWait bounds the re-delay of a delivery that waits in line for a
	// slot: it is normally handed one before, and comes back by itself only
	// if no worker hands slots out.
	maxParkWait = 30 * time.Second
)

// limitLua defines the helpers of the limit scripts, on limitKeys: KEYS[1]
// in-flight ZSET (member = slot token, score = lease expiry in ms: a slot of
// a killed worker frees itself), KEYS[2] token bucket HASH, KEYS[3] the
// endpoint's waiting list (deliveries on the retry schedule), KEYS[4]
// reservations, KEYS[5] their places, KEYS[6] the endpoint's drain lock,
// KEYS[7] its line (deliveries due, waiting for a slot); the lists are
// scored by place (drain.go).
//
//   - expire(now) drops lapsed slots, puts the deliveries whose reservation
//     lapsed back in line, in their place, and returns how many
//     reservations are live;
//   - taken(reserved) counts the slots in use: held, and reserved;
//   - token(now, rate, burst) takes one rate token and returns 0, or the ms
//     until one is due;
//   - unlist(t) takes t off both lists and returns its place, or false.
const limitLua = `
local function expire(now)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('EXISTS', KEYS[4]) == 0 then return 0 end
  for _, t in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 100)) do
    redis.call('ZREM', KEYS[4], t)
    local place = redis.call('HGET', KEYS[5], t)
    redis.call('HDEL', KEYS[5], t)
    if place then redis.call('ZADD', KEYS[7], 'NX', place, t) end
  end
  return redis.call('ZCOUNT', KEYS[4], '(' .. now, '+inf')
end
local function taken(reserved)
  return redis.call('ZCARD', KEYS[1]) + reserved
end
local function token(now, rate, burst)
  if rate <= 0 then return 0 end
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
    return math.max(1, math.ceil((1 - tokens) * 1000 / rate))
  end
  redis.call('HSET', KEYS[2], 't', tostring(tokens - 1), 'ts', tostring(math.max(now, ts)))
  redis.call('PEXPIRE', KEYS[2], math.ceil(burst * 1000 / rate) + 1000)
  return 0
end
local function unlist(t)
  if redis.call('EXISTS', KEYS[7], KEYS[3]) == 0 then return false end
  local place = redis.call('ZSCORE', KEYS[7], t)
  local w = redis.call('ZSCORE', KEYS[3], t)
  if w then
    redis.call('ZREM', KEYS[3], t)
    if not place or tonumber(w) < tonumber(place) then place = w end
  end
  if place then redis.call('ZREM', KEYS[7], t) end
  return place
end
`

// acquireScript takes one concurrency slot and one rate token for a delivery.
//
// ARGV: now (ms), lease (ms), slot token, max concurrency (0 = none), rate
// per second (0 = none), burst, the token prefix of this delivery's earlier
// runs ("" for none), its task id ("" for none), "1" to wait in line (below),
// the line's cap, its TTL (ms), "1" when this run is a recovered one (its
// earlier run's slot is taken back even when slots are free).
// Returns {1, 0, place} when granted (place: the delivery's score in the
// waiting list or line, "" when it was in neither), {0, wait ms, reason, rank,
// added, draining} when not.
//
// A delivery that was handed a slot (reserved) takes it: its rate token was
// taken with the reservation. When every slot is taken, or the run is a
// recovered one, slots whose token starts with the prefix are given back
// first: they were taken by an earlier run of the same delivery, and the run
// that asks holds the delivery's run lock (recover.go), so that run is over —
// its worker died, or it was recovered after its send's deadline — and
// without this its slot would stay taken for the whole lease (a recovered run
// does so even when slots are free: one refused for its place in line would
// leave the dead slot taken). A delivery that takes a slot leaves both lists.
//
// Waiting in line: a delivery that is refused joins the endpoint's line
// (rank is its place in it, -1 past the cap; one that was in the waiting
// list moves over, keeping its place), and while a drain hands the
// endpoint's slots out (its lock exists) a delivery with others waiting
// before it is refused even when a slot is free: the drain hands that slot to
// the oldest. A delivery that took back its earlier run's slot goes on: that
// run was sending.
var acquireScript = redis.NewScript(limitLua + `
local now = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local maxc = tonumber(ARGV[4])
local rate = tonumber(ARGV[5])
local burst = tonumber(ARGV[6])
local own = ARGV[7] or ''
local task = ARGV[8] or ''
local inline = ARGV[9] == '1' and task ~= ''
local function grant(place)
  if maxc > 0 then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
    redis.call('PEXPIRE', KEYS[1], lease)
  end
  if task ~= '' then
    local p = unlist(task)
    if not place then place = p end
  end
  return {1, 0, place or ''}
end
local function refuse(wait, reason)
  local rank, added = -1, 0
  if inline then
    if not redis.call('ZSCORE', KEYS[7], task) then
      local place = redis.call('ZSCORE', KEYS[3], task)
      if place then redis.call('ZREM', KEYS[3], task) end
      redis.call('ZADD', KEYS[7], place or now, task)
      redis.call('ZREMRANGEBYRANK', KEYS[7], tonumber(ARGV[10]), -1)
      added = 1
    end
    redis.call('PEXPIRE', KEYS[7], ARGV[11])
    rank = redis.call('ZRANK', KEYS[7], task) or -1
    if rank < 0 then added = 0 end
  end
  return {0, wait, reason, rank, added, redis.call('EXISTS', KEYS[6])}
end
local tookBack = false
if maxc > 0 then
  local reserved = expire(now)
  if reserved > 0 and task ~= '' and redis.call('ZREM', KEYS[4], task) == 1 then
    local place = redis.call('HGET', KEYS[5], task)
    redis.call('HDEL', KEYS[5], task)
    return grant(place or false)
  end
  local n = taken(reserved)
  if own ~= '' and (ARGV[12] == '1' or n >= maxc) then
    for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
      if string.sub(m, 1, #own) == own then
        redis.call('ZREM', KEYS[1], m)
        tookBack = true
      end
    end
    if tookBack then n = taken(reserved) end
  end
  if n >= maxc then
    return refuse(0, 'concurrency')
  end
end
if inline and not tookBack and redis.call('EXISTS', KEYS[6]) == 1 then
  local mine = redis.call('ZSCORE', KEYS[7], task) or redis.call('ZSCORE', KEYS[3], task)
  local before = '+inf'
  if mine then before = '(' .. mine end
  if redis.call('ZCOUNT', KEYS[7], '-inf', before) + redis.call('ZCOUNT', KEYS[3], '-inf', before) > 0 then
    return refuse(0, 'concurrency')
  end
end
local wait = token(now, rate, burst)
if wait > 0 then
  return refuse(wait, 'rate')
end
return grant(false)
`)

// candidatesScript returns what a hand-off needs to know of an endpoint's
// limits and lists. ARGV: now (ms), max concurrency, how many more waiting
// deliveries than free slots to list, "1" when the endpoint is failing (then
// only the line is handed slots: the waiting list keeps its schedule).
// Returns {free slots, in line, in the waiting list, the oldest ids...} (no
// ids when no slot is free).
var candidatesScript = redis.NewScript(limitLua + `
local now = tonumber(ARGV[1])
local free = tonumber(ARGV[2]) - taken(expire(now))
local res = {free, redis.call('ZCARD', KEYS[7]), redis.call('ZCARD', KEYS[3])}
if free <= 0 then return res end
local k = free + tonumber(ARGV[3])
local line = redis.call('ZRANGE', KEYS[7], 0, k - 1, 'WITHSCORES')
local waiting = {}
if ARGV[4] ~= '1' then waiting = redis.call('ZRANGE', KEYS[3], 0, k - 1, 'WITHSCORES') end
local i, j = 1, 1
while #res - 3 < k and (i <= #line or j <= #waiting) do
  if j > #waiting or (i <= #line and tonumber(line[i + 1]) <= tonumber(waiting[j + 1])) then
    table.insert(res, line[i])
    i = i + 2
  else
    table.insert(res, waiting[j])
    j = j + 2
  end
end
return res
`)

// reserveScript hands free slots to waiting deliveries, in the order given:
// each still in line (or, unless the endpoint is failing, in the waiting
// list) gets a reservation (a slot, and a rate token) and leaves its list, its
// place kept. ARGV: now (ms), reservation lease (ms), max concurrency, rate,
// burst, "1" when the endpoint is failing, n, n ids to drop from both lists
// (done or gone), then the candidates. Returns {ms until the rate limit
// allows the next (0: not limited), deliveries left in line, left in the
// waiting list, reserved ids...}.
var reserveScript = redis.NewScript(limitLua + `
local now = tonumber(ARGV[1])
local rl = tonumber(ARGV[2])
local maxc = tonumber(ARGV[3])
local rate = tonumber(ARGV[4])
local burst = tonumber(ARGV[5])
local failing = ARGV[6] == '1'
local ndrop = tonumber(ARGV[7])
for i = 8, 7 + ndrop do
  redis.call('ZREM', KEYS[3], ARGV[i])
  redis.call('ZREM', KEYS[7], ARGV[i])
end
local free = maxc - taken(expire(now))
local res = {0, 0, 0}
for i = 8 + ndrop, #ARGV do
  if free <= 0 then break end
  local t = ARGV[i]
  local listed = redis.call('ZSCORE', KEYS[7], t)
  if not listed and not failing then listed = redis.call('ZSCORE', KEYS[3], t) end
  if listed then
    local wait = token(now, rate, burst)
    if wait > 0 then
      res[1] = wait
      break
    end
    redis.call('ZADD', KEYS[4], now + rl, t)
    redis.call('HSET', KEYS[5], t, unlist(t))
    free = free - 1
    table.insert(res, t)
  end
end
if #res > 3 then
  redis.call('PEXPIRE', KEYS[4], 2 * rl)
  redis.call('PEXPIRE', KEYS[5], 2 * rl)
end
res[2] = redis.call('ZCARD', KEYS[7])
res[3] = redis.call('ZCARD', KEYS[3])
return res
`)

// unreserveScript takes reservations back. ARGV: pairs of task id and "1"
// to put the delivery back in line in its place ("0": it is done or gone).
var unreserveScript = redis.NewScript(`
for i = 1, #ARGV, 2 do
  local t = ARGV[i]
  if redis.call('ZREM', KEYS[4], t) == 1 then
    local place = redis.call('HGET', KEYS[5], t)
    redis.call('HDEL', KEYS[5], t)
    if place and ARGV[i + 1] == '1' then
      local cur = redis.call('ZSCORE', KEYS[7], t)
      if not cur or tonumber(cur) > tonumber(place) then redis.call('ZADD', KEYS[7], place, t) end
    end
  end
end
return 1
`)

// limiter enforces an endpoint's MaxConcurrency and RateLimit.
type limiter struct {
	rdb redis.UniversalClient
	now func() time.Time
	// lease bounds how long a slot outlives a worker that died holding it.
	lease time.Duration
	// concurrencyWait is the base re-delay when all slots are taken.
	concurrencyWait time.Duration
	// maxWaiting caps an endpoint's line (0: maxWaitingPerEndpoint).
	maxWaiting int
}

// slot is a granted concurrency slot of one delivery.
type slot struct {
	endpointID string
	token      string
	// place is the delivery's score in the endpoint's waiting list when it
	// was listed (ms; 0: it was not): if the attempt fails, it keeps it.
	place float64
}

// acquire takes a slot for one delivery, or returns a *ThrottledError when a
// limit is reached. A token "<task id>@<anything>" marks the slot as the
// delivery's: only a run that holds the delivery's run lock may use one, and
// it takes back the slots of the delivery's earlier runs when all are taken.
// Give the slot back with release or, to save a round trip, with releaseIn in
// a pipeline that runs anyway.
func (l *limiter) acquire(ctx context.Context, r *endpointRecord, token string) (slot, error) {
	s, _, err := l.acquireIn(ctx, r, token, false, false)
	return s, err
}

// queued says how a refused delivery waits in line.
type queued struct {
	// rank is its place in the endpoint's line (0: the oldest), -1 when it
	// is not in line.
	rank int64
	// added: it joined the list now; draining: a drain hands the endpoint's
	// slots out.
	added, draining bool
}

// acquireIn is acquire, and with inLine a refused delivery waits in the
// endpoint's line for a slot (drain.go hands the slots freed to the oldest),
// and one that others wait before while a drain runs is refused although a
// slot is free. The ThrottledError's Wait of a delivery in line grows with its
// place: it is the fallback for the case that no worker hands it a slot.
// recovered says that the run is a recovered one (recover.go): it takes back
// its delivery's earlier slots even when slots are free.
func (l *limiter) acquireIn(ctx context.Context, r *endpointRecord, token string, inLine, recovered bool) (slot, queued, error) {
	maxc := r.maxConcurrency()
	burst := max(1, r.RateLimit)
	now := l.now()
	own, task := "", ""
	if t, _, ok := strings.Cut(token, "@"); ok && t != "" {
		own, task = t+"@", t
	}
	line, again := "0", "0"
	if inLine && task != "" {
		line = "1"
	}
	if recovered {
		again = "1"
	}
	capacity := l.maxWaiting
	if capacity <= 0 {
		capacity = maxWaitingPerEndpoint
	}
	res, err := acquireScript.Run(ctx, l.rdb, limitKeys(r.ID),
		now.UnixMilli(), l.lease.Milliseconds(), token, maxc, r.RateLimit, burst, own, task, line,
		capacity, waitingTTL.Milliseconds(), again).Slice()
	if err != nil {
		return slot{}, queued{rank: -1}, fmt.Errorf("checking limits of endpoint %s: %w", r.ID, err)
	}
	if len(res) >= 3 && res[0] == int64(1) {
		s := slot{endpointID: r.ID, token: token}
		if p, ok := res[2].(string); ok && p != "" {
			s.place, _ = strconv.ParseFloat(p, 64)
		}
		return s, queued{rank: -1}, nil
	}
	w := queued{rank: -1}
	reason := ""
	if len(res) >= 6 {
		reason, _ = res[2].(string)
		if n, ok := res[3].(int64); ok {
			w.rank = n
		}
		w.added = res[4] == int64(1)
		w.draining = res[5] == int64(1)
	}
	delay := l.concurrencyWait
	if ms, ok := res[1].(int64); ok && ms > 0 {
		delay = time.Duration(ms) * time.Millisecond
	}
	if w.rank > 0 {
		// Its turn comes after those before it: at the rate limit's pace, or
		// (a guess, since how long a receiver takes is not known) one
		// concurrencyWait per MaxConcurrency of them.
		if reason == "rate" && r.RateLimit > 0 {
			delay = max(delay, time.Duration(float64(w.rank)/r.RateLimit*float64(time.Second)))
		} else {
			delay += l.concurrencyWait * time.Duration(w.rank) / time.Duration(maxc)
		}
	}
	// Spread re-tries so that throttled deliveries do not come back in lockstep.
	delay += time.Duration(rand.Int64N(int64(delay)/2 + 1))
	if w.rank >= 0 {
		delay = min(delay, maxParkWait)
	}
	return slot{}, w, &ThrottledError{Wait: delay, Reason: reason + " limit of endpoint " + r.ID}
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
