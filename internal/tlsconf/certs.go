// Package tlsconf builds and maintains the crypto/tls configurations of
// dynamic-proxy: the server side of a rule that terminates TLS (several
// certificates chosen by SNI, versions, ALPN, client certificates, session
// tickets whose keys rotate and may be shared across a fleet through a
// TicketKeySource) and the client side of TLS to backends. It reads files,
// never the config package's types, so that config can use it to validate.
//
// A Server's certificate set is an immutable snapshot behind an atomic
// pointer: Reload and Update re-read every file, and either publish a
// complete new set for new handshakes or change nothing and say which file
// is wrong. Connections already established are not touched.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// Pair names one certificate chain file and its private key file (PEM).
type Pair struct {
	Cert string
	Key  string
}

// Cert is a loaded certificate and what operators see of it.
type Cert struct {
	Pair
	TLS *tls.Certificate
	// Leaf is the first certificate of the chain.
	Leaf *x509.Certificate
	// Names are the names the certificate serves, lower case: its DNS
	// SANs (exact names and *.wildcards), or its Common Name when it has
	// no DNS or IP SAN; and its IP SANs.
	Names []string
}

// Info is what operators are shown of a certificate.
type Info struct {
	Cert     string    // the certificate file
	Key      string    // the key file
	Names    []string  // the names it serves (see Cert.Names)
	Serial   string    // hex, as openssl prints it without colons
	NotAfter time.Time // expiry
	Default  bool      // served to clients without SNI or with an unknown name
}

// Info returns what operators are shown of c.
func (c *Cert) Info() Info {
	return Info{Cert: c.Cert, Key: c.Key, Names: c.Names, Serial: Serial(c.Leaf), NotAfter: c.Leaf.NotAfter}
}

// Serial formats a certificate's serial number as upper-case hex.
func Serial(c *x509.Certificate) string {
	return strings.ToUpper(hex.EncodeToString(c.SerialNumber.Bytes()))
}

// FileError is a problem with one file: which, and why.
type FileError struct {
	File string
	Err  error
}

func (e *FileError) Error() string { return e.File + ": " + e.Err.Error() }
func (e *FileError) Unwrap() error { return e.Err }

// Errors for errors.Is.
var (
	ErrExpired     = errors.New("certificate has expired")
	ErrKeyMismatch = errors.New("private key does not match the certificate")
)

// LoadPair reads a certificate chain and its key, following symlinks at
// the time of the call, and checks that the key matches and that the
// certificate has not expired at now. The error is a *FileError naming the
// file at fault.
func LoadPair(p Pair, now time.Time) (*Cert, error) {
	certPEM, err := os.ReadFile(p.Cert)
	if err != nil {
		return nil, &FileError{p.Cert, unwrapPath(err)}
	}
	keyPEM, err := os.ReadFile(p.Key)
	if err != nil {
		return nil, &FileError{p.Key, unwrapPath(err)}
	}
	chain, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, pairError(p, err)
	}
	leaf := chain.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(chain.Certificate[0]); err != nil {
			return nil, &FileError{p.Cert, err}
		}
	}
	if now.After(leaf.NotAfter) {
		return nil, &FileError{p.Cert, fmt.Errorf("%w: not after %s (serial %s)", ErrExpired, leaf.NotAfter.UTC().Format(time.RFC3339), Serial(leaf))}
	}
	return &Cert{Pair: p, TLS: &chain, Leaf: leaf, Names: CertNames(leaf)}, nil
}

// pairError says which of the two files tls.X509KeyPair found wrong.
func pairError(p Pair, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "does not match"):
		return &FileError{p.Key, fmt.Errorf("%w in %s", ErrKeyMismatch, p.Cert)}
	case strings.Contains(msg, "certificate input"), strings.Contains(msg, "failed to parse certificate"):
		return &FileError{p.Cert, errors.New(strings.TrimPrefix(msg, "tls: "))}
	default:
		return &FileError{p.Key, errors.New(strings.TrimPrefix(msg, "tls: "))}
	}
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// CertNames returns the names a certificate serves, lower case and
// without duplicates: its DNS SANs and IP SANs, or its Common Name when it
// has no SAN at all (the fallback clients no longer accept, but an old
// self-signed certificate may still be chosen by SNI with it).
func CertNames(c *x509.Certificate) []string {
	seen := map[string]bool{}
	var names []string
	add := func(n string) {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if n != "" && !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	for _, n := range c.DNSNames {
		add(n)
	}
	for _, ip := range c.IPAddresses {
		add(ip.String())
	}
	if len(names) == 0 {
		add(c.Subject.CommonName)
	}
	return names
}

// LoadCAPool reads a PEM file of CA certificates.
func LoadCAPool(file string) (*x509.CertPool, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, &FileError{file, unwrapPath(err)}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, &FileError{file, errors.New("no PEM certificate in it")}
	}
	return pool, nil
}

// Versions maps the accepted version strings to crypto/tls's constants.
var Versions = map[string]uint16{
	"1.0": tls.VersionTLS10,
	"1.1": tls.VersionTLS11,
	"1.2": tls.VersionTLS12,
	"1.3": tls.VersionTLS13,
}

// ParseVersion turns "1.0", "1.1", "1.2" or "1.3" into a tls.Version*
// constant.
func ParseVersion(s string) (uint16, error) {
	if v, ok := Versions[s]; ok {
		return v, nil
	}
	known := make([]string, 0, len(Versions))
	for k := range Versions {
		known = append(known, `"`+k+`"`)
	}
	sort.Strings(known)
	return 0, fmt.Errorf("unknown TLS version %q (known: %s)", s, strings.Join(known, ", "))
}

// VersionName is the label value of a negotiated version: "1.0" to "1.3",
// or "" for none (a failed handshake).
func VersionName(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "1.0"
	case tls.VersionTLS11:
		return "1.1"
	case tls.VersionTLS12:
		return "1.2"
	case tls.VersionTLS13:
		return "1.3"
	case 0:
		return ""
	}
	return "unknown"
}
