package admin

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/authtap/authtap/rules"
)

// Portal link defaults and bounds.
const (
	// DefaultPortalLinkTTL is how long a portal link works when its request sets no ttl.
	DefaultPortalLinkTTL = time.Hour
	// MinPortalLinkTTL and MaxPortalLinkTTL bound a portal link's ttl.
	MinPortalLinkTTL = time.Minute
	MaxPortalLinkTTL = 7 * 24 * time.Hour
	// MaxPortalLinks bounds the portal links alive at once; issuing more is
	// refused until some expire or are revoked.
	MaxPortalLinks = 10000
	// MaxPortalTokenLen bounds the Authorization header a portal request may
	// carry before anything in it is decoded, in bytes.
	MaxPortalTokenLen = 1024
	// portalKeyCacheFor is how long a process trusts its copy of the signing
	// keys; a key rotated elsewhere takes effect within it.
	portalKeyCacheFor = time.Second
	// portalKeyBytes is the size of a signing key.
	portalKeyBytes = 32
	// portalTokenPrefix starts every portal token (and names its version).
	portalTokenPrefix = "atp1."
)

// Redis keys of the portal links. They share the hash tag {authtap-portal} so
// that the scripts and multi-key reads below work on Redis Cluster too.
const (
	keyPortalPrefix         = "authtap:{authtap-portal}:"
	keyPortalKeys           = keyPortalPrefix + "keys"            // HASH key id → base64 key
	keyPortalKeyRetire      = keyPortalPrefix + "keys:retire"     // HASH key id → unix ms it stops verifying
	keyPortalCurrentKey     = keyPortalPrefix + "key"             // STRING id of the key that signs new links
	keyPortalLinks          = keyPortalPrefix + "links"           // ZSET link id by expiry (unix ms)
	keyPortalLink           = keyPortalPrefix + "link:"           // + link id → PortalLink JSON, expires with the link
	keyPortalRevoked        = keyPortalPrefix + "revoked:"        // + link id → "1", expires when the link would have
	keyPortalTenantRevoked  = keyPortalPrefix + "revoked-tenant:" // + tenant → unix ms: links issued until then are revoked
	keyPortalRatePrefix     = keyPortalPrefix + "rate:"           // + tenant + ":" + unix minute → count of changes
	portalTenantRevokeGrace = time.Minute
)

// Errors of portal tokens; each maps to one error code of the 401 answer.
var (
	errTokenMissing   = errors.New("no portal token: send \"Authorization: Bearer <token>\" with the token of a portal link")
	errTokenMalformed = errors.New("the portal token is malformed")
	errTokenInvalid   = errors.New("the portal token's signature does not verify (forged, altered, or signed with a key that was rotated out)")
	errTokenExpired   = errors.New("the portal link has expired; ask for a new one")
	errTokenRevoked   = errors.New("the portal link was revoked; ask for a new one")
)

// PortalLink is an issued portal link as the management API lists it. The
// token itself is shown once, when the link is issued, and never stored.
type PortalLink struct {
	// ID names the link, for revoking it.
	ID string `json:"id"`
	// Tenant is the tenant whose endpoints, deliveries and catalog the link opens.
	Tenant string `json:"tenant"`
	// ReadOnly links can look but change nothing.
	ReadOnly  bool      `json:"read_only"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// portalClaims is what a portal token says, signed.
type portalClaims struct {
	KeyID    string `json:"kid"`
	ID       string `json:"id"`
	Tenant   string `json:"tnt"`
	IssuedAt int64  `json:"iat"` // unix ms
	Expires  int64  `json:"exp"` // unix ms
	ReadOnly bool   `json:"ro,omitempty"`
}

// portalScope is what a verified portal token grants a request.
type portalScope struct {
	linkID   string
	tenant   string
	readOnly bool
	expires  time.Time
	// allowTest and maxEndpoints are the portal's PortalConfig policy.
	allowTest    bool
	maxEndpoints int
}

// portalLinks issues and verifies portal tokens. The signing keys live in
// Redis (made once, by whichever process needs one first, rotatable), so
// every worker and Caddy instance on the same Redis verifies the same links.
type portalLinks struct {
	rdb redis.UniversalClient
	now func() time.Time

	mu       sync.Mutex
	keys     map[string][]byte // key id → key, only keys that still verify
	current  string
	loadedAt time.Time // monotonic reading
}

func newPortalLinks(rdb redis.UniversalClient, now func() time.Time) *portalLinks {
	return &portalLinks{rdb: rdb, now: now}
}

// ensureKeyScript makes the first signing key unless one exists, and
// returns the current key's id.
var ensureKeyScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`)

