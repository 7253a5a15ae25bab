package enqueue

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// ErrClosed is returned by [Writer.Enqueue] after [Writer.Close].
var ErrClosed = errors.New("enqueuing task: the writer is closed")

// Defaults of [Options].
const (
	DefaultMaxBatch         = 128
	DefaultRoundTripTimeout = 5 * time.Second
)

// allQueues is asynq's set of queue names (base.AllQueues); asynq's Inspector
// and asynqmon list the queues named there.
const allQueues = "asynq:queues"

// maxYields bounds how often the writer lets other goroutines run before a
// round trip, waiting for more callers (see run).
const maxYields = 8

// republish is how often a Writer names its queues in allQueues again, so that
// a Redis that lost its data shows the queues again within this time.
const republish = time.Second

// Options tune a [Writer]; zero values mean the defaults.
type Options struct {
	// MaxBatch caps the tasks written in one round trip (default 128).
	MaxBatch int
	// RoundTripTimeout bounds one round trip to Redis (default 5 s). A round
	// trip also ends when the last of its callers stops waiting (the latest
	// of their deadlines), so a caller that needs an answer sooner passes a
	// timeout or a context with a deadline.
	RoundTripTimeout time.Duration
	// OnRoundTrip, when set, is called after each round trip with its error
	// (nil: Redis answered, whatever it answered for each task), from the
	// writer's goroutine: it must not block. The Caddy app uses it to learn at
	// once that a Redis it took for down answers again.
	OnRoundTrip func(error)
}

// Writer enqueues tasks in batches. Its methods are safe for concurrent use.
type Writer struct {
	rdb       redis.UniversalClient
	maxBatch  int
	rtTimeout time.Duration
	onRT      func(error)

	in        chan *call
	quit      chan struct{}
	done      chan struct{}
	closeOnce sync.Once

	// Owned by the run goroutine.
	published map[string]time.Time
}

// call is one Enqueue waiting for its batch.
type call struct {
	id, queue string
	msg       []byte
	deadline  time.Time  // the caller's; zero: none
	res       chan error // buffered: the writer never waits for an abandoned caller
}

// New starts a Writer on rdb. The caller keeps ownership of rdb and closes it
// after [Writer.Close].
func New(rdb redis.UniversalClient, opts Options) *Writer {
	w := &Writer{
		rdb:       rdb,
		maxBatch:  opts.MaxBatch,
		rtTimeout: opts.RoundTripTimeout,
		onRT:      opts.OnRoundTrip,
		quit:      make(chan struct{}),
		done:      make(chan struct{}),
		published: map[string]time.Time{},
	}
	if w.maxBatch <= 0 {
		w.maxBatch = DefaultMaxBatch
	}
	if w.rtTimeout <= 0 {
		w.rtTimeout = DefaultRoundTripTimeout
	}
	w.in = make(chan *call, 4*w.maxBatch)
	go w.run()
	return w
}

// Enqueue puts m in Redis as a pending asynq task and returns once Redis has
// it. It returns an error wrapping asynq.ErrTaskIDConflict when a task with
// m.ID is already there (nothing is written then), and one wrapping
// context.DeadlineExceeded when timeout (0: none) passes or ctx ends first:
// the task may then still be written by the round trip it joined.
func (w *Writer) Enqueue(ctx context.Context, m Message, timeout time.Duration) error {
	if err := m.validate(); err != nil {
		return err
	}
	c := callPool.Get().(*call)
	c.id, c.queue = m.ID, m.queue()
	c.msg = m.appendEncoded(getMsgBuf(m.encodedSizeHint()))
	c.deadline = time.Time{}
	var expired <-chan time.Time
	if timeout > 0 {
		c.deadline = time.Now().Add(timeout)
		t := timerPool.Get().(*time.Timer)
		t.Reset(timeout)
		defer func() { t.Stop(); timerPool.Put(t) }() // Stop leaves no stale tick (Go ≥ 1.23)
		expired = t.C
	}
	if d, ok := ctx.Deadline(); ok && (c.deadline.IsZero() || d.Before(c.deadline)) {
		c.deadline = d
	}
	select {
	case w.in <- c:
	case <-w.quit:
		c.release()
		return ErrClosed
	case <-expired:
		c.release()
		return m.wrap(context.DeadlineExceeded)
	case <-ctx.Done():
		c.release()
		return m.wrap(ctx.Err())
	}
	var err error
	select {
	case err = <-c.res:
	case <-w.done:
		// Closed after c was handed over; run may have answered just before.
		select {
		case err = <-c.res:
		default:
			return ErrClosed // c stays with run's leftovers, not back in the pool
		}
	case <-expired:
		return m.wrap(context.DeadlineExceeded)
	case <-ctx.Done():
		return m.wrap(ctx.Err())
	}
	// Answered: run is done with c (and gave its message buffer back), so it
	// can serve another caller.
	callPool.Put(c)
	if err != nil {
		return m.wrap(err)
	}
	return nil
}

