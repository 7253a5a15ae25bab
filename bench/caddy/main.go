package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hibiken/asynq"

	"github.com/authtap/authtap/bench/internal/benchenv"
	"github.com/authtap/authtap/internal/redistest"
	"github.com/authtap/authtap/rules/examples"
	"github.com/authtap/authtap/worker/tasks"
)

// upstreamEnv, when set to a listen address, makes this binary run as the
// upstream instead of the benchmark (the benchmark re-executes itself).
const upstreamEnv = "AUTHTAP_BENCH_UPSTREAM"

// rulePack is the rule file the authtap handler loads (from rules/examples).
const rulePack = "basic-users-tenants.yaml"

type options struct {
	duration   time.Duration
	c1Duration time.Duration
	warmup     time.Duration
	rounds     int
	conns      int
	caddyBin   string
	withWorker bool
	profileDir string
	keep       bool
}

func main() {
	if addr := os.Getenv(upstreamEnv); addr != "" {
		if err := runUpstream(addr); err != nil {
			fmt.Fprintln(os.Stderr, "upstream:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of each throughput run (GET, POST at -conns)")
	flag.DurationVar(&o.c1Duration, "c1-duration", 2*time.Second, "length of each concurrency-1 latency run")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "warm-up per target and scenario before the first round (not counted)")
	flag.IntVar(&o.rounds, "rounds", 10, "rounds; each runs every scenario against every target, target order alternating")
	flag.IntVar(&o.conns, "conns", 32, "keep-alive connections of the throughput runs")
	flag.StringVar(&o.caddyBin, "caddy", "", "Caddy binary with authtap (default: go build ./cmd/caddy into a temp dir)")
	flag.BoolVar(&o.withWorker, "with-worker", false, "add a third target: authtap with the in-process worker on (separate Redis db)")
	flag.StringVar(&o.profileDir, "profile", "", "after the rounds, write CPU and allocation profiles of the plain and the authtap Caddy under GET and POST load to this dir (enables admin on loopback)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir (configs, logs) and print its path")
	flag.Parse()
	if o.rounds < 1 || o.conns < 1 || o.duration <= 0 || o.c1Duration <= 0 {
		fmt.Fprintln(os.Stderr, "bench: -rounds, -conns, -duration and -c1-duration must be positive")
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// ---- upstream --------------------------------------------------------------

// staticBody is what GET /static/* answers: 1 KiB of JavaScript-ish text.
var staticBody = bytes.Repeat([]byte("console.log('authtap bench static asset');\n"), 1024/43+1)[:1024]

// runUpstream serves the legacy API the benchmark proxies to: GET /static/*
// answers 200 with a fixed 1 KiB body; POST /api/users answers 201 with the
// created user (the shape rules/examples/basic-users-tenants.yaml expects).
// It prints its address on stdout once it listens.
func runUpstream(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	var ids atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /static/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Header().Set("Content-Length", strconv.Itoa(len(staticBody)))
		_, _ = w.Write(staticBody)
	})
	mux.HandleFunc("POST /api/users", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Email    string `json:"email"`
			Name     string `json:"name"`
			TenantID string `json:"tenant_id"`
		}
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Email == "" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"error":"email is required"}`)
			return
		}
		id := ids.Add(1)
		body, _ := json.Marshal(map[string]any{
			"id": "u_" + strconv.FormatInt(id, 10), "email": in.Email, "name": in.Name, "tenant_id": in.TenantID,
			"role": "member", "password_hash": "$2y$10$abcdefghijklmnopqrstuv", "internal_notes": "created by bench",
			"created_at": time.Now().UTC().Format(time.RFC3339),
		})
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write(body)
	})
	fmt.Println(ln.Addr().String())
	return (&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
}

// ---- processes -------------------------------------------------------------

// proc is a child process started by the benchmark.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has exited and been reaped
}

// startProc starts cmd and reaps it when it exits.
func startProc(name string, cmd *exec.Cmd) (*proc, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop asks the process to exit (SIGTERM) and kills it after 5 s.
func (p *proc) stop() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func startUpstream(dir string) (*proc, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", fmt.Errorf("finding own executable: %w", err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), upstreamEnv+"=127.0.0.1:0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(filepath.Join(dir, "upstream.log"))
	if err != nil {
		return nil, "", err
	}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	p, err := startProc("upstream", cmd)
	if err != nil {
		return nil, "", err
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(s)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case addr := <-line:
		if addr == "" {
			p.stop()
			return nil, "", errors.New("upstream exited before listening (see upstream.log)")
		}
		return p, addr, nil
	case <-time.After(10 * time.Second):
		p.stop()
		return nil, "", errors.New("upstream did not report its address within 10s")
	}
}

// target is one Caddy under test.
type target struct {
	name      string
	addr      string // host:port of the HTTP server
	adminAddr string // empty: admin off
	redisDB   int    // -1: no authtap
	proc      *proc
	posted    int64 // 201 responses to POST /api/users through this target
}

// caddyConfig returns the JSON config of t: reverse_proxy to upstream, with
// the authtap handler in front when withAuthtap.
func caddyConfig(t *target, dir, upstream, redisAddr, rulesFile string, worker bool) ([]byte, error) {
	admin := map[string]any{"disabled": true}
	if t.adminAddr != "" {
		admin = map[string]any{"listen": t.adminAddr}
	}
	proxy := map[string]any{"handler": "reverse_proxy", "upstreams": []any{map[string]any{"dial": upstream}}}
	handlers := []any{proxy}
	apps := map[string]any{}
	if t.redisDB >= 0 {
		handlers = []any{map[string]any{"handler": "authtap", "rules": []string{rulesFile}, "source": "bench"}, proxy}
		apps["authtap"] = map[string]any{
			"redis":     fmt.Sprintf("redis://%s/%d", redisAddr, t.redisDB),
			"worker":    map[string]any{"enabled": worker},
			"spool_dir": filepath.Join(dir, t.name+"-spool"),
		}
	}
	apps["http"] = map[string]any{"servers": map[string]any{"bench": map[string]any{
		"listen":          []string{t.addr},
		"automatic_https": map[string]any{"disable": true},
		"routes":          []any{map[string]any{"handle": handlers}},
	}}}
	return json.MarshalIndent(map[string]any{
		"admin":   admin,
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "WARN"}}},
		"storage": map[string]any{"module": "file_system", "root": filepath.Join(dir, t.name+"-data")},
		"apps":    apps,
	}, "", "\t")
}

func startCaddy(bin, dir string, t *target, config []byte) error {
	cfgFile := filepath.Join(dir, t.name+".json")
	if err := os.WriteFile(cfgFile, config, 0o600); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, t.name+".log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "run", "--config", cfgFile)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(dir, t.name+"-xdg"), "XDG_CONFIG_HOME="+filepath.Join(dir, t.name+"-xdg"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p, err := startProc("caddy "+t.name, cmd)
	if err != nil {
		return err
	}
	t.proc = p
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			log, _ := os.ReadFile(filepath.Join(dir, t.name+".log"))
			return fmt.Errorf("caddy %s exited during start:\n%s", t.name, log)
		default:
		}
		resp, err := http.Get("http://" + t.addr + "/static/ready.js")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("caddy %s did not answer on %s within 30s (see %s.log)", t.name, t.addr, t.name)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// cpuTime returns the user+system CPU time of process pid (Linux /proc).
func cpuTime(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// fields after the command name, which is in parentheses and may hold spaces
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// ---- load generator --------------------------------------------------------

// scenario is one kind of load.
type scenario struct {
	name   string
	req    []byte
	want   int // expected status
	conns  int
	dur    time.Duration
	posted bool // counts toward the events expected in Redis
}

// result is one run of a scenario against a target.
type result struct {
	n, bad         int64
	elapsed        time.Duration
	p50, p99       time.Duration
	caddyCPU       time.Duration
	redisCPU       time.Duration
	upstreamCPU    time.Duration
	loadgenCPU     time.Duration
	firstBadStatus int
}

func (r result) rps() float64 { return float64(r.n) / r.elapsed.Seconds() }

func perReq(d time.Duration, n int64) float64 {
	if n == 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(n)
}

// load runs sc against addr: sc.conns keep-alive connections, each sending
// sc.req and reading the response in a loop until sc.dur is up. Requests in
// flight at the deadline are completed and counted.
func load(addr string, sc scenario, dur time.Duration) (result, error) {
	conns := make([]net.Conn, sc.conns)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return result{}, fmt.Errorf("dialing %s: %w", addr, err)
		}
		conns[i] = c
	}
	type connResult struct {
		lat       []time.Duration
		bad       int64
		badStatus int
		err       error
	}
	res := make([]connResult, sc.conns)
	startGate := make(chan struct{})
	var wg sync.WaitGroup
	var deadline time.Time
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			cr := &res[i]
			cr.lat = make([]time.Duration, 0, 1<<15)
			br := bufio.NewReaderSize(c, 16<<10)
			<-startGate
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if _, err := c.Write(sc.req); err != nil {
					cr.err = err
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					cr.err = err
					return
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil {
					cr.err = err
					return
				}
				cr.lat = append(cr.lat, time.Since(t0))
				if resp.StatusCode != sc.want {
					cr.bad++
					cr.badStatus = resp.StatusCode
				}
				if resp.Close {
					cr.err = fmt.Errorf("server closed the connection (status %d)", resp.StatusCode)
					return
				}
			}
		}()
	}
	start := time.Now()
	deadline = start.Add(dur)
	close(startGate)
	wg.Wait()
	var r result
	r.elapsed = time.Since(start)
	var all []time.Duration
	for _, cr := range res {
		if cr.err != nil {
			return result{}, fmt.Errorf("%s on %s: %w", sc.name, addr, cr.err)
		}
		all = append(all, cr.lat...)
		r.bad += cr.bad
		if cr.bad > 0 {
			r.firstBadStatus = cr.badStatus
		}
	}
	r.n = int64(len(all))
	slices.Sort(all)
	if len(all) > 0 {
		r.p50 = all[len(all)/2]
		r.p99 = all[min(len(all)-1, len(all)*99/100)]
	}
	return r, nil
}

func postRequest() []byte {
	body := `{"email":"ada@acme.test","name":"Ada Lovelace","tenant_id":"t_1","password":"correct horse battery staple"}`
	return []byte("POST /api/users HTTP/1.1\r\nHost: auth.bench.test\r\nUser-Agent: authtap-bench\r\n" +
		"Content-Type: application/json\r\nAccept: application/json\r\nCookie: session=s_0123456789abcdef\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
}

func getRequest() []byte {
	return []byte("GET /static/app.js HTTP/1.1\r\nHost: auth.bench.test\r\nUser-Agent: authtap-bench\r\n" +
		"Accept: */*\r\nAccept-Encoding: identity\r\nCookie: session=s_0123456789abcdef\r\n\r\n")
}

// ---- the run ---------------------------------------------------------------

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "authtap-bench-caddy-")
	if err != nil {
		return err
	}
	if o.keep {
		defer fmt.Printf("\nkept %s (configs, logs)\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	printHeader(o)

	bin := o.caddyBin
	if bin == "" {
		bin = filepath.Join(dir, "caddy")
		t0 := time.Now()
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("building ./cmd/caddy (run from the repository root, or pass -caddy): %w", err)
		}
		fmt.Printf("built ./cmd/caddy in %s\n", time.Since(t0).Round(100*time.Millisecond))
	}
	if v, err := exec.Command(bin, "version").Output(); err == nil {
		fmt.Printf("caddy:     %s", v)
	}

	if err := os.Mkdir(filepath.Join(dir, "redis"), 0o700); err != nil {
		return err
	}
	srv, err := redistest.Launch(filepath.Join(dir, "redis"))
	if err != nil {
		return err
	}
	defer srv.Stop()
	up, upAddr, err := startUpstream(dir)
	if err != nil {
		return err
	}
	defer up.stop()

	pack, err := fs.ReadFile(examples.FS, rulePack)
	if err != nil {
		return err
	}
	rulesFile := filepath.Join(dir, rulePack)
	if err := os.WriteFile(rulesFile, pack, 0o600); err != nil {
		return err
	}

	targets := []*target{{name: "plain", redisDB: -1}, {name: "authtap", redisDB: 0}}
	if o.withWorker {
		targets = append(targets, &target{name: "authtap+worker", redisDB: 1})
	}
	for _, t := range targets {
		if t.addr, err = freeAddr(); err != nil {
			return err
		}
		if o.profileDir != "" {
			if t.adminAddr, err = freeAddr(); err != nil {
				return err
			}
		}
		cfg, err := caddyConfig(t, dir, upAddr, srv.Addr, rulesFile, t.name == "authtap+worker")
		if err != nil {
			return err
		}
		if err := startCaddy(bin, dir, t, cfg); err != nil {
			return err
		}
		defer t.proc.stop()
	}
	fmt.Printf("upstream:  %s (separate process); redis-server %s (private); rules: rules/examples/%s\n", upAddr, srv.Addr, rulePack)
	fmt.Printf("targets:   plain = reverse_proxy only; authtap = authtap handler + reverse_proxy, redis db 0, in-process worker OFF (events stay queued)")
	if o.withWorker {
		fmt.Printf(";\n           authtap+worker = same with the in-process worker ON (redis db 1, no endpoints: each event is fanned out to nobody)")
	}
	fmt.Println()

	scenarios := []scenario{
		{name: "GET /static/app.js (no rule)", req: getRequest(), want: 200, conns: o.conns, dur: o.duration},
		{name: "POST /api/users (rule, 201)", req: postRequest(), want: 201, conns: o.conns, dur: o.duration, posted: true},
		{name: "GET, concurrency 1", req: getRequest(), want: 200, conns: 1, dur: o.c1Duration},
		{name: "POST, concurrency 1", req: postRequest(), want: 201, conns: 1, dur: o.c1Duration, posted: true},
	}

	selfPid := os.Getpid()
	measure := func(t *target, sc scenario, dur time.Duration) (result, error) {
		c0, r0, u0, l0 := cpuTime(t.proc.pid()), cpuTime(srv.Pid()), cpuTime(up.pid()), cpuTime(selfPid)
		r, err := load(t.addr, sc, dur)
		if err != nil {
			return r, fmt.Errorf("%s: %w", t.name, err)
		}
		r.caddyCPU = cpuTime(t.proc.pid()) - c0
		r.redisCPU = cpuTime(srv.Pid()) - r0
		r.upstreamCPU = cpuTime(up.pid()) - u0
		r.loadgenCPU = cpuTime(selfPid) - l0
		if sc.posted {
			t.posted += r.n - r.bad
		}
		if r.bad > 0 {
			return r, fmt.Errorf("%s: %s: %d of %d responses were not %d (e.g. %d)", t.name, sc.name, r.bad, r.n, sc.want, r.firstBadStatus)
		}
		return r, nil
	}

	// warm up: connections to the upstream, Redis, pools, page cache
	for _, sc := range scenarios[:2] {
		for _, t := range targets {
			if _, err := measure(t, sc, o.warmup); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
		}
	}

	results := make(map[string]map[string][]result) // scenario → target → rounds
	for _, sc := range scenarios {
		results[sc.name] = map[string][]result{}
	}
	fmt.Printf("\n%d rounds; each: every scenario against every target, target order alternating per round\n", o.rounds)
	for round := range o.rounds {
		order := slices.Clone(targets)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, sc := range scenarios {
			for _, t := range order {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				r, err := measure(t, sc, sc.dur)
				if err != nil {
					return err
				}
				results[sc.name][t.name] = append(results[sc.name][t.name], r)
				fmt.Printf("  round %d  %-30s %-15s %9.0f req/s  p50 %6.3f ms  p99 %6.3f ms  CPU/req: caddy %5.1f µs, redis %5.1f µs\n",
					round+1, sc.name, t.name, r.rps(), ms(r.p50), ms(r.p99), perReq(r.caddyCPU, r.n), perReq(r.redisCPU, r.n))
			}
		}
	}

	printSummary(o, scenarios, targets, results)

	if err := checkEvents(srv.Addr, targets); err != nil {
		return err
	}

	if o.profileDir != "" {
		if err := profile(o, targets, scenarios); err != nil {
			return err
		}
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func column(rs []result, f func(result) float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func printHeader(o options) {
	fmt.Printf("authtap whole-system Caddy benchmark, %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Printf("command:   go run ./bench/caddy %s\n", strings.Join(os.Args[1:], " "))
	model := ""
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	fmt.Printf("machine:   %d CPUs (%s), GOMAXPROCS %d (default), %s %s/%s, load average at start %s\n",
		runtime.NumCPU(), model, runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH, benchenv.LoadAvg())
	benchenv.PrintBuild()
	fmt.Printf("settings:  -duration %s -c1-duration %s -rounds %d -conns %d -warmup %s\n", o.duration, o.c1Duration, o.rounds, o.conns, o.warmup)
}

func printSummary(o options, scenarios []scenario, targets []*target, results map[string]map[string][]result) {
	fmt.Printf("\nload average at end %s\n", benchenv.LoadAvg())
	fmt.Printf("\nmedians of %d rounds (CPU/req = CPU time of that process ÷ requests completed)\n", o.rounds)
	fmt.Printf("  %-30s %-15s %10s %9s %9s %11s %11s %11s %11s\n", "scenario", "target", "req/s", "p50 ms", "p99 ms",
		"caddy µs", "redis µs", "upstream µs", "loadgen µs")
	for _, sc := range scenarios {
		for _, t := range targets {
			rs := results[sc.name][t.name]
			fmt.Printf("  %-30s %-15s %10.0f %9.3f %9.3f %11.1f %11.1f %11.1f %11.1f\n", sc.name, t.name,
				median(column(rs, result.rps)),
				median(column(rs, func(r result) float64 { return ms(r.p50) })),
				median(column(rs, func(r result) float64 { return ms(r.p99) })),
				median(column(rs, func(r result) float64 { return perReq(r.caddyCPU, r.n) })),
				median(column(rs, func(r result) float64 { return perReq(r.redisCPU, r.n) })),
				median(column(rs, func(r result) float64 { return perReq(r.upstreamCPU, r.n) })),
				median(column(rs, func(r result) float64 { return perReq(r.loadgenCPU, r.n) })))
		}
	}

	fmt.Printf("\ngoals (authtap vs plain, same run)\n")
	for _, t := range targets[1:] {
		// ratio returns the median of the per-round ratios (each round's
		// authtap run paired with its plain run next to it in time), their
		// range, and the ratio of the medians.
		ratio := func(sc scenario) (med, lo, hi, ofMedians float64) {
			p := results[sc.name]["plain"]
			a := results[sc.name][t.name]
			per := make([]float64, len(a))
			for i := range a {
				per[i] = a[i].rps() / p[i].rps()
			}
			return median(per), slices.Min(per), slices.Max(per), median(column(a, result.rps)) / median(column(p, result.rps))
		}
		added := func(sc scenario) float64 {
			return median(column(results[sc.name][t.name], func(r result) float64 { return ms(r.p50) })) -
				median(column(results[sc.name]["plain"], func(r result) float64 { return ms(r.p50) }))
		}
		verdict := func(ok bool) string {
			if ok {
				return "MET"
			}
			return "MISSED"
		}
		g, glo, ghi, gm := ratio(scenarios[0])
		p, plo, phi, pm := ratio(scenarios[1])
		ag, ap := added(scenarios[2]), added(scenarios[3])
		fmt.Printf("  [%s] GET, no rule:   throughput ratio %.3f (median of per-round ratios; range %.3f–%.3f; ratio of medians %.3f)  goal ≥ 0.98: %s\n",
			t.name, g, glo, ghi, gm, verdict(g >= 0.98))
		fmt.Printf("  [%s] POST, rule:     throughput ratio %.3f (median of per-round ratios; range %.3f–%.3f; ratio of medians %.3f)  goal ≥ 0.85: %s\n",
			t.name, p, plo, phi, pm, verdict(p >= 0.85))
		cg, cp := cpuRatio(results, scenarios[0], t.name), cpuRatio(results, scenarios[1], t.name)
		fmt.Printf("  [%s] CPU-bound estimate (plain ÷ authtap total CPU per request, all processes): GET %.3f, POST %.3f\n", t.name, cg, cp)
		fmt.Printf("  [%s] concurrency 1:  added p50 GET %+.3f ms, POST %+.3f ms  goal ≤ 0.3 ms: %s\n", t.name, ag, ap, verdict(ag <= 0.3 && ap <= 0.3))
	}
}

// cpuRatio is the median over rounds of plain's CPU per request (Caddy,
// redis-server, upstream and load generator together) divided by the same for
// target name: what the throughput ratio would be if the run were bound only
// by this machine's CPU, whatever else the machine is doing.
func cpuRatio(results map[string]map[string][]result, sc scenario, name string) float64 {
	total := func(r result) float64 {
		return perReq(r.caddyCPU+r.redisCPU+r.upstreamCPU+r.loadgenCPU, r.n)
	}
	return median(column(results[sc.name]["plain"], total)) / median(column(results[sc.name][name], total))
}

// checkEvents compares the 201 responses to POST /api/users through each
// authtap target with the event:fanout tasks in its Redis db.
func checkEvents(redisAddr string, targets []*target) error {
	fmt.Printf("\nevents (every 201 through authtap must have its event:fanout task in Redis)\n")
	for _, t := range targets {
		if t.redisDB < 0 {
			continue
		}
		insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: redisAddr, DB: t.redisDB})
		var got int64
		var info *asynq.QueueInfo
		// a spooled event reaches Redis after the replay loop's next try (≈1 s)
		deadline := time.Now().Add(15 * time.Second)
		for {
			var err error
			info, err = insp.GetQueueInfo(tasks.QueueFanout)
			if err != nil && !errors.Is(err, asynq.ErrQueueNotFound) {
				insp.Close()
				return fmt.Errorf("inspecting %s queue of %s: %w", tasks.QueueFanout, t.name, err)
			}
			got = 0
			if info != nil {
				// worker off: all pending; worker on: processed (fanned out) plus the rest
				got = int64(info.Size)
				if t.name == "authtap+worker" {
					got += int64(info.ProcessedTotal) - int64(info.Completed)
				}
			}
			if got >= t.posted || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		insp.Close()
		verdict := "none lost"
		if got < t.posted {
			verdict = fmt.Sprintf("%d LOST", t.posted-got)
		} else if got > t.posted {
			verdict = fmt.Sprintf("%d more events than 201s", got-t.posted)
		}
		fmt.Printf("  %-15s 201 responses %d, event:fanout tasks in queue %s: %d — %s\n", t.name, t.posted, tasks.QueueFanout, got, verdict)
		if got != t.posted {
			return fmt.Errorf("%s: %d 201 responses but %d events in Redis", t.name, t.posted, got)
		}
	}
	return nil
}

// profile takes a CPU profile and an allocation profile (the allocations
// made during the same seconds) of the plain and the authtap Caddy, through
// their admin endpoints, while each serves each throughput scenario.
func profile(o options, targets []*target, scenarios []scenario) error {
	if err := os.MkdirAll(o.profileDir, 0o755); err != nil {
		return err
	}
	fmt.Println()
	for _, t := range targets[:2] {
		fmt.Printf("profiles of %s (pprof via admin %s)\n", t.name, t.adminAddr)
		for i, sc := range scenarios[:2] {
			base := filepath.Join(o.profileDir, t.name+[]string{"-get", "-post"}[i])
			r, err := profileUnderLoad(o, t, sc, base)
			if err != nil {
				return fmt.Errorf("profiling %s: %w", t.name, err)
			}
			fmt.Printf("  %s (%.0f req/s while profiled): go tool pprof -top %s.pprof; go tool pprof -sample_index=alloc_space -top %s.allocs.pprof\n", sc.name, r.rps(), base, base)
		}
	}
	return nil
}

// profileUnderLoad writes base.pprof (CPU) and base.allocs.pprof of t while sc loads it.
func profileUnderLoad(o options, t *target, sc scenario, base string) (result, error) {
	dur := max(o.duration, 10*time.Second)
	secs := int(dur.Seconds()) - 2
	type loaded struct {
		r   result
		err error
	}
	done := make(chan loaded, 1)
	go func() {
		r, err := load(t.addr, sc, dur)
		done <- loaded{r, err}
	}()
	time.Sleep(time.Second)
	allocErr := make(chan error, 1)
	go func() {
		allocErr <- fetchProfile(fmt.Sprintf("http://%s/debug/pprof/allocs?seconds=%d", t.adminAddr, secs), base+".allocs.pprof")
	}()
	cpuErr := fetchProfile(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", t.adminAddr, secs), base+".pprof")
	l := <-done
	return l.r, errors.Join(cpuErr, <-allocErr, l.err)
}

// fetchProfile GETs a pprof endpoint and writes the answer to file.
func fetchProfile(url, file string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %d: %s", url, resp.StatusCode, b)
	}
	return os.WriteFile(file, b, 0o644)
}
