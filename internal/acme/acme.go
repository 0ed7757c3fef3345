// Package acme gets and renews the certificates of terminating rules with
// rules.tls.acme, through github.com/caddyserver/certmagic (no ACME client
// of our own). One Manager per process holds certmagic's certificate cache
// and one certmagic.Config per rule; a rule's Rule is the
// tlsconf.Managed its tlsconf.Server asks for certificates during
// handshakes. Challenges are answered by the proxy: TLS-ALPN-01 by the
// rule's own handshakes (tlsconf answers a ClientHello offering only
// acme-tls/1 with Rule.Challenge), HTTP-01 by a listener of the Manager's
// on the configured port. Storage is a certmagic.Storage: a directory, or
// store.ACMEStorage on the fleet's Redis, whose lock makes one instance
// order each name.
package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
)

// The challenge types.
const (
	ChallengeTLSALPN = "tls-alpn-01"
	ChallengeHTTP    = "http-01"
)

// RenewalRatio is the part of a certificate's lifetime left when it is
// renewed (certmagic's default).
const RenewalRatio = 1.0 / 3.0

// Options configure a Manager; they are fixed for its life.
type Options struct {
	Email      string         // contact given to the CA; "" none
	Directory  string         // ACME directory URL
	Roots      *x509.CertPool // verify the directory's HTTPS; nil: the system roots
	Challenges []string       // ChallengeTLSALPN, ChallengeHTTP
	// HTTPListen is where HTTP-01 challenges are answered ("" none).
	HTTPListen string
	// Storage keeps certificates, keys and the account.
	Storage certmagic.Storage
	// RenewCheckInterval is how often renewals are considered.
	RenewCheckInterval time.Duration
	Log                *slog.Logger
}

// Manager obtains and renews the certificates of every ACME rule.
type Manager struct {
	o      Options
	log    *slog.Logger
	zlog   *zapLogger
	cache  *certmagic.Cache
	ctx    context.Context
	cancel context.CancelFunc
	http   *http.Server
	hport  int // the HTTP-01 listener's port

	mu     sync.Mutex
	rules  map[string]*Rule      // committed, by rule name
	byName map[string]*Rule      // committed, by managed name
	state  map[string]*nameState // by managed name
}

// nameState is what is known of one managed name, for metrics and status.
type nameState struct {
	rule      string
	obtaining bool
	lastErr   string
	lastErrAt time.Time
	obtained  int // certificates obtained (or renewed) by this instance
	failed    int // orders that failed here
}

// NewManager returns a Manager managing nothing; Commit gives it rules.
// With o.HTTPListen set it binds that address now (an error if it cannot).
func NewManager(o Options) (*Manager, error) {
	if o.Storage == nil {
		return nil, errors.New("acme: no storage")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.RenewCheckInterval <= 0 {
		o.RenewCheckInterval = 10 * time.Minute
	}
	m := &Manager{o: o, log: o.Log, rules: map[string]*Rule{}, byName: map[string]*Rule{}, state: map[string]*nameState{}}
	m.zlog = newZapLogger(o.Log)
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   m.configForCert,
		RenewCheckInterval: o.RenewCheckInterval,
		Logger:             m.zlog.zap,
	})
	if o.HTTPListen != "" && slices.Contains(o.Challenges, ChallengeHTTP) {
		ln, err := net.Listen("tcp", o.HTTPListen)
		if err != nil {
			m.cache.Stop()
			return nil, fmt.Errorf("acme: http-01 listener: %w", err)
		}
		m.hport = ln.Addr().(*net.TCPAddr).Port
		m.http = &http.Server{Handler: http.HandlerFunc(m.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
		go m.http.Serve(ln)
		m.log.Info("acme: answering http-01 challenges", "listen", ln.Addr().String())
	}
	return m, nil
}

// Close stops renewals, orders in progress and the HTTP-01 listener.
func (m *Manager) Close() {
	m.cancel()
	if m.http != nil {
		m.http.Close()
	}
	m.cache.Stop()
}

// Directory is the ACME directory URL in use.
func (m *Manager) Directory() string { return m.o.Directory }

func (m *Manager) configForCert(c certmagic.Certificate) (*certmagic.Config, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, n := range c.Names {
		if r := m.byName[n]; r != nil {
			return r.cfg, nil
		}
	}
	return nil, fmt.Errorf("acme: no rule manages %v", c.Names)
}

// serveHTTP answers HTTP-01 challenges for any managed name (from the
// storage, so a challenge another instance of the fleet started is
// answered too), 404 otherwise.
func (m *Manager) serveHTTP(w http.ResponseWriter, r *http.Request) {
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		host = r.Host
	}
	m.mu.Lock()
	rule := m.byName[strings.ToLower(host)]
	m.mu.Unlock()
	if rule != nil && rule.issuer.HandleHTTPChallenge(w, r) {
		m.log.Debug("acme: http-01 challenge answered", "name", host, "client", r.RemoteAddr)
		return
	}
	http.NotFound(w, r)
}

