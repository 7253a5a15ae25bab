package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keys. Every key of the endpoint registry shares the hash tag
// "{authtap-endpoints}" so that its transactions also work on Redis Cluster.
const (
	keyPrefix          = "authtap:"
	keyEndpointIndex   = "authtap:{authtap-endpoints}:index"   // ZSET id → created (unix ms)
	keyEndpointVersion = "authtap:{authtap-endpoints}:version" // INCR on every change
	keyEndpointPrefix  = "authtap:{authtap-endpoints}:ep:"     // + id → JSON record
	keyStatePrefix     = "authtap:{authtap-endpoints}:state:"  // + id → JSON state of a configured endpoint
)

func endpointKey(id string) string { return keyEndpointPrefix + id }
func stateKey(id string) string    { return keyStatePrefix + id }

// StoreOptions configures a Store.
type StoreOptions struct {
	// Endpoints are declared in the configuration: read-only, merged with the
	// ones in Redis.
	Endpoints []EndpointConfig
	// Retention is how long attempts and events are kept. Default 14 days.
	Retention time.Duration
	// MaxAttemptsPerEndpoint caps the attempts kept per endpoint. Default 10000.
	MaxAttemptsPerEndpoint int
	// MaxEvents caps the events kept for listing and replay (globally and per
	// endpoint); the oldest go first. Default 100000.
	MaxEvents int
	// CacheFor is how long fan-outs and deliveries trust their cached copy of
	// the endpoints before asking Redis whether anything changed (one small
	// GET). Changes made through this Store apply at once; changes made by other
	// processes within CacheFor. Zero means 100ms; negative means always ask.
	CacheFor time.Duration
	// Now returns the current time. Default time.Now.
	Now func() time.Time
}

// DefaultCacheFor is the default StoreOptions.CacheFor.
const DefaultCacheFor = 100 * time.Millisecond

// Store keeps endpoints, the delivery log and the event index in Redis, merged
// with the read-only endpoints of the configuration. It is safe for concurrent use.
type Store struct {
	rdb         redis.UniversalClient
	configured  map[string]*endpointRecord
	configOrder []string
	retention   time.Duration
	maxAttempts int
	maxEvents   int
	now         func() time.Time
	cacheFor    time.Duration

	mu        sync.Mutex
	snap      *snapshot
	checkedAt time.Time // when the snapshot's version was last confirmed (monotonic clock)
}

// snapshot is a cached view of all endpoints, valid while the registry's
// version counter is unchanged.
type snapshot struct {
	version int64
	byID    map[string]*endpointRecord
	ordered []*endpointRecord
}

// configState is the runtime state of a configured endpoint (enabled or
// disabled by a 410 or by continued failures); its configuration stays read-only.
type configState struct {
	Enabled        bool      `json:"enabled"`
	DisabledReason string    `json:"disabled_reason,omitempty"`
	UpdatedAt      time.Time `json:"updated_at"`
}

// NewStore returns a store on rdb. It validates the configured endpoints.
func NewStore(rdb redis.UniversalClient, o StoreOptions) (*Store, error) {
	s := &Store{
		rdb: rdb, configured: map[string]*endpointRecord{}, retention: o.Retention,
		maxAttempts: o.MaxAttemptsPerEndpoint, maxEvents: o.MaxEvents, now: o.Now,
	}
	orDefault(&s.retention, DefaultRetention)
	orDefault(&s.maxAttempts, DefaultMaxAttemptsPerEndpoint)
	orDefault(&s.maxEvents, DefaultMaxEvents)
	if s.now == nil {
		s.now = time.Now
	}
	switch {
	case o.CacheFor == 0:
		s.cacheFor = DefaultCacheFor
	case o.CacheFor > 0:
		s.cacheFor = o.CacheFor
	}
	var zero time.Time
	for i, c := range o.Endpoints {
		if c.ID == "" {
			return nil, fmt.Errorf("%w: configured endpoint %d has no id", ErrInvalidEndpoint, i)
		}
		if c.Secret == "" {
			return nil, fmt.Errorf("%w %s: a configured endpoint needs a secret", ErrInvalidEndpoint, c.ID)
		}
		if _, dup := s.configured[c.ID]; dup {
			return nil, fmt.Errorf("%w %s: declared twice in the configuration", ErrInvalidEndpoint, c.ID)
		}
		r, err := recordFromConfig(c, zero)
		if err != nil {
			return nil, err
		}
		r.readOnly = true
		if c.Disabled {
			r.DisabledReason = "disabled in the configuration"
		}
		s.configured[c.ID] = r
		s.configOrder = append(s.configOrder, c.ID)
	}
	return s, nil
}

