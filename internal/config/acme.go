package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
)

// ACME is the [acme] section: how the certificates of rules with
// rules.tls.acme are obtained and renewed (docs/tls.md#acme). Using it
// agrees to the terms of service of the directory's CA.
type ACME struct {
	// Email is the contact address given to the CA (expiry notices).
	// Default "": no contact.
	Email string `toml:"email"`
	// Directory is the ACME directory URL of the CA. Default
	// "https://acme-v02.api.letsencrypt.org/directory" (Let's Encrypt
	// production); --validate says which one is used.
	Directory string `toml:"directory"`
	// CARoot is a PEM file of the CAs that verify the directory's HTTPS
	// certificate (a private ACME server). Default "": the system roots.
	CARoot string `toml:"ca_root"`
	// Challenges are the challenge types offered: "tls-alpn-01" (answered
	// on the rule's own port) and "http-01" (answered on http_port).
	// Default ["tls-alpn-01"].
	Challenges []string `toml:"challenges"`
	// HTTPPort is the port HTTP-01 challenges are answered on, on the host
	// of server.tcp_bind; required with "http-01". Default 0: none.
	HTTPPort int `toml:"http_port"`
	// Storage is the directory certificates, keys and the ACME account are
	// kept in without [redis], and the local copy of Redis's with it;
	// created with mode 0700. Relative to the config file's directory.
	// Default "acme".
	Storage string `toml:"storage"`
	// EncryptionKeyFile is a file whose content encrypts the private keys
	// stored in Redis (AES-256-GCM); every instance of the fleet needs the
	// same one. Default "": the keys are stored in Redis unencrypted.
	EncryptionKeyFile string `toml:"encryption_key_file"`
	// RenewCheckInterval is how often the certificates are checked for
	// renewal (renewed when a third of their lifetime is left). Default 10m,
	// range 1s–24h.
	RenewCheckInterval Duration `toml:"renew_check_interval"`
}

// Defaults of [acme].
const (
	LetsEncryptDirectory      = "https://acme-v02.api.letsencrypt.org/directory"
	ChallengeTLSALPN          = "tls-alpn-01"
	ChallengeHTTP             = "http-01"
	DefaultACMEStorage        = "acme"
	DefaultRenewCheckInterval = 10 * time.Minute
)

func (a *ACME) setDefaults() {
	*a = ACME{Directory: LetsEncryptDirectory, Challenges: []string{ChallengeTLSALPN}, Storage: DefaultACMEStorage,
		RenewCheckInterval: Duration(DefaultRenewCheckInterval)}
}

// ACMESettings returns [acme], with its defaults when the file has none.
func (c *Config) ACMESettings() ACME {
	if c.ACME != nil {
		return *c.ACME
	}
	var a ACME
	a.setDefaults()
	return a
}

// ACMENames returns, by rule, the names of the rules that get their
// certificates by ACME (enabled rules only).
func (c *Config) ACMENames() map[string][]string {
	out := map[string][]string{}
	for i := range c.Rules {
		r := &c.Rules[i]
		if r.Enabled && r.TLS != nil && len(r.TLS.ACME) > 0 {
			out[r.Name] = r.TLS.ACME
		}
	}
	return out
}

// ACMEHTTPListen is the address HTTP-01 challenges are answered on ("" when
// http-01 is not offered).
func (c *Config) ACMEHTTPListen() string {
	a := c.ACMESettings()
	if a.HTTPPort == 0 {
		return ""
	}
	host, _, err := net.SplitHostPort(c.Server.TCPBind)
	if err != nil {
		host = ""
	}
	return net.JoinHostPort(host, strconv.Itoa(a.HTTPPort))
}

// validateACMENames checks a terminating rule's acme names: host names a
// CA can validate by HTTP-01 or TLS-ALPN-01 (no wildcard, no IP), each in
// one rule only.
func (c *Config) validateACMENames(e *Errors, t *TLS, path string, owner map[string]string, rule string) {
	for i, n := range t.ACME {
		p := fmt.Sprintf("%s.acme[%d]", path, i)
		name := strings.ToLower(strings.TrimSuffix(n, "."))
		switch {
		case strings.Contains(name, "*"):
			e.addf(p, "%q: a wildcard certificate needs the DNS-01 challenge, which is not supported; list the names", n)
			continue
		case net.ParseIP(name) != nil:
			e.addf(p, "%q: an IP address; ACME here issues for DNS names", n)
			continue
		case !validHostName(name):
			e.addf(p, "%q is not a DNS name", n)
			continue
		}
		if o, dup := owner[name]; dup {
			e.addf(p, "%q is also managed by rule %q: each name is managed by one rule", n, o)
			continue
		}
		owner[name] = rule
	}
}

