//go:build !unix

package spool

import "os"

// lockDir is a no-op where flock is unavailable: give each process its own
// spool directory there.
func lockDir(string) (*os.File, error) { return nil, nil }
