package tlsconf

import (
	"bufio"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
)

// get dials addr with cfg, asks s_server -www for its page and returns
// the status line.
func get(addr string, cfg *tls.Config) (string, error) {
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: deadline}, Config: cfg}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(deadline))
	if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

// TestOriginationToOpenSSLServer: ClientConfig verifies an openssl
// s_server backend against a CA file and the server name (passing and
// failing), and presents a client certificate to one that requires it.
func TestOriginationToOpenSSLServer(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "be")
	other := tlstest.NewCA(t, dir, "other")
	clients := tlstest.NewCA(t, dir, "clients")
	srv := ca.Issue(dir, "backend", tlstest.Options{DNSNames: []string{"backend.test"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	client := clients.Issue(dir, "client", tlstest.Options{CommonName: "proxy", Client: true})
	plain := tlstest.SServer(t, "-cert", srv.CertFile, "-key", srv.KeyFile)
	mtls := tlstest.SServer(t, "-cert", srv.CertFile, "-key", srv.KeyFile, "-Verify", "1", "-CAfile", clients.CAFile)

	for _, c := range []struct {
		name string
		addr string
		o    ClientOptions
		fail string // "" when it must work
	}{
		{"CA and server name", plain, ClientOptions{CA: ca.CAFile, ServerName: "backend.test"}, ""},
		{"CA, name from the address (IP SAN)", plain, ClientOptions{CA: ca.CAFile}, ""},
		{"wrong CA", plain, ClientOptions{CA: other.CAFile, ServerName: "backend.test"}, "unknown authority"},
		{"system roots", plain, ClientOptions{ServerName: "backend.test"}, "unknown authority"},
		{"wrong server name", plain, ClientOptions{CA: ca.CAFile, ServerName: "elsewhere.test"}, "elsewhere.test"},
		{"insecure_skip_verify", plain, ClientOptions{CA: other.CAFile, ServerName: "x", InsecureSkipVerify: true}, ""},
		{"mTLS with a client certificate", mtls, ClientOptions{CA: ca.CAFile, ServerName: "backend.test", Cert: client.CertFile, Key: client.KeyFile}, ""},
		{"mTLS without one", mtls, ClientOptions{CA: ca.CAFile, ServerName: "backend.test"}, "certificate"},
	} {
		cfg, err := ClientConfig(c.o, c.addr, time.Now())
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		line, err := get(c.addr, cfg)
		switch {
		case c.fail == "" && (err != nil || !strings.HasPrefix(line, "HTTP/1.0 200")):
			t.Errorf("%s: %q, %v; want the page", c.name, line, err)
		case c.fail != "" && err == nil:
			t.Errorf("%s: got %q, want a failure mentioning %q", c.name, line, c.fail)
		case c.fail != "" && !strings.Contains(err.Error(), c.fail):
			t.Errorf("%s: error %v, want one mentioning %q", c.name, err, c.fail)
		}
		if got := c.o.Warning() != ""; got != c.o.InsecureSkipVerify {
			t.Errorf("%s: Warning() = %q", c.name, c.o.Warning())
		}
	}

	for _, c := range []struct {
		o    ClientOptions
		want string
	}{
		{ClientOptions{CA: srv.KeyFile}, "no PEM certificate"},
		{ClientOptions{CA: dir + "/missing.pem"}, "missing.pem: no such file"},
		{ClientOptions{Cert: client.CertFile}, "cert and key go together"},
		{ClientOptions{Cert: client.CertFile, Key: srv.KeyFile}, "does not match"},
	} {
		if _, err := ClientConfig(c.o, plain, time.Now()); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.o, err, c.want)
		}
	}
}
