package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

const healthRules = `
[[rules]]
name = "web"
[[rules.backends]]
id = "a"
address = "127.0.0.1:9001"
`

func TestHealthCheckDefaults(t *testing.T) {
	cfg, err := Parse("h.toml", []byte(healthRules))
	if err != nil {
		t.Fatal(err)
	}
	want := HealthCheck{
		Enabled:         true,
		Interval:        Duration(2 * time.Second),
		Timeout:         Duration(time.Second),
		Retries:         3,
		Rise:            2,
		PassiveFailures: 3,
		PassiveWindow:   Duration(10 * time.Second),
		PassiveCooldown: Duration(30 * time.Second),
	}
	if cfg.HealthCheck != want {
		t.Errorf("[health_check] defaults\n got %+v\nwant %+v", cfg.HealthCheck, want)
	}
	if cfg.Rules[0].Health != want {
		t.Errorf("rule without [rules.health_check] does not inherit the defaults: %+v", cfg.Rules[0].Health)
	}
	if cfg.Rules[0].HealthCheck != nil {
		t.Errorf("absent [rules.health_check] decoded as %+v", cfg.Rules[0].HealthCheck)
	}
}

// TestHealthCheckOverride: a rule's section replaces only the keys it sets.
func TestHealthCheckOverride(t *testing.T) {
	cfg, err := Parse("h.toml", []byte(`
[health_check]
interval = "500ms"
timeout = "200ms"
retries = 5
send = "PING\r\n"
expect = "+PONG"
slow_start = "30s"

[[rules]]
name = "web"
[[rules.backends]]
id = "a"
address = "127.0.0.1:9001"

[[rules]]
name = "redis"
[rules.health_check]
retries = 2
port = 9100
expect = ""
expect_regex = '^\+PONG\r?$'
passive_failures = 0
[rules.matcher]
type = "port"
port = 7000
[[rules.backends]]
id = "r"
address = "127.0.0.1:6379"
`))
	if err != nil {
		t.Fatal(err)
	}
	web, redis := cfg.Rules[0].Health, cfg.Rules[1].Health
	if web != cfg.HealthCheck {
		t.Errorf("web: %+v, want the global %+v", web, cfg.HealthCheck)
	}
	if web.Send != "PING\r\n" || web.Interval.D() != 500*time.Millisecond || web.Retries != 5 || web.Rise != 2 {
		t.Errorf("web: %+v", web)
	}
	want := cfg.HealthCheck
	want.Retries, want.Port, want.Expect, want.ExpectRegex, want.PassiveFailures = 2, 9100, "", `^\+PONG\r?$`, 0
	if redis != want {
		t.Errorf("redis\n got %+v\nwant %+v", redis, want)
	}
	if !redis.Enabled || redis.Send != "PING\r\n" || redis.SlowStart.D() != 30*time.Second {
		t.Errorf("redis did not inherit the keys it does not set: %+v", redis)
	}
}

// TestHealthCheckOverrideHasEveryKey keeps HealthCheckOverride in step with
// HealthCheck: same fields, same keys, pointer types.
func TestHealthCheckOverrideHasEveryKey(t *testing.T) {
	ht, ot := reflect.TypeOf(HealthCheck{}), reflect.TypeOf(HealthCheckOverride{})
	if ht.NumField() != ot.NumField() {
		t.Fatalf("HealthCheck has %d fields, HealthCheckOverride %d", ht.NumField(), ot.NumField())
	}
	for i := 0; i < ht.NumField(); i++ {
		hf, of := ht.Field(i), ot.Field(i)
		if hf.Name != of.Name || hf.Tag != of.Tag || of.Type != reflect.PointerTo(hf.Type) {
			t.Errorf("field %d: HealthCheck.%s %s %s vs HealthCheckOverride.%s %s %s", i, hf.Name, hf.Type, hf.Tag, of.Name, of.Type, of.Tag)
		}
	}
}

func TestHealthCheckBytes(t *testing.T) {
	h := HealthCheck{SendHex: "00 01 ab\nFF", ExpectHex: "2b504f4e47"}
	if got := h.SendBytes(); string(got) != "\x00\x01\xab\xff" {
		t.Errorf("SendBytes = %q", got)
	}
	if got := h.ExpectBytes(); string(got) != "+PONG" {
		t.Errorf("ExpectBytes = %q", got)
	}
	h = HealthCheck{Send: "PING\r\n"}
	if string(h.SendBytes()) != "PING\r\n" || h.ExpectBytes() != nil {
		t.Errorf("Send: %q %q", h.SendBytes(), h.ExpectBytes())
	}
}

