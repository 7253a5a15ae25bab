package worker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/authtap/authtap/worker/tasks"
)

// Recovery of tasks whose worker is gone.
//
// asynq leases a task to the worker that dequeued it for 30s, extended every
// 5s by that worker's heartbeat, and its recoverer (every minute, fixed)
// retries only tasks whose lease expired more than 30s ago: a killed worker's
// tasks, or one whose Dequeue reply was lost while Redis was frozen, wait
// 60–120s. authtap adds its own, faster recovery, built on a run lock:
//
//   - every run of a webhook:deliver task holds authtap:{<queue>}:run:<task
//     id>, "r|token|gen", or "r|token|gen|<tag>" from a worker with a
//     presence connection (below), set when the run starts with a TTL of
//     Config.RunLease and refreshed by the worker every
//     Config.RecoveryInterval. Before it sends, the attempt stretches it over
//     the whole attempt (its timeout plus sendLockMargin), so a second attempt
//     can never send while a first one may still be sending, whatever
//     happened to the first worker. "r|token|gen" names the run; the tag
//     after it may change while the run holds the lock;
//   - at the end the run leaves "d|gen|ms", which for finishGrace keeps the
//     task from being recovered while asynq records its outcome, and for
//     markerTTL fences off a run that started late from an older generation;
//   - every RecoveryInterval each worker lists, in one script per queue, the
//     tasks of asynq:{<queue>}:active whose asynq lease was last written more
//     than staleLeaseAge ago and that no run holds, or whose run's worker is
//     dead (below). One still listed, with the same lease, message and lock,
//     recoveryConfirm later (over rounds no more than 2·RecoveryInterval+1s
//     apart, so a frozen Redis or a stopped worker resets the count while
//     everybody's locks lapsed) is moved back to the head of its pending list
//     by a script mirroring asynq's Requeue, its message carrying
//     recoveredHeader = gen+1, and its run key the fence "x|gen+1";
//   - a run whose generation is lower than the fence (it was dequeued before
//     the recovery and started after it) never runs the handler, and a run
//     whose lock another run took over has its context canceled.
//
// A dead worker's send. From its lock alone, Redis cannot tell a worker that
// was killed while sending from one that is only stopped (SIGSTOP, a paused
// VM, a partition) and may go on sending: the lock stretched over the send is
// what keeps the two from sending at once, so the delivery of a worker killed
// mid-send would wait for the delivery timeout (15s). But the kernel closes a
// killed or crashed process's connections, and Redis notices at once, while a
// stopped process's stay open. So each worker keeps one presence connection
// (presence.go): its own, named authtap-worker:<instance>:<n>, blocked in a
// BLPOP that nothing serves, and it writes the connection's tag, "<run_id of
// the server>:<CLIENT ID>", into the locks it holds. A recoverer that lists a
// stale task whose lock carries a tag of the server's current run sends, once
// per round and on one connection, a pipeline of CLIENT LIST ID <its own id>
// <each holder's id> (one per holder worker, however many of its tasks are
// listed) and a GET of each such lock. The task counts as abandoned when its
// holder's connection is missing and its lock unchanged in rounds
// presenceConfirm (2·RecoveryInterval, at least 1s) apart, measured on the
// recoverer's monotonic clock from the first reply that missed it, and the
// requeue script moves it only if its lock is still the one judged; the
// generation fence then works as for any recovery. Why this never lets two
// attempts of one delivery send at once, and where it falls back to waiting
// out the lock:
//
//   - a stopped process's connection stays open as long as Redis keeps it:
//     the idle `timeout` does not apply to a blocked client, NO-EVICT exempts
//     it from client eviction, and a worker writes its tag only when Redis's
//     tcp-keepalive cannot close a silent peer's connection before that
//     peer's locks lapse (checkPresence; a connection gets its keepalive when
//     it is accepted, and the check reads the setting on it). A server that
//     refuses CLIENT SETNAME, ID, LIST ID (Redis before 6.2) or NO-EVICT
//     (but for a Redis before 7.0, which evicts no clients), INFO or CONFIG
//     GET (renamed commands, ACLs, many managed Redis) gets no tag, and such
//     locks are waited out as before;
//   - client ids are unique within one run of redis-server only, and a
//     restart or a failover to another server closes every connection: a tag
//     of another run is never judged. The recoverer's own connection in the
//     same reply shows that the server is still the run it recorded, and the
//     GETs on the same connection that the lock is still there as listed;
//   - a worker whose presence connection closes while it lives (CLIENT KILL,
//     a network error, a restart) sees it at once, its BLPOP failing, drops
//     the tag from new locks and rewrites the locks it holds to a new
//     connection's tag, or to none, without waiting for the next round (a
//     rewrite keeps the TTL). A recoverer waits presenceConfirm after it
//     first missed a connection, and a rewritten lock is no longer the lock
//     it judged;
//   - no two machines' clocks are compared: the confirmation is a duration on
//     the recoverer's monotonic clock, which starts after the reply that
//     missed the connection, and a reply comes after the state it reports;
//   - Redis Cluster: CLIENT LIST answers for one node, so a worker on a
//     cluster keeps no presence connection and its locks are waited out as
//     before; so are those of older workers, which write no tag (and whose
//     recoverers take any "r|…" lock for held).
//
// What remains: an operator who kills a stopped worker's presence connection
// declares it dead, and a worker stopped in the moment between losing its
// connection and rewriting its locks (two faults at once) may overlap its
// replacement; so may a Sentinel split brain, as asynq's own tasks can. A host
// that crashes or loses power closes nothing: its locks are waited out. A
// request a killed worker had already handed over may still be in the
// receiver's hands when the retry comes, as after any attempt that timed out:
// what the locks guarantee is that no two workers send one delivery at once.
// The new run of a delivery takes back the endpoint concurrency slot of the
// dead one when it needs it (limits.go).
//
// Weighed and left: a heartbeat key per worker stops for a stopped worker as
// for a dead one, so it tells nothing the lock does not; PUBSUB NUMSUB on a
// channel per connection answers in fewer bytes, but go-redis re-subscribes
// on a new connection unseen and a channel name outlives a restart; a PING
// per round instead of the BLPOP would notice a closed connection a round
// late and leave it to Redis's idle `timeout`.
//
// An event:fanout run holds no lock: a second run of it enqueues nothing twice
// (task ids), so it is recovered on its asynq lease alone, and a live fan-out
// that takes longer than a few seconds (asynq renews leases every 5s) may run
// twice.
//
// The keys share the queue's hash tag with asynq's, so each script touches one
// Redis Cluster slot.
const (
	// DefaultRecoveryInterval is how often a worker looks for abandoned tasks
	// and refreshes the run locks of its own.
	DefaultRecoveryInterval = time.Second
	// DefaultRunLease is the TTL of a running task's run lock: a task whose
	// worker died while not sending is recovered about RunLease +
	// recoveryConfirm after the death.
	DefaultRunLease = 3 * time.Second
	// MinRecoveryInterval bounds Config.RecoveryInterval from below: each
	// round costs one script per queue on Redis.
	MinRecoveryInterval = 10 * time.Millisecond
	// MaxRecoveryInterval bounds Config.RecoveryInterval from above: with
	// rounds further apart, authtap's recovery (two rounds) would be slower
	// than asynq's own.
	MaxRecoveryInterval = 30 * time.Second
	// MaxRunLease bounds Config.RunLease from above: a task whose worker died
	// waits out its run lock, and past two minutes (asynq's lease, its
	// recovery cutoff and its recoverer's minute) authtap's recovery would be
	// slower than asynq's own.
	MaxRunLease = 2 * time.Minute

	// asynqLease is asynq's rdb.LeaseDuration: a dequeue and each heartbeat
	// write the lease as now + 30s (unix seconds).
	asynqLease = 30 * time.Second
	// staleLeaseAge is how long ago a task's asynq lease must have been
	// written (dequeue or heartbeat) before the task may be recovered; it
	// covers the moment between asynq's dequeue and the run lock, and the
	// whole seconds of the lease score.
	staleLeaseAge = 3 * time.Second
	// finishGrace is how long a finished run keeps its task from recovery,
	// while asynq moves it to completed or retry.
	finishGrace = 2 * time.Second
	// markerTTL is how long the done and recovered markers live: longer than
	// asynq's lease, so a worker stopped after its dequeue that comes back
	// within its lease finds the fence.
	markerTTL = 2 * asynqLease
	// sendLockMargin is added to an attempt's timeout in the lock it holds
	// while sending, for the clocks of Redis and the worker.
	sendLockMargin = time.Second
	// minPresenceConfirm bounds presenceConfirm from below (a worker notices
	// the loss of its presence connection within milliseconds, and rewrites
	// its locks in one round trip).
	minPresenceConfirm = time.Second
	// maxRecoverBatch bounds the tasks one round lists per queue.
	maxRecoverBatch = 1000
	// maxRecoveries bounds how often one task is recovered; past it, the task
	// is left to asynq's own recoverer, which counts the lost attempt as a
	// failure and archives the task when its retries are used up.
	maxRecoveries = 20
	// recoveredHeader is the asynq task header that carries how often a task
	// was recovered (its generation).
	recoveredHeader = "authtap-recovered"
)

