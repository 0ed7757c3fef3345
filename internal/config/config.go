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
	ACME    *ACME                 `toml:"acme"`    // [acme] (acme.go); nil when the file has none
	Routers map[string]RouterSpec `toml:"routers"` // named router instances, [routers.NAME]
	Rules   []Rule                `toml:"rules"`
	// Access is [access]: client access control for every rule (a rule's
	// [rules.access] overrides it key by key).
	Access  Access  `toml:"access"`
	Metrics Metrics `toml:"metrics"` // [metrics]: the Prometheus endpoint (observe.go)
	Admin   Admin   `toml:"admin"`   // [admin]: admin API and status page (observe.go)
	// HealthCheck is [health_check]: the health check of every rule that
	// does not override it (see HealthCheck for the keys and defaults).
	HealthCheck HealthCheck `toml:"health_check"`

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
	// AdaptiveThreads keeps GOMAXPROCS between 1 and the worker threads at
	// what the load needs (internal/procs). Default true. Needs a restart.
	AdaptiveThreads bool `toml:"adaptive_threads"`
	// MaxConnections caps concurrent client connections across the proxy;
	// a connection beyond it is closed at once and counted. 0 means no limit.
	// Default 10000.
	MaxConnections int `toml:"max_connections"`
	// ConnectionTimeout bounds each backend dial. Default 10s.
	ConnectionTimeout Duration `toml:"connection_timeout"`
	// BufferSize is the size in bytes of the pooled buffer each burst of TCP
	// data is first read into: a burst that fits (a request, a reply) costs
	// one read and one write; a burst that fills it continues by splice(2)
	// without copying. The buffer is held only while data moves. UDP does
	// not use it: a datagram must be read whole, so UDP buffers are always
	// 64 KiB, the largest datagram there is. Default 8192, range 1024–1048576.
	BufferSize int `toml:"buffer_size"`
	// IdleTimeout ends a connection with no traffic in either direction for
	// this long. 0 disables it. Default 10m (nginx's proxy_timeout).
	IdleTimeout Duration `toml:"idle_timeout"`
	// ShutdownTimeout is how long SIGTERM waits for connections in flight
	// before closing them. Default 30s.
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	// UpgradeTimeout is how long a binary upgrade (SIGUSR2, POST
	// /api/v1/upgrade) waits for the new process to report ready before it
	// kills it and keeps serving here. Default 1m. Read at start-up only.
	UpgradeTimeout Duration `toml:"upgrade_timeout"`
	// DrainTimeout is how long connections to a backend that a reload
	// removed may run on before they are closed. 0 (the default) lets them
	// run until they end.
	DrainTimeout Duration `toml:"drain_timeout"`
	// WatchConfig reloads the config when its file changes. Default true.
	// Read at start-up only.
	WatchConfig bool `toml:"watch_config"`
	// PeekTimeout bounds the wait for what a listener reads before routing:
	// a PROXY header, or the TLS ClientHello / HTTP request head that sni,
	// alpn and http_host matchers need. A client silent for this long is
	// routed by the remaining matchers, or closed. Default 3s.
	PeekTimeout Duration `toml:"peek_timeout"`
	// Engine is the connection engine: "epoll" (Linux: event loops over raw
	// system calls), "goroutine" (every system: goroutines over the net
	// package) or "auto", epoll on Linux and goroutine elsewhere. Default
	// "auto". Needs a restart.
	Engine string `toml:"engine"`
	// Resolver is the DNS server ("ip:port", or "ip" for port 53) that
	// backend host names are looked up with — by the data path, --validate
	// and start-up checks — and what a [[rules.discovery]] entry without a
	// resolver asks. Default "": the system's (/etc/resolv.conf). Needs a
	// restart.
	Resolver string `toml:"resolver"`
}

// ResolverAddr is server.resolver as ip:port ("" when unset).
func (s *Server) ResolverAddr() string { return dnsServerAddr(s.Resolver) }

