package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
)

// watcher polls the rule files for changes and loads a changed set. A set
// that does not load is logged once per distinct change, and the last good
// set stays in force.
type watcher struct {
	patterns []string
	interval time.Duration
	logger   *zap.Logger
	apply    func(*rules.Set)

	last  [sha256.Size]byte   // fingerprint of the files last looked at
	files map[string]fileSeen // what each file looked like when last hashed
}

// fileSeen is one rule file as the watcher last hashed it.
type fileSeen struct {
	size     int64
	mtime    time.Time
	ino      uint64
	ctime    int64
	sum      [sha256.Size]byte
	hashedAt time.Time
}

// racyWindow is how recently a file may have been modified for the watcher
// to hash its content again although its size and mtime are unchanged: a
// write within the same mtime tick keeps both. A file last modified longer
// ago than this before it was hashed is not read again until its size or
// mtime changes, so polling costs a stat per file, not a read.
const racyWindow = 3 * time.Second

func newWatcher(patterns []string, interval time.Duration, logger *zap.Logger, apply func(*rules.Set)) *watcher {
	return &watcher{patterns: patterns, interval: interval, logger: logger, apply: apply, files: map[string]fileSeen{}}
}

// prime records the current state of the files as already loaded.
func (w *watcher) prime() { w.last = w.fingerprint() }

// run polls until ctx is done.
func (w *watcher) run(ctx context.Context) {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.check()
		}
	}
}

// check loads the rules again if any file changed, appeared or disappeared.
// It reports whether a new set was put in force.
func (w *watcher) check() bool {
	fp := w.fingerprint()
	if fp == w.last {
		return false
	}
	w.last = fp
	set, err := rules.Load(w.patterns...)
	if err != nil {
		var list rules.ErrorList
		problems := []string{err.Error()}
		if errors.As(err, &list) {
			problems = problems[:0]
			for _, e := range list {
				problems = append(problems, e.Error())
			}
		}
		w.logger.Error("rule files changed but do not load; keeping the previous rules",
			zap.Strings("rules", w.patterns), zap.Strings("problems", problems))
		return false
	}
	w.apply(set)
	w.logger.Info("rules reloaded", zap.Strings("files", set.Files()), zap.Int("rules", len(set.Rules())))
	return true
}

// fingerprint hashes the glob expansion and each file's size, modification
// time and content. An expansion error is part of the state, so a file that
// disappears and comes back is noticed. Content is read only for a file
// whose size or mtime changed or that was modified within racyWindow of
// being hashed, and never for a file Load would refuse unread (larger than
// rules.MaxFileSize, not a regular file, or past rules.MaxFiles).
func (w *watcher) fingerprint() [sha256.Size]byte {
	h := sha256.New()
	files, err := rules.ExpandPatterns(w.patterns...)
	if err != nil {
		_, _ = io.WriteString(h, "error\x00"+err.Error())
	}
	if len(files) > rules.MaxFiles {
		files = files[:rules.MaxFiles+1] // Load refuses the set; the count is the state
	}
	var num [8]byte
	seen := make(map[string]bool, len(files))
	now := time.Now()
	for _, name := range files {
		seen[name] = true
		_, _ = io.WriteString(h, name+"\x00")
		st, err := os.Stat(name) // not Open: opening a FIFO blocks
		if err != nil || !st.Mode().IsRegular() {
			_, _ = io.WriteString(h, "unreadable\x00")
			continue
		}
		binary.BigEndian.PutUint64(num[:], uint64(st.Size()))
		h.Write(num[:])
		binary.BigEndian.PutUint64(num[:], uint64(st.ModTime().UnixNano()))
		h.Write(num[:])
		ino, ctime := fileIdentity(st)
		binary.BigEndian.PutUint64(num[:], ino)
		h.Write(num[:])
		binary.BigEndian.PutUint64(num[:], uint64(ctime))
		h.Write(num[:])
		if st.Size() > rules.MaxFileSize {
			_, _ = io.WriteString(h, "too large\x00")
			continue
		}
		prev, ok := w.files[name]
		if ok && prev.size == st.Size() && prev.mtime.Equal(st.ModTime()) && prev.ino == ino && prev.ctime == ctime &&
			prev.hashedAt.Sub(st.ModTime()) > racyWindow {
			h.Write(prev.sum[:])
			continue
		}
		sum, ok := hashFile(name)
		if !ok {
			_, _ = io.WriteString(h, "unreadable\x00")
			delete(w.files, name)
			continue
		}
		w.files[name] = fileSeen{size: st.Size(), mtime: st.ModTime(), ino: ino, ctime: ctime, sum: sum, hashedAt: now}
		h.Write(sum[:])
	}
	for name := range w.files {
		if !seen[name] {
			delete(w.files, name)
		}
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out
}

// openRuleFile opens a rule file for hashing; tests count the reads.
var openRuleFile = os.Open

// hashFile hashes at most rules.MaxFileSize+1 bytes of a file.
func hashFile(name string) ([sha256.Size]byte, bool) {
	var sum [sha256.Size]byte
	f, err := openRuleFile(name)
	if err != nil {
		return sum, false
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, rules.MaxFileSize+1)); err != nil {
		return sum, false
	}
	copy(sum[:], h.Sum(nil))
	return sum, true
}
