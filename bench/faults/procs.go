package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/authtap/authtap/internal/redistest"
)

// stopGrace is how long a child gets after SIGTERM before it is killed.
const stopGrace = 5 * time.Second

// proc is a child process started by the benchmark.
type proc struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has exited and been reaped
}

// startProc starts cmd with its output (stderr, and stdout unless set) in logFile; the child dies with this
// process (Pdeathsig) even if the benchmark is killed.
func startProc(name, logFile string, cmd *exec.Cmd) (*proc, error) {
	logf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%s: opening log: %w", name, err)
	}
	if cmd.Stdout == nil {
		cmd.Stdout = logf
	}
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.exited) }()
	return p, nil
}

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// stop resumes the process if it was stopped, asks it to exit (SIGTERM) and
// kills it after stopGrace. It is idempotent.
func (p *proc) stop() {
	if p == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	p.signal(syscall.SIGCONT)
	p.signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopGrace):
		p.kill()
	}
}

// kill sends SIGKILL and waits until the process is reaped.
func (p *proc) kill() {
	p.signal(syscall.SIGKILL)
	<-p.exited
}

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// ---- redis ------------------------------------------------------------------

// redisServer is a private redis-server with AOF persistence, so that a
// restart on the same port and directory keeps every queued task.
type redisServer struct {
	dir   string
	port  int
	fsync string // appendfsync policy
	p     *proc
}

func (r *redisServer) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// start starts redis-server on r.port (a free one when 0) and waits for PONG.
func (r *redisServer) start(ctx context.Context) error {
	if r.port == 0 {
		port, err := freePort()
		if err != nil {
			return err
		}
		r.port = port
	}
	var lastErr error
	for attempt := 0; attempt < 50; attempt++ { // the port may still be held for a moment after a stop
		cmd := exec.Command("redis-server",
			"--bind", "127.0.0.1", "--port", strconv.Itoa(r.port), "--dir", r.dir,
			"--appendonly", "yes", "--appendfsync", r.fsync, "--save", "",
			"--maxmemory-policy", "noeviction", "--daemonize", "no", "--protected-mode", "yes",
			"--logfile", filepath.Join(r.dir, "redis.log"))
		p, err := startProc("redis-server", filepath.Join(r.dir, "redis.stdout"), cmd)
		if err != nil {
			return err
		}
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) && p.alive() {
			if lastErr = pingRedis(r.addr()); lastErr == nil {
				r.p = p
				return nil
			}
			if err := sleep(ctx, 20*time.Millisecond); err != nil {
				p.kill()
				return err
			}
		}
		p.kill()
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
	log, _ := os.ReadFile(filepath.Join(r.dir, "redis.log"))
	return fmt.Errorf("redis-server on %s did not answer PING (%v); log tail:\n%s", r.addr(), lastErr, tail(log, 2000))
}

func pingRedis(addr string) error { return redistest.Ping(addr) }

// ---- caddy and worker ---------------------------------------------------------

// caddyConfig is the JSON config of the Caddy under test: the authtap handler
// (mode test, so that a plain-http loopback test endpoint takes the events) in
// front of reverse_proxy to the upstream; the in-process worker off, so that
// the standalone worker does every delivery.
func caddyConfig(listen, upstream, redisAddr, rulesFile, dir string) ([]byte, error) {
	return json.MarshalIndent(map[string]any{
		"admin":   map[string]any{"disabled": true},
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "WARN"}}},
		"storage": map[string]any{"module": "file_system", "root": filepath.Join(dir, "caddy-data")},
		"apps": map[string]any{
			"authtap": map[string]any{
				"redis":     "redis://" + redisAddr + "/0",
				"worker":    map[string]any{"enabled": false},
				"spool_dir": filepath.Join(dir, "spool"),
			},
			"http": map[string]any{"servers": map[string]any{"bench": map[string]any{
				"listen":          []string{listen},
				"automatic_https": map[string]any{"disable": true},
				"routes": []any{map[string]any{"handle": []any{
					map[string]any{"handler": "authtap", "rules": []string{rulesFile}, "source": "bench", "mode": "test"},
					map[string]any{"handler": "reverse_proxy", "upstreams": []any{map[string]any{"dial": upstream}}},
				}}},
			}}},
		},
	}, "", "\t")
}

func startCaddy(ctx context.Context, bin, dir, listen string, config []byte) (*proc, error) {
	cfgFile := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(cfgFile, config, 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", cfgFile)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+filepath.Join(dir, "xdg"), "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg"))
	logFile := filepath.Join(dir, "caddy.log")
	p, err := startProc("caddy", logFile, cmd)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if !p.alive() {
			log, _ := os.ReadFile(logFile)
			return nil, fmt.Errorf("caddy exited during start:\n%s", tail(log, 4000))
		}
		resp, err := http.Get("http://" + listen + "/static/ready")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, nil
			}
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			p.stop()
			return nil, err
		}
	}
	p.stop()
	return nil, fmt.Errorf("caddy did not answer on %s within 30s (see %s)", listen, logFile)
}

// startWorker starts `authtap worker` against Redis with the endpoints file
// (and --timeout when timeout is not 0).
func startWorker(bin, dir, redisAddr, endpointsFile string, timeout time.Duration, n int) (*proc, error) {
	args := []string{"worker", "--redis", "redis://" + redisAddr + "/0", "--endpoints", endpointsFile}
	if timeout > 0 {
		args = append(args, "--timeout", timeout.String())
	}
	cmd := exec.Command(bin, args...)
	return startProc("authtap worker", filepath.Join(dir, fmt.Sprintf("worker-%d.log", n)), cmd)
}

// endpointsJSON is the standalone worker's endpoints file: one read-only
// test endpoint (plain http to loopback) subscribed to user.created.
func endpointsJSON(url, secret string) ([]byte, error) {
	return json.Marshal([]map[string]any{{
		"id": "bench", "url": url, "mode": "test", "secret": secret, "events": []string{"user.created"},
	}})
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
