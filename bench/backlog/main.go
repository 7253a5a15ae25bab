package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/bench/internal/benchenv"
	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
	"github.com/authtap/authtap/worker/tasks"
)

type options struct {
	bins        []string
	n, others   int
	maxc        int
	rateLimit   float64
	delay       time.Duration
	runs        int
	concurrency int
	maxWait     time.Duration
	keep        bool
}

func main() {
	var o options
	var bins string
	flag.StringVar(&bins, "authtap", "new", `comma-separated authtap binaries to measure, alternated; "new" builds ./cmd/authtap`)
	flag.IntVar(&o.n, "n", 300, "events queued for the throttled endpoint")
	flag.IntVar(&o.others, "others", 50, "events queued after them for a second endpoint without a backlog")
	flag.IntVar(&o.maxc, "max-concurrency", 5, "the throttled endpoint's max_concurrency")
	flag.Float64Var(&o.rateLimit, "rate-limit", 0, "the throttled endpoint's rate_limit (0: none)")
	flag.DurationVar(&o.delay, "receiver-delay", 20*time.Millisecond, "how long the receiver takes over each delivery")
	flag.IntVar(&o.runs, "runs", 3, "runs of each binary")
	flag.IntVar(&o.concurrency, "concurrency", 0, "the worker's --concurrency (0: its default)")
	flag.DurationVar(&o.maxWait, "max-wait", 3*time.Minute, "how long one run may take")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir (worker logs) and print its path")
	flag.Parse()
	o.bins = strings.Split(bins, ",")
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "backlog:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	dir, err := os.MkdirTemp("", "authtap-backlog-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Println("files kept in", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	labels := slices.Clone(o.bins)
	for i, b := range o.bins {
		if b != "new" {
			continue
		}
		out := filepath.Join(dir, "authtap-new")
		if msg, err := exec.Command("go", "build", "-o", out, "./cmd/authtap").CombinedOutput(); err != nil {
			return fmt.Errorf("building ./cmd/authtap: %v\n%s", err, msg)
		}
		o.bins[i] = out
		labels[i] = "new (./cmd/authtap)"
	}
	benchenv.PrintBuild()
	limit := "none"
	if o.rateLimit > 0 {
		limit = strconv.FormatFloat(o.rateLimit, 'g', -1, 64) + "/s"
	}
	fmt.Printf("backlog:   %d events for one endpoint (max_concurrency %d, rate_limit %s), %d for another, receiver %s per delivery\n",
		o.n, o.maxc, limit, o.others, o.delay)
	fmt.Printf("load avg:  %s\n\n", benchenv.LoadAvg())
	fmt.Println("| binary | run | drained (from the worker's start) | deliveries/s (first → last) | in flight at most | out of place at most | other endpoint done | duplicates | load avg |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---|")
	for r := 1; r <= o.runs; r++ {
		for i, bin := range o.bins {
			res, err := once(o, bin, filepath.Join(dir, fmt.Sprintf("run-%d-%d", r, i)))
			if err != nil {
				return fmt.Errorf("%s run %d: %w", labels[i], r, err)
			}
			fmt.Printf("| %s | %d | %s | %.0f | %d | %d | %s | %d | %s |\n", labels[i], r, res.drained.Round(time.Millisecond),
				res.rate, res.most, res.displaced, res.othersDone.Round(time.Millisecond), res.dups, benchenv.LoadAvg())
		}
	}
	return nil
}

type result struct {
	drained, othersDone time.Duration
	rate                float64
	most, displaced     int
	dups                int
}

// receiver records, per path, the events it answered in order and when, and
// the most requests it had in flight at once.
type receiver struct {
	delay time.Duration
	mu    sync.Mutex
	got   map[string][]string // event data.id
	at    map[string][]time.Time
	seen  map[string]int // webhook-id → deliveries
	now   map[string]int
	most  map[string]int
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var ev struct {
		Data struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&ev); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	path := r.URL.Path
	rc.mu.Lock()
	rc.now[path]++
	rc.most[path] = max(rc.most[path], rc.now[path])
	rc.mu.Unlock()
	time.Sleep(rc.delay)
	rc.mu.Lock()
	rc.now[path]--
	rc.seen[r.Header.Get("webhook-id")]++
	if rc.seen[r.Header.Get("webhook-id")] == 1 {
		rc.got[path] = append(rc.got[path], ev.Data.ID)
		rc.at[path] = append(rc.at[path], time.Now())
	}
	rc.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (rc *receiver) count(path string) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.got[path])
}

