package config

import (
	"encoding/hex"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"time"
)

// HealthCheck configures how a rule's backends are checked: active checks
// (a connect, or a send/expect exchange, every interval) and passive
// detection (dial failures of real traffic). The global [health_check]
// section applies to every rule; a rule's [rules.health_check] overrides it
// key by key. Rule.Health holds the result for each rule.
//
// The zero value checks nothing: no active checks, no passive detection.
type HealthCheck struct {
	// Enabled turns active checks on. Default true.
	Enabled bool `toml:"enabled"`
	// Interval is the time between two checks of one backend. Default 2s,
	// at least 10ms.
	Interval Duration `toml:"interval"`
	// Timeout bounds one whole check: connect, send and the reply. It must
	// be less than Interval. Default 1s.
	Timeout Duration `toml:"timeout"`
	// Retries is how many checks in a row must fail to mark an up backend
	// down. Default 3, range 1–100.
	Retries int `toml:"retries"`
	// Rise is how many checks in a row must pass to mark a down backend up.
	// Default 2, range 1–100.
	Rise int `toml:"rise"`
	// Port is the port checked instead of the backend's traffic port.
	// Default 0: the traffic port.
	Port int `toml:"port"`
	// Send is written once connected (TOML escapes work: "PING\r\n").
	// Default "": a TCP check only connects. A UDP check needs it.
	Send string `toml:"send"`
	// SendHex is Send as hex digits ("0001ab", spaces allowed), for binary
	// protocols. At most one of Send and SendHex. Default "".
	SendHex string `toml:"send_hex"`
	// Expect: the reply must start with these bytes ("+PONG"). Default "".
	Expect string `toml:"expect"`
	// ExpectHex is Expect as hex digits. Default "".
	ExpectHex string `toml:"expect_hex"`
	// ExpectRegex: the reply (its first 4096 bytes) must match this Go
	// regular expression. At most one of Expect, ExpectHex and ExpectRegex.
	// With none, a TCP check passes once connected (and Send written) and a
	// UDP check passes on any reply. Default "".
	ExpectRegex string `toml:"expect_regex"`
	// DNSQuery makes the check a real DNS query for this name (type A; NS
	// for the root "."), over the rule's protocol (TCP: length-prefixed): it
	// passes on an answer with the query's id and question whose rcode is
	// not SERVFAIL. Instead of send and expect. Default "": no DNS check.
	DNSQuery string `toml:"dns_query"`
	// PassiveFailures is how many dials of real traffic must fail in a row,
	// within PassiveWindow, to mark a backend down at once. 0 turns passive
	// detection off. Default 3, range 0–1000.
	PassiveFailures int `toml:"passive_failures"`
	// PassiveWindow is the time within which PassiveFailures must happen.
	// Default 10s.
	PassiveWindow Duration `toml:"passive_window"`
	// PassiveCooldown is, with active checks disabled, how long a backend
	// that passive detection marked down stays down before it is tried
	// again. With active checks enabled, checks bring it back instead.
	// Default 30s.
	PassiveCooldown Duration `toml:"passive_cooldown"`
	// SlowStart ramps the weight of a backend that comes back up from 1 to
	// its full weight over this time (routers that use weights). Default 0:
	// full weight at once.
	SlowStart Duration `toml:"slow_start"`
}

// HealthCheckOverride is a rule's [rules.health_check]: the keys it sets
// (non-nil) replace those of the global [health_check]. It has the same keys
// as HealthCheck.
type HealthCheckOverride struct {
	Enabled         *bool     `toml:"enabled"`
	Interval        *Duration `toml:"interval"`
	Timeout         *Duration `toml:"timeout"`
	Retries         *int      `toml:"retries"`
	Rise            *int      `toml:"rise"`
	Port            *int      `toml:"port"`
	Send            *string   `toml:"send"`
	SendHex         *string   `toml:"send_hex"`
	Expect          *string   `toml:"expect"`
	ExpectHex       *string   `toml:"expect_hex"`
	ExpectRegex     *string   `toml:"expect_regex"`
	DNSQuery        *string   `toml:"dns_query"`
	PassiveFailures *int      `toml:"passive_failures"`
	PassiveWindow   *Duration `toml:"passive_window"`
	PassiveCooldown *Duration `toml:"passive_cooldown"`
	SlowStart       *Duration `toml:"slow_start"`
}

