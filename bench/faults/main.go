package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/authtap/authtap/bench/internal/benchenv"
	"github.com/authtap/authtap/rules/examples"
)

// rulePack is the rule file the authtap handler loads (from rules/examples);
// its user-created rule turns each POST /api/users → 201 into user.created.
const rulePack = "basic-users-tenants.yaml"

// drainGoal is issue 11's goal: every fault's backlog delivered within 10 s of its end.
const drainGoal = 10 * time.Second

// firstDeliveryTimeout bounds the wait for the first delivery before a fault
// is injected: a system that delivers nothing is broken, not slow.
const firstDeliveryTimeout = 30 * time.Second

// burstLead is how long after the burst's start the worker is killed: long
// enough for Caddy to queue the burst's events and the worker to take some.
const burstLead = 300 * time.Millisecond

type options struct {
	rate          float64
	outage        time.Duration
	receiverShort time.Duration
	receiverLong  time.Duration
	workerGap     time.Duration
	burst         int
	before        time.Duration
	after         time.Duration
	maxDrain      time.Duration
	settle        time.Duration
	redisSignal   string
	receiver      string
	receiverDelay time.Duration
	timeout       time.Duration
	scenarios     []string
	caddyBin      string
	authtapBin    string
	keep          bool
}

// allScenarios are the faults of issue 11, in the order they run.
var allScenarios = []string{"redis-stop", "redis-freeze", "worker-kill", "receiver-short", "receiver-long"}

