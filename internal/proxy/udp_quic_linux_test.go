//go:build linux

package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/dynamic-proxy/dynamic-proxy/internal/peek"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// quicInitials returns the datagrams a real quic-go client sends up to the
// one that completes its ClientHello for serverName: two or more with Go's
// default key share, which makes the hello larger than one packet; one
// when curves (e.g. X25519 alone) keep it small.
func quicInitials(t testing.TB, serverName string, curves ...tls.CurveID) [][]byte {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if c, err := quic.DialAddr(ctx, pc.LocalAddr().String(), &tls.Config{ServerName: serverName, NextProtos: []string{"h3"}, CurvePreferences: curves}, nil); err == nil {
			c.CloseWithError(0, "")
		}
	}()
	defer func() { cancel(); <-done }()
	var q peek.QUICInitial
	var got [][]byte
	buf := make([]byte, 65535)
	pc.SetReadDeadline(time.Now().Add(deadline))
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("reading the client's datagrams: %v", err)
		}
		got = append(got, slices.Clone(buf[:n]))
		if _, err := q.Add(buf[:n]); err == nil {
			if want := 2 - min(len(curves), 1); len(got) < want || len(curves) > 0 && len(got) != 1 {
				t.Fatalf("the ClientHello took %d datagrams; the test needs %s", len(got), map[bool]string{true: "one", false: "two or more"}[len(curves) > 0])
			}
			return got
		} else if !errors.Is(err, peek.ErrNeedMore) {
			t.Fatal(err)
		}
	}
}

// forEngine runs f on both engines.
func forEngine(t *testing.T, f func(t *testing.T)) {
	for _, e := range []Engine{EngineEpoll, EngineGoroutine} {
		t.Run(e.String(), func(t *testing.T) {
			testEngine = e
			defer func() { testEngine = 0 }()
			f(t)
		})
	}
}

// TestUDPQUICPeek: a QUIC client's ClientHello over two Initials picks the
// sni rule, and both datagrams reach its backend unchanged and in order; a
// client whose second Initial never comes is routed without a name at
// peek_timeout (its held datagram forwarded then); a datagram that is not
// QUIC goes at once to the rule that needs no name.
func TestUDPQUICPeek(t *testing.T) {
	initials := quicInitials(t, "a.quic.test")
	forEngine(t, func(t *testing.T) {
		s, _ := newTestServer(t)
		named := newUDPRoute(t, "named", startUDPBackend(t, namedEcho("A")).addr)
		named.Match = MatchSNI{Names: NewNameSet([]string{"a.quic.test"})}
		other := newUDPRoute(t, "other", startUDPBackend(t, namedEcho("B")).addr)
		other.Match = MatchAny{}
		l := listenUDPTable(t, s, Table{Options: ListenOptions{PeekTimeout: 300 * time.Millisecond}, Routes: []*Route{named, other}})

		c := udpClient(t, l.Addr())
		for _, d := range initials {
			if _, err := c.Write(d); err != nil {
				t.Fatal(err)
			}
		}
		for i, d := range initials {
			if got := readDatagram(t, c); !bytes.Equal(got, append([]byte("A:"), d...)) {
				t.Fatalf("reply %d: %d bytes %.8q, want A: and the Initial of %d bytes", i, len(got), got, len(d))
			}
		}

		late := udpClient(t, l.Addr())
		start := time.Now()
		if _, err := late.Write(initials[0]); err != nil {
			t.Fatal(err)
		}
		if got := readDatagram(t, late); !bytes.Equal(got, append([]byte("B:"), initials[0]...)) {
			t.Fatalf("the incomplete hello: got %.8q, want it forwarded to B", got)
		}
		if took := time.Since(start); took < 300*time.Millisecond {
			t.Errorf("routed after %v, before peek_timeout", took)
		}

		mustRoundTrip(t, udpClient(t, l.Addr()), []byte("not quic"), []byte("B:not quic"))

		harness.Eventually(t, "the peeks counted", func() bool {
			q := &s.QUIC
			return q.Peeks[QUICPeekHello].Load() == 1 && q.Peeks[QUICPeekTimeout].Load() == 1 && q.Peeks[QUICPeekNotQUIC].Load() == 1
		})
	})
}

