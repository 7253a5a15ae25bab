// Package spool is authtap's on-disk fallback queue: when Redis does not answer
// in time, the Caddy app appends the event here instead, and replays it into
// Redis once Redis is back, so that no accepted mutation loses its event.
//
// A spool is a directory of append-only segment files ("00000000000000000001.seg",
// …). Each record is one rules.Event in JSON, framed by its length and a
// CRC-32C checksum:
//
//	uint32 big-endian payload length | uint32 big-endian CRC-32C of payload | payload
//
// Every Append is on disk (fsynced) before it returns; concurrent appends share
// one fsync (group commit). A record torn by a crash is detected on replay and
// skipped with a log; the records before it are replayed. Replay hands records
// to a callback in the order they were appended and deletes a segment only once
// every record in it was accepted, so a replay that fails midway starts again
// from that segment later: the callback must be idempotent (authtap's is, since
// a re-enqueued event id is refused by asynq as a duplicate). ReplayBatch
// hands them out in batches of up to a given size (never across segments), so
// that a caller can write each batch in one round trip.
//
// The spool is bounded (Options.MaxBytes, default 1 GiB): when full, Append
// returns an error wrapping ErrFull instead of dropping anything.
//
// A directory is open in at most one Spool at a time: Open takes an exclusive
// lock (flock on dir/LOCK, on Unix) and fails while another holds it. The
// Caddy app shares one *Spool per directory across config reloads.
//
// Example:
//
//	sp, err := spool.Open("/var/lib/caddy/authtap/spool", spool.Options{Logger: logger})
//	if err != nil {
//		return err
//	}
//	defer sp.Close()
//	if err := sp.Append(ev); err != nil { // ev is a rules.Event
//		return err // the disk is full or failing: the event could not be kept
//	}
//	n, err := sp.Replay(ctx, func(ctx context.Context, ev rules.Event) error {
//		_, err := client.EnqueueContext(ctx, task(ev))
//		return err
//	})
//
// It imports only rules (for the record type) and zap; it knows nothing of
// Redis or Caddy.
package spool