// Rule is one rule's managed certificates: a tlsconf.Managed.
type Rule struct {
	m      *Manager
	name   string
	names  []string // lower case, the default first
	set    map[string]bool
	listen string
	cfg    *certmagic.Config
	issuer *certmagic.ACMEIssuer
}

var _ tlsconf.Managed = (*Rule)(nil)

// Rule returns the managed certificates of rule for names, answering
// TLS-ALPN-01 on listen (the rule's listener, host:port). It starts
// nothing (the engine's plan): Commit does. The running one is returned
// while its names and listener are the same.
func (m *Manager) Rule(rule string, names []string, listen string) *Rule {
	norm := make([]string, len(names))
	for i, n := range names {
		norm[i] = strings.ToLower(strings.TrimSuffix(n, "."))
	}
	m.mu.Lock()
	old := m.rules[rule]
	m.mu.Unlock()
	if old != nil && old.listen == listen && slices.Equal(old.names, norm) {
		return old
	}
	r := &Rule{m: m, name: rule, names: norm, set: map[string]bool{}, listen: listen}
	for _, n := range norm {
		r.set[n] = true
	}
	r.cfg = certmagic.New(m.cache, certmagic.Config{
		RenewalWindowRatio: RenewalRatio,
		Storage:            m.o.Storage,
		DisableARI:         true, // renewal at RenewalRatio, as the status and metrics say
		OnEvent:            m.onEvent,
		Logger:             m.zlog.zap,
	})
	host, port, _ := net.SplitHostPort(listen)
	p, _ := strconv.Atoi(port)
	iss := certmagic.ACMEIssuer{
		CA: m.o.Directory, Email: m.o.Email, Agreed: true, TrustedRoots: m.o.Roots,
		DisableTLSALPNChallenge: !slices.Contains(m.o.Challenges, ChallengeTLSALPN),
		DisableHTTPChallenge:    m.http == nil,
		// certmagic tries to bind these and, finding them in use (ours),
		// leaves the answers to us: the rule's handshakes and serveHTTP.
		ListenHost: host, AltTLSALPNPort: p,
		Logger: m.zlog.zap,
	}
	if m.http != nil {
		hh, _, _ := net.SplitHostPort(m.o.HTTPListen)
		iss.AltHTTPPort = m.hport
		if hh != host { // one ListenHost for both: certmagic's bind must find ours
			iss.ListenHost = ""
		}
	}
	r.issuer = certmagic.NewACMEIssuer(r.cfg, iss)
	r.cfg.Issuers = []certmagic.Issuer{r.issuer}
	return r
}

// Commit makes rules the managed ones: a new rule (or one whose names
// changed) starts being managed — its certificates loaded from storage,
// or ordered in the background — and names no rule has any more stop
// being renewed. It cannot fail: a failed order is retried with backoff
// by certmagic and shows in the state.
func (m *Manager) Commit(rules map[string]*Rule) {
	m.mu.Lock()
	var start []*Rule
	byName := map[string]*Rule{}
	for name, r := range rules {
		if m.rules[name] != r {
			start = append(start, r)
		}
		for _, n := range r.names {
			byName[n] = r
			if m.state[n] == nil {
				m.state[n] = &nameState{}
			}
			m.state[n].rule = name
		}
	}
	var gone []certmagic.SubjectIssuer
	for n := range m.byName {
		if byName[n] == nil {
			gone = append(gone, certmagic.SubjectIssuer{Subject: n})
			delete(m.state, n)
		}
	}
	m.rules, m.byName = rules, byName
	m.mu.Unlock()
	if len(gone) > 0 {
		m.cache.RemoveManaged(gone)
	}
	for _, r := range start {
		m.log.Info("acme: managing certificates", "rule", r.name, "names", r.names, "directory", m.o.Directory)
		if err := r.cfg.ManageAsync(m.ctx, r.names); err != nil {
			m.log.Error("acme: cannot manage certificates", "rule", r.name, "err", err.Error())
		}
	}
}

