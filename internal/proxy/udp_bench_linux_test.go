package proxy

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// startRawEcho starts a UDP echo server that allocates nothing per datagram.
func startRawEcho(t testing.TB) string {
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
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return c.LocalAddr().String()
}

// echoPath is a client with an open session through a proxy to an echo
// backend.
func echoPath(t testing.TB) (*Server, *net.UDPConn) {
	s, _ := newTestServer(t)
	l := listenUDPTest(t, s, newUDPRoute(t, "bench", startRawEcho(t)))
	c := udpClient(t, l.Addr())
	mustRoundTrip(t, c, []byte("warm up"), []byte("warm up"))
	c.SetReadDeadline(time.Now().Add(time.Hour))
	return s, c
}

// TestUDPForwardNoAllocs: once a session is open, a datagram's round trip
// through the proxy (client → backend → client) allocates nothing — in the
// whole process, client and echo server included.
func TestUDPForwardNoAllocs(t *testing.T) {
	_, c := echoPath(t)
	p, buf := make([]byte, 512), make([]byte, 2048)
	var failed error
	allocs := testing.AllocsPerRun(500, func() {
		if _, err := c.Write(p); err != nil {
			failed = err
		}
		if _, err := c.Read(buf); err != nil {
			failed = err
		}
	})
	if failed != nil {
		t.Fatal(failed)
	}
	if allocs != 0 {
		t.Errorf("%.2f allocations per datagram round trip, want 0", allocs)
	}
}

// BenchmarkUDPRoundTrip is the per-datagram path: one request and its
// reply through the proxy, one at a time (latency-bound).
func BenchmarkUDPRoundTrip(b *testing.B) {
	s, c := echoPath(b)
	p, buf := make([]byte, 64), make([]byte, 2048)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.Write(p); err != nil {
			b.Fatal(err)
		}
		if _, err := c.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	checkNoDrops(b, s)
}

// BenchmarkUDPStream is many clients keeping datagrams in flight through
// one listener: the throughput path, with batches of 32 messages per
// recvmmsg/sendmmsg and, to measure what batching brings, of 1.
func BenchmarkUDPStream(b *testing.B) {
	for _, n := range []int{batchSize, 1} {
		b.Run(fmt.Sprintf("batch=%d", n), func(b *testing.B) { benchStream(b, n) })
	}
}

func benchStream(b *testing.B, batch int) {
	s, _ := newTestServer(b)
	l, err := s.listenUDPEpoll("127.0.0.1:0", Table{Routes: []*Route{newUDPRoute(b, "bench", startRawEcho(b))}}, udpOptions{batch: batch})
	if err != nil {
		b.Fatal(err)
	}
	cutOnCleanup(b, l)
	const clients, window = 16, 8
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		conns[i] = udpClient(b, l.Addr())
		conns[i].SetReadBuffer(1 << 20)
	}
	per := b.N/clients + 1
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, buf := make([]byte, 64), make([]byte, 2048)
			for range window {
				c.Write(p)
			}
			c.SetReadDeadline(time.Now().Add(deadline))
			for i := 0; i < per; i++ {
				if _, err := c.Read(buf); err != nil {
					b.Error(err)
					return
				}
				if i+window < per {
					c.Write(p)
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkUDPSessionChurn is DNS-shaped traffic: every request from a new
// client socket, one answer, max_responses = 1: a session per datagram.
func BenchmarkUDPSessionChurn(b *testing.B) {
	s, _ := newTestServer(b)
	rt := newUDPRoute(b, "churn", startRawEcho(b))
	rt.MaxResponses = 1
	l := listenUDPTest(b, s, rt)
	const workers = 8
	per := b.N/workers + 1
	b.ResetTimer()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, buf := make([]byte, 64), make([]byte, 2048)
			for range per {
				c, err := net.DialUDP("udp", nil, l.Addr().(*net.UDPAddr))
				if err != nil {
					b.Error(err)
					return
				}
				c.SetReadDeadline(time.Now().Add(deadline))
				c.Write(p)
				if _, err := c.Read(buf); err != nil {
					b.Error(err)
				}
				c.Close()
			}
		}()
	}
	wg.Wait()
}
