package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/dynamic-proxy/dynamic-proxy/internal/peek"
	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf/tlstest"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// QUIC through the binary with real quic-go endpoints (a test-only
// dependency): routing by the server name of the ClientHello read from
// the client's Initial packets, and a session that follows its client to a
// new address by connection id.

const quicALPN = "dp-echo"

// quicBackend is a raw QUIC server on 127.0.0.1: on each stream it answers
// each line with "NAME@PEER:line", PEER being the address it sees the
// client at (the proxy's session socket).
type quicBackend struct {
	Name, Addr string
}

func startQUICBackend(t *testing.T, ca *tlstest.CA, name string, names ...string) *quicBackend {
	t.Helper()
	dir := t.TempDir()
	leaf := ca.Issue(dir, name, tlstest.Options{CommonName: names[0], DNSNames: names})
	cert, err := tls.LoadX509KeyPair(leaf.CertFile, leaf.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := quic.ListenAddr("127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{quicALPN}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b := &quicBackend{Name: name, Addr: ln.Addr().String()}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				for {
					st, err := conn.AcceptStream(ctx)
					if err != nil {
						return
					}
					go func() {
						defer st.Close()
						r := bufio.NewReader(st)
						for {
							line, err := r.ReadString('\n')
							if err != nil {
								return
							}
							fmt.Fprintf(st, "%s@%s:%s", name, conn.RemoteAddr(), line)
						}
					}()
				}
			}()
		}
	}()
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
	return b
}

// rebindConn is a client's UDP socket that can be swapped for a new one
// (a new local port) under a running QUIC connection, as a NAT rebinding
// or a network change does; quic-go does not notice. It records the
// datagrams written before the first one is read.
type rebindConn struct {
	mu      sync.Mutex
	c       *net.UDPConn
	first   [][]byte // written before anything was read
	readAny bool
	closed  bool
}

func newRebindConn(t *testing.T) *rebindConn {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	return &rebindConn{c: c}
}

func (r *rebindConn) cur() *net.UDPConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.c
}

// rebind moves the connection to a new socket and closes the old one.
func (r *rebindConn) rebind(t *testing.T) (old, now string) {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	prev := r.c
	r.c = c
	r.mu.Unlock()
	prev.Close()
	return prev.LocalAddr().String(), c.LocalAddr().String()
}

func (r *rebindConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		c := r.cur()
		n, a, err := c.ReadFrom(p)
		if err != nil && errors.Is(err, net.ErrClosed) {
			r.mu.Lock()
			swapped, closed := r.c != c, r.closed
			r.mu.Unlock()
			if swapped && !closed {
				continue // rebound: read the new socket
			}
		}
		if err == nil {
			r.mu.Lock()
			r.readAny = true
			r.mu.Unlock()
		}
		return n, a, err
	}
}

func (r *rebindConn) WriteTo(p []byte, a net.Addr) (int, error) {
	r.mu.Lock()
	if !r.readAny {
		r.first = append(r.first, slices.Clone(p))
	}
	r.mu.Unlock()
	for {
		c := r.cur()
		n, err := c.WriteTo(p, a)
		if err != nil && errors.Is(err, net.ErrClosed) {
			// rebind closed the socket between cur and the write: write on
			// the new one (as ReadFrom reads on), unless Close was called.
			r.mu.Lock()
			swapped, closed := r.c != c, r.closed
			r.mu.Unlock()
			if swapped && !closed {
				continue
			}
		}
		return n, err
	}
}

func (r *rebindConn) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	return r.cur().Close()
}

func (r *rebindConn) LocalAddr() net.Addr                { return r.cur().LocalAddr() }
func (r *rebindConn) SetDeadline(t time.Time) error      { return r.cur().SetDeadline(t) }
func (r *rebindConn) SetReadDeadline(t time.Time) error  { return r.cur().SetReadDeadline(t) }
func (r *rebindConn) SetWriteDeadline(t time.Time) error { return r.cur().SetWriteDeadline(t) }

