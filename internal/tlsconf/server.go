package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ClientAuth is how a terminating rule asks for client certificates.
type ClientAuth string

// The client_auth values.
const (
	ClientAuthNone    ClientAuth = "none"    // no client certificate asked for
	ClientAuthRequest ClientAuth = "request" // asked for; verified against the CA when given
	ClientAuthRequire ClientAuth = "require" // required and verified against the CA
)

// Defaults of ServerOptions.
const (
	DefaultMinVersion       = tls.VersionTLS12
	DefaultMaxVersion       = tls.VersionTLS13
	DefaultTicketRotation   = 12 * time.Hour
	DefaultTicketKeys       = 3
	DefaultHandshakeTimeout = 10 * time.Second
)

// ServerOptions configure TLS termination for one rule.
type ServerOptions struct {
	// Name is the rule's name: it scopes the shared ticket keys and names
	// the rule in messages.
	Name string
	// Certificates are the certificate and key files; the first is the
	// default, served to clients without SNI or with a name no
	// certificate has. At least one.
	Certificates []Pair
	// MinVersion and MaxVersion bound the versions (tls.VersionTLS1x);
	// 0 means DefaultMinVersion (TLS 1.2) and DefaultMaxVersion (TLS 1.3).
	MinVersion, MaxVersion uint16
	// ALPN are the protocols offered, in order of preference.
	ALPN []string
	// ClientAuth asks for client certificates ("" is ClientAuthNone);
	// ClientCA is the PEM file of CAs that verifies them, required with
	// "request" and "require".
	ClientAuth ClientAuth
	ClientCA   string
	// SessionTickets turns resumption by session tickets on.
	SessionTickets bool
	// TicketRotation is how long one ticket key encrypts new tickets
	// (0: DefaultTicketRotation); TicketKeys how many keys, the newest
	// first, still decrypt them (0: DefaultTicketKeys). A ticket is thus
	// accepted for up to TicketKeys × TicketRotation.
	TicketRotation time.Duration
	TicketKeys     int
	// HandshakeTimeout bounds Handshake (0: DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// Managed, when not nil, serves the certificates instead of
	// Certificates (ACME, internal/acme), and answers TLS-ALPN-01
	// challenges.
	Managed Managed
}

// ACMETLS1 is the ALPN protocol of the TLS-ALPN-01 challenge (RFC 8737).
const ACMETLS1 = "acme-tls/1"

// Managed is a source of certificates that are not files: the ACME
// manager of one rule. Its methods are called during handshakes.
type Managed interface {
	// Certificate returns the certificate for hello: its SNI's when it is
	// one of the managed names, else the default (the first name's).
	Certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error)
	// Challenge returns the TLS-ALPN-01 challenge certificate for hello
	// (a ClientHello offering only ACMETLS1).
	Challenge(hello *tls.ClientHelloInfo) (*tls.Certificate, error)
	// Certificates describes the certificates being served, the default first.
	Certificates() []Info
	// Names are the managed names, the default first.
	Names() []string
}

// IsChallenge reports whether hello is an ACME TLS-ALPN-01 validation: an
// SNI and ACMETLS1 as the only protocol offered (RFC 8737 section 3).
func IsChallenge(hello *tls.ClientHelloInfo) bool {
	return hello.ServerName != "" && len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == ACMETLS1
}

