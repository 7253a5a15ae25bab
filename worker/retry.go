package worker

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/worker/tasks"
)

// DefaultSchedule is the Standard Webhooks retry schedule: the first attempt
// immediately, then retries 5 seconds, 5 minutes, 30 minutes, 2, 5, 10, 14,
// 20 and 24 hours after the previous attempt.
var DefaultSchedule = []time.Duration{
	0,
	5 * time.Second,
	5 * time.Minute,
	30 * time.Minute,
	2 * time.Hour,
	5 * time.Hour,
	10 * time.Hour,
	14 * time.Hour,
	20 * time.Hour,
	24 * time.Hour,
}

// Defaults of RetryPolicy and SenderOptions.
const (
	// DefaultJitter is the default RetryPolicy.Jitter (±10%).
	DefaultJitter = 0.1
	// DefaultMaxRetryAfter is the longest Retry-After honoured by default.
	DefaultMaxRetryAfter = 24 * time.Hour
	// defaultThrottleWait is used when a ThrottledError carries no Wait.
	defaultThrottleWait = time.Second
	// DefaultFanoutFirstRetry is the default RetryPolicy.FanoutFirst: a failed
	// fan-out runs again after 1s, then 2s, 4s, 8s, 16s, then every FanoutMax.
	DefaultFanoutFirstRetry = time.Second
	// DefaultFanoutMaxRetry is the default RetryPolicy.FanoutMax (30s). With
	// tasks.FanoutMaxRetry (25) retries a fan-out is retried for about 10.5
	// minutes (1+2+4+8+16+20×30 s) before asynq archives it (see README).
	DefaultFanoutMaxRetry = 30 * time.Second
	// MaxFanoutRetry bounds RetryPolicy.FanoutFirst and FanoutMax from above:
	// the fan-out schedule is meant to be quick, and an event's deliveries
	// all wait for its fan-out.
	MaxFanoutRetry = time.Hour
)

// CheckFanoutRetry reports whether first and limit, a RetryPolicy's
// FanoutFirst and FanoutMax (zero: the default of each), are within bounds:
// positive, at most MaxFanoutRetry, and first no longer than limit.
func CheckFanoutRetry(first, limit time.Duration) error {
	if first < 0 || limit < 0 {
		return fmt.Errorf("fan-out retry delays %s and %s must not be negative", first, limit)
	}
	orDefault(&first, DefaultFanoutFirstRetry)
	orDefault(&limit, DefaultFanoutMaxRetry)
	if err := checkRange("fan-out retry cap", limit, 0, MaxFanoutRetry); err != nil {
		return err
	}
	if first > limit {
		return fmt.Errorf("first fan-out retry delay %s is longer than the fan-out retry cap %s", first, limit)
	}
	return nil
}

// RetryPolicy computes when a failed task runs again: webhook:deliver tasks
// follow Schedule (the Standard Webhooks schedule by default), event:fanout
// tasks their own quick, capped schedule (FanoutFirst doubling up to
// FanoutMax), and a task whose worker was lost (asynq.ErrLeaseExpired) runs
// again at once. The zero value is the default of each, with ±10% jitter.
type RetryPolicy struct {
	// Schedule lists the delay before each attempt; Schedule[0] is the
	// first attempt (immediate) and Schedule[i] the delay between attempt i
	// and attempt i+1. The default is DefaultSchedule.
	Schedule []time.Duration
	// Jitter is the fraction by which each scheduled delay is randomly
	// lengthened or shortened, so retries of many deliveries spread out.
	// Zero means the default 0.1 (±10%); a negative value disables jitter.
	Jitter float64
	// MaxRetryAfter bounds how long a Retry-After or throttle wait may
	// postpone a retry. Zero means the default 24h.
	MaxRetryAfter time.Duration
	// FanoutFirst is the delay before the first retry of a failed fan-out;
	// each further retry waits twice as long, up to FanoutMax. Zero means the
	// default 1s; at most FanoutMax.
	FanoutFirst time.Duration
	// FanoutMax caps the delay between fan-out retries. Zero means the
	// default 30s; at most MaxFanoutRetry (1h).
	FanoutMax time.Duration
}

// fanoutDelay is the delay before fan-out retry n+1: FanoutFirst·2ⁿ capped
// at FanoutMax, with the policy's jitter.
func (p RetryPolicy) fanoutDelay(n int) time.Duration {
	first, limit := p.FanoutFirst, p.FanoutMax
	if first <= 0 {
		first = DefaultFanoutFirstRetry
	}
	if limit <= 0 {
		limit = DefaultFanoutMaxRetry
	}
	d := first
	for i := 0; i < n && d < limit; i++ {
		d *= 2
	}
	return p.jittered(min(d, limit))
}

