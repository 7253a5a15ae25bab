package worker

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/worker/tasks"
)

// presenceWindow is the lock window of a worker with the default delivery timeout.
const presenceWindow = DefaultTimeout + sendLockMargin

// newPresenceRuns returns runs on srv with a presence connection, started;
// its loop runs too when loop is set. Both stop when the test ends.
func newPresenceRuns(t *testing.T, srv *redistest.Server, loop bool) (*runs, *redis.Client) {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	rs := newRuns(rdb, zaptest.NewLogger(t), 50*time.Millisecond, 150*time.Millisecond)
	rs.withPresence(presenceWindow)
	rs.presence.start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if loop {
			rs.loop(ctx, authtapQueues)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		rs.presence.stop()
		_ = rdb.Close()
	})
	waitFor(t, 5*time.Second, "the presence connection", func() bool { return rs.tag() != "" })
	return rs, rdb
}

// serverRun is the run_id of the Redis at srv.
func serverRun(t *testing.T, rdb *redis.Client) string {
	t.Helper()
	info, err := rdb.Info(context.Background(), "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "run_id:"); ok {
			return v
		}
	}
	t.Fatal("no run_id in INFO server")
	return ""
}

// clientLine is the CLIENT LIST line of client id, or "".
func clientLine(t *testing.T, rdb *redis.Client, id int64) string {
	t.Helper()
	s, err := rdb.Do(context.Background(), "CLIENT", "LIST", "ID", id).Text()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(s)
}

// The presence connection is named, blocked (so Redis's idle timeout leaves
// it open), tagged with the server's run; when it is closed while the worker
// lives, a new one opens and the locks the worker holds are rewritten with
// the new tag at once, keeping their TTL — after CLIENT KILL, and after a
// restart of Redis with its data (a new run).
func TestPresenceConnection(t *testing.T) {
	ctx := context.Background()
	srv := redistest.StartArgs(t, "--timeout", "1", "--appendonly", "yes", "--appendfsync", "always")
	rs, rdb := newPresenceRuns(t, srv, true)
	s := rs.presence.state()
	if s.run != serverRun(t, rdb) || !strings.HasPrefix(s.name, presenceNamePrefix+rs.instance+":") {
		t.Fatalf("presence %+v, server run %s", s, serverRun(t, rdb))
	}
	line := clientLine(t, rdb, s.id)
	if !strings.Contains(line, "name="+s.name+" ") || !strings.Contains(line, "flags=b") || !strings.Contains(line, "cmd=blpop") {
		t.Fatalf("CLIENT LIST: %s", line)
	}
	time.Sleep(2500 * time.Millisecond) // `timeout 1` closes idle clients, not blocked ones
	if rs.presence.state() != s || clientLine(t, rdb, s.id) == "" {
		t.Fatalf("the presence connection did not outlive Redis's idle timeout: %+v", rs.presence.state())
	}

	// A run this worker holds, with the lock stretched over a send.
	r := &run{key: runKey(tasks.QueueDeliver, "evt:ep"), name: "r|" + rs.instance + "00|0", tag: s.tag()}
	if err := rdb.Set(ctx, r.key, r.value(r.tag), 20*time.Second).Err(); err != nil {
		t.Fatal(err)
	}
	r.cancel = func() { t.Error("the run was canceled") }
	rs.mu.Lock()
	rs.held[r] = struct{}{}
	rs.mu.Unlock()

	rewritten := func(what string, old presenceState) presenceState {
		t.Helper()
		var now presenceState
		start := time.Now()
		waitFor(t, 5*time.Second, what, func() bool {
			now = rs.presence.state()
			return now.id != 0 && now != old && rdb.Get(ctx, r.key).Val() == r.value(now.tag())
		})
		if ttl := rdb.PTTL(ctx, r.key).Val(); ttl < 10*time.Second {
			t.Errorf("%s: the lock's TTL is %s, want the stretched one kept", what, ttl)
		}
		t.Logf("%s: the lock carries the new tag %s after %s", what, now.tag(), time.Since(start).Round(time.Millisecond))
		return now
	}
	if err := rdb.Do(ctx, "CLIENT", "KILL", "ID", s.id).Err(); err != nil {
		t.Fatal(err)
	}
	s2 := rewritten("after CLIENT KILL", s)
	if s2.run != s.run || s2.id == s.id {
		t.Fatalf("after CLIENT KILL: %+v, was %+v", s2, s)
	}

	srv.Restart()
	s3 := rewritten("after a restart of Redis", s2)
	if s3.run == s2.run || s3.run != serverRun(t, rdb) {
		t.Fatalf("after the restart the tag names run %s, was %s, server %s", s3.run, s2.run, serverRun(t, rdb))
	}
}

