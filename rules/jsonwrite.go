package rules

import (
	"math/bits"
	"unicode/utf8"
)

const hexDigits = "0123456789abcdef"

// jsonSafe says which bytes appendQuote writes as they are without looking
// further: printable ASCII but the quote and the backslash.
var jsonSafe = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// quoteStops marks (in the high bit of each byte) the bytes of the
// little-endian word w that are not jsonSafe, maybe with some safe bytes
// above the first one marked, never below it: w has a safe byte in every
// place below its lowest mark, and no mark at all when it is all safe. A
// byte under 0x20 leaves a high bit in w-0x20… where w has none; one equal to
// '"' or '\\' a zero byte in w^'"'… or w^'\\'…, whose high bit v-0x01…&^v
// sets; one of 0x80 or more its own high bit. Borrows only carry upwards, from
// a marked byte.
func quoteStops(w uint64) uint64 {
	q := w ^ ('"' * swarOnes)
	b := w ^ ('\\' * swarOnes)
	return ((w-0x20*swarOnes)|(q-swarOnes)&^q|(b-swarOnes)&^b)&^w&swarHighs | w&swarHighs
}

// appendQuote appends s as a JSON string. Unlike encoding/json it does not
// escape <, > and &, so event data reads as written; invalid UTF-8 becomes U+FFFD.
// Runs of safe bytes go eight at a time (quoteStops) and are copied at once.
func appendQuote(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if i+8 <= len(s) {
			m := quoteStops(loadWord(s, i))
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) >> 3 // a byte that is not jsonSafe
		} else if jsonSafe[s[i]] {
			i++
			continue
		}
		c := s[i]
		if c < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
