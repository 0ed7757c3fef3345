package tlsconf_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store"
	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
)

// instance is one terminating server on a loopback listener, as one
// dynamic-proxy instance of a fleet would run it.
func instance(t *testing.T, o tlsconf.ServerOptions, src tlsconf.TicketKeySource) (*tlsconf.Server, string) {
	t.Helper()
	s, err := tlsconf.NewServer(o, src, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done; s.Close() })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc, err := s.Handshake(context.Background(), c)
				if err == nil {
					_, _ = tc.Write([]byte("hello\n"))
					tc.Close()
				}
			}()
		}
	}()
	return s, ln.Addr().String()
}

func dialResumed(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	return c.ConnectionState().DidResume
}

func openStore(t *testing.T, url string) *store.Store {
	t.Helper()
	st, err := store.Open(store.Options{URL: url, KeyPrefix: "tls-test:", ConnectionTimeout: time.Second, CommandTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestResumptionAcrossInstancesSharingRedis: two servers with their ticket
// keys from one real redis-server: a Go client with a session cache that
// connected to the first resumes on the second (TLS 1.2 and 1.3). A third
// with local keys does not (the control). With Redis down, handshakes go
// on and the keys last read stay in use.
func TestResumptionAcrossInstancesSharingRedis(t *testing.T) {
	rs := redistest.Start(t)
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "fleet")
	leaf := ca.Issue(dir, "fleet", tlstest.Options{DNSNames: []string{"fleet.test"}})
	o := tlsconf.ServerOptions{Name: "web", Certificates: []tlsconf.Pair{{Cert: leaf.CertFile, Key: leaf.KeyFile}}, SessionTickets: true}
	a, addrA := instance(t, o, openStore(t, rs.URL()))
	b, addrB := instance(t, o, openStore(t, rs.URL()))
	_, addrC := instance(t, o, nil)
	for _, s := range []*tlsconf.Server{a, b} {
		if err := s.RefreshTickets(context.Background()); err != nil {
			t.Fatal(err)
		}
		if shared, err := s.TicketStatus(); !shared || err != nil {
			t.Fatalf("TicketStatus = %v, %v; want shared", shared, err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		cfg := func() *tls.Config {
			return &tls.Config{ServerName: "fleet.test", RootCAs: pool, MaxVersion: v, ClientSessionCache: tls.NewLRUClientSessionCache(8)}
		}
		c := cfg()
		if dialResumed(t, addrA, c) {
			t.Fatal("first connection resumed")
		}
		if !dialResumed(t, addrB, c) {
			t.Errorf("TLS %s: a ticket from instance A did not resume on instance B", tlsconf.VersionName(v))
		}
		c = cfg()
		dialResumed(t, addrA, c)
		if dialResumed(t, addrC, c) {
			t.Errorf("TLS %s: a ticket from A resumed on C, which has its own keys: the test proves nothing", tlsconf.VersionName(v))
		}
	}

	rs.Kill()
	err := a.RefreshTickets(context.Background())
	if err == nil {
		t.Fatal("refresh with Redis down did not fail")
	}
	if shared, serr := a.TicketStatus(); !shared || serr == nil {
		t.Errorf("with Redis down TicketStatus = %v, %v; want the shared keys kept and the error", shared, serr)
	}
	c := &tls.Config{ServerName: "fleet.test", RootCAs: pool, ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	dialResumed(t, addrA, c)
	if !dialResumed(t, addrB, c) {
		t.Error("with Redis down, the keys read before no longer resume across instances")
	}
}

// TestRedisDownAtStart: an instance whose Redis never answered still
// issues and accepts tickets, with local keys.
func TestRedisDownAtStart(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "down")
	leaf := ca.Issue(dir, "down", tlstest.Options{DNSNames: []string{"down.test"}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close() // nothing listens there: every Redis command fails at once
	st := openStore(t, "redis://"+dead)
	s, addr := instance(t, tlsconf.ServerOptions{Name: "down", Certificates: []tlsconf.Pair{{Cert: leaf.CertFile, Key: leaf.KeyFile}},
		SessionTickets: true}, st)
	if err := s.RefreshTickets(context.Background()); err == nil {
		t.Fatal("refresh against a closed port did not fail")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	c := &tls.Config{ServerName: "down.test", RootCAs: pool, ClientSessionCache: tls.NewLRUClientSessionCache(8)}
	dialResumed(t, addr, c)
	if !dialResumed(t, addr, c) {
		t.Error("with Redis down at start, the instance's own tickets do not resume")
	}
}
