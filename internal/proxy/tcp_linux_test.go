package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// writeStream writes n deterministic pseudo-random bytes (seeded by seed) to w.
func writeStream(w io.Writer, seed uint64, n int64) error {
	var key [32]byte
	key[0] = byte(seed)
	_, err := io.CopyN(w, rand.NewChaCha8(key), n)
	return err
}

func streamSum(seed uint64, n int64) [32]byte {
	h := sha256.New()
	writeStream(h, seed, n)
	return [32]byte(h.Sum(nil))
}

type sumResult struct {
	sum [32]byte
	n   int64
	err error
}

// TestForward10MiBEachWay sends 10 MiB each way at the same time through the
// proxy and compares SHA-256 checksums and byte counts on both ends, and the
// access log's byte counts.
func TestForward10MiBEachWay(t *testing.T) {
	const size = 10 << 20
	atBackend := make(chan sumResult, 1)
	be := startBackend(t, func(c *net.TCPConn) {
		werr := make(chan error, 1)
		go func() {
			err := writeStream(c, 2, size)
			c.CloseWrite()
			werr <- err
		}()
		h := sha256.New()
		n, err := io.Copy(h, c)
		if e := <-werr; err == nil {
			err = e
		}
		atBackend <- sumResult{[32]byte(h.Sum(nil)), n, err}
	})
	s, logs := newTestServer(t)
	rt := newRoute(t, "big", be.addr)
	rt.AccessLog = true
	rt.IdleTimeout = time.Minute
	c := dial(t, listen(t, s, rt))
	c.SetDeadline(time.Now().Add(deadline))

	werr := make(chan error, 1)
	go func() {
		err := writeStream(c, 1, size)
		c.CloseWrite()
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatalf("client read: %v after %d bytes", err, n)
	}
	if err := <-werr; err != nil {
		t.Fatalf("client write: %v", err)
	}
	if n != size || [32]byte(h.Sum(nil)) != streamSum(2, size) {
		t.Errorf("client received %d bytes with a different checksum than the backend sent", n)
	}
	r := <-atBackend
	if r.err != nil || r.n != size || r.sum != streamSum(1, size) {
		t.Errorf("backend received %d bytes (err %v), checksum match %v", r.n, r.err, r.sum == streamSum(1, size))
	}
	rec := logs.wait(t, "access log", msgIs("connection closed"))
	if rec.attrs["bytes_in"] != int64(size) || rec.attrs["bytes_out"] != int64(size) || rec.attrs["end"] != "eof" {
		t.Errorf("access log %v, want bytes_in=bytes_out=%d end=eof", rec.attrs, size)
	}
}

// TestHalfClose: a client that shuts its write side still receives the
// backend's whole reply, which the backend only sends after it has seen
// the client's EOF; and the other way round, a backend that shuts its write
// side first still receives what the client sends afterwards.
func TestHalfClose(t *testing.T) {
	t.Run("client shuts first", func(t *testing.T) {
		const reply = 1 << 20
		be := startBackend(t, func(c *net.TCPConn) {
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil { // until the client's EOF
				return
			}
			c.Write(h.Sum(nil))
			writeStream(c, 3, reply)
		})
		s, _ := newTestServer(t)
		c := dial(t, listen(t, s, newRoute(t, "hc", be.addr)))
		c.SetDeadline(time.Now().Add(deadline))
		req := bytes.Repeat([]byte("request "), 8192)
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("after CloseWrite, reading the reply: %v (got %d bytes)", err, len(got))
		}
		want := sha256.Sum256(req)
		if len(got) != 32+reply || !bytes.Equal(got[:32], want[:]) {
			t.Fatalf("got %d bytes, want %d", len(got), 32+reply)
		}
		h := sha256.New()
		h.Write(got[32:])
		if [32]byte(h.Sum(nil)) != streamSum(3, reply) {
			t.Fatal("reply corrupted")
		}
	})
	t.Run("backend shuts first", func(t *testing.T) {
		got := make(chan []byte, 1)
		be := startBackend(t, func(c *net.TCPConn) {
			io.WriteString(c, "bye")
			c.CloseWrite()
			b, _ := io.ReadAll(c)
			got <- b
		})
		s, _ := newTestServer(t)
		c := dial(t, listen(t, s, newRoute(t, "hc2", be.addr)))
		c.SetDeadline(time.Now().Add(deadline))
		b, err := io.ReadAll(c) // until the backend's EOF
		if err != nil || string(b) != "bye" {
			t.Fatalf("read %q, %v", b, err)
		}
		if _, err := io.WriteString(c, "still here"); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		select {
		case b := <-got:
			if string(b) != "still here" {
				t.Fatalf("backend got %q after its own CloseWrite", b)
			}
		case <-time.After(deadline):
			t.Fatal("backend never saw the client's EOF")
		}
	})
}