// TestHealthCheckErrors: every impossible setting is an error on the key that
// causes it, with its line; a global mistake is reported once, not per rule.
func TestHealthCheckErrors(t *testing.T) {
	tcp := func(section string) string {
		return section + healthRules
	}
	udp := func(global, rule string) string {
		return global + `
[[rules]]
name = "dns"
protocol = "udp"
` + rule + `
[[rules.backends]]
id = "ns1"
address = "127.0.0.1:5353"
`
	}
	cases := []struct {
		name, toml string
		want       []string // "path: message fragment", one per problem, in order
	}{
		{"timeout equal to interval", tcp("[health_check]\ninterval = \"1s\"\ntimeout = \"1s\"\n"),
			[]string{"h.toml:3: health_check.timeout: timeout (1s) must be less than interval (1s): a check must end before the next one starts"}},
		{"timeout above interval", tcp("[health_check]\ninterval = 1\ntimeout = 5\n"),
			[]string{"health_check.timeout: timeout (5s) must be less than interval (1s)"}},
		{"zero timeout", tcp("[health_check]\ntimeout = 0\n"),
			[]string{"health_check.timeout: must be greater than 0"}},
		{"zero retries", tcp("[health_check]\nretries = 0\n"),
			[]string{"h.toml:2: health_check.retries: must be from 1 to 100 (failed checks in a row that mark a backend down), got 0"}},
		{"zero rise", tcp("[health_check]\nrise = 0\n"),
			[]string{"health_check.rise: must be from 1 to 100 (passed checks in a row that mark a backend up), got 0"}},
		{"tiny interval", tcp("[health_check]\ninterval = \"1ms\"\ntimeout = \"500us\"\n"),
			[]string{"health_check.interval: must be at least 10ms, got 1ms"}},
		{"dns_query with send", tcp("[health_check]\ndns_query = \"a.test\"\nsend = \"x\"\n"),
			[]string{"h.toml:2: health_check.dns_query: a dns_query check sends its own query and judges the answer: set dns_query, or send/expect, not both"}},
		{"bad dns_query", tcp("[health_check]\ndns_query = \"a..test\"\n"),
			[]string{`health_check.dns_query: invalid DNS name "a..test": each label has 1 to 63 bytes`}},
		{"port out of range", tcp("[health_check]\nport = 70000\n"),
			[]string{"health_check.port: must be from 1 to 65535, or 0 for the traffic port; got 70000"}},
		{"send and send_hex", tcp("[health_check]\nsend = \"a\"\nsend_hex = \"61\"\n"),
			[]string{"health_check.send_hex: set send or send_hex, not both"}},
		{"bad hex", tcp("[health_check]\nsend_hex = \"zz\"\n"),
			[]string{`health_check.send_hex: invalid hex "zz"`}},
		{"two expects", tcp("[health_check]\nexpect = \"+OK\"\nexpect_regex = \"OK\"\n"),
			[]string{"h.toml:3: health_check.expect_regex: set only one of expect, expect_hex and expect_regex; got expect and expect_regex"}},
		{"bad regex", tcp("[health_check]\nexpect_regex = \"(\"\n"),
			[]string{`health_check.expect_regex: invalid regular expression "("`}},
		{"negative passive", tcp("[health_check]\npassive_failures = -1\n"),
			[]string{"health_check.passive_failures: must be from 0 (off) to 1000, got -1"}},
		{"passive without cooldown", tcp("[health_check]\nenabled = false\npassive_cooldown = 0\n"),
			[]string{"health_check.passive_cooldown: must be greater than 0 when passive detection is on and active checks are off"}},
		{"unknown key", tcp("[health_check]\nintervall = \"1s\"\n"),
			[]string{`health_check.intervall: unknown key "intervall" (did you mean "interval"?)`}},
		{"wrong type", tcp("[health_check]\nretries = \"3\"\n"),
			[]string{`health_check.retries: want an integer, got string "3"`}},
		{"rule override makes timeout too long",
			"[health_check]\ntimeout = \"1s\"\n" + healthRules + "[rules.health_check]\ninterval = \"500ms\"\n",
			[]string{"h.toml:10: rules[0].health_check.interval: timeout (1s) must be less than interval (500ms)"}},
		{"rule override zero retries", healthRules + "[rules.health_check]\nretries = 0\n",
			[]string{"h.toml:8: rules[0].health_check.retries: must be from 1 to 100"}},
		{"global mistake reported once", "[health_check]\nrise = 0\n" + healthRules + "[rules.health_check]\nretries = 4\n",
			[]string{"h.toml:2: health_check.rise: must be from 1"}},
		{"udp expect without send", udp("", "[rules.health_check]\nexpect = \"ok\"\n"),
			[]string{`rules[0].health_check: rule "dns" is UDP: an expect needs a send (a UDP server only replies to a request); set send (or send_hex) in [rules.health_check], or enabled = false`}},
		{"udp inherits expect without send", udp("[health_check]\nexpect = \"SSH-\"\n", ""),
			[]string{`rules[0].health_check: rule "dns" is UDP: an expect needs a send`}},
		{"udp section without send", udp("", "[rules.health_check]\ninterval = \"5s\"\n"),
			[]string{`rules[0].health_check: rule "dns" is UDP: a UDP health check needs send (it passes only on a reply, never on silence)`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("h.toml", []byte(tc.toml))
			if err == nil {
				t.Fatalf("no error; rules: %+v", cfg.Rules)
			}
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("%T: %v", err, err)
			}
			if len(errs.Problems) != len(tc.want) {
				t.Fatalf("want %d problems, got %d:\n%v", len(tc.want), len(errs.Problems), err)
			}
			for i, p := range errs.Problems {
				if !strings.Contains(p.String(), tc.want[i]) {
					t.Errorf("problem %d:\n got %s\nwant it to contain %s", i, p, tc.want[i])
				}
				if p.Line == 0 {
					t.Errorf("problem without a line: %s", p)
				}
			}
		})
	}
}

