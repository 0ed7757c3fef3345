package tlsconf

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
)

// resumes dials addr with the client config and reports whether the
// session was resumed; it reads the greeting, so a TLS 1.3 ticket the
// server sent after the handshake is in the cache for the next dial.
func resumes(t *testing.T, addr string, cfg *tls.Config) bool {
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

// TestTicketRotationKeepsPreviousKeys: with a clock moved by hand, a
// ticket issued in one period resumes in the next ones while its key is
// among the TicketKeys kept, and not after.
func TestTicketRotationKeepsPreviousKeys(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "rot")
	leaf := ca.Issue(dir, "rot", tlstest.Options{DNSNames: []string{"rot.test"}})
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	const rotation = time.Hour
	s, err := newServer(ServerOptions{Name: "rot", Certificates: []Pair{{leaf.CertFile, leaf.KeyFile}},
		SessionTickets: true, TicketRotation: rotation, TicketKeys: 3}, nil, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	addr := serve(t, s)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	for _, version := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
		clock.Store(time.Now().UnixNano())
		if err := s.RefreshTickets(context.Background()); err != nil {
			t.Fatal(err)
		}
		cfg := &tls.Config{ServerName: "rot.test", RootCAs: pool, MaxVersion: version,
			ClientSessionCache: tls.NewLRUClientSessionCache(4)}
		if resumes(t, addr, cfg) {
			t.Fatal("first connection resumed")
		}
		// A ticket is also re-issued on resumption; a fresh cache holding
		// only the first ticket is kept for each step.
		first := snapshotCache(t, addr, cfg)
		for step, want := range []bool{true, true, true, false} {
			// step k: k periods later; keys kept: current and 2 previous.
			clock.Store(clock.Load() + int64(rotation)*int64(min(step, 1)))
			if step > 0 {
				if err := s.RefreshTickets(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			c := first()
			if got := resumes(t, addr, c); got != want {
				t.Errorf("TLS %s, %d periods after the ticket: resumed %v, want %v", VersionName(version), step, got, want)
			}
		}
	}
}

// snapshotCache returns a function giving a client config whose cache
// holds the ticket cfg's cache holds now (one entry per server name).
func snapshotCache(t *testing.T, addr string, cfg *tls.Config) func() *tls.Config {
	t.Helper()
	cs, ok := cfg.ClientSessionCache.Get("rot.test")
	if !ok {
		t.Fatal("no ticket in the client's cache")
	}
	return func() *tls.Config {
		c := cfg.Clone()
		c.ClientSessionCache = tls.NewLRUClientSessionCache(4)
		c.ClientSessionCache.Put("rot.test", cs)
		return c
	}
}
