package faults

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// load is client traffic through the proxy: long-lived streams that keep
// echoing, and short connections opened continuously. Every byte is
// checked; any failure is recorded.
type load struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	conns    atomic.Int64 // short connections completed
	rounds   atomic.Int64 // stream round trips completed
	bytes    atomic.Int64 // bytes echoed intact
	failures atomic.Int64
	mu       sync.Mutex
	errs     []string
}

func (l *load) fail(format string, args ...any) {
	l.failures.Add(1)
	l.mu.Lock()
	if len(l.errs) < 10 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	}
	l.mu.Unlock()
}

// echoRound sends n random bytes on c and checks they come back.
func echoRound(c net.Conn, n int) error {
	buf := make([]byte, n)
	rand.Read(buf)
	c.SetDeadline(time.Now().Add(harness.Deadline))
	errc := make(chan error, 1)
	go func() { _, err := c.Write(buf); errc <- err }()
	got := make([]byte, n)
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if err := <-errc; err != nil {
		return err
	}
	if !bytes.Equal(got, buf) {
		return fmt.Errorf("%d bytes came back altered", n)
	}
	return nil
}

// startLoad runs streams long-lived connections and workers dialling
// short ones (each worker about every interval) against addr, an echo.
func startLoad(t *testing.T, addr string, streams, workers int, interval time.Duration) *load {
	t.Helper()
	l := &load{stop: make(chan struct{})}
	for i := 0; i < streams; i++ {
		c, err := net.DialTimeout("tcp", addr, harness.Deadline)
		if err != nil {
			t.Fatal(err)
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer c.Close()
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
				if err := echoRound(c, 4096); err != nil {
					l.fail("stream: %v", err)
					return
				}
				l.rounds.Add(1)
				l.bytes.Add(4096)
			}
		}()
	}
	for w := 0; w < workers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				select {
				case <-l.stop:
					return
				case <-tick.C:
				}
				c, err := net.DialTimeout("tcp", addr, harness.Deadline)
				if err != nil {
					l.fail("dial: %v", err)
					continue
				}
				err = echoRound(c, 1024)
				c.Close()
				if err != nil {
					l.fail("connection: %v", err)
					continue
				}
				l.conns.Add(1)
				l.bytes.Add(1024)
			}
		}()
	}
	t.Cleanup(l.end)
	return l
}

func (l *load) end() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

func (l *load) report() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.errs, "; ")
}

// reloadVariant renders one of four configs that the reload storm cycles
// through: the main rule's backends, weights and router change, and a
// second rule with its own listener comes and goes. Variant 0 is the one
// the proxy starts with and the storm's last reload goes back to.
func reloadVariant(i, port, extraPort int, bes []string) string {
	var b strings.Builder
	b.WriteString(server(""))
	b.WriteString("\n[admin]\nbind = \"127.0.0.1:0\"\npprof = true\n") // for the goroutine dump of a leak
	routers := []string{"round_robin", "weighted", "least_connections", "random"}
	fmt.Fprintf(&b, "\n[[rules]]\nname = \"main\"\nrouter = %q\n[rules.matcher]\ntype = \"port\"\nport = %d\n", routers[i%4], port)
	use := bes[:2+i%3] // 2, 3 or 4 backends
	for j, addr := range use {
		fmt.Fprintf(&b, "[[rules.backends]]\nid = \"b%d\"\naddress = %q\nweight = %d\n", j, addr, 1+(i+j)%4)
	}
	if i%2 == 1 {
		fmt.Fprintf(&b, "\n[[rules]]\nname = \"extra\"\n[rules.matcher]\ntype = \"port\"\nport = %d\n[[rules.backends]]\nid = \"x\"\naddress = %q\n", extraPort, bes[0])
	}
	return b.String()
}

// TestReloadStorm
//
// Fault: 100 SIGHUP reloads in about 10 s (one every 100 ms, each waiting
// for the previous one's log line), cycling through configs that change the
// router, the backends and their weights, and open and close a listener.
// Load: 8 long-lived connections echoing 4 KiB every 50 ms, and new
// connections opened continuously (2 workers, one every 5 ms each), every
// byte checked.
// Must hold: no failed connection and no altered byte; all 100 reloads
// succeed; once the load stops and the config is back to the first one,
// the proxy's goroutines (go_goroutines) and sockets are back to their
// baseline.
func TestReloadStorm(t *testing.T) {
	var bes []string
	for i := 0; i < 4; i++ {
		bes = append(bes, StartBackend(t, Echo).Addr)
	}
	port, extraPort := harness.FreePort(t), harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cfg := harness.WriteConfig(t, reloadVariant(0, port, extraPort, bes))
	p := Start(t, cfg)
	url := p.MetricsURL()

	// Baseline, after one connection so that lazily started runtime parts exist.
	if c, err := net.DialTimeout("tcp", addr, harness.Deadline); err == nil {
		echoRound(c, 1024)
		c.Close()
	}
	baseG, baseFD := steadyBaseline(t, p, url, nil)

	l := startLoad(t, addr, 8, 2, 5*time.Millisecond)
	start := time.Now()
	for i := 1; i <= 100; i++ {
		next := start.Add(time.Duration(i) * 100 * time.Millisecond)
		time.Sleep(time.Until(next)) // pacing the storm, not synchronising
		v := i
		if i == 100 {
			v = 0 // end on the config of the baseline
		}
		RewriteConfig(t, cfg, reloadVariant(v, port, extraPort, bes))
		mark := p.NumLines()
		p.Signal(syscall.SIGHUP)
		p.WaitLogFrom(mark, "config reloaded", fmt.Sprintf("version=%d ", i+1))
	}
	took := time.Since(start)
	l.end()
	if n := l.failures.Load(); n > 0 {
		t.Errorf("%d failures under the reload storm: %s", n, l.report())
	}
	if n := p.Count("reload failed"); n > 0 {
		t.Errorf("%d reloads failed", n)
	}
	var g int
	var f FDs
	backToBaseline(t, p, url, baseG, baseFD, &g, &f)
	t.Logf("100 SIGHUP reloads in %v under load: %d short connections and %d stream round trips (%s echoed), %d failures; goroutines %d → %d, descriptors %v → %v",
		took.Round(time.Millisecond), l.conns.Load(), l.rounds.Load(), MiB(l.bytes.Load()), l.failures.Load(), baseG, g, baseFD, f)
}
