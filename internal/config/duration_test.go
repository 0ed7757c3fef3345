package config

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	for _, c := range []struct {
		in      any
		want    time.Duration
		wantErr string
	}{
		{int64(30), 30 * time.Second, ""},
		{int64(0), 0, ""},
		{int64(365 * 24 * 3600), 365 * 24 * time.Hour, ""},
		{"250ms", 250 * time.Millisecond, ""},
		{"1h30m", 90 * time.Minute, ""},
		{"0", 0, ""},
		{"1.5s", 1500 * time.Millisecond, ""},
		{int64(-1), 0, "must not be negative, got -1"},
		{"-2s", 0, `must not be negative, got "-2s"`},
		{int64(365*24*3600 + 1), 0, "31536001 seconds is out of range"},
		{"30", 0, `invalid duration "30"`}, // a string needs a unit
		{"5 minutes", 0, `invalid duration "5 minutes"`},
		{1.5, 0, "got float 1.5"},
		{true, 0, "got boolean true"},
		{map[string]any{}, 0, "got a table"},
	} {
		t.Run(fmt.Sprint(c.in), func(t *testing.T) {
			got, err := parseDuration(c.in)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err = %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil || got.D() != c.want {
				t.Fatalf("got %v, %v; want %v", got.D(), err, c.want)
			}
		})
	}
}

// TestDurationKeys sets every duration key both ways, integer seconds (the
// seed's style) and a Go duration string, through a whole config.
func TestDurationKeys(t *testing.T) {
	keys := []struct {
		section, key string
		get          func(*Config) Duration
	}{
		{"server", "connection_timeout", func(c *Config) Duration { return c.Server.ConnectionTimeout }},
		{"server", "idle_timeout", func(c *Config) Duration { return c.Server.IdleTimeout }},
		{"server", "shutdown_timeout", func(c *Config) Duration { return c.Server.ShutdownTimeout }},
		{"server", "upgrade_timeout", func(c *Config) Duration { return c.Server.UpgradeTimeout }},
		{"redis", "connection_timeout", func(c *Config) Duration { return c.Redis.ConnectionTimeout }},
		{"redis", "command_timeout", func(c *Config) Duration { return c.Redis.CommandTimeout }},
	}
	for _, k := range keys {
		for _, v := range []struct {
			toml string
			want time.Duration
		}{
			{"7", 7 * time.Second},
			{`"1500ms"`, 1500 * time.Millisecond},
			{`"2m"`, 2 * time.Minute},
		} {
			t.Run(k.section+"."+k.key+"="+v.toml, func(t *testing.T) {
				doc := fmt.Sprintf("[%s]\n%s = %s\n[[rules]]\nname = \"r\"\n[[rules.backends]]\nid = \"b\"\naddress = \"127.0.0.1:1\"\n", k.section, k.key, v.toml)
				cfg, err := Parse("d.toml", []byte(doc))
				if err != nil {
					t.Fatal(err)
				}
				if got := k.get(cfg).D(); got != v.want {
					t.Fatalf("got %v, want %v", got, v.want)
				}
			})
		}
	}
}

func TestListenerAndRouterSpec(t *testing.T) {
	cfg, err := Parse("l.toml", []byte(`
[server]
tcp_bind = "[::1]:7000"
udp_bind = "127.0.0.5:7001"
[routers.mine]
plugin = "round_robin"
[[rules]]
name = "a"
router = "mine"
backends = [{ id = "b", address = "127.0.0.1:1" }]
[rules.matcher]
type = "port"
port = 7443
[[rules]]
name = "b"
backends = [{ id = "b", address = "127.0.0.1:1" }]
[[rules]]
name = "c"
protocol = "udp"
backends = [{ id = "b", address = "127.0.0.1:1" }]
[rules.matcher]
type = "port"
port = 53
[[rules]]
name = "d"
protocol = "udp"
backends = [{ id = "b", address = "127.0.0.1:1" }]
`))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"[::1]:7443", "[::1]:7000", "127.0.0.5:53", "127.0.0.5:7001"} {
		if got := cfg.Listener(&cfg.Rules[i]); got != want {
			t.Errorf("Listener(rules[%d]) = %s, want %s", i, got, want)
		}
	}
	if s, named := cfg.RouterSpecFor("mine"); !named || s.Plugin != "round_robin" {
		t.Errorf("RouterSpecFor(mine) = %+v, %v", s, named)
	}
	// No [routers.round_robin]: the builtin plugin runs with its defaults.
	if s, named := cfg.RouterSpecFor("round_robin"); named || s.Plugin != "round_robin" || s.Config == nil || len(s.Config) != 0 {
		t.Errorf("RouterSpecFor(round_robin) = %+v, %v", s, named)
	}
}

// TestShadowedRuleWarns: a rule that an earlier enabled rule on the same
// listener always wins over loads, with a warning that names both.
func TestShadowedRuleWarns(t *testing.T) {
	cfg, err := Parse("s.toml", []byte(`
[[rules]]
name = "first"
backends = [{ id = "b", address = "127.0.0.1:1" }]
[[rules]]
name = "off"
enabled = false
backends = [{ id = "b", address = "127.0.0.1:1" }]
[[rules]]
name = "second"
backends = [{ id = "b", address = "127.0.0.1:1" }]
`))
	if err != nil {
		t.Fatal(err)
	}
	var shadow []string
	for _, w := range cfg.Warnings {
		if strings.Contains(w.Msg, "shadowed") {
			shadow = append(shadow, w.String())
		}
	}
	if len(shadow) != 1 || !strings.Contains(shadow[0], `rule "second" is shadowed by rule "first"`) || !strings.Contains(shadow[0], "s.toml:9: rules[2]") {
		t.Fatalf("warnings = %v", shadow)
	}
}

func TestUnreadableConfig(t *testing.T) {
	for _, path := range []string{"testdata/does-not-exist.toml", "testdata"} {
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Load(%s) = %v, want a one-line error naming the file", path, err)
		}
	}
}
