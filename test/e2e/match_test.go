package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// selfSigned returns a certificate for names, made for the test.
func selfSigned(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// startTLSBackend is a TLS server that answers "NAME ALPN\n" after the handshake.
func startTLSBackend(t testing.TB, name string) string {
	t.Helper()
	cfg := &tls.Config{Certificates: []tls.Certificate{selfSigned(t, name+".example.com")}, NextProtos: []string{"h2", "http/1.1"}}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				tc := c.(*tls.Conn)
				tc.SetDeadline(time.Now().Add(harness.Deadline))
				if err := tc.Handshake(); err != nil {
					return
				}
				fmt.Fprintf(tc, "%s %s\n", name, tc.ConnectionState().NegotiatedProtocol)
				io.Copy(io.Discard, tc)
			}()
		}
	}()
	return ln.Addr().String()
}

func tlsGreeting(t testing.TB, addr, serverName string, alpn ...string) string {
	t.Helper()
	d := &net.Dialer{Timeout: harness.Deadline}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: serverName, InsecureSkipVerify: true, NextProtos: alpn})
	if err != nil {
		t.Fatalf("TLS to %s as %q: %v", addr, serverName, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(harness.Deadline))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("TLS to %s as %q: %v", addr, serverName, err)
	}
	return strings.TrimSpace(line)
}

func TestMatchSNIAndALPN(t *testing.T) {
	a, b, h2 := startTLSBackend(t, "a"), startTLSBackend(t, "b"), startTLSBackend(t, "h2only")
	fallback := StartEcho(t, "fallback")
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
peek_timeout = "500ms"
[[rules]]
name = "alpn-h2-on-c"
[rules.matcher]
all = [ { type = "sni", names = ["c.example.com"] }, { type = "alpn", protocols = ["h2"] } ]
[[rules.backends]]
id = "h2"
address = %q
[[rules]]
name = "a"
[rules.matcher]
type = "sni"
names = ["a.example.com", "*.a.example.com"]
[[rules.backends]]
id = "a"
address = %q
[[rules]]
name = "b"
[rules.matcher]
type = "sni"
names = ["*.example.com", "c.example.com"]
[[rules.backends]]
id = "b"
address = %q
[[rules]]
name = "default"
[rules.matcher]
type = "any"
[[rules.backends]]
id = "fallback"
address = %q
`, port, h2, a, b, fallback.Addr))
	Start(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for _, c := range []struct {
		sni  string
		alpn []string
		want string
	}{
		{"a.example.com", nil, "a "},
		{"x.a.example.com", nil, "a "},
		{"B.example.com", nil, "b "},
		{"c.example.com", []string{"h2"}, "h2only h2"},
		{"c.example.com", []string{"http/1.1"}, "b http/1.1"},
	} {
		if got := tlsGreeting(t, addr, c.sni, c.alpn...); got != strings.TrimSpace(c.want) {
			t.Errorf("SNI %q ALPN %v: routed to %q, want %q", c.sni, c.alpn, got, c.want)
		}
	}
	// Plain TCP with no ClientHello goes to the default route.
	if name, err := harness.Greeting(addr); err != nil || name != "fallback" {
		t.Fatalf("plain client: %q %v", name, err)
	}
	// An outside client: openssl s_client with -servername.
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is not installed (make test installs it)")
	}
	cmd := exec.Command("openssl", "s_client", "-connect", addr, "-servername", "b.example.com", "-quiet")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Process.Kill(); cmd.Wait() }()
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		got <- strings.TrimSpace(line)
	}()
	select {
	case line := <-got:
		if f := strings.Fields(line); len(f) == 0 || f[0] != "b" {
			t.Errorf("openssl s_client -servername b.example.com: got %q", line)
		}
	case <-time.After(harness.Deadline):
		t.Error("openssl s_client got no answer")
	}
}

func TestMatchHTTPHostAndSilentClient(t *testing.T) {
	a, b := StartEcho(t, "a"), StartEcho(t, "b")
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
peek_timeout = "300ms"
[[rules]]
name = "a"
[rules.matcher]
type = "http_host"
names = ["a.test"]
[[rules.backends]]
id = "a"
address = %q
[[rules]]
name = "b"
[rules.matcher]
type = "http_host"
names = ["*.b.test"]
[[rules.backends]]
id = "b"
address = %q
`, port, a.Addr, b.Addr))
	Start(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ask := func(host string) (string, error) {
		c, err := net.DialTimeout("tcp", addr, harness.Deadline)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(harness.Deadline))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	for host, want := range map[string]string{"a.test": "a", "A.TEST:8080": "a", "www.b.test": "b"} {
		if got, err := ask(host); err != nil || got != want {
			t.Errorf("Host %s: %q %v, want %q", host, got, err, want)
		}
	}
	if got, err := ask("c.test"); err == nil {
		t.Errorf("unmatched host was served by %q", got)
	}
	// A client that connects and says nothing is closed after peek_timeout.
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetDeadline(time.Now().Add(harness.Deadline))
	_, err = c.Read(make([]byte, 1))
	if err == nil {
		t.Fatal("silent client got data")
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("silent client not closed within %v (peek_timeout 300ms)", harness.Deadline)
	}
	// Nothing but the close marks the end of the peek, so its timer is
	// checked from below: a slow machine only makes the wait longer.
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Fatalf("silent client closed after %v, before peek_timeout (300ms)", d)
	}
}

