// Package config loads and validates dynamic-proxy's TOML configuration.
//
// Load parses a file into a *Config, fills every default, and validates the
// whole of it, returning *Errors that lists every problem found, each with
// the file, the line and the key path (rules[2].backends[0].address). A
// *Config returned by Load is never modified afterwards: the engine treats it
// as an immutable snapshot and a reload builds a new one.
package config

import (
	"net"
	"strconv"
	"time"
)

// Config is one loaded configuration file.
type Config struct {
	Server  Server                `toml:"server"`
	Logging Logging               `toml:"logging"`
	Redis   *Redis                `toml:"redis"`   // nil when the file has no [redis] section
	Routers map[string]RouterSpec `toml:"routers"` // named router instances, [routers.NAME]
	Rules   []Rule                `toml:"rules"`

	// File is the path the config was read from.
	File string `toml:"-"`
	// Raw is the file's content.
	Raw []byte `toml:"-"`
	// Warnings are problems that do not stop the config from loading
	// (a rule that an earlier rule shadows entirely, for instance).
	Warnings []Problem `toml:"-"`
}

// Server holds the listener defaults and process-wide limits.
type Server struct {
	// TCPBind is the listener for TCP rules without a matcher; its host is
	// also the host of every TCP port matcher's listener. Default "0.0.0.0:8080".
	TCPBind string `toml:"tcp_bind"`
	// UDPBind is the same for UDP rules. Default "0.0.0.0:8081".
	UDPBind string `toml:"udp_bind"`
	// WorkerThreads sets GOMAXPROCS when > 0. Default 0: one per CPU. Needs a restart.
	WorkerThreads int `toml:"worker_threads"`
	// MaxConnections caps concurrent client connections across the proxy;
	// a connection beyond it is closed at once and counted. 0 means no limit.
	// Default 10000.
	MaxConnections int `toml:"max_connections"`
	// ConnectionTimeout bounds each backend dial. Default 10s.
	ConnectionTimeout Duration `toml:"connection_timeout"`
	// BufferSize is the size in bytes of each copy buffer used where the
	// kernel's splice(2) cannot be (non-Linux systems, UDP datagrams).
	// Default 8192, range 1024–1048576.
	BufferSize int `toml:"buffer_size"`
	// IdleTimeout ends a connection with no traffic in either direction for
	// this long. 0 disables it. Default 10m (nginx's proxy_timeout).
	IdleTimeout Duration `toml:"idle_timeout"`
	// ShutdownTimeout is how long SIGTERM waits for connections in flight
	// before closing them. Default 30s.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	// DrainTimeout is how long connections to a backend that a reload
	// removed may run on before they are closed. 0 (the default) lets them
	// run until they end.
	DrainTimeout Duration `toml:"drain_timeout"`
	// WatchConfig reloads the config when its file changes. Default true.
	WatchConfig bool `toml:"watch_config"`
}

// Logging configures log/slog output.
type Logging struct {
	Level     string `toml:"level"`      // debug, info, warn, error. Default "info".
	Format    string `toml:"format"`     // text or json. Default "text".
	AccessLog bool   `toml:"access_log"` // log every closed connection. Default false.
}

// Redis configures the optional shared data store.
type Redis struct {
	URL               string   `toml:"url"`                // redis:// or rediss://. Default "redis://127.0.0.1:6379".
	Password          string   `toml:"password"`           // Default "".
	DB                int      `toml:"db"`                 // Default 0.
	PoolSize          int      `toml:"pool_size"`          // Default 10.
	ConnectionTimeout Duration `toml:"connection_timeout"` // Default 5s.
	CommandTimeout    Duration `toml:"command_timeout"`    // Default 3s.
	KeyPrefix         string   `toml:"key_prefix"`         // Default "dynamic-proxy:".
}

