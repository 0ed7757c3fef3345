package faults

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	be "encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// UDPEcho is a UDP backend that sends every datagram back; it can be
// killed and restarted on the same address.
type UDPEcho struct {
	t    testing.TB
	Addr string
	mu   sync.Mutex
	c    *net.UDPConn
	done chan struct{}
}

// StartUDPEcho starts a UDP echo on a free port of 127.0.0.1.
func StartUDPEcho(t testing.TB) *UDPEcho {
	t.Helper()
	e := &UDPEcho{t: t, Addr: "127.0.0.1:0"}
	e.Restart()
	t.Cleanup(e.Kill)
	return e
}

// Restart listens again on the echo's address.
func (e *UDPEcho) Restart() {
	e.t.Helper()
	a, err := net.ResolveUDPAddr("udp", e.Addr)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := net.ListenUDP("udp", a)
	if err != nil {
		e.t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	done := make(chan struct{})
	e.mu.Lock()
	e.c, e.Addr, e.done = c, c.LocalAddr().String(), done
	e.mu.Unlock()
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// Kill closes the socket: datagrams to it now get ICMP port unreachable.
func (e *UDPEcho) Kill() {
	e.mu.Lock()
	c, done := e.c, e.done
	e.c = nil
	e.mu.Unlock()
	if c != nil {
		c.Close()
		<-done
	}
}

// soakStats are the counts of one soak run.
type soakStats struct {
	transfers, transferBytes    atomic.Int64 // TCP transfers completed, checksums equal
	interrupted, dialFailed     atomic.Int64 // TCP transfers cut by a kill; dials refused
	corrupt                     atomic.Int64 // completed transfers or datagrams with other bytes than sent
	udpSent, udpGot, udpBadSeqs atomic.Int64
	kills, reloads              atomic.Int64
	mu                          sync.Mutex
	errs                        []string
}

func (s *soakStats) fail(format string, args ...any) {
	s.corrupt.Add(1)
	s.mu.Lock()
	if len(s.errs) < 10 {
		s.errs = append(s.errs, fmt.Sprintf(format, args...))
	}
	s.mu.Unlock()
}

// transfer sends size random bytes through addr to an echo, half-closes,
// and reads the echo back. A transfer is complete when all size bytes come
// back: then they must be the bytes sent (else corrupt). One cut short by
// a killed backend is counted as interrupted.
func (s *soakStats) transfer(addr string, size int) {
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if errors.Is(err, syscall.ECONNRESET) {
		// Accepted, its backend dialled, and that backend killed before
		// this client's connect call returned: the proxy passed the
		// backend's reset on (the access log shows end=backend_error).
		s.interrupted.Add(1)
		return
	}
	if err != nil {
		s.dialFailed.Add(1)
		s.mu.Lock()
		if len(s.errs) < 10 {
			s.errs = append(s.errs, err.Error())
		}
		s.mu.Unlock()
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(harness.Deadline))
	payload := make([]byte, size)
	rand.Read(payload)
	go func() {
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	h := sha256.New()
	got, err := io.Copy(h, c)
	switch {
	case got > int64(size):
		s.fail("transfer of %d bytes: %d came back", size, got)
	case got == int64(size) && err == nil:
		if want := sha256.Sum256(payload); !bytes.Equal(h.Sum(nil), want[:]) {
			s.fail("transfer of %d bytes: checksum differs", size)
			return
		}
		s.transfers.Add(1)
		s.transferBytes.Add(int64(size))
	case errors.Is(err, os.ErrDeadlineExceeded):
		s.fail("transfer of %d bytes hung after %d bytes", size, got)
	default:
		s.interrupted.Add(1)
	}
}

// udpClient sends sequenced, checksummed datagrams every interval and
// checks every reply.
func (s *soakStats) udpClient(addr string, stop <-chan struct{}, wg *sync.WaitGroup) error {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	var sent atomic.Uint64
	wg.Add(2)
	go func() { // reader
		defer wg.Done()
		buf := make([]byte, 65536)
		for {
			n, err := c.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP refused from a killed backend: the next datagram retries
			}
			d := buf[:n]
			if n < 8+32 {
				s.fail("UDP reply of %d bytes", n)
				continue
			}
			body, sum := d[:n-32], d[n-32:]
			if want := sha256.Sum256(body); !bytes.Equal(sum, want[:]) {
				s.fail("UDP reply with another checksum")
				continue
			}
			if seq := be.BigEndian.Uint64(body); seq == 0 || seq > sent.Load() {
				s.udpBadSeqs.Add(1)
				s.fail("UDP reply to datagram %d, never sent", seq)
				continue
			}
			s.udpGot.Add(1)
		}
	}()
	go func() { // writer
		defer wg.Done()
		defer c.Close()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			body := make([]byte, 8+16+mrand.IntN(1200))
			rand.Read(body[8:])
			be.BigEndian.PutUint64(body, sent.Add(1))
			sum := sha256.Sum256(body)
			if _, err := c.Write(append(body, sum[:]...)); err == nil {
				s.udpSent.Add(1)
			}
		}
	}()
	return nil
}

// soakConfig renders the soak's config: a TCP rule over the TCP echoes and
// a UDP rule over the UDP echoes; variant v changes routers and weights.
func soakConfig(v, tcpPort, udpPort int, tcp, udp []string) string {
	var b strings.Builder
	b.WriteString(server(`connection_timeout = "2s"`))
	b.WriteString("\n[admin]\nbind = \"127.0.0.1:0\"\npprof = true\n")
	b.WriteString("\n[health_check]\ninterval = \"500ms\"\ntimeout = \"250ms\"\nretries = 2\nrise = 2\n")
	routers := []string{"round_robin", "least_connections", "weighted", "random"}
	fmt.Fprintf(&b, "\n[[rules]]\nname = \"tcp\"\nrouter = %q\n[rules.matcher]\ntype = \"port\"\nport = %d\n", routers[v%4], tcpPort)
	for i, a := range tcp {
		fmt.Fprintf(&b, "[[rules.backends]]\nid = \"t%d\"\naddress = %q\nweight = %d\n", i, a, 1+(v+i)%3)
	}
	fmt.Fprintf(&b, "\n[[rules]]\nname = \"udp\"\nprotocol = \"udp\"\nrouter = %q\nsession_timeout = \"2s\"\n[rules.matcher]\ntype = \"port\"\nport = %d\n[rules.health_check]\nenabled = false\npassive_cooldown = \"1s\"\n",
		routers[(v+1)%2], udpPort)
	for i, a := range udp {
		fmt.Fprintf(&b, "[[rules.backends]]\nid = \"u%d\"\naddress = %q\nweight = %d\n", i, a, 1+(v+i)%2)
	}
	return b.String()
}

// TestSoak
//
// Fault: for the whole run, every 2 s a backend is killed (a TCP one, its
// connections reset, or a UDP one, its socket closed) and restarted 1 s
// later, and every 3 s the config is reloaded (SIGHUP) with other routers
// and weights.
// Load: mixed TCP and UDP: 4 workers each making a TCP transfer of 16 KiB
// to 512 KiB, echoed back, every 20 ms, and 4 UDP clients sending a checksummed datagram every
// 5 ms each. The run lasts SOAK (default 35s; `SOAK=5m go test ./test/faults
// -run Soak -v` is the long version).
// Must hold: zero lost or altered bytes on completed transfers (SHA-256 of
// every completed TCP transfer and of every UDP reply equal to what was
// sent), no transfer hangs, no dial refused by the proxy; and once the load
// stops and the backends are back, the proxy's goroutines and sockets are
// back to their baseline and its RSS within 16 MiB of it.
func TestSoak(t *testing.T) {
	dur := 35 * time.Second
	if v := os.Getenv("SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("SOAK=%q: %v", v, err)
		}
		dur = d
	}
	var tcpBEs []*Backend
	var udpBEs []*UDPEcho
	var tcpAddrs, udpAddrs []string
	for i := 0; i < 3; i++ {
		b := StartBackend(t, Echo)
		tcpBEs, tcpAddrs = append(tcpBEs, b), append(tcpAddrs, b.Addr)
	}
	for i := 0; i < 2; i++ {
		u := StartUDPEcho(t)
		udpBEs, udpAddrs = append(udpBEs, u), append(udpAddrs, u.Addr)
	}
	tcpPort, udpPort := harness.FreePort(t), harness.FreePort(t)
	tcpAddr, udpAddr := fmt.Sprintf("127.0.0.1:%d", tcpPort), fmt.Sprintf("127.0.0.1:%d", udpPort)
	cfg := harness.WriteConfig(t, soakConfig(0, tcpPort, udpPort, tcpAddrs, udpAddrs))
	p := Start(t, cfg)
	url := p.MetricsURL()

	// Baseline: after a first TCP transfer and UDP exchange, once those
	// connections and sessions are gone.
	st := &soakStats{}
	st.transfer(tcpAddr, 1024)
	if uc, err := net.Dial("udp", udpAddr); err == nil {
		uc.Write([]byte("warm up"))
		uc.SetReadDeadline(time.Now().Add(harness.Deadline))
		uc.Read(make([]byte, 64))
		uc.Close()
	}
	baseG, baseFD := steadyBaseline(t, p, url, func() bool { // once the warm-up's UDP session ended
		return harness.Scrape(t, url).Value("dynamic_proxy_connections_active", harness.Labels{"protocol": "udp", "rule": "udp"}) == 0
	})
	baseRSS := RSS(t, p.PID())
	st = &soakStats{}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(20 * time.Millisecond) // pacing: leave CPU to the rest of the suite
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				st.transfer(tcpAddr, 16<<10+mrand.IntN(512<<10-16<<10))
			}
		}()
	}
	for i := 0; i < 4; i++ {
		if err := st.udpClient(udpAddr, stop, &wg); err != nil {
			t.Fatal(err)
		}
	}

	// Chaos, from this goroutine: the backends' Restart uses t.
	start := time.Now()
	var peakRSS int64
	kill, reload := time.NewTicker(2*time.Second), time.NewTicker(3*time.Second)
	type revive struct {
		at time.Time
		do func()
	}
	var revives []revive
	variant := 0
	for k := 0; time.Since(start) < dur; {
		select {
		case <-kill.C:
			if k%2 == 0 {
				b := tcpBEs[(k/2)%len(tcpBEs)]
				b.Kill()
				revives = append(revives, revive{time.Now().Add(time.Second), b.Restart})
			} else {
				u := udpBEs[(k/2)%len(udpBEs)]
				u.Kill()
				revives = append(revives, revive{time.Now().Add(time.Second), u.Restart})
			}
			k++
			st.kills.Add(1)
		case <-reload.C:
			variant++
			RewriteConfig(t, cfg, soakConfig(variant, tcpPort, udpPort, tcpAddrs, udpAddrs))
			mark := p.NumLines()
			p.Signal(syscall.SIGHUP)
			p.WaitLogFrom(mark, "config reloaded")
			st.reloads.Add(1)
		case <-time.After(100 * time.Millisecond):
		}
		for len(revives) > 0 && time.Now().After(revives[0].at) {
			revives[0].do()
			revives = revives[1:]
		}
		peakRSS = max(peakRSS, RSS(t, p.PID()))
	}
	kill.Stop()
	reload.Stop()
	for _, r := range revives {
		r.do()
	}
	close(stop)
	wg.Wait()
	ran := time.Since(start)
	if variant != 0 { // back to the first config, whose baseline was taken
		RewriteConfig(t, cfg, soakConfig(0, tcpPort, udpPort, tcpAddrs, udpAddrs))
		mark := p.NumLines()
		p.Signal(syscall.SIGHUP)
		p.WaitLogFrom(mark, "config reloaded")
	}

	if n := st.corrupt.Load(); n > 0 {
		t.Errorf("%d transfers or datagrams lost or altered bytes: %s", n, strings.Join(st.errs, "; "))
	}
	if n := st.dialFailed.Load(); n > 0 {
		t.Errorf("%d TCP dials to the proxy failed: %s", n, strings.Join(st.errs, "; "))
	}
	if st.transfers.Load() == 0 || st.udpGot.Load() == 0 {
		t.Fatalf("no traffic went through: %d transfers, %d UDP replies", st.transfers.Load(), st.udpGot.Load())
	}
	var g int
	var f FDs
	backToBaseline(t, p, url, baseG, baseFD, &g, &f)
	endRSS := RSS(t, p.PID())
	if endRSS-baseRSS > 16<<20 {
		t.Errorf("RSS %s at the end, %s at the start", MiB(endRSS), MiB(baseRSS))
	}
	sent, got := st.udpSent.Load(), st.udpGot.Load()
	t.Logf("soak %v: %d backend kills, %d reloads; TCP: %d transfers completed (%s, every checksum equal), %d cut by a kill, %d dials failed; UDP: %d datagrams sent, %d replies (%.2f%% lost, while a backend was down), %d altered; %d lost or altered bytes in all; goroutines %d → %d, descriptors %v → %v, RSS %s → peak %s → %s",
		ran.Round(time.Second), st.kills.Load(), st.reloads.Load(), st.transfers.Load(), MiB(st.transferBytes.Load()),
		st.interrupted.Load(), st.dialFailed.Load(), sent, got, 100*float64(sent-got)/float64(max(sent, 1)), st.udpBadSeqs.Load(),
		st.corrupt.Load(), baseG, g, baseFD, f, MiB(baseRSS), MiB(peakRSS), MiB(endRSS))
}
