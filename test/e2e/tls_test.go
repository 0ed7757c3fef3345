package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// countingEcho is StartEcho that counts the connections it accepted.
type countingEcho struct {
	*EchoServer
	accepted atomic.Int64
}

func startCountingEcho(t *testing.T, name string) *countingEcho {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &countingEcho{EchoServer: &EchoServer{Name: name, Addr: ln.Addr().String(), ln: ln}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepted.Add(1)
			go func() {
				defer c.Close()
				io.WriteString(c, name+"\n")
				io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(e.Close)
	return e
}

// tlsDial opens a TLS connection to addr with server name sni (""): none,
// trusting pool, and returns it with the greeting line the backend sent.
func tlsDial(t *testing.T, addr, sni string, pool *x509.CertPool, edit func(*tls.Config)) (*tls.Conn, string) {
	t.Helper()
	cfg := &tls.Config{ServerName: sni, RootCAs: pool}
	if sni == "" {
		cfg.InsecureSkipVerify = true // no name to verify; the test checks the serial
	}
	if edit != nil {
		edit(cfg)
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS to %s (sni %q): %v", addr, sni, err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("greeting through TLS (sni %q): %v", sni, err)
	}
	c.SetDeadline(time.Time{})
	return c, strings.TrimSuffix(line, "\n")
}

func servedSerial(c *tls.Conn) string {
	return tlsconf.Serial(c.ConnectionState().PeerCertificates[0])
}

// TestTLSTerminate: one port terminates TLS for some names — the
// certificate chosen by SNI among three, the default without SNI — and
// passes another name through to a TLS backend; the terminating rule's
// backend gets plaintext; the ALPN offered is negotiated; a failed
// handshake (TLS 1.1, refused by default) is counted and dials no backend;
// the expiry metric matches the certificate.
func TestTLSTerminate(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "term")
	def := ca.Issue(dir, "default", tlstest.Options{DNSNames: []string{"default.test"}})
	api := ca.Issue(dir, "api", tlstest.Options{DNSNames: []string{"api.test"}, NotAfter: time.Now().Add(20 * 24 * time.Hour)})
	wild := ca.Issue(dir, "wild", tlstest.Options{DNSNames: []string{"*.apps.test"}, RSA: true})
	passCert := ca.Issue(dir, "pass", tlstest.Options{DNSNames: []string{"pass.test"}})
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)

	plain := startCountingEcho(t, "PLAIN")
	passLn, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{mustPair(t, passCert)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { passLn.Close() })
	go func() {
		for {
			c, err := passLn.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.WriteString(c, "PASSED\n"); io.Copy(c, c) }()
		}
	}()
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
enabled = false
[[rules]]
name = "pass"
[rules.matcher]
type = "sni"
names = ["pass.test"]
[[rules.backends]]
id = "tls-backend"
address = %q
[[rules]]
name = "term"
[rules.tls]
certificates = [{ cert = %q, key = %q }, { cert = %q, key = %q }, { cert = %q, key = %q }]
alpn = ["h2", "http/1.1"]
[[rules.backends]]
id = "plain"
address = %q
`, port, passLn.Addr(), def.CertFile, def.KeyFile, api.CertFile, api.KeyFile, wild.CertFile, wild.KeyFile, plain.Addr)))
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	for _, tc := range []struct{ sni, serial string }{
		{"api.test", tlsconf.Serial(api.Cert)},
		{"x.apps.test", tlsconf.Serial(wild.Cert)},
		{"", tlsconf.Serial(def.Cert)},
		{"unknown.test", tlsconf.Serial(def.Cert)},
	} {
		c, greeting := tlsDial(t, addr, tc.sni, pool, func(cfg *tls.Config) {
			if tc.sni == "unknown.test" {
				cfg.InsecureSkipVerify = true
			}
		})
		if got := servedSerial(c); got != tc.serial || greeting != "PLAIN" {
			t.Errorf("sni %q: serial %s, greeting %q; want %s, PLAIN", tc.sni, got, greeting, tc.serial)
		}
		io.WriteString(c, "ping\n") // plaintext both ways through the terminated stream
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "ping\n" {
			t.Errorf("sni %q: echo %q %v", tc.sni, line, err)
		}
		c.Close()
	}
	c, greeting := tlsDial(t, addr, "pass.test", pool, nil)
	if servedSerial(c) != tlsconf.Serial(passCert.Cert) || greeting != "PASSED" {
		t.Errorf("pass-through: serial %s greeting %q", servedSerial(c), greeting)
	}
	c.Close()

	// ALPN, and TLS 1.1 refused, with openssl s_client.
	out := sClient(t, addr, "-servername", "api.test", "-alpn", "http/1.1")
	if !strings.Contains(out, "ALPN protocol: http/1.1") {
		t.Errorf("openssl s_client: no ALPN http/1.1:\n%s", out)
	}
	before := plain.accepted.Load()
	out = sClient(t, addr, "-servername", "api.test", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
	if strings.Contains(out, "Cipher is ECDHE") || !strings.Contains(strings.ToLower(out), "alert") && !strings.Contains(out, "Cipher is (NONE)") {
		t.Errorf("a TLS 1.1 client was not refused:\n%s", out)
	}
	m := harness.WaitMetrics(t, p.MetricsURL(), "the failed handshake counted", func(m harness.Metrics) bool {
		return m.Value("dynamic_proxy_tls_handshakes_total", harness.Labels{"rule": "term", "result": "failed"}) >= 1
	})
	if got := plain.accepted.Load(); got != before {
		t.Errorf("a failed handshake dialled the backend (%d connections, %d before)", got, before)
	}
	if m.Value("dynamic_proxy_tls_handshakes_total", harness.Labels{"rule": "term", "result": "full", "version": "1.3"}) < 4 {
		t.Error("successful TLS 1.3 handshakes not counted")
	}
	left := m.Value("dynamic_proxy_tls_certificate_expiry_seconds", harness.Labels{"rule": "term", "cert": api.CertFile})
	if want := time.Until(api.Cert.NotAfter).Seconds(); left < want-120 || left > want+5 {
		t.Errorf("expiry of %s: %v s, want about %v", api.CertFile, left, want)
	}
}

func mustPair(t *testing.T, l *tlstest.Leaf) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(l.CertFile, l.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sClient runs openssl s_client against addr with args, sending nothing,
// and returns what it printed.
func sClient(t *testing.T, addr string, args ...string) string {
	t.Helper()
	cmd := exec.Command("openssl", append([]string{"s_client", "-connect", addr}, args...)...)
	cmd.Stdin = strings.NewReader("")
	out, _ := cmd.CombinedOutput()
	return string(out)
}

// TestTLSClientCertificates: client_auth = "require" accepts a client
// certificate from client_ca and refuses a client without one.
func TestTLSClientCertificates(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "mtls")
	srv := ca.Issue(dir, "srv", tlstest.Options{DNSNames: []string{"mtls.test"}})
	clientCA := tlstest.NewCA(t, dir, "clients")
	client := clientCA.Issue(dir, "client", tlstest.Options{CommonName: "client-1", Client: true})
	be := startCountingEcho(t, "SECURE")
	port := harness.FreePort(t)
	Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
enabled = false
[[rules]]
name = "mtls"
[rules.tls]
certificates = [{ cert = %q, key = %q }]
client_auth = "require"
client_ca = %q
[[rules.backends]]
id = "b"
address = %q
`, port, srv.CertFile, srv.KeyFile, clientCA.CAFile, be.Addr)))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	c, greeting := tlsDial(t, addr, "mtls.test", pool, func(cfg *tls.Config) { cfg.Certificates = []tls.Certificate{mustPair(t, client)} })
	c.Close()
	if greeting != "SECURE" {
		t.Errorf("with a client certificate: %q", greeting)
	}
	before := be.accepted.Load()
	nc, err := tls.Dial("tcp", addr, &tls.Config{ServerName: "mtls.test", RootCAs: pool})
	if err == nil {
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = nc.Read(make([]byte, 1)) // TLS 1.3: the refusal comes after the client's side
		nc.Close()
	}
	if err == nil {
		t.Error("a client without a certificate was served")
	}
	if be.accepted.Load() != before {
		t.Error("a refused client reached the backend")
	}
}

