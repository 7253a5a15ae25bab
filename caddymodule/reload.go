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

	last [sha256.Size]byte // fingerprint of the files last looked at
}

func newWatcher(patterns []string, interval time.Duration, logger *zap.Logger, apply func(*rules.Set)) *watcher {
	return &watcher{patterns: patterns, interval: interval, logger: logger, apply: apply}
}

// prime records the current state of the files as already loaded.
func (w *watcher) prime() { w.last = fingerprint(w.patterns) }

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
	fp := fingerprint(w.patterns)
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
// time and content (rule files are small). An expansion error is part of the
// state, so a file that disappears and comes back is noticed.
func fingerprint(patterns []string) [sha256.Size]byte {
	h := sha256.New()
	files, err := rules.ExpandPatterns(patterns...)
	if err != nil {
		_, _ = io.WriteString(h, "error\x00"+err.Error())
	}
	var num [8]byte
	for _, name := range files {
		_, _ = io.WriteString(h, name+"\x00")
		f, err := os.Open(name)
		if err != nil {
			_, _ = io.WriteString(h, "unreadable\x00")
			continue
		}
		if st, err := f.Stat(); err == nil {
			binary.BigEndian.PutUint64(num[:], uint64(st.Size()))
			h.Write(num[:])
			binary.BigEndian.PutUint64(num[:], uint64(st.ModTime().UnixNano()))
			h.Write(num[:])
		}
		_, _ = io.Copy(h, f)
		f.Close()
	}
	var out [sha256.Size]byte
	copy(out[:], h.Sum(nil))
	return out
}
