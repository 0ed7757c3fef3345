package admin

import (
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/acme"
	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/discovery"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
	"github.com/dynamic-proxy/dynamic-proxy/internal/version"
)

// StatusJSON is the answer of GET /api/v1/status.
type StatusJSON struct {
	Version       string         `json:"version"`
	Commit        string         `json:"commit"`
	GoVersion     string         `json:"go_version"`
	StartedAt     time.Time      `json:"started_at"`
	UptimeSeconds float64        `json:"uptime_seconds"`
	NowUnixMs     int64          `json:"now_unix_ms"` // the server's clock, for rates between two polls
	Ready         bool           `json:"ready"`
	Config        ConfigJSON     `json:"config"`
	Connections   ConnsJSON      `json:"connections"`
	Listeners     []ListenerJSON `json:"listeners"`
	Rules         []RuleJSON     `json:"rules"`
}

// ConfigJSON identifies the running config.
type ConfigJSON struct {
	File    string `json:"file"`
	Version int    `json:"version"` // 1 at start-up, +1 per successful reload
}

// ConnsJSON are the process-wide counters.
type ConnsJSON struct {
	Active   int64 `json:"active"`   // TCP connections open now
	Accepted int64 `json:"accepted"` // TCP connections accepted
	Rejected int64 `json:"rejected"` // refused at max_connections
	Sessions int64 `json:"udp_sessions"`
}

// ListenerJSON is one bound listener.
type ListenerJSON struct {
	Protocol string   `json:"protocol"`
	Address  string   `json:"address"`
	Rules    []string `json:"rules"`
}

// RuleJSON is one rule and its backends.
type RuleJSON struct {
	Name     string        `json:"name"`
	Protocol string        `json:"protocol"`
	Enabled  bool          `json:"enabled"`
	Listener string        `json:"listener"`
	Router   string        `json:"router"`
	Plugin   string        `json:"plugin"`
	Backends []BackendJSON `json:"backends"`
	// Discovery is the rule's DNS names ([[rules.discovery]]) and what
	// they answered last.
	Discovery []DiscoveryJSON `json:"discovery,omitempty"`
	// Certificates are those the rule serves when it terminates TLS, the
	// default first (Options.Certificates); absent otherwise.
	Certificates []CertJSON `json:"certificates,omitempty"`
	// ACME is the state of each name the rule gets by ACME
	// (rules.tls.acme); absent otherwise.
	ACME []ACMEJSON `json:"acme,omitempty"`
}

// ACMEJSON is one name managed by ACME.
type ACMEJSON struct {
	Name string `json:"name"`
	// Serial and ValidUntil are the served certificate's; NextRenewal is
	// about when it will be renewed. Empty while there is none.
	Serial      string     `json:"serial,omitempty"`
	ValidUntil  *time.Time `json:"valid_until,omitempty"`
	NextRenewal *time.Time `json:"next_renewal,omitempty"`
	Obtaining   bool       `json:"obtaining"` // an order of this instance is under way
	// LastError is the last failed order's error (cleared by a success),
	// LastErrorAt when it failed.
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
}

func acmeJSON(s acme.NameState) ACMEJSON {
	j := ACMEJSON{Name: s.Name, Serial: s.Serial, Obtaining: s.Obtaining, LastError: s.LastError}
	tp := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		return &t
	}
	j.ValidUntil, j.NextRenewal, j.LastErrorAt = tp(s.NotAfter), tp(s.NextRenewal), tp(s.LastErrorAt)
	return j
}