// Logging configures log/slog output.
type Logging struct {
	Level     string `toml:"level"`      // debug, info, warn, error. Default "info".
	Format    string `toml:"format"`     // text or json. Default "text".
	AccessLog bool   `toml:"access_log"` // log every closed connection. Default false.
	// AccessLogInterval, when set, also logs a progress record of every
	// TCP connection and UDP session open longer than it, once per
	// interval, with the bytes moved so far (Envoy's periodic TCP access
	// log); at least 1s.
	// Needs access_log. Default 0: off.
	AccessLogInterval Duration `toml:"access_log_interval"`
	// AccessLogFile sends the access log records to this file (appended,
	// created 0644) instead of stderr; SIGUSR1 reopens it, for logrotate.
	// Needs access_log. Needs a restart. Default "": stderr, with the
	// other records.
	AccessLogFile string `toml:"access_log_file"`
	// ExplainSample is the share (0 to 1) of routed TCP connections whose
	// decision record (rule, router, chosen backend and why, as GET
	// /api/v1/explain gives it) is logged at debug level. Default 0: none.
	ExplainSample float64 `toml:"explain_sample"`
}

// Redis configures the optional shared data store.
type Redis struct {
	// URL says where the fleet's Redis is and what shape it has:
	// redis://host:port[/db] (one server), redis+sentinel://s1:26379,
	// s2:26379/MASTER[/db] (Sentinel), redis+cluster://n1:6379,n2:6379
	// (Cluster seeds); rediss… for TLS. See ParseRedisURL.
	// Default "redis://127.0.0.1:6379".
	URL      string `toml:"url"`
	Password string `toml:"password"` // the data nodes' password; overrides the URL's. Default "".
	// SentinelUsername and SentinelPassword authenticate to the sentinels
	// (redis+sentinel:// only); the URL's user and password are the data
	// nodes'.
	SentinelUsername  string   `toml:"sentinel_username"`  // Default "".
	SentinelPassword  string   `toml:"sentinel_password"`  // Default "".
	DB                int      `toml:"db"`                 // Default 0.
	PoolSize          int      `toml:"pool_size"`          // Default 10.
	ConnectionTimeout Duration `toml:"connection_timeout"` // Default 5s.
	CommandTimeout    Duration `toml:"command_timeout"`    // Default 3s.
	// KeyPrefix starts every key. Default "dynamic-proxy:", and
	// "{dynamic-proxy}:" for a cluster (whose prefix must hold a {…}
	// hash tag, so that all of a fleet's keys are in one slot).
	KeyPrefix string `toml:"key_prefix"`
	// WatchConfig makes the instance take its config from Redis (the
	// version stored by "dynamic-proxy config push") instead of this file;
	// [redis], [admin], [metrics], server.tcp_bind, server.udp_bind and
	// server.watch_config stay this file's. Default false. Also set by
	// --config-from-redis.
	WatchConfig bool `toml:"watch_config"`
	// CacheFile is where the last dynamic state read from Redis is kept
	// (written atomically on every change), so that an instance started
	// while Redis is down still serves it. Relative to the config file's
	// directory. Default "": no cache.
	CacheFile string `toml:"cache_file"`
	// ResyncInterval is how often the whole dynamic state is read again,
	// healing any pub/sub message missed. Default 5s, range 100ms–1h.
	ResyncInterval Duration `toml:"resync_interval"`
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
	// Discovery is [[rules.discovery]]: backends taken from DNS names
	// (discovery.go), next to or instead of Backends. Default [].
	Discovery []Discovery `toml:"discovery"`
	Matcher   *Matcher    `toml:"matcher"` // nil: served on tcp_bind / udp_bind itself, matching every connection
	// ProxyProtocol writes a PROXY protocol header ("v1" or "v2"; UDP: "v2")
	// to the backend so it sees the real client. Default "": none.
	ProxyProtocol string `toml:"proxy_protocol"`
	// AcceptProxyProtocol reads a PROXY header (v1 or v2) from each client
	// connection and uses its source as the client address for matching,
	// hashing, access control, logs and metrics. Only peers in TrustedProxies
	// may send one; others, and malformed headers, are closed and counted.
	// Rules sharing a listener must agree. Default false.
	AcceptProxyProtocol bool `toml:"accept_proxy_protocol"`
	// TrustedProxies are the CIDRs allowed to send a PROXY header. Default [].
	TrustedProxies []string `toml:"trusted_proxies"`
	// Access is [rules.access]; unset keys take the global [access] values.
	Access *RuleAccess `toml:"access"`
	// HealthCheck is [rules.health_check]: the keys it sets override
	// [health_check] for this rule's backends. nil when absent.
	HealthCheck *HealthCheckOverride `toml:"health_check"`
	// TLS is [rules.tls]: terminate TLS (TCP rules only; tls.go). nil
	// when absent: TLS, if any, passes through to the backends.
	TLS *TLS `toml:"tls"`
	// BackendTLS is [rules.backend_tls]: TLS to every backend of the rule
	// (a backend's own tls replaces it). nil when absent: plain TCP.
	BackendTLS *BackendTLS `toml:"backend_tls"`
	// OnBackendDown is what becomes of a backend's open connections (UDP
	// sessions) when it is marked down by its active or passive health
	// check, or removed by a reload, discovery or a registration's expiry:
	// "keep" lets them run on (a removed backend's until [server]
	// drain_timeout); "close" closes them, spread over
	// on_backend_down_window so that their clients do not all reconnect at
	// one instant (HAProxy's on-marked-down shutdown-sessions). Default
	// "keep".
	OnBackendDown string `toml:"on_backend_down"`
	// OnBackendDownWindow is the time on_backend_down = "close" spreads
	// its closes over: each connection is closed at a random moment within
	// it. 0 closes them all at once. Default 2s.
	OnBackendDownWindow Duration `toml:"on_backend_down_window"`
	// Health is the rule's effective health check ([health_check] with the
	// rule's overrides applied), filled by Load.
	Health HealthCheck `toml:"-"`

	// UDP sessions (protocol = "udp" only; setting one on a TCP rule is an
	// error). A session is one client address:port and its backend socket.

	// SessionTimeout ends a session with no datagram in either direction for
	// this long. Default 30s; must be greater than 0.
	SessionTimeout Duration `toml:"session_timeout"`
	// MaxResponses is how many replies each client datagram expects: a
	// session ends once it has delivered MaxResponses × the datagrams its
	// client sent (nginx's proxy_responses; 1 suits DNS). Default 0:
	// unlimited.
	MaxResponses int `toml:"max_responses"`
	// MaxSessions caps the rule's concurrent sessions; a datagram from a new
	// client beyond it is dropped and counted, existing sessions are not
	// affected. 0 means no limit. Default 10000.
	MaxSessions int `toml:"max_sessions"`
	// QUIC says the rule's sessions are QUIC connections: the proxy learns
	// their connection ids from the long headers both sides send, and a
	// datagram that carries a session's connection id from a new client
	// address (NAT rebinding, a client changing networks) goes on to that
	// session's backend instead of opening a new session (docs/udp.md).
	// Default false.
	QUIC bool `toml:"quic"`
	// DNS balances each DNS query on its own (docs/udp.md#dns-aware-balancing):
	// every client datagram must be a DNS query, it goes to the backend the
	// router picks for it over a socket the shard shares among clients, and
	// the reply is matched back by id and question. Rules sharing a listener
	// must agree; not with max_responses. Default false: sessions.
	DNS bool `toml:"dns"`
}