// CheckRecovery reports whether interval and lease, a Config's
// RecoveryInterval and RunLease (zero: the default of each), are within the
// worker's bounds: the interval from MinRecoveryInterval to
// MaxRecoveryInterval, the lease at most MaxRunLease and at least twice the
// interval (a lock refreshed less often than it lives would lapse under a
// live run).
func CheckRecovery(interval, lease time.Duration) error {
	if interval < 0 || lease < 0 {
		return fmt.Errorf("recovery interval %s and run lease %s must not be negative", interval, lease)
	}
	orDefault(&interval, DefaultRecoveryInterval)
	orDefault(&lease, DefaultRunLease)
	if err := checkRange("recovery interval", interval, MinRecoveryInterval, MaxRecoveryInterval); err != nil {
		return err
	}
	if err := checkRange("run lease", lease, 0, MaxRunLease); err != nil {
		return err
	}
	if lease < 2*interval {
		return fmt.Errorf("run lease %s must be at least twice the recovery interval %s", lease, interval)
	}
	return nil
}

func runKey(queue, id string) string     { return keyPrefix + "{" + queue + "}:run:" + id }
func runKeyPrefix(queue string) string   { return keyPrefix + "{" + queue + "}:run:" }
func asynqKey(queue, name string) string { return "asynq:{" + queue + "}:" + name }

