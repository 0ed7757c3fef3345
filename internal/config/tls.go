package config

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
)

// TLS is a TCP rule's [rules.tls]: the rule terminates TLS, and its
// backends receive the plaintext. Files are relative to the config file's
// directory and are read again on every reload (through symlinks as they
// lead then). docs/tls.md has the whole story.
type TLS struct {
	// Certificates are the certificate chain and key files, PEM; each
	// serves the names in its certificate (DNS SANs, exact or *.wildcard;
	// the Common Name only when it has no SAN), chosen by the client's
	// SNI. The first is the default, for clients without SNI or with a
	// name no certificate has. Required: at least one, unless acme is set.
	Certificates []CertificateFiles `toml:"certificates"`
	// ACME are DNS names whose certificates are obtained and renewed by
	// ACME ([acme]) instead of read from files; the first is the default.
	// Default []: none (certificates then required).
	ACME []string `toml:"acme"`
	// MinVersion is the lowest TLS version accepted: "1.0", "1.1", "1.2"
	// or "1.3". Default "1.2".
	MinVersion string `toml:"min_version"`
	// MaxVersion is the highest. Default "1.3".
	MaxVersion string `toml:"max_version"`
	// ALPN are the protocols offered, in order of preference ("h2",
	// "http/1.1"). Default []: none, a client's ALPN is ignored.
	ALPN []string `toml:"alpn"`
	// ClientAuth asks for client certificates: "none", "request" (asked
	// for, verified against client_ca when given) or "require". Default "none".
	ClientAuth string `toml:"client_auth"`
	// ClientCA is the PEM file of CAs that client certificates must chain
	// to; required with "request" and "require", an error with "none".
	// Default "".
	ClientCA string `toml:"client_ca"`
	// SessionTickets lets clients resume with session tickets. Default true.
	SessionTickets bool `toml:"session_tickets"`
	// SessionTicketRotation is how long one ticket key encrypts new
	// tickets before the next takes over. Default 12h, range 1m–168h.
	SessionTicketRotation Duration `toml:"session_ticket_rotation"`
	// SessionTicketKeys is how many keys (the newest and the ones before
	// it) still decrypt tickets, so a ticket is accepted for up to
	// SessionTicketKeys × SessionTicketRotation. Default 3, range 1–16.
	SessionTicketKeys int `toml:"session_ticket_keys"`
	// HandshakeTimeout bounds a client's handshake. Default 10s.
	HandshakeTimeout Duration `toml:"handshake_timeout"`

	// Certs are the certificates as loaded by validation, the default
	// first (for --validate and the start-up log).
	Certs []tlsconf.Info `toml:"-"`
}

// CertificateFiles is one certificate and its key.
type CertificateFiles struct {
	Cert string `toml:"cert"` // PEM certificate chain, the leaf first; required
	Key  string `toml:"key"`  // PEM private key; required
}

// BackendTLS is TLS from the proxy to backends: a rule's
// [rules.backend_tls] for all of its backends, or a backend's
// [rules.backends.tls], which replaces the rule's for that backend.
type BackendTLS struct {
	// Enabled: false makes a backend plain TCP in a rule whose
	// backend_tls is set. Default true.
	Enabled bool `toml:"enabled"`
	// CA is the PEM file of CAs that verify the backend's certificate.
	// Default "": the system roots.
	CA string `toml:"ca"`
	// ServerName is sent as SNI and verified in the backend's certificate.
	// Default "": the host of the backend's address.
	ServerName string `toml:"server_name"`
	// Cert and Key are a client certificate for mTLS; both or neither.
	// Default "".
	Cert string `toml:"cert"`
	// Key is the client certificate's key. Default "".
	Key string `toml:"key"`
	// InsecureSkipVerify accepts any certificate from the backend
	// (--validate warns). Default false.
	InsecureSkipVerify bool `toml:"insecure_skip_verify"`
	// MinVersion is the lowest version offered. Default "1.2".
	MinVersion string `toml:"min_version"`
	// ALPN are the protocols offered to the backend. Default [].
	ALPN []string `toml:"alpn"`
}

