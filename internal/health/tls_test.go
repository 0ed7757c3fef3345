package health

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
)

// TestProbeOverTLS: a check of a backend dialled with TLS handshakes with
// the same settings against a real openssl s_server: it passes with the
// right CA, fails with the wrong one or the wrong name, and sends and
// expects through the TLS connection (with a client certificate where the
// backend requires one); a backend that refuses the client certificate
// fails even a connect check, although TLS 1.3 ends the client's side of
// the handshake before the refusal.
func TestProbeOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "hc")
	other := tlstest.NewCA(t, dir, "other")
	clients := tlstest.NewCA(t, dir, "clients")
	srv := ca.Issue(dir, "be", tlstest.Options{DNSNames: []string{"be.test"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	client := clients.Issue(dir, "client", tlstest.Options{CommonName: "proxy", Client: true})
	stranger := other.Issue(dir, "stranger", tlstest.Options{CommonName: "stranger", Client: true})
	plain := tlstest.SServer(t, "-cert", srv.CertFile, "-key", srv.KeyFile)
	mtls := tlstest.SServer(t, "-cert", srv.CertFile, "-key", srv.KeyFile, "-Verify", "1", "-verify_return_error", "-CAfile", clients.CAFile)

	hc := config.HealthCheck{Enabled: true, Interval: config.Duration(10 * time.Second), Timeout: config.Duration(5 * time.Second), Retries: 1, Rise: 1}
	get := hc
	get.Send, get.Expect = "GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 200"
	for _, c := range []struct {
		name string
		addr string
		hc   config.HealthCheck
		o    tlsconf.ClientOptions
		fail string
	}{
		{"connect, right CA", plain, hc, tlsconf.ClientOptions{CA: ca.CAFile}, ""},
		{"connect, wrong CA", plain, hc, tlsconf.ClientOptions{CA: other.CAFile}, "tls handshake"},
		{"connect, wrong name", plain, hc, tlsconf.ClientOptions{CA: ca.CAFile, ServerName: "nope.test"}, "nope.test"},
		{"send/expect through TLS", plain, get, tlsconf.ClientOptions{CA: ca.CAFile, ServerName: "be.test"}, ""},
		{"mTLS with a client certificate", mtls, get, tlsconf.ClientOptions{CA: ca.CAFile, Cert: client.CertFile, Key: client.KeyFile}, ""},
		{"mTLS without one", mtls, get, tlsconf.ClientOptions{CA: ca.CAFile}, "certificate"},
		// A connect check has no exchange to fail: in TLS 1.3 the refusal
		// comes as an alert after the client's side of the handshake.
		{"mTLS connect check with a client certificate", mtls, hc, tlsconf.ClientOptions{CA: ca.CAFile, Cert: client.CertFile, Key: client.KeyFile}, ""},
		{"mTLS connect check without one", mtls, hc, tlsconf.ClientOptions{CA: ca.CAFile}, "refused the client certificate"},
		{"mTLS connect check with an untrusted one", mtls, hc, tlsconf.ClientOptions{CA: ca.CAFile, Cert: stranger.CertFile, Key: stranger.KeyFile}, "refused the client certificate"},
		{"mTLS send/expect with an untrusted one", mtls, get, tlsconf.ClientOptions{CA: ca.CAFile, Cert: stranger.CertFile, Key: stranger.KeyFile}, "refused the client certificate"},
		{"plain TCP check of a TLS backend expecting HTTP", plain, get, tlsconf.ClientOptions{}, "skip"},
	} {
		chk, err := Compile("tcp", c.addr, c.hc)
		if err != nil {
			t.Fatal(err)
		}
		if c.fail != "skip" {
			o := c.o
			chk.TLS = &o
		} else {
			c.fail = "without a reply" // s_server drops a client that is not TLS
		}
		err = chk.Probe(context.Background())
		switch {
		case c.fail == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.fail != "" && err == nil:
			t.Errorf("%s: passed, want a failure with %q", c.name, c.fail)
		case c.fail != "" && !strings.Contains(err.Error(), c.fail):
			t.Errorf("%s: %v, want %q", c.name, err, c.fail)
		}
	}

	r := NewRegistry(nil)
	defer r.Close()
	u := r.Begin()
	o := tlsconf.ClientOptions{CA: ca.CAFile}
	h1, err := u.HealthTLS("tcp", plain, hc, &o, "a/b1")
	if err != nil {
		t.Fatal(err)
	}
	h2, err := u.Health("tcp", plain, hc, "a/b2")
	if err != nil {
		t.Fatal(err)
	}
	if h1 == h2 {
		t.Error("a TLS and a plain backend of one address share a health")
	}
	u.Commit()
	for k, m := range r.Monitors() {
		if (k.TLS != "") != (m.Check().TLS != nil) || (k.TLS != "" && m.Check().Kind() != "tcp connect over tls") {
			t.Errorf("monitor %+v: check TLS %v, kind %q", k, m.Check().TLS, m.Check().Kind())
		}
	}
}
