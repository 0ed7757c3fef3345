package config

import (
	"strings"
	"testing"
	"time"
)

const udpBase = `
[server]
udp_bind = "127.0.0.1:5300"
[[rules]]
name = "dns"
protocol = "udp"
%s
[[rules.backends]]
id = "ns1"
address = "127.0.0.1:53"
`

func parseUDP(t *testing.T, rule string) (*Config, error) {
	t.Helper()
	return Parse("udp.toml", []byte(strings.Replace(udpBase, "%s", rule, 1)))
}

func TestUDPSessionDefaults(t *testing.T) {
	cfg, err := parseUDP(t, "")
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Rules[0]
	if r.SessionTimeout.D() != 30*time.Second || r.MaxResponses != 0 || r.MaxSessions != 10000 {
		t.Errorf("defaults: session_timeout %v, max_responses %d, max_sessions %d; want 30s, 0, 10000",
			r.SessionTimeout, r.MaxResponses, r.MaxSessions)
	}
}

func TestUDPSessionSettings(t *testing.T) {
	cfg, err := parseUDP(t, "session_timeout = \"1500ms\"\nmax_responses = 1\nmax_sessions = 0")
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Rules[0]
	if r.SessionTimeout.D() != 1500*time.Millisecond || r.MaxResponses != 1 || r.MaxSessions != 0 {
		t.Errorf("got session_timeout %v, max_responses %d, max_sessions %d", r.SessionTimeout, r.MaxResponses, r.MaxSessions)
	}
	// Integer seconds, like every duration.
	cfg, err = parseUDP(t, "session_timeout = 120")
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Rules[0].SessionTimeout.D(); got != 2*time.Minute {
		t.Errorf("session_timeout = 120 gave %v", got)
	}
}

func TestUDPSessionBadValues(t *testing.T) {
	for _, tc := range []struct{ rule, want string }{
		{"session_timeout = 0", "udp.toml:7: rules[0].session_timeout: must be greater than 0"},
		{"session_timeout = \"0s\"", "udp.toml:7: rules[0].session_timeout: must be greater than 0"},
		{"session_timeout = -5", "udp.toml:7: rules[0].session_timeout: must not be negative"},
		{"session_timeout = \"soon\"", "udp.toml:7: rules[0].session_timeout: invalid duration"},
		{"max_responses = -1", "udp.toml:7: rules[0].max_responses: must be 0 (unlimited) or more, got -1"},
		{"max_responses = \"1\"", "udp.toml:7: rules[0].max_responses: want an integer"},
		{"max_sessions = -3", "udp.toml:7: rules[0].max_sessions: must be 0 (no limit) or more, got -3"},
		{"max_session = 5", "udp.toml:7: rules[0].max_session: unknown key \"max_session\" (did you mean \"max_sessions\"?)"},
	} {
		_, err := parseUDP(t, tc.rule)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got error %v, want %q", tc.rule, err, tc.want)
		}
	}
	// Every problem is reported, not only the first.
	_, err := parseUDP(t, "session_timeout = 0\nmax_responses = -1\nmax_sessions = -1")
	if err == nil || len(err.(*Errors).Problems) != 3 {
		t.Errorf("want 3 problems, got %v", err)
	}
}

// TestUDPSessionKeysOnTCPRule: the session keys mean nothing to a TCP rule;
// setting one there is an error, not silently ignored.
func TestUDPSessionKeysOnTCPRule(t *testing.T) {
	for _, key := range []string{"session_timeout = \"5s\"", "max_responses = 1", "max_sessions = 10"} {
		doc := strings.Replace(udpBase, "protocol = \"udp\"\n%s", key, 1)
		_, err := Parse("tcp.toml", []byte(doc))
		name, _, _ := strings.Cut(key, " ")
		want := "tcp.toml:6: rules[0]." + name + ": only UDP rules have sessions"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s on a tcp rule: got %v, want %q", key, err, want)
		}
	}
	// The defaults a TCP rule carries are not an error.
	if _, err := Parse("tcp.toml", []byte(strings.Replace(udpBase, "protocol = \"udp\"\n%s", "", 1))); err != nil {
		t.Errorf("a plain tcp rule: %v", err)
	}
}
