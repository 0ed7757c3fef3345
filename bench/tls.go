package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// TLS front ports, as offsets from a target's base: terminate with the
// ECDSA P-256 certificate to the echo backend, with the RSA-2048 one to the
// echo backend, and with the ECDSA one to the sink (tls-bulk).
const (
	offTLSECDSA = 10
	offTLSRSA   = 11
	offTLSBulk  = 12
)

// tlsCert is one generated certificate: its chain+key files, and the two
// in one file (HAProxy's crt).
type tlsCert struct{ cert, key, combined string }

var benchCerts map[string]tlsCert // "ecdsa", "rsa"

// writeBenchCerts generates a self-signed ECDSA P-256 and an RSA-2048
// certificate for bench.example into dir. Generated per run, never stored.
func writeBenchCerts(dir string) error {
	benchCerts = map[string]tlsCert{}
	for _, kind := range []string{"ecdsa", "rsa"} {
		var key any
		var pub any
		switch kind {
		case "ecdsa":
			k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return err
			}
			key, pub = k, &k.PublicKey
		case "rsa":
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				return err
			}
			key, pub = k, &k.PublicKey
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()),
			Subject:      pkix.Name{CommonName: "bench.example"},
			DNSNames:     []string{"bench.example"},
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
		if err != nil {
			return err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
		c := tlsCert{
			cert:     filepath.Join(dir, kind+".pem"),
			key:      filepath.Join(dir, kind+"-key.pem"),
			combined: filepath.Join(dir, kind+"-combined.pem"),
		}
		for path, b := range map[string][]byte{c.cert: certPEM, c.key: keyPEM, c.combined: append(append([]byte{}, certPEM...), keyPEM...)} {
			if err := os.WriteFile(path, b, 0o600); err != nil {
				return err
			}
		}
		benchCerts[kind] = c
	}
	return nil
}

// tlsFronts are the TLS fronts every TLS target has: a port offset, the
// backend and the certificate.
var tlsFronts = []struct {
	name         string
	off, backend int
	kind         string
}{{"tls_ecdsa", offTLSECDSA, portEcho, "ecdsa"}, {"tls_rsa", offTLSRSA, portEcho, "rsa"}, {"tls_bulk", offTLSBulk, portSink, "ecdsa"}}

// The TLS fronts of each proxy, as config text.

func dpTLSRules(base int) string {
	var s string
	for _, r := range tlsFronts {
		c := benchCerts[r.kind]
		s += fmt.Sprintf("[[rules]]\nname = %q\n[[rules.backends]]\nid = \"b\"\naddress = \"127.0.0.1:%d\"\n[rules.matcher]\ntype = \"port\"\nport = %d\n[rules.tls]\ncertificates = [ { cert = %q, key = %q } ]\n",
			r.name, r.backend, base+r.off, c.cert, c.key)
	}
	return s
}

func haproxyTLS(base int) string {
	var s string
	for _, r := range tlsFronts {
		s += fmt.Sprintf("\nlisten %s\n  bind 127.0.0.1:%d ssl crt %s\n  server s1 127.0.0.1:%d\n", r.name, base+r.off, benchCerts[r.kind].combined, r.backend)
	}
	return s
}

func nginxTLS(base int) string {
	var s string
	for _, r := range tlsFronts {
		c := benchCerts[r.kind]
		s += fmt.Sprintf("  server { listen 127.0.0.1:%d ssl; ssl_certificate %s; ssl_certificate_key %s; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL%d:10m; proxy_pass 127.0.0.1:%d; proxy_timeout 10m; }\n",
			base+r.off, c.cert, c.key, r.off, r.backend)
	}
	return s
}

// benchTLSClient is the load's TLS client config: TLS 1.3 with an X25519
// key share for every target. OpenSSL 3.0 (HAProxy's and nginx's here) has
// no ML-KEM, so with Go's default preferences dynamic-proxy alone would pay
// for the post-quantum key share. P-256 is listed after it because a
// server may check that the client supports its certificate's curve.
func benchTLSClient(cache tls.ClientSessionCache) *tls.Config {
	return &tls.Config{ServerName: "bench.example", InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}, ClientSessionCache: cache}
}

// tlsHandshakes opens a TLS connection, completes the handshake, echoes 64
// bytes and closes, closed-loop with workers, for d. With resume, every
// worker keeps a session cache, so all its connections after the first
// resume (when the server allows it); resumed counts those that did.
func tlsHandshakes(addr string, resume bool, workers int, d time.Duration) (loadResult, int64) {
	msg := make([]byte, 64)
	var resumed atomic.Int64
	caches := make(chan tls.ClientSessionCache, workers)
	for i := 0; i < workers; i++ {
		if resume {
			caches <- tls.NewLRUClientSessionCache(4)
		} else {
			caches <- nil
		}
	}
	one := func() (time.Duration, error) {
		cache := <-caches
		defer func() { caches <- cache }()
		t0 := time.Now()
		raw, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return 0, err
		}
		c := tls.Client(raw, benchTLSClient(cache))
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if err := c.Handshake(); err != nil {
			return 0, err
		}
		if _, err := c.Write(msg); err != nil {
			return 0, err
		}
		var buf [64]byte
		if _, err := io.ReadFull(c, buf[:]); err != nil {
			return 0, err
		}
		if c.ConnectionState().DidResume {
			resumed.Add(1)
		}
		return time.Since(t0), nil
	}
	r := drive(0, workers, d, one)
	return r, resumed.Load()
}

// tlsBulkSend writes over one TLS connection to addr for d and returns the
// plaintext bytes written.
func tlsBulkSend(addr string, d time.Duration) (int64, error) {
	raw, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, err
	}
	c := tls.Client(raw, benchTLSClient(nil))
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Handshake(); err != nil {
		return 0, err
	}
	return writeFor(c, d), nil
}
