package worker

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// go-redis's failed dials reach the zap logger as warnings named "redis",
// each distinct message once a minute, instead of stderr on every dial.
func TestSetRedisLogger(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	SetRedisLogger(zap.New(core))
	t.Cleanup(logging.Enable) // go-redis's default: stderr

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second})
	defer rdb.Close()
	for range 3 {
		if err := rdb.Ping(context.Background()).Err(); err == nil {
			t.Fatal("ping reached a closed port")
		}
	}
	entries := logs.FilterMessageSnippet("failed to dial").FilterMessageSnippet(addr).AllUntimed()
	if len(entries) != 1 {
		t.Fatalf("got %d dial warnings for 3 failed pings, want 1: %v", len(entries), logs.AllUntimed())
	}
	e := entries[0]
	if e.Level != zap.WarnLevel || e.LoggerName != "redis" || strings.HasPrefix(e.Message, "redis:") {
		t.Errorf("warning = %s %q %q", e.Level, e.LoggerName, e.Message)
	}
}
