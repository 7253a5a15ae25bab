package worker

import (
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/authtap/authtap/rules"
)

// Body formats of an endpoint.
const (
	// FormatEnvelope sends the whole event envelope (id, type, timestamp, data, source, mode).
	FormatEnvelope = "envelope"
	// FormatData sends only the event's data, as some services expect (not
	// its previous, subject or source).
	FormatData = "data"
)

// Endpoint defaults and bounds.
const (
	// DefaultMaxConcurrency is how many deliveries to one endpoint may be in flight
	// at once (across all workers on the same Redis) when the endpoint sets no limit.
	DefaultMaxConcurrency = 5
	// MaxMaxConcurrency bounds an endpoint's MaxConcurrency.
	MaxMaxConcurrency = 1000
	// DefaultSecretOverlap is how long a rotated-out secret keeps signing.
	DefaultSecretOverlap = 24 * time.Hour
)

var (
	// ErrNotFound is wrapped by errors about an endpoint that does not exist.
	ErrNotFound = errors.New("endpoint not found")
	// ErrReadOnly is wrapped by errors about changing an endpoint declared in the configuration.
	ErrReadOnly = errors.New("endpoint is declared in the configuration and is read-only; change it in the configuration (e.g. the Caddyfile) instead")
	// ErrInvalidEndpoint is wrapped by every validation error of an endpoint or patch.
	ErrInvalidEndpoint = errors.New("invalid endpoint")
	// ErrConflict is wrapped when an endpoint id is already taken.
	ErrConflict = errors.New("endpoint id already exists")
)

// EndpointConfig declares an endpoint: in the configuration (read-only, for
// GitOps) or as the input of Store.Create.
type EndpointConfig struct {
	// ID names the endpoint. Required in the configuration; Store.Create generates
	// "ep_…" when it is empty. Letters, digits, '_' and '-', at most 64 characters.
	ID string `json:"id,omitempty"`
	// URL receives the deliveries. Live endpoints must use https and may not
	// resolve to loopback, private, link-local or metadata addresses unless the
	// worker's allowlist opens them; test endpoints may use plain http and local hosts.
	URL string `json:"url"`
	// Description is free text for people.
	Description string `json:"description,omitempty"`
	// Events are the event-type filters, e.g. "user.created", "user.*" (any type
	// under user.), "*.deleted" (one segment) or "*" (everything). Empty means "*".
	Events []string `json:"events,omitempty"`
	// Mode is "live" (default) or "test": live events go only to live endpoints,
	// test events only to test endpoints.
	Mode string `json:"mode,omitempty"`
	// Tenant, when set, makes this a tenant endpoint: it receives only events
	// of this tenant (rules.Event.Tenant, compared exactly), never another
	// tenant's nor an operator-only event. Empty (default) is an operator
	// endpoint, which receives every tenant's events and the operator-only
	// ones its filters take. A tenant id is checked by rules.ValidTenant.
	Tenant string `json:"tenant,omitempty"`
	// Secret is the signing secret ("whsec_" + base64 of 24–64 bytes). Required in
	// the configuration; Store.Create generates one when it is empty.
	Secret string `json:"secret,omitempty"`
	// BearerToken, when set, is sent as "Authorization: Bearer <token>".
	BearerToken string `json:"bearer_token,omitempty"`
	// EventHeader, when set, names a header that carries the event type (e.g. "X-Defguard-Event").
	EventHeader string `json:"event_header,omitempty"`
	// Format is "envelope" (default, the whole event) or "data" (only its data).
	Format string `json:"format,omitempty"`
	// RateLimit caps deliveries per second to this endpoint; 0 (default) means unlimited.
	RateLimit float64 `json:"rate_limit,omitempty"`
	// MaxConcurrency caps deliveries in flight to this endpoint; 0 means the default of 5.
	MaxConcurrency int `json:"max_concurrency,omitempty"`
	// Disabled starts the endpoint disabled. Default false.
	Disabled bool `json:"disabled,omitempty"`
}

// EndpointPatch changes some fields of an endpoint; nil fields stay as they are.
type EndpointPatch struct {
	URL            *string   `json:"url,omitempty"`
	Description    *string   `json:"description,omitempty"`
	Events         *[]string `json:"events,omitempty"`
	Mode           *string   `json:"mode,omitempty"`
	Tenant         *string   `json:"tenant,omitempty"` // "" makes it an operator endpoint
	BearerToken    *string   `json:"bearer_token,omitempty"`
	EventHeader    *string   `json:"event_header,omitempty"`
	Format         *string   `json:"format,omitempty"`
	RateLimit      *float64  `json:"rate_limit,omitempty"`
	MaxConcurrency *int      `json:"max_concurrency,omitempty"`
}

