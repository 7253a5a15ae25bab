package redistest

import (
	"bufio"
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
)

// Server is a running private redis-server.
type Server struct {
	// Addr is host:port on the loopback interface.
	Addr string
	// URL is redis://Addr/0.
	URL string
	// Port is the TCP port.
	Port int

	dir   string
	extra []string // more redis-server arguments
	cmd   *exec.Cmd
	t     testing.TB
}

// Start starts a redis-server on a free loopback port and registers its stop
// with t.Cleanup. The test is skipped only when AUTHTAP_SKIP_REDIS=1; a missing
// redis-server otherwise fails the test, since .ci/run installs it.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartArgs(t)
}

// StartArgs is Start with more redis-server arguments. They come after the
// defaults and so override them: StartArgs(t, "--appendonly", "yes") keeps its
// data across Stop and Restart (the directory is the same), and
// StartArgs(t, "--maxmemory-policy", "allkeys-lru") makes a Redis that evicts.
func StartArgs(t testing.TB, args ...string) *Server {
	t.Helper()
	if os.Getenv("AUTHTAP_SKIP_REDIS") == "1" {
		t.Skip("AUTHTAP_SKIP_REDIS=1")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found on PATH (bash .ci/run installs it): %v", err)
	}
	s := &Server{dir: t.TempDir(), t: t, extra: args}
	if err := s.startOnFreePort(bin, freePort, 5); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

// startOnFreePort starts the server on a port pick returns, trying up to
// attempts ports (another process may take a port between pick and start).
func (s *Server) startOnFreePort(bin string, pick func() (int, error), attempts int) error {
	var lastErr error
	for range attempts {
		port, err := pick()
		if err != nil {
			return fmt.Errorf("finding a free port: %w", err)
		}
		if lastErr = s.start(bin, port); lastErr == nil {
			return nil
		}
	}
	return lastErr
}

func (s *Server) start(bin string, port int) error {
	s.Port = port
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	s.URL = "redis://" + s.Addr + "/0"
	args := []string{
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--daemonize", "no", "--protected-mode", "yes",
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}
	s.cmd = exec.Command(bin, append(args, s.extra...)...)
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s.ping() == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return fmt.Errorf("redis-server on %s did not answer PING within 10s; log:\n%s", s.Addr, log)
}

func (s *Server) ping() error { return Ping(s.Addr) }

// Ping sends one PING to the Redis at addr on a fresh connection and checks
// for +PONG, within about a second.
func Ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("unexpected PING reply %q", line)
	}
	return nil
}

// Stop stops the server (idempotent). Data is lost.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

// Restart starts the server again on the same port (after Stop), e.g. to test
// that a client recovers when Redis comes back. The data is gone, unless the
// server was started with persistence (StartArgs "--appendonly", "yes").
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	bin, _ := exec.LookPath("redis-server")
	var err error
	for i := 0; i < 50; i++ {
		if err = s.start(bin, s.Port); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("restarting redis-server on %s: %v", s.Addr, err)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
