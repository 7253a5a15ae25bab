package worker

import (
	"context"
	"crypto/rand"
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
	"go.uber.org/zap/zapcore"

	"github.com/authtap/authtap/worker/tasks"
)

// Handing an endpoint's slots out in order, and draining the backlog of a
// recovered endpoint.
//
// Each endpoint has two lists of the deliveries that wait for it, both ZSETs
// of task ids scored by the time each first waited (its place: the oldest
// come first), both in the hash tag of the endpoint's limit keys
// (limits.go), and the endpoint is listed in authtap:waiting-endpoints while
// either holds one. The deliveries of both are in asynq's retry set.
//
//   - The waiting list, authtap:waiting:{<endpoint>}: deliveries that failed
//     and will be retried, waiting for their next step of the schedule (5 s,
//     5 min, 30 min …), even after their endpoint is back. At most
//     maxWaitingPerEndpoint; the newest beyond that keep their schedule but
//     are not pulled forward.
//   - The line, authtap:waiting:{<endpoint>}:line: deliveries that are due
//     but that the endpoint's concurrency or rate limit refused, waiting for
//     a slot (a delivery of the waiting list whose retry came due and was
//     refused moves over, keeping its place). They do not come back every
//     ThrottleWait to try again: with 20 worker goroutines and 5 slots most
//     of them would find the slots taken again, and the slots would sit idle
//     between asynq's checks of the retry set (a backlog of 350 drained at
//     3–15 deliveries a second against a receiver taking 20 ms). Their
//     re-delay, ThrottleWait for each MaxConcurrency deliveries before them
//     (at most maxParkWait), is only the fallback for when no worker hands
//     them a slot. At most maxWaitingPerEndpoint; beyond that a refused
//     delivery comes back after ThrottleWait as before.
//
// A delivery leaves both lists when it takes a slot; one whose attempt then
// fails joins the waiting list in its old place; a success, a permanent
// failure or the last attempt leave it out.
//
// Handing out. While deliveries are in line, and while deliveries wait for an
// endpoint that is not failing, one worker at a time drains it, under a
// short Redis lock (authtap:waiting:{<endpoint>}:drain, drainLockTTL,
// refreshed): whenever slots are free (it looks every drainPoll, and at once
// when a delivery of this worker finishes) it hands them to the oldest
// deliveries of both lists (of the line alone while the endpoint is failing:
// the schedule governs the others) that are in the retry set. Each gets a
// reservation (a slot and a rate token for reserveLease, limits.go) and is
// moved to the head of the pending list; it takes the reserved slot when it
// runs, milliseconds later. A worker that finishes a delivery while another
// one drains hands the slots free then out itself, once. While the lock
// exists, a delivery with others waiting before it takes no free slot but
// joins the line, so that the endpoint's deliveries are sent oldest first (a
// delivery's place is the time it first waited: the order is that of their
// first attempts). A drain starts when a delivery joins the line and none
// runs, and when a delivery succeeds and finds others waiting (its endpoint
// answers 2xx again: a delivery, a test event, a replay, or a probe); it
// ends when the line is empty and the waiting list too, or the endpoint
// fails again. A delivery in line holds no worker goroutine, and a drain puts
// no more deliveries at the head of the pending list than the endpoint has
// free slots, so a slow endpoint's backlog takes no more goroutines from the
// other endpoints' deliveries than its MaxConcurrency.
//
// Probing. While deliveries wait for an endpoint that is failing, each worker
// looks every Config.ProbeInterval (default 2 s) whether it may probe it: it
// claims authtap:waiting:{<endpoint>}:probe (SET NX, so at most one probe per
// endpoint is in flight across all workers, and the next one starts
// ProbeInterval after the last ended) and re-sends the oldest waiting
// delivery early, if its next attempt is more than two probe intervals away
// and is not its last. The probe is a real attempt with the same webhook-id;
// if it fails it is recorded in the delivery log but costs no step of the
// schedule: the delivery goes back to the retry set at the time it was due (a
// *ThrottledError, which asynq does not count), and the other waiting
// deliveries are not touched. If it succeeds, the drain starts. The same
// round drains an endpoint that is not failing while deliveries wait for it,
// or that has deliveries in line, and no drain runs (one was cut short: its
// worker stopped).
//
// Guarantee: a delivery handed a slot runs once at a time (asynq moves it
// from the retry set once, and the run lock (recover.go) fences a second run
// like any other), so a webhook-id that got a 2xx is not sent again, unless
// its receiver answered 2xx after authtap's timeout and the attempt counted
// as failed; the endpoint's concurrency and rate limits hold as for any
// delivery; deliveries are sent oldest first, up to MaxConcurrency at once,
// so a receiver sees them in order within that window (but for deliveries
// taken in the moment before a drain starts, and one whose reservation
// lapsed).
const (
	// DefaultProbeInterval is the default Config.ProbeInterval.
	DefaultProbeInterval = 2 * time.Second
	// MinProbeInterval bounds Config.ProbeInterval from below.
	MinProbeInterval = 100 * time.Millisecond
	// MaxProbeInterval bounds Config.ProbeInterval from above: the probe is
	// what brings a recovered endpoint's backlog forward before its next
	// schedule step, and a round this rare would leave that to the schedule.
	MaxProbeInterval = 5 * time.Minute
	// maxWaitingPerEndpoint bounds each list of an endpoint (its waiting
	// list and its line); the newest beyond it keep their schedule but are
	// not pulled forward, or come back after ThrottleWait.
	maxWaitingPerEndpoint = 100_000
	// maxProbeEndpoints bounds the endpoints one probe round looks at.
	maxProbeEndpoints = 1000
	// maxProbeCandidates bounds the waiting deliveries one probe looks at
	// for one that can be probed (stale index entries are dropped on the way).
	maxProbeCandidates = 16
	// drainLockTTL is how long a drain lock outlives a worker that died
	// holding it (while the lock exists, deliveries wait in line for it to
	// hand the slots out); the drain refreshes it every drainPoll. A lock
	// that lapses under a live drain costs nothing but a second drain:
	// handing out is safe from several workers at once.
	drainLockTTL = 2 * time.Second
	// drainPoll is how often a drain looks for free slots, when no delivery
	// of its worker finishing woke it earlier.
	drainPoll = 50 * time.Millisecond
	// fillScanExtra is how many more of the oldest waiting deliveries than
	// free slots a hand-off looks at: some may be running or done.
	fillScanExtra = 16
	// waitingTTL is how long an endpoint's index outlives its last failure.
	waitingTTL = 7 * 24 * time.Hour
)

