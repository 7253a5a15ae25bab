//go:build unix

package rules

import (
	"syscall"
	"time"
)

// processCPU is the CPU time the process has used (all threads, the GC's
// included): on a loaded box it says what an operation costs where wall
// time also counts the waits for a core.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
