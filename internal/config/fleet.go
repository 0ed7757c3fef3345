package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Limits of [redis] resync_interval.
const (
	MinResyncInterval = 100 * time.Millisecond
	MaxResyncInterval = time.Hour
)

// LocalKeys are the settings an instance that takes its config from Redis
// ([redis] watch_config) keeps from its own file: how it reaches Redis and
// the addresses it binds, which differ from host to host. Everything else
// comes from the config stored in Redis.
var LocalKeys = []string{"[redis]", "[admin]", "[metrics]", "server.tcp_bind", "server.udp_bind", "server.watch_config"}

// ParseWithLocal decodes and validates a config stored in Redis (data,
// pushed by "dynamic-proxy config push") for an instance whose own file is
// local: the LocalKeys are taken from local, the rest from data. name is
// used in messages, e.g. "redis:dynamic-proxy:config@7".
func ParseWithLocal(name string, data []byte, local *Config) (*Config, error) {
	return parse(name, data, func(c *Config) {
		c.Redis = local.Redis
		c.Admin = local.Admin
		c.Metrics = local.Metrics
		c.Server.TCPBind = local.Server.TCPBind
		c.Server.UDPBind = local.Server.UDPBind
		c.Server.WatchConfig = local.Server.WatchConfig
	}, rulesRequired)
}

// ParseFleet decodes and validates a config meant for a fleet's instances
// ("dynamic-proxy config push"): as Parse, but as if it had a [redis]
// section when it has none, since every instance that follows it has one
// (so a rule may rely on registered backends alone).
func ParseFleet(name string, data []byte) (*Config, error) {
	return parse(name, data, func(c *Config) {
		if c.Redis == nil {
			c.Redis = &Redis{}
			c.Redis.setDefaults()
		}
	}, rulesRequired)
}

// CheckBackendAddress reports whether addr is a valid backend address, as
// rules.backends.address requires: host:port with a port from 1 to 65535.
func CheckBackendAddress(addr string) error {
	if addr == "" {
		return errors.New("missing address: want host:port")
	}
	return checkHostPort(addr, false)
}

// The shapes of Redis a fleet can use (RedisTarget.Kind).
const (
	RedisStandalone = "standalone"
	RedisSentinel   = "sentinel"
	RedisCluster    = "cluster"
)

// RedisTarget is what a redis.url (or the CLI's --redis) names.
type RedisTarget struct {
	Kind string // RedisStandalone, RedisSentinel or RedisCluster
	// Addrs are host:port: the server, the sentinels, or the cluster's
	// seed nodes (any few of its nodes: the rest are discovered).
	Addrs []string
	// Master is the Sentinel master name (redis+sentinel:// only).
	Master string
	// URL is a plain redis:// or rediss:// URL of Addrs[0] with the
	// user, password, database and query options of the original: what
	// go-redis's ParseURL reads the connection settings from.
	URL string
}

