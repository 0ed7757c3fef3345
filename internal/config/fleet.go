package config

import (
	"errors"
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

// validateRedis checks the [redis] keys beyond the connection basics, and
// takes the database from the URL's path when redis.db is not set.
func (c *Config) validateRedis(e *Errors, u *url.URL) {
	r := c.Redis
	if u != nil && (u.Scheme == "redis" || u.Scheme == "rediss") {
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
	if r.ResyncInterval.D() < MinResyncInterval || r.ResyncInterval.D() > MaxResyncInterval {
		e.addf("redis.resync_interval", "must be from %v to %v, got %v", MinResyncInterval, MaxResyncInterval, r.ResyncInterval.D())
	}
	if strings.ContainsAny(r.KeyPrefix, " \t\r\n") {
		e.addf("redis.key_prefix", "must not contain white space, got %q", r.KeyPrefix)
	}
}