// Redis returns the store's Redis connection (for the management API's
// asynq client, inspector and health check). Do not close it.
func (s *Store) Redis() redis.UniversalClient { return s.rdb }

// Create stores a new endpoint. An empty ID or secret is generated; read the
// secret once with Endpoint.Secret.
func (s *Store) Create(ctx context.Context, c EndpointConfig) (Endpoint, error) {
	now := s.now().UTC()
	if c.ID == "" {
		id, err := newEndpointID()
		if err != nil {
			return Endpoint{}, err
		}
		c.ID = id
	}
	if _, ok := s.configured[c.ID]; ok {
		return Endpoint{}, fmt.Errorf("creating endpoint %s: %w", c.ID, ErrConflict)
	}
	r, err := recordFromConfig(c, now)
	if err != nil {
		return Endpoint{}, err
	}
	b, err := json.Marshal(r)
	if err != nil {
		return Endpoint{}, fmt.Errorf("encoding endpoint %s: %w", r.ID, err)
	}
	var created bool
	err = s.rdb.Watch(ctx, func(tx *redis.Tx) error {
		n, err := tx.Exists(ctx, endpointKey(r.ID)).Result()
		if err != nil {
			return err
		}
		if n > 0 {
			return nil
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, endpointKey(r.ID), b, 0)
			p.ZAdd(ctx, keyEndpointIndex, redis.Z{Score: float64(now.UnixMilli()), Member: r.ID})
			p.Incr(ctx, keyEndpointVersion)
			return nil
		})
		created = err == nil
		return err
	}, endpointKey(r.ID))
	if err != nil {
		return Endpoint{}, fmt.Errorf("creating endpoint %s: %w", r.ID, err)
	}
	if !created {
		return Endpoint{}, fmt.Errorf("creating endpoint %s: %w", r.ID, ErrConflict)
	}
	s.invalidate()
	return r.public(now), nil
}

// Get returns one endpoint, read from Redis (not from the cache).
func (s *Store) Get(ctx context.Context, id string) (Endpoint, error) {
	r, err := s.load(ctx, id)
	if err != nil {
		return Endpoint{}, err
	}
	return r.public(s.now()), nil
}

// List returns every endpoint: the configured ones first, in configuration
// order, then the stored ones by creation time.
func (s *Store) List(ctx context.Context) ([]Endpoint, error) {
	snap, err := s.refresh(ctx, true)
	if err != nil {
		return nil, err
	}
	now := s.now()
	out := make([]Endpoint, 0, len(snap.ordered))
	for _, r := range snap.ordered {
		out = append(out, r.public(now))
	}
	return out, nil
}

// Update changes the fields p sets. Configured endpoints refuse with ErrReadOnly.
func (s *Store) Update(ctx context.Context, id string, p EndpointPatch) (Endpoint, error) {
	r, err := s.modify(ctx, id, func(r *endpointRecord) error {
		p.apply(r)
		return r.normalize()
	})
	if err != nil {
		return Endpoint{}, err
	}
	return r.public(s.now()), nil
}

// Delete removes an endpoint; its queued deliveries are skipped. Configured
// endpoints refuse with ErrReadOnly.
func (s *Store) Delete(ctx context.Context, id string) error {
	if _, ok := s.configured[id]; ok {
		return fmt.Errorf("deleting endpoint %s: %w", id, ErrReadOnly)
	}
	var del *redis.IntCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		del = p.Del(ctx, endpointKey(id))
		p.ZRem(ctx, keyEndpointIndex, id)
		p.Incr(ctx, keyEndpointVersion)
		return nil
	})
	if err != nil {
		return fmt.Errorf("deleting endpoint %s: %w", id, err)
	}
	s.invalidate()
	if del.Val() == 0 {
		return fmt.Errorf("deleting endpoint %s: %w", id, ErrNotFound)
	}
	// Separate DELs: these keys live in different Redis Cluster slots.
	_ = s.rdb.Del(ctx, failingKey(id)).Err()
	_ = s.rdb.Del(ctx, inflightKey(id), bucketKey(id), reservedKey(id), placesKey(id)).Err()
	return nil
}

// RotateSecret gives the endpoint a new current secret, returned once. The old
// secret keeps signing (next to the new one) for keepOldFor: 0 means 24 hours,
// a negative value drops it at once. Configured endpoints refuse with ErrReadOnly.
func (s *Store) RotateSecret(ctx context.Context, id string, keepOldFor time.Duration) (string, error) {
	if keepOldFor == 0 {
		keepOldFor = DefaultSecretOverlap
	}
	secret, err := NewSecret()
	if err != nil {
		return "", err
	}
	_, err = s.modify(ctx, id, func(r *endpointRecord) error {
		now := s.now().UTC()
		r.pruneSecrets(now)
		old := r.Secrets
		r.Secrets = []secretRecord{{Value: secret}}
		if keepOldFor > 0 && len(old) > 0 {
			r.Secrets = append(r.Secrets, secretRecord{Value: old[0].Value, ExpiresAt: now.Add(keepOldFor)})
		}
		r.Secrets = append(r.Secrets, old[min(1, len(old)):]...)
		return nil
	})
	if err != nil {
		return "", err
	}
	return secret, nil
}

