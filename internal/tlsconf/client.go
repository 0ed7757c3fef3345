package tlsconf

import (
	"crypto/tls"
	"fmt"
	"net"
	"time"
)

// ClientOptions configure TLS from the proxy to a backend.
type ClientOptions struct {
	// CA is a PEM file of CAs to verify the backend with; "" means the
	// system roots.
	CA string
	// ServerName is the name sent as SNI and verified in the backend's
	// certificate; "" means the host of the backend's address (an IP
	// address is then verified against the certificate's IP SANs and
	// not sent as SNI).
	ServerName string
	// Cert and Key are a client certificate for mTLS; both or neither.
	Cert, Key string
	// InsecureSkipVerify accepts any backend certificate. For tests only:
	// see Warning.
	InsecureSkipVerify bool
	// MinVersion is the lowest version offered (0: TLS 1.2).
	MinVersion uint16
	// ALPN are the protocols offered to the backend; none by default.
	ALPN []string
}

// Files are the files the options read.
func (o ClientOptions) Files() []string {
	var fs []string
	for _, f := range []string{o.CA, o.Cert, o.Key} {
		if f != "" {
			fs = append(fs, f)
		}
	}
	return fs
}

// Warning is the warning --validate prints for o, or "".
func (o ClientOptions) Warning() string {
	if o.InsecureSkipVerify {
		return "insecure_skip_verify = true: the backend's certificate is not verified, so anyone on the path can impersonate it; use ca instead"
	}
	return ""
}

// ClientConfig builds the *tls.Config for dialling a backend at address
// (host:port). It reads the files now: call it again on a reload. The
// error names the file at fault.
func ClientConfig(o ClientOptions, address string, now time.Time) (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName:         o.ServerName,
		InsecureSkipVerify: o.InsecureSkipVerify,
		MinVersion:         o.MinVersion,
		NextProtos:         o.ALPN,
		// One cache per backend config: a reconnection resumes.
		ClientSessionCache: tls.NewLRUClientSessionCache(64),
	}
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	if cfg.ServerName == "" {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return nil, fmt.Errorf("backend address %q: %w", address, err)
		}
		cfg.ServerName = host
	}
	if o.CA != "" {
		pool, err := LoadCAPool(o.CA)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if (o.Cert == "") != (o.Key == "") {
		return nil, fmt.Errorf("client certificate: cert and key go together (cert %q, key %q)", o.Cert, o.Key)
	}
	if o.Cert != "" {
		c, err := LoadPair(Pair{Cert: o.Cert, Key: o.Key}, now)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{*c.TLS}
	}
	return cfg, nil
}
