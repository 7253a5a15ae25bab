package admin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Coverage: the successful mutations that no rule matched. The Caddy handler
// counts them per method and route shape (rules.RouteShape) and keeps a few
// redacted sample exchanges of each shape; Coverage is where both live in
// Redis, read by GET /unmatched and `authtap rules suggest`. Everything it
// keeps is bounded: at most MaxUnmatchedShapes shapes (a new shape is refused
// once that many are kept), at most MaxUnmatchedSamples samples of at most
// MaxSampleSize bytes per shape, and every key expires DefaultUnmatchedTTL
// after the shape was last seen.
const (
	// MaxUnmatchedShapes bounds the route shapes kept in Redis (and the
	// shapes one handler tracks, and the series of authtap_unmatched_total).
	MaxUnmatchedShapes = 500
	// DefaultUnmatchedSamples is how many sample exchanges of each shape are
	// kept unless the handler's coverage option says otherwise.
	DefaultUnmatchedSamples = 3
	// MaxUnmatchedSamples bounds the samples kept per shape.
	MaxUnmatchedSamples = 10
	// MaxSampleBody is the largest request or response body a sample keeps,
	// in bytes, before redaction; a larger one is left out with a note. The
	// handler buffers no more than this for a sample.
	MaxSampleBody = 4 << 10
	// MaxSampleHeaders is how many headers of each side a sample keeps;
	// several values of one header are joined with ", ".
	MaxSampleHeaders = 16
	// MaxSampleHeaderLen bounds one kept header value, in bytes.
	MaxSampleHeaderLen = 256
	// MaxSamplePathLen bounds a sample's path and its query, each, in bytes.
	MaxSamplePathLen = 2048
	// MaxSampleSize bounds one sample as stored (its JSON), in bytes; a larger
	// one is refused with ErrSampleTooLarge.
	MaxSampleSize = 24 << 10
	// DefaultUnmatchedTTL is how long a shape (its count and samples) is kept
	// after it was last seen.
	DefaultUnmatchedTTL = 7 * 24 * time.Hour
)

// Redis keys of coverage. They share the hash tag {authtap-unmatched}, so
// that the scripts below work on Redis Cluster too.
const (
	keyUnmatchedIndex         = "authtap:{authtap-unmatched}:shapes"   // ZSET id → last seen (unix ms)
	keyUnmatchedShapePrefix   = "authtap:{authtap-unmatched}:shape:"   // + id → HASH method, route, count, first_seen, last_seen (unix ms)
	keyUnmatchedSamplesPrefix = "authtap:{authtap-unmatched}:samples:" // + id → LIST of sample JSON, newest first
)

func unmatchedShapeKey(id string) string   { return keyUnmatchedShapePrefix + id }
func unmatchedSamplesKey(id string) string { return keyUnmatchedSamplesPrefix + id }

// Errors of Coverage.
var (
	// ErrUnmatchedNotFound: no shape has that id.
	ErrUnmatchedNotFound = errors.New("no such unmatched route shape")
	// ErrSampleTooLarge: the sample's JSON is larger than MaxSampleSize.
	ErrSampleTooLarge = errors.New("sample larger than the sample size limit")
)

// UnmatchedShape is one route shape that successful mutations took without a
// rule matching them, as GET /unmatched lists it.
type UnmatchedShape struct {
	// ID names the shape in the API (DELETE /unmatched/{id}): UnmatchedID.
	ID     string `json:"id"`
	Method string `json:"method"`
	// Route is the route shape, e.g. /users/{id}/password (rules.RouteShape).
	Route string `json:"route"`
	// Count is how many such exchanges were seen since the shape was first
	// kept (every Caddy instance on this Redis together; reported every few
	// seconds).
	Count     int64     `json:"count"`
	FirstSeen time.Time `json:"first_seen"`
	LastSeen  time.Time `json:"last_seen"`
	// Samples are redacted example exchanges, newest first.
	Samples []UnmatchedSample `json:"samples"`
}

// UnmatchedSample is one redacted exchange of a shape: bodies and headers
// went through the redaction of event data (rules.RedactBody and friends),
// so no credential is kept.
type UnmatchedSample struct {
	At       time.Time      `json:"at"`
	Request  SampleRequest  `json:"request"`
	Response SampleResponse `json:"response"`
}

