package redistest

import (
	"fmt"
	"os/exec"
)

// Launch starts a private redis-server outside of a test (e.g. for a
// benchmark program), keeping its files in dir. Call Stop when done; the
// server also dies with the calling process. Restart is for tests only.
func Launch(dir string) (*Server, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, fmt.Errorf("redis-server not found on PATH: %w", err)
	}
	s := &Server{dir: dir}
	if err := s.startOnFreePort(bin, freePort, 5); err != nil {
		return nil, fmt.Errorf("starting redis-server: %w", err)
	}
	return s, nil
}

// Pid returns the process id of the running redis-server, or 0.
func (s *Server) Pid() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}
