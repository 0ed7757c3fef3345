package metrics

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
)

// TestTLSMetrics: full, resumed and failed handshakes are counted by
// version, timed, and the expiry gauge brackets the certificate's
// NotAfter minus the time of the scrape; Retain drops a removed rule.
func TestTLSMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewTLS(reg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "m")
	leaf := ca.Issue(dir, "m", tlstest.Options{DNSNames: []string{"m.test"}, NotAfter: time.Now().Add(5 * 24 * time.Hour)})
	s, err := tlsconf.NewServer(tlsconf.ServerOptions{Name: "web", SessionTickets: true,
		Certificates: []tlsconf.Pair{{Cert: leaf.CertFile, Key: leaf.KeyFile}}}, nil, m.Observer("web"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	m.Retain(map[string]*tlsconf.Server{"web": s})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if tc, err := s.Handshake(context.Background(), c); err == nil {
				_, _ = tc.Write([]byte("hi\n"))
				tc.Close()
			}
			c.Close()
		}
	}()
	defer func() { ln.Close(); <-done }()

	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cfg := &tls.Config{ServerName: "m.test", RootCAs: pool, ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	for range 2 {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = bufio.NewReader(c).ReadString('\n')
		c.Close()
	}
	c12, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "m.test", RootCAs: pool, MaxVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	_, _ = bufio.NewReader(c12).ReadString('\n')
	c12.Close()
	plain, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = plain.Write([]byte("not TLS\r\n\r\n"))
	_, _ = plain.Read(make([]byte, 64)) // the server's alert, or its close
	plain.Close()

	before := time.Now()
	v := values(t, reg)
	after := time.Now()
	expect(t, v, map[string]float64{
		`dynamic_proxy_tls_handshakes_total{result=full,rule=web,version=1.3}`:     1,
		`dynamic_proxy_tls_handshakes_total{result=resumed,rule=web,version=1.3}`:  1,
		`dynamic_proxy_tls_handshakes_total{result=full,rule=web,version=1.2}`:     1,
		`dynamic_proxy_tls_handshakes_total{result=failed,rule=web,version=}`:      1,
		`dynamic_proxy_tls_handshake_duration_seconds_count{result=full,rule=web}`: 2,
	})
	key := `dynamic_proxy_tls_certificate_expiry_seconds{cert=` + leaf.CertFile + `,rule=web}`
	got, ok := v[key]
	hi, lo := leaf.Cert.NotAfter.Sub(before).Seconds(), leaf.Cert.NotAfter.Sub(after).Seconds()
	if !ok || got > hi || got < lo {
		t.Errorf("%s = %v (present %v), want between %v and %v", key, got, ok, lo, hi)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}

	m.Retain(map[string]*tlsconf.Server{})
	for k := range values(t, reg) {
		t.Errorf("after Retain without the rule, series %s remains", k)
	}
}