// firstDatagrams is how many datagrams the client sent before its
// ClientHello was complete, read with the proxy's parser.
func (r *rebindConn) helloDatagrams(t *testing.T) int {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var q peek.QUICInitial
	for i, d := range r.first {
		_, err := q.Add(d)
		if err == nil {
			return i + 1
		}
		if !errors.Is(err, peek.ErrNeedMore) {
			t.Fatalf("client datagram %d: %v", i+1, err)
		}
	}
	t.Fatalf("the %d datagrams sent first hold no complete ClientHello", len(r.first))
	return 0
}

// quicClient is a QUIC connection through the proxy on a rebindable
// socket, with one open stream.
type quicClient struct {
	rc   *rebindConn
	conn *quic.Conn
	st   *quic.Stream
	r    *bufio.Reader
}

func dialQUIC(t *testing.T, port int, serverName string, roots *x509.CertPool) *quicClient {
	t.Helper()
	rc := newRebindConn(t)
	tr := &quic.Transport{Conn: rc}
	t.Cleanup(func() { tr.Close(); rc.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), harness.Deadline)
	defer cancel()
	conn, err := tr.Dial(ctx, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port},
		&tls.Config{ServerName: serverName, RootCAs: roots, NextProtos: []string{quicALPN}},
		&quic.Config{MaxIdleTimeout: time.Minute})
	if err != nil {
		t.Fatalf("QUIC dial port %d as %s: %v", port, serverName, err)
	}
	t.Cleanup(func() { conn.CloseWithError(0, "") })
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &quicClient{rc: rc, conn: conn, st: st, r: bufio.NewReader(st)}
}

// say sends a line on the stream and returns the backend's answer: its
// name and the peer address it sees.
func (c *quicClient) say(t *testing.T, line string) (name, peer string) {
	t.Helper()
	c.st.SetDeadline(time.Now().Add(harness.Deadline))
	if _, err := fmt.Fprintf(c.st, "%s\n", line); err != nil {
		t.Fatalf("write %q: %v", line, err)
	}
	got, err := c.r.ReadString('\n')
	if err != nil {
		t.Fatalf("answer to %q: %v (so far %q)", line, err, got)
	}
	head, ok := strings.CutSuffix(got, ":"+line+"\n") // NAME@IP:PORT
	if !ok {
		t.Fatalf("answer %q does not echo %q", got, line)
	}
	name, peer, _ = strings.Cut(head, "@")
	return name, peer
}

func caPool(t *testing.T, ca *tlstest.CA) *x509.CertPool {
	pem, err := os.ReadFile(ca.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pem)
	return p
}

