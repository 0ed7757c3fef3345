//go:build unix

package faults

import (
	"fmt"
	"net"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// blackHole is a listening socket whose accept queue is full and never
// drained: the kernel drops further SYNs, so a connect to it hangs until
// the dialler's timeout, as with a firewall that drops packets.
type blackHole struct {
	fd    int
	Addr  string
	conns []net.Conn
}

func startBlackHole(t *testing.T) *blackHole {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	syscall.CloseOnExec(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	h := &blackHole{fd: fd, Addr: fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)}
	t.Cleanup(func() {
		for _, c := range h.conns {
			c.Close()
		}
		syscall.Close(fd)
	})
	// Fill the accept queue: connect until a connect no longer completes.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", h.Addr, 300*time.Millisecond)
		if err != nil {
			if i == 0 {
				t.Fatalf("the black hole accepted nothing: %v", err)
			}
			break
		}
		h.conns = append(h.conns, c)
		if i > 16 {
			t.Fatal("the accept queue of a backlog-0 listener never filled")
		}
	}
	return h
}

// TestBackendBlackHoledSYN
//
// Fault: one of two backends drops SYNs (a listener whose accept queue is
// full and never drained): a dial to it never completes.
// Load: 20 clients one after the other, round robin over both backends.
// Must hold:
//   - health checks off: every client is served by the good backend; a
//     client whose dial went to the black hole (the one whose dial is
//     counted in backend_requests_total{result="timeout"}) waits
//     connection_timeout (500 ms), not less, and is then retried on the
//     good backend;
//   - passive detection on (passive_failures = 2, active checks off): the
//     first two timeouts mark the black hole down, and no later client's
//     dial goes to it.
func TestBackendBlackHoledSYN(t *testing.T) {
	const n = 20
	run := func(t *testing.T, health string) (slow, fast []time.Duration, timeouts float64) {
		hole := startBlackHole(t)
		good := StartBackend(t, Greet("good"))
		port := harness.FreePort(t)
		p := Start(t, harness.WriteConfig(t, server(`connection_timeout = "500ms"`)+health+
			tcpRule("bh", port, "hole="+hole.Addr, "good="+good.Addr)))
		url := p.MetricsURL()
		holeTimeouts := harness.Labels{"backend": "hole", "result": "timeout", "rule": "bh"}
		// A dial's timeout is counted before the dial to the next backend
		// starts, so the counter after a client's greeting says whether that
		// client's dial went to the black hole.
		counted := func() float64 {
			return max(0, harness.Scrape(t, url).Value("dynamic_proxy_backend_requests_total", holeTimeouts))
		}
		for i := 0; i < n; i++ {
			before := counted()
			start := time.Now()
			name, err := harness.Greeting(fmt.Sprintf("127.0.0.1:%d", port))
			d := time.Since(start)
			if err != nil || name != "good" {
				t.Fatalf("client %d: got %q, %v; want the good backend's greeting", i, name, err)
			}
			switch after := counted(); after - before {
			case 0:
				fast = append(fast, d)
			case 1:
				slow = append(slow, d)
				// The timer is checked from below only: a slow machine
				// cannot make it fail.
				if d < 500*time.Millisecond {
					t.Errorf("client %d: its dial to the black hole timed out after %v, before connection_timeout (500ms)", i, d)
				}
			default:
				t.Fatalf("client %d: %v dial timeouts counted, want at most one", i, after-before)
			}
		}
		timeouts = counted()
		sort.Slice(slow, func(i, j int) bool { return slow[i] < slow[j] })
		return slow, fast, timeouts
	}
	t.Run("health off", func(t *testing.T) {
		slow, fast, timeouts := run(t, noHealth)
		if len(slow) == 0 {
			t.Fatal("no client's dial went to the black hole")
		}
		t.Logf("health off: %d of %d clients waited %v … %v (connection_timeout 500ms), then were served by the other backend; %d served at once; %v timeouts counted",
			len(slow), n, slow[0].Round(time.Millisecond), slow[len(slow)-1].Round(time.Millisecond), len(fast), timeouts)
	})
	t.Run("passive on", func(t *testing.T) {
		slow, fast, timeouts := run(t, "\n[health_check]\nenabled = false\npassive_failures = 2\npassive_cooldown = \"1h\"\n")
		if len(slow) != 2 {
			t.Fatalf("%d clients waited for the black hole; want exactly passive_failures = 2", len(slow))
		}
		t.Logf("passive on: %d of %d clients waited %v … %v, then the black hole was down and %d were served at once; %v timeouts counted",
			len(slow), n, slow[0].Round(time.Millisecond), slow[len(slow)-1].Round(time.Millisecond), len(fast), timeouts)
	})
}
