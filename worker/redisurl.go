package worker

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// ParseRedisURL turns a Redis URL into asynq connection options:
//
//	redis://[user:password@]host[:port][/db]
//	rediss://[user:password@]host[:port][/db]          (TLS)
//	redis-socket://[:password@]/path/to/redis.sock[?db=N]
//	redis-sentinel://[:password@]host1:port,host2:port[?master=NAME]
//	redis-cluster://[user:password@]host1:port,host2:port
//
// Errors name the part that is wrong and never repeat a password.
func ParseRedisURL(s string) (asynq.RedisConnOpt, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("parsing redis URL: empty")
	}
	scheme, _, ok := strings.Cut(s, "://")
	if !ok {
		return nil, errors.New("parsing redis URL: missing scheme (want redis://, rediss://, redis-socket://, redis-sentinel:// or redis-cluster://)")
	}
	u, err := url.Parse(s)
	if err != nil {
		// *url.Error repeats the whole URL (password included); keep only its cause.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("parsing %s URL: %v", scheme, err)
	}
	var user, password string
	if u.User != nil {
		user = u.User.Username()
		password, _ = u.User.Password()
	}
	switch u.Scheme {
	case "redis", "rediss":
		if u.Host == "" {
			return nil, fmt.Errorf("parsing %s URL: missing host", u.Scheme)
		}
		if err := checkHostPorts(u.Scheme, u.Host); err != nil {
			return nil, err
		}
		if p := strings.Trim(u.Path, "/"); p != "" {
			if _, err := strconv.Atoi(p); err != nil {
				return nil, fmt.Errorf("parsing %s URL: database %q is not a number", u.Scheme, p)
			}
		}
		opt, err := asynq.ParseRedisURI(s)
		if err != nil {
			return nil, fmt.Errorf("parsing %s URL: %w", u.Scheme, err)
		}
		o := opt.(asynq.RedisClientOpt)
		o.Username = user
		return o, nil
	case "redis-socket":
		if u.Path == "" {
			return nil, errors.New("parsing redis-socket URL: missing socket path")
		}
		if db := u.Query().Get("db"); db != "" {
			if _, err := strconv.Atoi(db); err != nil {
				return nil, fmt.Errorf("parsing redis-socket URL: db %q is not a number", db)
			}
		}
		opt, err := asynq.ParseRedisURI(s)
		if err != nil {
			return nil, fmt.Errorf("parsing redis-socket URL: %w", err)
		}
		o := opt.(asynq.RedisClientOpt)
		o.Username = user
		return o, nil
	case "redis-sentinel":
		if u.Host == "" {
			return nil, errors.New("parsing redis-sentinel URL: missing sentinel hosts")
		}
		if err := checkHostPorts(u.Scheme, u.Host); err != nil {
			return nil, err
		}
		master := u.Query().Get("master")
		if master == "" {
			return nil, errors.New("parsing redis-sentinel URL: missing ?master=NAME")
		}
		return asynq.RedisFailoverClientOpt{
			MasterName: master, SentinelAddrs: strings.Split(u.Host, ","), SentinelPassword: password,
			Username: user, Password: password,
		}, nil
	case "redis-cluster":
		if u.Host == "" {
			return nil, errors.New("parsing redis-cluster URL: missing node addresses")
		}
		if err := checkHostPorts(u.Scheme, u.Host); err != nil {
			return nil, err
		}
		if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
			return nil, fmt.Errorf("parsing redis-cluster URL: database %q: Redis Cluster has only database 0", p)
		}
		return asynq.RedisClusterClientOpt{Addrs: strings.Split(u.Host, ","), Username: user, Password: password}, nil
	default:
		return nil, fmt.Errorf("parsing redis URL: unsupported scheme %q (want redis, rediss, redis-socket, redis-sentinel or redis-cluster)", u.Scheme)
	}
}

// checkHostPorts checks a comma-separated list of host[:port].
func checkHostPorts(scheme, hosts string) error {
	for h := range strings.SplitSeq(hosts, ",") {
		if h == "" {
			return fmt.Errorf("parsing %s URL: empty address in host list", scheme)
		}
		host, port, err := net.SplitHostPort(h)
		if err != nil {
			if strings.Contains(err.Error(), "missing port") {
				continue
			}
			return fmt.Errorf("parsing %s URL: address %q: %v", scheme, h, err)
		}
		if host == "" {
			return fmt.Errorf("parsing %s URL: address %q has no host", scheme, h)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("parsing %s URL: address %q: port must be 1 to 65535", scheme, h)
		}
	}
	return nil
}

