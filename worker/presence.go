package worker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

// The presence connection: how a recoverer tells a killed worker from a
// stopped one (the reasoning is in recover.go).
const (
	// presenceOpenTimeout bounds the round trips that open and check a
	// presence connection.
	presenceOpenTimeout = 5 * time.Second
	// presenceMaxRetry caps the wait between attempts to open a presence
	// connection (from RecoveryInterval, doubling).
	presenceMaxRetry = 30 * time.Second
	// presenceNamePrefix starts the CLIENT SETNAME of every presence
	// connection: "authtap-worker:<instance>:<n>".
	presenceNamePrefix = "authtap-worker:"
)

// presenceKey is the list a presence connection blocks on; nothing pushes to it.
func presenceKey(name string) string { return keyPrefix + "presence:" + name }

// presenceState names one open presence connection: the run of the Redis
// server it is connected to (INFO server run_id, new on every start of
// redis-server), its CLIENT ID (unique within that run) and its name.
type presenceState struct {
	run  string
	id   int64
	name string
}

// tag is what a run lock carries of s ("<run_id>:<client id>"), or "" when
// there is no presence connection.
func (s presenceState) tag() string {
	if s.id == 0 {
		return ""
	}
	return s.run + ":" + strconv.FormatInt(s.id, 10)
}

// parseTag splits a tag into its run and client id.
func parseTag(tag string) (run, id string, ok bool) {
	run, id, ok = strings.Cut(tag, ":")
	if !ok || run == "" || id == "" {
		return "", "", false
	}
	if _, err := strconv.ParseUint(id, 10, 63); err != nil {
		return "", "", false
	}
	return run, id, true
}

// presence keeps this worker's presence connection open: one connection of
// its own, named, exempt from client eviction, and blocked in a BLPOP that
// never returns, so that a closed connection is noticed at once. It comes
// from a client of its own with rdb's options (a Sentinel client's dials the
// current master), one connection and no retries (go-redis would retry a
// failed BLPOP after a backoff, and a retry on a new connection would change
// the connection's identity unseen), as an EphemeralConn, which never goes
// back to the pool. While it is open and the server is fit for it
// (checkPresence), state returns it; otherwise the zero presenceState. Every
// change calls onChange.
type presence struct {
	rdb      *redis.Client // the worker's client: CLIENT KILL at stop
	own      *redis.Client // the presence connection's client
	log      *zap.Logger
	instance string
	// window is the longest a run lock of this worker can outlive its last
	// write (RunLease, or a send's timeout + sendLockMargin).
	window   time.Duration
	retry    time.Duration // first wait before opening again
	onChange func()

	mu     sync.Mutex
	cur    presenceState
	reason string // why presence is off, as last logged
	opened bool   // a presence connection was open once
	seq    int
	cancel context.CancelFunc
	done   chan struct{}
}

func newPresence(rdb *redis.Client, log *zap.Logger, instance string, window, retry time.Duration, onChange func()) *presence {
	o := *rdb.Options()
	o.MaxRetries = -1
	o.PoolSize, o.MinIdleConns, o.MaxIdleConns, o.MaxActiveConns = 1, 0, 1, 0
	// rdb's push processor is rdb's own (go-redis stores it in the options),
	// and a blocked connection has no use for maintenance notifications: a
	// server that moves closes it, and a new one opens.
	o.PushNotificationProcessor = nil
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return &presence{rdb: rdb, own: redis.NewClient(&o), log: log, instance: instance, window: window, retry: retry, onChange: onChange}
}