// Endpoint is a subscriber. Its JSON form (for listings) never contains the
// signing secrets or the bearer token; Secret returns the current secret for
// the one response that may show it (create and rotate).
type Endpoint struct {
	ID             string   `json:"id"`
	URL            string   `json:"url"`
	Description    string   `json:"description,omitempty"`
	Events         []string `json:"events"`
	Mode           string   `json:"mode"`
	Tenant         string   `json:"tenant,omitempty"`
	Enabled        bool     `json:"enabled"`
	DisabledReason string   `json:"disabled_reason,omitempty"`
	EventHeader    string   `json:"event_header,omitempty"`
	Format         string   `json:"format"`
	RateLimit      float64  `json:"rate_limit,omitempty"`
	MaxConcurrency int      `json:"max_concurrency"`
	HasBearerToken bool     `json:"has_bearer_token"`
	// ReadOnly is true for endpoints declared in the configuration.
	ReadOnly bool `json:"read_only,omitempty"`
	// SecretExpiries lists when each still-valid previous secret stops signing.
	SecretExpiries []time.Time `json:"previous_secrets_expire_at,omitempty"`
	CreatedAt      time.Time   `json:"created_at"`
	UpdatedAt      time.Time   `json:"updated_at"`

	rec *endpointRecord
}

// Secret returns the endpoint's current signing secret. Show it only in the
// response to a create or rotate request.
func (e Endpoint) Secret() string {
	if e.rec == nil || len(e.rec.Secrets) == 0 {
		return ""
	}
	return e.rec.Secrets[0].Value
}

// endpointRecord is the stored form of an endpoint, secrets included.
type endpointRecord struct {
	ID             string         `json:"id"`
	URL            string         `json:"url"`
	Description    string         `json:"description,omitempty"`
	Events         []string       `json:"events"`
	Mode           string         `json:"mode"`
	Tenant         string         `json:"tenant,omitempty"`
	Enabled        bool           `json:"enabled"`
	DisabledReason string         `json:"disabled_reason,omitempty"`
	BearerToken    string         `json:"bearer_token,omitempty"`
	EventHeader    string         `json:"event_header,omitempty"`
	Format         string         `json:"format"`
	RateLimit      float64        `json:"rate_limit,omitempty"`
	MaxConcurrency int            `json:"max_concurrency,omitempty"`
	Secrets        []secretRecord `json:"secrets"`
	CreatedAt      time.Time      `json:"created_at"`
	UpdatedAt      time.Time      `json:"updated_at"`

	readOnly bool
}