// A server that cannot show a worker's death by its connection gets no
// presence connection: the worker's locks are waited out as before.
func TestPresenceFallsBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // "" : presence works
	}{
		{"CLIENT disabled", []string{"--rename-command", "CLIENT", ""}, "CLIENT SETNAME"},
		{"CONFIG disabled", []string{"--rename-command", "CONFIG", ""}, "CONFIG GET tcp-keepalive"},
		{"INFO disabled", []string{"--rename-command", "INFO", ""}, "INFO server"},
		{"short tcp-keepalive", []string{"--tcp-keepalive", "10"}, "tcp-keepalive 10 closes a silent worker's connection after about 9s"},
		{"tcp-keepalive off", []string{"--tcp-keepalive", "0"}, ""},
		{"tcp-keepalive 16s", []string{"--tcp-keepalive", "18"}, ""},
		{"client eviction on", []string{"--maxmemory-clients", "1mb"}, ""}, // NO-EVICT exempts it
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.StartArgs(t, tc.args...)
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
			defer rdb.Close()
			p := newPresence(rdb, zaptest.NewLogger(t), "test", presenceWindow, time.Second, nil)
			defer p.stop()
			conn, s, err := p.open(context.Background())
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				defer conn.Close()
				if line := clientLine(t, rdb, s.id); !strings.Contains(line, "name="+s.name) || !strings.Contains(line, "flags=e") {
					t.Errorf("CLIENT LIST (want named, no-evict): %s", line)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("open: %v, want %q", err, tc.want)
			}
			// Nothing was left open under a presence name.
			if list := rdb.ClientList(context.Background()).Val(); strings.Contains(list, presenceNamePrefix) {
				t.Errorf("a refused presence connection stays open: %s", list)
			}
		})
	}
}

// The recoverer requeues a task whose holder's presence connection is gone
// from the current run of the server, two rounds apart, and no other: not one
// whose holder's connection is open, nor one tagged by another run of the
// server (a restart), nor one whose lock was rewritten between the rounds, nor
// an untagged one; a recoverer without a presence connection of its own
// judges none. Each round asks CLIENT LIST once, whatever the candidates.
func TestRecoveryJudgesPresence(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rs, rdb := newPresenceRuns(t, srv, false)
	run := serverRun(t, rdb)
	live := rdb.Conn()
	defer live.Close()
	liveID := live.ClientID(ctx).Val()
	dead := rdb.EphemeralConn()
	deadID := dead.ClientID(ctx).Val()
	_ = dead.Close()
	waitFor(t, 2*time.Second, "the dead connection to go", func() bool { return clientLine(t, rdb, deadID) == "" })
	tag := func(id int64) string { return run + ":" + strconv.FormatInt(id, 10) }

	q := tasks.QueueDeliver
	c := asynq.NewClientFromRedisClient(rdb)
	locks := map[string]string{
		"dead":      "r|a|0|" + tag(deadID),
		"dead2":     "r|a2|0|" + tag(deadID), // the same holder: asked once
		"live":      "r|b|0|" + tag(liveID),
		"otherrun":  "r|c|0|0123456789abcdef0123456789abcdef01234567:" + strconv.FormatInt(deadID, 10),
		"rewritten": "r|d|0|" + tag(deadID),
		"untagged":  "r|e|0",
	}
	for id, v := range locks {
		if _, err := c.Enqueue(asynq.NewTask("test:presence", nil, asynq.TaskID(id), asynq.Queue(q))); err != nil {
			t.Fatal(err)
		}
		abandon(t, rdb, q, id, 10*time.Second)
		rdb.Set(ctx, runKey(q, id), v, 20*time.Second)
	}
	listCalls := func() int {
		info := rdb.Info(ctx, "commandstats").Val()
		for line := range strings.Lines(info) {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_client|list:calls="); ok {
				n, _ := strconv.Atoi(v[:strings.IndexByte(v, ',')])
				return n
			}
		}
		return 0
	}

	// Without a presence connection of its own, a recoverer waits them out.
	blind := newRuns(rdb, zaptest.NewLogger(t), 50*time.Millisecond, 150*time.Millisecond)
	for range 3 {
		if n, err := blind.round(ctx, []string{q}); err != nil || n != 0 {
			t.Fatalf("a recoverer without presence moved %d, %v", n, err)
		}
		time.Sleep(recoveryConfirm(blind.interval) + 20*time.Millisecond)
	}

	before := listCalls()
	if n, err := rs.round(ctx, []string{q}); err != nil || n != 0 {
		t.Fatalf("first round: moved %d, %v; want 0 (not yet confirmed)", n, err)
	}
	// The holder of "rewritten" opened a new connection and rewrote its lock.
	rdb.Set(ctx, runKey(q, "rewritten"), "r|d|0|"+tag(liveID), 20*time.Second)
	time.Sleep(recoveryConfirm(rs.interval) + 20*time.Millisecond)
	if n, err := rs.round(ctx, []string{q}); err != nil || n != 0 {
		t.Fatalf("second round: moved %d, %v; want 0 (a holder has minPresenceConfirm to rewrite its locks)", n, err)
	}
	time.Sleep(presenceConfirm(rs.interval))
	if n, err := rs.round(ctx, []string{q}); err != nil || n != 2 {
		t.Fatalf("third round: moved %d, %v; want 2 (dead, dead2)", n, err)
	}
	if calls := listCalls() - before; calls != 3 {
		t.Errorf("three rounds asked CLIENT LIST %d times, want 3", calls)
	}
	ins := asynq.NewInspectorFromRedisClient(rdb)
	for id := range locks {
		info, err := ins.GetTaskInfo(q, id)
		if err != nil {
			t.Fatal(err)
		}
		want := asynq.TaskStateActive
		if id == "dead" || id == "dead2" {
			want = asynq.TaskStatePending
			if v := rdb.Get(ctx, runKey(q, id)).Val(); v != "x|1" {
				t.Errorf("%s: fence %q, want x|1", id, v)
			}
		}
		if info.State != want {
			t.Errorf("%s: %s, want %s", id, info.State, want)
		}
	}
	// A reply that does not list the recoverer's own connection as it knows
	// it (another server answered) judges nothing.
	self := rs.presence.state()
	self.name += "-other"
	lists := [][]listed{{{id: "x", lock: "r|f|0|" + tag(deadID)}}}
	if gone := rs.judgePresence(ctx, self, []string{q}, lists); len(gone) != 0 {
		t.Errorf("judged %v from a reply without the recoverer's own connection", gone)
	}
}