// rotateKeyScript makes a new current key. With ARGV[3] "0" every older key
// is dropped at once; otherwise the key that was current stops verifying at
// ARGV[3] (unix ms). Keys whose time has come (ARGV[4], now) are dropped.
var rotateKeyScript = redis.NewScript(`
local old = redis.call('GET', KEYS[1])
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[2], KEYS[3])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1])
if old and old ~= ARGV[1] and ARGV[3] ~= '0' then
  redis.call('HSET', KEYS[3], old, ARGV[3])
end
local r = redis.call('HGETALL', KEYS[3])
for i = 1, #r, 2 do
  if tonumber(r[i+1]) <= tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[2], r[i])
    redis.call('HDEL', KEYS[3], r[i])
  end
end
return old or ''
`)

// newKey returns a key id and a fresh key in base64.
func newKey() (id, b64 string) {
	k := make([]byte, portalKeyBytes)
	_, _ = rand.Read(k) // crypto/rand.Read never fails
	return "pk_" + strings.ToLower(rand.Text()[:16]), base64.StdEncoding.EncodeToString(k)
}

// loadKeys returns the keys that verify and the current key's id, from the
// cache when it is fresh (unless force), making the first key when there is none.
func (p *portalLinks) loadKeys(ctx context.Context, force bool) (map[string][]byte, string, error) {
	p.mu.Lock()
	if !force && p.keys != nil && time.Since(p.loadedAt) < portalKeyCacheFor {
		keys, cur := p.keys, p.current
		p.mu.Unlock()
		return keys, cur, nil
	}
	p.mu.Unlock()
	id, b64 := newKey()
	if err := ensureKeyScript.Run(ctx, p.rdb, []string{keyPortalCurrentKey, keyPortalKeys}, id, b64).Err(); err != nil {
		return nil, "", fmt.Errorf("making the portal signing key: %w", err)
	}
	var all, retire *redis.MapStringStringCmd
	var cur *redis.StringCmd
	if _, err := p.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		cur = pl.Get(ctx, keyPortalCurrentKey)
		all = pl.HGetAll(ctx, keyPortalKeys)
		retire = pl.HGetAll(ctx, keyPortalKeyRetire)
		return nil
	}); err != nil {
		return nil, "", fmt.Errorf("reading the portal signing keys: %w", err)
	}
	nowMS := p.now().UnixMilli()
	keys := make(map[string][]byte, len(all.Val()))
	for kid, v := range all.Val() {
		if at, ok := retire.Val()[kid]; ok {
			if ms, err := strconv.ParseInt(at, 10, 64); err != nil || ms <= nowMS {
				continue
			}
		}
		k, err := base64.StdEncoding.DecodeString(v)
		if err != nil || len(k) < 16 {
			continue // not a key this code wrote: verify nothing with it
		}
		keys[kid] = k
	}
	current := cur.Val()
	if _, ok := keys[current]; !ok {
		return nil, "", fmt.Errorf("reading the portal signing keys: the current key %q is missing", current)
	}
	p.mu.Lock()
	p.keys, p.current, p.loadedAt = keys, current, time.Now() // monotonic: the cache's age, not the clock
	p.mu.Unlock()
	return keys, current, nil
}