// SampleRequest is the request of a sample.
type SampleRequest struct {
	Method string `json:"method"`
	// Path is the decoded request path (rules.RedactPath).
	Path string `json:"path"`
	// Query is the raw query string without "?" (rules.RedactQuery).
	Query  string      `json:"query,omitempty"`
	Header http.Header `json:"header,omitempty"`
	// Body is the body as redacted JSON (a form body as an object of its
	// fields); absent when there was none or it was not kept (see BodyNote).
	Body json.RawMessage `json:"body,omitempty"`
	// BodyNote says why a body was not kept ("larger than 4 KiB", "not JSON").
	BodyNote string `json:"body_note,omitempty"`
}

// SampleResponse is the response of a sample.
type SampleResponse struct {
	Status   int             `json:"status"`
	Header   http.Header     `json:"header,omitempty"`
	Body     json.RawMessage `json:"body,omitempty"`
	BodyNote string          `json:"body_note,omitempty"`
}

// UnmatchedCount is what one process saw of one shape since it last reported.
type UnmatchedCount struct {
	Method, Route string
	Count         int64
}

// UnmatchedID is the id of a shape: the first 16 hex digits of the SHA-256 of
// "METHOD route", the same in every process.
func UnmatchedID(method, route string) string {
	sum := sha256.Sum256([]byte(method + " " + route))
	return hex.EncodeToString(sum[:8])
}