// RedisClient returns the go-redis client described by opt.
func RedisClient(opt asynq.RedisConnOpt) (redis.UniversalClient, error) {
	if opt == nil {
		return nil, errors.New("making redis client: no connection options")
	}
	c, ok := opt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, fmt.Errorf("making redis client: %T does not make a redis.UniversalClient", opt)
	}
	return c, nil
}

// FailFastTimeout caps every wait of a [FailFastRedisClient] (dial, pool, read,
// write) when the caller's context has no earlier deadline.
const FailFastTimeout = 5 * time.Second

// FailFastRedisClient returns a go-redis client for opt that gives up rather
// than waits, for callers that have somewhere else to put their data (the
// Caddy app's spool): every wait — the dial, a free connection, each read and
// write — ends at the context's deadline (go-redis ContextTimeoutEnabled), so
// that one command, retries included, never outlasts it; a failed dial is not
// dialled again (go-redis's default dials five times, 100ms apart, which a
// refused connection turns into a half-second wait); a failed command is
// retried once, at once, on a fresh connection (a pooled connection that
// Redis or a proxy closed while it was idle). Without a deadline, each wait is
// capped by FailFastTimeout. TLS, credentials, database, sentinel and cluster
// settings are opt's.
func FailFastRedisClient(opt asynq.RedisConnOpt) (redis.UniversalClient, error) {
	const (
		dialerRetries = 1  // one dial per connection: no retry
		maxRetries    = 1  // one retry of a failed command
		noBackoff     = -1 // go-redis: -1 disables the backoff between retries
	)
	capped := func(d time.Duration) time.Duration {
		if d <= 0 || d > FailFastTimeout {
			return FailFastTimeout
		}
		return d
	}
	switch o := opt.(type) {
	case asynq.RedisClientOpt:
		return redis.NewClient(&redis.Options{
			Network: o.Network, Addr: o.Addr, Username: o.Username, Password: o.Password, DB: o.DB,
			TLSConfig: o.TLSConfig, PoolSize: o.PoolSize,
			DialTimeout: capped(o.DialTimeout), ReadTimeout: capped(o.ReadTimeout), WriteTimeout: capped(o.WriteTimeout),
			PoolTimeout: FailFastTimeout, ContextTimeoutEnabled: true,
			DialerRetries: dialerRetries, MaxRetries: maxRetries, MinRetryBackoff: noBackoff, MaxRetryBackoff: noBackoff,
		}), nil
	case asynq.RedisFailoverClientOpt:
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: o.MasterName, SentinelAddrs: o.SentinelAddrs,
			SentinelUsername: o.SentinelUsername, SentinelPassword: o.SentinelPassword,
			Username: o.Username, Password: o.Password, DB: o.DB, TLSConfig: o.TLSConfig, PoolSize: o.PoolSize,
			DialTimeout: capped(o.DialTimeout), ReadTimeout: capped(o.ReadTimeout), WriteTimeout: capped(o.WriteTimeout),
			PoolTimeout: FailFastTimeout, ContextTimeoutEnabled: true,
			DialerRetries: dialerRetries, MaxRetries: maxRetries, MinRetryBackoff: noBackoff, MaxRetryBackoff: noBackoff,
		}), nil
	case asynq.RedisClusterClientOpt:
		return redis.NewClusterClient(&redis.ClusterOptions{
			Addrs: o.Addrs, MaxRedirects: o.MaxRedirects, Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig,
			DialTimeout: capped(o.DialTimeout), ReadTimeout: capped(o.ReadTimeout), WriteTimeout: capped(o.WriteTimeout),
			PoolTimeout: FailFastTimeout, ContextTimeoutEnabled: true,
			DialerRetries: dialerRetries, MaxRetries: maxRetries, MinRetryBackoff: noBackoff, MaxRetryBackoff: noBackoff,
		}), nil
	}
	return RedisClient(opt)
}