// secretRecord is one signing secret; the first of a record's list is the
// current one (no expiry), the others are rotated-out secrets that keep signing
// until ExpiresAt.
type secretRecord struct {
	Value     string    `json:"value"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
}

func (r *endpointRecord) public(now time.Time) Endpoint {
	e := Endpoint{
		ID: r.ID, URL: r.URL, Description: r.Description, Events: slices.Clone(r.Events),
		Mode: r.Mode, Tenant: r.Tenant, Enabled: r.Enabled, DisabledReason: r.DisabledReason, EventHeader: r.EventHeader,
		Format: r.Format, RateLimit: r.RateLimit, MaxConcurrency: r.maxConcurrency(),
		HasBearerToken: r.BearerToken != "", ReadOnly: r.readOnly,
		CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, rec: r,
	}
	if e.Events == nil {
		e.Events = []string{}
	}
	for _, s := range r.Secrets[min(1, len(r.Secrets)):] {
		if s.ExpiresAt.After(now) {
			e.SecretExpiries = append(e.SecretExpiries, s.ExpiresAt)
		}
	}
	return e
}

func (r *endpointRecord) maxConcurrency() int {
	if r.MaxConcurrency <= 0 {
		return DefaultMaxConcurrency
	}
	return r.MaxConcurrency
}

// signingKeys returns the raw keys of the current secret and of every previous
// secret that has not yet expired at now.
func (r *endpointRecord) signingKeys(now time.Time) ([][]byte, error) {
	keys := make([][]byte, 0, len(r.Secrets))
	for i, s := range r.Secrets {
		if i > 0 && !s.ExpiresAt.After(now) {
			continue
		}
		k, err := DecodeSecret(s.Value)
		if err != nil {
			return nil, fmt.Errorf("endpoint %s secret %d: %w", r.ID, i, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("endpoint %s has no signing secret", r.ID)
	}
	return keys, nil
}

// pruneSecrets drops previous secrets that expired at now.
func (r *endpointRecord) pruneSecrets(now time.Time) {
	if len(r.Secrets) < 2 {
		return
	}
	kept := r.Secrets[:1]
	for _, s := range r.Secrets[1:] {
		if s.ExpiresAt.After(now) {
			kept = append(kept, s)
		}
	}
	r.Secrets = kept
}

// matches reports whether the endpoint takes events of type typ in mode
// belonging to tenant ("" for an operator-only event).
func (r *endpointRecord) matches(typ, mode, tenant string) bool {
	if !r.Enabled || r.Mode != mode || !TenantTakes(r.Tenant, tenant) {
		return false
	}
	if len(r.Events) == 0 {
		return true
	}
	for _, f := range r.Events {
		if MatchEventFilter(f, typ) {
			return true
		}
	}
	return false
}

// TenantTakes reports whether an endpoint of endpointTenant may receive an
// event of eventTenant: an operator endpoint ("") takes every event, a tenant
// endpoint only events of exactly its tenant, so never another tenant's event
// and never an operator-only event (eventTenant "").
func TenantTakes(endpointTenant, eventTenant string) bool {
	return endpointTenant == "" || endpointTenant == eventTenant
}

// MatchEventFilter reports whether the event-type filter pattern takes events of
// type typ: "*" takes everything, a pattern ending in ".*" takes every type under
// its prefix (any depth: "user.*" takes "user.created" and "user.email.changed"),
// and otherwise a "*" segment stands for exactly one segment ("*.deleted").
func MatchEventFilter(pattern, typ string) bool {
	if pattern == "*" {
		return true
	}
	if prefix, ok := strings.CutSuffix(pattern, ".*"); ok && !strings.Contains(prefix, "*") {
		return strings.HasPrefix(typ, prefix+".")
	}
	if !strings.Contains(pattern, "*") {
		return pattern == typ
	}
	ps, ts := strings.Split(pattern, "."), strings.Split(typ, ".")
	if len(ps) != len(ts) {
		return false
	}
	for i := range ps {
		if ps[i] != "*" && ps[i] != ts[i] {
			return false
		}
	}
	return true
}

// ValidateEventFilter checks one filter: dot-separated segments of letters,
// digits, '_' and '-', where a segment may also be "*".
func ValidateEventFilter(f string) error {
	if f == "" {
		return errors.New("empty event filter")
	}
	for seg := range strings.SplitSeq(f, ".") {
		if seg == "*" {
			continue
		}
		if seg == "" {
			return fmt.Errorf("event filter %q has an empty segment", f)
		}
		for _, c := range seg {
			if !isNameChar(c) {
				return fmt.Errorf("event filter %q: %q is not allowed (use letters, digits, '_', '-', '.' and whole-segment '*')", f, c)
			}
		}
	}
	return nil
}

func isNameChar(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// ValidateEndpointID checks an endpoint id: 1 to 64 letters, digits, '_' and '-'.
func ValidateEndpointID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("id must be 1 to 64 characters, got %d", len(id))
	}
	for _, c := range id {
		if !isNameChar(c) {
			return fmt.Errorf("id %q: %q is not allowed (use letters, digits, '_' and '-')", id, c)
		}
	}
	return nil
}

// newEndpointID returns "ep_" followed by 16 random base32 characters.
func newEndpointID() (string, error) {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generating endpoint id: %w", err)
	}
	return "ep_" + strings.ToLower(base32.StdEncoding.EncodeToString(b[:])), nil
}

// normalize fills defaults and validates the record; it never mentions secrets' values.
func (r *endpointRecord) normalize() error {
	wrap := func(err error) error {
		if r.ID == "" {
			return fmt.Errorf("%w: %w", ErrInvalidEndpoint, err)
		}
		return fmt.Errorf("%w %s: %w", ErrInvalidEndpoint, r.ID, err)
	}
	if err := ValidateEndpointID(r.ID); err != nil {
		return wrap(err)
	}
	if r.Mode == "" {
		r.Mode = rules.ModeLive
	}
	if r.Mode != rules.ModeLive && r.Mode != rules.ModeTest {
		return wrap(fmt.Errorf("mode must be %q or %q, got %q", rules.ModeLive, rules.ModeTest, r.Mode))
	}
	if err := ValidateEndpointURL(r.URL, r.Mode == rules.ModeLive); err != nil {
		return wrap(err)
	}
	if r.Tenant != "" {
		if err := rules.ValidTenant(r.Tenant); err != nil {
			return wrap(err)
		}
	}
	if r.Format == "" {
		r.Format = FormatEnvelope
	}
	if r.Format != FormatEnvelope && r.Format != FormatData {
		return wrap(fmt.Errorf("format must be %q or %q, got %q", FormatEnvelope, FormatData, r.Format))
	}
	for _, f := range r.Events {
		if err := ValidateEventFilter(f); err != nil {
			return wrap(err)
		}
	}
	if r.EventHeader != "" {
		for _, c := range r.EventHeader {
			if !isNameChar(c) || c == '_' {
				return wrap(fmt.Errorf("event header %q: %q is not allowed in a header name", r.EventHeader, c))
			}
		}
		switch http.CanonicalHeaderKey(r.EventHeader) {
		case "Authorization", "Content-Type", "Content-Length", "Host", "User-Agent",
			"Webhook-Id", "Webhook-Timestamp", "Webhook-Signature":
			return wrap(fmt.Errorf("event header %q would replace a header authtap sets itself", r.EventHeader))
		}
	}
	if strings.ContainsAny(r.BearerToken, "\r\n\x00 ") {
		return wrap(errors.New("bearer token may not contain spaces, control characters or line breaks"))
	}
	if r.RateLimit < 0 {
		return wrap(fmt.Errorf("rate_limit must be zero (unlimited) or positive, got %v", r.RateLimit))
	}
	if r.MaxConcurrency < 0 || r.MaxConcurrency > MaxMaxConcurrency {
		return wrap(fmt.Errorf("max_concurrency must be 0 (default %d) to %d, got %d", DefaultMaxConcurrency, MaxMaxConcurrency, r.MaxConcurrency))
	}
	if len(r.Secrets) == 0 {
		return wrap(errors.New("no signing secret"))
	}
	for i, s := range r.Secrets {
		if _, err := DecodeSecret(s.Value); err != nil {
			if i == 0 {
				return wrap(err)
			}
			return wrap(fmt.Errorf("previous secret %d: %w", i, err))
		}
	}
	return nil
}

// CheckEndpointOptions validates the delivery options of c (format,
// event_header, bearer_token, rate_limit, max_concurrency) one at a time, with
// the rules Store.Create applies, and returns the JSON name of the first
// invalid one with its error (without the "invalid endpoint" prefix), or
// "", nil. The management API uses it to name the field of an error.
func CheckEndpointOptions(c EndpointConfig) (field string, err error) {
	checks := []struct {
		field string
		set   func(r *endpointRecord)
	}{
		{"format", func(r *endpointRecord) { r.Format = c.Format }},
		{"event_header", func(r *endpointRecord) { r.EventHeader = c.EventHeader }},
		{"bearer_token", func(r *endpointRecord) { r.BearerToken = c.BearerToken }},
		{"rate_limit", func(r *endpointRecord) { r.RateLimit = c.RateLimit }},
		{"max_concurrency", func(r *endpointRecord) { r.MaxConcurrency = c.MaxConcurrency }},
	}
	for _, ch := range checks {
		r := &endpointRecord{ID: "x", URL: "https://example.com/", Mode: rules.ModeLive, Format: FormatEnvelope,
			Secrets: []secretRecord{{Value: SecretPrefix + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}}
		ch.set(r)
		if err := r.normalize(); err != nil {
			msg := err.Error()
			if _, rest, ok := strings.Cut(msg, ": "); ok {
				msg = rest
			}
			return ch.field, errors.New(msg)
		}
	}
	return "", nil
}

// recordFromConfig builds a record from c; an empty secret is generated.
func recordFromConfig(c EndpointConfig, now time.Time) (*endpointRecord, error) {
	r := &endpointRecord{
		ID: c.ID, URL: c.URL, Description: c.Description, Events: slices.Clone(c.Events), Mode: c.Mode, Tenant: c.Tenant,
		Enabled: !c.Disabled, BearerToken: c.BearerToken, EventHeader: c.EventHeader, Format: c.Format,
		RateLimit: c.RateLimit, MaxConcurrency: c.MaxConcurrency, CreatedAt: now, UpdatedAt: now,
	}
	if c.Disabled {
		r.DisabledReason = "created disabled"
	}
	secret := c.Secret
	if secret == "" {
		var err error
		if secret, err = NewSecret(); err != nil {
			return nil, err
		}
	}
	r.Secrets = []secretRecord{{Value: secret}}
	return r, r.normalize()
}

// apply changes r by p.
func (p EndpointPatch) apply(r *endpointRecord) {
	set := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	set(&r.URL, p.URL)
	set(&r.Description, p.Description)
	set(&r.Mode, p.Mode)
	set(&r.Tenant, p.Tenant)
	set(&r.BearerToken, p.BearerToken)
	set(&r.EventHeader, p.EventHeader)
	set(&r.Format, p.Format)
	if p.Events != nil {
		r.Events = slices.Clone(*p.Events)
	}
	if p.RateLimit != nil {
		r.RateLimit = *p.RateLimit
	}
	if p.MaxConcurrency != nil {
		r.MaxConcurrency = *p.MaxConcurrency
	}
}