// jittered lengthens or shortens d by up to the policy's jitter.
func (p RetryPolicy) jittered(d time.Duration) time.Duration {
	if j := p.jitter(); j > 0 && d > 0 {
		// Uniform in [d*(1-j), d*(1+j)].
		f := 1 + j*(2*rand.Float64()-1)
		d = time.Duration(float64(d) * f)
	}
	return d
}

func (p RetryPolicy) schedule() []time.Duration {
	if len(p.Schedule) == 0 {
		return DefaultSchedule
	}
	return p.Schedule
}

func (p RetryPolicy) jitter() float64 {
	switch {
	case p.Jitter < 0:
		return 0
	case p.Jitter == 0:
		return DefaultJitter
	case p.Jitter > 1:
		return 1
	}
	return p.Jitter
}

func (p RetryPolicy) maxRetryAfter() time.Duration {
	if p.MaxRetryAfter <= 0 {
		return DefaultMaxRetryAfter
	}
	return p.MaxRetryAfter
}

// MaxRetry returns how many retries follow the first attempt,
// len(Schedule)-1: the asynq.MaxRetry value for webhook:deliver tasks.
func (p RetryPolicy) MaxRetry() int {
	return len(p.schedule()) - 1
}

// Delay is an asynq Config.RetryDelayFunc: it returns the delay before retry
// number n+1, n being the number of retries made so far (asynq passes 0 after
// the first attempt failed). An attempt whose worker was lost
// (asynq.ErrLeaseExpired: asynq's own recoverer) runs again at once, and an
// event:fanout task follows the fan-out schedule (see fanoutDelay). A
// webhook:deliver task follows the schedule with jitter; past the
// end of the schedule the last delay repeats. When err is or wraps a
// *RetryAfterError, the delay is the longer of the scheduled delay and the
// receiver's Retry-After (bounded by MaxRetryAfter). When err is or wraps a
// *ThrottledError, the delay is its Wait (bounded by MaxRetryAfter, 1s when
// unset) and the schedule does not apply.
func (p RetryPolicy) Delay(n int, err error, t *asynq.Task) time.Duration {
	if errors.Is(err, asynq.ErrLeaseExpired) {
		return 0
	}
	maxRA := p.maxRetryAfter()
	if te, ok := errors.AsType[*ThrottledError](err); ok {
		w := te.Wait
		if w <= 0 {
			w = defaultThrottleWait
		}
		return min(w, maxRA)
	}
	if t != nil && t.Type() == tasks.TypeFanout {
		return p.fanoutDelay(max(n, 0))
	}
	sched := p.schedule()
	i := max(n+1, 0)
	if i >= len(sched) {
		i = len(sched) - 1
	}
	d := p.jittered(sched[i])
	if ra, ok := errors.AsType[*RetryAfterError](err); ok && ra.After > 0 {
		d = max(d, min(ra.After, maxRA))
	}
	return max(d, 0)
}

// RetryAfterError reports a failed delivery whose receiver asked, with a
// Retry-After header, not to be called again before After.
type RetryAfterError struct {
	// After is how long the receiver asked to wait.
	After time.Duration
	// Err is the delivery failure.
	Err error
}

func (e *RetryAfterError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("receiver asked to retry after %s", e.After)
	}
	return fmt.Sprintf("%v (receiver asked to retry after %s)", e.Err, e.After)
}

// Unwrap returns the delivery failure.
func (e *RetryAfterError) Unwrap() error { return e.Err }

// ThrottledError reports that a delivery was not attempted because the
// endpoint's own concurrency or rate limit was reached. It is not a failure:
// IsFailure returns false, so asynq does not count the attempt against the
// retry budget, and Delay retries after Wait.
type ThrottledError struct {
	// Wait is how long to wait before trying again.
	Wait time.Duration
	// Reason names the limit that was hit.
	Reason string
}

func (e *ThrottledError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("endpoint throttled, trying again in %s", e.Wait)
	}
	return fmt.Sprintf("endpoint throttled (%s), trying again in %s", e.Reason, e.Wait)
}

// IsFailure is an asynq Config.IsFailureFunc: a *ThrottledError (possibly
// wrapped) is not a failure, every other error is.
func IsFailure(err error) bool {
	if err == nil {
		return false
	}
	_, throttled := errors.AsType[*ThrottledError](err)
	return !throttled
}