// TestBurstQueuedWithNothingMore: a burst the proxy reads over more than
// one turn (one read a turn here, from a 512-byte buffer) while the client,
// its connection open, sends nothing more. The sockets are edge-triggered,
// so no new event says that bytes are still queued on the client socket:
// the loop must come back to them by itself.
func TestBurstQueuedWithNothingMore(t *testing.T) {
	const size = 256 << 10
	be := startBackend(t, func(c *net.TCPConn) {
		h := sha256.New()
		if _, err := io.CopyN(h, c, size); err != nil {
			return
		}
		c.Write(h.Sum(nil))
	})
	s, _ := newTestServer(t)
	s.turnReads = 1
	rt := newRoute(t, "burst", be.addr)
	rt.BufferSize = 512
	c := dial(t, listen(t, s, rt))
	c.SetDeadline(time.Now().Add(deadline))
	var b bytes.Buffer
	writeStream(&b, 7, size)
	if _, err := c.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	if _, err := io.ReadFull(c, sum[:]); err != nil {
		t.Fatalf("the backend's checksum of the burst: %v", err)
	}
	if sum != streamSum(7, size) {
		t.Fatal("the backend received the burst altered")
	}
}

// TestConcurrent500 holds 500 proxied connections open at once, each
// echoing its own payload.
func TestConcurrent500(t *testing.T) {
	const n = 500
	be := startBackend(t, echo)
	s, _ := newTestServer(t)
	addr := listen(t, s, newRoute(t, "many", be.addr))
	release := make(chan struct{})
	errs := make(chan error, n)
	ready := make(chan struct{}, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", addr, deadline)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * deadline))
			msg := bytes.Repeat([]byte(fmt.Sprintf("%04d", i)), 256)
			if _, err := c.Write(msg); err != nil {
				errs <- err
				return
			}
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("conn %d: echo mismatch (%v)", i, err)
				return
			}
			ready <- struct{}{}
			<-release
		}()
	}
	timeout := time.After(2 * deadline)
	for i := 0; i < n; i++ {
		select {
		case <-ready:
		case err := <-errs:
			close(release)
			wg.Wait()
			t.Fatal(err)
		case <-timeout:
			close(release)
			wg.Wait()
			t.Fatalf("only %d of %d connections echoed", i, n)
		}
	}
	if a := s.Active(); a != n {
		t.Errorf("Active() = %d with %d connections open", a, n)
	}
	close(release)
	wg.Wait()
	harness.Eventually(t, "every connection to end", func() bool { return s.Active() == 0 })
	if got := s.Accepted(); got != n {
		t.Errorf("Accepted = %d, want %d", got, n)
	}
}

// TestDeadBackendSkipped: dials that fail move on to the next backend, each
// backend dialled at most once per client connection.
func TestDeadBackendSkipped(t *testing.T) {
	live := startBackend(t, greetEcho("live"))
	s, logs := newTestServer(t)
	rt := newRoute(t, "skip", deadAddr(t), deadAddr(t), live.addr)
	addr := listen(t, s, rt)
	for i := 0; i < 6; i++ {
		before := make([]int64, len(rt.Backends))
		for j, b := range rt.Backends {
			before[j] = b.Total()
		}
		c := dial(t, addr)
		if got := readLine(t, c); got != "live" {
			t.Fatalf("connection %d greeted by %q", i, got)
		}
		c.Close()
		for j, b := range rt.Backends {
			if d := b.Total() - before[j]; d > 1 || (j == 2 && d != 1) {
				t.Errorf("connection %d dialled backend %s %d times", i, b.ID, d)
			}
		}
	}
	if n := logs.count(msgIs("backend dial failed; trying another backend")); n == 0 {
		t.Error("no dial failure was logged")
	}
	if s.Stats.NoBackend.Load() != 0 {
		t.Errorf("NoBackend = %d, want 0", s.Stats.NoBackend.Load())
	}
}