// getLine sends an HTTP/1.0 GET to addr and returns the first line of the
// reply (openssl s_server -www answers "HTTP/1.0 200 ok").
func getLine(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "GET / HTTP/1.0\r\n\r\n")
	return bufio.NewReader(c).ReadString('\n')
}

// swapLink points the symlink live at to atomically (a new link renamed
// over it), as a Kubernetes secret or certbot does.
func swapLink(t *testing.T, live, to string) {
	t.Helper()
	tmp := live + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(to, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, live); err != nil {
		t.Fatal(err)
	}
}

// TestTLSToBackends: a rule originates TLS to an openssl s_server backend:
// verified against its CA and server_name, with a client certificate for
// mTLS; a wrong server_name fails verification and the client is closed.
func TestTLSToBackends(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "backends")
	beCert := ca.Issue(dir, "db", tlstest.Options{DNSNames: []string{"db.internal"}})
	proxyClient := ca.Issue(dir, "proxy", tlstest.Options{CommonName: "proxy", Client: true})
	backend := tlstest.SServer(t, "-cert", beCert.CertFile, "-key", beCert.KeyFile, "-Verify", "1", "-CAfile", ca.CAFile)
	config := func(serverName string) string {
		return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%%d"
[health_check]
enabled = false
[[rules]]
name = "db"
[rules.backend_tls]
ca = %q
server_name = %q
cert = %q
key = %q
[[rules.backends]]
id = "db1"
address = %q
`, ca.CAFile, serverName, proxyClient.CertFile, proxyClient.KeyFile, backend)
	}
	port := harness.FreePort(t)
	Start(t, harness.WriteConfig(t, fmt.Sprintf(config("db.internal"), port)))
	if line, err := getLine(fmt.Sprintf("127.0.0.1:%d", port)); err != nil || !strings.HasPrefix(line, "HTTP/1.0 200 ok") {
		t.Errorf("through TLS to the backend: %q %v", line, err)
	}
	port2 := harness.FreePort(t)
	p2 := Start(t, harness.WriteConfig(t, fmt.Sprintf(config("other.internal"), port2)))
	if line, err := getLine(fmt.Sprintf("127.0.0.1:%d", port2)); err == nil && strings.HasPrefix(line, "HTTP") {
		t.Errorf("a backend failing verification was used: %q", line)
	}
	p2.WaitLog("backend dial failed", "certificate")
}

// liveCertInstance starts an instance whose rule name terminates TLS with
// live/site.pem and live/site-key.pem (live: a symlink the test swaps), in
// front of an echo; serverKeys go into [server]. It returns the instance,
// the rule's address and a pool with ca.
func liveCertInstance(t *testing.T, name, live string, ca *tlstest.CA, serverKeys string) (*harness.Proxy, string, *x509.CertPool) {
	t.Helper()
	be := startCountingEcho(t, "ECHO")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
%s[health_check]
enabled = false
[[rules]]
name = %q
[rules.tls]
certificates = [{ cert = %q, key = %q }]
[[rules.backends]]
id = "b"
address = %q
`, port, serverKeys, name, filepath.Join(live, "site.pem"), filepath.Join(live, "site-key.pem"), be.Addr)))
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return p, fmt.Sprintf("127.0.0.1:%d", port), pool
}