func TestParseTag(t *testing.T) {
	for _, tc := range []struct {
		tag     string
		run, id string
		ok      bool
	}{
		{"abc:12", "abc", "12", true},
		{"abc:", "", "", false},
		{":12", "", "", false},
		{"abc", "", "", false},
		{"abc:1x", "", "", false},
		{"abc:99999999999999999999999", "", "", false},
	} {
		run, id, ok := parseTag(tc.tag)
		if run != tc.run || id != tc.id || ok != tc.ok {
			t.Errorf("parseTag(%q) = %q, %q, %v", tc.tag, run, id, ok)
		}
	}
	got := parseClientList("id=3 addr=x name=authtap-worker:a:1 age=1\nid=9 addr=y name= age=2\n")
	if len(got) != 2 || got["3"] != "authtap-worker:a:1" || got["9"] != "" {
		t.Errorf("parseClientList: %v", got)
	}
}

// Through Redis Sentinel (redis-server --sentinel) the presence connection is
// dialled to the current master, as the worker's pool is.
func TestPresenceThroughSentinel(t *testing.T) {
	master := redistest.Start(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "sentinel.conf")
	body := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor authtap 127.0.0.1 %d 1\n", port, dir, master.Port)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("redis-server", conf, "--sentinel")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	waitFor(t, 10*time.Second, "the sentinel", func() bool { return redistest.Ping(addr) == nil })
	opt, err := ParseRedisURL("redis-sentinel://" + addr + "?master=authtap")
	if err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{Redis: opt, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Shutdown()
	waitFor(t, 10*time.Second, "the presence connection", func() bool { return w.runs.tag() != "" })
	rdb := redis.NewClient(&redis.Options{Addr: master.Addr})
	defer rdb.Close()
	s := w.runs.presence.state()
	if s.run != serverRun(t, rdb) || !strings.Contains(clientLine(t, rdb, s.id), "name="+s.name) {
		t.Fatalf("presence %+v is not on the master (run %s)", s, serverRun(t, rdb))
	}
	w.Shutdown()
	if line := clientLine(t, rdb, s.id); line != "" {
		t.Errorf("the presence connection outlives Shutdown: %s", line)
	}
}