// DiscoveryJSON is one DNS name a rule takes backends from.
type DiscoveryJSON struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	Resolver string `json:"resolver"`
	// State is "waiting" (no answer yet), "ok", "stale" (the last
	// refresh failed: the last good answer serves) or "empty_pending" (an
	// empty answer within empty_grace: the last good answer serves).
	State     string   `json:"state"`
	Endpoints []string `json:"endpoints"` // the answer in effect: "ip:port", SRV ones with " weight=W priority=P"
	// AnsweredAtUnixMs is when the answer in effect was last confirmed;
	// AgeSeconds how long ago.
	AnsweredAtUnixMs     int64   `json:"answered_at_unix_ms,omitempty"`
	AgeSeconds           float64 `json:"age_seconds"`
	TTLSeconds           float64 `json:"ttl_seconds"`
	Rcode                string  `json:"rcode,omitempty"`
	NextRefreshUnixMs    int64   `json:"next_refresh_unix_ms,omitempty"`
	NextRefreshInSeconds float64 `json:"next_refresh_in_seconds"`
	LastError            string  `json:"last_error,omitempty"`
	FailingSinceUnixMs   int64   `json:"failing_since_unix_ms,omitempty"`
	EmptySinceUnixMs     int64   `json:"empty_since_unix_ms,omitempty"`
	Refreshes            int64   `json:"refreshes"`
	Failures             int64   `json:"failures"`
}

func discoveryJSON(d discovery.Status, now time.Time) DiscoveryJSON {
	st := d.State
	j := DiscoveryJSON{Name: d.Name, Type: d.Type, Resolver: d.Server, Endpoints: make([]string, 0, len(st.Applied)),
		TTLSeconds: st.TTL.Seconds(), Rcode: st.Rcode, LastError: st.LastError, Refreshes: st.Refreshes, Failures: st.Failures}
	for _, ep := range st.Applied {
		s := ep.Addr.String()
		if d.Type == "srv" {
			s += fmt.Sprintf(" weight=%d priority=%d", ep.Weight, ep.Priority)
		}
		j.Endpoints = append(j.Endpoints, s)
	}
	switch {
	case !st.Answered:
		j.State = "waiting"
	case st.LastError != "":
		j.State = "stale"
	case !st.EmptySince.IsZero():
		j.State = "empty_pending"
	default:
		j.State = "ok"
	}
	if !st.AnsweredAt.IsZero() {
		j.AnsweredAtUnixMs = st.AnsweredAt.UnixMilli()
		j.AgeSeconds = now.Sub(st.AnsweredAt).Seconds()
	}
	if !st.Next.IsZero() {
		j.NextRefreshUnixMs = st.Next.UnixMilli()
		j.NextRefreshInSeconds = max(st.Next.Sub(now).Seconds(), 0)
	}
	if !st.ErrorSince.IsZero() {
		j.FailingSinceUnixMs = st.ErrorSince.UnixMilli()
	}
	if !st.EmptySince.IsZero() {
		j.EmptySinceUnixMs = st.EmptySince.UnixMilli()
	}
	return j
}