// TestTLSCertificateSwap: the certificate files reached through a symlink
// (as a Kubernetes secret or certbot's live/ has them) are swapped: a new
// connection gets the new serial while an open stream runs on byte-exact;
// then a key that does not match is refused and the certificate before it
// is still served.
func TestTLSCertificateSwap(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "swap")
	for _, v := range []string{"v1", "v2", "v3"} {
		os.Mkdir(filepath.Join(dir, v), 0o755)
	}
	v1 := ca.Issue(filepath.Join(dir, "v1"), "site", tlstest.Options{DNSNames: []string{"swap.test"}})
	v2 := ca.Issue(filepath.Join(dir, "v2"), "site", tlstest.Options{DNSNames: []string{"swap.test"}})
	ca.Issue(filepath.Join(dir, "v3"), "site", tlstest.Options{DNSNames: []string{"swap.test"}})
	other := ca.Issue(filepath.Join(dir, "v3"), "other", tlstest.Options{DNSNames: []string{"other.test"}})
	os.Rename(other.KeyFile, filepath.Join(dir, "v3", "site-key.pem")) // v3: a key that is not its certificate's
	live := filepath.Join(dir, "live")
	if err := os.Symlink("v1", live); err != nil {
		t.Fatal(err)
	}
	p, addr, pool := liveCertInstance(t, "swap", live, ca, "")
	open, _ := tlsDial(t, addr, "swap.test", pool, nil)
	defer open.Close()
	if servedSerial(open) != tlsconf.Serial(v1.Cert) {
		t.Fatalf("first serial %s", servedSerial(open))
	}
	swapLink(t, live, "v2")
	harness.Eventually(t, "a new connection to get the new certificate", func() bool {
		c, _ := tlsDial(t, addr, "swap.test", pool, nil)
		defer c.Close()
		return servedSerial(c) == tlsconf.Serial(v2.Cert)
	})
	msg := strings.Repeat("0123456789abcdef", 4096) + "\n"
	io.WriteString(open, msg)
	open.SetDeadline(time.Now().Add(10 * time.Second))
	if line, err := bufio.NewReader(open).ReadString('\n'); err != nil || line != msg {
		t.Fatalf("the open stream after the swap: %d bytes, %v", len(line), err)
	}
	swapLink(t, live, "v3")
	p.WaitLog("certificate reload failed; still serving the previous certificates", "rule=swap", "private key does not match")
	c, _ := tlsDial(t, addr, "swap.test", pool, nil)
	defer c.Close()
	if servedSerial(c) != tlsconf.Serial(v2.Cert) {
		t.Errorf("after a bad key: serial %s, want the previous %s", servedSerial(c), tlsconf.Serial(v2.Cert))
	}
}

