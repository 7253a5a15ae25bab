package worker

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// redisLogEvery is how often one go-redis message is logged at most: while
// Redis is down, go-redis reports every failed dial of every pool.
const redisLogEvery = time.Minute

// SetRedisLogger sends go-redis's own messages (failed dials, pool trouble),
// which go to stderr by default, to log as warnings named "redis", each
// distinct message at most once a minute. go-redis has one logger per
// process, so the last call wins; Caddy's authtap app calls it on every
// config load with that config's logger.
func SetRedisLogger(log *zap.Logger) {
	core := zapcore.NewSamplerWithOptions(log.Core(), redisLogEvery, 1, 0)
	redis.SetLogger(redisLogger{log.WithOptions(zap.WrapCore(func(zapcore.Core) zapcore.Core { return core })).Named("redis")})
}

type redisLogger struct{ log *zap.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Warn(strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "))
}
