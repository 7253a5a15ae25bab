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

	"github.com/authtap/authtap/worker/tasks"
)

// Draining the backlog of a recovered endpoint.
//
// A delivery that fails waits in asynq's retry set for its next step of the
// schedule (5 s, 5 min, 30 min …), even after its endpoint is back. So that a
// receiver that was down for a few seconds does not wait minutes for its
// backlog, authtap indexes the deliveries waiting for each endpoint and pulls
// them forward once the endpoint answers 2xx again:
//
//   - a delivery that fails and will be retried adds its task id to
//     authtap:waiting:{<endpoint>} (a ZSET scored by the time of its first
//     failure, so the oldest come first; at most maxWaitingPerEndpoint, the
//     newest beyond that are left to the schedule), and the endpoint to
//     authtap:waiting-endpoints; a success, a permanent failure or the last
//     attempt removes it;
//   - a 2xx of any delivery to the endpoint (an event, a test event, a
//     replay, or a probe) that finds deliveries waiting starts a drain: under
//     a short Redis lock (authtap:waiting:{<endpoint>}:drain, drainLockTTL,
//     refreshed), so that one worker drains it, the worker moves the oldest
//     waiting deliveries from the retry set to the head of the pending list,
//     no more at a time than the endpoint's MaxConcurrency, the next ones as
//     those finish, until none is left or a delivery fails again (the
//     endpoint is down again: the schedule governs the rest). The pulled
//     deliveries are ordinary asynq runs, so the run lock (recover.go) fences
//     them like any other, and the endpoint's concurrency and rate limits
//     (limits.go) apply;
//   - while deliveries wait for an endpoint that is failing, each worker
//     looks every Config.ProbeInterval (default 2 s) whether it may probe it:
//     it claims authtap:waiting:{<endpoint>}:probe (SET NX, so at most one
//     probe per endpoint is in flight across all workers, and the next one
//     starts ProbeInterval after the last ended) and re-sends the oldest
//     waiting delivery early, if its next attempt is more than two probe
//     intervals away and is not its last. The probe is a real attempt with the
//     same webhook-id; if it fails it is recorded in the delivery log but
//     costs no step of the schedule: the delivery goes back to the retry set
//     at the time it was due (a *ThrottledError, which asynq does not count),
//     and the other waiting deliveries are not touched. If it succeeds, the
//     drain starts.
//
// Guarantee: a pulled delivery runs once at a time (asynq moves it from the
// retry set once, and the run lock fences a second run), so a webhook-id that
// got a 2xx is not sent again, unless its receiver answered 2xx after
// authtap's timeout and the attempt counted as failed; deliveries are sent
// oldest first, up to MaxConcurrency at once, so a receiver sees them in order
// within that window.
const (
	// DefaultProbeInterval is the default Config.ProbeInterval.
	DefaultProbeInterval = 2 * time.Second
	// MinProbeInterval bounds Config.ProbeInterval from below.
	MinProbeInterval = 100 * time.Millisecond
	// MaxProbeInterval bounds Config.ProbeInterval from above: the probe is
	// what brings a recovered endpoint's backlog forward before its next
	// schedule step, and a round this rare would leave that to the schedule.
	MaxProbeInterval = 5 * time.Minute
	// maxWaitingPerEndpoint bounds the deliveries indexed per endpoint; the
	// newest beyond it keep their schedule but are not pulled forward.
	maxWaitingPerEndpoint = 100_000
	// maxProbeEndpoints bounds the endpoints one probe round looks at.
	maxProbeEndpoints = 1000
	// maxProbeCandidates bounds the waiting deliveries one probe looks at
	// for one that can be probed (stale index entries are dropped on the way).
	maxProbeCandidates = 16
	// drainLockTTL is how long a drain lock outlives a worker that died
	// holding it; the drain refreshes it every drainPoll.
	drainLockTTL = 5 * time.Second
	// drainPoll is how often a drain looks whether its pulled deliveries are
	// done, when no local success woke it earlier.
	drainPoll = 50 * time.Millisecond
	// maxThrottledWait is how long a pulled delivery may be back in the retry
	// set, throttled by its endpoint's limits, and still count against the
	// drain's window.
	maxThrottledWait = 5 * time.Second
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
func probeKey(id string) string   { return keyPrefix + "waiting:{" + id + "}:probe" }
func drainKey(id string) string   { return keyPrefix + "waiting:{" + id + "}:drain" }

// pullScript moves the tasks ARGV[3..] that are in the retry set to the head
// of the pending list, the first one first, as asynq's RunTask does (but to
// the head, and with pending_since). KEYS: asynq:{q}:retry, asynq:{q}:pending.
// ARGV: task key prefix, pending_since (ns), ids. Returns one code per id: 1
// moved, 0 not waiting in the retry set.
var pullScript = redis.NewScript(`
local res = {}
for i = #ARGV, 3, -1 do
  local id = ARGV[i]
  local key = ARGV[1] .. id
  res[i - 2] = 0
  if redis.call('HGET', key, 'state') == 'retry' and redis.call('ZREM', KEYS[1], id) == 1 then
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
	left  *redis.IntCmd   // deliveries still waiting, after a success
	probe *redis.SliceCmd // the endpoint's probe marker (MGET: no redis.Nil to fail the pipeline)
}

// indexIn queues in p the index update of delivery taskID of endpoint id.
func (d *drainer) indexIn(ctx context.Context, p redis.Pipeliner, id, taskID string, o outcome, success bool, at time.Time) indexCmds {
	var c indexCmds
	wk := waitingKey(id)
	if o == outcomeWaits {
		p.ZAddNX(ctx, wk, redis.Z{Score: float64(at.UnixMilli()), Member: taskID})
		p.ZRemRangeByRank(ctx, wk, int64(d.maxWaiting), -1)
		p.PExpire(ctx, wk, waitingTTL)
		p.SAdd(ctx, keyWaitingEndpoints, id)
	} else {
		p.ZRem(ctx, wk, taskID)
		if success {
			c.left = p.ZCard(ctx, wk)
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

// kick starts draining endpoint id on this worker unless it already is, or
// wakes the drain that is.
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
		defer func() {
			d.mu.Lock()
			delete(d.active, id)
			d.mu.Unlock()
		}()
		if err := d.drain(d.ctx, id, wake); err != nil && d.ctx.Err() == nil {
			d.log.Warn("draining the deliveries waiting for a recovered endpoint", zap.String("endpoint_id", id), zap.Error(err))
		}
	}()
}

// drain pulls the deliveries waiting for endpoint id forward, oldest first
// and at most its MaxConcurrency at a time, while it holds the drain lock and
// the endpoint does not fail again.
func (d *drainer) drain(ctx context.Context, id string, wake <-chan struct{}) error {
	var b [8]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	lk := drainKey(id)
	ok, err := d.rdb.SetNX(ctx, lk, token, drainLockTTL).Result()
	if err != nil || !ok {
		return err // another worker drains it
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = unlockScript.Run(rctx, d.rdb, []string{lk}, token).Err()
	}()
	start, pulledTotal := time.Now(), 0
	pulled := map[string]struct{}{}
	for now := true; ; {
		if !now {
			select {
			case <-ctx.Done():
				return nil
			case <-wake:
			case <-time.After(drainPoll):
			}
		}
		now = false
		r, err := d.store.lookup(ctx, id)
		if err != nil {
			return err
		}
		if r == nil || !r.Enabled {
			return d.forget(ctx, id)
		}
		var held *redis.Cmd
		var failing *redis.IntCmd
		states := make(map[string]*redis.StringCmd, len(pulled))
		dues := make(map[string]*redis.FloatCmd, len(pulled))
		_, err = d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			held = extendLockScript.Eval(ctx, p, []string{lk}, token, drainLockTTL.Milliseconds())
			failing = p.Exists(ctx, failingKey(id))
			for t := range pulled {
				states[t] = p.HGet(ctx, asynqKey(d.queue, "t:"+t), "state")
				dues[t] = p.ZScore(ctx, asynqKey(d.queue, "retry"), t)
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("checking drain of endpoint %s: %w", id, err)
		}
		if n, _ := held.Int(); n != 1 {
			return nil // the lock lapsed (Redis frozen) and another worker took over
		}
		if n, _ := failing.Result(); n == 1 {
			d.log.Info("endpoint failing again; its waiting deliveries keep their schedule",
				zap.String("endpoint_id", id), zap.Int("pulled_forward", pulledTotal))
			return nil
		}
		// A pulled delivery counts against the window until it is done: while
		// pending or running, and while back in the retry set for a moment
		// because a limit throttled it (a failure stops the drain above).
		soon := float64(d.now().Add(maxThrottledWait).Unix())
		for t, c := range states {
			switch s, _ := c.Result(); s {
			case "pending", "active":
			case "retry":
				if due, err := dues[t].Result(); err != nil || due > soon {
					delete(pulled, t)
				}
			default:
				delete(pulled, t)
			}
		}
		need := r.maxConcurrency() - len(pulled)
		if need <= 0 {
			continue
		}
		listed, err := d.rdb.ZRange(ctx, waitingKey(id), 0, int64(len(pulled)+need-1)).Result()
		if err != nil {
			return fmt.Errorf("listing deliveries waiting for endpoint %s: %w", id, err)
		}
		ids := make([]string, 0, need)
		for _, t := range listed {
			if _, ok := pulled[t]; !ok {
				ids = append(ids, t)
			}
		}
		if len(ids) == 0 {
			if len(pulled) == 0 {
				if pulledTotal > 0 {
					d.log.Info("endpoint recovered; its waiting deliveries were pulled forward", zap.String("endpoint_id", id),
						zap.Int("pulled_forward", pulledTotal), zap.Duration("took", time.Since(start)))
				}
				return d.dropIfEmpty(ctx, id)
			}
			continue
		}
		moved, err := d.pull(ctx, id, ids)
		if err != nil {
			return err
		}
		for _, t := range moved {
			pulled[t] = struct{}{}
		}
		pulledTotal += len(moved)
		// Entries that were not waiting any more (done, running or gone) free
		// their window slots at once.
		now = len(moved) < len(ids)
	}
}

// pull moves ids (waiting for endpoint id, oldest first) from the retry set to
// the head of the pending list. Those moved stay indexed until their attempt
// succeeds (a failure keeps their place); the others are dropped from the
// index: they are running, done or gone, and one that fails is indexed again.
// It returns those moved.
func (d *drainer) pull(ctx context.Context, id string, ids []string) ([]string, error) {
	args := make([]any, 0, len(ids)+2)
	args = append(args, asynqKey(d.queue, "t:"), strconv.FormatInt(d.now().UnixNano(), 10))
	for _, t := range ids {
		args = append(args, t)
	}
	codes, err := pullScript.Run(ctx, d.rdb, []string{asynqKey(d.queue, "retry"), asynqKey(d.queue, "pending")}, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("pulling deliveries of endpoint %s forward: %w", id, err)
	}
	var stale []any
	moved := make([]string, 0, len(ids))
	for i, t := range ids {
		if i < len(codes) && codes[i] == 1 {
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
// deliveries, and puts it back if a failure indexed one meanwhile (two keys
// in different Redis Cluster slots: no script).
func (d *drainer) dropIfEmpty(ctx context.Context, id string) error {
	if err := d.rdb.SRem(ctx, keyWaitingEndpoints, id).Err(); err != nil {
		return fmt.Errorf("updating endpoints with waiting deliveries: %w", err)
	}
	n, err := d.rdb.ZCard(ctx, waitingKey(id)).Result()
	if err == nil && n > 0 {
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
		p.Del(ctx, waitingKey(id))
		p.SRem(ctx, keyWaitingEndpoints, id)
		return nil
	})
	return err
}

// loop probes the failing endpoints with waiting deliveries every interval,
// and drains those that are not failing (their drain was cut short).
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
// is not failing, it drains it.
func (d *drainer) probe(ctx context.Context, id string) error {
	r, err := d.store.lookup(ctx, id)
	if err != nil {
		return err
	}
	if r == nil || !r.Enabled {
		return d.forget(ctx, id)
	}
	var card, failing, draining *redis.IntCmd
	if _, err := d.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		card = p.ZCard(ctx, waitingKey(id))
		failing = p.Exists(ctx, failingKey(id))
		draining = p.Exists(ctx, drainKey(id))
		return nil
	}); err != nil {
		return fmt.Errorf("checking endpoint %s: %w", id, err)
	}
	switch {
	case card.Val() == 0:
		return d.dropIfEmpty(ctx, id)
	case draining.Val() == 1:
		return nil
	case failing.Val() == 0:
		// Its last attempt succeeded but deliveries still wait: a drain was
		// cut short (its worker stopped) or is due.
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