func (o *ServerOptions) fill() {
	if o.MinVersion == 0 {
		o.MinVersion = DefaultMinVersion
	}
	if o.MaxVersion == 0 {
		o.MaxVersion = DefaultMaxVersion
	}
	if o.ClientAuth == "" {
		o.ClientAuth = ClientAuthNone
	}
	if o.TicketRotation <= 0 {
		o.TicketRotation = DefaultTicketRotation
	}
	if o.TicketKeys <= 0 {
		o.TicketKeys = DefaultTicketKeys
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
}

// Files are every file the options read: certificates, keys, the client CA.
func (o ServerOptions) Files() []string {
	var fs []string
	for _, p := range o.Certificates {
		fs = append(fs, p.Cert, p.Key)
	}
	if o.ClientCA != "" {
		fs = append(fs, o.ClientCA)
	}
	return fs
}

// Observer is told of every handshake Server.Handshake runs. The engine
// gives one per rule (metrics.TLS.Observer); nil counts nothing.
type Observer interface {
	// Handshake reports one handshake: the negotiated version (0 when it
	// failed), whether the session was resumed, how long it took, and the
	// error that ended it (nil on success).
	Handshake(version uint16, resumed bool, d time.Duration, err error)
}

// Server terminates TLS for one rule. Its Config is given to tls.Server;
// everything it reads per handshake is loaded from atomics, so Reload,
// Update and ticket rotation never wait for a handshake nor make one wait.
type Server struct {
	base    *tls.Config
	current atomic.Pointer[snapshot]
	obs     Observer
	now     func() time.Time
	src     TicketKeySource // nil: local ticket keys

	mu      sync.Mutex // serialises Prepare/Commit and the options
	opts    ServerOptions
	tickets *ticketer // nil when tickets are off
	closed  bool      // Close ran: no rotation starts again
}

// snapshot is one complete, immutable server configuration.
type snapshot struct {
	opts   ServerOptions
	certs  []*Cert // [0] is the default
	exact  map[string][]*Cert
	wild   map[string][]*Cert // by the suffix after "*.", e.g. "example.com"
	config *tls.Config        // returned by GetConfigForClient
	chal   *tls.Config        // with Managed: returned to TLS-ALPN-01 validations
}

// NewServer loads every file of o and returns a Server serving them, or
// the first file that is wrong and why. tickets, when not nil, is where
// the session ticket keys are shared (store.Store on [redis]); obs, when
// not nil, is told of each handshake. Close stops its ticket rotation.
func NewServer(o ServerOptions, tickets TicketKeySource, obs Observer) (*Server, error) {
	return newServer(o, tickets, obs, time.Now)
}

func newServer(o ServerOptions, tickets TicketKeySource, obs Observer, now func() time.Time) (*Server, error) {
	st, err := prepareServer(o, tickets, obs, now)
	if err != nil {
		return nil, err
	}
	st.Commit()
	return st.s, nil
}

// PrepareServer is NewServer in two steps, for the engine's plan and
// commit: it loads and checks every file and starts nothing; the Server
// (Staged.Server) serves, and its ticket rotation runs, once the Staged
// is committed. An uncommitted one is simply dropped.
func PrepareServer(o ServerOptions, tickets TicketKeySource, obs Observer) (*Staged, error) {
	return prepareServer(o, tickets, obs, time.Now)
}

func prepareServer(o ServerOptions, tickets TicketKeySource, obs Observer, now func() time.Time) (*Staged, error) {
	s := &Server{obs: obs, now: now, src: tickets}
	s.base = &tls.Config{GetConfigForClient: s.configForClient}
	return s.Prepare(o)
}

// Server is the Server the staged configuration is for.
func (st *Staged) Server() *Server { return st.s }

// Config is the *tls.Config to terminate with (tls.Server(conn, s.Config())).
// It stays the same across reloads: it hands each handshake the current set.
func (s *Server) Config() *tls.Config { return s.base }

func (s *Server) configForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	snap := s.current.Load()
	if snap.chal != nil && IsChallenge(hello) {
		return snap.chal, nil
	}
	return snap.config, nil
}

// Staged is a loaded configuration not yet serving: Commit publishes it.
type Staged struct {
	s    *Server
	snap *snapshot
}

// Prepare loads every file of o and checks it, without changing what is
// served: the engine's plan step. The error names the file at fault.
func (s *Server) Prepare(o ServerOptions) (*Staged, error) {
	o.fill()
	snap, err := load(o, s.now())
	if err != nil {
		return nil, fmt.Errorf("rule %q: tls: %w", o.Name, err)
	}
	return &Staged{s: s, snap: snap}, nil
}

