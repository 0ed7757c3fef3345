package config

import (
	"strings"
	"testing"
	"time"
)

func TestRedisFleetKeys(t *testing.T) {
	cfg, err := Parse("x.toml", []byte(oneRule+"[redis]\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Redis
	if r.WatchConfig || r.CacheFile != "" || r.ResyncInterval.D() != 5*time.Second {
		t.Fatalf("defaults: %+v", r)
	}
	// Sentinel and Cluster URLs.
	cfg, err = Parse("x.toml", []byte(oneRule+"[redis]\nurl = \"redis+sentinel://u:pw@127.0.0.1:26379,[::1]:26380/mymaster/3\"\nsentinel_password = \"s\"\n"))
	if err != nil || cfg.Redis.DB != 3 || cfg.Redis.KeyPrefix != DefaultKeyPrefix {
		t.Fatalf("sentinel: %+v %v", cfg, err)
	}
	tg, err := ParseRedisURL(cfg.Redis.URL)
	if err != nil || tg.Kind != RedisSentinel || tg.Master != "mymaster" || strings.Join(tg.Addrs, " ") != "127.0.0.1:26379 [::1]:26380" || tg.URL != "redis://u:pw@127.0.0.1:26379/3" {
		t.Fatalf("sentinel target: %+v %v", tg, err)
	}
	cfg, err = Parse("x.toml", []byte(oneRule+"[redis]\nurl = \"rediss+cluster://a:7000,b:7001?dial_timeout=2s\"\n"))
	if err != nil || cfg.Redis.KeyPrefix != DefaultClusterKeyPrefix {
		t.Fatalf("cluster: %+v %v", cfg, err)
	}
	if tg, err = ParseRedisURL(cfg.Redis.URL); err != nil || tg.Kind != RedisCluster || len(tg.Addrs) != 2 || tg.URL != "rediss://a:7000?dial_timeout=2s" {
		t.Fatalf("cluster target: %+v %v", tg, err)
	}
	if _, err = Parse("x.toml", []byte(oneRule+"[redis]\nurl = \"redis+cluster://a:7000\"\nkey_prefix = \"{shop}:\"\n")); err != nil {
		t.Fatal(err)
	}
	// The database may come from the URL's path.
	cfg, err = Parse("x.toml", []byte(oneRule+"[redis]\nurl = \"redis://h:1/4\"\n"))
	if err != nil || cfg.Redis.DB != 4 {
		t.Fatalf("db from the URL: %v %v", cfg, err)
	}
	for _, c := range []struct{ toml, want string }{
		{"[redis]\nresync_interval = \"10ms\"", "x.toml:2: redis.resync_interval: must be from 100ms to 1h0m0s, got 10ms"},
		{"[redis]\nresync_interval = \"2h\"", "redis.resync_interval: must be from 100ms to 1h0m0s, got 2h0m0s"},
		{"[redis]\nurl = \"redis://h:1/2\"\ndb = 3", `x.toml:3: redis.db: 3 differs from database 2 in redis.url "redis://h:1/2": set the database in one place`},
		{"[redis]\nurl = \"redis://h:1/x\"", `x.toml:2: redis.url: the URL path must be a database number (redis://host:6379/2), got "/x"`},
		{"[redis]\nkey_prefix = \"my fleet:\"", `redis.key_prefix: must not contain white space, got "my fleet:"`},
		{"[redis]\nwatch_config = \"yes\"", `redis.watch_config: want true or false`},
		{"[redis]\nurl = \"http://h:1\"", `x.toml:2: redis.url: scheme must be redis://, rediss://, redis+sentinel://`},
		{"[redis]\nurl = \"redis://a:1,b:2\"", `redis.url: several hosts in "redis://a:1,b:2": a list of hosts needs redis+sentinel:// or redis+cluster://`},
		{"[redis]\nurl = \"redis+sentinel://a:1,b:2\"", `redis.url: missing master name in "redis+sentinel://a:1,b:2"`},
		{"[redis]\nurl = \"redis+sentinel://a:1,b/m\"", `redis.url: address "b" in "redis+sentinel://a:1,b/m": want host:port`},
		{"[redis]\nurl = \"redis+sentinel://a:1/m/x\"", `redis.url: the URL path must be a database number`},
		{"[redis]\nurl = \"redis+cluster://a:1,b:70000\"", `address "b:70000" in "redis+cluster://a:1,b:70000": want host:port with a port from 1 to 65535`},
		{"[redis]\nurl = \"redis+cluster://a:1/3\"", `redis.url: a cluster has database 0 only`},
		{"[redis]\nurl = \"redis+cluster://a:1\"\ndb = 2", `x.toml:3: redis.db: a cluster has database 0 only, got 2`},
		{"[redis]\nurl = \"redis+cluster://a:1\"\nkey_prefix = \"fleet:\"", `x.toml:3: redis.key_prefix: a cluster needs a {…} hash tag in the prefix`},
		{"[redis]\nurl = \"redis+cluster://a:1\"\nkey_prefix = \"{}fleet:\"", `redis.key_prefix: a cluster needs a {…} hash tag`},
		{"[redis]\nurl = \"redis://a:1\"\nsentinel_password = \"s\"", `x.toml:3: redis.sentinel_password: is for the sentinels of a redis+sentinel:// url, and redis.url "redis://a:1" is a standalone Redis`},
	} {
		_, err := Parse("x.toml", []byte(c.toml))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.toml, err, c.want)
		}
	}
}

