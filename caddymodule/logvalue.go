package caddymodule

import (
	"strconv"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"
)

// Log lines carry no request content: whatever a client or the upstream
// chose (a path, a rendered event type, a content coding, an error that
// embeds a rendered value, a panic) reaches a log line only as a short,
// escaped prefix and its length, so that a hostile value can neither fill the
// log (a 500 KB line per request) nor smuggle a body or credential into it.
const (
	// logValueMax is how many bytes of a request- or response-derived value
	// a log line shows. A value that is longer, or holds control characters
	// or invalid UTF-8, is quoted (Go %q escaping) and cut, with its length.
	logValueMax = 64
	// logErrorMax is how many bytes of an error's text a log line shows. An
	// error that is longer, or holds control characters or invalid UTF-8,
	// is quoted and cut like a value.
	logErrorMax = 128
)

// clipValue renders a request- or response-derived value for a log line: as
// it is when it is short and printable, otherwise quoted (Go %q escaping)
// and cut to logValueMax bytes with its full length, e.g.
// "aaaa"... (500000 bytes).
func clipValue(s string) string {
	if len(s) <= logValueMax && printable(s) {
		return s
	}
	return clip(s, logValueMax)
}

// clip quotes s, cut to at most max bytes (at a character boundary) with its
// length noted when it is longer.
func clip(s string, max int) string {
	if len(s) <= max {
		return strconv.Quote(s)
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "... (" + strconv.Itoa(len(s)) + " bytes)"
}

// clipError renders an error's text for a log line: as it is when it is
// short and printable, otherwise quoted and cut to logErrorMax bytes.
func clipError(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) <= logErrorMax && printable(s) {
		return s
	}
	return clip(s, logErrorMax)
}

func printable(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// valueField is a zap field holding a request- or response-derived value.
func valueField(key, value string) zap.Field { return zap.String(key, clipValue(value)) }

// errorField is zap.Error for errors that may embed request or response
// content: the text is cut by clipError.
func errorField(err error) zap.Field { return zap.String("error", clipError(err)) }