// Commit makes the staged configuration serve new handshakes. It cannot fail.
func (st *Staged) Commit() {
	s := st.s
	s.mu.Lock()
	defer s.mu.Unlock()
	o := st.snap.opts
	s.opts = o
	// The snapshot's config says whether tickets are on (crypto/tls reads
	// it there); the keys are the base config's.
	if !o.SessionTickets {
		if s.tickets != nil {
			s.tickets.stop()
			s.tickets = nil
		}
	} else if !s.closed {
		if s.tickets == nil {
			s.tickets = newTicketer(s.base, o.Name, s.src, s.now, o.TicketRotation, o.TicketKeys)
		} else {
			s.tickets.setPolicy(o.TicketRotation, o.TicketKeys)
		}
	}
	s.current.Store(st.snap)
}

// Update loads o and serves it, or changes nothing and returns why.
func (s *Server) Update(o ServerOptions) error {
	st, err := s.Prepare(o)
	if err != nil {
		return err
	}
	st.Commit()
	return nil
}

// Reload re-reads every file of the current options (through symlinks,
// as they lead now). On any error the old set keeps serving.
func (s *Server) Reload() error {
	s.mu.Lock()
	o := s.opts
	s.mu.Unlock()
	return s.Update(o)
}

// Options returns the options being served (defaults filled in).
func (s *Server) Options() ServerOptions { return s.current.Load().opts }

// Files returns the files being served, for a file watch (see Watched).
func (s *Server) Files() []string { return s.current.Load().opts.Files() }

// Close stops the ticket key rotation.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.tickets != nil {
		s.tickets.stop()
		s.tickets = nil
	}
}

// Certificates describes the certificates being served, the default first.
func (s *Server) Certificates() []Info {
	snap := s.current.Load()
	if m := snap.opts.Managed; m != nil {
		return m.Certificates()
	}
	out := make([]Info, len(snap.certs))
	for i, c := range snap.certs {
		out[i] = c.Info()
		out[i].Default = i == 0
	}
	return out
}

// Handshake runs the server handshake on conn within the handshake
// timeout (and ctx), tells the observer, and returns the TLS connection to
// relay plaintext through. On failure conn is not closed: the caller
// closes it, having dialled no backend.
func (s *Server) Handshake(ctx context.Context, conn net.Conn) (*tls.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, s.current.Load().opts.HandshakeTimeout)
	defer cancel()
	start := time.Now()
	tc := tls.Server(conn, s.base)
	err := tc.HandshakeContext(ctx)
	if err == nil && tc.ConnectionState().NegotiatedProtocol == ACMETLS1 {
		// Only a validation is offered acme-tls/1 (configForClient): it
		// has what it came for and carries no traffic (RFC 8737).
		return nil, ChallengeAnswered{}
	}
	if s.obs != nil {
		var st tls.ConnectionState
		if err == nil {
			st = tc.ConnectionState()
		}
		s.obs.Handshake(st.Version, st.DidResume, time.Since(start), err)
	}
	if err != nil {
		return nil, err
	}
	return tc, nil
}

// ChallengeAnswered is Handshake's error when the handshake answered an
// ACME TLS-ALPN-01 validation: the connection is to be closed, no backend
// dialled. It is not counted as a handshake.
type ChallengeAnswered struct{}

func (ChallengeAnswered) Error() string { return "acme tls-alpn-01 challenge answered" }

// ACMEChallenge marks the error for callers that do not import tlsconf.
func (ChallengeAnswered) ACMEChallenge() bool { return true }