// The values of a rule's on_backend_down.
const (
	OnBackendDownKeep  = "keep"
	OnBackendDownClose = "close"
)

// Backend is one upstream server of a rule.
type Backend struct {
	ID      string `toml:"id"`      // unique within the rule; required
	Address string `toml:"address"` // host:port; IPv4, [IPv6] or a host name; required
	Weight  int    `toml:"weight"`  // 1–10000. Default 1.
	Enabled bool   `toml:"enabled"` // Default true.
	// MaxConnections caps the backend's concurrent connections (UDP
	// sessions) from this rule; at the cap every router skips it.
	// Default 0: no limit.
	MaxConnections int `toml:"max_connections"`
	// Priority is the backend's tier, 0–65535, lower first (SRV's order):
	// routers pick from the best tier with a usable backend. Default 0.
	Priority int `toml:"priority"`
	// Backup puts the backend in a last tier, after every priority: it
	// gets connections only when no other backend is usable (HAProxy's and
	// nginx's backup). Not with priority. Default false.
	Backup bool `toml:"backup"`

	// Source is the [[rules.discovery]] name that gave the backend ("" for
	// one from the file or the fleet); set by the engine.
	Source string `toml:"-"`

	// TLS is [rules.backends.tls]: TLS to this backend, replacing the
	// rule's backend_tls (enabled = false: plain TCP). nil when absent.
	TLS *BackendTLS `toml:"tls"`
}