// TestParseWithLocal: a config taken from Redis keeps the instance's own
// [redis], [admin], [metrics] and bind addresses; its problems are reported
// against the stored document.
func TestParseWithLocal(t *testing.T) {
	local, err := Parse("local.toml", []byte(`
[server]
tcp_bind = "127.0.0.1:7001"
udp_bind = "127.0.0.1:7002"
watch_config = false
[redis]
url = "redis://127.0.0.1:6390"
watch_config = true
[admin]
bind = "127.0.0.1:7091"
[metrics]
bind = "127.0.0.1:7090"
`))
	if err != nil {
		t.Fatal(err)
	}
	stored := []byte(`
[server]
tcp_bind = "0.0.0.0:80"
max_connections = 77
[admin]
bind = "0.0.0.0:1"
[[rules]]
name = "svc"
[rules.matcher]
type = "port"
port = 8443
`)
	cfg, err := ParseWithLocal("redis:dp:config@3", stored, local)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server.TCPBind != "127.0.0.1:7001" || cfg.Server.UDPBind != "127.0.0.1:7002" || cfg.Server.WatchConfig ||
		cfg.Admin.Bind != "127.0.0.1:7091" || cfg.Metrics.Bind != "127.0.0.1:7090" || cfg.Redis != local.Redis {
		t.Fatalf("local keys not kept: server %+v admin %+v metrics %+v", cfg.Server, cfg.Admin, cfg.Metrics)
	}
	if cfg.Server.MaxConnections != 77 || len(cfg.Rules) != 1 || cfg.Listener(&cfg.Rules[0]) != "127.0.0.1:8443" {
		t.Fatalf("stored keys not taken: %+v", cfg.Server)
	}
	// A rule with no backend is fine for an instance with [redis].
	_, err = ParseWithLocal("redis:dp:config@4", []byte("[[rules]]\nname = \"a\"\nprotocol = \"sctp\"\n"), local)
	if err == nil || !strings.Contains(err.Error(), `redis:dp:config@4:3: rules[0].protocol: must be tcp or udp, got "sctp"`) {
		t.Fatalf("problem in a stored config: %v", err)
	}
	// ParseFleet validates a file to push as if it had [redis].
	if _, err := ParseFleet("f.toml", []byte("[[rules]]\nname = \"a\"\n")); err != nil {
		t.Fatalf("ParseFleet: %v", err)
	}
	if _, err := Parse("f.toml", []byte("[[rules]]\nname = \"a\"\n")); err == nil {
		t.Fatal("Parse accepted a rule with no backend and no [redis]")
	}
}