// lookupKey reads one key from Redis; false when it does not exist or no
// longer verifies.
func (p *portalLinks) lookupKey(ctx context.Context, kid string) ([]byte, bool, error) {
	var v, at *redis.StringCmd
	if _, err := p.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		v = pl.HGet(ctx, keyPortalKeys, kid)
		at = pl.HGet(ctx, keyPortalKeyRetire, kid)
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, false, fmt.Errorf("reading the portal signing keys: %w", err)
	}
	if v.Err() != nil {
		return nil, false, nil
	}
	if ms, err := at.Int64(); at.Err() == nil && (err != nil || ms <= p.now().UnixMilli()) {
		return nil, false, nil
	}
	k, err := base64.StdEncoding.DecodeString(v.Val())
	if err != nil || len(k) < 16 {
		return nil, false, nil
	}
	return k, true, nil
}

// rotate makes a new signing key. Links signed with the key that was
// current keep working for keepOld; with 0, links signed with any older key
// stop at once.
func (p *portalLinks) rotate(ctx context.Context, keepOld time.Duration) (newID, oldID string, err error) {
	id, b64 := newKey()
	retire := "0"
	if keepOld > 0 {
		retire = strconv.FormatInt(p.now().Add(keepOld).UnixMilli(), 10)
	}
	old, err := rotateKeyScript.Run(ctx, p.rdb, []string{keyPortalCurrentKey, keyPortalKeys, keyPortalKeyRetire},
		id, b64, retire, strconv.FormatInt(p.now().UnixMilli(), 10)).Text()
	if err != nil {
		return "", "", fmt.Errorf("rotating the portal signing key: %w", err)
	}
	p.mu.Lock()
	p.keys = nil
	p.mu.Unlock()
	return id, old, nil
}

// sign returns the token of c, signed with key.
func sign(c portalClaims, key []byte) (string, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	body := portalTokenPrefix + base64.RawURLEncoding.EncodeToString(b)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(body))
	return body + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil)), nil
}

// issue makes a link for tenant that works for ttl.
func (p *portalLinks) issue(ctx context.Context, tenant string, ttl time.Duration, readOnly bool) (PortalLink, string, error) {
	keys, kid, err := p.loadKeys(ctx, false)
	if err != nil {
		return PortalLink{}, "", err
	}
	now := p.now()
	nowMS := now.UnixMilli()
	live, err := p.rdb.ZCount(ctx, keyPortalLinks, "("+strconv.FormatInt(nowMS, 10), "+inf").Result()
	if err != nil {
		return PortalLink{}, "", fmt.Errorf("counting portal links: %w", err)
	}
	if live >= MaxPortalLinks {
		return PortalLink{}, "", errTooManyLinks
	}
	c := portalClaims{
		KeyID: kid, ID: "pl_" + strings.ToLower(rand.Text()[:20]), Tenant: tenant,
		IssuedAt: nowMS, Expires: now.Add(ttl).UnixMilli(), ReadOnly: readOnly,
	}
	token, err := sign(c, keys[kid])
	if err != nil {
		return PortalLink{}, "", fmt.Errorf("signing portal link: %w", err)
	}
	link := PortalLink{ID: c.ID, Tenant: tenant, ReadOnly: readOnly, CreatedAt: time.UnixMilli(c.IssuedAt).UTC(),
		ExpiresAt: time.UnixMilli(c.Expires).UTC()}
	rec, err := json.Marshal(link)
	if err != nil {
		return PortalLink{}, "", err
	}
	if _, err := p.rdb.TxPipelined(ctx, func(pl redis.Pipeliner) error {
		pl.ZRemRangeByScore(ctx, keyPortalLinks, "-inf", strconv.FormatInt(nowMS, 10))
		pl.ZAdd(ctx, keyPortalLinks, redis.Z{Score: float64(c.Expires), Member: c.ID})
		pl.Set(ctx, keyPortalLink+c.ID, rec, ttl)
		return nil
	}); err != nil {
		return PortalLink{}, "", fmt.Errorf("recording portal link: %w", err)
	}
	return link, token, nil
}

