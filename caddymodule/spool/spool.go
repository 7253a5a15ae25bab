package spool

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
)

// Defaults.
const (
	// DefaultMaxBytes bounds the total size of a spool's segment files.
	DefaultMaxBytes = 1 << 30
	// DefaultSegmentBytes is the size at which a new segment file is started.
	DefaultSegmentBytes = 16 << 20
	// MaxRecordBytes bounds one record's payload; longer lengths read back are treated as corruption.
	MaxRecordBytes = 64 << 20
)

const (
	headerLen  = 8
	segmentExt = ".seg"
	corruptExt = ".corrupt"
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrFull is wrapped by Append when the record would take the spool past Options.MaxBytes.
var ErrFull = errors.New("spool is full")

// ErrClosed is returned by operations on a closed spool.
var ErrClosed = errors.New("spool is closed")

// Options configure a spool. The zero value is usable.
type Options struct {
	// MaxBytes bounds the total size of the segment files; Append fails with
	// ErrFull beyond it. Default 1 GiB.
	MaxBytes int64
	// SegmentBytes is the size past which Append starts a new segment file. Default 16 MiB.
	SegmentBytes int64
	// Logger receives warnings about torn or corrupt records. Default: no logs.
	Logger *zap.Logger
}

// Spool is an on-disk, append-only queue of events. Its methods are safe for
// concurrent use.
type Spool struct {
	dir  string
	opts Options
	log  *zap.Logger

	replayMu sync.Mutex // one Replay at a time

	mu       sync.Mutex
	cond     *sync.Cond // signalled when a sync finishes
	closed   bool
	f        *os.File // active segment, nil until the first Append after open, rotation or replay
	fSize    int64
	nextSeq  uint64
	total    int64            // bytes in all segment files
	sealed   []string         // sealed segments, oldest first
	sizes    map[string]int64 // size of each sealed segment
	written  uint64           // records written to f (and earlier segments)
	synced   uint64           // records known to be on disk
	syncing  bool
	activeNm string
	lock     *os.File // held while open; nil where locking is unsupported
}

// unlock releases the directory lock.
func (s *Spool) unlock() {
	if s.lock != nil {
		_ = s.lock.Close()
		s.lock = nil
	}
}

// Open opens (creating it if needed) the spool in dir. Segments left by an
// earlier process are kept for Replay; new records go to a new segment.
func Open(dir string, opts Options) (*Spool, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = DefaultSegmentBytes
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("opening spool: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("opening spool: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	s := &Spool{dir: dir, opts: opts, log: opts.Logger, nextSeq: 1, lock: lock, sizes: map[string]int64{}}
	s.cond = sync.NewCond(&s.mu)
	for _, e := range entries {
		seq, ok := segmentSeq(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			s.unlock()
			return nil, fmt.Errorf("opening spool: %w", err)
		}
		s.total += info.Size()
		s.sealed = append(s.sealed, e.Name())
		s.sizes[e.Name()] = info.Size()
		s.nextSeq = max(s.nextSeq, seq+1)
	}
	slices.Sort(s.sealed) // zero-padded names sort by sequence
	return s, nil
}

// segmentSeq parses a segment file name.
func segmentSeq(name string) (uint64, bool) {
	base, ok := strings.CutSuffix(name, segmentExt)
	if !ok || len(base) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(base, 10, 64)
	return n, err == nil
}

// Dir returns the spool's directory.
func (s *Spool) Dir() string { return s.dir }

// Bytes returns the total size of the spool's segment files.
func (s *Spool) Bytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.total
}

// Empty reports whether the spool holds no segment (and so no record).
func (s *Spool) Empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sealed) == 0 && s.f == nil
}