// EnqueueBatch is Enqueue for several messages: they join round trips in
// their order (so a batch up to MaxBatch usually goes in one), and errs[i] is
// what Enqueue would have returned for ms[i]. timeout and ctx cover the whole
// batch.
func (w *Writer) EnqueueBatch(ctx context.Context, ms []Message, timeout time.Duration) (errs []error) {
	errs = make([]error, len(ms))
	calls := make([]*call, len(ms))
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	var stop error // why the rest of the batch was not handed over
	for i, m := range ms {
		if stop != nil {
			errs[i] = m.wrap(stop)
			continue
		}
		if err := m.validate(); err != nil {
			errs[i] = err
			continue
		}
		c := callPool.Get().(*call)
		c.id, c.queue = m.ID, m.queue()
		c.msg = m.appendEncoded(getMsgBuf(m.encodedSizeHint()))
		c.deadline = deadline
		select {
		case w.in <- c:
			calls[i] = c
			continue
		case <-w.quit:
			stop = ErrClosed
		case <-ctx.Done():
			stop = ctx.Err()
		}
		c.release()
		errs[i] = m.wrap(stop)
	}
	for i, c := range calls {
		if c == nil {
			continue
		}
		var err error
		select {
		case err = <-c.res:
		case <-w.done:
			select {
			case err = <-c.res:
			default:
				errs[i] = ErrClosed
				continue
			}
		case <-ctx.Done():
			errs[i] = ms[i].wrap(ctx.Err())
			continue
		}
		callPool.Put(c)
		if err != nil {
			errs[i] = ms[i].wrap(err)
		}
	}
	return errs
}

// release gives c's message buffer back and c to the pool; only for a call
// the writer never got or has answered.
func (c *call) release() {
	putMsgBuf(c.msg)
	c.msg = nil
	callPool.Put(c)
}

// Message buffers are reused: the encoded message is garbage once it is in
// the pipeline's buffer. Buffers larger than maxPooledMsg are left to the GC.
const maxPooledMsg = 64 << 10

var msgPool sync.Pool // *[]byte

func getMsgBuf(n int) []byte {
	if p, ok := msgPool.Get().(*[]byte); ok && cap(*p) >= n {
		return (*p)[:0]
	}
	return make([]byte, 0, max(n, 1024))
}

func putMsgBuf(b []byte) {
	if b != nil && cap(b) <= maxPooledMsg {
		b = b[:0]
		msgPool.Put(&b)
	}
}

// Calls and timers are reused: one of each per Enqueue would otherwise be
// garbage at the request rate of a proxy. A call whose caller gave up is not
// reused, since run may still answer it.
var (
	callPool  = sync.Pool{New: func() any { return &call{res: make(chan error, 1)} }}
	timerPool = sync.Pool{New: func() any {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return t
	}}
)

// Close stops the writer: the round trip in flight finishes, tasks still
// waiting fail with [ErrClosed]. It does not close the Redis client.
func (w *Writer) Close() error {
	w.closeOnce.Do(func() { close(w.quit) })
	<-w.done
	return nil
}

// run takes whatever is waiting, up to maxBatch, writes it in one round trip
// and answers every caller; the next batch gathers meanwhile.
func (w *Writer) run() {
	defer close(w.done)
	batch := make([]*call, 0, w.maxBatch)
	lastN := 0
	for {
		select {
		case c := <-w.in:
			batch = append(batch[:0], c)
		case <-w.quit:
			for {
				select {
				case c := <-w.in:
					c.res <- ErrClosed
				default:
					return
				}
			}
		}
		batch = w.drain(batch)
		// Under load (the last batch had company), let the request goroutines
		// that are ready run first, so that more of them join this round trip:
		// fewer, larger round trips cost less CPU here and in Redis. A yield
		// that brings nobody ends it; when nothing else is ready to run, a
		// yield returns at once.
		for y := 0; y < maxYields && lastN > 1 && len(batch) < w.maxBatch; y++ {
			n := len(batch)
			runtime.Gosched()
			if batch = w.drain(batch); len(batch) == n {
				break
			}
		}
		lastN = len(batch)
		w.flush(batch)
		clear(batch) // let the answered calls go
	}
}

// drain appends the calls waiting, up to maxBatch.
func (w *Writer) drain(batch []*call) []*call {
	for len(batch) < w.maxBatch {
		select {
		case c := <-w.in:
			batch = append(batch, c)
		default:
			return batch
		}
	}
	return batch
}