// TestAllBackendsDeadClosesFast: when no backend accepts, the client is
// closed as soon as every backend was tried once, far sooner than the
// connect timeout.
func TestAllBackendsDeadClosesFast(t *testing.T) {
	s, logs := newTestServer(t)
	rt := newRoute(t, "dead", deadAddr(t), deadAddr(t), deadAddr(t))
	rt.ConnectTimeout = 30 * time.Second
	rt.AccessLog = true
	// dialClosed waits for the close for less than the connect timeout, so
	// a client held until a dial times out fails there.
	took, client := dialClosed(t, listen(t, s, rt))
	t.Logf("3 dead backends: client closed %v after its dial (connect timeout %v)", took, rt.ConnectTimeout)
	for _, b := range rt.Backends {
		if b.Total() != 1 {
			t.Errorf("backend %s dialled %d times, want 1", b.ID, b.Total())
		}
		if b.Active() != 0 {
			t.Errorf("backend %s Active = %d after a failed dial", b.ID, b.Active())
		}
	}
	harness.Eventually(t, "NoBackend counted", func() bool { return s.Stats.NoBackend.Load() == 1 })
	logs.wait(t, "no backend warning", msgIs("no backend reachable; closing client"))
	rec := logs.wait(t, "access log", msgIs("connection closed"))
	if rec.attrs["rule"] != "dead" || rec.attrs["end"] != "no_backend" || client != "" && rec.attrs["client"] != client {
		t.Errorf("access log %v, want rule=dead end=no_backend", rec.attrs)
	}
}

// TestMaxConnections: beyond max_connections (counted across listeners) a
// new connection is closed at once, never queued, and counted as rejected;
// once a connection ends there is room again.
func TestMaxConnections(t *testing.T) {
	be := startBackend(t, greetEcho("be"))
	s, _ := newTestServer(t)
	s.SetMaxConnections(2)
	rt := newRoute(t, "max", be.addr)
	a, b := listen(t, s, rt), listen(t, s, rt)
	c1 := dial(t, a)
	c2 := dial(t, b)
	for _, c := range []net.Conn{c1, c2} {
		if got := readLine(t, c); got != "be" {
			t.Fatalf("greeting %q", got)
		}
	}
	for i, addr := range []string{a, b} {
		// dialClosed fails if the connection is held (queued until one of
		// the two open ones ends, which they never do here).
		dialClosed(t, addr)
		harness.Eventually(t, "the rejection counted", func() bool { return s.Stats.Rejected.Load() == int64(i+1) })
	}
	if got := be.accepted.Load(); got != 2 {
		t.Errorf("backend saw %d connections, want 2: rejected ones must not reach it", got)
	}
	c1.Close()
	harness.Eventually(t, "the closed connection to end", func() bool { return s.Active() == 1 })
	c4 := dial(t, a)
	if got := readLine(t, c4); got != "be" {
		t.Fatalf("after a connection ended, a new one was not served (%q)", got)
	}
	if got := s.Stats.Rejected.Load(); got != 2 {
		t.Errorf("Rejected = %d, want 2", got)
	}
}

// TestIdleTimeout: a connection idle both ways ends after idle_timeout; one
// that is busy in only one direction does not.
func TestIdleTimeout(t *testing.T) {
	const idle = time.Second
	const tick, busy = 100 * time.Millisecond, 3 * idle
	ticks := int(busy / tick)

	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		be := startBackend(t, sink)
		s, logs := newTestServer(t)
		rt := newRoute(t, "idle", be.addr)
		rt.IdleTimeout, rt.AccessLog = idle, true
		c := dial(t, listen(t, s, rt))
		if took := waitClosed(t, c); took < idle-50*time.Millisecond {
			t.Errorf("closed after %v, before idle_timeout %v", took, idle)
		}
		rec := logs.wait(t, "access log", msgIs("connection closed"))
		if rec.attrs["end"] != "idle_timeout" {
			t.Errorf("end = %v, want idle_timeout", rec.attrs["end"])
		}
	})
	t.Run("client sends only", func(t *testing.T) {
		t.Parallel()
		got := make(chan int64, 1)
		be := startBackend(t, func(c *net.TCPConn) {
			n, _ := io.Copy(io.Discard, c)
			got <- n
		})
		s, _ := newTestServer(t)
		rt := newRoute(t, "up", be.addr)
		rt.IdleTimeout = idle
		c := dial(t, listen(t, s, rt))
		for i := 0; i < ticks; i++ {
			if _, err := c.Write([]byte{'x'}); err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
			time.Sleep(tick) // the traffic pattern under test, not a wait
		}
		// Still open: nothing came back, and the proxy has not closed it.
		c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("connection busy one way was ended after %v: read %v", busy, err)
		}
		waitClosed(t, c) // now idle both ways: idle_timeout ends it
		if n := <-got; n != int64(ticks) {
			t.Errorf("backend received %d bytes, want %d", n, ticks)
		}
	})
	t.Run("backend sends only", func(t *testing.T) {
		t.Parallel()
		be := startBackend(t, func(c *net.TCPConn) {
			for i := 0; i < ticks; i++ {
				if _, err := c.Write([]byte{'y'}); err != nil {
					return
				}
				time.Sleep(tick) // the traffic pattern under test, not a wait
			}
			io.Copy(io.Discard, c) // stay open, silent
		})
		s, _ := newTestServer(t)
		rt := newRoute(t, "down", be.addr)
		rt.IdleTimeout = idle
		c := dial(t, listen(t, s, rt))
		c.SetReadDeadline(time.Now().Add(deadline))
		b, err := io.ReadAll(c) // until idle_timeout after the last byte
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != ticks {
			t.Errorf("received %d bytes before the close, want all %d", len(b), ticks)
		}
	})
}