// SetEnabled enables or disables an endpoint, recording reason when disabling.
// It also works on configured endpoints: their runtime state (e.g. disabled by
// a 410 Gone) is kept in Redis while their configuration stays read-only.
// changed reports whether the state actually changed.
func (s *Store) SetEnabled(ctx context.Context, id string, enabled bool, reason string) (changed bool, err error) {
	if enabled {
		reason = ""
	}
	if c, ok := s.configured[id]; ok {
		st := configState{Enabled: enabled, DisabledReason: reason, UpdatedAt: s.now().UTC()}
		b, err := json.Marshal(st)
		if err != nil {
			return false, err
		}
		err = s.rdb.Watch(ctx, func(tx *redis.Tx) error {
			cur := configState{Enabled: c.Enabled, DisabledReason: c.DisabledReason}
			raw, err := tx.Get(ctx, stateKey(id)).Bytes()
			switch {
			case errors.Is(err, redis.Nil):
			case err != nil:
				return err
			default:
				if err := json.Unmarshal(raw, &cur); err != nil {
					return fmt.Errorf("decoding state of endpoint %s: %w", id, err)
				}
			}
			if cur.Enabled == enabled && cur.DisabledReason == reason {
				return nil
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.Set(ctx, stateKey(id), b, 0)
				p.Incr(ctx, keyEndpointVersion)
				return nil
			})
			changed = err == nil
			return err
		}, stateKey(id))
		if err != nil {
			return false, fmt.Errorf("setting state of endpoint %s: %w", id, err)
		}
		s.afterEnable(ctx, id, enabled && changed)
		return changed, nil
	}
	_, err = s.modifyAny(ctx, id, func(r *endpointRecord) (bool, error) {
		if r.Enabled == enabled && r.DisabledReason == reason {
			return false, nil
		}
		r.Enabled, r.DisabledReason = enabled, reason
		changed = true
		return true, nil
	})
	s.afterEnable(ctx, id, err == nil && enabled && changed)
	return changed, err
}

// afterEnable forgets an endpoint's failure streak when it is enabled again,
// so that it gets a fresh DisableAfter period.
func (s *Store) afterEnable(ctx context.Context, id string, enabled bool) {
	s.invalidate()
	if enabled {
		_ = s.rdb.Del(ctx, failingKey(id)).Err()
	}
}

// Match returns the enabled endpoints of mode whose filters take eventType
// and which may receive an event of tenant ("" for an operator-only event;
// see TenantTakes), from the cache (one small Redis read checks that it is
// current).
func (s *Store) Match(ctx context.Context, eventType, mode, tenant string) ([]Endpoint, error) {
	snap, err := s.refresh(ctx, false)
	if err != nil {
		return nil, err
	}
	now := s.now()
	var out []Endpoint
	for _, r := range snap.ordered {
		if r.matches(eventType, mode, tenant) {
			out = append(out, r.public(now))
		}
	}
	return out, nil
}

// lookup returns the record of id from the cache; nil when it does not exist.
func (s *Store) lookup(ctx context.Context, id string) (*endpointRecord, error) {
	snap, err := s.refresh(ctx, false)
	if err != nil {
		return nil, err
	}
	return snap.byID[id], nil
}

// modify applies fn to a stored (non-configured) endpoint under WATCH.
func (s *Store) modify(ctx context.Context, id string, fn func(r *endpointRecord) error) (*endpointRecord, error) {
	if _, ok := s.configured[id]; ok {
		return nil, fmt.Errorf("changing endpoint %s: %w", id, ErrReadOnly)
	}
	return s.modifyAny(ctx, id, func(r *endpointRecord) (bool, error) { return true, fn(r) })
}