// state returns the open presence connection, or the zero presenceState.
func (p *presence) state() presenceState {
	if p == nil {
		return presenceState{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur
}

func (p *presence) set(s presenceState) {
	p.mu.Lock()
	changed := p.cur != s
	p.cur = s
	p.mu.Unlock()
	if changed && p.onChange != nil {
		p.onChange()
	}
}

// off records why there is no presence connection, logging each new reason once.
func (p *presence) off(err error) {
	p.set(presenceState{})
	msg := err.Error()
	p.mu.Lock()
	fresh := msg != p.reason
	p.reason = msg
	p.mu.Unlock()
	if fresh {
		p.log.Info("no presence connection: a delivery whose worker dies while sending is retried once its run lock lapses (the delivery timeout + 1s)",
			zap.Error(err))
	}
}

// start opens the presence connection and keeps it open until stop.
func (p *presence) start() {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan struct{})
	go func() {
		defer close(p.done)
		p.loop(ctx)
	}()
}

// stop closes the presence connection: it asks Redis to close it, so that
// Redis knows at once, and closes its client, which ends the goroutine
// blocked on it even when Redis does not answer.
func (p *presence) stop() {
	if p == nil {
		return
	}
	if p.cancel != nil {
		p.cancel()
		if s := p.state(); s.id != 0 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = p.rdb.Do(ctx, "CLIENT", "KILL", "ID", s.id).Err()
			cancel()
		}
		select {
		case <-p.done:
		case <-time.After(time.Second):
		}
	}
	_ = p.own.Close()
	if p.done != nil {
		<-p.done
	}
	p.set(presenceState{})
}

func (p *presence) loop(ctx context.Context) {
	wait := p.retry
	for ctx.Err() == nil {
		conn, s, err := p.open(ctx)
		if err != nil {
			p.off(err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			wait = min(2*wait, presenceMaxRetry)
			continue
		}
		wait = p.retry
		p.mu.Lock()
		announce := p.reason != "" || !p.opened
		p.reason, p.opened = "", true
		p.mu.Unlock()
		p.set(s)
		if announce {
			p.log.Info("presence connection open: a delivery whose worker dies while sending is retried within seconds",
				zap.String("name", s.name), zap.Int64("client_id", s.id))
		}
		err = p.block(ctx, conn, s)
		_ = conn.Close()
		if ctx.Err() == nil {
			p.off(fmt.Errorf("presence connection %s closed: %w", s.name, err))
		}
	}
}

// block waits on conn until it fails or ctx ends.
func (p *presence) block(ctx context.Context, conn *redis.Conn, s presenceState) error {
	for {
		err := conn.BLPop(ctx, 0, presenceKey(s.name)).Err()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Unblocked (CLIENT UNBLOCK) or pushed to: the connection is fine.
		if err == nil || errors.Is(err, redis.Nil) {
			continue
		}
		return err
	}
}

// open opens a presence connection and checks that the server keeps it open
// for as long as this worker's process lives (checkPresence).
func (p *presence) open(ctx context.Context) (*redis.Conn, presenceState, error) {
	ctx, cancel := context.WithTimeout(ctx, presenceOpenTimeout)
	defer cancel()
	p.mu.Lock()
	p.seq++
	name := presenceNamePrefix + p.instance + ":" + strconv.Itoa(p.seq)
	p.mu.Unlock()
	conn := p.own.EphemeralConn()
	var (
		setName *redis.BoolCmd
		id      *redis.IntCmd
		noEvict *redis.Cmd
		info    *redis.StringCmd
		cfg     *redis.MapStringStringCmd
	)
	_, err := conn.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		setName = pipe.ClientSetName(ctx, name)
		id = pipe.ClientID(ctx)
		noEvict = pipe.Do(ctx, "CLIENT", "NO-EVICT", "on")
		info = pipe.Info(ctx, "server")
		cfg = pipe.ConfigGet(ctx, "tcp-keepalive")
		return nil
	})
	if err != nil && !isRedisError(err) {
		_ = conn.Close()
		return nil, presenceState{}, fmt.Errorf("opening a presence connection: %w", err)
	}
	s := presenceState{id: id.Val(), name: name}
	if err := checkPresence(setName.Err(), id.Err(), noEvict.Err(), info, cfg, p.window, &s); err != nil {
		_ = conn.Close()
		return nil, presenceState{}, err
	}
	// The recoverers ask CLIENT LIST ID: check it answers for this connection.
	list, err := conn.Do(ctx, "CLIENT", "LIST", "ID", s.id).Text()
	if err == nil && parseClientList(list)[strconv.FormatInt(s.id, 10)] != name {
		err = errors.New("the connection is not in the reply")
	}
	if err != nil {
		_ = conn.Close()
		return nil, presenceState{}, fmt.Errorf("checking CLIENT LIST ID: %w", err)
	}
	return conn, s, nil
}

