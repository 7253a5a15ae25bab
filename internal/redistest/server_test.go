package redistest

import "testing"

func TestLaunch(t *testing.T) {
	s, err := Launch(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if err := s.ping(); err != nil {
		t.Fatalf("ping after Launch: %v", err)
	}
}