// flush writes batch and answers each call. Calls whose caller has given up
// (past its deadline, e.g. while Redis was stuck) are not written.
func (w *Writer) flush(batch []*call) {
	now := time.Now()
	live := batch[:0]
	// The round trip ends when its last caller stops waiting: a write nobody
	// waits for is not worth holding up the next batch.
	deadline := now.Add(w.rtTimeout)
	latest := time.Time{}
	for _, c := range batch {
		if !c.deadline.IsZero() && now.After(c.deadline) {
			putMsgBuf(c.msg)
			c.msg = nil
			c.res <- context.DeadlineExceeded
			continue
		}
		switch {
		case c.deadline.IsZero():
			latest = deadline
		case latest.IsZero() || c.deadline.After(latest):
			latest = c.deadline
		}
		live = append(live, c)
	}
	batch = live
	if len(batch) == 0 {
		return
	}
	if latest.Before(deadline) {
		deadline = latest
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	results, err := w.write(ctx, batch)
	if err != nil && isNoScript(err) {
		// Redis restarted or flushed its script cache: load the script, try once more.
		if err = enqueueScript.Load(ctx, w.rdb).Err(); err == nil {
			results, err = w.write(ctx, batch)
		}
	}
	if w.onRT != nil {
		w.onRT(err)
	}
	for i, c := range batch {
		// The messages are in the pipeline's buffer now; give them back
		// before answering, since an answered call may be reused at once.
		putMsgBuf(c.msg)
		c.msg = nil
		switch {
		case err != nil:
			c.res <- err
		case results[i]:
			c.res <- nil
		default:
			c.res <- asynq.ErrTaskIDConflict
		}
	}
}

// write sends one pipeline: the queue names when due, and one script call per
// queue in batch (a script's keys must share the queue's hash slot). It
// returns, per call, whether it was written (false: its id existed).
func (w *Writer) write(ctx context.Context, batch []*call) ([]bool, error) {
	now := time.Now()
	pipe := w.rdb.Pipeline()
	var (
		groups []group
		due    []string
	)
	for i, c := range batch {
		g := len(groups) - 1
		for g >= 0 && groups[g].queue != c.queue {
			g--
		}
		if g < 0 {
			groups = append(groups, group{queue: c.queue})
			g = len(groups) - 1
		}
		groups[g].idx = append(groups[g].idx, i)
	}
	for _, g := range groups {
		if now.Sub(w.published[g.queue]) >= republish {
			due = append(due, g.queue)
		}
	}
	if len(due) > 0 {
		members := make([]any, len(due))
		for i, q := range due {
			members[i] = q
		}
		pipe.SAdd(ctx, allQueues, members...)
	}
	cmds := make([]*redis.Cmd, len(groups))
	nowNs := now.UnixNano()
	for gi, g := range groups {
		prefix := "asynq:{" + g.queue + "}:"
		keys := make([]string, 1, len(g.idx)+1)
		keys[0] = prefix + "pending"
		args := make([]any, 1, 2*len(g.idx)+1)
		args[0] = nowNs
		for _, i := range g.idx {
			keys = append(keys, prefix+"t:"+batch[i].id)
			args = append(args, batch[i].msg, batch[i].id)
		}
		cmds[gi] = enqueueScript.EvalSha(ctx, pipe, keys, args...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	for _, q := range due {
		w.published[q] = now
	}
	written := make([]bool, len(batch))
	for gi, g := range groups {
		n, err := cmds[gi].Int64Slice()
		if err != nil {
			return nil, fmt.Errorf("reading the enqueue script's reply: %w", err)
		}
		if len(n) != len(g.idx) {
			return nil, fmt.Errorf("the enqueue script answered for %d tasks, not %d", len(n), len(g.idx))
		}
		for k, i := range g.idx {
			written[i] = n[k] == 1
		}
	}
	return written, nil
}

type group struct {
	queue string
	idx   []int // positions in the batch
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// enqueueScript is asynq's enqueueCmd (internal/rdb) for every task of a
// batch, with one LPUSH of all new ids (the same list as one LPUSH each):
//
//	KEYS[1]   asynq:{<queue>}:pending
//	KEYS[i+1] asynq:{<queue>}:t:<task id i>
//	ARGV[1]   now, Unix nanoseconds
//	ARGV[2i]  task message i;  ARGV[2i+1]  task id i
//
// It returns, per task, 1 when written and 0 when the task key existed.
var enqueueScript = redis.NewScript(`
local res, ids = {}, {}
for i = 2, #KEYS do
  if redis.call("EXISTS", KEYS[i]) == 1 then
    res[i-1] = 0
  else
    redis.call("HSET", KEYS[i], "msg", ARGV[2*i-2], "state", "pending", "pending_since", ARGV[1])
    ids[#ids+1] = ARGV[2*i-1]
    res[i-1] = 1
  end
end
if #ids > 0 then
  redis.call("LPUSH", KEYS[1], unpack(ids))
end
return res
`)
