package worker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// RedisCheckTimeout bounds CheckRedisConfig.
const RedisCheckTimeout = 5 * time.Second

// RedisConfigProblem is one setting under which Redis would lose or evict
// queued tasks.
type RedisConfigProblem struct {
	// Node is the address of the Redis that has it (one of a cluster's masters), or "".
	Node string
	// Setting is the Redis setting, e.g. "appendonly" or "maxmemory-policy".
	Setting string
	// Value is its current value.
	Value string
	// Want is what authtap needs it to be.
	Want string
	// Loses says what goes wrong.
	Loses string
}

// CheckRedisConfig asks the Redis of opt, once, for the settings that decide
// whether queued tasks survive a restart and a full memory (CONFIG GET
// appendonly, appendfsync, save, maxmemory-policy; on a cluster, of every
// master) and logs a warning naming each setting under which Redis would lose
// or evict tasks. A Redis that refuses CONFIG (managed Redis often does) or
// does not answer is logged at info as not checked; the check never fails
// anything. It returns the problems it found.
func CheckRedisConfig(ctx context.Context, opt asynq.RedisConnOpt, log *zap.Logger) []RedisConfigProblem {
	if log == nil {
		log = zap.NewNop()
	}
	ctx, cancel := context.WithTimeout(ctx, RedisCheckTimeout)
	defer cancel()
	rdb, err := FailFastRedisClient(opt)
	if err != nil {
		log.Info("authtap: could not check redis persistence and eviction settings", zap.Error(err))
		return nil
	}
	defer rdb.Close()

	var (
		mu       sync.Mutex
		problems []RedisConfigProblem
		errs     []error
	)
	check := func(ctx context.Context, c *redis.Client, node string) error {
		ps, err := redisConfigProblems(ctx, c, node)
		mu.Lock()
		defer mu.Unlock()
		problems = append(problems, ps...)
		if err != nil {
			errs = append(errs, err)
		}
		return nil
	}
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		if err := c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			return check(ctx, n, n.Options().Addr)
		}); err != nil {
			errs = append(errs, err)
		}
	case *redis.Client:
		_ = check(ctx, c, "")
	default:
		errs = append(errs, fmt.Errorf("unexpected client %T", rdb))
	}
	for _, p := range problems {
		fields := []zap.Field{zap.String("setting", p.Setting), zap.String("value", p.Value), zap.String("want", p.Want)}
		if p.Node != "" {
			fields = append(fields, zap.String("node", p.Node))
		}
		log.Warn(fmt.Sprintf("authtap: redis %s is %q: %s; set %s", p.Setting, p.Value, p.Loses, p.Want), fields...)
	}
	if len(problems) == 0 && len(errs) == 0 {
		log.Debug("authtap: redis keeps queued tasks (appendonly yes, appendfsync everysec or always, maxmemory-policy noeviction)")
	}
	if len(errs) > 0 {
		log.Info("authtap: could not check redis persistence and eviction settings (CONFIG GET appendonly, save, maxmemory-policy); make sure Redis persists with AOF and never evicts (see the README's production section)",
			zap.Error(errors.Join(errs...)))
	}
	return problems
}

// redisConfigProblems reads the settings of one Redis.
func redisConfigProblems(ctx context.Context, c *redis.Client, node string) ([]RedisConfigProblem, error) {
	cfg := map[string]string{}
	for _, key := range []string{"appendonly", "appendfsync", "save", "maxmemory-policy"} {
		m, err := c.ConfigGet(ctx, key).Result()
		if err != nil {
			return nil, fmt.Errorf("CONFIG GET %s: %w", key, err)
		}
		v, ok := m[key]
		if !ok {
			return nil, fmt.Errorf("CONFIG GET %s: not in the reply", key)
		}
		cfg[key] = strings.ToLower(strings.TrimSpace(v))
	}
	var ps []RedisConfigProblem
	add := func(setting, want, loses string) {
		ps = append(ps, RedisConfigProblem{Node: node, Setting: setting, Value: cfg[setting], Want: want, Loses: loses})
	}
	switch {
	case cfg["appendonly"] != "yes" && cfg["save"] == "":
		add("appendonly", "appendonly yes (with appendfsync everysec or always)",
			`with save "" too, queued tasks live only in memory: a Redis restart loses every event not yet delivered`)
	case cfg["appendonly"] != "yes":
		add("appendonly", "appendonly yes (with appendfsync everysec or always)",
			"only RDB snapshots ("+cfg["save"]+") persist tasks: a Redis restart loses the events queued since the last snapshot")
	case cfg["appendfsync"] != "always" && cfg["appendfsync"] != "everysec":
		add("appendfsync", "appendfsync everysec or always",
			"the OS decides when the AOF reaches the disk: a machine crash loses the events of the last ~30s")
	}
	if cfg["maxmemory-policy"] != "noeviction" {
		add("maxmemory-policy", "maxmemory-policy noeviction",
			"a Redis that reaches maxmemory deletes keys, queued tasks and delivery leases among them")
	}
	return ps, nil
}
