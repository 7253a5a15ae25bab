package caddymodule

import (
	"os"
	"syscall"
)

// fileIdentity returns the inode and the status-change time of a file: a
// file replaced by another (a rename over it, `cp -p`) or written and given
// its old mtime back changes one of them even when size and mtime match.
func fileIdentity(st os.FileInfo) (ino uint64, ctime int64) {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return s.Ino, s.Ctim.Nano()
	}
	return 0, 0
}
