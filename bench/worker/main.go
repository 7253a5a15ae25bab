package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
	"github.com/authtap/authtap/worker/tasks"
)

func main() {
	events := flag.Int("events", 30000, "events queued for the throughput phase")
	concurrency := flag.Int("concurrency", 64, "worker concurrency (Config.Concurrency)")
	rate := flag.Int("rate", 500, "events per second in the latency phase")
	latencyFor := flag.Duration("latency-duration", 10*time.Second, "length of the latency phase")
	idleFor := flag.Duration("idle-duration", 10*time.Second, "length of the idle phase")
	taskCheck := flag.Duration("task-check-interval", worker.DefaultTaskCheckInterval, "Config.TaskCheckInterval")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		_ = pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	if err := run(*events, *concurrency, *rate, *latencyFor, *idleFor, *taskCheck); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// receiver counts deliveries and the queued → received latency of each.
type receiver struct {
	count atomic.Int64
	mu    sync.Mutex
	lat   []time.Duration
	want  atomic.Int64
	done  chan struct{}
	once  sync.Once
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	body, _ := io.ReadAll(r.Body)
	var ev struct {
		Data struct {
			Queued int64 `json:"queued"`
		} `json:"data"`
	}
	if json.Unmarshal(body, &ev) == nil && ev.Data.Queued > 0 {
		rc.mu.Lock()
		rc.lat = append(rc.lat, now.Sub(time.Unix(0, ev.Data.Queued)))
		rc.mu.Unlock()
	}
	if rc.count.Add(1) == rc.want.Load() {
		rc.once.Do(func() { close(rc.done) })
	}
	w.WriteHeader(http.StatusNoContent)
}

// expect resets the receiver to wait for n deliveries.
func (rc *receiver) expect(n int64) {
	rc.mu.Lock()
	rc.lat = rc.lat[:0]
	rc.mu.Unlock()
	rc.count.Store(0)
	rc.want.Store(n)
	rc.done = make(chan struct{})
	rc.once = sync.Once{}
}

func run(events, concurrency, rate int, latencyFor, idleFor, taskCheck time.Duration) error {
	dir, err := os.MkdirTemp("", "authtap-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, err := redistest.Launch(dir)
	if err != nil {
		return err
	}
	defer srv.Stop()

	rc := &receiver{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: rc, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()

	opt, err := worker.ParseRedisURL(srv.URL)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	ctx := context.Background()

	w, err := worker.New(worker.Config{Redis: opt, Concurrency: concurrency, TaskCheckInterval: taskCheck})
	if err != nil {
		return err
	}
	if _, err := w.Store().Create(ctx, worker.EndpointConfig{
		ID: "bench", URL: "http://" + ln.Addr().String() + "/hook", Mode: rules.ModeTest,
		Events: []string{"user.*"}, MaxConcurrency: concurrency,
	}); err != nil {
		return err
	}
	client := asynq.NewClientFromRedisClient(rdb)
	enqueue := func(i int) error {
		now := time.Now()
		ev := rules.Event{
			ID: rules.NewEventID(now), Type: "user.created", Timestamp: now.UTC().Truncate(time.Millisecond),
			Data:   json.RawMessage(`{"id":"u_` + strconv.Itoa(i) + `","email":"bench@example.test","queued":` + strconv.FormatInt(now.UnixNano(), 10) + `}`),
			Source: rules.Source{Name: "bench", Rule: "user-created"}, Mode: rules.ModeTest,
		}
		t, err := tasks.NewFanoutTask(ev)
		if err != nil {
			return err
		}
		_, err = client.EnqueueContext(ctx, t)
		return err
	}

	fmt.Printf("authtap worker benchmark — %s, GOMAXPROCS=%d, %s\n", runtime.Version(), runtime.GOMAXPROCS(0), redisVersion(ctx, rdb))
	fmt.Printf("worker: concurrency %d, task check interval %s, endpoint max concurrency %d, loopback HTTP receiver\n\n",
		concurrency, taskCheck, concurrency)

	// 1. Throughput: queue a backlog with the worker stopped, then drain it.
	rc.expect(int64(events))
	for i := range events {
		if err := enqueue(i); err != nil {
			return err
		}
	}
	start := time.Now()
	selfCPU0, redisCPU0 := cpuTime(os.Getpid()), cpuTime(srv.Pid())
	if err := w.Start(); err != nil {
		return err
	}
	defer w.Shutdown()
	select {
	case <-rc.done:
	case <-time.After(5 * time.Minute):
		return fmt.Errorf("throughput phase: only %d of %d deliveries after 5 minutes", rc.count.Load(), events)
	}
	took := time.Since(start)
	selfCPU, redisCPU := cpuTime(os.Getpid())-selfCPU0, cpuTime(srv.Pid())-redisCPU0
	fmt.Printf("throughput: %d events fanned out and delivered in %s = %.0f deliveries/s\n",
		events, took.Round(time.Millisecond), float64(events)/took.Seconds())
	fmt.Printf("  CPU per delivery: worker+receiver process %.0fµs, redis-server %.0fµs (of %.1f core-seconds available)\n",
		selfCPU.Seconds()*1e6/float64(events), redisCPU.Seconds()*1e6/float64(events), took.Seconds()*float64(runtime.NumCPU()))

	// Let the worker settle (attempt-log writes, completed-task bookkeeping).
	time.Sleep(2 * time.Second)

	// 2. Latency at a steady pace.
	n := int(float64(rate) * latencyFor.Seconds())
	rc.expect(int64(n))
	interval := time.Second / time.Duration(rate)
	next := time.Now()
	for i := range n {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(interval)
		if err := enqueue(i); err != nil {
			return err
		}
	}
	select {
	case <-rc.done:
	case <-time.After(time.Minute):
		return fmt.Errorf("latency phase: only %d of %d deliveries", rc.count.Load(), n)
	}
	rc.mu.Lock()
	lat := slices.Clone(rc.lat)
	rc.mu.Unlock()
	slices.Sort(lat)
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(float64(len(lat))*p))] }
	fmt.Printf("latency (queued → received) at %d events/s for %s, %d events: p50 %s, p90 %s, p99 %s, max %s\n",
		rate, latencyFor, len(lat), ms(pct(0.50)), ms(pct(0.90)), ms(pct(0.99)), ms(lat[len(lat)-1]))

	// 3. Idle cost.
	time.Sleep(3 * time.Second)
	before, err := commandStats(ctx, rdb)
	if err != nil {
		return err
	}
	time.Sleep(idleFor)
	after, err := commandStats(ctx, rdb)
	if err != nil {
		return err
	}
	// Subtract our own two INFO calls.
	total := after["total"] - before["total"] - 1
	fmt.Printf("idle: %.1f Redis commands/s over %s (total_commands_processed delta)\n", float64(total)/idleFor.Seconds(), idleFor)
	var parts []string
	for name, v := range after {
		if name == "total" || name == "info" {
			continue
		}
		if d := v - before[name]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s %.1f/s", name, float64(d)/idleFor.Seconds()))
		}
	}
	slices.Sort(parts)
	fmt.Printf("idle commands by type: %s\n", strings.Join(parts, ", "))
	return nil
}

// cpuTime returns the user+system CPU time of process pid (Linux /proc).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name (which is in parentheses and may hold spaces).
	_, rest, _ := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clockTicks
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2fms", float64(d.Microseconds())/1000) }

func redisVersion(ctx context.Context, rdb *redis.Client) string {
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return "redis ?"
	}
	for line := range strings.SplitSeq(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "redis_version:"); ok {
			return "redis " + v
		}
	}
	return "redis ?"
}

// commandStats returns calls per command (INFO commandstats) and "total"
// (total_commands_processed).
func commandStats(ctx context.Context, rdb *redis.Client) (map[string]int64, error) {
	info, err := rdb.Info(ctx, "stats", "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("reading INFO: %w", err)
	}
	out := map[string]int64{}
	for line := range strings.SplitSeq(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
			out["total"], _ = strconv.ParseInt(v, 10, 64)
		}
		if rest, ok := strings.CutPrefix(line, "cmdstat_"); ok {
			name, stats, _ := strings.Cut(rest, ":")
			for kv := range strings.SplitSeq(stats, ",") {
				if v, ok := strings.CutPrefix(kv, "calls="); ok {
					out[name], _ = strconv.ParseInt(v, 10, 64)
				}
			}
		}
	}
	return out, nil
}
