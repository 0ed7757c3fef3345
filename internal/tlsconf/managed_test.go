package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
)

// fakeManaged serves one certificate for its names and another as the
// TLS-ALPN-01 answer.
type fakeManaged struct {
	cert, chal *tls.Certificate
	names      []string
}

func (f *fakeManaged) Certificate(*tls.ClientHelloInfo) (*tls.Certificate, error) { return f.cert, nil }
func (f *fakeManaged) Challenge(*tls.ClientHelloInfo) (*tls.Certificate, error)   { return f.chal, nil }
func (f *fakeManaged) Certificates() []Info                                       { return []Info{{Cert: "acme:a.test"}} }
func (f *fakeManaged) Names() []string                                            { return f.names }

// TestManagedServer: a server with Managed reads no file; a client gets
// Managed's certificate and the rule's ALPN; a ClientHello offering only
// acme-tls/1 gets the challenge certificate, acme-tls/1 negotiated, and
// Handshake says ChallengeAnswered without telling the observer; a client
// that offers acme-tls/1 among others is an ordinary client.
func TestManagedServer(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "m")
	site := ca.Issue(dir, "site", tlstest.Options{DNSNames: []string{"a.test"}})
	chal := ca.Issue(dir, "chal", tlstest.Options{DNSNames: []string{"a.test"}})
	load := func(l *tlstest.Leaf) *tls.Certificate {
		c, err := tls.LoadX509KeyPair(l.CertFile, l.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		return &c
	}
	m := &fakeManaged{cert: load(site), chal: load(chal), names: []string{"a.test"}}
	rec := newRecorder()
	s, err := NewServer(ServerOptions{Name: "web", Managed: m, ALPN: []string{"h2"}, SessionTickets: true}, nil, rec)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.Certificates(); len(got) != 1 || got[0].Cert != "acme:a.test" {
		t.Errorf("Certificates = %+v", got)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	results := make(chan error, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc, err := s.Handshake(context.Background(), c)
				if err == nil {
					tc.Write([]byte("x"))
					tc.Close()
				}
				results <- err
			}()
		}
	}()
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	dial := func(protos []string) *tls.Conn {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: deadline}, "tcp", ln.Addr().String(), &tls.Config{ServerName: "a.test", RootCAs: roots, NextProtos: protos})
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(deadline))
		c.Read(make([]byte, 1))
		c.Close()
		return c
	}
	c := dial([]string{"h2"})
	if st := c.ConnectionState(); st.PeerCertificates[0].SerialNumber.Cmp(site.Cert.SerialNumber) != 0 || st.NegotiatedProtocol != "h2" {
		t.Errorf("client: serial %v proto %q", st.PeerCertificates[0].SerialNumber, st.NegotiatedProtocol)
	}
	if err := <-results; err != nil {
		t.Fatal(err)
	}
	if h := rec.next(t); h.err != nil {
		t.Errorf("client handshake counted as %+v", h)
	}
	c = dial([]string{ACMETLS1})
	if st := c.ConnectionState(); st.PeerCertificates[0].SerialNumber.Cmp(chal.Cert.SerialNumber) != 0 || st.NegotiatedProtocol != ACMETLS1 {
		t.Errorf("validation: serial %v proto %q", st.PeerCertificates[0].SerialNumber, st.NegotiatedProtocol)
	}
	if err := <-results; !errors.As(err, &ChallengeAnswered{}) {
		t.Errorf("validation's Handshake: %v, want ChallengeAnswered", err)
	}
	c = dial([]string{"h2", ACMETLS1})
	if st := c.ConnectionState(); st.PeerCertificates[0].SerialNumber.Cmp(site.Cert.SerialNumber) != 0 {
		t.Error("a client offering acme-tls/1 among others got the challenge certificate")
	}
	if err := <-results; err != nil {
		t.Fatal(err)
	}
	rec.next(t)
	select {
	case h := <-rec.ch:
		t.Errorf("an extra handshake was counted (the validation?): %+v", h)
	default:
	}
}