// Defaults of [rules.tls] and [rules.backend_tls].
const (
	DefaultTLSMinVersion         = "1.2"
	DefaultTLSMaxVersion         = "1.3"
	DefaultSessionTicketRotation = 12 * time.Hour
	DefaultSessionTicketKeys     = 3
	DefaultTLSHandshakeTimeout   = 10 * time.Second
	CertificateExpiryWarning     = 14 * 24 * time.Hour // --validate and the logs warn below it
	MinSessionTicketRotation     = time.Minute
	MaxSessionTicketRotation     = 168 * time.Hour
	MaxSessionTicketKeys         = 16
	DefaultBackendTLSMinVersion  = "1.2"
	maxALPNLength                = 255
)

func (t *TLS) setDefaults() {
	*t = TLS{MinVersion: DefaultTLSMinVersion, MaxVersion: DefaultTLSMaxVersion, ClientAuth: "none",
		SessionTickets: true, SessionTicketRotation: Duration(DefaultSessionTicketRotation),
		SessionTicketKeys: DefaultSessionTicketKeys, HandshakeTimeout: Duration(DefaultTLSHandshakeTimeout)}
}

func (b *BackendTLS) setDefaults() {
	*b = BackendTLS{Enabled: true, MinVersion: DefaultBackendTLSMinVersion}
}

// FilePath resolves a file named in the config: relative to the config
// file's directory.
func (c *Config) FilePath(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(filepath.Dir(c.File), p)
}

// ServerTLS returns the termination options of a rule with [rules.tls]
// (ok false without), files resolved, for tlsconf.NewServer or
// Server.Prepare.
func (c *Config) ServerTLS(r *Rule) (o tlsconf.ServerOptions, ok bool) {
	t := r.TLS
	if t == nil {
		return o, false
	}
	o = tlsconf.ServerOptions{Name: r.Name, ALPN: t.ALPN, ClientAuth: tlsconf.ClientAuth(t.ClientAuth),
		ClientCA: c.FilePath(t.ClientCA), SessionTickets: t.SessionTickets, TicketRotation: t.SessionTicketRotation.D(),
		TicketKeys: t.SessionTicketKeys, HandshakeTimeout: t.HandshakeTimeout.D()}
	o.MinVersion, _ = tlsconf.ParseVersion(t.MinVersion) // validated
	o.MaxVersion, _ = tlsconf.ParseVersion(t.MaxVersion)
	for _, f := range t.Certificates {
		o.Certificates = append(o.Certificates, tlsconf.Pair{Cert: c.FilePath(f.Cert), Key: c.FilePath(f.Key)})
	}
	return o, true
}

// BackendTLSFor returns the TLS options to dial backend b of rule r with
// (the backend's tls, else the rule's backend_tls), files resolved, for
// tlsconf.ClientConfig; ok is false when b is dialled in plain TCP.
func (c *Config) BackendTLSFor(r *Rule, b *Backend) (o tlsconf.ClientOptions, ok bool) {
	t := r.BackendTLS
	if b.TLS != nil {
		t = b.TLS
	}
	if t == nil || !t.Enabled {
		return o, false
	}
	o = tlsconf.ClientOptions{CA: c.FilePath(t.CA), ServerName: t.ServerName, Cert: c.FilePath(t.Cert),
		Key: c.FilePath(t.Key), InsecureSkipVerify: t.InsecureSkipVerify, ALPN: t.ALPN}
	o.MinVersion, _ = tlsconf.ParseVersion(t.MinVersion)
	return o, true
}

// validateTLS checks a rule's [rules.tls], [rules.backend_tls] and its
// backends' tls, loading every file as the engine will, so that a missing
// file or a key that does not match is reported with its key's line.
func (c *Config) validateTLS(e *Errors, r *Rule, path string, now time.Time) {
	if r.Protocol == "udp" {
		if r.TLS != nil {
			e.addf(path+".tls", "TLS termination needs a TCP rule (rule %q is udp; DTLS is not supported)", r.Name)
		}
		if r.BackendTLS != nil {
			e.addf(path+".backend_tls", "TLS to backends needs a TCP rule (rule %q is udp)", r.Name)
		}
		for j := range r.Backends {
			if r.Backends[j].TLS != nil {
				e.addf(fmt.Sprintf("%s.backends[%d].tls", path, j), "TLS to backends needs a TCP rule (rule %q is udp)", r.Name)
			}
		}
		return
	}
	if t := r.TLS; t != nil {
		c.validateServerTLS(e, t, path+".tls", now)
	}
	if r.BackendTLS != nil {
		c.validateBackendTLS(e, r.BackendTLS, path+".backend_tls", now)
	}
	for j := range r.Backends {
		if b := r.Backends[j].TLS; b != nil {
			c.validateBackendTLS(e, b, fmt.Sprintf("%s.backends[%d].tls", path, j), now)
		}
	}
}