// TestQUICRoutedBySNI: two QUIC backends chosen by the server name of the
// ClientHello through one UDP port, each client's ClientHello spread over
// two Initial packets (Go's default post-quantum key share), and a client
// that does not speak QUIC taken by the rule that needs no name.
func TestQUICRoutedBySNI(t *testing.T) {
	ca := tlstest.NewCA(t, t.TempDir(), "quic")
	a := startQUICBackend(t, ca, "alpha", "a.quic.test")
	b := startQUICBackend(t, ca, "beta", "b.quic.test", "*.b.quic.test")
	plain := StartUDPEcho(t, "plain")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"

[[rules]]
name = "alpha"
protocol = "udp"
[rules.matcher]
type = "sni"
names = ["a.quic.test"]
[[rules.backends]]
id = "alpha"
address = %q

[[rules]]
name = "beta"
protocol = "udp"
[rules.matcher]
all = [ { type = "sni", names = ["b.quic.test", "*.b.quic.test"] }, { type = "alpn", protocols = [%q] } ]
[[rules.backends]]
id = "beta"
address = %q

[[rules]]
name = "other"
protocol = "udp"
[rules.matcher]
type = "any"
[[rules.backends]]
id = "plain"
address = %q
`, port, a.Addr, quicALPN, b.Addr, plain.Addr)))
	roots := caPool(t, ca)
	for _, c := range []struct{ name, want string }{
		{"a.quic.test", "alpha"}, {"b.quic.test", "beta"}, {"x.b.quic.test", "beta"}, {"a.quic.test", "alpha"},
	} {
		qc := dialQUIC(t, port, c.name, roots)
		if got, _ := qc.say(t, "hello "+c.name); got != c.want {
			t.Errorf("%s reached %q, want %q", c.name, got, c.want)
		}
		if n := qc.rc.helloDatagrams(t); n < 2 {
			t.Errorf("%s: the ClientHello came in %d datagram(s); this test means to cover one spread over two or more", c.name, n)
		}
	}
	// Not QUIC: the first datagram is no Initial, so the rule that needs
	// no server name takes the client.
	mustExchange(t, dialUDP(t, port), "ping", "plain:ping")

	harness.WaitMetrics(t, p.MetricsURL(), "the peeks counted", func(m harness.Metrics) bool {
		return m.Value("dynamic_proxy_udp_quic_peeks_total", harness.Labels{"result": "hello"}) == 4 &&
			m.Value("dynamic_proxy_udp_quic_peeks_total", harness.Labels{"result": "not_quic"}) == 1 &&
			m.Value("dynamic_proxy_connections_total", harness.Labels{"rule": "alpha"}) == 2 &&
			m.Value("dynamic_proxy_connections_total", harness.Labels{"rule": "beta"}) == 2
	})
}

// TestQUICHashBySNI: a UDP rule whose hash router keys on the server name
// (hash_key = "sni") has the proxy read each QUIC client's ClientHello, so
// every connection for a name reaches that name's backend, from any client
// port, and the names spread over both backends (keyed by the client's
// address instead, as before the router's need was honoured on UDP, they
// would all reach one), and explain gives the same answer. On both
// engines.
func TestQUICHashBySNI(t *testing.T) {
	for _, engine := range []string{"epoll", "goroutine"} {
		t.Run(engine, func(t *testing.T) {
			ca := tlstest.NewCA(t, t.TempDir(), "quic")
			a := startQUICBackend(t, ca, "alpha", "hash.quic.test", "*.hash.quic.test")
			b := startQUICBackend(t, ca, "beta", "hash.quic.test", "*.hash.quic.test")
			port := harness.FreePort(t)
			p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"
engine = %q

[routers.by_name]
plugin = "hash"
config = { hash_key = "sni" }

[[rules]]
name = "app"
protocol = "udp"
router = "by_name"
[rules.matcher]
type = "any"
[[rules.backends]]
id = "alpha"
address = %q
[[rules.backends]]
id = "beta"
address = %q
`, port, engine, a.Addr, b.Addr)))
			roots := caPool(t, ca)
			adm := mxAdminOf(t, p, "")
			const names, each = 8, 3
			reached := map[string]int{}
			for i := range names {
				name := fmt.Sprintf("n%d.hash.quic.test", i)
				first := ""
				for k := range each { // a new client socket, so a new port, each time
					got, _ := dialQUIC(t, port, name, roots).say(t, fmt.Sprintf("hello %d", k))
					if k == 0 {
						first = got
						reached[got]++
					} else if got != first {
						t.Errorf("%s: connection %d reached %s, the first %s: the server name should pick the backend", name, k+1, got, first)
					}
				}
				// "Why this backend?" gives the answer the data path did.
				q := url.Values{"client": {"127.0.0.1:40000"}, "port": {fmt.Sprint(port)}, "protocol": {"udp"}, "sni": {name}}
				x := adm.must("GET", "/api/v1/explain?"+q.Encode(), "")
				if r, _ := x["router"].(map[string]any); r == nil || r["chosen"] != first {
					t.Errorf("%s reached %s, explained %v", name, first, x["router"])
				}
			}
			hq := url.Values{"client": {"127.0.0.1:40000"}, "port": {fmt.Sprint(port)}, "protocol": {"udp"}, "host": {"a.example"}}
			if code, body := adm.call("GET", "/api/v1/explain?"+hq.Encode(), ""); code != 400 || !strings.Contains(fmt.Sprint(body["error"]), "host is TCP only") {
				t.Errorf("explain with a Host on udp: %d %v, want 400 host is TCP only", code, body)
			}
			if reached["alpha"] == 0 || reached["beta"] == 0 {
				t.Errorf("%d server names all reached one backend (%v): the router did not see them", names, reached)
			}
			harness.WaitMetrics(t, p.MetricsURL(), "the peeks counted", func(m harness.Metrics) bool {
				return m.Value("dynamic_proxy_udp_quic_peeks_total", harness.Labels{"result": "hello"}) == names*each
			})
		})
	}
}