// once measures one binary on a fresh Redis and receiver.
func once(o options, bin, dir string) (result, error) {
	var res result
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return res, err
	}
	srv, err := redistest.Launch(dir)
	if err != nil {
		return res, err
	}
	defer srv.Stop()
	rc := &receiver{delay: o.delay, got: map[string][]string{}, at: map[string][]time.Time{}, seen: map[string]int{},
		now: map[string]int{}, most: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return res, err
	}
	hs := &http.Server{Handler: rc, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()
	base := "http://" + ln.Addr().String()
	var secrets [2]string
	for i := range secrets {
		if secrets[i], err = worker.NewSecret(); err != nil {
			return res, err
		}
	}
	slow := map[string]any{"id": "slow", "url": base + "/slow", "mode": "test", "secret": secrets[0], "events": []string{"user.created"}, "max_concurrency": o.maxc}
	if o.rateLimit > 0 {
		slow["rate_limit"] = o.rateLimit
	}
	other := map[string]any{"id": "other", "url": base + "/other", "mode": "test", "secret": secrets[1], "events": []string{"user.deleted"}}
	eps, err := json.Marshal([]map[string]any{slow, other})
	if err != nil {
		return res, err
	}
	epFile := filepath.Join(dir, "endpoints.json")
	if err := os.WriteFile(epFile, eps, 0o600); err != nil {
		return res, err
	}

	// The backlog is queued before the worker starts, as after a worker that
	// was down: the events' fan-outs, then their deliveries, run at once.
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	client := asynq.NewClientFromRedisClient(rdb)
	want := make([]string, 0, o.n)
	for i := range o.n + o.others {
		typ, id := "user.created", "u_"+strconv.Itoa(i)
		if i >= o.n {
			typ, id = "user.deleted", "d_"+strconv.Itoa(i)
		} else {
			want = append(want, id)
		}
		now := time.Now()
		task, err := tasks.NewFanoutTask(rules.Event{
			ID: rules.NewEventID(now), Type: typ, Timestamp: now.UTC().Truncate(time.Millisecond),
			Data: json.RawMessage(`{"id":"` + id + `"}`), Source: rules.Source{Name: "bench", Rule: typ}, Mode: rules.ModeTest,
		})
		if err != nil {
			return res, err
		}
		if _, err := client.Enqueue(task); err != nil {
			return res, fmt.Errorf("queuing: %w", err)
		}
	}

	args := []string{"worker", "--redis", "redis://" + srv.Addr + "/0", "--endpoints", epFile}
	if o.concurrency > 0 {
		args = append(args, "--concurrency", strconv.Itoa(o.concurrency))
	}
	cmd := exec.Command(bin, args...)
	logf, err := os.Create(filepath.Join(dir, "worker.log"))
	if err != nil {
		return res, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return res, err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), o.maxWait)
	defer cancel()
	for rc.count("/slow") < o.n || rc.count("/other") < o.others {
		select {
		case <-exited:
			return res, errors.New("the worker exited (see its log with -keep)")
		case <-ctx.Done():
			return res, fmt.Errorf("%d of %d and %d of %d delivered within %s", rc.count("/slow"), o.n, rc.count("/other"), o.others, o.maxWait)
		case <-time.After(5 * time.Millisecond):
		}
	}
	time.Sleep(500 * time.Millisecond) // late duplicates
	rc.mu.Lock()
	defer rc.mu.Unlock()
	at, got := rc.at["/slow"], rc.got["/slow"]
	res.drained = at[len(at)-1].Sub(start)
	if span := at[len(at)-1].Sub(at[0]).Seconds(); span > 0 {
		res.rate = float64(len(at)-1) / span
	}
	if oa := rc.at["/other"]; len(oa) > 0 {
		res.othersDone = oa[len(oa)-1].Sub(start)
	}
	res.most = rc.most["/slow"]
	pos := map[string]int{}
	for i, id := range want {
		pos[id] = i
	}
	for i, id := range got {
		d := i - pos[id]
		res.displaced = max(res.displaced, d, -d)
	}
	for _, n := range rc.seen {
		res.dups += n - 1
	}
	return res, nil
}
