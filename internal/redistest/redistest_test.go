package redistest

import (
	"net"
	"testing"
)

func TestStartStopRestart(t *testing.T) {
	s := Start(t)
	if err := s.ping(); err != nil {
		t.Fatalf("ping after start: %v", err)
	}
	s.Stop()
	if _, err := net.Dial("tcp", s.Addr); err == nil {
		t.Fatalf("%s still accepts connections after Stop", s.Addr)
	}
	s.Restart()
	if err := s.ping(); err != nil {
		t.Fatalf("ping after restart: %v", err)
	}
}
