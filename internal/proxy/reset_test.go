package proxy

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns the two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestResetByPeer: after a read saw EOF, resetByPeer says whether the peer
// in fact reset the connection — also when a write on the same socket
// consumed the reset's error first, which is what makes the read see EOF.
func TestResetByPeer(t *testing.T) {
	t.Run("reset, error taken by a write", func(t *testing.T) {
		a, b := tcpPair(t)
		b.SetLinger(0)
		b.Close()
		a.SetDeadline(time.Now().Add(5 * time.Second))
		var werr error
		for werr == nil { // until the reset has arrived and a write reported it
			_, werr = a.Write([]byte("x"))
		}
		if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(werr, syscall.EPIPE) {
			t.Fatalf("write after the peer's reset: %v", werr)
		}
		if n, err := a.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("read after the write took the reset: %d, %v; want a plain EOF (what the copy sees)", n, err)
		}
		var fin atomic.Bool
		if !resetByPeer(rawConn(t, a), &fin) {
			t.Fatal("a reset whose error a write consumed was taken for an orderly end")
		}
	})
	t.Run("orderly FIN", func(t *testing.T) {
		a, b := tcpPair(t)
		b.CloseWrite()
		if n, err := a.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("read: %d, %v", n, err)
		}
		var fin atomic.Bool
		if resetByPeer(rawConn(t, a), &fin) {
			t.Fatal("the peer's FIN was taken for a reset")
		}
	})
	t.Run("both FINs", func(t *testing.T) {
		a, b := tcpPair(t)
		var fin atomic.Bool
		fin.Store(true)
		a.CloseWrite()
		if n, err := b.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("peer read: %d, %v", n, err)
		}
		b.CloseWrite()
		if n, err := a.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("read: %d, %v", n, err)
		}
		if resetByPeer(rawConn(t, a), &fin) {
			t.Fatal("an orderly close after our own FIN was taken for a reset")
		}
	})
}

func rawConn(t *testing.T, c *net.TCPConn) syscall.RawConn {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return rc
}