// TestHealthCheckUDP: a UDP rule is checked by send/expect. Without a send
// of its own or inherited, it is not checked, and a warning says so.
func TestHealthCheckUDP(t *testing.T) {
	const rule = `
[[rules]]
name = "dns"
protocol = "udp"
%s
[[rules.backends]]
id = "ns1"
address = "127.0.0.1:5353"
`
	cfg, err := Parse("u.toml", []byte(strings.Replace(rule, "%s", "", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rules[0].Health.Enabled {
		t.Error("UDP rule without send is actively checked")
	}
	if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0].String(), `u.toml:2: rules[0]: rule "dns" is UDP and [health_check] has no send: its backends are not actively checked`) {
		t.Errorf("warnings: %v", cfg.Warnings)
	}

	cfg, err = Parse("u.toml", []byte(strings.Replace(rule, "%s", "[rules.health_check]\nsend_hex = \"00\"\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if h := cfg.Rules[0].Health; !h.Enabled || string(h.SendBytes()) != "\x00" || len(cfg.Warnings) != 0 {
		t.Errorf("UDP rule with send: %+v, warnings %v", h, cfg.Warnings)
	}

	cfg, err = Parse("u.toml", []byte(strings.Replace(rule, "%s", "[rules.health_check]\ndns_query = \"example.test\"\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if h := cfg.Rules[0].Health; !h.Enabled || h.DNSQuery != "example.test" || len(cfg.Warnings) != 0 {
		t.Errorf("UDP rule with a dns_query check: %+v, warnings %v", h, cfg.Warnings)
	}

	cfg, err = Parse("u.toml", []byte(strings.Replace(rule, "%s", "[rules.health_check]\nenabled = false\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rules[0].Health.Enabled || len(cfg.Warnings) != 0 {
		t.Errorf("UDP rule with checks off: %+v, warnings %v", cfg.Rules[0].Health, cfg.Warnings)
	}
}

func TestHealthCheckSummary(t *testing.T) {
	d := HealthCheck{}
	d.setDefaults()
	for _, tc := range []struct {
		protocol string
		edit     func(*HealthCheck)
		want     string
	}{
		{"tcp", nil, "tcp connect every 2s (timeout 1s, down after 3 failures, up after 2 passes); passive: down after 3 dial failures within 10s"},
		{"tcp", func(h *HealthCheck) {
			h.Send, h.Port, h.PassiveFailures, h.SlowStart = "PING\r\n", 9100, 0, Duration(30*time.Second)
		},
			"tcp send/expect on port 9100 every 2s (timeout 1s, down after 3 failures, up after 2 passes); slow start 30s"},
		{"udp", func(h *HealthCheck) { h.Send, h.PassiveFailures = "x", 0 }, "udp send/expect every 2s (timeout 1s, down after 3 failures, up after 2 passes)"},
		{"udp", func(h *HealthCheck) { h.DNSQuery, h.PassiveFailures = ".", 0 }, `udp dns query "." every 2s (timeout 1s, down after 3 failures, up after 2 passes)`},
		{"tcp", func(h *HealthCheck) { h.Enabled = false }, "passive: down after 3 dial failures within 10s, back after 30s"},
		{"tcp", func(h *HealthCheck) { h.Enabled, h.PassiveFailures = false, 0 }, "off"},
	} {
		h := d
		if tc.edit != nil {
			tc.edit(&h)
		}
		if got := h.Summary(tc.protocol); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}
