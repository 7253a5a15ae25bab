package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/authtap/authtap/rules"
	"github.com/authtap/authtap/worker"
)

// MaxAPIBody bounds a management API request body, in bytes.
const MaxAPIBody = 1 << 20

// Error codes of the management API, in the "code" member of an error.
const (
	CodeInvalidJSON      = "invalid_json"
	CodeInvalidField     = "invalid_field"
	CodeInvalidParameter = "invalid_parameter"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeConflict         = "conflict"
	CodeReadOnly         = "read_only"
	CodeDisabled         = "endpoint_disabled"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeTooLarge         = "body_too_large"
	CodeUnauthorized     = "unauthorized"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
	CodeForbidden        = "forbidden"
	CodeLimitReached     = "limit_reached"
	CodeRateLimited      = "rate_limited"
	// Portal token errors (401), and the read-only token's refusal (403).
	CodeTokenMissing   = "token_missing"
	CodeTokenMalformed = "token_malformed"
	CodeTokenInvalid   = "token_invalid"
	CodeTokenExpired   = "token_expired"
	CodeTokenRevoked   = "token_revoked"
	CodeReadOnlyToken  = "read_only_token"
)

// apiError is an error answered to an API client: {"error": {...}}.
type apiError struct {
	Status  int    `json:"-"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	// cause is logged for 5xx answers and never sent.
	cause error
}

func (e *apiError) Error() string { return e.Message }

func errorf(status int, code, format string, a ...any) *apiError {
	return &apiError{Status: status, Code: code, Message: fmt.Sprintf(format, a...)}
}

func fieldError(field, format string, a ...any) *apiError {
	return &apiError{Status: http.StatusBadRequest, Code: CodeInvalidField, Field: field,
		Message: field + ": " + fmt.Sprintf(format, a...)}
}

// forbidden is a 403 about field: what a portal link may not do.
func forbidden(field, format string, a ...any) *apiError {
	return &apiError{Status: http.StatusForbidden, Code: CodeForbidden, Field: field,
		Message: field + ": " + fmt.Sprintf(format, a...)}
}

// writeJSON answers v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"encoding the response failed"}}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeError answers e; a 5xx is logged with its cause and answered with a
// generic message.
func (a *api) writeError(w http.ResponseWriter, r *http.Request, e *apiError) {
	if e.Status >= 500 {
		a.log.Error("management API request failed", zap.String("method", r.Method),
			zap.String("path", r.URL.Path), zap.Int("status", e.Status), zap.Error(e.cause))
		if e.Status == http.StatusInternalServerError {
			e = &apiError{Status: e.Status, Code: CodeInternal, Message: "internal error; the details are in the server log"}
		}
	}
	writeJSON(w, e.Status, struct {
		Error *apiError `json:"error"`
	}{e})
}

// internal wraps an unexpected error as a 500.
func internal(err error) *apiError {
	return &apiError{Status: http.StatusInternalServerError, Code: CodeInternal, Message: "internal error", cause: err}
}

// storeError maps an error of the Store to an API error.
func storeError(err error, endpointID string) *apiError {
	switch {
	case errors.Is(err, worker.ErrNotFound):
		return errorf(http.StatusNotFound, CodeNotFound, "endpoint %q does not exist", endpointID)
	case errors.Is(err, worker.ErrReadOnly):
		return readOnlyError(endpointID)
	case errors.Is(err, worker.ErrConflict):
		return &apiError{Status: http.StatusConflict, Code: CodeConflict, Field: "id",
			Message: fmt.Sprintf("id: endpoint %q already exists", endpointID)}
	case errors.Is(err, worker.ErrInvalidEndpoint):
		msg := err.Error()
		// "invalid endpoint ep_x: detail" → "detail"
		if _, rest, ok := strings.Cut(msg, ": "); ok {
			msg = rest
		}
		return &apiError{Status: http.StatusBadRequest, Code: CodeInvalidField, Field: fieldOfMessage(msg), Message: msg}
	case errors.Is(err, worker.ErrEventNotFound):
		return errorf(http.StatusNotFound, CodeNotFound, "event is not (or no longer) kept")
	}
	return internal(err)
}

// fieldOfMessage guesses the field a validation message of the store is
// about; the API checks each field itself first, so this is a fallback.
func fieldOfMessage(msg string) string {
	m := strings.ToLower(msg)
	for _, k := range []struct{ word, field string }{
		{"url", "url"}, {"mode", "mode"}, {"format", "format"}, {"event filter", "events"},
		{"event header", "event_header"}, {"bearer token", "bearer_token"}, {"rate_limit", "rate_limit"},
		{"max_concurrency", "max_concurrency"}, {"secret", "secret"}, {"id ", "id"},
	} {
		if strings.HasPrefix(m, k.word) || strings.Contains(m, " "+k.word) {
			return k.field
		}
	}
	return ""
}

func readOnlyError(id string) *apiError {
	return errorf(http.StatusConflict, CodeReadOnly,
		"endpoint %q is declared in the Caddy config (or the worker's endpoints file) and is read-only through the API; change it there", id)
}

// readJSON decodes the request body into v, refusing unknown fields, trailing
// data, a body over MaxAPIBody and a content type other than JSON. An empty
// body leaves v as it is when optional is set, and is refused otherwise.
func readJSON(w http.ResponseWriter, r *http.Request, v any, optional bool, what string) *apiError {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxAPIBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return errorf(http.StatusRequestEntityTooLarge, CodeTooLarge, "request body is larger than %d bytes", MaxAPIBody)
		}
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "reading request body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		if optional {
			return nil
		}
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "request body is empty; want %s as a JSON object", what)
	}
	if ct := r.Header.Get("Content-Type"); !isJSONContentType(ct) {
		if ct == "" {
			ct = "none"
		}
		return errorf(http.StatusUnsupportedMediaType, CodeUnsupportedMedia,
			"request body must be application/json, got Content-Type %s", ct)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err, body, what)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errorf(http.StatusBadRequest, CodeInvalidJSON,
			"request body has data after the JSON object at offset %d", dec.InputOffset())
	}
	return nil
}

func isJSONContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	return mt == "application/json" || strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")
}

// jsonError describes a decoding error: where the JSON is malformed, which
// field has the wrong type, or which field is unknown.
func jsonError(err error, body []byte, what string) *apiError {
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		line, col := lineCol(body, se.Offset)
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "malformed JSON at offset %d (line %d, column %d): %v", se.Offset, line, col, se)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return errorf(http.StatusBadRequest, CodeInvalidJSON, "malformed JSON: the body ends at offset %d before the value is complete", len(body))
	}
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if te.Field == "" {
			return errorf(http.StatusBadRequest, CodeInvalidJSON, "want %s as a JSON object, got a JSON %s", what, te.Value)
		}
		return fieldError(te.Field, "want %s, got a JSON %s (offset %d)", jsonKind(te.Type.Kind().String()), te.Value, te.Offset)
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, `json: unknown field "`); ok {
		name = strings.TrimSuffix(name, `"`)
		return &apiError{Status: http.StatusBadRequest, Code: CodeInvalidField, Field: name,
			Message: fmt.Sprintf("%s: unknown field in %s", name, what)}
	}
	return errorf(http.StatusBadRequest, CodeInvalidJSON, "decoding %s: %s", what, strings.TrimPrefix(msg, "json: "))
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "slice", "array":
		return "an array"
	case "bool":
		return "true or false"
	case "struct", "map":
		return "an object"
	case "int", "int64", "int32", "uint", "uint64":
		return "an integer"
	case "float64", "float32":
		return "a number"
	}
	return k
}

