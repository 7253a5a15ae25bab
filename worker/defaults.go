package worker

import (
	"fmt"
	"time"
)

// orDefault sets *v to def when it is zero or negative: every numeric option of
// this package reads "0 (or less) means the default".
func orDefault[T ~int | ~int64 | ~float64](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// checkRange reports a duration option below min or above max (a zero bound
// is none) as "<name> D is below the minimum MIN" or "… above the maximum MAX".
func checkRange(name string, d, min, max time.Duration) error {
	switch {
	case min > 0 && d < min:
		return fmt.Errorf("%s %s is below the minimum %s", name, d, min)
	case max > 0 && d > max:
		return fmt.Errorf("%s %s is above the maximum %s", name, d, max)
	}
	return nil
}