// ParseRedisURL parses the URL forms of redis.url:
//
//	redis://[user:password@]host:port[/db]
//	redis+sentinel://[user:password@]host:port[,host:port...]/MASTER[/db]
//	redis+cluster://[user:password@]host:port[,host:port...]
//
// each also as rediss… for TLS. The user and password are the data
// nodes' (for Sentinel, the sentinels' are sentinel_username and
// sentinel_password). Query options are go-redis's (e.g. ?dial_timeout=2s).
func ParseRedisURL(s string) (*RedisTarget, error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return nil, fmt.Errorf("want redis://host:port, redis+sentinel://host:port,.../MASTER or redis+cluster://host:port,... (rediss… for TLS), got %q", s)
	}
	base, kind, _ := strings.Cut(scheme, "+")
	if base != "redis" && base != "rediss" || kind != "" && kind != RedisSentinel && kind != RedisCluster {
		return nil, fmt.Errorf("scheme must be redis://, rediss://, redis+sentinel://, rediss+sentinel://, redis+cluster:// or rediss+cluster://, got %q", s)
	}
	if kind == "" {
		kind = RedisStandalone
	}
	auth, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		auth, tail = rest[:i], rest[i:]
	}
	user, hosts := "", auth
	if i := strings.LastIndex(auth, "@"); i >= 0 {
		user, hosts = auth[:i+1], auth[i+1:]
	}
	path, query := tail, ""
	if i := strings.IndexAny(tail, "?#"); i >= 0 {
		path, query = tail[:i], tail[i:]
	}
	t := &RedisTarget{Kind: kind}
	if hosts == "" {
		return nil, fmt.Errorf("missing host in %q", s)
	}
	for _, h := range strings.Split(hosts, ",") {
		if kind == RedisStandalone && strings.Contains(hosts, ",") {
			return nil, fmt.Errorf("several hosts in %q: a list of hosts needs redis+sentinel:// or redis+cluster://", s)
		}
		host, port, err := net.SplitHostPort(h)
		if err != nil {
			if kind == RedisStandalone && !strings.Contains(h, ":") { // redis://host: go-redis takes port 6379
				host, port, err = h, "6379", nil
			} else {
				return nil, fmt.Errorf("address %q in %q: want host:port", h, s)
			}
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || host == "" {
			return nil, fmt.Errorf("address %q in %q: want host:port with a port from 1 to 65535", h, s)
		}
		t.Addrs = append(t.Addrs, net.JoinHostPort(host, port))
	}
	db := strings.Trim(path, "/")
	switch kind {
	case RedisSentinel:
		master, d, _ := strings.Cut(db, "/")
		if master == "" {
			return nil, fmt.Errorf("missing master name in %q: want redis+sentinel://host:port,.../MASTER[/db]", s)
		}
		t.Master, db = master, d
	case RedisCluster:
		if db != "" && db != "0" {
			return nil, fmt.Errorf("a cluster has database 0 only, got path %q in %q", path, s)
		}
		db = ""
	}
	if db != "" {
		db = "/" + db
	}
	t.URL = base + "://" + user + t.Addrs[0] + db + query
	if _, err := url.Parse(t.URL); err != nil {
		return nil, fmt.Errorf("invalid URL %q: %v", s, err)
	}
	return t, nil
}

// HasHashTag reports whether every key that starts with prefix hashes on
// the same part of the prefix in a Redis Cluster: a "{…}" with something
// between the first "{" and the next "}".
func HasHashTag(prefix string) bool {
	i := strings.IndexByte(prefix, '{')
	if i < 0 {
		return false
	}
	j := strings.IndexByte(prefix[i+1:], '}')
	return j > 0
}

// validateRedis checks the [redis] keys beyond the connection basics, and
// takes the database from the URL's path when redis.db is not set.
func (c *Config) validateRedis(e *Errors) {
	r := c.Redis
	t, err := ParseRedisURL(r.URL)
	if err != nil {
		e.addf("redis.url", "%v", err)
	}
	var u *url.URL
	if t != nil {
		u, _ = url.Parse(t.URL)
	}
	if u != nil {
		if p := strings.Trim(u.Path, "/"); p != "" {
			n, err := strconv.Atoi(p)
			_, dbSet := e.pos["redis.db"]
			switch {
			case err != nil || n < 0:
				e.addf("redis.url", "the URL path must be a database number (redis://host:6379/2), got %q", u.Path)
			case dbSet && n != r.DB:
				e.addf("redis.db", "%d differs from database %d in redis.url %q: set the database in one place", r.DB, n, r.URL)
			default:
				r.DB = n
			}
		}
	}
	if t != nil && t.Kind != RedisSentinel {
		for _, k := range []struct{ key, v string }{{"sentinel_username", r.SentinelUsername}, {"sentinel_password", r.SentinelPassword}} {
			if k.v != "" {
				e.addf("redis."+k.key, "is for the sentinels of a redis+sentinel:// url, and redis.url %q is a %s Redis", r.URL, t.Kind)
			}
		}
	}
	if t != nil && t.Kind == RedisCluster {
		if r.DB != 0 {
			e.addf("redis.db", "a cluster has database 0 only, got %d", r.DB)
		}
		if _, set := e.pos["redis.key_prefix"]; !set {
			r.KeyPrefix = DefaultClusterKeyPrefix
		} else if !HasHashTag(r.KeyPrefix) {
			e.addf("redis.key_prefix", "a cluster needs a {…} hash tag in the prefix, so that all of the fleet's keys share one slot (e.g. %q), got %q", DefaultClusterKeyPrefix, r.KeyPrefix)
		}
	}
	if r.ResyncInterval.D() < MinResyncInterval || r.ResyncInterval.D() > MaxResyncInterval {
		e.addf("redis.resync_interval", "must be from %v to %v, got %v", MinResyncInterval, MaxResyncInterval, r.ResyncInterval.D())
	}
	if strings.ContainsAny(r.KeyPrefix, " \t\r\n") {
		e.addf("redis.key_prefix", "must not contain white space, got %q", r.KeyPrefix)
	}
}
