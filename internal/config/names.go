package config

import (
	"fmt"
	"strconv"
)

// MaxNameLength bounds rule names, backend ids and router names.
const MaxNameLength = 128

// CheckName reports whether s is a valid name for a rule, a backend or a
// router: 1 to MaxNameLength characters, each an ASCII letter, a digit or
// one of "-", "_", ".", ":" (HAProxy's set for proxy and server names).
// Names become Prometheus label values, log fields and URL path segments of
// the admin API, so they are kept short and free of spaces, quotes, slashes
// and control characters. what names the thing in the message ("rule name").
func CheckName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s must not be empty", what)
	}
	if len(s) > MaxNameLength {
		return fmt.Errorf("%s is %d bytes long; at most %d are allowed", what, len(s), MaxNameLength)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == ':' {
			continue
		}
		bad := strconv.QuoteRune(rune(c))
		if c >= 0x80 {
			bad = "a non-ASCII byte"
		}
		return fmt.Errorf("%s %s has %s at byte %d: use letters, digits, '-', '_', '.' and ':' only", what, quoteShort(s), bad, i)
	}
	return nil
}

// quoteShort quotes s for a message, cut to its first 40 bytes.
func quoteShort(s string) string { return strconv.Quote(shortName(s)) }

// shortName is s cut to its first 40 bytes, so that a message about a name
// that is too long stays readable.
func shortName(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
