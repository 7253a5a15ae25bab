//go:build !linux

package caddymodule

import "os"

// fileIdentity is the inode and status-change time where the watcher knows
// how to read them (Linux); elsewhere size and mtime, and the content of
// recently modified files, tell a change.
func fileIdentity(os.FileInfo) (ino uint64, ctime int64) { return 0, 0 }
