package worker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
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
//     id> ("r|token|gen"), set when the run starts with a TTL of
//     Config.RunLease and refreshed by the worker every
//     Config.RecoveryInterval. Before it sends, the attempt stretches it over
//     the whole attempt (its timeout plus sendLockMargin), so a second attempt
//     can never send while a first one may still be sending, whatever
//     happened to the first worker;
//   - at the end the run leaves "d|gen|ms", which for finishGrace keeps the
//     task from being recovered while asynq records its outcome, and for
//     markerTTL fences off a run that started late from an older generation;
//   - every RecoveryInterval each worker lists, in one script per queue, the
//     tasks of asynq:{<queue>}:active whose asynq lease was last written more
//     than staleLeaseAge ago and that no run holds. One still listed, with the
//     same lease and message, recoveryConfirm later (over rounds no more than
//     2·RecoveryInterval+1s apart, so a frozen Redis or a stopped worker
//     resets the count while everybody's locks lapsed) is moved back to the
//     head of its pending list by a script mirroring asynq's Requeue, its
//     message carrying recoveredHeader = gen+1, and its run key the fence
//     "x|gen+1";
//   - a run whose generation is lower than the fence (it was dequeued before
//     the recovery and started after it) never runs the handler, and a run
//     whose lock another run took over has its context canceled.
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

// redisNowMS is the Lua that sets nowms (Redis time, unix ms) and now (s).
const redisNowMS = `
local t = redis.call('TIME')
local now = tonumber(t[1])
local nowms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// heldLua sets held when the run key's value v keeps the task from recovery:
// a run holds it, or one finished less than ARGV[finishArg] ms ago.
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

// acquireRunScript starts a run. KEYS[1] run key. ARGV: value ("r|token|gen"),
// gen, TTL ms. Returns 1 (taken), 0 (another run holds it), -1 (a recovery
// fenced this generation off).
var acquireRunScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if v then
  if string.sub(v, 1, 1) == 'r' then
    if v == ARGV[1] then return 1 end
    return 0
  end
  local g = tonumber(string.match(v, '^[dx]|(%d+)'))
  if g ~= nil and tonumber(ARGV[2]) < g then return -1 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
`)

// extendRunScript keeps a run's lock for at least TTL (it never shortens it).
// KEYS[1] run key. ARGV: value, TTL ms. A lock that lapsed (Redis was frozen)
// is taken back, since a recovery would have left its fence. Returns 1, or 0
// when another run or a recovery took it.
var extendRunScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v ~= ARGV[1] then return 0 end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
`)

// releaseRunScript ends a run. KEYS[1] run key. ARGV: value, gen, marker TTL ms.
var releaseRunScript = redis.NewScript(redisNowMS + `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'd|' .. ARGV[2] .. '|' .. nowms, 'PX', ARGV[3])
end
return 1
`)

// listAbandonedScript is asynq's ListLeaseExpired with authtap's cutoff and
// run locks. KEYS[1] asynq:{q}:lease. ARGV: task key prefix, run key prefix,
// stale lease age (s), finish grace (ms), limit. Returns {now ms, id, lease
// score, msg, ...} of the tasks that no run holds.
var listAbandonedScript = redis.NewScript(redisNowMS + heldLua + `
local lease = tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now + 30 - lease, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
local res = {nowms}
for i = 1, #ids, 2 do
  local id = ids[i]
  if not held(redis.call('GET', ARGV[2] .. id), tonumber(ARGV[4])) then
    local msg = redis.call('HGET', ARGV[1] .. id, 'msg')
    if msg then
      table.insert(res, id)
      table.insert(res, ids[i + 1])
      table.insert(res, msg)
    end
  end
end
return res
`)

// requeueAbandonedScript is asynq's Requeue (active → head of pending) for a
// task that is still as listed. KEYS: asynq:{q}:active, :lease, :pending,
// :t:<id>, authtap:{q}:run:<id>. ARGV: id, listed lease score, listed msg, new
// msg, new gen, marker TTL ms, finish grace ms. Returns 1 when moved.
var requeueAbandonedScript = redis.NewScript(redisNowMS + heldLua + `
local s = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not s or tonumber(s) ~= tonumber(ARGV[2]) then return 0 end
if redis.call('HGET', KEYS[4], 'msg') ~= ARGV[3] then return 0 end
if held(redis.call('GET', KEYS[5]), tonumber(ARGV[7])) then return 0 end
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
	key, value string
	cancel     context.CancelFunc
}

// runs tracks the run locks this worker holds, refreshes them and finds
// abandoned tasks.
type runs struct {
	rdb      redis.UniversalClient
	log      *zap.Logger
	interval time.Duration
	lease    time.Duration
	instance string

	mu   sync.Mutex
	held map[*run]struct{}

	// Owned by the loop goroutine.
	cands  map[string]map[string]candidate // queue → id → candidate
	lastOK int64                           // Redis ms of the last good round; 0: none
}

// candidate is a task that looked abandoned since first (Redis ms), with
// its lease score and a digest of its message.
type candidate struct {
	score  string
	digest [sha256.Size]byte
	first  int64
	warned bool
}

