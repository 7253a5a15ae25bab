package worker

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/authtap/authtap/internal/redistest"
)

// CheckRedisConfig against real redis-servers configured well and badly: a
// warning names each setting that would lose or evict tasks, a good one gives
// none, and a Redis that refuses CONFIG (as managed ones do) is logged at
// info, never as a failure.
func TestCheckRedisConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string // settings warned about
		info bool     // "could not check" at info
	}{
		{"memory only", nil, []string{"appendonly"}, false}, // redistest's default: --appendonly no --save ""
		{"rdb snapshots only", []string{"--save", "60 1"}, []string{"appendonly"}, false},
		{"evicts", []string{"--appendonly", "yes", "--maxmemory-policy", "allkeys-lru"}, []string{"maxmemory-policy"}, false},
		{"volatile eviction", []string{"--appendonly", "yes", "--maxmemory-policy", "volatile-ttl"}, []string{"maxmemory-policy"}, false},
		{"aof left to the os", []string{"--appendonly", "yes", "--appendfsync", "no"}, []string{"appendfsync"}, false},
		{"both", []string{"--maxmemory-policy", "allkeys-lru"}, []string{"appendonly", "maxmemory-policy"}, false},
		{"aof everysec", []string{"--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"}, nil, false},
		{"aof always", []string{"--appendonly", "yes", "--appendfsync", "always"}, nil, false},
		{"config disabled", []string{"--rename-command", "CONFIG", ""}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.StartArgs(t, tc.args...)
			opt, err := ParseRedisURL(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zapcore.DebugLevel)
			problems := CheckRedisConfig(context.Background(), opt, zap.New(core))
			var warned []string
			for _, e := range logs.FilterLevelExact(zapcore.WarnLevel).All() {
				setting, _ := e.ContextMap()["setting"].(string)
				if !strings.Contains(e.Message, setting) {
					t.Errorf("warning %q does not name its setting %q", e.Message, setting)
				}
				warned = append(warned, setting)
			}
			if strings.Join(warned, ",") != strings.Join(tc.want, ",") || len(problems) != len(tc.want) {
				t.Errorf("warned about %v (problems %+v), want %v; logs %v", warned, problems, tc.want, logs.All())
			}
			infos := logs.FilterLevelExact(zapcore.InfoLevel).FilterMessageSnippet("could not check").Len()
			if (infos == 1) != tc.info || infos > 1 {
				t.Errorf("%d could-not-check infos, want %v; logs %v", infos, tc.info, logs.All())
			}
			if ok := logs.FilterMessageSnippet("redis keeps queued tasks").Len() == 1; ok != (len(tc.want) == 0 && !tc.info) {
				t.Errorf("all-good message logged: %v; logs %v", ok, logs.All())
			}
			if logs.FilterLevelExact(zapcore.ErrorLevel).Len() > 0 {
				t.Errorf("errors logged: %v", logs.All())
			}
		})
	}

	t.Run("unreachable", func(t *testing.T) {
		opt, _ := ParseRedisURL("redis://" + refusedAddr(t) + "/0")
		core, logs := observer.New(zapcore.DebugLevel)
		if p := CheckRedisConfig(context.Background(), opt, zap.New(core)); len(p) != 0 {
			t.Fatalf("problems %+v", p)
		}
		if logs.FilterLevelExact(zapcore.InfoLevel).FilterMessageSnippet("could not check").Len() != 1 || logs.FilterLevelExact(zapcore.WarnLevel).Len() != 0 {
			t.Fatalf("logs %v", logs.All())
		}
	})

	t.Run("cluster", func(t *testing.T) {
		cl := redistest.StartCluster(t, 3)
		opt, err := ParseRedisURL(cl.URL)
		if err != nil {
			t.Fatal(err)
		}
		core, logs := observer.New(zapcore.DebugLevel)
		problems := CheckRedisConfig(context.Background(), opt, zap.New(core))
		// redistest's nodes persist nothing: one warning per master, naming it.
		if len(problems) != 3 {
			t.Fatalf("problems %+v, want appendonly on each of 3 masters; logs %v", problems, logs.All())
		}
		nodes := map[string]bool{}
		for _, p := range problems {
			if p.Setting != "appendonly" || p.Node == "" {
				t.Errorf("problem %+v", p)
			}
			nodes[p.Node] = true
		}
		if len(nodes) != 3 {
			t.Errorf("nodes %v", nodes)
		}
	})
}