// recoveryConfirm is how long a task must look abandoned before it is
// recovered: two rounds, so that the workers whose locks lapsed while Redis
// was frozen have refreshed them.
func recoveryConfirm(interval time.Duration) time.Duration { return 2 * interval }

// presenceConfirm is how long a task whose holder's presence connection is
// missing must stay so before it is recovered: recoveryConfirm, and at least
// minPresenceConfirm, which is the time a worker that lives has to rewrite
// its locks after its presence connection closed.
func presenceConfirm(interval time.Duration) time.Duration {
	return max(recoveryConfirm(interval), minPresenceConfirm)
}

// redisNowMS is the Lua that sets nowms (Redis time, unix ms) and now (s).
const redisNowMS = `
local t = redis.call('TIME')
local now = tonumber(t[1])
local nowms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// heldLua defines held(v, grace): the run key's value v keeps the task from
// recovery, because a run holds it or one finished less than grace ms ago
// (it needs redisNowMS).
const heldLua = `
local function held(v, grace)
  if not v then return false end
  local k = string.sub(v, 1, 1)
  if k == 'r' then return true end
  if k == 'd' then
    local ms = tonumber(string.match(v, '^d|%d+|(%d+)$'))
    return ms ~= nil and nowms - ms < grace
  end
  return false