// checkPresence reports whether a presence connection can tell its worker's
// death: what Redis answered to CLIENT SETNAME, CLIENT ID, CLIENT NO-EVICT
// on, INFO server and CONFIG GET tcp-keepalive. It sets s.run.
//
// Redis must not close the connection of a process that lives but does not
// answer (stopped, a paused VM, a partition) before that process's run locks
// lapse: the idle timeout (`timeout`) does not apply to a blocked client,
// client eviction (maxmemory-clients, Redis 7) not to one with NO-EVICT, and
// TCP keepalive closes a silent peer's connection no sooner than 3 ×
// (tcp-keepalive / 3) seconds after it went silent (Redis sets TCP_KEEPINTVL
// to a third of it and TCP_KEEPCNT to 3), which must not be shorter than
// window; tcp-keepalive 0 turns it off. A server that does not answer one of
// these (CLIENT or CONFIG renamed or denied, as managed Redis often does)
// gets no presence: today's waiting is the safe side.
func checkPresence(setName, id, noEvict error, info *redis.StringCmd, cfg *redis.MapStringStringCmd, window time.Duration, s *presenceState) error {
	if setName != nil {
		return fmt.Errorf("CLIENT SETNAME: %w", setName)
	}
	if id != nil {
		return fmt.Errorf("CLIENT ID: %w", id)
	}
	// Redis before 7.0 has no client eviction, and no NO-EVICT.
	if noEvict != nil && !strings.Contains(strings.ToLower(noEvict.Error()), "unknown subcommand") {
		return fmt.Errorf("CLIENT NO-EVICT on: %w", noEvict)
	}
	if err := info.Err(); err != nil {
		return fmt.Errorf("INFO server: %w", err)
	}
	for line := range strings.Lines(info.Val()) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "run_id:"); ok {
			s.run = v
		}
	}
	if s.run == "" || strings.ContainsAny(s.run, ":|") {
		return fmt.Errorf("INFO server: no usable run_id (%q)", s.run)
	}
	if err := cfg.Err(); err != nil {
		return fmt.Errorf("CONFIG GET tcp-keepalive: %w", err)
	}
	v, ok := cfg.Val()["tcp-keepalive"]
	ka, err := strconv.ParseInt(v, 10, 64)
	if !ok || err != nil || ka < 0 {
		return fmt.Errorf("CONFIG GET tcp-keepalive: unexpected reply %q", v)
	}
	if ka > 0 {
		closeAfter := 3 * max(1, ka/3)
		if time.Duration(closeAfter)*time.Second < window {
			return fmt.Errorf("redis tcp-keepalive %d closes a silent worker's connection after about %ds, before its run lock lapses (%s)",
				ka, closeAfter, window)
		}
	}
	return nil
}

// parseClientList returns the id → name of the clients in a CLIENT LIST reply.
func parseClientList(reply string) map[string]string {
	out := map[string]string{}
	for line := range strings.Lines(reply) {
		var id, name string
		for f := range strings.FieldsSeq(line) {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				id = v
			} else if v, ok := strings.CutPrefix(f, "name="); ok {
				name = v
			}
		}
		if id != "" {
			out[id] = name
		}
	}
	return out
}

// isRedisError reports whether err is a reply of Redis (a command it
// refused), not a failure to reach it.
func isRedisError(err error) bool {
	var re redis.Error
	return errors.As(err, &re) && !errors.Is(err, redis.Nil)
}
