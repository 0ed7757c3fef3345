package health

import (
	"context"
	"net"
	"testing"
)

// BenchmarkProbeTCPConnect is the cost of one TCP connect check on loopback.
func BenchmarkProbeTCPConnect(b *testing.B) {
	s := startTCP(b, func(net.Conn, int64) {})
	c := check(b, "tcp", s.addr, nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Probe(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