// Health check defaults and limits.
const (
	DefaultHealthInterval  = 2 * time.Second
	DefaultHealthTimeout   = 1 * time.Second
	DefaultHealthRetries   = 3
	DefaultHealthRise      = 2
	DefaultPassiveFailures = 3
	DefaultPassiveWindow   = 10 * time.Second
	DefaultPassiveCooldown = 30 * time.Second
	MinHealthInterval      = 10 * time.Millisecond
	MaxHealthCount         = 100
	MaxPassiveFailures     = 1000
	MaxHealthSend          = 65507 // the largest UDP datagram payload
	MaxHealthExpect        = 4096  // the bytes of a reply that are read
	DefaultDNSHealthQuery  = "."   // dns_query of a dns = true rule that sets no check of its own
)

const healthUDPNeedsSendAdviceText = "set send (or send_hex) in [rules.health_check], or enabled = false"

func (h *HealthCheck) setDefaults() {
	*h = HealthCheck{
		Enabled:         true,
		Interval:        Duration(DefaultHealthInterval),
		Timeout:         Duration(DefaultHealthTimeout),
		Retries:         DefaultHealthRetries,
		Rise:            DefaultHealthRise,
		PassiveFailures: DefaultPassiveFailures,
		PassiveWindow:   Duration(DefaultPassiveWindow),
		PassiveCooldown: Duration(DefaultPassiveCooldown),
	}
}

// SendBytes is the payload a check writes (Send or SendHex decoded).
func (h *HealthCheck) SendBytes() []byte {
	if h.SendHex != "" {
		b, _ := decodeHex(h.SendHex)
		return b
	}
	return []byte(h.Send)
}

// ExpectBytes is the prefix a reply must start with (Expect or ExpectHex
// decoded); nil when there is none.
func (h *HealthCheck) ExpectBytes() []byte {
	switch {
	case h.ExpectHex != "":
		b, _ := decodeHex(h.ExpectHex)
		return b
	case h.Expect != "":
		return []byte(h.Expect)
	}
	return nil
}

// Passive reports whether passive detection is on.
func (h *HealthCheck) Passive() bool { return h.PassiveFailures > 0 }

// checkDNSName says what is wrong with a name a DNS check may ask for:
// dot-separated labels of 1 to 63 bytes, at most 253 bytes in all ("." is
// the root).
func checkDNSName(name string) error {
	n := strings.TrimSuffix(name, ".")
	if n == "" {
		return nil // the root
	}
	if len(n) > 253 {
		return fmt.Errorf("a DNS name has at most 253 bytes, got %d", len(n))
	}
	for _, l := range strings.Split(n, ".") {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("invalid DNS name %q: each label has 1 to 63 bytes", name)
		}
	}
	return nil
}

func decodeHex(s string) ([]byte, error) {
	return hex.DecodeString(strings.Join(strings.Fields(s), ""))
}

// apply copies the keys o sets onto h.
func (o *HealthCheckOverride) apply(h *HealthCheck) {
	ov, hv := reflect.ValueOf(o).Elem(), reflect.ValueOf(h).Elem()
	for i := 0; i < ov.NumField(); i++ {
		if f := ov.Field(i); !f.IsNil() {
			hv.FieldByName(ov.Type().Field(i).Name).Set(f.Elem())
		}
	}
}

// sets reports whether o sets the key (its toml name).
func (o *HealthCheckOverride) sets(key string) bool {
	if o == nil {
		return false
	}
	ov := reflect.ValueOf(o).Elem()
	for i := 0; i < ov.NumField(); i++ {
		if fieldName(ov.Type().Field(i)) == key {
			return !ov.Field(i).IsNil()
		}
	}
	return false
}

// healthProblem is one thing wrong with a health check. keys are the keys
// involved, the first being the one to report it on.
type healthProblem struct {
	keys []string
	msg  string
}