// RouterSpec is a named router instance: a plugin and its settings.
type RouterSpec struct {
	Plugin string         `toml:"plugin"` // a registered plugin name; required
	Config map[string]any `toml:"config"` // the plugin's settings; default {}
}

// Rule routes the connections it matches to its backends.
type Rule struct {
	Name     string    `toml:"name"`     // unique; required
	Protocol string    `toml:"protocol"` // tcp or udp. Default "tcp".
	Enabled  bool      `toml:"enabled"`  // Default true.
	Router   string    `toml:"router"`   // a [routers.NAME] or a builtin plugin name. Default "round_robin".
	Backends []Backend `toml:"backends"`
	Matcher  *Matcher  `toml:"matcher"` // nil: served on tcp_bind / udp_bind itself
}

// Backend is one upstream server of a rule.
type Backend struct {
	ID      string `toml:"id"`      // unique within the rule; required
	Address string `toml:"address"` // host:port; IPv4, [IPv6] or a host name; required
	Weight  int    `toml:"weight"`  // 1–10000. Default 1.
	Enabled bool   `toml:"enabled"` // Default true.
}

// Matcher selects the connections a rule serves.
type Matcher struct {
	Type string `toml:"type"` // "port"
	Port int    `toml:"port"` // for type "port": 1–65535
}

// Defaults.
const (
	DefaultTCPBind           = "0.0.0.0:8080"
	DefaultUDPBind           = "0.0.0.0:8081"
	DefaultMaxConnections    = 10000
	DefaultConnectionTimeout = 10 * time.Second
	DefaultBufferSize        = 8192
	DefaultIdleTimeout       = 10 * time.Minute
	DefaultShutdownTimeout   = 30 * time.Second
	DefaultRouter            = "round_robin"
)

func (c *Config) setDefaults() {
	c.Server = Server{
		TCPBind:           DefaultTCPBind,
		UDPBind:           DefaultUDPBind,
		MaxConnections:    DefaultMaxConnections,
		ConnectionTimeout: Duration(DefaultConnectionTimeout),
		BufferSize:        DefaultBufferSize,
		IdleTimeout:       Duration(DefaultIdleTimeout),
		ShutdownTimeout:   Duration(DefaultShutdownTimeout),
		WatchConfig:       true,
	}
	c.Logging = Logging{Level: "info", Format: "text"}
}

func (r *Redis) setDefaults() {
	*r = Redis{
		URL:               "redis://127.0.0.1:6379",
		PoolSize:          10,
		ConnectionTimeout: Duration(5 * time.Second),
		CommandTimeout:    Duration(3 * time.Second),
		KeyPrefix:         "dynamic-proxy:",
	}
}

func (r *RouterSpec) setDefaults() { r.Config = map[string]any{} }

func (r *Rule) setDefaults() {
	*r = Rule{Protocol: "tcp", Enabled: true, Router: DefaultRouter}
}

func (b *Backend) setDefaults() { *b = Backend{Weight: 1, Enabled: true} }

// Listener returns the address a rule is served on: its port matcher's port
// on the host of tcp_bind (udp_bind for UDP rules), or that bind address
// itself when the rule has no port matcher.
func (c *Config) Listener(r *Rule) string {
	bind := c.Server.TCPBind
	if r.Protocol == "udp" {
		bind = c.Server.UDPBind
	}
	if r.Matcher != nil && r.Matcher.Type == "port" {
		host, _, err := net.SplitHostPort(bind)
		if err != nil {
			return bind
		}
		return net.JoinHostPort(host, strconv.Itoa(r.Matcher.Port))
	}
	return bind
}

// RouterSpecFor resolves a rule's router name: a [routers.NAME] instance, or
// failing that a builtin plugin of that name with its defaults.
func (c *Config) RouterSpecFor(name string) (RouterSpec, bool) {
	if s, ok := c.Routers[name]; ok {
		return s, true
	}
	return RouterSpec{Plugin: name, Config: map[string]any{}}, false
}