func lineCol(b []byte, off int64) (line, col int) {
	off = min(max(off, 0), int64(len(b)))
	line = 1 + bytes.Count(b[:off], []byte{'\n'})
	col = int(off) - bytes.LastIndexByte(b[:off], '\n')
	return line, col
}

// checkEndpointConfig validates c field by field before the store does, so
// that an error names the field. It uses the store's own rules: each field
// is checked on an otherwise valid record.
func checkEndpointConfig(c worker.EndpointConfig) *apiError {
	if c.ID != "" {
		if err := worker.ValidateEndpointID(c.ID); err != nil {
			return fieldError("id", "%v", err)
		}
	}
	mode := c.Mode
	if mode == "" {
		mode = rules.ModeLive
	}
	if mode != rules.ModeLive && mode != rules.ModeTest {
		return fieldError("mode", "want %q or %q, got %q", rules.ModeLive, rules.ModeTest, c.Mode)
	}
	if e := checkURL(c.URL, mode); e != nil {
		return e
	}
	if c.Tenant != "" {
		if err := rules.ValidTenant(c.Tenant); err != nil {
			return fieldError("tenant", "%v", err)
		}
	}
	for i, f := range c.Events {
		if err := worker.ValidateEventFilter(f); err != nil {
			return &apiError{Status: http.StatusBadRequest, Code: CodeInvalidField, Field: "events",
				Message: fmt.Sprintf("events[%d]: %v", i, err)}
		}
	}
	if field, err := worker.CheckEndpointOptions(c); err != nil {
		return fieldError(field, "%v", err)
	}
	if c.Secret != "" {
		if _, err := worker.DecodeSecret(c.Secret); err != nil {
			return fieldError("secret", "%v", err)
		}
	}
	return nil
}