func (c *Config) validateServerTLS(e *Errors, t *TLS, path string, now time.Time) {
	switch {
	case len(t.ACME) > 0 && len(t.Certificates) > 0:
		e.add(path+".acme", "is set with certificates: a rule gets its certificates from files or from ACME, not both")
	case len(t.ACME) > 0:
	case len(t.Certificates) == 0:
		e.add(path+".certificates", `missing: at least one certificate, e.g. certificates = [{ cert = "site.pem", key = "site-key.pem" }] (the first is the default), or acme = ["site.example.com"]`)
	}
	names := map[string]int{}
	for j, f := range t.Certificates {
		cp := fmt.Sprintf("%s.certificates[%d]", path, j)
		if f.Cert == "" || f.Key == "" {
			if f.Cert == "" {
				e.add(cp+".cert", "missing: the certificate chain file (PEM)")
			}
			if f.Key == "" {
				e.add(cp+".key", "missing: the private key file (PEM)")
			}
			continue
		}
		pair := tlsconf.Pair{Cert: c.FilePath(f.Cert), Key: c.FilePath(f.Key)}
		cert, err := tlsconf.LoadPair(pair, now)
		if err != nil {
			c.fileProblem(e, cp, pair, err)
			continue
		}
		info := cert.Info()
		info.Default = j == 0
		t.Certs = append(t.Certs, info)
		if left := info.NotAfter.Sub(now); left < CertificateExpiryWarning {
			c.Warnings = append(c.Warnings, Problem{File: c.File, Line: e.pos.line(cp + ".cert"), Path: cp + ".cert",
				Msg: fmt.Sprintf("certificate %s (%v) expires in %s, on %s", f.Cert, info.Names, roundDays(left), info.NotAfter.UTC().Format(time.RFC3339))})
		}
		for _, n := range info.Names {
			if k, dup := names[n]; dup {
				c.Warnings = append(c.Warnings, Problem{File: c.File, Line: e.pos.line(cp + ".cert"), Path: cp + ".cert",
					Msg: fmt.Sprintf("name %q is also in certificates[%d]: the earlier one the client supports is served", n, k)})
			} else {
				names[n] = j
			}
		}
	}
	minV, err := tlsconf.ParseVersion(t.MinVersion)
	if err != nil {
		e.addf(path+".min_version", "%v", err)
	}
	maxV, err2 := tlsconf.ParseVersion(t.MaxVersion)
	if err2 != nil {
		e.addf(path+".max_version", "%v", err2)
	}
	if err == nil && err2 == nil && minV > maxV {
		e.addf(path+".min_version", "%q is above max_version %q", t.MinVersion, t.MaxVersion)
	}
	checkALPN(e, path+".alpn", t.ALPN)
	switch t.ClientAuth {
	case "none":
		if t.ClientCA != "" {
			e.addf(path+".client_ca", `is set but client_auth is "none", so no client certificate is asked for: set client_auth = "request" or "require", or remove client_ca`)
		}
	case "request", "require":
		if t.ClientCA == "" {
			e.addf(path+".client_auth", "%q needs client_ca: the PEM file of the CAs that client certificates must chain to", t.ClientAuth)
		} else if _, err := tlsconf.LoadCAPool(c.FilePath(t.ClientCA)); err != nil {
			e.addf(path+".client_ca", "%v", err)
		}
	default:
		e.addf(path+".client_auth", `must be "none", "request" or "require"; got %q`, t.ClientAuth)
	}
	if d := t.SessionTicketRotation.D(); d < MinSessionTicketRotation || d > MaxSessionTicketRotation {
		e.addf(path+".session_ticket_rotation", "must be from %v to %v, got %v", MinSessionTicketRotation, MaxSessionTicketRotation, d)
	}
	if t.SessionTicketKeys < 1 || t.SessionTicketKeys > MaxSessionTicketKeys {
		e.addf(path+".session_ticket_keys", "must be from 1 to %d, got %d", MaxSessionTicketKeys, t.SessionTicketKeys)
	}
	if t.HandshakeTimeout <= 0 {
		e.add(path+".handshake_timeout", "must be greater than 0")
	}
}

