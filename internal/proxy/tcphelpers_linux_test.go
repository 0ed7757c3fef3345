package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// deadline bounds every wait in these tests: generous, because the machines
// are small and shared. A test that passes never waits this long.
const deadline = 20 * time.Second

// logRec is one captured log record.
type logRec struct {
	level slog.Level
	msg   string
	attrs map[string]any
}

// logSink captures a Server's log records so tests can wait for them.
type logSink struct {
	mu     sync.Mutex
	recs   []logRec
	notify chan struct{}
}

type sinkHandler struct {
	s     *logSink
	attrs []slog.Attr
}

func (h sinkHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h sinkHandler) WithGroup(string) slog.Handler            { return h }
func (h sinkHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return sinkHandler{h.s, append(append([]slog.Attr(nil), h.attrs...), as...)}
}
func (h sinkHandler) Handle(_ context.Context, r slog.Record) error {
	rec := logRec{level: r.Level, msg: r.Message, attrs: map[string]any{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.Resolve().Any()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.Resolve().Any()
		return true
	})
	h.s.mu.Lock()
	h.s.recs = append(h.s.recs, rec)
	close(h.s.notify)
	h.s.notify = make(chan struct{})
	h.s.mu.Unlock()
	return nil
}

// wait returns the first record (old or new) for which match is true.
func (s *logSink) wait(t testing.TB, what string, match func(logRec) bool) logRec {
	t.Helper()
	timeout := time.After(deadline)
	for {
		s.mu.Lock()
		recs, ch := s.recs, s.notify
		s.mu.Unlock()
		for _, r := range recs {
			if match(r) {
				return r
			}
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("no log record %s within %v; got %v", what, deadline, recs)
		}
	}
}

func (s *logSink) count(match func(logRec) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, r := range s.recs {
		if match(r) {
			n++
		}
	}
	return n
}

func msgIs(msg string) func(logRec) bool { return func(r logRec) bool { return r.msg == msg } }

// testEngine is the engine newTestServer's servers run (0: the default);
// TestGoroutineEngine sets it around the tests it runs again.
var testEngine Engine

// newTestServer returns a Server whose log is captured. It is shut down when
// the test ends, which also waits for every connection handler.
func newTestServer(t testing.TB) (*Server, *logSink) {
	t.Helper()
	sink := &logSink{notify: make(chan struct{})}
	s := NewServer(slog.New(sinkHandler{s: sink}))
	if testEngine != 0 {
		if err := s.SetEngine(testEngine); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown at the end of the test: %v", err)
		}
	})
	return s, sink
}

// newRoute returns a round-robin route over backends at addrs, with ids
// b0, b1, ...
func newRoute(t testing.TB, name string, addrs ...string) *Route {
	t.Helper()
	bs := make([]*backend.Backend, len(addrs))
	for i, a := range addrs {
		bs[i] = backend.New(name, fmt.Sprintf("b%d", i), a, 1, nil)
	}
	r, err := router.New("round_robin", map[string]any{}, bs)
	if err != nil {
		t.Fatal(err)
	}
	return &Route{Name: name, Protocol: "tcp", RouterName: "round_robin", Router: r, Backends: bs,
		ConnectTimeout: 30 * time.Second}
}

// listen binds a listener on 127.0.0.1 serving routes and returns its address.
func listen(t testing.TB, s *Server, routes ...*Route) string {
	t.Helper()
	return listenTable(t, s, Table{Routes: routes})
}

// listenTable binds a listener on 127.0.0.1 serving tb and returns its address.
func listenTable(t testing.TB, s *Server, tb Table) string {
	t.Helper()
	l, err := s.ListenTCP("127.0.0.1:0", tb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l.Addr().String()
}

// testBackend is a TCP server on 127.0.0.1 running handle for each
// connection. Closing it closes every connection and waits for the handlers.
type testBackend struct {
	addr     string
	ln       net.Listener
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
	accepted atomic.Int64
	notify   chan struct{} // closed and replaced on every accept
}

func startBackend(t testing.TB, handle func(c *net.TCPConn)) *testBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &testBackend{addr: ln.Addr().String(), ln: ln, notify: make(chan struct{})}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.conns = append(b.conns, c)
			b.accepted.Add(1)
			close(b.notify)
			b.notify = make(chan struct{})
			b.mu.Unlock()
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	t.Cleanup(b.close)
	return b
}

func (b *testBackend) close() {
	b.ln.Close()
	b.mu.Lock()
	for _, c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// waitAccepted waits until the backend has accepted n connections.
func (b *testBackend) waitAccepted(t testing.TB, n int64) {
	t.Helper()
	timeout := time.After(deadline)
	for {
		b.mu.Lock()
		ch := b.notify
		b.mu.Unlock()
		if b.accepted.Load() >= n {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("backend accepted %d connections, want %d", b.accepted.Load(), n)
		}
	}
}

// Backend behaviours. They copy through a buffer, never with splice(2):
// Go's splice would hold pipes of its own in this process and blur the
// descriptor counts of the proxy's.
func echo(c *net.TCPConn) {
	io.CopyBuffer(struct{ io.Writer }{c}, struct{ io.Reader }{c}, make([]byte, 32<<10))
	c.CloseWrite()
}

func sink(c *net.TCPConn) { io.Copy(io.Discard, c) }

func greetEcho(name string) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		io.WriteString(c, name+"\n")
		echo(c)
	}
}

// deadAddr returns a loopback address that refuses connections: a socket is
// bound there (so no one else can take the port) but never listens.
func deadAddr(t testing.TB) string {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port)
}

// dial connects to the proxy; the connection is closed when the test ends.
func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, deadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// dialClosed connects to a proxy listener that is expected to close the
// connection at once, and returns how long from the dial until it was
// closed, and the client's address. The proxy's reset may arrive before
// the dial returns, which counts as closed too.
func dialClosed(t testing.TB, addr string) (time.Duration, string) {
	t.Helper()
	start := time.Now()
	c, err := net.DialTimeout("tcp", addr, deadline)
	if errors.Is(err, unix.ECONNRESET) {
		return time.Since(start), ""
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitClosed(t, c)
	return time.Since(start), c.LocalAddr().String()
}

// readLine reads one "\n"-terminated line.
func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(deadline))
	defer c.SetReadDeadline(time.Time{})
	var b strings.Builder
	buf := make([]byte, 1)
	for {
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("reading a line: %v (got %q)", err, b.String())
		}
		if buf[0] == '\n' {
			return b.String()
		}
		b.WriteByte(buf[0])
	}
}

// waitClosed waits until the peer closes c (EOF or reset) and returns how
// long that took. Any data that arrives first is discarded.
func waitClosed(t testing.TB, c net.Conn) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(deadline))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, unix.ECONNRESET) || err == nil {
		return time.Since(start)
	}
	t.Fatalf("connection not closed by the proxy: %v", err)
	return 0
}