// CheckProbe reports whether interval, a Config's ProbeInterval (zero: the
// default), is within the worker's bounds: from MinProbeInterval to
// MaxProbeInterval.
func CheckProbe(interval time.Duration) error {
	if interval < 0 {
		return fmt.Errorf("probe interval %s must not be negative", interval)
	}
	orDefault(&interval, DefaultProbeInterval)
	return checkRange("probe interval", interval, MinProbeInterval, MaxProbeInterval)
}

const keyWaitingEndpoints = keyPrefix + "waiting-endpoints" // SET of endpoint ids with deliveries waiting

func waitingKey(id string) string { return keyPrefix + "waiting:{" + id + "}" }
func lineKey(id string) string    { return keyPrefix + "waiting:{" + id + "}:line" }
func probeKey(id string) string   { return keyPrefix + "waiting:{" + id + "}:probe" }
func drainKey(id string) string   { return keyPrefix + "waiting:{" + id + "}:drain" }

// pullScript moves the tasks ARGV[3..] that are in the retry set to the head
// of the pending list, the first one first, as asynq's RunTask does (but to
// the head, and with pending_since). KEYS: asynq:{q}:retry, asynq:{q}:pending.
// ARGV: task key prefix, pending_since (ns), ids. Returns one reply per id: 1
// moved, else the task's state ("" when there is no such task).
var pullScript = redis.NewScript(`
local res = {}
for i = #ARGV, 3, -1 do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  local state = redis.call('HGET', key, 'state')
  res[i - 2] = state or ''
  if state == 'retry' and redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('RPUSH', KEYS[2], id)
    redis.call('HSET', key, 'state', 'pending', 'pending_since', ARGV[2])
    res[i - 2] = 1
  end
end
return res
`)

