package worker

import (
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

func TestParseRedisURL(t *testing.T) {
	for i, tc := range []struct {
		url     string
		check   func(asynq.RedisConnOpt) bool
		wantErr string
	}{
		{url: "redis://127.0.0.1:6379/2", check: func(o asynq.RedisConnOpt) bool {
			c := o.(asynq.RedisClientOpt)
			return c.Addr == "127.0.0.1:6379" && c.DB == 2 && c.TLSConfig == nil
		}},
		{url: "redis://user:pw@localhost:6380", check: func(o asynq.RedisConnOpt) bool {
			c := o.(asynq.RedisClientOpt)
			return c.Username == "user" && c.Password == "pw" && c.Addr == "localhost:6380"
		}},
		{url: "rediss://:pw@redis.example.com:6379/0", check: func(o asynq.RedisConnOpt) bool {
			c := o.(asynq.RedisClientOpt)
			return c.TLSConfig != nil && c.TLSConfig.ServerName == "redis.example.com"
		}},
		{url: "redis-socket:///run/redis.sock?db=3", check: func(o asynq.RedisConnOpt) bool {
			c := o.(asynq.RedisClientOpt)
			return c.Network == "unix" && c.Addr == "/run/redis.sock" && c.DB == 3
		}},
		{url: "redis-sentinel://:pw@s1:26379,s2:26379?master=mymaster", check: func(o asynq.RedisConnOpt) bool {
			c := o.(asynq.RedisFailoverClientOpt)
			return c.MasterName == "mymaster" && len(c.SentinelAddrs) == 2 && c.SentinelAddrs[1] == "s2:26379"
		}},
		{url: "redis-cluster://n1:7000,n2:7001,n3:7002", check: func(o asynq.RedisConnOpt) bool {
			c := o.(asynq.RedisClusterClientOpt)
			return len(c.Addrs) == 3 && c.Addrs[0] == "n1:7000" && c.Addrs[2] == "n3:7002"
		}},
		{url: "redis-cluster://:s3cret@n1:7000,n2:7001", check: func(o asynq.RedisConnOpt) bool {
			return o.(asynq.RedisClusterClientOpt).Password == "s3cret"
		}},
		{url: "", wantErr: "empty"},
		{url: "127.0.0.1:6379", wantErr: "missing scheme"},
		{url: "http://:s3cret@x:1", wantErr: "unsupported scheme"},
		{url: "redis://:s3cret@host:99999/0", wantErr: "port"},
		{url: "redis://:s3cret@host:6379/abc", wantErr: "database"},
		{url: "redis://:s3cret@", wantErr: "missing host"},
		{url: "redis-sentinel://:s3cret@s1:26379", wantErr: "master"},
		{url: "redis-cluster://:s3cret@n1:7000,,n2:7001", wantErr: "empty address"},
		{url: "redis-cluster://:s3cret@n1:7000/3", wantErr: "database 0"},
		{url: "redis-socket://:s3cret@", wantErr: "socket path"},
		{url: "redis://:s3cret@host:6379/0\x7f", wantErr: "redis URL"},
	} {
		opt, err := ParseRedisURL(tc.url)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%d: ParseRedisURL(%q) error = %v, want one containing %q", i, tc.url, err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("%d: error repeats the password: %v", i, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%d: ParseRedisURL(%q): %v", i, tc.url, err)
			continue
		}
		if !tc.check(opt) {
			t.Errorf("%d: ParseRedisURL(%q) = %#v", i, tc.url, opt)
		}
	}
}

func TestRedisClient(t *testing.T) {
	for _, u := range []string{"redis://127.0.0.1:1/0", "redis-cluster://127.0.0.1:1,127.0.0.1:2"} {
		opt, err := ParseRedisURL(u)
		if err != nil {
			t.Fatal(err)
		}
		c, err := RedisClient(opt)
		if err != nil {
			t.Fatal(err)
		}
		if _, isCluster := c.(*redis.ClusterClient); isCluster != strings.HasPrefix(u, "redis-cluster") {
			t.Errorf("%s gave a %T", u, c)
		}
		_ = c.Close()
	}
	if _, err := RedisClient(nil); err == nil {
		t.Error("RedisClient(nil) did not fail")
	}
}