// TestAccessLog checks the fields of the line logged when a connection ends.
func TestAccessLog(t *testing.T) {
	be := startBackend(t, greetEcho("be"))
	s, logs := newTestServer(t)
	rt := newRoute(t, "logged", be.addr)
	rt.AccessLog = true
	addr := listen(t, s, rt)

	c := dial(t, addr)
	readLine(t, c)
	io.WriteString(c, "hello")
	buf := make([]byte, 5)
	io.ReadFull(c, buf)
	c.CloseWrite()
	io.Copy(io.Discard, c)
	rec := logs.wait(t, "access log", msgIs("connection closed"))
	want := map[string]any{"rule": "logged", "client": c.LocalAddr().String(), "backend": "b0",
		"backend_addr": be.addr, "bytes_in": int64(5), "bytes_out": int64(3 + 5), "end": "eof"}
	for k, v := range want {
		if rec.attrs[k] != v {
			t.Errorf("%s = %v (%T), want %v", k, rec.attrs[k], rec.attrs[k], v)
		}
	}
	if d, ok := rec.attrs["duration"].(time.Duration); !ok || d <= 0 {
		t.Errorf("duration = %v", rec.attrs["duration"])
	}
	if rec.level.String() != "INFO" {
		t.Errorf("level %v", rec.level)
	}

	// A client that resets the connection.
	c2 := dial(t, addr)
	readLine(t, c2)
	c2.SetLinger(0)
	c2.Close()
	rec = logs.wait(t, "access log of the reset", func(r logRec) bool {
		return r.msg == "connection closed" && r.attrs["client"] == c2.LocalAddr().String()
	})
	if rec.attrs["end"] != "client_error" {
		t.Errorf("end = %v after a client reset, want client_error", rec.attrs["end"])
	}
}

// TestResetClosesBoth: an error or reset on one side closes the other.
func TestResetClosesBoth(t *testing.T) {
	t.Run("client resets", func(t *testing.T) {
		done := make(chan error, 1)
		be := startBackend(t, func(c *net.TCPConn) {
			_, err := io.Copy(io.Discard, c)
			done <- err
		})
		s, _ := newTestServer(t)
		c := dial(t, listen(t, s, newRoute(t, "rst", be.addr)))
		be.waitAccepted(t, 1)
		c.SetLinger(0)
		c.Close()
		select {
		case <-done:
		case <-time.After(deadline):
			t.Fatal("backend connection still open after the client reset")
		}
	})
	t.Run("backend resets", func(t *testing.T) {
		be := startBackend(t, func(c *net.TCPConn) {
			c.SetLinger(0)
		}) // the handler returns: Close with linger 0 sends a reset
		s, _ := newTestServer(t)
		addr := listen(t, s, newRoute(t, "rst2", be.addr))
		// The proxy may reset the client so fast that the reset reaches the
		// client's connect before it returns: that is the connection closing too.
		c, err := net.DialTimeout("tcp", addr, deadline)
		if errors.Is(err, syscall.ECONNRESET) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		waitClosed(t, c)
	})
}

// TestNoRouteClosed: a listener without routes closes its connections.
func TestNoRouteClosed(t *testing.T) {
	s, logs := newTestServer(t)
	c := dial(t, listen(t, s))
	waitClosed(t, c)
	harness.Eventually(t, "NoRoute counted", func() bool { return s.Stats.NoRoute.Load() == 1 })
	logs.wait(t, "debug log", msgIs("no rule matches connection; closing"))
}