// startProxyProtoBackend accepts connections with a PROXY header and answers
// with the source address the header carried.
func startProxyProtoBackend(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pl := &proxyproto.Listener{Listener: ln, ConnPolicy: func(proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) { return proxyproto.REQUIRE, nil }}
	t.Cleanup(func() { pl.Close() })
	go func() {
		for {
			c, err := pl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(harness.Deadline))
				v := 0
				if h := c.(*proxyproto.Conn).ProxyHeader(); h != nil {
					v = int(h.Version)
				}
				fmt.Fprintf(c, "%s v%d\n", c.RemoteAddr().(*net.TCPAddr).IP, v)
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func greetFrom(t testing.TB, local, addr string) (string, error) {
	d := net.Dialer{Timeout: harness.Deadline, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(harness.Deadline))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func TestProxyProtocolSendAndAccept(t *testing.T) {
	be := startProxyProtoBackend(t)
	v1, v2, front := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[[rules]]
name = "v1"
proxy_protocol = "v1"
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "pp"
address = %q
[[rules]]
name = "v2"
proxy_protocol = "v2"
[[rules.backends]]
id = "pp"
address = %q
[[rules]]
name = "behind-lb"
accept_proxy_protocol = true
trusted_proxies = ["127.0.0.1/32"]
proxy_protocol = "v2"
[rules.matcher]
all = [ { type = "port", port = %d }, { type = "source", cidrs = ["127.9.0.0/16"] } ]
[[rules.backends]]
id = "pp"
address = %q
`, v2, v1, be, be, front, be))
	Start(t, cfg)
	for port, want := range map[int]string{v1: "127.0.0.5 v1", v2: "127.0.0.5 v2"} {
		if got, err := greetFrom(t, "127.0.0.5", fmt.Sprintf("127.0.0.1:%d", port)); err != nil || got != want {
			t.Errorf("port %d: backend saw %q (%v), want %q", port, got, err, want)
		}
	}
	// A trusted upstream (127.0.0.1) sends a header: its source is the client
	// used for matching (source 127.9.0.0/16) and forwarded to the backend.
	sendHeader := func(local, src string) (string, error) {
		d := net.Dialer{Timeout: harness.Deadline, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", front))
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(harness.Deadline))
		h := proxyproto.HeaderProxyFromAddrs(1, &net.TCPAddr{IP: net.ParseIP(src), Port: 4242}, c.RemoteAddr())
		if _, err := h.WriteTo(c); err != nil {
			return "", err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	if got, err := sendHeader("127.0.0.1", "127.9.1.2"); err != nil || got != "127.9.1.2 v2" {
		t.Errorf("trusted upstream: backend saw %q (%v), want 127.9.1.2 v2", got, err)
	}
	if got, err := sendHeader("127.0.0.1", "127.8.1.2"); err == nil {
		t.Errorf("header source outside the rule's source matcher was served: %q", got)
	}
	if got, err := sendHeader("127.0.0.2", "127.9.1.2"); err == nil {
		t.Errorf("untrusted peer's header was honoured: %q", got)
	}
	// A malformed header from a trusted peer is refused.
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", front), harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(harness.Deadline))
	io.WriteString(c, "PROXY GARBAGE\r\n")
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("malformed PROXY header was served")
	}
}

func TestAccessControlAndLimits(t *testing.T) {
	a, b := StartEcho(t, "a"), StartEcho(t, "b")
	acl, perIP, rate, capped := harness.FreePort(t), harness.FreePort(t), harness.FreePort(t), harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[access]
deny = ["127.0.0.66"]
[[rules]]
name = "acl"
[rules.access]
allow = ["127.0.0.0/24"]
[[rules.backends]]
id = "a"
address = %q
[[rules]]
name = "per-ip"
[rules.access]
max_connections_per_ip = 2
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "a"
address = %q
[[rules]]
name = "rate"
[rules.access]
connection_rate_per_ip = 0.01
connection_burst_per_ip = 3
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "a"
address = %q
[[rules]]
name = "capped"
router = "round_robin"
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "a"
address = %q
max_connections = 1
[[rules.backends]]
id = "b"
address = %q
`, acl, a.Addr, perIP, a.Addr, rate, a.Addr, capped, a.Addr, b.Addr))
	Start(t, cfg)
	at := func(p int) string { return fmt.Sprintf("127.0.0.1:%d", p) }
	for ip, ok := range map[string]bool{"127.0.0.1": true, "127.0.0.7": true, "127.0.0.66": false, "127.0.1.1": false} {
		_, err := greetFrom(t, ip, at(acl))
		if (err == nil) != ok {
			t.Errorf("client %s: served=%v, want %v", ip, err == nil, ok)
		}
	}
	// The global deny applies to a rule that sets only other keys.
	if _, err := greetFrom(t, "127.0.0.66", at(perIP)); err == nil {
		t.Error("global deny not applied to rule per-ip")
	}

	// max_connections_per_ip = 2: a third concurrent connection is refused,
	// another address is not.
	hold := func(ip, addr string) net.Conn {
		d := net.Dialer{Timeout: harness.Deadline, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(harness.Deadline))
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatalf("held connection from %s not served: %v", ip, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	c1 := hold("127.0.0.3", at(perIP))
	hold("127.0.0.3", at(perIP))
	if _, err := greetFrom(t, "127.0.0.3", at(perIP)); err == nil {
		t.Error("third concurrent connection from one address was served")
	}
	if _, err := greetFrom(t, "127.0.0.4", at(perIP)); err != nil {
		t.Errorf("another address refused: %v", err)
	}
	c1.Close()
	harness.Eventually(t, "a slot frees after a close", func() bool { _, err := greetFrom(t, "127.0.0.3", at(perIP)); return err == nil })

	// connection_rate_per_ip: a burst of 3, then refused.
	for i := 0; i < 3; i++ {
		if _, err := greetFrom(t, "127.0.0.8", at(rate)); err != nil {
			t.Fatalf("connection %d of the burst refused: %v", i+1, err)
		}
	}
	if _, err := greetFrom(t, "127.0.0.8", at(rate)); err == nil {
		t.Error("fourth connection beyond the burst was served")
	}

	// Per-backend max_connections = 1: while a holds one, everything goes to b.
	first, err := greetFrom(t, "127.0.0.1", at(capped)) // rotation starts at a
	if err != nil || first != "a" {
		t.Fatalf("first: %q %v", first, err)
	}
	hold("127.0.0.1", at(capped)) // takes a (round robin: b then a...) or b
	seen := map[string]int{}
	for i := 0; i < 6; i++ {
		d := net.Dialer{Timeout: harness.Deadline}
		c, err := d.Dial("tcp", at(capped))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(harness.Deadline))
		line, _ := bufio.NewReader(c).ReadString('\n')
		seen[strings.TrimSpace(line)]++
		t.Cleanup(func() { c.Close() })
	}
	if seen["a"] > 1 {
		t.Errorf("backend a with max_connections = 1 got %d concurrent connections (%v)", seen["a"]+1, seen)
	}
}

// startUDPProxyProtoBackend answers each datagram with "SRC PAYLOAD", SRC
// being the source its PROXY v2 header carries ("none" without a header).
func startUDPProxyProtoBackend(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			src, payload := "none", buf[:n]
			br := bufio.NewReader(strings.NewReader(string(buf[:n])))
			if h, err := proxyproto.Read(br); err == nil {
				if a, _, ok := h.UDPAddrs(); ok {
					src = a.IP.String()
				}
				rest, _ := io.ReadAll(br)
				payload = rest
			}
			pc.WriteTo([]byte(src+" "+string(payload)), from)
		}
	}()
	return pc.LocalAddr().String()
}

