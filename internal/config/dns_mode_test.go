package config

import (
	"strings"
	"testing"
)

// TestDNSModeKey: dns = true on a UDP rule, its default health check (a
// DNS query of the root), and its errors with file:line.
func TestDNSModeKey(t *testing.T) {
	cfg, err := parseUDP(t, "dns = true")
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Rules[0]
	if !r.DNS || r.Health.DNSQuery != "." || !r.Health.Enabled {
		t.Errorf("dns = true: DNS %v, health dns_query %q enabled %v; want true, \".\", true", r.DNS, r.Health.DNSQuery, r.Health.Enabled)
	}
	if got := r.Health.Summary("udp"); !strings.HasPrefix(got, `udp dns query "." every 2s`) {
		t.Errorf("summary %q", got)
	}
	// The rule's own check wins.
	cfg, err = parseUDP(t, "dns = true\n[rules.health_check]\ndns_query = \"example.org\"")
	if err != nil || cfg.Rules[0].Health.DNSQuery != "example.org" {
		t.Fatalf("own dns_query: %v %q", err, cfg.Rules[0].Health.DNSQuery)
	}
	cfg, err = parseUDP(t, "dns = true\n[rules.health_check]\nsend = \"ping\"")
	if err != nil || cfg.Rules[0].Health.DNSQuery != "" {
		t.Fatalf("own send: %v %q", err, cfg.Rules[0].Health.DNSQuery)
	}
	// Without dns the default stays: a UDP rule is not checked without send.
	if cfg, err := parseUDP(t, ""); err != nil || cfg.Rules[0].Health.DNSQuery != "" || cfg.Rules[0].Health.Enabled {
		t.Errorf("no dns: %v, dns_query %q", err, cfg.Rules[0].Health.DNSQuery)
	}

	for _, tc := range []struct{ rule, want string }{
		{"dns = true\nmax_responses = 1", "udp.toml:8: rules[0].max_responses: rule \"dns\" has dns = true: each query is answered once"},
		{"dns = \"yes\"", "udp.toml:7: rules[0].dns: want true or false"},
	} {
		_, err := parseUDP(t, tc.rule)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.rule, err, tc.want)
		}
	}
	doc := strings.Replace(udpBase, "protocol = \"udp\"\n%s", "dns = true", 1)
	if _, err := Parse("tcp.toml", []byte(doc)); err == nil || !strings.Contains(err.Error(), "tcp.toml:6: rules[0].dns: only UDP rules have sessions") {
		t.Errorf("dns on a tcp rule: %v", err)
	}
	// Rules sharing a listener agree on it.
	two := `
[server]
udp_bind = "127.0.0.1:5300"
[[rules]]
name = "dns"
protocol = "udp"
dns = true
[rules.matcher]
type = "source"
cidrs = ["10.0.0.0/8"]
[[rules.backends]]
id = "ns1"
address = "127.0.0.1:53"
[[rules]]
name = "other"
protocol = "udp"
[[rules.backends]]
id = "ns2"
address = "127.0.0.1:54"
`
	_, err = Parse("two.toml", []byte(two))
	if err == nil || !strings.Contains(err.Error(), `two.toml:14: rules[1]: rules "dns" and "other" share listener 127.0.0.1:5300 but disagree on dns`) {
		t.Errorf("two rules disagreeing on dns: %v", err)
	}
}