// TestFirstRouteWins: with several routes on a listener, the first serves.
func TestFirstRouteWins(t *testing.T) {
	a, b := startBackend(t, greetEcho("a")), startBackend(t, greetEcho("b"))
	s, _ := newTestServer(t)
	addr := listen(t, s, newRoute(t, "first", a.addr), newRoute(t, "second", b.addr))
	for i := 0; i < 3; i++ {
		if got := readLine(t, dial(t, addr)); got != "a" {
			t.Fatalf("served by %q, want the first route's backend", got)
		}
	}
}

// TestStopAcceptingDropsNoClient: clients dial without pause while the
// listener stops accepting (as at shutdown, or when an upgrade's new
// process takes the socket). Each is served (it gets the backend's
// greeting), refused, or reset by the kernel with the backlog; none is
// accepted only to be closed, which its client would see as a clean EOF.
func TestStopAcceptingDropsNoClient(t *testing.T) {
	be := startBackend(t, greetEcho("hi"))
	for round := range 20 {
		s, _ := newTestServer(t)
		addr := listen(t, s, newRoute(t, "r", be.addr))
		var served, dropped atomic.Int64
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					c, err := net.DialTimeout("tcp", addr, deadline)
					if err != nil {
						continue // refused: the listener is gone
					}
					// A client the kernel took as the socket closed hears
					// nothing more; a byte sent draws its reset at once
					// (and when the write fails, it took the reset).
					if _, err := c.Write([]byte("x")); err != nil {
						c.Close()
						continue
					}
					c.SetReadDeadline(time.Now().Add(deadline))
					g, err := bufio.NewReader(c).ReadString('\n')
					c.Close()
					switch {
					case err == nil && g == "hi\n":
						served.Add(1)
					case errors.Is(err, io.EOF):
						dropped.Add(1)
					}
				}
			}()
		}
		harness.Eventually(t, "clients served", func() bool { return served.Load() >= 20 })
		s.StopAccepting()
		close(stop)
		wg.Wait()
		if n := dropped.Load(); n > 0 {
			t.Fatalf("round %d: %d clients accepted and closed unserved (EOF before the greeting)", round, n)
		}
	}
}

// TestShutdownDrains: Shutdown refuses new connections at once and lets a
// transfer in flight finish.
func TestShutdownDrains(t *testing.T) {
	be := startBackend(t, echo)
	s, _ := newTestServer(t)
	addr := listen(t, s, newRoute(t, "drain", be.addr))
	c := dial(t, addr)
	c.SetDeadline(time.Now().Add(deadline))
	io.WriteString(c, "ping")
	io.ReadFull(c, make([]byte, 4))

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		done <- s.Shutdown(ctx)
	}()
	harness.Eventually(t, "the listener to refuse connections", func() bool {
		nc, err := net.Dial("tcp", addr)
		if err == nil {
			nc.Close()
		}
		return err != nil
	})
	// The connection in flight still works, in both directions.
	go func() {
		writeStream(c, 4, 4<<20)
		c.CloseWrite()
	}()
	h := sha256.New()
	if n, err := io.Copy(h, c); err != nil || n != 4<<20 || [32]byte(h.Sum(nil)) != streamSum(4, 4<<20) {
		t.Fatalf("transfer during shutdown: %d bytes, %v", n, err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown = %v, want nil after the last connection ended", err)
		}
	case <-time.After(deadline):
		t.Fatal("Shutdown did not return after the last connection ended")
	}
}

// TestShutdownTimeoutCuts: what is still open when the context ends is closed.
func TestShutdownTimeoutCuts(t *testing.T) {
	be := startBackend(t, sink)
	s, logs := newTestServer(t)
	rt := newRoute(t, "cut", be.addr)
	rt.AccessLog = true
	c := dial(t, listen(t, s, rt))
	be.waitAccepted(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want context.DeadlineExceeded", err)
	}
	waitClosed(t, c)
	rec := logs.wait(t, "shutdown warning", msgIs("shutdown timeout: closing connections still open"))
	if rec.attrs["connections"] != int64(1) {
		t.Errorf("connections = %v, want 1", rec.attrs["connections"])
	}
	if rec := logs.wait(t, "access log", msgIs("connection closed")); rec.attrs["end"] != "shutdown" {
		t.Errorf("end = %v, want shutdown", rec.attrs["end"])
	}
}