// CertJSON is one certificate a terminating rule serves.
type CertJSON struct {
	File     string    `json:"file"`
	Names    []string  `json:"names"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
	DaysLeft float64   `json:"days_left"` // negative once expired
	Default  bool      `json:"default"`   // served without SNI or for an unknown name
	// Level is "ok", "warning" (under 14 days left: amber on the status
	// page) or "critical" (under 3 days, or expired: red).
	Level string `json:"level"`
}

// Certificate expiry levels of CertJSON.Level.
const (
	CertWarningDays  = 14
	CertCriticalDays = 3
)

func certJSON(c tlsconf.Info, now time.Time) CertJSON {
	days := c.NotAfter.Sub(now).Hours() / 24
	level := "ok"
	switch {
	case days < CertCriticalDays:
		level = "critical"
	case days < CertWarningDays:
		level = "warning"
	}
	return CertJSON{File: c.Cert, Names: c.Names, Serial: c.Serial, NotAfter: c.NotAfter.UTC(), DaysLeft: days, Default: c.Default, Level: level}
}

// BackendJSON is one backend's live state.
type BackendJSON struct {
	ID               string `json:"id"`
	Address          string `json:"address"`
	Weight           int    `json:"weight"`           // configured or set through the API
	EffectiveWeight  int    `json:"effective_weight"` // lower during a slow start
	Enabled          bool   `json:"enabled"`
	Healthy          bool   `json:"healthy"`
	HealthReason     string `json:"health_reason,omitempty"` // why it last changed
	Draining         bool   `json:"draining"`
	Available        bool   `json:"available"` // enabled, healthy and not draining: routers may pick it
	ActiveConns      int64  `json:"active_connections"`
	TotalConns       int64  `json:"total_connections"`
	BytesIn          int64  `json:"bytes_in"`  // client to backend
	BytesOut         int64  `json:"bytes_out"` // backend to client
	HealthSinceUnixS int64  `json:"health_since_unix,omitempty"`
	// Tier is the backend's priority tier (0 first; 65536: backup):
	// routers pick from the best tier with a usable backend.
	Tier int `json:"tier"`
	// Source is the DNS name the backend was discovered from; absent for
	// one from the config file, the API or the fleet.
	Source string `json:"source,omitempty"`
}

func backendJSON(b *backend.Backend) BackendJSON {
	in, out := b.Bytes()
	h := b.Health()
	st := h.Status()
	j := BackendJSON{
		ID: b.ID, Address: b.Address, Weight: b.ConfiguredWeight(), EffectiveWeight: b.Weight(),
		Enabled: b.Enabled(), Healthy: h.Up(), HealthReason: st.Reason, Draining: b.Draining(),
		Available: b.Available(), ActiveConns: b.Active(), TotalConns: b.Total(), BytesIn: in, BytesOut: out,
		Tier: b.Tier(), Source: b.Source,
	}
	if !st.Since.IsZero() {
		j.HealthSinceUnixS = st.Since.Unix()
	}
	return j
}

// Status builds the status document.
func (h *Handler) Status() StatusJSON {
	e := h.o.Engine
	info := version.Get()
	now := time.Now()
	st := StatusJSON{
		Version: info.Version, Commit: info.Commit, GoVersion: info.GoVersion,
		StartedAt: h.o.Started.UTC().Truncate(time.Second), UptimeSeconds: now.Sub(h.o.Started).Seconds(),
		NowUnixMs: now.UnixMilli(), Ready: h.o.Ready == nil || h.o.Ready(),
		Listeners: []ListenerJSON{}, Rules: []RuleJSON{},
	}
	cfg, v := e.Config()
	if cfg != nil {
		st.Config = ConfigJSON{File: cfg.File, Version: v}
	}
	srv := e.Server()
	st.Connections = ConnsJSON{Active: srv.Active(), Accepted: srv.Accepted(),
		Rejected: srv.Stats.Rejected.Load(), Sessions: srv.UDP.Sessions.Load()}
	byListener := map[[2]string][]string{}
	disc := map[string][]DiscoveryJSON{}
	for _, d := range e.Discovery() {
		disc[d.Rule] = append(disc[d.Rule], discoveryJSON(d, now))
	}
	var certsByRule map[string][]tlsconf.Info
	if h.o.Certificates != nil {
		certsByRule = h.o.Certificates()
	}
	acmeByRule := map[string][]ACMEJSON{}
	if h.o.ACME != nil {
		for _, s := range h.o.ACME() {
			acmeByRule[s.Rule] = append(acmeByRule[s.Rule], acmeJSON(s))
		}
	}
	for _, r := range e.Rules() {
		rj := RuleJSON{ACME: acmeByRule[r.Name], Name: r.Name, Protocol: r.Protocol, Enabled: r.Enabled, Listener: r.Listener,
			Router: r.Router, Plugin: r.Plugin, Backends: make([]BackendJSON, 0, len(r.Backends)), Discovery: disc[r.Name]}
		for _, b := range r.Backends {
			rj.Backends = append(rj.Backends, backendJSON(b))
		}
		if certs := certsByRule[r.Name]; len(certs) > 0 {
			for _, c := range certs {
				rj.Certificates = append(rj.Certificates, certJSON(c, now))
			}
		}
		st.Rules = append(st.Rules, rj)
		if r.Listener != "" {
			k := [2]string{r.Protocol, r.Listener}
			byListener[k] = append(byListener[k], r.Name)
		}
	}
	for k, rules := range byListener {
		st.Listeners = append(st.Listeners, ListenerJSON{Protocol: k[0], Address: k[1], Rules: rules})
	}
	sort.Slice(st.Listeners, func(i, j int) bool {
		a, b := st.Listeners[i], st.Listeners[j]
		return a.Protocol+" "+a.Address < b.Protocol+" "+b.Address
	})
	return st
}

func (h *Handler) status(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, h.Status())
}