func newRuns(rdb redis.UniversalClient, log *zap.Logger, interval, lease time.Duration) *runs {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &runs{rdb: rdb, log: log, interval: interval, lease: lease, instance: hex.EncodeToString(b[:]),
		held: map[*run]struct{}{}, cands: map[string]map[string]candidate{}}
}

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
		r := &run{key: runKey(queue, id), value: "r|" + rs.instance + hex.EncodeToString(tok[:]) + "|" + strconv.Itoa(gen)}
		// Mostly the key does not exist: a plain SET NX takes it, and only
		// an existing key (a marker, or another run) needs the script.
		taken, err := rs.rdb.SetNX(ctx, r.key, r.value, rs.lease).Result()
		if err != nil {
			return fmt.Errorf("taking the run lock of task %s: %w", id, err)
		}
		for !taken {
			res, err := acquireRunScript.Run(ctx, rs.rdb, []string{r.key}, r.value, gen, rs.lease.Milliseconds()).Int()
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
		defer func() {
			rs.mu.Lock()
			delete(rs.held, r)
			rs.mu.Unlock()
			cancel()
			rctx, done := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer done()
			_ = releaseRunScript.Run(rctx, rs.rdb, []string{r.key}, r.value, gen, markerTTL.Milliseconds()).Err()
		}()
		return h.ProcessTask(context.WithValue(ctx, sendHoldKey{}, &sendHold{rs: rs, r: r}), t)
	})
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
	ok2, err := extendRunScript.Run(ctx, h.rs.rdb, []string{h.r.key}, h.r.value, (timeout + sendLockMargin).Milliseconds()).Int()
	if err != nil {
		return nil, nil, fmt.Errorf("holding the run lock for the attempt: %w", err)
	}
	if ok2 != 1 {
		return nil, nil, errRunSuperseded(h.r.key)
	}
	// The lock stays stretched until the run ends (a round trip saved per
	// attempt): only a worker that dies between its send and the end of its
	// run leaves it that long.
	sctx, cancel := context.WithDeadline(ctx, deadline)
	return sctx, cancel, nil
}

// loop refreshes this worker's run locks and recovers abandoned tasks every
// interval until ctx ends.
func (rs *runs) loop(ctx context.Context, queues []string) {
	tick := time.NewTicker(rs.interval)
	defer tick.Stop()
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
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

// refresh extends every run lock this worker holds and cancels the runs that
// lost theirs.
func (rs *runs) refresh(ctx context.Context) {
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
	_, _ = rs.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, r := range held {
			cmds[i] = extendRunScript.Run(ctx, p, []string{r.key}, r.value, rs.lease.Milliseconds())
		}
		return nil
	})
	for i, c := range cmds {
		if n, err := c.Int(); err == nil && n == 0 {
			rs.log.Warn("a task this worker runs was taken over; canceling the run", zap.String("run_key", held[i].key))
			held[i].cancel()
		}
	}
}

// round lists the abandoned tasks of each queue and requeues those confirmed;
// it returns how many it requeued.
func (rs *runs) round(ctx context.Context, queues []string) (int, error) {
	moved := 0
	confirm := recoveryConfirm(rs.interval).Milliseconds()
	for _, q := range queues {
		res, err := listAbandonedScript.Run(ctx, rs.rdb, []string{asynqKey(q, "lease")},
			asynqKey(q, "t:"), runKeyPrefix(q), int64(staleLeaseAge/time.Second), finishGrace.Milliseconds(), maxRecoverBatch).Slice()
		if err == nil && len(res) == 0 {
			err = errors.New("empty reply")
		}
		if err != nil {
			rs.lastOK = 0
			clear(rs.cands)
			return moved, fmt.Errorf("listing abandoned tasks of queue %s: %w", q, err)
		}
		now, _ := res[0].(int64)
		// A gap between rounds (Redis frozen, this worker stalled) restarts
		// the count: the other workers may not have refreshed their locks yet.
		if rs.lastOK == 0 || now-rs.lastOK > 2*rs.interval.Milliseconds()+1000 {
			clear(rs.cands)
		}
		prev := rs.cands[q]
		next := map[string]candidate{}
		for i := 1; i+2 < len(res); i += 3 {
			id, _ := res[i].(string)
			score, _ := res[i+1].(string)
			msg, _ := res[i+2].(string)
			digest := sha256.Sum256([]byte(msg))
			c, seen := prev[id]
			if !seen || c.score != score || c.digest != digest {
				next[id] = candidate{score: score, digest: digest, first: now}
				continue
			}
			if now-c.first < confirm {
				next[id] = c
				continue
			}
			ok, err := rs.requeue(ctx, q, id, score, msg)
			if err != nil {
				if !c.warned {
					rs.log.Warn("recovering an abandoned task", zap.String("queue", q), zap.String("task_id", id), zap.Error(err))
				}
				c.warned = true
				next[id] = c
				continue
			}
			if ok {
				moved++
			}
		}
		rs.cands[q] = next
		rs.lastOK = now
	}
	return moved, nil
}

// requeue moves task id of queue q back to pending if it is still as listed.
func (rs *runs) requeue(ctx context.Context, q, id, score, msg string) (bool, error) {
	newMsg, gen, err := withGeneration([]byte(msg))
	if err != nil {
		return false, err
	}
	if gen >= maxRecoveries {
		return false, fmt.Errorf("recovered %d times already; leaving it to asynq's recoverer", gen)
	}
	keys := []string{asynqKey(q, "active"), asynqKey(q, "lease"), asynqKey(q, "pending"), asynqKey(q, "t:"+id), runKey(q, id)}
	n, err := requeueAbandonedScript.Run(ctx, rs.rdb, keys, id, score, msg, string(newMsg), gen+1,
		markerTTL.Milliseconds(), finishGrace.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("requeuing: %w", err)
	}
	if n == 1 {
		rs.log.Info("recovered a task whose worker was lost", zap.String("queue", q), zap.String("task_id", id), zap.Int("generation", gen+1))
	}
	return n == 1, nil
}

// authtapQueues are the queues the recovery watches.
var authtapQueues = []string{tasks.QueueFanout, tasks.QueueDeliver}