// TestCloseBackendConnsDrained: the connections CloseBackendConns cuts (a
// removed backend's drain_timeout) end as drained, in the access log and
// for the observer.
func TestCloseBackendConnsDrained(t *testing.T) {
	be := startBackend(t, sink)
	s, logs := newTestServer(t)
	rt := newRoute(t, "gone", be.addr)
	rt.AccessLog = true
	o := newRecObserver()
	rt.Observer = o
	c := dial(t, listen(t, s, rt))
	be.waitAccepted(t, 1)
	o.waitFor(t, "the connection relayed", func() bool { return len(o.connected[rt.Backends[0]]) == 1 })
	if n := s.CloseBackendConns(rt.Backends[0]); n != 1 {
		t.Fatalf("CloseBackendConns = %d, want 1", n)
	}
	waitClosed(t, c)
	if rec := logs.wait(t, "access log", msgIs("connection closed")); rec.attrs["end"] != "drained" {
		t.Errorf("end = %v, want drained", rec.attrs["end"])
	}
	o.waitFor(t, "the observer told", func() bool { return len(o.ends) == 1 })
	if o.ends[0] != EndDrained {
		t.Errorf("observer end = %v, want drained", o.ends[0])
	}
}

// TestMaxConnectionsAcrossListeners: max_connections holds for the proxy as
// a whole even when several listeners accept at the same moment (the check
// and the count must be one atomic step). Each round dials every listener at
// once with a cap of 1; at most one connection may be admitted.
func TestMaxConnectionsAcrossListeners(t *testing.T) {
	const listeners, rounds = 8, 300
	be := startBackend(t, greetEcho("be"))
	s, _ := newTestServer(t)
	s.SetMaxConnections(1)
	rt := newRoute(t, "race", be.addr)
	addrs := make([]string, listeners)
	for i := range addrs {
		addrs[i] = listen(t, s, rt)
	}
	over := 0
	for r := 0; r < rounds; r++ {
		rejected0 := s.Stats.Rejected.Load()
		var wg sync.WaitGroup
		conns := make([]net.Conn, listeners)
		start := make(chan struct{})
		for i, a := range addrs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if c, err := net.Dial("tcp", a); err == nil {
					conns[i] = c
				}
			}()
		}
		close(start)
		wg.Wait()
		// Every connection is decided: admitted (counted in Active, and
		// held open) or rejected.
		harness.Eventually(t, "the proxy to decide on every connection", func() bool {
			return s.Stats.Rejected.Load()-rejected0+s.Active() == listeners
		})
		if s.Active() > 1 {
			over++
		}
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		harness.Eventually(t, "every connection to end", func() bool { return s.Active() == 0 })
	}
	if over > 0 {
		t.Fatalf("max_connections 1 exceeded in %d of %d rounds", over, rounds)
	}
	if got := s.Stats.Rejected.Load(); got < int64(rounds*(listeners-1)) {
		t.Errorf("Rejected = %d, want at least %d", got, rounds*(listeners-1))
	}
}

// TestBackendHostName: a backend may be named by host name (localhost
// resolves to 127.0.0.1 here); the dial resolves it.
func TestBackendHostName(t *testing.T) {
	be := startBackend(t, greetEcho("named"))
	_, port, _ := net.SplitHostPort(be.addr)
	s, _ := newTestServer(t)
	c := dial(t, listen(t, s, newRoute(t, "named", net.JoinHostPort("localhost", port))))
	if got := readLine(t, c); got != "named" {
		t.Fatalf("greeting %q", got)
	}
}

// TestNoDelayBothSides: the proxy turns Nagle's algorithm off on both of a
// connection's sockets, as the net package would (the client side inherits
// it from the listening socket).
func TestNoDelayBothSides(t *testing.T) {
	be := startBackend(t, echo)
	s, _ := newTestServer(t)
	c := dial(t, listen(t, s, newRoute(t, "nd", be.addr)))
	c.SetDeadline(time.Now().Add(deadline))
	if _, err := c.Write([]byte("x\n")); err != nil {
		t.Fatal(err)
	}
	readLine(t, c) // relaying: both sockets are open
	var seen int
	for _, lp := range s.loops {
		lp.Call(func() {
			lp.each(func(lc *lconn) {
				for _, fd := range []int{lc.cfd, lc.bfd} {
					seen++
					if v, err := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); err != nil || v == 0 {
						t.Errorf("socket %d: TCP_NODELAY %d (%v), want on", fd, v, err)
					}
				}
			})
		})
	}
	if seen != 2 {
		t.Fatalf("checked %d sockets, want the connection's 2", seen)
	}
}
