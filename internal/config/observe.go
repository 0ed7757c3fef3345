package config

import (
	"net"
	"strings"
)

// Metrics is [metrics]: the Prometheus endpoint.
type Metrics struct {
	// Enabled turns metrics collection and the endpoint on. With false the
	// data path does no counting at all. Default true. Needs a restart.
	Enabled bool `toml:"enabled"`
	// Bind is the address of the metrics HTTP server. Default
	// "127.0.0.1:8070". Needs a restart.
	Bind string `toml:"bind"`
	// Path is the URL path metrics are served on. Default "/metrics".
	// Needs a restart.
	Path string `toml:"path"`
}

// Admin is [admin]: the HTTP admin API and status page.
type Admin struct {
	// Bind is the address of the admin API and status page. Default
	// "127.0.0.1:8071"; "" turns the admin server off. A non-loopback
	// address needs a Token. Needs a restart.
	Bind string `toml:"bind"`
	// Token, when set, is required as "Authorization: Bearer TOKEN" by every
	// /api/ and /debug/pprof/ request. A reload changes it at once.
	// Default "" (no authentication: loopback binds only).
	Token string `toml:"token"`
	// Pprof serves Go's profiler at /debug/pprof/ on the admin address.
	// Default false. Needs a restart.
	Pprof bool `toml:"pprof"`
}

// Defaults of [metrics] and [admin].
const (
	DefaultMetricsBind = "127.0.0.1:8070"
	DefaultMetricsPath = "/metrics"
	DefaultAdminBind   = "127.0.0.1:8071"
)

func (m *Metrics) setDefaults() {
	*m = Metrics{Enabled: true, Bind: DefaultMetricsBind, Path: DefaultMetricsPath}
}

func (a *Admin) setDefaults() { *a = Admin{Bind: DefaultAdminBind} }

// validateObserve checks [metrics] and [admin].
func (c *Config) validateObserve(e *Errors) {
	m, a := &c.Metrics, &c.Admin
	if m.Enabled {
		checkBind(e, "metrics.bind", m.Bind)
		switch {
		case !strings.HasPrefix(m.Path, "/"):
			e.addf("metrics.path", "must start with \"/\", got %q", m.Path)
		case strings.ContainsAny(m.Path, " ?#{}"):
			e.addf("metrics.path", "must be a plain URL path (no spaces, ?, #, { or }), got %q", m.Path)
		}
	}
	if a.Bind == "" {
		return
	}
	checkBind(e, "admin.bind", a.Bind)
	if a.Token == "" && !IsLoopback(a.Bind) {
		e.addf("admin.bind", "%q is not a loopback address: the admin API can drain backends and reload the config, "+
			"so set admin.token (clients then send \"Authorization: Bearer TOKEN\"), or bind it to 127.0.0.1", a.Bind)
	}
	if strings.ContainsAny(a.Token, " \t\r\n") {
		e.add("admin.token", "must not contain spaces or line breaks (it is sent in an HTTP header)")
	}
	if m.Enabled && m.Bind == a.Bind && !strings.HasSuffix(a.Bind, ":0") {
		e.addf("admin.bind", "%q is also metrics.bind: give the admin API and the metrics endpoint different ports", a.Bind)
	}
}

// IsLoopback reports whether a bind address host:port listens on loopback
// only: an IP in 127.0.0.0/8 or ::1, or "localhost". An empty host (all
// addresses) is not loopback.
func IsLoopback(bind string) bool {
	host, _, err := net.SplitHostPort(bind)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
