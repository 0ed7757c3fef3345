package health

import (
	"bytes"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// deadline bounds every wait in these tests.
const deadline = 20 * time.Second

// tcpServer is a TCP backend on 127.0.0.1 that can be stopped and started
// again on the same address. handle serves each connection; n counts
// connections from 1 since the server was created.
type tcpServer struct {
	t      testing.TB
	addr   string
	handle func(c net.Conn, n int64)

	mu       sync.Mutex
	ln       net.Listener
	wg       sync.WaitGroup
	accepted atomic.Int64
}

func startTCP(t testing.TB, handle func(c net.Conn, n int64)) *tcpServer {
	t.Helper()
	s := &tcpServer{t: t, addr: "127.0.0.1:0", handle: handle}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *tcpServer) start() {
	s.t.Helper()
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.ln, s.addr = ln, ln.Addr().String()
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := s.accepted.Add(1)
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(deadline))
				if s.handle != nil {
					s.handle(c, n)
				}
			}()
		}
	}()
}

// stop closes the listener (new connections are refused) and waits for the
// connections being served.
func (s *tcpServer) stop() {
	s.mu.Lock()
	ln := s.ln
	s.ln = nil
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	s.wg.Wait()
}

// udpServer answers each datagram with reply(req, n); a nil reply is silence.
type udpServer struct {
	addr     string
	pc       net.PacketConn
	received atomic.Int64
	done     chan struct{}
}

func startUDP(t testing.TB, reply func(req []byte, n int64) []byte) *udpServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &udpServer{addr: pc.LocalAddr().String(), pc: pc, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			k := s.received.Add(1)
			if r := reply(buf[:n], k); r != nil {
				pc.WriteTo(r, from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-s.done })
	return s
}

// check compiles a check of address with the test's usual settings changed
// by edit.
func check(t testing.TB, protocol, address string, edit func(*config.HealthCheck)) *Check {
	t.Helper()
	hc := config.HealthCheck{
		Enabled:         true,
		Interval:        config.Duration(30 * time.Millisecond),
		Timeout:         config.Duration(20 * time.Millisecond),
		Retries:         3,
		Rise:            2,
		PassiveWindow:   config.Duration(time.Second),
		PassiveCooldown: config.Duration(time.Second),
	}
	if edit != nil {
		edit(&hc)
	}
	c, err := Compile(protocol, address, hc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// logBuffer is a concurrency-safe log sink.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) lines(sub string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return out
}

func newLog() (*slog.Logger, *logBuffer) {
	lb := &logBuffer{}
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}