// TestQUICClientAddressChange: a QUIC client whose UDP socket is replaced
// mid-connection (a new local port, the same connection) goes on with its
// stream on the same backend and the same proxy session, without error,
// through several rebindings (on the epoll engine these land on either
// event loop of the listener, so both the same-loop and the hand-over
// paths run).
func TestQUICClientAddressChange(t *testing.T) {
	ca := tlstest.NewCA(t, t.TempDir(), "quic")
	a := startQUICBackend(t, ca, "alpha", "app.quic.test")
	b := startQUICBackend(t, ca, "beta", "app.quic.test")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"

[[rules]]
name = "app"
protocol = "udp"
router = "round_robin"
quic = true
session_timeout = "1m"
[rules.matcher]
type = "sni"
names = ["app.quic.test"]
[[rules.backends]]
id = "alpha"
address = %q
[[rules.backends]]
id = "beta"
address = %q
`, port, a.Addr, b.Addr)))
	roots := caPool(t, ca)
	const rebinds = 6
	for k := range 2 { // two connections: round robin gives each its own backend
		qc := dialQUIC(t, port, "app.quic.test", roots)
		name, peer := qc.say(t, "before")
		for i := range rebinds {
			old, now := qc.rc.rebind(t)
			n2, p2 := qc.say(t, fmt.Sprintf("after %d", i+1))
			if n2 != name || p2 != peer {
				t.Fatalf("connection %d, rebinding %d (%s → %s): reached %s at %s, before %s at %s", k, i+1, old, now, n2, p2, name, peer)
			}
		}
		// The connection is still well: a new stream on it works too.
		ctx, cancel := context.WithTimeout(context.Background(), harness.Deadline)
		st, err := qc.conn.OpenStreamSync(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		st.SetDeadline(time.Now().Add(harness.Deadline))
		fmt.Fprintf(st, "new stream\n")
		line, err := bufio.NewReader(st).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, name+"@") {
			t.Fatalf("a new stream after the rebindings: %q, %v", line, err)
		}
		if err := qc.conn.Context().Err(); err != nil {
			t.Fatalf("connection %d ended: %v", k, context.Cause(qc.conn.Context()))
		}
	}
	harness.WaitMetrics(t, p.MetricsURL(), "the migrations counted", func(m harness.Metrics) bool {
		return m.Value("dynamic_proxy_udp_quic_migrations_total", nil) == 2*rebinds &&
			m.Value("dynamic_proxy_connections_total", harness.Labels{"rule": "app"}) == 2 &&
			m.Value("dynamic_proxy_udp_quic_connection_ids", nil) > 0
	})
}

// TestQUICKeysValidated: --validate refuses quic = true on a TCP rule and
// http_host on a UDP rule with file:line, and takes sni and alpn on a UDP
// rule.
func TestQUICKeysValidated(t *testing.T) {
	bad := harness.WriteConfig(t, `
[[rules]]
name = "web"
quic = true
[[rules.backends]]
id = "a"
address = "127.0.0.1:9"

[[rules]]
name = "h3"
protocol = "udp"
[rules.matcher]
type = "http_host"
names = ["a.test"]
[[rules.backends]]
id = "b"
address = "127.0.0.1:9"
`)
	_, stderr, code := Run(t, "--validate", "-c", bad)
	for _, want := range []string{
		`config.toml:4: rules[0].quic: only UDP rules have sessions: set protocol = "udp" or remove quic (rule "web" is tcp)`,
		`config.toml:13: rules[1].matcher.type: http_host needs a TCP rule`,
	} {
		if code != 1 || !strings.Contains(stderr, want) {
			t.Errorf("exit %d, want %q in stderr:\n%s", code, want, stderr)
		}
	}
	good := harness.WriteConfig(t, `
[[rules]]
name = "h3"
protocol = "udp"
quic = true
[rules.matcher]
all = [ { type = "sni", names = ["*.a.test"] }, { type = "alpn", protocols = ["h3"] } ]
[[rules.backends]]
id = "b"
address = "127.0.0.1:9"
`)
	if _, stderr, code := Run(t, "--validate", "-c", good); code != 0 {
		t.Errorf("a QUIC rule refused: exit %d\n%s", code, stderr)
	}
}