// TestTLSResumptionAcrossInstances: two instances sharing a real Redis use
// the same session ticket keys: a client that got a ticket from the first
// resumes on the second.
func TestTLSResumptionAcrossInstances(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "fleet")
	site := ca.Issue(dir, "site", tlstest.Options{DNSNames: []string{"fleet.test"}})
	be := startCountingEcho(t, "FLEET")
	srv := redistest.Start(t)
	rule := fmt.Sprintf(`
[[rules]]
name = "shared"
[rules.tls]
certificates = [{ cert = %q, key = %q }]
[[rules.backends]]
id = "b"
address = %q
`, site.CertFile, site.KeyFile, be.Addr)
	a := startFleetProxy(t, srv.URL(), "", rule)
	b := startFleetProxy(t, srv.URL(), "", rule)
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	cache := tls.NewLRUClientSessionCache(8)
	withCache := func(cfg *tls.Config) { cfg.ClientSessionCache = cache }
	c, _ := tlsDial(t, a.Addr, "fleet.test", pool, withCache) // the greeting read takes in the ticket
	c.Close()
	c, _ = tlsDial(t, b.Addr, "fleet.test", pool, withCache)
	defer c.Close()
	if !c.ConnectionState().DidResume {
		t.Error("the session from the first instance did not resume on the second")
	}
}

