package metrics

import (
	"io"
	"log/slog"
	"net"
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