func (m *Manager) onEvent(_ context.Context, event string, data map[string]any) error {
	name, _ := data["identifier"].(string)
	m.mu.Lock()
	st := m.state[name]
	rule := ""
	if st != nil {
		rule = st.rule
	}
	switch event {
	case "cert_obtaining":
		if st != nil {
			st.obtaining = true
		}
		m.mu.Unlock()
		m.log.Info("acme: ordering certificate", "rule", rule, "name", name, "renewal", data["renewal"] == true)
		return nil
	case "cert_obtained":
		if st != nil {
			st.obtaining, st.lastErr, st.lastErrAt = false, "", time.Time{}
			st.obtained++
		}
		m.mu.Unlock()
		m.log.Info("acme: certificate obtained", "rule", rule, "name", name, "renewal", data["renewal"] == true)
		return nil
	case "cert_failed":
		msg := fmt.Sprint(data["error"])
		if st != nil {
			st.obtaining, st.lastErr, st.lastErrAt = false, msg, time.Now()
			st.failed++
		}
		m.mu.Unlock()
		m.log.Warn("acme: certificate order failed; retried with backoff", "rule", rule, "name", name, "renewal", data["renewal"] == true, "err", msg)
		return nil
	}
	m.mu.Unlock()
	return nil
}

// current is the certificate served for name: the cache's newest one that
// holds it. During a renewal the old one stays until the new one replaces
// it in the cache.
func (r *Rule) current(name string) *certmagic.Certificate {
	var best *certmagic.Certificate
	for _, c := range r.m.cache.AllMatchingCertificates(name) {
		if c.Leaf == nil || !slices.Contains(c.Names, name) {
			continue
		}
		if best == nil || c.Leaf.NotAfter.After(best.Leaf.NotAfter) {
			c := c
			best = &c
		}
	}
	return best
}

// Certificate implements tlsconf.Managed.
func (r *Rule) Certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if !r.set[name] {
		name = r.names[0]
	}
	c := r.current(name)
	if c == nil {
		return nil, fmt.Errorf("acme: no certificate for %s yet (being obtained)", name)
	}
	return &c.Certificate, nil
}

// Challenge implements tlsconf.Managed: certmagic's TLS-ALPN-01 answer,
// from this instance's order or, through the storage, another instance's.
func (r *Rule) Challenge(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(hello.ServerName)
	if !r.set[name] {
		return nil, fmt.Errorf("acme: tls-alpn-01 validation for %q, which this rule does not manage", hello.ServerName)
	}
	return r.cfg.GetCertificate(hello)
}

// Names implements tlsconf.Managed.
func (r *Rule) Names() []string { return r.names }

// Certificates implements tlsconf.Managed: one per managed name that has
// one, the default first.
func (r *Rule) Certificates() []tlsconf.Info {
	var out []tlsconf.Info
	for i, n := range r.names {
		c := r.current(n)
		if c == nil {
			continue
		}
		out = append(out, tlsconf.Info{Cert: "acme:" + n, Names: c.Names, Serial: tlsconf.Serial(c.Leaf),
			NotAfter: c.Leaf.NotAfter, Default: i == 0})
	}
	return out
}

// NameState is what operators are shown of one managed name.
type NameState struct {
	Rule, Name string
	// Serial and NotAfter are the served certificate's (empty and zero
	// while there is none).
	Serial   string
	NotAfter time.Time
	// NextRenewal is about when it will be renewed: when RenewalRatio of
	// its lifetime is left (zero without a certificate).
	NextRenewal time.Time
	Obtaining   bool      // an order of this instance is under way
	LastError   string    // the last failed order's error, cleared by a success
	LastErrorAt time.Time // when it failed
	Obtained    int       // certificates this instance obtained or renewed
	Failed      int       // orders of this instance that failed
}

// State returns every managed name's state, by rule and name.
func (m *Manager) State() []NameState {
	m.mu.Lock()
	var out []NameState
	rules := make([]*Rule, 0, len(m.rules))
	for _, r := range m.rules {
		rules = append(rules, r)
	}
	for _, r := range rules {
		for _, n := range r.names {
			st := NameState{Rule: r.name, Name: n}
			if s := m.state[n]; s != nil {
				st.Obtaining, st.LastError, st.LastErrorAt, st.Obtained, st.Failed = s.obtaining, s.lastErr, s.lastErrAt, s.obtained, s.failed
			}
			out = append(out, st)
		}
	}
	m.mu.Unlock()
	for i := range out {
		r := rules0(m, out[i].Rule)
		if r == nil {
			continue
		}
		if c := r.current(out[i].Name); c != nil {
			out[i].Serial, out[i].NotAfter = tlsconf.Serial(c.Leaf), c.Leaf.NotAfter
			out[i].NextRenewal = m.nextRenewal(c.Leaf)
		}
	}
	slices.SortFunc(out, func(a, b NameState) int {
		if c := strings.Compare(a.Rule, b.Rule); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

func rules0(m *Manager, rule string) *Rule {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.rules[rule]
}

// nextRenewal is when certmagic's check will find leaf due: a third of
// its lifetime left, or five check intervals before it expires if sooner.
func (m *Manager) nextRenewal(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	t := leaf.NotAfter.Add(-time.Duration(float64(life) * RenewalRatio))
	if e := leaf.NotAfter.Add(-5 * m.o.RenewCheckInterval); e.Before(t) {
		t = e
	}
	return t
}