// CoverageOptions configures a Coverage.
type CoverageOptions struct {
	// TTL is how long a shape is kept after it was last seen. Default DefaultUnmatchedTTL.
	TTL time.Duration
	// MaxShapes bounds the shapes kept. Default (and at most) MaxUnmatchedShapes.
	MaxShapes int
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

// Coverage keeps the unmatched route shapes, their counts and samples in
// Redis. It is safe for concurrent use and cheap to make.
type Coverage struct {
	rdb       redis.UniversalClient
	ttl       time.Duration
	maxShapes int
	now       func() time.Time
}

// NewCoverage returns the coverage store on rdb.
func NewCoverage(rdb redis.UniversalClient, o CoverageOptions) *Coverage {
	c := &Coverage{rdb: rdb, ttl: o.TTL, maxShapes: o.MaxShapes, now: o.Now}
	if c.ttl <= 0 {
		c.ttl = DefaultUnmatchedTTL
	}
	if c.maxShapes <= 0 || c.maxShapes > MaxUnmatchedShapes {
		c.maxShapes = MaxUnmatchedShapes
	}
	if c.now == nil {
		c.now = time.Now
	}
	return c
}

// admitLua is shared by both scripts: a shape not yet kept is refused while
// MaxShapes shapes are; shapes not seen within the TTL are let go first.
const admitLua = `
local function admit(index, id, now, ttl, cap)
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl)
  if redis.call('ZSCORE', index, id) == false and redis.call('ZCARD', index) >= cap then
    return false
  end
  redis.call('ZADD', index, now, id)
  redis.call('PEXPIRE', index, ttl)
  return true
end
`

// reportScript adds counts. KEYS: the index, then per shape its hash and
// samples list. ARGV: now (ms), ttl (ms), max shapes, then per shape id,
// method, route, count. Returns per shape the number of samples kept, or -1
// when the shape was refused.
var reportScript = redis.NewScript(admitLua + `
local now, ttl, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 1, (#KEYS - 1) / 2 do
  local h, l, a = KEYS[2*i], KEYS[2*i+1], 3 + (i-1)*4
  if admit(KEYS[1], ARGV[a+1], now, ttl, cap) then
    redis.call('HSETNX', h, 'method', ARGV[a+2])
    redis.call('HSETNX', h, 'route', ARGV[a+3])
    redis.call('HSETNX', h, 'first_seen', now)
    redis.call('HINCRBY', h, 'count', ARGV[a+4])
    redis.call('HSET', h, 'last_seen', now)
    redis.call('PEXPIRE', h, ttl)
    local n = redis.call('LLEN', l)
    if n > 0 then redis.call('PEXPIRE', l, ttl) end
    out[i] = n
  else
    out[i] = -1
  end
end
return out
`)

// sampleScript keeps one sample. KEYS: index, hash, samples list. ARGV: now
// (ms), ttl (ms), max shapes, id, method, route, keep, sample. Returns the
// samples kept, or -1 when the shape was refused.
var sampleScript = redis.NewScript(admitLua + `
local now, ttl, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if not admit(KEYS[1], ARGV[4], now, ttl, cap) then return -1 end
redis.call('HSETNX', KEYS[2], 'method', ARGV[5])
redis.call('HSETNX', KEYS[2], 'route', ARGV[6])
redis.call('HSETNX', KEYS[2], 'first_seen', now)
redis.call('HSETNX', KEYS[2], 'count', 0)
redis.call('HSETNX', KEYS[2], 'last_seen', now)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('LPUSH', KEYS[3], ARGV[8])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[7]) - 1)
redis.call('PEXPIRE', KEYS[3], ttl)
return redis.call('LLEN', KEYS[3])
`)

// Report adds counts to their shapes (creating a shape that is not kept yet,
// while fewer than MaxShapes are) in one round trip. It returns, per count,
// the number of samples its shape keeps, or -1 for a shape refused because
// MaxShapes shapes are kept.
func (c *Coverage) Report(ctx context.Context, counts []UnmatchedCount) ([]int, error) {
	if len(counts) == 0 {
		return nil, nil
	}
	keys := make([]string, 0, 1+2*len(counts))
	args := make([]any, 0, 3+4*len(counts))
	keys = append(keys, keyUnmatchedIndex)
	args = append(args, c.now().UnixMilli(), c.ttl.Milliseconds(), c.maxShapes)
	for _, uc := range counts {
		id := UnmatchedID(uc.Method, uc.Route)
		keys = append(keys, unmatchedShapeKey(id), unmatchedSamplesKey(id))
		args = append(args, id, uc.Method, uc.Route, uc.Count)
	}
	res, err := reportScript.Run(ctx, c.rdb, keys, args...).Int64Slice()
	if err != nil {
		return nil, fmt.Errorf("reporting unmatched counts: %w", err)
	}
	out := make([]int, len(res))
	for i, n := range res {
		out[i] = int(n)
	}
	return out, nil
}

// AddSample keeps s as the newest sample of the shape, keeping at most keep
// (1 to MaxUnmatchedSamples). It returns how many samples the shape now
// keeps, or -1 when the shape was refused because MaxShapes shapes are kept.
func (c *Coverage) AddSample(ctx context.Context, method, route string, s UnmatchedSample, keep int) (int, error) {
	keep = max(1, min(keep, MaxUnmatchedSamples))
	b, err := json.Marshal(s)
	if err != nil {
		return 0, fmt.Errorf("encoding sample: %w", err)
	}
	if len(b) > MaxSampleSize {
		return 0, fmt.Errorf("keeping sample of %s %s: %w (%d bytes, at most %d)", method, route, ErrSampleTooLarge, len(b), MaxSampleSize)
	}
	id := UnmatchedID(method, route)
	n, err := sampleScript.Run(ctx, c.rdb,
		[]string{keyUnmatchedIndex, unmatchedShapeKey(id), unmatchedSamplesKey(id)},
		c.now().UnixMilli(), c.ttl.Milliseconds(), c.maxShapes, id, method, route, keep, b).Int()
	if err != nil {
		return 0, fmt.Errorf("keeping sample of %s %s: %w", method, route, err)
	}
	return n, nil
}

// List returns the kept shapes, the most often seen first (then by method
// and route), at most limit of them, each with its samples.
func (c *Coverage) List(ctx context.Context, limit int) ([]UnmatchedShape, error) {
	cutoff := c.now().Add(-c.ttl).UnixMilli()
	ids, err := c.rdb.ZRangeByScore(ctx, keyUnmatchedIndex, &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(cutoff, 10), Max: "+inf",
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("listing unmatched shapes: %w", err)
	}
	if len(ids) > MaxUnmatchedShapes {
		ids = ids[len(ids)-MaxUnmatchedShapes:] // the most recently seen
	}
	hashes := make([]*redis.MapStringStringCmd, len(ids))
	if _, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, id := range ids {
			hashes[i] = p.HGetAll(ctx, unmatchedShapeKey(id))
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("listing unmatched shapes: %w", err)
	}
	shapes := make([]UnmatchedShape, 0, len(ids))
	for i, id := range ids {
		if sh, ok := shapeFromHash(id, hashes[i].Val()); ok {
			shapes = append(shapes, sh)
		}
	}
	slices.SortFunc(shapes, func(a, b UnmatchedShape) int {
		if a.Count != b.Count {
			if a.Count > b.Count {
				return -1
			}
			return 1
		}
		if a.Method != b.Method {
			return strings.Compare(a.Method, b.Method)
		}
		return strings.Compare(a.Route, b.Route)
	})
	if limit > 0 && len(shapes) > limit {
		shapes = shapes[:limit]
	}
	if err := c.loadSamples(ctx, shapes); err != nil {
		return nil, err
	}
	return shapes, nil
}

// Get returns one shape with its samples, or ErrUnmatchedNotFound.
func (c *Coverage) Get(ctx context.Context, id string) (UnmatchedShape, error) {
	if !validUnmatchedID(id) {
		return UnmatchedShape{}, ErrUnmatchedNotFound
	}
	h, err := c.rdb.HGetAll(ctx, unmatchedShapeKey(id)).Result()
	if err != nil {
		return UnmatchedShape{}, fmt.Errorf("reading unmatched shape %s: %w", id, err)
	}
	sh, ok := shapeFromHash(id, h)
	if !ok {
		return UnmatchedShape{}, ErrUnmatchedNotFound
	}
	shapes := []UnmatchedShape{sh}
	if err := c.loadSamples(ctx, shapes); err != nil {
		return UnmatchedShape{}, err
	}
	return shapes[0], nil
}

// Delete forgets one shape, its count and its samples; it reports whether
// the shape was kept. A shape seen again afterwards starts over.
func (c *Coverage) Delete(ctx context.Context, id string) (bool, error) {
	if !validUnmatchedID(id) {
		return false, nil
	}
	var zrem *redis.IntCmd
	if _, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		zrem = p.ZRem(ctx, keyUnmatchedIndex, id)
		p.Del(ctx, unmatchedShapeKey(id), unmatchedSamplesKey(id))
		return nil
	}); err != nil {
		return false, fmt.Errorf("deleting unmatched shape %s: %w", id, err)
	}
	return zrem.Val() > 0, nil
}