func udpAsk(local, addr, msg string) (string, error) {
	la, _ := net.ResolveUDPAddr("udp", local+":0")
	ra, _ := net.ResolveUDPAddr("udp", addr)
	c, err := net.DialUDP("udp", la, ra)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}

// TestUDPSourceMatchAccessAndProxyV2: UDP sessions are matched by source,
// refused by access control, and can carry a PROXY v2 header per datagram.
func TestUDPSourceMatchAccessAndProxyV2(t *testing.T) {
	be := startUDPProxyProtoBackend(t)
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"
[health_check]
enabled = false
[[rules]]
name = "proxied"
protocol = "udp"
proxy_protocol = "v2"
[rules.matcher]
type = "source"
cidrs = ["127.0.0.5"]
[[rules.backends]]
id = "b"
address = %q
[[rules]]
name = "plain"
protocol = "udp"
[rules.access]
deny = ["127.0.0.9"]
[rules.matcher]
type = "any"
[[rules.backends]]
id = "b"
address = %q
`, port, be, be))
	Start(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	if got, err := udpAsk("127.0.0.5", addr, "hi"); err != nil || got != "127.0.0.5 hi" {
		t.Errorf("source-matched rule with proxy_protocol v2: %q %v, want \"127.0.0.5 hi\"", got, err)
	}
	if got, err := udpAsk("127.0.0.6", addr, "hi"); err != nil || got != "none hi" {
		t.Errorf("default rule: %q %v, want \"none hi\"", got, err)
	}
	if got, err := udpAsk("127.0.0.9", addr, "hi"); err == nil {
		t.Errorf("denied client got an answer: %q", got)
	}
}

// TestHashBySNIE2E: with hash_key = "sni" the proxy peeks at the
// ClientHello even with no SNI matcher, and one server name sticks to one
// backend whatever the client address.
func TestHashBySNIE2E(t *testing.T) {
	a, b, c := startTLSBackend(t, "a"), startTLSBackend(t, "b"), startTLSBackend(t, "c")
	port := harness.FreePort(t)
	cfg := harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
enabled = false
[routers.by_name]
plugin = "hash"
config = { hash_key = "sni" }
[[rules]]
name = "tls"
router = "by_name"
[[rules.backends]]
id = "a"
address = %q
[[rules.backends]]
id = "b"
address = %q
[[rules.backends]]
id = "c"
address = %q
`, port, a, b, c))
	Start(t, cfg)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	used := map[string]bool{}
	for n := 0; n < 12; n++ {
		name := fmt.Sprintf("svc%d.example.com", n)
		var first string
		for i := 0; i < 4; i++ {
			d := &net.Dialer{Timeout: harness.Deadline, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, byte(i), 2)}}
			conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: name, InsecureSkipVerify: true})
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(harness.Deadline))
			line, err := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Fields(line)[0]
			if first == "" {
				first = got
			} else if got != first {
				t.Fatalf("%s went to %s and %s", name, first, got)
			}
		}
		used[first] = true
	}
	if len(used) < 2 {
		t.Fatalf("12 server names all went to %v", used)
	}
}