// problems lists what is wrong with h regardless of the protocol.
func (h *HealthCheck) problems() []healthProblem {
	var ps []healthProblem
	add := func(msg string, keys ...string) { ps = append(ps, healthProblem{keys, msg}) }
	if h.Interval.D() < MinHealthInterval {
		add(fmt.Sprintf("must be at least %v, got %v", MinHealthInterval, h.Interval), "interval")
	}
	if h.Timeout <= 0 {
		add("must be greater than 0", "timeout")
	} else if h.Timeout >= h.Interval {
		add(fmt.Sprintf("timeout (%v) must be less than interval (%v): a check must end before the next one starts", h.Timeout, h.Interval), "timeout", "interval")
	}
	if h.Retries < 1 || h.Retries > MaxHealthCount {
		add(fmt.Sprintf("must be from 1 to %d (failed checks in a row that mark a backend down), got %d", MaxHealthCount, h.Retries), "retries")
	}
	if h.Rise < 1 || h.Rise > MaxHealthCount {
		add(fmt.Sprintf("must be from 1 to %d (passed checks in a row that mark a backend up), got %d", MaxHealthCount, h.Rise), "rise")
	}
	if h.Port < 0 || h.Port > 65535 {
		add(fmt.Sprintf("must be from 1 to 65535, or 0 for the traffic port; got %d", h.Port), "port")
	}
	if h.Send != "" && h.SendHex != "" {
		add("set send or send_hex, not both", "send_hex", "send")
	}
	if h.SendHex != "" {
		if _, err := decodeHex(h.SendHex); err != nil {
			add(fmt.Sprintf("invalid hex %q: %v", h.SendHex, err), "send_hex")
		}
	}
	if n := len(h.SendBytes()); n > MaxHealthSend {
		add(fmt.Sprintf("at most %d bytes, got %d", MaxHealthSend, n), "send", "send_hex")
	}
	var expects []string
	for _, k := range []struct{ key, val string }{{"expect", h.Expect}, {"expect_hex", h.ExpectHex}, {"expect_regex", h.ExpectRegex}} {
		if k.val != "" {
			expects = append(expects, k.key)
		}
	}
	if len(expects) > 1 {
		add(fmt.Sprintf("set only one of expect, expect_hex and expect_regex; got %s", strings.Join(expects, " and ")), expects[1], expects[0])
	}
	if h.ExpectHex != "" {
		if _, err := decodeHex(h.ExpectHex); err != nil {
			add(fmt.Sprintf("invalid hex %q: %v", h.ExpectHex, err), "expect_hex")
		}
	}
	if n := len(h.ExpectBytes()); n > MaxHealthExpect {
		add(fmt.Sprintf("at most %d bytes (a check reads that much of the reply), got %d", MaxHealthExpect, n), "expect", "expect_hex")
	}
	if h.ExpectRegex != "" {
		if _, err := regexp.Compile(h.ExpectRegex); err != nil {
			add(fmt.Sprintf("invalid regular expression %q: %v", h.ExpectRegex, err), "expect_regex")
		}
	}
	if h.DNSQuery != "" {
		if len(h.SendBytes()) > 0 || len(expects) > 0 {
			add("a dns_query check sends its own query and judges the answer: set dns_query, or send/expect, not both", "dns_query")
		}
		if err := checkDNSName(h.DNSQuery); err != nil {
			add(err.Error(), "dns_query")
		}
	}
	if h.PassiveFailures < 0 || h.PassiveFailures > MaxPassiveFailures {
		add(fmt.Sprintf("must be from 0 (off) to %d, got %d", MaxPassiveFailures, h.PassiveFailures), "passive_failures")
	}
	if h.PassiveFailures > 0 && h.PassiveWindow <= 0 {
		add("must be greater than 0 when passive_failures is set", "passive_window", "passive_failures")
	}
	if h.PassiveFailures > 0 && !h.Enabled && h.PassiveCooldown <= 0 {
		add("must be greater than 0 when passive detection is on and active checks are off: nothing else would bring a backend back", "passive_cooldown", "enabled", "passive_failures")
	}
	return ps
}

