package metrics

import (
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// BenchmarkTCPConnection proxies one short connection per op (connect,
// 64 bytes each way, close) through a real proxy.Server on loopback, with
// the route's observer off and on: the difference is what counting costs a
// connection, in the same process and conditions.
//
//	go test ./internal/metrics -run - -bench TCPConnection -count 10
func BenchmarkTCPConnection(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "metrics=off"
		if on {
			name = "metrics=on"
		}
		b.Run(name, func(b *testing.B) { benchConnections(b, on) })
	}
}

func benchConnections(b *testing.B, metricsOn bool) {
	// Backend: echo 64 bytes, then close.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				if _, err := io.ReadFull(c, buf); err == nil {
					c.Write(buf)
				}
			}()
		}
	}()
	be := backend.New("bench", "b", ln.Addr().String(), 1, nil)
	rr, err := router.New("round_robin", map[string]any{}, []*backend.Backend{be})
	if err != nil {
		b.Fatal(err)
	}
	rt := &proxy.Route{Name: "bench", Protocol: "tcp", RouterName: "round_robin", Plugin: "round_robin",
		Router: rr, Backends: []*backend.Backend{be}, ConnectTimeout: 5 * time.Second}
	if metricsOn {
		m, err := New(prometheus.NewRegistry(), false)
		if err != nil {
			b.Fatal(err)
		}
		rt.Observer = m.Observer(rt)
		m.Retain([]*proxy.Route{rt})
	}
	srv := proxy.NewServer(slog.New(slog.DiscardHandler))
	pl, err := srv.ListenTCP("127.0.0.1:0", proxy.Table{Routes: []*proxy.Route{rt}})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown(b.Context())
	addr := pl.Addr().String()
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	b.ResetTimer()
	for b.Loop() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkBytesCounterShared is what a route's bytes_total costs the data
// path per add when both event loops write it at once (one cache line
// bouncing between the cores); BenchmarkBytesCounterSharded is the same
// with one padded counter per loop, as the backends' byte counts are kept.
//
//	go test ./internal/metrics -run - -bench BytesCounter -cpu 2 -count 5
func BenchmarkBytesCounterShared(b *testing.B) {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "bytes_total"})
	b.SetParallelism(1) // one goroutine per P: the two loops
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c.Add(100)
		}
	})
}

func BenchmarkBytesCounterSharded(b *testing.B) {
	var shards [2]struct {
		n atomic.Uint64
		_ [56]byte
	}
	var next atomic.Int32
	b.SetParallelism(1)
	b.RunParallel(func(pb *testing.PB) {
		s := &shards[next.Add(1)&1]
		for pb.Next() {
			s.n.Add(100)
		}
	})
}

// BenchmarkObserverConnectionParallel is BenchmarkObserverConnection (the
// metrics work of one proxied TCP connection, one read each way) from one
// goroutine per P, each as its own event loop: with -cpu 2 the two loops
// count the same route's and backend's series, each into its own shares;
// -cpu 1 is the same work on one core.
//
//	go test ./internal/metrics -run - -bench ObserverConnectionParallel -cpu 1,2 -count 5
func BenchmarkObserverConnectionParallel(b *testing.B) {
	be := backend.New("bench", "b", "127.0.0.1:1", 1, nil)
	rt := &proxy.Route{Name: "bench", Protocol: "tcp", RouterName: "round_robin", Plugin: "round_robin",
		Backends: []*backend.Backend{be}, ConnectTimeout: time.Second}
	m, err := New(prometheus.NewRegistry(), false)
	if err != nil {
		b.Fatal(err)
	}
	o := m.Observer(rt)
	m.Retain([]*proxy.Route{rt})
	b.SetParallelism(1) // one goroutine per P: the loops
	var loops atomic.Int32
	b.RunParallel(func(pb *testing.PB) {
		loop := int(loops.Add(1))
		for pb.Next() {
			o.ConnOpened(loop)
			o.Picked(loop, be)
			o.Connected(loop, be, 50*time.Microsecond, nil)
			o.BytesIn(loop, 64)
			o.BytesOut(loop, 64)
			o.ConnClosed(loop, be, proxy.EndEOF, 200*time.Microsecond, 64, 64)
		}
	})
}

// BenchmarkObserverUDPSession is the metrics work of one UDP session of one
// datagram and one reply (udp-newsession's unit): opened, picked, the
// datagram, the reply with its round trip, closed.
//
//	go test ./internal/metrics -run - -bench ObserverUDPSession -count 5
func BenchmarkObserverUDPSession(b *testing.B) {
	be := backend.New("dns", "u1", "127.0.0.1:53", 1, nil)
	rt := &proxy.Route{Name: "dns", Protocol: "udp", RouterName: "round_robin", Plugin: "round_robin",
		Backends: []*backend.Backend{be}}
	m, err := New(prometheus.NewRegistry(), false)
	if err != nil {
		b.Fatal(err)
	}
	o := m.Observer(rt)
	m.Retain([]*proxy.Route{rt})
	b.ReportAllocs()
	for b.Loop() {
		o.ConnOpened(0)
		o.Picked(0, be)
		o.Datagram(0, be, 40, nil)
		o.Reply(0, be, 120, 150*time.Microsecond)
		o.ConnClosed(0, be, proxy.EndMaxResponses, 200*time.Microsecond, 0, 0)
	}
}