func TestRedisChangeNeedsRestart(t *testing.T) {
	old, err := Parse("x.toml", []byte(oneRule+"[redis]\nurl = \"redis://h:1\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	same, _ := Parse("x.toml", []byte(oneRule+"[redis]\nurl = \"redis://h:1\"\n"))
	next, _ := Parse("x.toml", []byte(oneRule+"[redis]\nurl = \"redis://h:2\"\n"))
	if got := RestartNeeded(old, same); len(got) != 0 {
		t.Errorf("unchanged [redis]: restart needed %v", got)
	}
	if got := strings.Join(RestartNeeded(old, next), ","); got != "[redis]" {
		t.Errorf("changed redis.url: restart needed %q, want [redis]", got)
	}
}

// oneRule makes a [redis] test config valid: a config with no rule serves
// nothing and is refused.
const oneRule = "[[rules]]\nname = \"a\"\n"

// TestFleetLimitKeys: the fleet-wide access limits decode into [access]
// and [rules.access], need [redis], and bad values name file:line.
func TestFleetLimitKeys(t *testing.T) {
	const rule = "[[rules]]\nname = \"a\"\n[[rules.backends]]\nid = \"b\"\naddress = \"127.0.0.1:9\"\n"
	cfg, err := Parse("f.toml", []byte("[access]\nfleet_connection_rate = 50\n"+rule+
		"[rules.access]\nfleet_max_connections_per_ip = 4\nfleet_connection_rate_per_ip = 2.5\nfleet_connection_burst_per_ip = 3\nfleet_connection_burst = 7\n"+
		"[redis]\nurl = \"redis://127.0.0.1:1\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.EffectiveAccess(&cfg.Rules[0])
	if a.FleetMaxConnectionsPerIP != 4 || a.FleetConnectionRatePerIP != 2.5 || a.FleetConnectionBurstPerIP != 3 ||
		a.FleetConnectionRate != 50 || a.FleetConnectionBurst != 7 || !a.HasFleetLimits() {
		t.Fatalf("effective access %+v", a)
	}
	_, err = Parse("f.toml", []byte(rule+"[rules.access]\nfleet_connection_rate_per_ip = 5\n"))
	if err == nil || !strings.Contains(err.Error(), "f.toml:7: rules[0].access.fleet_connection_rate_per_ip: a fleet-wide limit needs a [redis] section") {
		t.Fatalf("fleet limit without [redis]: %v", err)
	}
	_, err = Parse("f.toml", []byte("[access]\nfleet_max_connections_per_ip = 2\n"+rule))
	if err == nil || !strings.Contains(err.Error(), "f.toml:2: access.fleet_max_connections_per_ip: a fleet-wide limit needs a [redis] section") {
		t.Fatalf("global fleet limit without [redis]: %v", err)
	}
	if _, err := ParseFleet("f.toml", []byte(rule+"[rules.access]\nfleet_connection_rate = 5\n")); err != nil {
		t.Fatalf("a pushed config is checked as if it had [redis]: %v", err)
	}
	_, err = Parse("f.toml", []byte(rule+"[rules.access]\nfleet_connection_rate = -1\nfleet_max_connections_per_ip = -2\nfleet_connection_burst = 2000000\n[redis]\n"))
	for _, want := range []string{"f.toml:7: rules[0].access.fleet_connection_rate: must be from 0 (no limit) to 1000000 per second, got -1",
		"f.toml:8: rules[0].access.fleet_max_connections_per_ip: must be 0 (no limit) or more, got -2",
		"f.toml:9: rules[0].access.fleet_connection_burst: must be from 0 to 1000000, got 2000000"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
}