// resolveHealth fills every rule's Health from [health_check] and its
// [rules.health_check], and reports what is wrong with either.
func (c *Config) resolveHealth(e *Errors) {
	global := c.HealthCheck.problems()
	for _, p := range global {
		e.add("health_check."+p.keys[0], p.msg)
	}
	for i := range c.Rules {
		r := &c.Rules[i]
		path := fmt.Sprintf("rules[%d].health_check", i)
		r.Health = c.HealthCheck
		if r.HealthCheck != nil {
			r.HealthCheck.apply(&r.Health)
			// Report what the rule's own keys make wrong; what is wrong in
			// [health_check] alone was reported there.
			for _, p := range r.Health.problems() {
				for _, k := range p.keys {
					if r.HealthCheck.sets(k) {
						e.add(path+"."+k, p.msg)
						break
					}
				}
			}
		}
		if r.Protocol == "udp" && r.DNS && r.Health.DNSQuery == "" && len(r.Health.SendBytes()) == 0 &&
			r.Health.Expect == "" && r.Health.ExpectHex == "" && r.Health.ExpectRegex == "" {
			// A dns = true rule's backends are DNS servers: check them with a
			// real query (the root's NS), passing on an answer with its id and
			// question, unless the rule says how to check them.
			r.Health.DNSQuery = DefaultDNSHealthQuery
		}
		if r.Protocol != "udp" || !r.Health.Enabled || !r.Enabled && r.HealthCheck == nil {
			continue
		}
		send := len(r.Health.SendBytes()) > 0 || r.Health.DNSQuery != ""
		expect := r.Health.Expect != "" || r.Health.ExpectHex != "" || r.Health.ExpectRegex != ""
		switch {
		case !send && expect:
			e.addf(path, "rule %q is UDP: an expect needs a send (a UDP server only replies to a request); %s", r.Name, healthUDPNeedsSendAdviceText)
		case !send && r.HealthCheck != nil:
			e.addf(path, "rule %q is UDP: a UDP health check needs send (it passes only on a reply, never on silence); %s", r.Name, healthUDPNeedsSendAdviceText)
		case !send:
			// Inherited from [health_check], which has no send: a UDP rule
			// cannot be checked with a connect. Say so, and check nothing.
			r.Health.Enabled = false
			c.Warnings = append(c.Warnings, Problem{File: c.File, Line: e.pos.line(fmt.Sprintf("rules[%d]", i)), Path: fmt.Sprintf("rules[%d]", i),
				Msg: fmt.Sprintf("rule %q is UDP and [health_check] has no send: its backends are not actively checked (a UDP check needs a request to reply to; %s)", r.Name, healthUDPNeedsSendAdviceText)})
		}
	}
}

// Summary describes the health check of a rule of protocol in one line, for
// --validate: "tcp connect every 2s (timeout 1s, down after 3 failures, up
// after 2 passes); passive: down after 3 dial failures within 10s".
func (h *HealthCheck) Summary(protocol string) string {
	var parts []string
	if h.Enabled {
		kind := "tcp connect"
		switch {
		case h.DNSQuery != "":
			kind = fmt.Sprintf("%s dns query %q", protocol, h.DNSQuery)
		case protocol == "udp":
			kind = "udp send/expect"
		case len(h.SendBytes()) > 0 || h.Expect != "" || h.ExpectHex != "" || h.ExpectRegex != "":
			kind = "tcp send/expect"
		}
		if h.Port != 0 {
			kind += fmt.Sprintf(" on port %d", h.Port)
		}
		parts = append(parts, fmt.Sprintf("%s every %v (timeout %v, down after %d failures, up after %d passes)",
			kind, h.Interval, h.Timeout, h.Retries, h.Rise))
	}
	if h.Passive() {
		p := fmt.Sprintf("passive: down after %d dial failures within %v", h.PassiveFailures, h.PassiveWindow)
		if !h.Enabled {
			p += fmt.Sprintf(", back after %v", h.PassiveCooldown)
		}
		parts = append(parts, p)
	}
	if len(parts) == 0 {
		return "off"
	}
	if h.SlowStart > 0 {
		parts = append(parts, fmt.Sprintf("slow start %v", h.SlowStart))
	}
	return strings.Join(parts, "; ")
}
