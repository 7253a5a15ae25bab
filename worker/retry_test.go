package worker

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hibiken/asynq"
)

// The policy plugs into asynq.Config as is.
var (
	_ asynq.RetryDelayFunc = RetryPolicy{}.Delay
	_ func(error) bool     = IsFailure
	_ error                = (*RetryAfterError)(nil)
	_ error                = (*ThrottledError)(nil)
)

func TestRetryPolicyMaxRetry(t *testing.T) {
	for i, tc := range []struct {
		p    RetryPolicy
		want int
	}{
		{RetryPolicy{}, 9},
		{RetryPolicy{Schedule: []time.Duration{0, time.Millisecond, 2 * time.Millisecond}}, 2},
		{RetryPolicy{Schedule: []time.Duration{0}}, 0},
	} {
		if got := tc.p.MaxRetry(); got != tc.want {
			t.Errorf("%d: MaxRetry = %d, want %d", i, got, tc.want)
		}
	}
}

func TestRetryPolicyScheduleNoJitter(t *testing.T) {
	p := RetryPolicy{Jitter: -1}
	fail := errors.New("HTTP 500")
	for i, tc := range []struct {
		n    int
		want time.Duration
	}{
		{-1, 0},
		{0, 5 * time.Second},
		{1, 5 * time.Minute},
		{2, 30 * time.Minute},
		{3, 2 * time.Hour},
		{4, 5 * time.Hour},
		{5, 10 * time.Hour},
		{6, 14 * time.Hour},
		{7, 20 * time.Hour},
		{8, 24 * time.Hour},
		{9, 24 * time.Hour},  // past the end: last delay repeats
		{50, 24 * time.Hour}, // ditto
	} {
		if got := p.Delay(tc.n, fail, nil); got != tc.want {
			t.Errorf("%d: Delay(%d) = %s, want %s", i, tc.n, got, tc.want)
		}
	}
}

func TestRetryPolicyJitterBounds(t *testing.T) {
	for i, tc := range []struct {
		jitter float64
		frac   float64 // expected bound
	}{
		{0, 0.1},     // default ±10%
		{0.25, 0.25}, // custom
		{3, 1},       // capped at ±100%
	} {
		p := RetryPolicy{Jitter: tc.jitter}
		for n := range 9 {
			base := DefaultSchedule[n+1]
			lo := time.Duration(float64(base) * (1 - tc.frac))
			hi := time.Duration(float64(base) * (1 + tc.frac))
			distinct := map[time.Duration]bool{}
			for range 200 {
				d := p.Delay(n, errors.New("x"), nil)
				if d < lo || d > hi {
					t.Fatalf("%d: Delay(%d) = %s outside [%s, %s]", i, n, d, lo, hi)
				}
				distinct[d] = true
			}
			if len(distinct) < 10 {
				t.Errorf("%d: Delay(%d) gave only %d distinct values in 200 draws", i, n, len(distinct))
			}
		}
	}
}

func TestRetryPolicyRetryAfter(t *testing.T) {
	p := RetryPolicy{Jitter: -1, MaxRetryAfter: 6 * time.Hour}
	wrap := func(after time.Duration) error {
		return fmt.Errorf("delivering evt_1: %w", &RetryAfterError{After: after, Err: errors.New("HTTP 429")})
	}
	for i, tc := range []struct {
		n    int
		err  error
		want time.Duration
	}{
		{0, wrap(time.Minute), time.Minute},                       // longer than schedule's 5s
		{1, wrap(time.Minute), 5 * time.Minute},                   // shorter than schedule's 5m
		{0, wrap(48 * time.Hour), 6 * time.Hour},                  // bounded by MaxRetryAfter
		{8, wrap(time.Hour), 24 * time.Hour},                      // schedule beyond the bound still applies
		{0, wrap(0), 5 * time.Second},                             // absent Retry-After
		{0, &RetryAfterError{After: -time.Hour}, 5 * time.Second}, // negative ignored
	} {
		if got := p.Delay(tc.n, tc.err, nil); got != tc.want {
			t.Errorf("%d: Delay(%d, %v) = %s, want %s", i, tc.n, tc.err, got, tc.want)
		}
	}
	// Default bound is 24h.
	if got := (RetryPolicy{Jitter: -1}).Delay(0, wrap(100*time.Hour), nil); got != 24*time.Hour {
		t.Errorf("default bound: %s, want 24h", got)
	}
	// Error text and unwrapping.
	inner := errors.New("HTTP 503")
	ra := &RetryAfterError{After: 30 * time.Second, Err: inner}
	if !errors.Is(ra, inner) || ra.Error() != "HTTP 503 (receiver asked to retry after 30s)" {
		t.Errorf("RetryAfterError: Is=%v Error=%q", errors.Is(ra, inner), ra.Error())
	}
	if (&RetryAfterError{After: time.Second}).Error() == "" {
		t.Error("RetryAfterError without Err has empty text")
	}
}

func TestRetryPolicyThrottled(t *testing.T) {
	p := RetryPolicy{MaxRetryAfter: time.Hour}
	for i, tc := range []struct {
		n    int
		err  error
		want time.Duration
	}{
		{0, &ThrottledError{Wait: 2 * time.Second, Reason: "max 4 in flight"}, 2 * time.Second},
		{7, &ThrottledError{Wait: 250 * time.Millisecond}, 250 * time.Millisecond}, // schedule does not apply
		{0, &ThrottledError{}, time.Second},                                        // default wait
		{0, &ThrottledError{Wait: 3 * time.Hour}, time.Hour},                       // bounded
		{0, fmt.Errorf("endpoint ep_1: %w", &ThrottledError{Wait: time.Second}), time.Second},
	} {
		if got := p.Delay(tc.n, tc.err, nil); got != tc.want {
			t.Errorf("%d: Delay = %s, want %s", i, got, tc.want)
		}
	}
}

func TestIsFailure(t *testing.T) {
	for i, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("HTTP 500"), true},
		{&RetryAfterError{After: time.Second, Err: errors.New("HTTP 429")}, true},
		{fmt.Errorf("x: %w", asynq.SkipRetry), true},
		{&ThrottledError{Wait: time.Second, Reason: "rate"}, false},
		{fmt.Errorf("endpoint ep_1: %w", &ThrottledError{Wait: time.Second}), false},
	} {
		if got := IsFailure(tc.err); got != tc.want {
			t.Errorf("%d: IsFailure(%v) = %v, want %v", i, tc.err, got, tc.want)
		}
	}
	if got := (&ThrottledError{Wait: time.Second, Reason: "max 4 in flight"}).Error(); got != "endpoint throttled (max 4 in flight), trying again in 1s" {
		t.Errorf("ThrottledError text %q", got)
	}
}