// BackupTier is the tier of a backend with backup = true: after every
// priority a config or an SRV record can give.
const BackupTier = 65536

// Tier is the backend's effective priority: Priority, or BackupTier for a
// backup.
func (b *Backend) Tier() int {
	if b.Backup {
		return BackupTier
	}
	return b.Priority
}

// Defaults.
const (
	DefaultTCPBind             = "0.0.0.0:8080"
	DefaultUDPBind             = "0.0.0.0:8081"
	DefaultMaxConnections      = 10000
	DefaultConnectionTimeout   = 10 * time.Second
	DefaultBufferSize          = 8192
	DefaultIdleTimeout         = 10 * time.Minute
	DefaultShutdownTimeout     = 30 * time.Second
	DefaultUpgradeTimeout      = time.Minute
	DefaultRouter              = "round_robin"
	DefaultSessionTimeout      = 30 * time.Second   // UDP rules
	DefaultMaxSessions         = 10000              // UDP rules, per rule
	DefaultOnBackendDownWindow = 2 * time.Second    // on_backend_down_window
	DefaultResyncInterval      = 5 * time.Second    // [redis] resync_interval
	DefaultKeyPrefix           = "dynamic-proxy:"   // [redis] key_prefix
	DefaultClusterKeyPrefix    = "{dynamic-proxy}:" // [redis] key_prefix with redis+cluster://
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
		UpgradeTimeout:    Duration(DefaultUpgradeTimeout),
		WatchConfig:       true,
		AdaptiveThreads:   true,
		PeekTimeout:       Duration(3 * time.Second),
		Engine:            "auto",
	}
	c.Logging = Logging{Level: "info", Format: "text"}
	c.Metrics.setDefaults()
	c.Admin.setDefaults()
	c.HealthCheck.setDefaults()
}

func (r *Redis) setDefaults() {
	*r = Redis{
		URL:               "redis://127.0.0.1:6379",
		PoolSize:          10,
		ConnectionTimeout: Duration(5 * time.Second),
		CommandTimeout:    Duration(3 * time.Second),
		KeyPrefix:         DefaultKeyPrefix,
		ResyncInterval:    Duration(DefaultResyncInterval),
	}
}

func (r *RouterSpec) setDefaults() { r.Config = map[string]any{} }

func (r *Rule) setDefaults() {
	*r = Rule{Protocol: "tcp", Enabled: true, Router: DefaultRouter,
		SessionTimeout: Duration(DefaultSessionTimeout), MaxSessions: DefaultMaxSessions,
		OnBackendDown: OnBackendDownKeep, OnBackendDownWindow: Duration(DefaultOnBackendDownWindow)}
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
	if port := r.Matcher.port(); port != 0 {
		host, _, err := net.SplitHostPort(bind)
		if err != nil {
			return bind
		}
		return net.JoinHostPort(host, strconv.Itoa(port))
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
