package proxy

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// startRawDNS starts a UDP server that answers each datagram with itself
// flagged a response (a DNS answer with no records), allocating nothing
// per datagram.
func startRawDNS(t testing.TB) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n > 2 {
				buf[2] |= 0x80
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().String()
}

// listenDNSTest is a DNS listener (dns = true) over the backends addrs.
func listenDNSTest(t testing.TB, s *Server, timeout time.Duration, addrs ...string) udpTestListener {
	t.Helper()
	rt := newUDPRoute(t, "dns", addrs...)
	rt.DNS = true
	return listenUDPTable(t, s, Table{Options: ListenOptions{DNS: true, SessionTimeout: timeout}, Routes: []*Route{rt}})
}

// TestUDPDNSQueryNoAllocs: on the epoll engine, once a client and its
// backend socket are open, a query and its answer through the proxy
// allocate nothing (in the whole process, client and server included).
func TestUDPDNSQueryNoAllocs(t *testing.T) {
	s, _ := newTestServer(t)
	l := listenDNSTest(t, s, time.Minute, startRawDNS(t))
	c := udpClient(t, l.Addr())
	q := dnsTestQuery(1, "example")
	want := bytes.Clone(q)
	want[2] |= 0x80
	mustRoundTrip(t, c, q, want)
	c.SetReadDeadline(time.Now().Add(time.Hour))
	buf := make([]byte, 2048)
	var failed error
	id := uint16(1)
	allocs := testing.AllocsPerRun(500, func() {
		id++
		binary.BigEndian.PutUint16(q, id)
		if _, err := c.Write(q); err != nil {
			failed = err
		}
		n, err := c.Read(buf)
		if err != nil {
			failed = err
		} else if binary.BigEndian.Uint16(buf[:n]) != id {
			failed = errWrongID
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("%.2f allocations per DNS query through the proxy, want 0", allocs)
	}
}

var errWrongID = &net.AddrError{Err: "a reply with another id"}

// TestUDPDNSSocketsReleased: many clients' queries over three backends use
// one socket per backend (per event loop), not one per client; once idle
// for session_timeout every client ends and every socket is closed.
func TestUDPDNSSocketsReleased(t *testing.T) {
	s, _ := newTestServer(t)
	l := listenDNSTest(t, s, 200*time.Millisecond, startRawDNS(t), startRawDNS(t), startRawDNS(t))
	base := openFds(t)
	const clients = 40
	var cs []*net.UDPConn
	for i := range clients {
		c := udpClient(t, l.Addr())
		q := dnsTestQuery(uint16(i), "example")
		for k := range 3 { // three queries each: every backend once
			binary.BigEndian.PutUint16(q, uint16(100*i+k))
			want := bytes.Clone(q)
			want[2] |= 0x80
			mustRoundTrip(t, c, q, want)
		}
		cs = append(cs, c)
	}
	if n := l.Sessions(); n != clients {
		t.Errorf("%d sessions, want one per client (%d)", n, clients)
	}
	// Client sockets, plus at most one proxy socket per backend and loop.
	if n := openFds(t) - base - clients; n > 3*s.Workers() {
		t.Errorf("%d backend sockets for %d clients on 3 backends, want at most %d", n, clients, 3*s.Workers())
	}
	for _, c := range cs {
		c.Close()
	}
	harness.Eventually(t, "every client ended and every backend socket closed", func() bool {
		return l.Sessions() == 0 && s.UDP.Sessions.Load() == 0 && openFds(t) <= base
	})
	if got := s.UDP.Ended[EndIdleTimeout].Load(); got != clients {
		t.Errorf("%d clients ended by idle_timeout, want %d", got, clients)
	}
}

// BenchmarkUDPDNSRoundTrip is BenchmarkUDPRoundTrip through a dns = true
// listener: one query and its answer at a time, each query parsed, picked,
// given a place in the backend socket's id table and matched on its way
// back.
func BenchmarkUDPDNSRoundTrip(b *testing.B) {
	s, _ := newTestServer(b)
	l := listenDNSTest(b, s, time.Minute, startRawDNS(b))
	c := udpClient(b, l.Addr())
	q := dnsTestQuery(1, "example")
	want := bytes.Clone(q)
	want[2] |= 0x80
	mustRoundTrip(b, c, q, want)
	c.SetReadDeadline(time.Now().Add(time.Hour))
	buf := make([]byte, 2048)
	var id uint16
	b.ReportAllocs()
	for b.Loop() {
		id++
		binary.BigEndian.PutUint16(q, id)
		if _, err := c.Write(q); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	checkNoDrops(b, s)
}