// checkURL checks an endpoint URL for mode; the message repeats the URL
// without any user information.
func checkURL(raw, mode string) *apiError {
	err := worker.ValidateEndpointURL(raw, mode == rules.ModeLive)
	if err == nil {
		return nil
	}
	if worker.IsHostFormError(err) {
		return fieldError("url", "%v", err)
	}
	want := "an absolute http or https URL for a test endpoint"
	if mode == rules.ModeLive {
		want = "an absolute https URL for a live endpoint"
	}
	shown := worker.MaskURL(raw)
	if shown == "" {
		return fieldError("url", "want %s (%v)", want, err)
	}
	return fieldError("url", "want %s, got %q (%v)", want, shown, err)
}

// checkAddress refuses an endpoint URL whose literal IP address the
// worker's address guard for mode would never dial (APIConfig.CheckEndpointURL).
func (a *api) checkAddress(raw, mode string) *apiError {
	if a.checkURL == nil {
		return nil
	}
	if err := a.checkURL(raw, mode); err != nil {
		return fieldError("url", "%v", err)
	}
	return nil
}

// checkPatch validates the fields p sets, given the endpoint's current state.
func checkPatch(p worker.EndpointPatch, cur worker.Endpoint) *apiError {
	c := worker.EndpointConfig{ID: cur.ID, URL: cur.URL, Mode: cur.Mode, Format: cur.Format, EventHeader: cur.EventHeader,
		RateLimit: cur.RateLimit}
	if p.URL != nil {
		c.URL = *p.URL
	}
	if p.Mode != nil {
		c.Mode = *p.Mode
	}
	if p.Events != nil {
		c.Events = *p.Events
	}
	if p.Tenant != nil {
		c.Tenant = *p.Tenant
	}
	if p.Format != nil {
		c.Format = *p.Format
	}
	if p.EventHeader != nil {
		c.EventHeader = *p.EventHeader
	}
	if p.BearerToken != nil {
		c.BearerToken = *p.BearerToken
	}
	if p.RateLimit != nil {
		c.RateLimit = *p.RateLimit
	}
	if p.MaxConcurrency != nil {
		c.MaxConcurrency = *p.MaxConcurrency
	}
	if p.Mode != nil && *p.Mode == "" {
		return fieldError("mode", "want %q or %q, got \"\"", rules.ModeLive, rules.ModeTest)
	}
	if e := checkEndpointConfig(c); e != nil {
		if e.Field == "url" && p.URL == nil && p.Mode != nil {
			e.Message += fmt.Sprintf("; the endpoint's URL does not suit mode %q", *p.Mode)
		}
		return e
	}
	return nil
}