// TestTLSProxyProtocolAfterTermination: a terminating rule with
// proxy_protocol sends the backend the PROXY header (the client's real
// address), then the plaintext.
func TestTLSProxyProtocolAfterTermination(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "pp")
	site := ca.Issue(dir, "site", tlstest.Options{DNSNames: []string{"pp.test"}})
	be := startProxyProtoBackend(t)
	port := harness.FreePort(t)
	Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
enabled = false
[[rules]]
name = "pp"
proxy_protocol = "v2"
[rules.tls]
certificates = [{ cert = %q, key = %q }]
[[rules.backends]]
id = "pp"
address = %q
`, port, site.CertFile, site.KeyFile, be)))
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.7")}}
	c, err := tls.DialWithDialer(d, "tcp", fmt.Sprintf("127.0.0.1:%d", port), &tls.Config{ServerName: "pp.test", RootCAs: pool})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "127.0.0.7 v2\n" {
		t.Errorf("the backend saw %q (%v), want the client 127.0.0.7 in a v2 header", line, err)
	}
}

// TestTLSBulkByteExact: 32 MiB each way through a terminated stream, sent
// in large writes so the proxy gathers several records into one write to
// the backend, arrive byte-exact.
func TestTLSBulkByteExact(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "bulk")
	site := ca.Issue(dir, "site", tlstest.Options{DNSNames: []string{"bulk.test"}})
	echo := startCountingEcho(t, "BULK")
	port := harness.FreePort(t)
	Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
enabled = false
[[rules]]
name = "bulk"
[rules.tls]
certificates = [{ cert = %q, key = %q }]
[[rules.backends]]
id = "echo"
address = %q
`, port, site.CertFile, site.KeyFile, echo.Addr)))
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	c, greeting := tlsDial(t, fmt.Sprintf("127.0.0.1:%d", port), "bulk.test", pool, nil)
	defer c.Close()
	if greeting != "BULK" {
		t.Fatalf("greeting %q", greeting)
	}
	data := make([]byte, 32<<20)
	chacha := rand.NewChaCha8([32]byte{1})
	chacha.Read(data)
	c.SetDeadline(time.Now().Add(60 * time.Second))
	werr := make(chan error, 1)
	go func() {
		for off := 0; off < len(data); off += 1 << 20 {
			if _, err := c.Write(data[off : off+1<<20]); err != nil {
				werr <- err
				return
			}
		}
		werr <- c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the echo: %v after %d bytes", err, len(got))
	}
	if err := <-werr; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if !bytes.Equal(got, data) {
		i := 0
		for i < len(got) && i < len(data) && got[i] == data[i] {
			i++
		}
		t.Fatalf("echo differs: %d bytes back of %d, first difference at %d", len(got), len(data), i)
	}
}