func (s *Store) modifyAny(ctx context.Context, id string, fn func(r *endpointRecord) (bool, error)) (*endpointRecord, error) {
	var out *endpointRecord
	err := s.rdb.Watch(ctx, func(tx *redis.Tx) error {
		raw, err := tx.Get(ctx, endpointKey(id)).Bytes()
		if errors.Is(err, redis.Nil) {
			return fmt.Errorf("endpoint %s: %w", id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		r := new(endpointRecord)
		if err := json.Unmarshal(raw, r); err != nil {
			return fmt.Errorf("decoding endpoint %s: %w", id, err)
		}
		write, err := fn(r)
		if err != nil || !write {
			out = r
			return err
		}
		r.UpdatedAt = s.now().UTC()
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encoding endpoint %s: %w", id, err)
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, endpointKey(id), b, 0)
			p.Incr(ctx, keyEndpointVersion)
			return nil
		})
		out = r
		return err
	}, endpointKey(id))
	s.invalidate()
	if err != nil {
		if errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalidEndpoint) {
			return nil, err
		}
		return nil, fmt.Errorf("changing endpoint %s: %w", id, err)
	}
	return out, nil
}

// load reads one endpoint directly from Redis (merged with the configuration).
func (s *Store) load(ctx context.Context, id string) (*endpointRecord, error) {
	if c, ok := s.configured[id]; ok {
		raw, err := s.rdb.Get(ctx, stateKey(id)).Bytes()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("loading endpoint %s: %w", id, err)
		}
		return applyState(c, raw), nil
	}
	raw, err := s.rdb.Get(ctx, endpointKey(id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("endpoint %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("loading endpoint %s: %w", id, err)
	}
	r := new(endpointRecord)
	if err := json.Unmarshal(raw, r); err != nil {
		return nil, fmt.Errorf("decoding endpoint %s: %w", id, err)
	}
	return r, nil
}

// applyState returns a copy of the configured record c with its runtime state raw applied.
func applyState(c *endpointRecord, raw []byte) *endpointRecord {
	cp := *c
	var st configState
	if len(raw) > 0 && json.Unmarshal(raw, &st) == nil {
		cp.Enabled, cp.DisabledReason, cp.UpdatedAt = st.Enabled, st.DisabledReason, st.UpdatedAt
	}
	return &cp
}

// refresh returns the current snapshot, reloading it when the version counter
// moved (or always when force is set).
func (s *Store) refresh(ctx context.Context, force bool) (*snapshot, error) {
	if !force && s.cacheFor > 0 {
		s.mu.Lock()
		snap, fresh := s.snap, time.Since(s.checkedAt) < s.cacheFor
		s.mu.Unlock()
		if snap != nil && fresh {
			return snap, nil
		}
	}
	checked := time.Now()
	v, err := s.rdb.Get(ctx, keyEndpointVersion).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("reading endpoint version: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !force && s.snap != nil && s.snap.version == v {
		s.checkedAt = checked
		return s.snap, nil
	}
	snap, err := s.loadAll(ctx, v)
	if err != nil {
		return nil, err
	}
	s.snap, s.checkedAt = snap, checked
	return snap, nil
}

// invalidate makes the next lookup ask Redis, after a change made here.
func (s *Store) invalidate() {
	s.mu.Lock()
	s.checkedAt = time.Time{}
	s.mu.Unlock()
}

func (s *Store) loadAll(ctx context.Context, version int64) (*snapshot, error) {
	snap := &snapshot{version: version, byID: map[string]*endpointRecord{}}
	if len(s.configOrder) > 0 {
		keys := make([]string, len(s.configOrder))
		for i, id := range s.configOrder {
			keys[i] = stateKey(id)
		}
		vals, err := s.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, fmt.Errorf("loading configured endpoints' state: %w", err)
		}
		for i, id := range s.configOrder {
			var raw []byte
			if str, ok := vals[i].(string); ok {
				raw = []byte(str)
			}
			r := applyState(s.configured[id], raw)
			snap.byID[id] = r
			snap.ordered = append(snap.ordered, r)
		}
	}
	ids, err := s.rdb.ZRange(ctx, keyEndpointIndex, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("listing endpoints: %w", err)
	}
	for chunk := range slices.Chunk(ids, 500) {
		keys := make([]string, len(chunk))
		for i, id := range chunk {
			keys[i] = endpointKey(id)
		}
		vals, err := s.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, fmt.Errorf("loading endpoints: %w", err)
		}
		for i, v := range vals {
			str, ok := v.(string)
			if !ok {
				continue // deleted between ZRANGE and MGET
			}
			r := new(endpointRecord)
			if err := json.Unmarshal([]byte(str), r); err != nil {
				return nil, fmt.Errorf("decoding endpoint %s: %w", chunk[i], err)
			}
			if _, dup := snap.byID[r.ID]; dup {
				continue // a configured endpoint shadows a stored one of the same id
			}
			snap.byID[r.ID] = r
			snap.ordered = append(snap.ordered, r)
		}
	}
	return snap, nil
}

// unixMicro renders t as a ZSET score.
func unixMicro(t time.Time) float64 { return float64(t.UnixMicro()) }

func scoreString(t time.Time) string { return strconv.FormatInt(t.UnixMicro(), 10) }
