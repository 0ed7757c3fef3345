package faults

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"sort"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// waiter is a client whose connection the exhausted proxy could not serve
// yet: it waits for its greeting.
type waiter struct {
	greeted chan time.Time
	c       net.Conn
}

// TestDescriptorExhaustion
//
// Fault: the proxy runs with a descriptor limit of 64 (exec'd under
// `prlimit --nofile=64:64`), and clients hold more connections than 64
// descriptors can proxy (each takes 2).
// Load: proxied connections held open until the limit is reached, 10 more
// clients arriving after it, health checks every 200 ms meanwhile.
// Must hold:
//   - accept and dial failures back off: over one second of exhaustion the
//     proxy uses at most 100 ms of CPU (utime+stime from /proc/PID/stat);
//   - it keeps serving what it can: every connection already proxied still
//     echoes;
//   - the clients beyond the limit are not reset: they wait (in the listen
//     backlog, or for their backend dial) and are served once descriptors
//     free up;
//   - the backend is not blamed: no health transition, no "backend dial
//     failed" line;
//   - the log says it once: exactly one "out of descriptors" line and one
//     "descriptors available again" line for the episode.
func TestDescriptorExhaustion(t *testing.T) {
	const limit, extra = 64, 10
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatal("prlimit (util-linux) is needed: ", err)
	}
	be := StartBackend(t, Greet("b"))
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := Start(t, harness.WriteConfig(t, server(`connection_timeout = "15s"`)+
		"\n[health_check]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nretries = 2\nrise = 2\n"+
		tcpRule("ex", port, "b="+be.Addr)), prlimit, fmt.Sprintf("--nofile=%d:%d", limit, limit))
	base := CountFDs(t, p.PID())

	dial := func() *waiter {
		c, err := net.DialTimeout("tcp", addr, harness.Deadline)
		if err != nil {
			t.Fatalf("dial while exhausted (the kernel completes the handshake; the backlog holds the client): %v", err)
		}
		t.Cleanup(func() { c.Close() })
		w := &waiter{greeted: make(chan time.Time, 1), c: c}
		go func() {
			c.SetReadDeadline(time.Now().Add(harness.Deadline))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err == nil && line == "b\n" {
				w.greeted <- time.Now()
			}
			close(w.greeted)
		}()
		return w
	}
	// Fill: proxied connections until the proxy says it is out of
	// descriptors and the last client is not served. Nothing announces that
	// a client waits, and a health check (every 200 ms) that ends frees a
	// descriptor, which may let in a client that met the exhaustion: so a
	// client waits when it is still not served 500 ms after the proxy ran out
	// and it was dialled.
	var held []*waiter
	var waiting []*waiter
	var exhaustedAt time.Time
	for len(waiting) == 0 {
		if len(held) > limit {
			t.Fatalf("%d connections proxied with a limit of %d descriptors", len(held), limit)
		}
		w, dialled := dial(), time.Now()
		harness.Eventually(t, fmt.Sprintf("client %d served, or the proxy out of descriptors", len(held)), func() bool {
			select {
			case _, ok := <-w.greeted:
				if !ok {
					t.Fatalf("client %d was closed instead of waiting for a descriptor", len(held))
				}
				held = append(held, w)
				return true
			default:
			}
			if exhaustedAt.IsZero() && p.Count("out of descriptors") > 0 {
				exhaustedAt = time.Now()
			}
			if !exhaustedAt.IsZero() && time.Since(later(exhaustedAt, dialled)) >= 500*time.Millisecond {
				waiting = append(waiting, w)
				return true
			}
			return false
		})
	}
	for len(waiting) < extra {
		waiting = append(waiting, dial())
	}
	fds := CountFDs(t, p.PID())
	// Exhausted: the proxy must not spin.
	cpu0, t0 := CPU(t, p.PID()), time.Now()
	time.Sleep(time.Second) // a measuring window, not a synchronisation
	cpu := CPU(t, p.PID()) - cpu0
	if cpu > 100*time.Millisecond {
		t.Errorf("the exhausted proxy used %v of CPU in %v: it spins instead of backing off", cpu, time.Since(t0).Round(time.Millisecond))
	}
	// It still serves the connections it has.
	for i, w := range held {
		w.c.SetDeadline(time.Now().Add(harness.Deadline))
		msg := fmt.Sprintf("still here %d\n", i)
		if _, err := w.c.Write([]byte(msg)); err != nil {
			t.Fatalf("held connection %d while exhausted: %v", i, err)
		}
		buf := make([]byte, len(msg))
		if _, err := readFull(w.c, buf); err != nil || string(buf) != msg {
			t.Fatalf("held connection %d while exhausted: echo %q, %v", i, buf, err)
		}
	}
	for i, w := range waiting {
		select {
		case <-w.greeted:
			t.Fatalf("waiting client %d was served or closed while no descriptor was free", i)
		default:
		}
	}
	if n := p.Count("out of descriptors"); n != 1 {
		t.Errorf("%d \"out of descriptors\" lines while exhausted; want exactly 1", n)
	}

	// Free descriptors: close enough held connections for every waiter.
	freed := time.Now()
	for _, w := range held[:extra+2] {
		w.c.Close()
	}
	var recover []time.Duration
	for i, w := range waiting {
		at, ok := <-w.greeted
		if !ok {
			t.Fatalf("waiting client %d was closed instead of served once descriptors were free", i)
		}
		recover = append(recover, at.Sub(freed))
	}
	sort.Slice(recover, func(i, j int) bool { return recover[i] < recover[j] })
	p.WaitLog("descriptors available again")
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(harness.Deadline))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "b\n" {
		t.Fatalf("a new client after recovery: %q, %v", line, err)
	}
	c.Close()
	starts, ends := p.Count("out of descriptors"), p.Count("descriptors available again")
	if starts != 1 || ends != 1 {
		t.Errorf("the episode was logged %d times at its start and %d at its end; want once each", starts, ends)
	}
	if n := p.Count("backend down"); n != 0 {
		t.Errorf("the backend was marked down %d times because the proxy ran out of descriptors", n)
	}
	if n := p.Count("backend dial failed"); n != 0 {
		t.Errorf("%d \"backend dial failed\" lines: local exhaustion blamed on the backend", n)
	}
	t.Logf("limit %d descriptors (%d at start): %d connections proxied, then %v held; %d more clients waited; CPU while exhausted %v in 1 s; waiting clients served %v … %v after %d connections closed; log: %d start and %d end line(s) for the episode: %q",
		limit, base.All, len(held), fds, extra, cpu, recover[0].Round(time.Millisecond), recover[len(recover)-1].Round(time.Millisecond),
		extra+2, starts, ends, p.WaitLog("descriptors available again"))
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func readFull(c net.Conn, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