// Clear forgets every shape and returns how many there were.
func (c *Coverage) Clear(ctx context.Context) (int, error) {
	ids, err := c.rdb.ZRange(ctx, keyUnmatchedIndex, 0, -1).Result()
	if err != nil {
		return 0, fmt.Errorf("clearing unmatched shapes: %w", err)
	}
	if _, err := c.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		keys := []string{keyUnmatchedIndex}
		for _, id := range ids {
			keys = append(keys, unmatchedShapeKey(id), unmatchedSamplesKey(id))
		}
		p.Del(ctx, keys...)
		return nil
	}); err != nil {
		return 0, fmt.Errorf("clearing unmatched shapes: %w", err)
	}
	return len(ids), nil
}

// loadSamples reads the samples of shapes in one round trip.
func (c *Coverage) loadSamples(ctx context.Context, shapes []UnmatchedShape) error {
	if len(shapes) == 0 {
		return nil
	}
	lists := make([]*redis.StringSliceCmd, len(shapes))
	if _, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, sh := range shapes {
			lists[i] = p.LRange(ctx, unmatchedSamplesKey(sh.ID), 0, MaxUnmatchedSamples-1)
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("reading unmatched samples: %w", err)
	}
	for i := range shapes {
		shapes[i].Samples = []UnmatchedSample{}
		for _, raw := range lists[i].Val() {
			var s UnmatchedSample
			if json.Unmarshal([]byte(raw), &s) == nil {
				shapes[i].Samples = append(shapes[i].Samples, s)
			}
		}
	}
	return nil
}

// shapeFromHash reads a shape's hash; ok is false for a missing one.
func shapeFromHash(id string, h map[string]string) (UnmatchedShape, bool) {
	if h["method"] == "" || h["route"] == "" {
		return UnmatchedShape{}, false
	}
	ms := func(k string) time.Time {
		n, _ := strconv.ParseInt(h[k], 10, 64)
		return time.UnixMilli(n).UTC()
	}
	count, _ := strconv.ParseInt(h["count"], 10, 64)
	return UnmatchedShape{
		ID: id, Method: h["method"], Route: h["route"], Count: count,
		FirstSeen: ms("first_seen"), LastSeen: ms("last_seen"),
	}, true
}

// validUnmatchedID reports an id of UnmatchedID's form, so that no other
// text reaches a Redis key.
func validUnmatchedID(id string) bool {
	if len(id) != 16 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}