var strictB64 = base64.RawURLEncoding.Strict()

var errTooManyLinks = fmt.Errorf("%d portal links are alive; revoke some or wait until they expire", MaxPortalLinks)

// parse checks a token's form and signature and returns its claims; it
// does not look at expiry or revocation.
func (p *portalLinks) parse(ctx context.Context, token string) (portalClaims, error) {
	var c portalClaims
	if len(token) > MaxPortalTokenLen {
		return c, errTokenMalformed
	}
	rest, ok := strings.CutPrefix(token, portalTokenPrefix)
	if !ok {
		return c, errTokenMalformed
	}
	payload, mac, ok := strings.Cut(rest, ".")
	if !ok || payload == "" || mac == "" {
		return c, errTokenMalformed
	}
	// Strict: one encoding per token, so that a token cannot be rewritten
	// into another string that verifies.
	raw, err := strictB64.DecodeString(payload)
	if err != nil {
		return c, errTokenMalformed
	}
	sum, err := strictB64.DecodeString(mac)
	if err != nil || len(sum) != sha256.Size {
		return c, errTokenMalformed
	}
	if err := json.Unmarshal(raw, &c); err != nil || c.KeyID == "" || c.ID == "" {
		return portalClaims{}, errTokenMalformed
	}
	keys, _, err := p.loadKeys(ctx, false)
	if err != nil {
		return portalClaims{}, err
	}
	key, ok := keys[c.KeyID]
	if !ok {
		// A key made by a rotation elsewhere since the cache was filled: ask
		// Redis for that one key (one round trip, as the revocation check).
		if key, ok, err = p.lookupKey(ctx, c.KeyID); err != nil {
			return portalClaims{}, err
		}
	}
	if !ok {
		return portalClaims{}, errTokenInvalid
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(portalTokenPrefix + payload))
	if !hmac.Equal(m.Sum(nil), sum) { // constant time
		return portalClaims{}, errTokenInvalid
	}
	if rules.ValidTenant(c.Tenant) != nil {
		return portalClaims{}, errTokenMalformed // signed, but not by this code
	}
	return c, nil
}

// verify returns what token grants, or one of the errToken* errors (or a
// Redis error).
func (p *portalLinks) verify(ctx context.Context, token string) (*portalScope, error) {
	c, err := p.parse(ctx, token)
	if err != nil {
		return nil, err
	}
	nowMS := p.now().UnixMilli()
	if c.Expires <= nowMS {
		return nil, errTokenExpired
	}
	var byID, byTenant *redis.StringCmd
	if _, err := p.rdb.Pipelined(ctx, func(pl redis.Pipeliner) error {
		byID = pl.Get(ctx, keyPortalRevoked+c.ID)
		byTenant = pl.Get(ctx, keyPortalTenantRevoked+c.Tenant)
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("checking portal link revocation: %w", err)
	}
	if byID.Err() == nil {
		return nil, errTokenRevoked
	}
	if at, err := byTenant.Int64(); err == nil && c.IssuedAt <= at {
		return nil, errTokenRevoked
	}
	return &portalScope{linkID: c.ID, tenant: c.Tenant, readOnly: c.ReadOnly, expires: time.UnixMilli(c.Expires).UTC()}, nil
}

// list returns the links alive now, soonest to expire first, optionally of one tenant.
func (p *portalLinks) list(ctx context.Context, tenant string, limit int) ([]PortalLink, error) {
	nowMS := strconv.FormatInt(p.now().UnixMilli(), 10)
	ids, err := p.rdb.ZRangeByScore(ctx, keyPortalLinks, &redis.ZRangeBy{Min: "(" + nowMS, Max: "+inf", Count: MaxPortalLinks}).Result()
	if err != nil {
		return nil, fmt.Errorf("listing portal links: %w", err)
	}
	out := []PortalLink{}
	for len(ids) > 0 && len(out) < limit {
		n := min(len(ids), 500)
		keys := make([]string, n)
		for i, id := range ids[:n] {
			keys[i] = keyPortalLink + id
		}
		ids = ids[n:]
		vals, err := p.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, fmt.Errorf("reading portal links: %w", err)
		}
		for _, v := range vals {
			s, ok := v.(string)
			if !ok {
				continue // revoked, or expired meanwhile
			}
			var l PortalLink
			if json.Unmarshal([]byte(s), &l) != nil || tenant != "" && l.Tenant != tenant {
				continue
			}
			if out = append(out, l); len(out) == limit {
				break
			}
		}
	}
	return out, nil
}