func (c *Config) validateBackendTLS(e *Errors, t *BackendTLS, path string, now time.Time) {
	if t.CA != "" {
		if _, err := tlsconf.LoadCAPool(c.FilePath(t.CA)); err != nil {
			e.addf(path+".ca", "%v", err)
		}
	}
	switch {
	case t.Cert == "" && t.Key != "":
		e.add(path+".cert", "missing: key is set, and a client certificate needs both cert and key")
	case t.Cert != "" && t.Key == "":
		e.add(path+".key", "missing: cert is set, and a client certificate needs both cert and key")
	case t.Cert != "":
		pair := tlsconf.Pair{Cert: c.FilePath(t.Cert), Key: c.FilePath(t.Key)}
		if cert, err := tlsconf.LoadPair(pair, now); err != nil {
			c.fileProblem(e, path, pair, err)
		} else if left := cert.Leaf.NotAfter.Sub(now); left < CertificateExpiryWarning {
			c.Warnings = append(c.Warnings, Problem{File: c.File, Line: e.pos.line(path + ".cert"), Path: path + ".cert",
				Msg: fmt.Sprintf("client certificate %s expires in %s, on %s", t.Cert, roundDays(left), cert.Leaf.NotAfter.UTC().Format(time.RFC3339))})
		}
	}
	if _, err := tlsconf.ParseVersion(t.MinVersion); err != nil {
		e.addf(path+".min_version", "%v", err)
	}
	checkALPN(e, path+".alpn", t.ALPN)
	if t.InsecureSkipVerify {
		c.Warnings = append(c.Warnings, Problem{File: c.File, Line: e.pos.line(path + ".insecure_skip_verify"), Path: path + ".insecure_skip_verify",
			Msg: tlsconf.ClientOptions{InsecureSkipVerify: true}.Warning()})
	}
}

// fileProblem reports a certificate pair's error at the key of the file
// at fault (cert or key).
func (c *Config) fileProblem(e *Errors, path string, pair tlsconf.Pair, err error) {
	key := ".cert"
	var fe *tlsconf.FileError
	if errors.As(err, &fe) && fe.File == pair.Key {
		key = ".key"
	}
	e.addf(path+key, "%v", err)
}

func checkALPN(e *Errors, path string, protos []string) {
	for i, p := range protos {
		if p == "" || len(p) > maxALPNLength {
			e.addf(fmt.Sprintf("%s[%d]", path, i), "an ALPN protocol id is 1 to %d bytes, got %q", maxALPNLength, p)
		}
	}
}

// roundDays formats a time left for a warning: "3d4h", or "expired".
func roundDays(d time.Duration) string {
	if d <= 0 {
		return "no time: it has expired"
	}
	days := int(d / (24 * time.Hour))
	hours := int(d%(24*time.Hour)) / int(time.Hour)
	return fmt.Sprintf("%dd%dh", days, hours)
}

// TLSFiles returns every file the rules' TLS settings read (certificates,
// keys, CAs), resolved, once each: what a file watch must follow, through
// reload.WatchFiles, so that a changed certificate reloads.
func (c *Config) TLSFiles() []string {
	seen := map[string]bool{}
	var out []string
	add := func(fs []string) {
		for _, f := range fs {
			if f != "" && !seen[f] {
				seen[f] = true
				out = append(out, f)
			}
		}
	}
	for i := range c.Rules {
		r := &c.Rules[i]
		if !r.Enabled {
			continue
		}
		if o, ok := c.ServerTLS(r); ok {
			add(o.Files())
		}
		for j := range r.Backends {
			if o, ok := c.BackendTLSFor(r, &r.Backends[j]); ok {
				add(o.Files())
			}
		}
	}
	return out
}