// Append writes ev to the spool and returns once it is on disk.
func (s *Spool) Append(ev rules.Event) error {
	payload, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("spooling event %s: encoding: %w", ev.ID, err)
	}
	if len(payload) > MaxRecordBytes {
		return fmt.Errorf("spooling event %s: %d bytes is more than the %d a record may hold", ev.ID, len(payload), MaxRecordBytes)
	}
	rec := make([]byte, headerLen+len(payload))
	binary.BigEndian.PutUint32(rec[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(rec[4:8], crc32.Checksum(payload, crcTable))
	copy(rec[headerLen:], payload)

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("spooling event %s: %w", ev.ID, ErrClosed)
	}
	if s.total+int64(len(rec)) > s.opts.MaxBytes {
		return fmt.Errorf("spooling event %s: %w (%d of %d bytes used)", ev.ID, ErrFull, s.total, s.opts.MaxBytes)
	}
	if s.f != nil && s.fSize+int64(len(rec)) > s.opts.SegmentBytes {
		if err := s.sealLocked(); err != nil {
			return fmt.Errorf("spooling event %s: %w", ev.ID, err)
		}
	}
	if s.f == nil {
		if err := s.openSegmentLocked(); err != nil {
			return fmt.Errorf("spooling event %s: %w", ev.ID, err)
		}
	}
	n, err := s.f.Write(rec)
	if err != nil {
		// Take a partial record back out so that the segment stays well-formed;
		// when that fails too, seal the segment so that the partial record stays
		// its torn tail, which Replay skips.
		if n > 0 {
			if terr := s.f.Truncate(s.fSize); terr != nil {
				s.fSize += int64(n)
				s.total += int64(n)
				_ = s.sealLocked()
			}
		}
		return fmt.Errorf("spooling event %s: writing %s: %w", ev.ID, s.activeNm, err)
	}
	s.fSize += int64(n)
	s.total += int64(n)
	s.written++
	mine := s.written
	// Group commit: one goroutine syncs for everyone who wrote before it started.
	for s.synced < mine {
		if s.syncing {
			s.cond.Wait()
			continue
		}
		s.syncing = true
		f, target := s.f, s.written
		s.mu.Unlock()
		err := f.Sync()
		s.mu.Lock()
		s.syncing = false
		s.cond.Broadcast()
		if err != nil {
			return fmt.Errorf("spooling event %s: syncing %s: %w", ev.ID, s.activeNm, err)
		}
		s.synced = max(s.synced, target)
	}
	return nil
}

// openSegmentLocked starts a new active segment.
func (s *Spool) openSegmentLocked() error {
	var (
		name string
		f    *os.File
		err  error
	)
	for range 100 { // skip names taken behind our back (e.g. a copied-in segment)
		name = fmt.Sprintf("%020d%s", s.nextSeq, segmentExt)
		s.nextSeq++
		f, err = os.OpenFile(filepath.Join(s.dir, name), os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o600)
		if !errors.Is(err, fs.ErrExist) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("creating segment: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		_ = f.Close()
		_ = os.Remove(filepath.Join(s.dir, name))
		return err
	}
	s.f, s.fSize, s.activeNm = f, 0, name
	return nil
}

// sealLocked syncs and closes the active segment and adds it to the sealed list.
// It waits for a sync in progress on the same file.
func (s *Spool) sealLocked() error {
	for s.syncing {
		s.cond.Wait()
	}
	if s.f == nil {
		return nil
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", s.activeNm, err)
	}
	s.synced = s.written
	if err := s.f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", s.activeNm, err)
	}
	if s.fSize > 0 {
		s.sealed = append(s.sealed, s.activeNm)
		s.sizes[s.activeNm] = s.fSize
	} else {
		_ = os.Remove(filepath.Join(s.dir, s.activeNm))
	}
	s.f, s.fSize, s.activeNm = nil, 0, ""
	return nil
}

// Replay hands every spooled record, oldest first, to fn, and deletes each
// segment once fn has accepted all of its records. It stops at the first error
// of fn (or of ctx) and returns it with the number of records accepted; the
// records of the segment it stopped in are handed out again by the next
// Replay. Records appended while Replay runs wait for the next one.
func (s *Spool) Replay(ctx context.Context, fn func(context.Context, rules.Event) error) (int, error) {
	return s.ReplayBatch(ctx, 1, func(ctx context.Context, evs []rules.Event) (int, error) {
		if err := fn(ctx, evs[0]); err != nil {
			return 0, err
		}
		return 1, nil
	})
}

// MaxReplayBatch bounds the batch size ReplayBatch accepts.
const MaxReplayBatch = 4096

// ReplayBatch is Replay handing records to fn in batches of up to size (1 to
// MaxReplayBatch; out of range means 1), oldest first; a batch never spans two
// segments. fn returns how many records of the batch, from its start, it
// accepted, and an error when that is not all of them; the batch's slice is
// reused after fn returns. The count returned counts accepted records.
func (s *Spool) ReplayBatch(ctx context.Context, size int, fn func(context.Context, []rules.Event) (int, error)) (int, error) {
	if size < 1 || size > MaxReplayBatch {
		size = 1
	}
	s.replayMu.Lock()
	defer s.replayMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return 0, ErrClosed
	}
	if err := s.sealLocked(); err != nil {
		s.mu.Unlock()
		return 0, fmt.Errorf("replaying spool: %w", err)
	}
	segs := slices.Clone(s.sealed)
	s.mu.Unlock()

	accepted := 0
	batch := make([]rules.Event, 0, size)
	for _, name := range segs {
		n, err := s.replaySegment(ctx, name, batch, fn)
		accepted += n
		if err != nil {
			return accepted, err
		}
	}
	return accepted, nil
}