// validHostName reports whether n is a DNS name of letters, digits and
// hyphens in labels of 1–63 bytes, with a dot in it.
func validHostName(n string) bool {
	if len(n) > 253 || !strings.Contains(n, ".") {
		return false
	}
	for _, l := range strings.Split(n, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, ch := range l {
			if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-') {
				return false
			}
		}
	}
	return true
}

// validateACME checks [acme] when a rule uses it (or the section is there).
func (c *Config) validateACME(e *Errors, used bool) {
	if c.ACME == nil && !used {
		return
	}
	a := c.ACMESettings()
	if a.Email != "" && (!strings.Contains(a.Email, "@") || strings.ContainsAny(a.Email, " \t<>")) {
		e.addf("acme.email", "%q is not an email address", a.Email)
	}
	if u, err := url.Parse(a.Directory); err != nil || u.Scheme != "https" || u.Host == "" {
		e.addf("acme.directory", "must be an https:// ACME directory URL, got %q", a.Directory)
	}
	if a.CARoot != "" {
		if _, err := tlsconf.LoadCAPool(c.FilePath(a.CARoot)); err != nil {
			e.addf("acme.ca_root", "%v", err)
		}
	}
	http := false
	if len(a.Challenges) == 0 {
		e.addf("acme.challenges", "at least one of %q, %q", ChallengeTLSALPN, ChallengeHTTP)
	}
	for i, ch := range a.Challenges {
		switch ch {
		case ChallengeTLSALPN:
		case ChallengeHTTP:
			http = true
		default:
			e.addf(fmt.Sprintf("acme.challenges[%d]", i), "must be %q or %q, got %q", ChallengeTLSALPN, ChallengeHTTP, ch)
		}
	}
	switch {
	case a.HTTPPort < 0 || a.HTTPPort > 65535:
		e.addf("acme.http_port", "must be from 1 to 65535 (or 0: none), got %d", a.HTTPPort)
	case http && a.HTTPPort == 0:
		e.addf("acme.challenges", "%q needs http_port: the port the CA's HTTP requests reach the proxy on (80, or one forwarded from it)", ChallengeHTTP)
	case !http && a.HTTPPort != 0:
		e.addf("acme.http_port", "is set but challenges has no %q: add it, or remove http_port", ChallengeHTTP)
	}
	if l := c.ACMEHTTPListen(); l != "" {
		for i := range c.Rules {
			if r := &c.Rules[i]; r.Enabled && r.Protocol == "tcp" && c.Listener(r) == l {
				e.addf("acme.http_port", "%d is rule %q's listener (%s): HTTP-01 is answered on a port of its own", a.HTTPPort, r.Name, l)
			}
		}
	}
	if a.Storage == "" {
		e.add("acme.storage", "must not be empty: the directory certificates are kept in")
	}
	if a.EncryptionKeyFile != "" {
		if _, err := c.ACMEEncryptionKey(); err != nil {
			e.addf("acme.encryption_key_file", "%v", err)
		}
	} else if c.Redis != nil && used {
		c.Warnings = append(c.Warnings, Problem{File: c.File, Line: e.pos.line("acme"), Path: "acme",
			Msg: "no encryption_key_file: the certificates' private keys are stored in Redis unencrypted, readable by anyone who can read its keys"})
	}
	if d := a.RenewCheckInterval.D(); d < time.Second || d > 24*time.Hour {
		e.addf("acme.renew_check_interval", "must be from 1s to 24h, got %v", d)
	}
}

// ACMEStorageDir is [acme] storage, resolved.
func (c *Config) ACMEStorageDir() string { return c.FilePath(c.ACMESettings().Storage) }

// ACMEEncryptionKey reads [acme] encryption_key_file (nil when unset): at
// least 16 bytes once surrounding white space is trimmed.
func (c *Config) ACMEEncryptionKey() ([]byte, error) {
	f := c.ACMESettings().EncryptionKeyFile
	if f == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.FilePath(f))
	if err != nil {
		return nil, err
	}
	k := []byte(strings.TrimSpace(string(b)))
	if len(k) < 16 {
		return nil, fmt.Errorf("%s: the key must be at least 16 bytes (e.g. openssl rand -base64 32 > %s), got %d", filepath.Base(f), filepath.Base(f), len(k))
	}
	return k, nil
}