// longHeader is a QUIC v1 Handshake-type long header packet with the ids
// given and some payload.
func longHeader(dcid, scid []byte, payload string) []byte {
	p := []byte{0xe0}
	p = binary.BigEndian.AppendUint32(p, peek.QUICv1)
	p = append(p, byte(len(dcid)))
	p = append(p, dcid...)
	p = append(p, byte(len(scid)))
	p = append(p, scid...)
	return append(p, payload...)
}

// TestUDPQUICFollowsConnectionID: once the backend's long header named its
// connection id, short header datagrams carrying it from ever new client
// ports (which the kernel spreads over the epoll engine's shards) reach the
// same session — the backend sees one source — and the replies go to the
// new port. A rule without quic = true opens a new session instead.
func TestUDPQUICFollowsConnectionID(t *testing.T) {
	serverID := []byte{0xaa, 0xbb, 0xcc, 0xdd}
	forEngine(t, func(t *testing.T) {
		for _, follow := range []bool{true, false} {
			s, _ := newTestServer(t)
			be := startUDPBackend(t, func(p []byte) [][]byte {
				if p[0]&0x80 != 0 { // the client's long header: answer with the server's id
					return [][]byte{longHeader([]byte("client01"), serverID, "server hello")}
				}
				return namedEcho("B")(p)
			})
			rt := newUDPRoute(t, "q", be.addr)
			rt.QUIC = follow
			l := listenUDPTest(t, s, rt)
			first := udpClient(t, l.Addr())
			mustRoundTrip(t, first, longHeader([]byte("original"), []byte("client01"), "hello"), longHeader([]byte("client01"), serverID, "server hello"))
			short := append(append([]byte{0x40}, serverID...), "data"...)
			const moves = 8
			for range moves {
				c := udpClient(t, l.Addr())
				mustRoundTrip(t, c, short, append([]byte("B:"), short...))
			}
			sources, want := be.sourceCount(), 1
			if !follow {
				want = 1 + moves
			}
			if sources != want {
				t.Errorf("quic = %v: the backend saw %d sources, want %d", follow, sources, want)
			}
			if got, want := s.QUIC.Migrations.Load(), map[bool]int64{true: moves, false: 0}[follow]; got != want {
				t.Errorf("quic = %v: %d migrations, want %d", follow, got, want)
			}
		}
	})
}

// TestUDPQUICLearnsTheDecidingInitial: the Initial that completes a
// ClientHello (here the only one) is learnt like any other client long
// header, so the same Initial resent from a new client port (a NAT
// rebinding during the handshake) reaches the same session.
func TestUDPQUICLearnsTheDecidingInitial(t *testing.T) {
	initial := quicInitials(t, "a.quic.test", tls.X25519)[0]
	forEngine(t, func(t *testing.T) {
		s, _ := newTestServer(t)
		be := startUDPBackend(t, namedEcho("A"))
		rt := newUDPRoute(t, "named", be.addr)
		rt.Match = MatchSNI{Names: NewNameSet([]string{"a.quic.test"})}
		rt.QUIC = true
		l := listenUDPTest(t, s, rt)
		want := append([]byte("A:"), initial...)
		mustRoundTrip(t, udpClient(t, l.Addr()), initial, want)
		mustRoundTrip(t, udpClient(t, l.Addr()), initial, want)
		if n := be.sourceCount(); n != 1 {
			t.Errorf("the backend saw %d sources, want 1 (the resent Initial followed its session)", n)
		}
		if got := s.QUIC.Migrations.Load(); got != 1 {
			t.Errorf("%d migrations, want 1", got)
		}
	})
}