// parseScenarios checks a comma-separated list of scenario names ("all" for every one).
func parseScenarios(s string) ([]string, error) {
	if strings.TrimSpace(s) == "all" {
		return slices.Clone(allScenarios), nil
	}
	var out []string
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		if !slices.Contains(allScenarios, name) {
			return nil, fmt.Errorf("unknown scenario %q (want a comma-separated list of %s, or all)", name, strings.Join(allScenarios, ", "))
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// checkOptions refuses values that would make a run meaningless or unbounded.
func checkOptions(o options) error {
	switch {
	case o.rate < 1 || o.rate > 1000:
		return fmt.Errorf("-rate %g: want 1 to 1000 sign-ups per second", o.rate)
	case o.outage <= 0 || o.receiverShort <= 0 || o.receiverLong <= 0 || o.workerGap < 0:
		return errors.New("-outage, -receiver-short and -receiver-long must be positive, -worker-gap not negative")
	case o.burst < 0 || o.burst > maxInFlight:
		return fmt.Errorf("-burst %d: want 0 to %d", o.burst, maxInFlight)
	case o.before < time.Second || o.after < 0 || o.settle < 0:
		return errors.New("-before must be at least 1s, -after and -settle not negative")
	case o.maxDrain < time.Second || o.maxDrain > time.Hour:
		return fmt.Errorf("-max-drain %s: want 1s to 1h", o.maxDrain)
	case o.redisSignal != "term" && o.redisSignal != "kill":
		return fmt.Errorf("-redis-signal %q: want term or kill", o.redisSignal)
	case o.timeout < 0:
		return errors.New("-delivery-timeout must not be negative")
	case o.receiver != "go" && o.receiver != "node":
		return fmt.Errorf("-receiver %q: want go or node", o.receiver)
	case o.receiverDelay < 0 || (o.receiverDelay > 0 && o.receiver != "go"):
		return errors.New("-receiver-delay must not be negative, and is for -receiver go")
	}
	return nil
}

func main() {
	var o options
	var scen string
	flag.Float64Var(&o.rate, "rate", 80, "sign-ups per second sent through Caddy during each scenario")
	flag.DurationVar(&o.outage, "outage", 15*time.Second, "how long Redis stays stopped (redis-stop) or frozen (redis-freeze)")
	flag.DurationVar(&o.receiverShort, "receiver-short", 4*time.Second, "receiver outage of receiver-short")
	flag.DurationVar(&o.receiverLong, "receiver-long", 10*time.Second, "receiver outage of receiver-long")
	flag.DurationVar(&o.workerGap, "worker-gap", 2*time.Second, "worker-kill: time between the SIGKILL and the new worker's start")
	flag.IntVar(&o.burst, "burst", 200, "worker-kill: sign-ups sent at once just before the SIGKILL (0: none)")
	flag.DurationVar(&o.before, "before", 5*time.Second, "traffic before the fault")
	flag.DurationVar(&o.after, "after", 3*time.Second, "traffic after the fault's end (then traffic stops)")
	flag.DurationVar(&o.maxDrain, "max-drain", 2*time.Minute, "how long to wait, from the fault's end, for every event to arrive")
	flag.DurationVar(&o.settle, "settle", 3*time.Second, "after everything arrived, how long to keep counting late duplicate deliveries")
	flag.StringVar(&o.redisSignal, "redis-signal", "term", "how redis-stop stops Redis: term (SIGTERM; AOF fsync everysec) or kill (SIGKILL; AOF fsync always)")
	flag.StringVar(&o.receiver, "receiver", "go", "the receiver: go (in this process, idle connections closed after 5 s) or node (node on PATH: http.createServer, default keepAliveTimeout 5 s)")
	flag.DurationVar(&o.receiverDelay, "receiver-delay", 0, "the go receiver takes this long over each delivery before it answers and records it (one whose sender goes away meanwhile is not recorded); 0: none")
	flag.DurationVar(&o.timeout, "delivery-timeout", 0, "the worker's --timeout (one delivery attempt); 0: its default")
	flag.StringVar(&scen, "scenarios", "all", "comma-separated scenarios: "+strings.Join(allScenarios, ", ")+", or all")
	flag.StringVar(&o.caddyBin, "caddy", "", "Caddy binary with authtap (default: go build ./cmd/caddy into a temp dir)")
	flag.StringVar(&o.authtapBin, "authtap", "", "authtap binary (default: go build ./cmd/authtap into a temp dir)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir (configs, logs, Redis files) and print its path")
	flag.Parse()
	var err error
	if o.scenarios, err = parseScenarios(scen); err == nil {
		err = checkOptions(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dir, err := os.MkdirTemp("", "authtap-bench-faults-")
	if err != nil {
		return err
	}
	if o.keep {
		defer fmt.Printf("\nkept %s (configs, logs, Redis files)\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	printHeader(o)
	if o.caddyBin == "" {
		if o.caddyBin, err = build(dir, "caddy", "./cmd/caddy"); err != nil {
			return err
		}
	}
	if o.authtapBin == "" {
		if o.authtapBin, err = build(dir, "authtap", "./cmd/authtap"); err != nil {
			return err
		}
	}
	pack, err := fs.ReadFile(examples.FS, rulePack)
	if err != nil {
		return err
	}
	rulesFile := filepath.Join(dir, rulePack)
	if err := os.WriteFile(rulesFile, pack, 0o600); err != nil {
		return err
	}

	var rows []row
	for _, name := range o.scenarios {
		fmt.Printf("\n== %s: %s\n", name, faultText(o, name))
		out, err := runScenario(ctx, o, name, filepath.Join(dir, name), rulesFile)
		if err != nil {
			printTable(o, rows)
			return fmt.Errorf("%s: %w", name, err)
		}
		rows = append(rows, row{name, out})
		fmt.Printf("   created %d, waiting when the fault began %d, backlog at the fault's end %d, drain %s, slowest %s, undelivered %d, second webhook-id %d, same-id redeliveries %d\n",
			out.created, out.atStart, out.backlog, out.drainText(o.maxDrain), out.slowestText(), out.lost, out.secondID, out.redelivered)
	}
	printTable(o, rows)
	fmt.Printf("\nload average at end %s\n", benchenv.LoadAvg())
	for _, r := range rows {
		if !r.out.ok(drainGoal) {
			return errors.New("some scenario missed the goal (see the table)")
		}
	}
	return nil
}

func build(dir, name, pkg string) (string, error) {
	bin := filepath.Join(dir, name)
	t0 := time.Now()
	cmd := exec.Command("go", "build", "-o", bin, pkg)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building %s (run from the repository root, or pass -%s): %w", pkg, name, err)
	}
	fmt.Printf("built %s in %s\n", pkg, time.Since(t0).Round(100*time.Millisecond))
	return bin, nil
}

func faultText(o options, name string) string {
	switch name {
	case "redis-stop":
		return fmt.Sprintf("Redis stopped (SIG%s) %s, restarted with its AOF on the same port", strings.ToUpper(o.redisSignal), o.outage)
	case "redis-freeze":
		return fmt.Sprintf("Redis frozen %s (SIGSTOP, SIGCONT)", o.outage)
	case "worker-kill":
		return fmt.Sprintf("standalone worker SIGKILLed %s into a burst of %d sign-ups, a new one started %s later (measured from its start)", burstLead, o.burst, o.workerGap)
	case "receiver-short":
		return fmt.Sprintf("%s receiver down %s", o.receiver, o.receiverShort)
	case "receiver-long":
		return fmt.Sprintf("%s receiver down %s", o.receiver, o.receiverLong)
	}
	return name
}

// sink is the webhook receiver: in this process (receiver) or a Node.js
// child (nodeReceiver). down takes it off the network, up brings it back on
// the same port.
type sink interface {
	url() string
	down()
	up(ctx context.Context) error
}

// system is one scenario's processes.
type system struct {
	dir       string
	redis     *redisServer
	caddy     *proc
	worker    *proc
	workers   int
	recv      sink
	endpoints string
	o         options
}

func newSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return "whsec_" + base64.StdEncoding.EncodeToString(b), nil
}

// runScenario starts a fresh system (Redis, upstream, Caddy, worker,
// receiver), runs traffic, injects and ends the fault, and waits for every
// event. Every process it starts is stopped before it returns.
func runScenario(ctx context.Context, o options, name, dir, rulesFile string) (outcome, error) {
	if err := os.MkdirAll(filepath.Join(dir, "redis"), 0o700); err != nil {
		return outcome{}, err
	}
	led := newLedger()
	s := &system{dir: dir, o: o, redis: &redisServer{dir: filepath.Join(dir, "redis"), fsync: "everysec"}}
	if o.redisSignal == "kill" {
		s.redis.fsync = "always"
	}
	if err := s.redis.start(ctx); err != nil {
		return outcome{}, err
	}
	defer func() { s.redis.p.stop() }()
	upAddr, stopUp, err := startUpstream(led)
	if err != nil {
		return outcome{}, err
	}
	defer stopUp()
	secret, err := newSecret()
	if err != nil {
		return outcome{}, err
	}
	if o.receiver == "node" {
		s.recv, err = newNodeReceiver(ctx, dir, secret, led)
	} else {
		s.recv, err = newReceiver(secret, led, s.o.receiverDelay)
	}
	if err != nil {
		return outcome{}, err
	}
	defer s.recv.down()
	eps, err := endpointsJSON(s.recv.url(), secret)
	if err != nil {
		return outcome{}, err
	}
	s.endpoints = filepath.Join(dir, "endpoints.json")
	if err := os.WriteFile(s.endpoints, eps, 0o600); err != nil {
		return outcome{}, err
	}
	port, err := freePort()
	if err != nil {
		return outcome{}, err
	}
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	cfg, err := caddyConfig(listen, upAddr, s.redis.addr(), rulesFile, dir)
	if err != nil {
		return outcome{}, err
	}
	if s.caddy, err = startCaddy(ctx, o.caddyBin, dir, listen, cfg); err != nil {
		return outcome{}, err
	}
	defer s.caddy.stop()
	if err := s.startWorker(); err != nil {
		return outcome{}, err
	}
	defer func() { s.worker.stop() }()

	tr := startTraffic(listen, o.rate)
	defer tr.end()
	if err := waitFirstDelivery(ctx, led); err != nil {
		return outcome{}, err
	}
	if err := sleep(ctx, o.before); err != nil {
		return outcome{}, err
	}
	if name == "worker-kill" && o.burst > 0 {
		// a burst just before the kill, so that the worker dies with tasks in hand
		tr.burst(o.burst)
		if err := sleep(ctx, burstLead); err != nil {
			return outcome{}, err
		}
	}
	start := time.Now()
	end, err := s.fault(ctx, name)
	if err != nil {
		return outcome{}, err
	}
	fmt.Printf("   fault ended %s; traffic goes on %s\n", time.Now().Format("15:04:05.000"), o.after)
	if err := sleep(ctx, o.after); err != nil {
		return outcome{}, err
	}
	tr.end()
	deadline := end.Add(o.maxDrain)
	lastPrint := time.Now()
	for {
		created, delivered := led.counts()
		if delivered == created {
			break
		}
		if time.Now().After(deadline) {
			fmt.Printf("   not drained within %s of the fault's end: %d of %d events delivered\n", o.maxDrain, delivered, created)
			break
		}
		if time.Since(lastPrint) >= 10*time.Second {
			fmt.Printf("   waiting: %d of %d events delivered, %.0f s after the fault's end\n", delivered, created, time.Since(end).Seconds())
			lastPrint = time.Now()
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return outcome{}, err
		}
	}
	if err := sleep(ctx, o.settle); err != nil {
		return outcome{}, err
	}
	out := led.summarize(start, end, time.Now())
	out.requestsTotal, out.clientErrors = int(tr.sent.Load()), int(tr.failed.Load())
	return out, nil
}

func (s *system) startWorker() error {
	s.workers++
	p, err := startWorker(s.o.authtapBin, s.dir, s.redis.addr(), s.endpoints, s.o.timeout, s.workers)
	if err != nil {
		return err
	}
	s.worker = p
	return nil
}

// fault injects and ends the named fault and returns the moment it ended:
// Redis answering PING again, SIGCONT sent, the new worker started, or the
// receiver listening again.
func (s *system) fault(ctx context.Context, name string) (time.Time, error) {
	fmt.Printf("   fault starts %s\n", time.Now().Format("15:04:05.000"))
	switch name {
	case "redis-stop":
		if s.o.redisSignal == "kill" {
			s.redis.p.kill()
		} else {
			s.redis.p.signal(syscall.SIGTERM)
			select {
			case <-s.redis.p.exited:
			case <-time.After(stopGrace):
				s.redis.p.kill()
			}
		}
		if err := sleep(ctx, s.o.outage); err != nil {
			return time.Time{}, err
		}
		if err := s.redis.start(ctx); err != nil {
			return time.Time{}, fmt.Errorf("restarting Redis: %w", err)
		}
		return time.Now(), nil
	case "redis-freeze":
		s.redis.p.signal(syscall.SIGSTOP)
		err := sleep(ctx, s.o.outage)
		s.redis.p.signal(syscall.SIGCONT)
		return time.Now(), err
	case "worker-kill":
		s.worker.kill()
		if err := sleep(ctx, s.o.workerGap); err != nil {
			return time.Time{}, err
		}
		at := time.Now()
		return at, s.startWorker()
	case "receiver-short", "receiver-long":
		d := s.o.receiverShort
		if name == "receiver-long" {
			d = s.o.receiverLong
		}
		s.recv.down()
		if err := sleep(ctx, d); err != nil {
			return time.Time{}, err
		}
		if err := s.recv.up(ctx); err != nil {
			return time.Time{}, err
		}
		return time.Now(), nil
	}
	return time.Time{}, fmt.Errorf("unknown scenario %q", name)
}

func waitFirstDelivery(ctx context.Context, led *ledger) error {
	deadline := time.Now().Add(firstDeliveryTimeout)
	for time.Now().Before(deadline) {
		if _, d := led.counts(); d > 0 {
			return nil
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	created, _ := led.counts()
	return fmt.Errorf("no event delivered within %s of the traffic's start (%d created): the system is not delivering", firstDeliveryTimeout, created)
}

// ---- output -----------------------------------------------------------------

type row struct {
	name string
	out  outcome
}

func printTable(o options, rows []row) {
	if len(rows) == 0 {
		return
	}
	fmt.Printf("\n| fault (%g sign-ups/s) | events | waiting at fault start | backlog at fault end | drained after the fault's end | slowest event | p99 | undelivered | under a 2nd webhook-id | same-id redeliveries | bad signatures | failed requests | goal ≤ %s |\n",
		o.rate, drainGoal)
	fmt.Println("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range rows {
		v := "MET"
		if !r.out.ok(drainGoal) {
			v = "MISSED"
		}
		fmt.Printf("| %s | %d | %d | %d | %s | %s | %.1f s | %d | %d | %d | %d | %d | %s |\n",
			faultText(o, r.name), r.out.created, r.out.atStart, r.out.backlog, r.out.drainText(o.maxDrain), r.out.slowestText(), r.out.p99.Seconds(),
			r.out.lost, r.out.secondID, r.out.redelivered, r.out.badSig+r.out.badBody+r.out.mismatch, r.out.clientErrors, v)
	}
}

func printHeader(o options) {
	fmt.Printf("authtap fault recovery benchmark, %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Printf("command:   go run ./bench/faults %s\n", strings.Join(os.Args[1:], " "))
	fmt.Printf("machine:   %d CPUs, %s %s/%s, load average at start %s\n", runtime.NumCPU(), runtime.Version(), runtime.GOOS, runtime.GOARCH, benchenv.LoadAvg())
	benchenv.PrintBuild()
	fmt.Printf("settings:  -rate %g -outage %s -receiver-short %s -receiver-long %s -worker-gap %s -burst %d -before %s -after %s -max-drain %s -settle %s -redis-signal %s -receiver %s -receiver-delay %s -delivery-timeout %s\n",
		o.rate, o.outage, o.receiverShort, o.receiverLong, o.workerGap, o.burst, o.before, o.after, o.maxDrain, o.settle, o.redisSignal, o.receiver, o.receiverDelay, o.timeout)
}
