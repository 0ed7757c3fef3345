//go:build linux

package proxy

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestConnsPages: a page holds the limit smallest ids above after, in
// order, whatever order the engine finds them in; total counts every
// selected connection; next is set only when more are left.
func TestConnsPages(t *testing.T) {
	p := &pageSink{after: 3, limit: 4}
	for _, id := range []uint64{9, 1, 12, 5, 3, 7, 4, 11, 2, 6} {
		if p.want(id) {
			p.put(ConnEntry{ConnIdent: ConnIdent{ID: id}}, nil)
		}
	}
	if p.total != 10 || p.beyond != 7 || len(p.h.e) != 4 {
		t.Fatalf("total %d, beyond %d, kept %d", p.total, p.beyond, len(p.h.e))
	}
	var f ConnFilter
	f.Client = netip.MustParsePrefix("10.0.0.0/8")
	if !f.match("tcp", 1, nil, nil, netip.MustParseAddrPort("[::ffff:10.1.2.3]:80")) {
		t.Error("a v4-mapped client is not in its IPv4 prefix")
	}
	if f.match("tcp", 1, nil, nil, netip.MustParseAddrPort("192.168.1.1:80")) {
		t.Error("a client outside the prefix matched")
	}
}

// TestConnsListAndClose lists the connections of a server with a filter
// and pages, and closes one by id: its client sees the end, the others
// stay open.
func TestConnsListAndClose(t *testing.T) {
	s, _ := newTestServer(t)
	be := startBackend(t, echo)
	addr := listen(t, s, newRoute(t, "web", be.addr))
	var cs []*net.TCPConn
	for range 5 {
		c := dial(t, addr)
		c.Write([]byte("hi\n"))
		if got := readLine(t, c); got != "hi" {
			t.Fatalf("echo %q", got)
		}
		cs = append(cs, c)
	}
	// A direction's bytes are counted once its write returns, which can be
	// just after the echo reached the client.
	harness.Eventually(t, "every connection's bytes counted", func() bool {
		for _, e := range s.Conns(ConnFilter{Rule: "web"}, 0, 10).Conns {
			if e.BytesIn != 3 || e.BytesOut != 3 {
				return false
			}
		}
		return true
	})
	all := s.Conns(ConnFilter{Rule: "web"}, 0, 3)
	if all.Total != 5 || len(all.Conns) != 3 || all.Next != all.Conns[2].ID {
		t.Fatalf("page 1: total %d, %d entries, next %d", all.Total, len(all.Conns), all.Next)
	}
	rest := s.Conns(ConnFilter{Rule: "web"}, all.Next, 3)
	if len(rest.Conns) != 2 || rest.Next != 0 {
		t.Fatalf("page 2: %d entries, next %d", len(rest.Conns), rest.Next)
	}
	e := all.Conns[0]
	if e.Protocol != "tcp" || e.Backend != "b0" || e.State != StateEstablished || e.BytesIn != 3 || e.BytesOut != 3 || e.Local.String() != addr {
		t.Errorf("entry %+v", e)
	}
	last := s.LastConnID()
	s.SkipConnIDs(last + 1000)
	s.SkipConnIDs(last) // never goes back
	if got := s.newIdent(time.Now()).ID; got != last+1001 {
		t.Errorf("after SkipConnIDs(%d): id %d", last+1000, got)
	}
	if s.Conns(ConnFilter{Rule: "other"}, 0, 10).Total != 0 {
		t.Error("a filter on another rule selected connections")
	}
	var victim *net.TCPConn
	for _, c := range cs {
		if addrPort(c.LocalAddr()) == e.Client {
			victim = c
		}
	}
	if victim == nil {
		t.Fatalf("no client at %v", e.Client)
	}
	if n := s.CloseConns(ConnFilter{ID: e.ID}, EndClosed); n != 1 {
		t.Fatalf("closed %d", n)
	}
	waitClosed(t, victim)
	harness.Eventually(t, "four connections left", func() bool { return s.Conns(ConnFilter{}, 0, 10).Total == 4 })
	for _, c := range cs {
		if c != victim {
			c.Write([]byte("still\n"))
			if got := readLine(t, c); got != "still" {
				t.Fatalf("echo %q", got)
			}
		}
	}
}

// BenchmarkConnsPage: a page of 100 of n open connections (the admin
// API's default), read from the loops.
func BenchmarkConnsPage(b *testing.B) {
	const n = 2000
	s, _ := newTestServer(b)
	be := startBackend(b, echo)
	addr := listen(b, s, newRoute(b, "web", be.addr))
	for range n {
		c := dial(b, addr)
		c.Write([]byte("x"))
	}
	harness.Eventually(b, "every connection relayed", func() bool { return s.Conns(ConnFilter{}, 0, 1).Total == n })
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		if p := s.Conns(ConnFilter{Backend: "b0"}, 0, 100); len(p.Conns) != 100 {
			b.Fatal(len(p.Conns))
		}
	}
	b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N)/n, "ns/conn")
}
