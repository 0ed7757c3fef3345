package router

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Params gives a plugin typed access to its config table. Each getter returns
// the default when the key is absent and records an error when the value has
// the wrong type or is out of range; keys no getter asked for are reported as
// unknown. Router.New returns those errors, so a factory only reads its keys.
type Params struct {
	m    map[string]any
	used map[string]bool
	errs []error
}

func (p *Params) get(key string) (any, bool) {
	p.used[key] = true
	v, ok := p.m[key]
	return v, ok
}

func (p *Params) bad(key, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("config.%s: %s", key, fmt.Sprintf(format, args...)))
}

// Bool returns the boolean at key, or def.
func (p *Params) Bool(key string, def bool) bool {
	v, ok := p.get(key)
	if !ok {
		return def
	}
	b, isBool := v.(bool)
	if !isBool {
		p.bad(key, "want true or false, got %s", show(v))
		return def
	}
	return b
}

// Int returns the integer at key, or def; values outside [lo, hi] are errors.
func (p *Params) Int(key string, def, lo, hi int) int {
	v, ok := p.get(key)
	if !ok {
		return def
	}
	i, isInt := v.(int64)
	if !isInt || i < int64(lo) || i > int64(hi) {
		p.bad(key, "want an integer from %d to %d, got %s", lo, hi, show(v))
		return def
	}
	return int(i)
}

// Float returns the number at key, or def; values outside [lo, hi] are errors.
func (p *Params) Float(key string, def, lo, hi float64) float64 {
	v, ok := p.get(key)
	if !ok {
		return def
	}
	var f float64
	switch x := v.(type) {
	case float64:
		f = x
	case int64:
		f = float64(x)
	default:
		p.bad(key, "want a number from %g to %g, got %s", lo, hi, show(v))
		return def
	}
	if f < lo || f > hi {
		p.bad(key, "want a number from %g to %g, got %s", lo, hi, show(v))
		return def
	}
	return f
}

// Enum returns the string at key, which must be one of allowed, or def.
func (p *Params) Enum(key, def string, allowed ...string) string {
	v, ok := p.get(key)
	if !ok {
		return def
	}
	s, isStr := v.(string)
	for _, a := range allowed {
		if isStr && s == a {
			return s
		}
	}
	p.bad(key, "want one of %q, got %s", allowed, show(v))
	return def
}

// Errorf records a problem with the value at key that the typed getters
// cannot see (one key's value that depends on another's, say). Say what is
// allowed: the message is shown to the operator as
// "routers.NAME.config.KEY: router "NAME" (plugin P): MESSAGE".
func (p *Params) Errorf(key, format string, args ...any) {
	p.bad(key, format, args...)
}

func (p *Params) err() error {
	var unknown []string
	for k := range p.m {
		if !p.used[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		known := make([]string, 0, len(p.used))
		for u := range p.used {
			known = append(known, u)
		}
		sort.Strings(known)
		allowed := "none"
		if len(known) > 0 {
			allowed = strings.Join(known, ", ")
		}
		p.errs = append(p.errs, fmt.Errorf("config.%s: unknown key (this plugin takes: %s)", k, allowed))
	}
	return errors.Join(p.errs...)
}

// show renders a config value as the operator wrote it: strings quoted.
func show(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%v", v)
}
