package proxy

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// fdCounts counts this process's open sockets and pipe ends.
func fdCounts(t testing.TB) (sockets, pipeEnds int) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the directory's own descriptor, closed meanwhile
		}
		switch {
		case strings.HasPrefix(target, "socket:"):
			sockets++
		case strings.HasPrefix(target, "pipe:"):
			pipeEnds++
		}
	}
	return sockets, pipeEnds
}

func pooledPipes() int {
	return pipes.Free()
}

// TestIdleConnectionHoldsTwoDescriptors opens N proxied connections and
// counts descriptors in /proc/self/fd: each idle connection adds exactly its
// two sockets in the proxy (the test's own client and backend ends are the
// other two of the 4 per connection counted here) and no pipe, both before
// any byte moved and after traffic flowed on every connection and stopped.
// The only pipes left are the shared free pool's, whatever N is. Go's plain
// io.Copy would hold a pipe pair (4 more descriptors) per connection.
func TestIdleConnectionHoldsTwoDescriptors(t *testing.T) {
	const n = 100
	be := startBackend(t, echo)
	s, _ := newTestServer(t)
	addr := listen(t, s, newRoute(t, "fd", be.addr))

	sock0, pipe0 := fdCounts(t)
	pool0 := pooledPipes()
	conns := make([]*net.TCPConn, n)
	for i := range conns {
		conns[i] = dial(t, addr)
	}
	be.waitAccepted(t, n)
	harness.Eventually(t, "all connections tracked", func() bool { return s.Active() == n })
	sock1, pipe1 := fdCounts(t)
	if d := sock1 - sock0; d != 4*n {
		t.Errorf("%d idle connections added %d sockets, want %d (2 in the proxy, 2 in the test)", n, d, 4*n)
	}
	if pipe1 != pipe0 || pooledPipes() != pool0 {
		t.Errorf("idle connections that never carried a byte hold pipes: %d pipe ends before, %d after", pipe0, pipe1)
	}

	// Traffic on every connection (64 KiB each way), then idle again.
	msg := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	got := make([]byte, len(msg))
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(deadline))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("conn %d: echo %v", i, err)
		}
	}
	var sock2, pipe2, pool2 int
	harness.Eventually(t, "every pipe back in the pool", func() bool {
		pool2 = pooledPipes()
		sock2, pipe2 = fdCounts(t)
		return pipe2-2*pool2 == pipe0-2*pool0
	})
	if d := sock2 - sock0; d != 4*n {
		t.Errorf("after traffic, %d connections hold %d sockets, want %d", n, d, 4*n)
	}
	if pool2 > pipes.Max {
		t.Errorf("free pool holds %d pipes, more than its cap %d", pool2, pipes.Max)
	}
	t.Logf("%d connections: +%d sockets, +%d pipe ends (all %d pooled pipes, shared by every connection)",
		n, sock2-sock0, pipe2-pipe0, pool2)
}