// unlockScript deletes KEYS[1] if it still holds ARGV[1].
var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// extendLockScript refreshes KEYS[1] to ARGV[2] ms if it still holds ARGV[1].
var extendLockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
`)

// drainer pulls the waiting deliveries of recovered endpoints forward and
// probes failing ones.
type drainer struct {
	rdb   redis.UniversalClient
	store *Store
	ins   *asynq.Inspector
	log   *zap.Logger
	queue string
	// interval is Config.ProbeInterval; timeout is one attempt's.
	interval, timeout time.Duration
	maxWaiting        int
	now               func() time.Time

	ctx    context.Context // ends at shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	active map[string]chan struct{} // endpoint id → wake-up of its local drain
}

func newDrainer(rdb redis.UniversalClient, store *Store, log *zap.Logger, interval, timeout time.Duration) *drainer {
	ctx, cancel := context.WithCancel(context.Background())
	return &drainer{
		rdb: rdb, store: store, ins: asynq.NewInspectorFromRedisClient(rdb), log: log, queue: tasks.QueueDeliver,
		interval: interval, timeout: timeout, maxWaiting: maxWaitingPerEndpoint, now: time.Now,
		ctx: ctx, cancel: cancel, active: map[string]chan struct{}{},
	}
}

// stop ends the probe loop and every drain of this worker and waits for them.
func (d *drainer) stop() {
	d.cancel()
	d.wg.Wait()
}

// probeTTL is how long a claimed probe marks its delivery as a probe: its
// attempt may be throttled a few times before it runs.
func (d *drainer) probeTTL() time.Duration { return 2*d.timeout + d.interval + sendLockMargin }

// outcome is what one attempt tells the index.
type outcome int

const (
	// outcomeWaits: the delivery failed and will be retried.
	outcomeWaits outcome = iota
	// outcomeDone: it succeeded, failed for good, or had its last attempt.
	outcomeDone
)

// indexCmds are the replies an attempt's index update reads.
type indexCmds struct {
	left  *redis.IntCmd   // after a success: of the waiting list and the line, how many are not empty
	probe *redis.SliceCmd // the endpoint's probe marker (MGET: no redis.Nil to fail the pipeline)
}

// waiting reports whether deliveries were left waiting or in line after a success.
func (c indexCmds) waiting() bool {
	return c.left != nil && c.left.Val() > 0
}

// indexIn queues in p the index update of delivery taskID of endpoint id;
// at is its place in the waiting list if it waits.
func (d *drainer) indexIn(ctx context.Context, p redis.Pipeliner, id, taskID string, o outcome, success bool, at time.Time) indexCmds {
	var c indexCmds
	wk := waitingKey(id)
	if o == outcomeWaits {
		p.ZAddNX(ctx, wk, redis.Z{Score: float64(at.UnixMilli()), Member: taskID})
		p.ZRemRangeByRank(ctx, wk, int64(d.maxWaiting), -1)
		p.PExpire(ctx, wk, waitingTTL)
		p.SAdd(ctx, keyWaitingEndpoints, id)
	} else {
		// It left the line when it took its slot (limits.go).
		p.ZRem(ctx, wk, taskID)
		if success {
			c.left = p.Exists(ctx, wk, lineKey(id)) // an empty ZSET does not exist
		}
	}
	c.probe = p.MGet(ctx, probeKey(id))
	return c
}

// probeDue reports whether the attempt of taskID whose index replies are c
// was a probe, and when its delivery was due; it ends the probe, so that the
// next one starts no sooner than ProbeInterval from now.
func (d *drainer) probeDue(ctx context.Context, id, taskID string, c indexCmds) (time.Time, bool) {
	if c.probe == nil {
		return time.Time{}, false
	}
	vals, err := c.probe.Result()
	if err != nil || len(vals) != 1 {
		return time.Time{}, false
	}
	v, _ := vals[0].(string)
	task, dueMS, ok := strings.Cut(v, "|")
	if !ok || task != taskID {
		return time.Time{}, false
	}
	ms, err := strconv.ParseInt(dueMS, 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	_ = d.rdb.Set(ctx, probeKey(id), "done", d.interval).Err()
	return time.UnixMilli(ms), true
}

// kick makes this worker hand endpoint id's free slots to the deliveries
// waiting for it: it starts a drain unless another worker holds the drain
// lock (then it hands out the slots free now, once), or wakes the hand-off it
// runs already, which then looks again.
func (d *drainer) kick(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if wake, ok := d.active[id]; ok {
		select {
		case wake <- struct{}{}:
		default:
		}
		return
	}
	if d.ctx.Err() != nil {
		return
	}
	wake := make(chan struct{}, 1)
	d.active[id] = wake
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if err := d.handOut(d.ctx, id, wake); err != nil && d.ctx.Err() == nil {
			d.log.Warn("handing an endpoint's free slots to its waiting deliveries", zap.String("endpoint_id", id), zap.Error(err))
		}
	}()
}

// handOut drains endpoint id if it takes the drain lock; otherwise it hands
// out the slots free now, and again each time it is woken meanwhile.
func (d *drainer) handOut(ctx context.Context, id string, wake chan struct{}) error {
	var b [8]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	ok, err := d.rdb.SetNX(ctx, drainKey(id), token, drainLockTTL).Result()
	if err != nil || ok {
		defer d.leave(id, nil)
		if err != nil {
			return err
		}
		return d.drain(ctx, id, token, wake)
	}
	for {
		r, err := d.store.lookup(ctx, id)
		if err == nil && r != nil && r.Enabled {
			_, err = d.fill(ctx, r, "")
		}
		if d.leave(id, wake) {
			return err
		}
	}
}

// leave ends this worker's hand-off of endpoint id, unless wake (when not
// nil) was woken meanwhile; it reports whether it ended it.
func (d *drainer) leave(id string, wake chan struct{}) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if wake != nil {
		select {
		case <-wake:
			return false
		default:
		}
	}
	delete(d.active, id)
	return true
}

// drain hands the free slots of endpoint id to the deliveries waiting for it,
// oldest first, while it holds the drain lock (token): to those in line until
// none is left, and to those of the waiting list too while the endpoint does
// not fail, until none is left.
func (d *drainer) drain(ctx context.Context, id, token string, wake <-chan struct{}) error {
	lk := drainKey(id)
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = unlockScript.Run(rctx, d.rdb, []string{lk}, token).Err()
	}()
	start, handed := time.Now(), 0
	pause := time.Duration(0)
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return nil
			case <-wake:
			case <-time.After(pause):
			}
		}
		r, err := d.store.lookup(ctx, id)
		if err != nil {
			return err
		}
		if r == nil || !r.Enabled {
			return d.forget(ctx, id)
		}
		f, err := d.fill(ctx, r, token)
		if err != nil {
			return err
		}
		handed += f.moved
		switch {
		case f.lost:
			return nil // the lock lapsed (Redis frozen) and another worker took over
		case f.line > 0:
		case f.failing:
			if f.waiting > 0 {
				d.log.Info("endpoint failing again; its waiting deliveries keep their schedule",
					zap.String("endpoint_id", id), zap.Int("pulled_forward", handed))
			}
			return nil
		case f.waiting == 0:
			if c := d.log.Check(zapcore.DebugLevel, "deliveries that waited for their endpoint were handed its slots"); c != nil {
				c.Write(zap.String("endpoint_id", id), zap.Int("pulled_forward", handed), zap.Duration("took", time.Since(start)))
			}
			return d.dropIfEmpty(ctx, id)
		}
		pause = drainPoll
		if f.rateWait > 0 {
			pause = min(pause, f.rateWait)
		}
	}
}

// fillResult is what one hand-off did and saw.
type fillResult struct {
	// moved counts the deliveries handed a slot and moved to pending.
	moved int
	// line and waiting count the deliveries still in line and in the
	// waiting list.
	line, waiting int64
	// rateWait, when not 0, is how long until the rate limit allows the next.
	rateWait time.Duration
	// failing: the endpoint failed since its last success (only the line
	// was handed slots); lost: the drain lock given was not held any more
	// (nothing was handed out).
	failing, lost bool
}

// fill hands the free slots of endpoint r to the oldest deliveries waiting
// for it in the retry set, those in line and, unless the endpoint is failing,
// those of the waiting list: each gets a reservation (limits.go) and is moved
// to the head of the pending list. Entries of deliveries that are done or
// gone are dropped on the way. With lock, it also refreshes the drain lock of
// that token, and hands nothing out if it lost it. Several workers may fill
// one endpoint at once: reservations are taken in one script, against the
// slots free.
func (d *drainer) fill(ctx context.Context, r *endpointRecord, lock string) (fillResult, error) {
	var res fillResult
	keys := limitKeys(r.ID)
	maxc := r.maxConcurrency()
	var held *redis.Cmd
	var failing *redis.IntCmd
	if _, err := d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		if lock != "" {
			held = extendLockScript.Eval(ctx, p, []string{drainKey(r.ID)}, lock, drainLockTTL.Milliseconds())
		}
		failing = p.Exists(ctx, failingKey(r.ID))
		return nil
	}); err != nil {
		return res, fmt.Errorf("checking drain of endpoint %s: %w", r.ID, err)
	}
	if held != nil {
		if n, _ := held.Int(); n != 1 {
			res.lost = true
			return res, nil
		}
	}
	res.failing = failing.Val() == 1
	flag := "0"
	if res.failing {
		flag = "1"
	}
	vals, err := candidatesScript.Run(ctx, d.rdb, keys, d.now().UnixMilli(), maxc, fillScanExtra, flag).Slice()
	if err != nil || len(vals) < 3 {
		return res, fmt.Errorf("looking at the deliveries waiting for endpoint %s: %v", r.ID, err)
	}
	free, _ := vals[0].(int64)
	res.line, _ = vals[1].(int64)
	res.waiting, _ = vals[2].(int64)
	if free <= 0 || len(vals) == 3 {
		return res, nil
	}
	ids := make([]string, 0, len(vals)-3)
	for _, v := range vals[3:] {
		if t, ok := v.(string); ok {
			ids = append(ids, t)
		}
	}
	states := make([]*redis.StringCmd, len(ids))
	if _, err := d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, t := range ids {
			states[i] = p.HGet(ctx, asynqKey(d.queue, "t:"+t), "state")
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return res, fmt.Errorf("reading the deliveries waiting for endpoint %s: %w", r.ID, err)
	}
	var ready, drop []string
	for i, t := range ids {
		switch s, err := states[i].Result(); {
		case errors.Is(err, redis.Nil), s == "completed", s == "archived":
			drop = append(drop, t)
		case err == nil && s == "retry":
			ready = append(ready, t)
		}
		// Pending or running ones keep their place: they take a slot, or
		// come back in line, by themselves.
	}
	if len(ready) == 0 && len(drop) == 0 {
		return res, nil
	}
	args := make([]any, 0, 7+len(drop)+len(ready))
	args = append(args, d.now().UnixMilli(), reserveLease.Milliseconds(), maxc, r.RateLimit, max(1, r.RateLimit), flag, len(drop))
	for _, t := range drop {
		args = append(args, t)
	}
	for _, t := range ready {
		args = append(args, t)
	}
	out, err := reserveScript.Run(ctx, d.rdb, keys, args...).Slice()
	if err != nil || len(out) < 3 {
		return res, fmt.Errorf("handing slots of endpoint %s to waiting deliveries: %v", r.ID, err)
	}
	if ms, _ := out[0].(int64); ms > 0 {
		res.rateWait = time.Duration(ms) * time.Millisecond
	}
	res.line, _ = out[1].(int64)
	res.waiting, _ = out[2].(int64)
	reserved := make([]string, 0, len(out)-3)
	for _, v := range out[3:] {
		if t, ok := v.(string); ok {
			reserved = append(reserved, t)
		}
	}
	if len(reserved) == 0 {
		return res, nil
	}
	moved, err := d.move(ctx, r.ID, reserved)
	if err != nil {
		// Left reserved: each takes its slot if it runs, or goes back in
		// line when the reservation lapses.
		return res, err
	}
	var back []any
	for i, t := range reserved {
		switch moved[i] {
		case "":
			res.moved++
		case "pending", "active", "retry", "scheduled":
			// Not in the retry set any more (its re-delay came, say): it takes
			// a slot by itself, and waits in line in its place until then.
			back = append(back, t, "1")
			res.line++
		default:
			back = append(back, t, "0") // done or gone
		}
	}
	if len(back) > 0 {
		if err := unreserveScript.Run(ctx, d.rdb, keys, back...).Err(); err != nil {
			return res, fmt.Errorf("taking back slots of endpoint %s: %w", r.ID, err)
		}
	}
	return res, nil
}

// move moves ids (waiting for endpoint id, oldest first) from the retry set to
// the head of the pending list. It returns, for each, "" when it moved it, or
// the state it found ("none" when there is no such task).
func (d *drainer) move(ctx context.Context, id string, ids []string) ([]string, error) {
	args := make([]any, 0, len(ids)+2)
	args = append(args, asynqKey(d.queue, "t:"), strconv.FormatInt(d.now().UnixNano(), 10))
	for _, t := range ids {
		args = append(args, t)
	}
	codes, err := pullScript.Run(ctx, d.rdb, []string{asynqKey(d.queue, "retry"), asynqKey(d.queue, "pending")}, args...).Slice()
	if err != nil {
		return nil, fmt.Errorf("pulling deliveries of endpoint %s forward: %w", id, err)
	}
	out := make([]string, len(ids))
	for i := range ids {
		out[i] = "none"
		if i >= len(codes) {
			continue
		}
		switch c := codes[i].(type) {
		case int64:
			if c == 1 {
				out[i] = ""
			}
		case string:
			if c != "" {
				out[i] = c
			}
		}
	}
	return out, nil
}

// pull moves ids (waiting for endpoint id, oldest first) from the retry set to
// the head of the pending list, and drops the others from the index: they
// are running, done or gone, and one that fails is indexed again. It returns
// those moved.
func (d *drainer) pull(ctx context.Context, id string, ids []string) ([]string, error) {
	states, err := d.move(ctx, id, ids)
	if err != nil {
		return nil, err
	}
	var stale []any
	moved := make([]string, 0, len(ids))
	for i, t := range ids {
		if states[i] == "" {
			moved = append(moved, t)
		} else {
			stale = append(stale, t)
		}
	}
	if len(stale) == 0 {
		return moved, nil
	}
	if err := d.rdb.ZRem(ctx, waitingKey(id), stale...).Err(); err != nil {
		return moved, fmt.Errorf("updating deliveries waiting for endpoint %s: %w", id, err)
	}
	return moved, nil
}

// dropIfEmpty takes endpoint id off the list of endpoints with waiting
// deliveries, and puts it back if a failure or a throttle listed one
// meanwhile (keys in different Redis Cluster slots: no script).
func (d *drainer) dropIfEmpty(ctx context.Context, id string) error {
	if err := d.rdb.SRem(ctx, keyWaitingEndpoints, id).Err(); err != nil {
		return fmt.Errorf("updating endpoints with waiting deliveries: %w", err)
	}
	var waiting, line *redis.IntCmd
	_, err := d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		waiting = p.ZCard(ctx, waitingKey(id))
		line = p.ZCard(ctx, lineKey(id))
		return nil
	})
	if n := waiting.Val() + line.Val(); err == nil && n > 0 {
		err = d.rdb.SAdd(ctx, keyWaitingEndpoints, id).Err()
	}
	if err != nil {
		return fmt.Errorf("updating endpoints with waiting deliveries: %w", err)
	}
	return nil
}

// forget drops the index of a deleted or disabled endpoint: its deliveries
// are skipped when they run.
func (d *drainer) forget(ctx context.Context, id string) error {
	_, err := d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, waitingKey(id), lineKey(id))
		p.SRem(ctx, keyWaitingEndpoints, id)
		return nil
	})
	return err
}

// loop probes the failing endpoints with waiting deliveries every interval,
// and drains those that are not failing or have deliveries in line (their
// drain was cut short).
func (d *drainer) loop() {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		tick := time.NewTicker(d.interval)
		defer tick.Stop()
		for {
			select {
			case <-d.ctx.Done():
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(d.ctx, d.interval)
			if err := d.round(ctx); err != nil && d.ctx.Err() == nil {
				d.log.Debug("probing failing endpoints", zap.Error(err))
			}
			cancel()
		}
	}()
}

// round looks at every endpoint with waiting deliveries once.
func (d *drainer) round(ctx context.Context) error {
	ids, err := d.rdb.SRandMemberN(ctx, keyWaitingEndpoints, maxProbeEndpoints).Result()
	if err != nil {
		return fmt.Errorf("listing endpoints with waiting deliveries: %w", err)
	}
	for _, id := range ids {
		if err := d.probe(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// probe re-sends the oldest delivery waiting for endpoint id early, if the
// endpoint is failing and no probe of it ran within the last interval; if it
// is not failing, or has deliveries in line, it drains it.
func (d *drainer) probe(ctx context.Context, id string) error {
	r, err := d.store.lookup(ctx, id)
	if err != nil {
		return err
	}
	if r == nil || !r.Enabled {
		return d.forget(ctx, id)
	}
	var card, line, failing, draining *redis.IntCmd
	if _, err := d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		card = p.ZCard(ctx, waitingKey(id))
		line = p.ZCard(ctx, lineKey(id))
		failing = p.Exists(ctx, failingKey(id))
		draining = p.Exists(ctx, drainKey(id))
		return nil
	}); err != nil {
		return fmt.Errorf("checking endpoint %s: %w", id, err)
	}
	switch {
	case card.Val()+line.Val() == 0:
		return d.dropIfEmpty(ctx, id)
	case draining.Val() == 1:
		return nil
	case failing.Val() == 0 || line.Val() > 0:
		// Its last attempt succeeded but deliveries still wait, or some
		// wait in line for a slot: a drain was cut short (its worker
		// stopped) or is due.
		d.kick(id)
		return nil
	}
	claimed, err := d.rdb.SetNX(ctx, probeKey(id), "claim", d.interval).Result()
	if err != nil || !claimed {
		return err
	}
	cands, err := d.rdb.ZRange(ctx, waitingKey(id), 0, maxProbeCandidates-1).Result()
	if err != nil {
		return fmt.Errorf("listing deliveries waiting for endpoint %s: %w", id, err)
	}
	now := d.now()
	for _, t := range cands {
		info, err := d.ins.GetTaskInfo(d.queue, t)
		if err != nil {
			if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
				_ = d.rdb.ZRem(ctx, waitingKey(id), t).Err()
				continue
			}
			return fmt.Errorf("reading delivery %s: %w", t, err)
		}
		switch {
		case info.State == asynq.TaskStateCompleted || info.State == asynq.TaskStateArchived:
			_ = d.rdb.ZRem(ctx, waitingKey(id), t).Err()
			continue
		case info.State != asynq.TaskStateRetry:
			return nil // it runs now: that is the probe
		case info.NextProcessAt.Sub(now) <= 2*d.interval:
			return nil // the schedule tries it soon enough
		case info.Retried >= info.MaxRetry:
			continue // a failed probe would archive it: leave its last attempt to the schedule
		}
		due := info.NextProcessAt.UnixMilli()
		if err := d.rdb.Set(ctx, probeKey(id), t+"|"+strconv.FormatInt(due, 10), d.probeTTL()).Err(); err != nil {
			return fmt.Errorf("marking probe of endpoint %s: %w", id, err)
		}
		moved, err := d.pull(ctx, id, []string{t})
		if err != nil {
			return err
		}
		if len(moved) == 1 {
			d.log.Debug("probing failing endpoint with its oldest waiting delivery", zap.String("endpoint_id", id), zap.String("delivery_id", t))
		}
		return nil
	}
	return nil
}