end
`

// mineLua defines mine(v, base): v is the lock of the run named base
// ("r|token|gen"), with or without a tag.
const mineLua = `
local function mine(v, base)
  return v == base or string.sub(v, 1, #base + 1) == base .. '|'
end
`

// acquireRunScript starts a run. KEYS[1] run key. ARGV: value ("r|token|gen"
// or "r|token|gen|tag"), gen, TTL ms, the run's name (value without the tag;
// default the value). Returns 1 (taken), 0 (another run holds it), -1 (a
// recovery fenced this generation off).
var acquireRunScript = redis.NewScript(mineLua + `
local v = redis.call('GET', KEYS[1])
if v then
  if string.sub(v, 1, 1) == 'r' then
    if mine(v, ARGV[4] or ARGV[1]) then return 1 end
    return 0
  end
  local g = tonumber(string.match(v, '^[dx]|(%d+)'))
  if g ~= nil and tonumber(ARGV[2]) < g then return -1 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
`)

// extendRunScript keeps a run's lock for at least TTL (it never shortens it)
// and writes its value, which may carry a new tag. KEYS[1] run key. ARGV:
// the run's name, TTL ms, value (default the name). A lock that lapsed (Redis
// was frozen) is taken back, since a recovery would have left its fence.
// Returns 1, or 0 when another run or a recovery took it.
var extendRunScript = redis.NewScript(mineLua + `
local value = ARGV[3] or ARGV[1]
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
  return 1
end
if not mine(v, ARGV[1]) then return 0 end
if v ~= value then redis.call('SET', KEYS[1], value, 'KEEPTTL') end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
`)

// releaseRunScript ends a run. KEYS[1] run key. ARGV: the run's name, gen,
// marker TTL ms.
var releaseRunScript = redis.NewScript(redisNowMS + mineLua + `
local v = redis.call('GET', KEYS[1])
if v and mine(v, ARGV[1]) then
  redis.call('SET', KEYS[1], 'd|' .. ARGV[2] .. '|' .. nowms, 'PX', ARGV[3])
end
return 1
`)

// listAbandonedScript is asynq's ListLeaseExpired with authtap's cutoff and
// run locks. KEYS[1] asynq:{q}:lease. ARGV: task key prefix, run key prefix,
// stale lease age (s), finish grace (ms), limit, "1" to list the tasks held
// by a run whose lock carries a tag too. Returns {now ms, id, lease score,
// msg, lock, ...}: lock is "" for a task that no run holds, else the tagged
// lock of the run that holds it.
var listAbandonedScript = redis.NewScript(redisNowMS + heldLua + `
local lease = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now + 30 - lease, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
local res = {nowms}
for i = 1, #ids, 2 do
  local id = ids[i]
  local v = redis.call('GET', ARGV[2] .. id)
  local lock = nil
  if not held(v, tonumber(ARGV[4])) then
    lock = ''
  elseif ARGV[6] == '1' and string.match(v, '^r|[^|]*|%d+|[^|:]+:%d+$') then
    lock = v
  end
  if lock then
    local msg = redis.call('HGET', ARGV[1] .. id, 'msg')
    if msg then
      table.insert(res, id)
      table.insert(res, ids[i + 1])
      table.insert(res, msg)
      table.insert(res, lock)
    end
  end
end
return res
`)

// requeueAbandonedScript is asynq's Requeue (active → head of pending) for a
// task that is still as listed. KEYS: asynq:{q}:active, :lease, :pending,
// :t:<id>, authtap:{q}:run:<id>. ARGV: id, listed lease score, listed msg, new
// msg, new gen, marker TTL ms, finish grace ms, the lock judged abandoned (""
// for none: no run may hold the task). Returns 1 when moved.
var requeueAbandonedScript = redis.NewScript(redisNowMS + heldLua + `
local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not s or tonumber(s) ~= tonumber(ARGV[2]) then return 0 end
if redis.call('HGET', KEYS[4], 'msg') ~= ARGV[3] then return 0 end
local v = redis.call('GET', KEYS[5])
if ARGV[8] ~= '' then
  if v ~= ARGV[8] then return 0 end
elseif held(v, tonumber(ARGV[7])) then
  return 0
end
if redis.call('LREM', KEYS[1], 0, ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[4], 'msg', ARGV[4], 'state', 'pending', 'pending_since', t[1] .. string.format('%06d', tonumber(t[2])) .. '000')
redis.call('SET', KEYS[5], 'x|' .. ARGV[5], 'PX', ARGV[6])
return 1
`)

// generation is how often t was recovered (its recoveredHeader).
func generation(t *asynq.Task) int {
	n, err := strconv.Atoi(t.Headers()[recoveredHeader])
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// withGeneration returns asynq's encoded TaskMessage msg with its
// recoveredHeader replaced by gen+1, and gen, the generation it had. Every
// other field is copied as is.
func withGeneration(msg []byte) ([]byte, int, error) {
	out := make([]byte, 0, len(msg)+32)
	gen := 0
	for b := msg; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, 0, fmt.Errorf("decoding task message: %w", protowire.ParseError(n))
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			return nil, 0, fmt.Errorf("decoding task message: %w", protowire.ParseError(m))
		}
		field := b[:n+m]
		b = b[n+m:]
		if num == 15 && typ == protowire.BytesType { // map<string, string> headers
			entry, _ := protowire.ConsumeBytes(field[n:])
			if k, v, ok := mapEntry(entry); ok && k == recoveredHeader {
				if g, err := strconv.Atoi(v); err == nil && g > 0 {
					gen = g
				}
				continue
			}
		}
		out = append(out, field...)
	}
	var entry []byte
	entry = protowire.AppendTag(entry, 1, protowire.BytesType)
	entry = protowire.AppendString(entry, recoveredHeader)
	entry = protowire.AppendTag(entry, 2, protowire.BytesType)
	entry = protowire.AppendString(entry, strconv.Itoa(gen+1))
	out = protowire.AppendTag(out, 15, protowire.BytesType)
	out = protowire.AppendBytes(out, entry)
	return out, gen, nil
}

// mapEntry decodes a protobuf map<string, string> entry.
func mapEntry(b []byte) (key, value string, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", "", false
		}
		b = b[n:]
		if typ != protowire.BytesType {
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return "", "", false
			}
			b = b[m:]
			continue
		}
		s, m := protowire.ConsumeString(b)
		if m < 0 {
			return "", "", false
		}
		b = b[m:]
		switch num {
		case 1:
			key = s
		case 2:
			value = s
		}
	}
	return key, value, true
}

// errRunSuperseded reports a run whose task was recovered from under it or
// taken over by another run. It is a *ThrottledError so that asynq does not
// count it against the task's retries.
func errRunSuperseded(id string) error {
	return &ThrottledError{Wait: time.Second, Reason: "task " + id + " was recovered and runs elsewhere"}
}

// run is one handler run holding a run lock.
type run struct {
	key string
	// name is the lock's value without a tag, "r|token|gen": what the run's
	// scripts compare.
	name   string
	cancel context.CancelFunc
	// tag is the presence tag the lock was last written with; guarded by
	// runs.mu.
	tag string
}

// value is the lock's value with tag.
func (r *run) value(tag string) string {
	if tag == "" {
		return r.name
	}
	return r.name + "|" + tag
}

// runs tracks the run locks this worker holds, refreshes them and finds
// abandoned tasks.
type runs struct {
	rdb      redis.UniversalClient
	log      *zap.Logger
	interval time.Duration
	lease    time.Duration
	instance string
	// presence is this worker's presence connection (nil: none, as on Redis
	// Cluster); kick asks the loop to rewrite the held locks when it changes.
	presence *presence
	kick     chan struct{}

	mu   sync.Mutex
	held map[*run]struct{}

	// Owned by the loop goroutine.
	cands  map[string]map[string]candidate // queue → id → candidate
	lastOK int64                           // Redis ms of the last good round; 0: none
}

// candidate is a task that looked abandoned since first (Redis ms), with
// its lease score, a digest of its message and, for a task whose holder's
// presence connection was missing, the lock judged and when (on this
// worker's monotonic clock) a reply first missed the connection.
type candidate struct {
	score  string
	digest [sha256.Size]byte
	lock   string
	first  int64
	gone   time.Time
	warned bool
}

func newRuns(rdb redis.UniversalClient, log *zap.Logger, interval, lease time.Duration) *runs {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &runs{rdb: rdb, log: log, interval: interval, lease: lease, instance: hex.EncodeToString(b[:]),
		kick: make(chan struct{}, 1), held: map[*run]struct{}{}, cands: map[string]map[string]candidate{}}
}

// withPresence gives rs a presence connection on rdb (a standalone or
// Sentinel client; a cluster client has none) for locks that may outlive
// their last write by up to window. It starts with startPresence.
func (rs *runs) withPresence(window time.Duration) {
	c, ok := rs.rdb.(*redis.Client)
	if !ok {
		rs.log.Info("no presence connection on this Redis (a cluster): a delivery whose worker dies while sending is retried once its run lock lapses")
		return
	}
	rs.presence = newPresence(c, rs.log, rs.instance, window, rs.interval, rs.kickRefresh)
}

// tag is the presence tag new lock values carry, or "".
func (rs *runs) tag() string { return rs.presence.state().tag() }

// sendHoldKey is the context key of the run a webhook:deliver attempt holds.
type sendHoldKey struct{}

// middleware makes every run of a webhook:deliver task hold its run lock.
func (rs *runs) middleware(h asynq.Handler) asynq.Handler {
	return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		id, _ := asynq.GetTaskID(ctx)
		queue, _ := asynq.GetQueueName(ctx)
		// The fan-out is idempotent (its deliveries' task ids), so a second run
		// of it does no harm: it runs without a lock, saving two round trips
		// per event, and is recovered on its asynq lease alone.
		if id == "" || queue == "" || t.Type() == tasks.TypeFanout {
			return h.ProcessTask(ctx, t)
		}
		gen := generation(t)
		var tok [8]byte
		_, _ = rand.Read(tok[:])
		r := &run{key: runKey(queue, id), name: "r|" + rs.instance + hex.EncodeToString(tok[:]) + "|" + strconv.Itoa(gen)}
		r.tag = rs.tag()
		value := r.value(r.tag)
		// Mostly the key does not exist: a plain SET NX takes it, and only
		// an existing key (a marker, or another run) needs the script.
		taken, err := rs.rdb.SetNX(ctx, r.key, value, rs.lease).Result()
		if err != nil {
			return fmt.Errorf("taking the run lock of task %s: %w", id, err)
		}
		for !taken {
			res, err := acquireRunScript.Run(ctx, rs.rdb, []string{r.key}, value, gen, rs.lease.Milliseconds(), r.name).Int()
			if err != nil {
				return fmt.Errorf("taking the run lock of task %s: %w", id, err)
			}
			if res == 1 {
				taken = true
				break
			}
			// Another run holds the task (it was recovered while this run's
			// worker stalled): wait for it, so that the outcome asynq records
			// for this run does not cut into the other one.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(min(rs.interval, 250*time.Millisecond)):
			}
			if res == -1 {
				var v string
				if v, err = rs.rdb.Get(ctx, r.key).Result(); err == nil && len(v) > 0 && v[0] == 'r' {
					continue
				}
				rs.log.Warn("not running a task that was recovered while this worker stalled", zap.String("task_id", id))
				return errRunSuperseded(id)
			}
		}
		ctx, cancel := context.WithCancel(ctx)
		r.cancel = cancel
		rs.mu.Lock()
		rs.held[r] = struct{}{}
		rs.mu.Unlock()
		// The presence connection may have changed while the lock was taken.
		if rs.tag() != r.tag {
			rs.kickRefresh()
		}
		defer func() {
			rs.mu.Lock()
			delete(rs.held, r)
			rs.mu.Unlock()
			cancel()
			rctx, done := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer done()
			_ = releaseRunScript.Run(rctx, rs.rdb, []string{r.key}, r.name, gen, markerTTL.Milliseconds()).Err()
		}()
		return h.ProcessTask(context.WithValue(ctx, sendHoldKey{}, &sendHold{rs: rs, r: r}), t)
	})
}

// kickRefresh asks the loop to refresh the held locks now.
func (rs *runs) kickRefresh() {
	select {
	case rs.kick <- struct{}{}:
	default:
	}
}

// sendHold lets a webhook:deliver attempt stretch its run lock over its send.
type sendHold struct {
	rs *runs
	r  *run
}

// holdForSend stretches the run lock of ctx's run over an attempt of timeout
// and returns a context that ends before the lock can lapse, and its cancel
// function, to call once the attempt is over. Without a run (a handler called
// directly) it returns ctx as is.
func holdForSend(ctx context.Context, timeout time.Duration) (context.Context, func(), error) {
	h, ok := ctx.Value(sendHoldKey{}).(*sendHold)
	if !ok {
		return ctx, func() {}, nil
	}
	deadline := time.Now().Add(timeout)
	tag := h.rs.tag()
	ok2, err := extendRunScript.Run(ctx, h.rs.rdb, []string{h.r.key}, h.r.name, (timeout + sendLockMargin).Milliseconds(), h.r.value(tag)).Int()
	if err != nil {
		return nil, nil, fmt.Errorf("holding the run lock for the attempt: %w", err)
	}
	if ok2 != 1 {
		return nil, nil, errRunSuperseded(h.r.key)
	}
	h.rs.mu.Lock()
	h.r.tag = tag
	h.rs.mu.Unlock()
	// The lock stays stretched until the run ends (a round trip saved per
	// attempt): only a worker that dies between its send and the end of its
	// run leaves it that long, unless its presence connection tells.
	sctx, cancel := context.WithDeadline(ctx, deadline)
	return sctx, cancel, nil
}

// loop refreshes this worker's run locks and recovers abandoned tasks every
// interval, and rewrites the locks at once when the presence connection
// changes, until ctx ends.
func (rs *runs) loop(ctx context.Context, queues []string) {
	tick := time.NewTicker(rs.interval)
	defer tick.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-rs.kick:
				rctx, cancel := context.WithTimeout(ctx, rs.interval)
				rs.refresh(rctx)
				cancel()
				continue
			case <-tick.C:
			}
		}
		rctx, cancel := context.WithTimeout(ctx, rs.interval)
		rs.refresh(rctx)
		if _, err := rs.round(rctx, queues); err != nil && ctx.Err() == nil {
			rs.log.Debug("looking for abandoned tasks", zap.Error(err))
		}
		cancel()
	}
}

// refresh extends every run lock this worker holds, writes the presence
// tag into those that carry another, and cancels the runs that lost theirs.
func (rs *runs) refresh(ctx context.Context) {
	tag := rs.tag()
	rs.mu.Lock()
	held := make([]*run, 0, len(rs.held))
	for r := range rs.held {
		held = append(held, r)
	}
	rs.mu.Unlock()
	if len(held) == 0 {
		return
	}
	cmds := make([]*redis.Cmd, len(held))
	extend := func() error {
		_, err := rs.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, r := range held {
				cmds[i] = extendRunScript.EvalSha(ctx, p, []string{r.key}, r.name, rs.lease.Milliseconds(), r.value(tag))
			}
			return nil
		})
		return err
	}
	// A pipelined EVALSHA cannot fall back to EVAL: after a restart of Redis
	// (an empty script cache) the script is loaded and the round tried again.
	if err := extend(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		if extendRunScript.Load(ctx, rs.rdb).Err() == nil {
			_ = extend()
		}
	}
	for i, c := range cmds {
		n, err := c.Int()
		switch {
		case err != nil:
			// Tried again in the next round, or at the next kick.
		case n == 0:
			rs.log.Warn("a task this worker runs was taken over; canceling the run", zap.String("run_key", held[i].key))
			held[i].cancel()
		default:
			rs.mu.Lock()
			held[i].tag = tag
			rs.mu.Unlock()
		}
	}
}

// listed is a task a listing returned: lock is "" when no run holds it, else
// the tagged lock of its run.
type listed struct {
	id, score, msg, lock string
}

// round lists the abandoned tasks of each queue and requeues those confirmed;
// it returns how many it requeued.
func (rs *runs) round(ctx context.Context, queues []string) (int, error) {
	confirm := recoveryConfirm(rs.interval)
	confirmGone := presenceConfirm(rs.interval)
	self := rs.presence.state()
	withTags := "0"
	if self.id != 0 {
		withTags = "1"
	}
	nows := make([]int64, len(queues))
	lists := make([][]listed, len(queues))
	for qi, q := range queues {
		res, err := listAbandonedScript.Run(ctx, rs.rdb, []string{asynqKey(q, "lease")},
			asynqKey(q, "t:"), runKeyPrefix(q), int64(staleLeaseAge/time.Second), finishGrace.Milliseconds(), maxRecoverBatch, withTags).Slice()
		if err == nil && len(res) == 0 {
			err = errors.New("empty reply")
		}
		if err != nil {
			rs.lastOK = 0
			clear(rs.cands)
			return 0, fmt.Errorf("listing abandoned tasks of queue %s: %w", q, err)
		}
		nows[qi], _ = res[0].(int64)
		for i := 1; i+3 < len(res); i += 4 {
			var l listed
			l.id, _ = res[i].(string)
			l.score, _ = res[i+1].(string)
			l.msg, _ = res[i+2].(string)
			l.lock, _ = res[i+3].(string)
			lists[qi] = append(lists[qi], l)
		}
	}
	// A gap between rounds (Redis frozen, this worker stalled) restarts the
	// count: the other workers may not have refreshed their locks yet.
	if rs.lastOK == 0 || nows[0]-rs.lastOK > 2*rs.interval.Milliseconds()+1000 {
		clear(rs.cands)
	}
	gone := rs.judgePresence(ctx, self, queues, lists)
	seen := time.Now() // after the reply that judged the holders
	moved := 0
	for qi, q := range queues {
		now := nows[qi]
		prev := rs.cands[q]
		next := map[string]candidate{}
		for _, l := range lists[qi] {
			if l.lock != "" && !gone[q+"\x00"+l.id] {
				continue // its holder lives, or nobody can tell
			}
			digest := sha256.Sum256([]byte(l.msg))
			c, ok := prev[l.id]
			if !ok || c.score != l.score || c.digest != digest || c.lock != l.lock {
				next[l.id] = candidate{score: l.score, digest: digest, lock: l.lock, first: now, gone: seen}
				continue
			}
			if now-c.first < confirm.Milliseconds() || (l.lock != "" && seen.Sub(c.gone) < confirmGone) {
				next[l.id] = c
				continue
			}
			ok, err := rs.requeue(ctx, q, l)
			if err != nil {
				if !c.warned {
					rs.log.Warn("recovering an abandoned task", zap.String("queue", q), zap.String("task_id", l.id), zap.Error(err))
				}
				c.warned = true
				next[l.id] = c
				continue
			}
			if ok {
				moved++
			}
		}
		rs.cands[q] = next
	}
	rs.lastOK = nows[len(nows)-1]
	return moved, nil
}

// judgePresence returns the listed tasks (queue NUL id) whose lock is still
// the one listed and whose holder's presence connection is gone from the
// server run self is connected to. One pipeline on one connection asks
// CLIENT LIST ID with self's id and each holder's (once) and GETs the locks:
// the reply lists self only if it comes from the run self recorded. On any
// failure it judges none.
func (rs *runs) judgePresence(ctx context.Context, self presenceState, queues []string, lists [][]listed) map[string]bool {
	if self.id == 0 {
		return nil
	}
	type judged struct {
		key, lock, holder string
		get               *redis.StringCmd
	}
	var cands []judged
	selfID := strconv.FormatInt(self.id, 10)
	args := []any{"CLIENT", "LIST", "ID", selfID}
	ids := map[string]bool{selfID: true}
	for qi, q := range queues {
		for _, l := range lists[qi] {
			if l.lock == "" {
				continue
			}
			_, _, _, tag := splitLock(l.lock)
			run, holder, ok := parseTag(tag)
			if !ok || run != self.run {
				continue // another run of the server wrote it: wait it out
			}
			cands = append(cands, judged{key: q + "\x00" + l.id, lock: l.lock, holder: holder})
			if !ids[holder] {
				ids[holder] = true
				args = append(args, holder)
			}
		}
	}
	if len(cands) == 0 {
		return nil
	}
	var list *redis.Cmd
	_, err := rs.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		list = p.Do(ctx, args...)
		for i := range cands {
			q, id, _ := strings.Cut(cands[i].key, "\x00")
			cands[i].get = p.Get(ctx, runKey(q, id))
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		rs.log.Debug("asking which workers' presence connections are open", zap.Error(err))
		return nil
	}
	reply, err := list.Text()
	if err != nil {
		return nil
	}
	alive := parseClientList(reply)
	if alive[selfID] != self.name {
		return nil // not the run this worker's connection is on
	}
	gone := map[string]bool{}
	for _, c := range cands {
		if _, ok := alive[c.holder]; !ok && c.get.Val() == c.lock {
			gone[c.key] = true
		}
	}
	return gone
}

// splitLock splits a run lock "r|token|gen[|tag]" into its parts.
func splitLock(v string) (kind, token, gen, tag string) {
	parts := strings.SplitN(v, "|", 4)
	for len(parts) < 4 {
		parts = append(parts, "")
	}
	return parts[0], parts[1], parts[2], parts[3]
}

// requeue moves task l of queue q back to pending if it is still as listed.
func (rs *runs) requeue(ctx context.Context, q string, l listed) (bool, error) {
	newMsg, gen, err := withGeneration([]byte(l.msg))
	if err != nil {
		return false, err
	}
	if gen >= maxRecoveries {
		return false, fmt.Errorf("recovered %d times already; leaving it to asynq's recoverer", gen)
	}
	keys := []string{asynqKey(q, "active"), asynqKey(q, "lease"), asynqKey(q, "pending"), asynqKey(q, "t:"+l.id), runKey(q, l.id)}
	n, err := requeueAbandonedScript.Run(ctx, rs.rdb, keys, l.id, l.score, l.msg, string(newMsg), gen+1,
		markerTTL.Milliseconds(), finishGrace.Milliseconds(), l.lock).Int()
	if err != nil {
		return false, fmt.Errorf("requeuing: %w", err)
	}
	if n == 1 {
		if l.lock != "" {
			rs.log.Info("recovered a task whose worker died while running it (its presence connection closed)",
				zap.String("queue", q), zap.String("task_id", l.id), zap.Int("generation", gen+1))
		} else {
			rs.log.Info("recovered a task whose worker was lost", zap.String("queue", q), zap.String("task_id", l.id), zap.Int("generation", gen+1))
		}
	}
	return n == 1, nil
}

// authtapQueues are the queues the recovery watches.
var authtapQueues = []string{tasks.QueueFanout, tasks.QueueDeliver}