// revoke revokes one link; false when no such link is alive.
func (p *portalLinks) revoke(ctx context.Context, id string) (bool, error) {
	s, err := p.rdb.Get(ctx, keyPortalLink+id).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading portal link %s: %w", id, err)
	}
	var l PortalLink
	if err := json.Unmarshal([]byte(s), &l); err != nil {
		return false, fmt.Errorf("reading portal link %s: %w", id, err)
	}
	left := l.ExpiresAt.Sub(p.now())
	if left <= 0 {
		return false, nil
	}
	if _, err := p.rdb.TxPipelined(ctx, func(pl redis.Pipeliner) error {
		pl.Set(ctx, keyPortalRevoked+id, "1", left+time.Second)
		pl.Del(ctx, keyPortalLink+id)
		pl.ZRem(ctx, keyPortalLinks, id)
		return nil
	}); err != nil {
		return false, fmt.Errorf("revoking portal link %s: %w", id, err)
	}
	return true, nil
}

// revokeTenant revokes every link of tenant issued until now, and returns
// how many of them were alive.
func (p *portalLinks) revokeTenant(ctx context.Context, tenant string) (int, error) {
	now := p.now()
	if err := p.rdb.Set(ctx, keyPortalTenantRevoked+tenant, now.UnixMilli(), MaxPortalLinkTTL+portalTenantRevokeGrace).Err(); err != nil {
		return 0, fmt.Errorf("revoking the portal links of tenant %s: %w", tenant, err)
	}
	links, err := p.list(ctx, tenant, MaxPortalLinks)
	if err != nil {
		return 0, err
	}
	if len(links) == 0 {
		return 0, nil
	}
	if _, err := p.rdb.TxPipelined(ctx, func(pl redis.Pipeliner) error {
		for _, l := range links {
			pl.Del(ctx, keyPortalLink+l.ID)
			pl.ZRem(ctx, keyPortalLinks, l.ID)
		}
		return nil
	}); err != nil {
		return 0, fmt.Errorf("revoking the portal links of tenant %s: %w", tenant, err)
	}
	return len(links), nil
}

// allowChange counts one state-changing portal request under key (a tenant,
// or "test:" and a tenant) in the current minute and reports whether it
// stays within limit, or else how long until the next minute.
func (p *portalLinks) allowChange(ctx context.Context, key string, limit int) (bool, time.Duration, error) {
	now := p.now()
	minute := now.Unix() / 60
	k := keyPortalRatePrefix + key + ":" + strconv.FormatInt(minute, 10)
	var n *redis.IntCmd
	if _, err := p.rdb.TxPipelined(ctx, func(pl redis.Pipeliner) error {
		n = pl.Incr(ctx, k)
		pl.Expire(ctx, k, 2*time.Minute)
		return nil
	}); err != nil {
		return false, 0, fmt.Errorf("counting portal changes: %w", err)
	}
	if n.Val() > int64(limit) {
		return false, time.Unix((minute+1)*60, 0).Sub(now), nil
	}
	return true, 0, nil
}