// TestTLSHealthCheckClientCertificate: a TLS 1.3 backend that requires a
// client certificate (openssl s_server -Verify) refuses it only after the
// client's side of the handshake; the plain connect check of a rule that
// dials it without a certificate, or with one from another CA, still marks
// it down, while the rule with the right certificate keeps it up and is
// served.
func TestTLSHealthCheckClientCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "backends")
	other := tlstest.NewCA(t, dir, "other")
	beCert := ca.Issue(dir, "db", tlstest.Options{DNSNames: []string{"db.internal"}})
	proxyClient := ca.Issue(dir, "proxy", tlstest.Options{CommonName: "proxy", Client: true})
	stranger := other.Issue(dir, "stranger", tlstest.Options{CommonName: "stranger", Client: true})
	backend := tlstest.SServer(t, "-cert", beCert.CertFile, "-key", beCert.KeyFile, "-tls1_3", "-Verify", "1", "-verify_return_error", "-CAfile", ca.CAFile)
	ports := []int{harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)}
	// rule dials the backend with TLS and, with client, that certificate.
	rule := func(name string, port int, client *tlstest.Leaf) string {
		cert := ""
		if client != nil {
			cert = fmt.Sprintf("cert = %q\nkey = %q\n", client.CertFile, client.KeyFile)
		}
		return fmt.Sprintf(`
[[rules]]
name = %q
[rules.matcher]
type = "port"
port = %d
[rules.backend_tls]
ca = %q
server_name = "db.internal"
%s[[rules.backends]]
id = "db1"
address = %q
`, name, port, ca.CAFile, cert, backend)
	}
	p := Start(t, harness.WriteConfig(t, `
[health_check]
enabled = true
interval = "1s"
timeout = "900ms"
retries = 1
rise = 1
`+rule("good", ports[0], proxyClient)+rule("none", ports[1], nil)+rule("stranger", ports[2], stranger)))
	p.WaitLog("backend down", "none/db1", "refused the client certificate")
	p.WaitLog("backend down", "stranger/db1", "refused the client certificate")
	good := map[string]string{"rule": "good", "backend": "db1"}
	harness.WaitMetrics(t, p.MetricsURL(), "the rule with the right certificate passing its checks", func(f harness.Metrics) bool {
		return f.Value("dynamic_proxy_backend_up", good) == 1 &&
			f.Value("dynamic_proxy_health_checks_total", map[string]string{"rule": "good", "backend": "db1", "result": "success"}) >= 2
	})
	if line, err := getLine(fmt.Sprintf("127.0.0.1:%d", ports[0])); err != nil || !strings.HasPrefix(line, "HTTP/1.0 200 ok") {
		t.Errorf("through the rule with the right client certificate: %q %v", line, err)
	}
	if n := p.Count("backend down", "good/db1"); n != 0 {
		t.Errorf("the backend was marked down for the rule with the right certificate:\n%s", p.Log())
	}
}

// TestTLSCertificatesReloadOnSIGHUPAndAdmin: with the file watch off
// (watch_config = false), a certificate replaced on disk is served only
// after a reload: SIGHUP, then POST /api/v1/reload, each re-read it.
func TestTLSCertificatesReloadOnSIGHUPAndAdmin(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, dir, "reload")
	var versions []*tlstest.Leaf
	for _, v := range []string{"v1", "v2", "v3"} {
		os.Mkdir(filepath.Join(dir, v), 0o755)
		versions = append(versions, ca.Issue(filepath.Join(dir, v), "site", tlstest.Options{DNSNames: []string{"reload.test"}}))
	}
	live := filepath.Join(dir, "live")
	if err := os.Symlink("v1", live); err != nil {
		t.Fatal(err)
	}
	p, addr, pool := liveCertInstance(t, "reload", live, ca, "watch_config = false\n")
	serial := func() string {
		c, _ := tlsDial(t, addr, "reload.test", pool, nil)
		defer c.Close()
		return servedSerial(c)
	}
	if s := serial(); s != tlsconf.Serial(versions[0].Cert) {
		t.Fatalf("first serial %s", s)
	}
	swapLink(t, live, "v2")
	reloads := p.Count("config reloaded", "trigger=")
	if s := serial(); s != tlsconf.Serial(versions[0].Cert) {
		t.Fatalf("without the file watch and before a reload, serial %s: want the first still", s)
	}
	p.Signal(syscall.SIGHUP)
	harness.Eventually(t, "the reload by SIGHUP", func() bool { return p.Count("config reloaded", "trigger=") > reloads })
	if s := serial(); s != tlsconf.Serial(versions[1].Cert) {
		t.Fatalf("after SIGHUP: serial %s, want v2's", s)
	}
	swapLink(t, live, "v3")
	resp, err := http.Post(p.AdminURL()+"/api/v1/reload", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /api/v1/reload: %s", resp.Status)
	}
	if s := serial(); s != tlsconf.Serial(versions[2].Cert) {
		t.Errorf("after POST /api/v1/reload: serial %s, want v3's", s)
	}
}