// load reads every file of o into a snapshot.
func load(o ServerOptions, now time.Time) (*snapshot, error) {
	if o.Managed != nil {
		return loadManaged(o)
	}
	if len(o.Certificates) == 0 {
		return nil, errors.New("no certificate: at least one cert/key pair is needed (the first is the default)")
	}
	if o.MinVersion > o.MaxVersion {
		return nil, fmt.Errorf("min_version %s is above max_version %s", VersionName(o.MinVersion), VersionName(o.MaxVersion))
	}
	snap := &snapshot{opts: o, exact: map[string][]*Cert{}, wild: map[string][]*Cert{}}
	for i, p := range o.Certificates {
		c, err := LoadPair(p, now)
		if err != nil {
			if i == 0 {
				return nil, fmt.Errorf("default certificate: %w", err)
			}
			return nil, err
		}
		snap.certs = append(snap.certs, c)
		for _, n := range c.Names {
			if suffix, ok := strings.CutPrefix(n, "*."); ok {
				snap.wild[suffix] = append(snap.wild[suffix], c)
			} else {
				snap.exact[n] = append(snap.exact[n], c)
			}
		}
	}
	cfg := &tls.Config{
		GetCertificate:         snap.certificate,
		MinVersion:             o.MinVersion,
		MaxVersion:             o.MaxVersion,
		NextProtos:             o.ALPN,
		SessionTicketsDisabled: !o.SessionTickets,
	}
	if err := clientAuth(cfg, o); err != nil {
		return nil, err
	}
	snap.config = cfg
	return snap, nil
}

// loadManaged makes the snapshot of a rule whose certificates come from
// o.Managed. It reads no file: certificates are asked for per handshake,
// so a renewal is served from the next one.
func loadManaged(o ServerOptions) (*snapshot, error) {
	snap := &snapshot{opts: o, config: managedConfig(o), chal: challengeConfig(o)}
	if err := clientAuth(snap.config, o); err != nil {
		return nil, err
	}
	return snap, nil
}

// clientAuth sets cfg to ask for client certificates as o.ClientAuth says,
// verified against o.ClientCA.
func clientAuth(cfg *tls.Config, o ServerOptions) error {
	switch o.ClientAuth {
	case ClientAuthNone:
	case ClientAuthRequest, ClientAuthRequire:
		if o.ClientCA == "" {
			return fmt.Errorf("client_auth %q needs a client_ca file to verify client certificates with", o.ClientAuth)
		}
		pool, err := LoadCAPool(o.ClientCA)
		if err != nil {
			return err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if o.ClientAuth == ClientAuthRequire {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	default:
		return fmt.Errorf("unknown client_auth %q (known: none, request, require)", o.ClientAuth)
	}
	return nil
}

func managedConfig(o ServerOptions) *tls.Config {
	return &tls.Config{GetCertificate: o.Managed.Certificate, MinVersion: o.MinVersion, MaxVersion: o.MaxVersion,
		NextProtos: o.ALPN, SessionTicketsDisabled: !o.SessionTickets}
}

// challengeConfig answers a TLS-ALPN-01 validation: the challenge
// certificate, acme-tls/1 negotiated, no client certificate asked for.
func challengeConfig(o ServerOptions) *tls.Config {
	return &tls.Config{GetCertificate: o.Managed.Challenge, MinVersion: tls.VersionTLS12,
		NextProtos: []string{ACMETLS1}, SessionTicketsDisabled: true}
}

// certificate picks by SNI: an exact name, else a wildcard one label
// above it, else the default. Among several certificates for one name
// (an ECDSA and an RSA one), the first the client supports.
func (snap *snapshot) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	if name != "" {
		if c := pick(snap.exact[name], hello); c != nil {
			return c, nil
		}
		if _, suffix, ok := strings.Cut(name, "."); ok {
			if c := pick(snap.wild[suffix], hello); c != nil {
				return c, nil
			}
		}
	}
	return snap.certs[0].TLS, nil
}

func pick(cs []*Cert, hello *tls.ClientHelloInfo) *tls.Certificate {
	switch len(cs) {
	case 0:
		return nil
	case 1:
		return cs[0].TLS // one choice: crypto/tls says if the client cannot use it
	}
	for _, c := range cs {
		if hello.SupportsCertificate(c.TLS) == nil {
			return c.TLS
		}
	}
	return cs[0].TLS
}