// TestQUICConnectionIDTable: ids are learnt from long headers only, the
// server's source id over a client's claim, never a client's claim over
// another session's id; short headers are looked up at the server ids'
// length; a session's end forgets its ids.
func TestQUICConnectionIDTable(t *testing.T) {
	var st QUICStats
	tb := quicCIDs[int]{stats: &st}
	var q1, q2 udpQUIC
	tb.learn(&q1, 1, longHeader([]byte("orig-dcid"), []byte("cli1"), ""), false)
	tb.learn(&q1, 1, append([]byte{0x40}, "srv1xxxx"...), true) // a short header: nothing to learn
	if o, ok := tb.lookup(longHeader([]byte("orig-dcid"), nil, "")); !ok || o != 1 {
		t.Fatalf("long header lookup: %v %v", o, ok)
	}
	tb.learn(&q2, 2, longHeader([]byte("orig-dcid"), nil, ""), false) // another client claims it: refused
	if o, _ := tb.lookup(longHeader([]byte("orig-dcid"), nil, "")); o != 1 {
		t.Fatalf("a client took another session's id: owner %d", o)
	}
	tb.learn(&q1, 1, longHeader([]byte("cli1"), []byte("srv1"), ""), true)
	if o, ok := tb.lookup(append([]byte{0x41}, "srv1 and the rest"...)); !ok || o != 1 {
		t.Fatalf("short header lookup: %v %v", o, ok)
	}
	if _, ok := tb.lookup(append([]byte{0x41}, "srv2 and the rest"...)); ok {
		t.Fatal("an unknown id found")
	}
	tb.learn(&q2, 2, longHeader([]byte("x"), []byte("orig-dcid"), ""), true) // the server's word wins over a claim
	if o, _ := tb.lookup(longHeader([]byte("orig-dcid"), nil, "")); o != 2 {
		t.Fatalf("the server's id did not replace a client's claim: owner %d", o)
	}
	if n := st.ConnectionIDs.Load(); n != 2 {
		t.Fatalf("%d ids known, want 2", n)
	}
	tb.forget(&q1, 1)
	if _, ok := tb.lookup(append([]byte{0x41}, "srv1 and the rest"...)); ok {
		t.Fatal("a forgotten id found")
	}
	if o, ok := tb.lookup(longHeader([]byte("orig-dcid"), nil, "")); !ok || o != 2 {
		t.Fatalf("forgetting session 1 dropped session 2's id: %v %v", o, ok)
	}
	tb.forget(&q2, 2)
	tb.learn(&q2, 2, longHeader([]byte("x"), []byte("late"), ""), true) // a reply read as the session ended
	if n := st.ConnectionIDs.Load(); n != 0 || len(tb.m) != 0 {
		t.Fatalf("%d ids counted, %d in the table after every session ended", n, len(tb.m))
	}
}

// TestQUICPeeksBounded: beyond the datagrams a shard may hold, a client
// whose hello needs more is decided at once (overflow), and nothing stays
// held.
func TestQUICPeeksBounded(t *testing.T) {
	initials := quicInitials(t, "a.quic.test")
	var ps quicPeeks[int]
	mk := func() int { return 0 }
	var clients []*quicPeek[int]
	for i := 0; ; i++ {
		client := netipFrom(i)
		pk, decided := ps.feed(client, initials[0], 1, mk)
		if decided {
			if pk.result != QUICPeekOverflow || i != maxQUICPeekHeld && ps.bytes+len(initials[0]) <= maxQUICPeekBytes {
				t.Fatalf("client %d decided with %v (held %d datagrams, %d bytes)", i, pk.result, ps.n, ps.bytes)
			}
			break
		}
		clients = append(clients, pk)
	}
	var expired int
	ps.expire(2, func(pk *quicPeek[int]) { expired++ })
	if expired != len(clients) || ps.n != 0 || ps.bytes != 0 || len(ps.m) != 0 || ps.next() != 0 {
		t.Fatalf("expired %d of %d; left %d datagrams, %d bytes, %d clients", expired, len(clients), ps.n, ps.bytes, len(ps.m))
	}
}

func netipFrom(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(i >> 8), byte(i)}), 1000)
}