// replaySegment replays one sealed segment and removes it when done.
// batch is an empty slice whose capacity is the batch size.
func (s *Spool) replaySegment(ctx context.Context, name string, batch []rules.Event, fn func(context.Context, []rules.Event) (int, error)) (int, error) {
	path := filepath.Join(s.dir, name)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		s.log.Error("spool: a segment disappeared before it was replayed", zap.String("segment", name))
		s.forget(name)
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("replaying %s: %w", name, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("replaying %s: %w", name, err)
	}
	r := bufio.NewReaderSize(f, 64<<10)
	var (
		off      int64
		accepted int
		corrupt  bool
		hdr      [headerLen]byte
	)
	// flush hands the gathered batch to fn.
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		n, err := fn(ctx, batch)
		n = min(max(n, 0), len(batch))
		accepted += n
		if err == nil && n < len(batch) {
			err = fmt.Errorf("replaying %s: %d of %d records accepted", name, n, len(batch))
		}
		clear(batch)
		batch = batch[:0]
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			return accepted, err
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				s.log.Warn("spool: skipping a torn record at the end of a segment (written when the process stopped)",
					zap.String("segment", name), zap.Int64("offset", off), zap.Int64("size", info.Size()))
				break
			}
			return accepted, fmt.Errorf("replaying %s: %w", name, err)
		}
		n := binary.BigEndian.Uint32(hdr[0:4])
		sum := binary.BigEndian.Uint32(hdr[4:8])
		if n == 0 {
			// Never written by Append: a zero-filled tail left by a crash.
			s.log.Warn("spool: skipping a zero-filled tail of a segment (written when the process stopped)",
				zap.String("segment", name), zap.Int64("offset", off), zap.Int64("size", info.Size()))
			break
		}
		if int64(n) > MaxRecordBytes || off+headerLen+int64(n) > info.Size() {
			if off+headerLen+int64(n) > info.Size() && int64(n) <= MaxRecordBytes {
				s.log.Warn("spool: skipping a torn record at the end of a segment (written when the process stopped)",
					zap.String("segment", name), zap.Int64("offset", off), zap.Int64("size", info.Size()))
				break
			}
			corrupt = true
			s.log.Error("spool: corrupt record length; keeping the rest of the segment aside",
				zap.String("segment", name), zap.Int64("offset", off), zap.Uint32("length", n))
			break
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(r, payload); err != nil {
			return accepted, fmt.Errorf("replaying %s: %w", name, err)
		}
		if crc32.Checksum(payload, crcTable) != sum {
			if off+headerLen+int64(n) == info.Size() {
				s.log.Warn("spool: skipping a torn record at the end of a segment (checksum mismatch)",
					zap.String("segment", name), zap.Int64("offset", off))
				break
			}
			corrupt = true
			s.log.Error("spool: checksum mismatch inside a segment; keeping the rest of the segment aside",
				zap.String("segment", name), zap.Int64("offset", off))
			break
		}
		var ev rules.Event
		if err := json.Unmarshal(payload, &ev); err != nil {
			s.log.Error("spool: skipping an undecodable record", zap.String("segment", name), zap.Int64("offset", off), zap.Error(err))
		} else if batch = append(batch, ev); len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return accepted, err
			}
		}
		off += headerLen + int64(n)
	}
	if err := flush(); err != nil {
		return accepted, err
	}
	_ = f.Close()
	if corrupt {
		// Keep the unreadable remainder for a person to look at; it no longer counts as spooled.
		if err := os.Rename(path, path+corruptExt); err != nil {
			return accepted, fmt.Errorf("setting aside %s: %w", name, err)
		}
	} else if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return accepted, fmt.Errorf("removing replayed %s: %w", name, err)
	}
	_ = syncDir(s.dir)
	s.forget(name)
	return accepted, nil
}

// forget drops a replayed (or vanished) segment from the books.
func (s *Spool) forget(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total -= s.sizes[name]
	delete(s.sizes, name)
	s.sealed = slices.DeleteFunc(s.sealed, func(n string) bool { return n == name })
}

// Close syncs and closes the active segment. Records stay on disk for the next Open.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	err := s.sealLocked()
	s.closed = true
	s.unlock()
	if err != nil {
		return fmt.Errorf("closing spool: %w", err)
	}
	return nil
}

// syncDir fsyncs a directory so that created and removed files survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing spool directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing spool directory: %w", err)
	}
	return nil
}
