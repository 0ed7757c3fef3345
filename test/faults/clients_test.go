package faults

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// idleClient is a connection that sends nothing and reads until the proxy
// closes it, noting when.
type idleClient struct {
	c      net.Conn
	opened time.Time
	got    atomic.Int64
	closed chan time.Time
}

func dialIdle(t *testing.T, addr string) *idleClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	ic := &idleClient{c: c, opened: time.Now(), closed: make(chan time.Time, 1)}
	go func() {
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			ic.got.Add(int64(n))
			if err != nil {
				ic.closed <- time.Now()
				return
			}
		}
	}()
	t.Cleanup(func() { c.Close() })
	return ic
}

// echoOnce sends n random bytes through addr to an echo backend that greets
// first, and checks the greeting and the echo.
func echoOnce(addr, greeting string, n int) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(harness.Deadline))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil || line != greeting+"\n" {
		c.Close()
		return nil, fmt.Errorf("greeting %q, %v", line, err)
	}
	buf := make([]byte, n)
	rand.Read(buf)
	go c.Write(buf)
	got := make([]byte, n)
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, buf) {
		c.Close()
		return nil, fmt.Errorf("echo of %d bytes: %v", n, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// TestSlowloris
//
// Fault: 2,000 clients connect and then send nothing, holding their
// connections open (slowloris).
// Load: 40 well-behaved clients arriving while the 2,000 are held, then one
// more than max_connections (2,040) allows.
// Must hold:
//   - "port listener": the 40 are served (greeting and a 4 KiB echo); the
//     2,041st is refused at once and counted on its listener,
//     listener_rejected_total{reason="max_connections"}; idle_timeout
//     (4 s) closes all 2,000 idle ones, none before it, each logged with
//     end=idle_timeout; then new clients are served again and the proxy's
//     descriptors are back to the baseline.
//   - "peek listener" (an http_host rule, which must read the request head
//     before it can route): the 2,000 silent clients never reach a backend
//     and are closed by peek_timeout (2 s), none before it, and counted as
//     connections_rejected_total{reason="no_rule"}, while HTTP clients are
//     served.
func TestSlowloris(t *testing.T) {
	const idle, good, maxConns = 2000, 40, 2040
	t.Run("port listener", func(t *testing.T) {
		be := StartBackend(t, Greet("b"))
		port := harness.FreePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		p := Start(t, harness.WriteConfig(t, server(fmt.Sprintf("idle_timeout = \"4s\"\nmax_connections = %d", maxConns))+
			noHealth+tcpRule("web", port, "b="+be.Addr)))
		url := p.MetricsURL()
		base := CountFDs(t, p.PID())

		idlers := make([]*idleClient, idle)
		for i := range idlers {
			idlers[i] = dialIdle(t, addr)
		}
		harness.Eventually(t, "2,000 idle connections proxied", func() bool { return be.Conns() == idle })
		held := base
		held.Sockets += 2 * idle
		if f := CountFDs(t, p.PID()); f.Sockets != held.Sockets {
			t.Errorf("with 2,000 idle connections the proxy holds %v; want %d sockets (2 per connection)", f, held.Sockets)
		}
		var served []net.Conn
		for i := 0; i < good; i++ {
			c, err := echoOnce(addr, "b", 4096)
			if err != nil {
				t.Fatalf("client %d of %d while 2,000 idle connections are held: %v", i, good, err)
			}
			served = append(served, c)
		}
		// One over max_connections: refused at once (reset: possibly before
		// the connect call itself returns), never greeted.
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, harness.Deadline)
		if err == nil {
			c.SetDeadline(time.Now().Add(harness.Deadline))
			n, _ := c.Read(make([]byte, 16))
			c.Close()
			if n != 0 {
				t.Errorf("the connection over max_connections read %d bytes; want none", n)
			}
		} else if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatal(err)
		}
		refusedIn := time.Since(start)
		harness.Eventually(t, "the refusal counted", func() bool {
			return harness.Scrape(t, url).Value("dynamic_proxy_listener_rejected_total", harness.Labels{"protocol": "tcp", "reason": "max_connections"}) == 1
		})
		if n := harness.Scrape(t, url).Value("dynamic_proxy_connections_rejected_total", harness.Labels{"reason": "max_connections", "rule": "web"}); n > 0 {
			t.Errorf("the rule counted %v max_connections refusals: the limit is the server's", n)
		}
		for _, c := range served {
			c.Close()
		}

		// idle_timeout reaps them all.
		var reap []time.Duration
		for _, ic := range idlers {
			select {
			case at := <-ic.closed:
				reap = append(reap, at.Sub(ic.opened))
			case <-time.After(harness.Deadline):
				t.Fatalf("an idle connection was still open %v after idle_timeout", harness.Deadline)
			}
		}
		sort.Slice(reap, func(i, j int) bool { return reap[i] < reap[j] })
		// idle_timeout closed them (the access log names the end), none
		// before it (a timer checked from below, where a slow machine cannot
		// make it fail).
		harness.Eventually(t, "2,000 end=idle_timeout lines", func() bool { return p.Count("connection closed", "end=idle_timeout") == idle })
		if reap[0] < 4*time.Second-100*time.Millisecond {
			t.Errorf("idle connections closed %v … %v after they opened; want none before idle_timeout (4s)", reap[0], reap[len(reap)-1])
		}
		harness.Eventually(t, "the backend's connections closed", func() bool { return be.Conns() == 0 })
		harness.Eventually(t, "descriptors back to the baseline", func() bool { return CountFDs(t, p.PID()).Sockets == base.Sockets })
		if c, err := echoOnce(addr, "b", 4096); err != nil {
			t.Fatalf("a client after the slowloris: %v", err)
		} else {
			c.Close()
		}
		t.Logf("2,000 idle connections held (+%d sockets in the proxy): %d clients served meanwhile, connection %d refused in %v; all idle ones closed %v … %v after opening (idle_timeout 4s); sockets back to %d",
			2*idle, good, maxConns+1, refusedIn.Round(time.Microsecond), reap[0].Round(time.Millisecond), reap[len(reap)-1].Round(time.Millisecond), base.Sockets)
	})

	t.Run("peek listener", func(t *testing.T) {
		be := StartBackend(t, func(c net.Conn) {
			r := bufio.NewReader(c)
			for {
				l, err := r.ReadString('\n')
				if err != nil || l == "\r\n" {
					break
				}
			}
			io.WriteString(c, "HTTP/1.0 200 OK\r\n\r\nok")
		})
		port := harness.FreePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		p := Start(t, harness.WriteConfig(t, server(fmt.Sprintf("peek_timeout = \"2s\"\nmax_connections = %d", maxConns))+noHealth+
			fmt.Sprintf("\n[[rules]]\nname = \"web\"\n[rules.matcher]\nall = [{ type = \"port\", port = %d }, { type = \"http_host\", names = [\"example.com\"] }]\n[[rules.backends]]\nid = \"b\"\naddress = %q\n", port, be.Addr)))
		base := CountFDs(t, p.PID())
		idlers := make([]*idleClient, idle)
		for i := range idlers {
			idlers[i] = dialIdle(t, addr)
		}
		for i := 0; i < good; i++ {
			c, err := net.DialTimeout("tcp", addr, harness.Deadline)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(harness.Deadline))
			io.WriteString(c, "GET / HTTP/1.0\r\nHost: example.com\r\n\r\n")
			got, err := io.ReadAll(c)
			c.Close()
			if err != nil || !strings.HasSuffix(string(got), "ok") {
				t.Fatalf("HTTP client %d while 2,000 silent ones wait: %q, %v", i, got, err)
			}
		}
		var reap []time.Duration
		for _, ic := range idlers {
			select {
			case at := <-ic.closed:
				reap = append(reap, at.Sub(ic.opened))
			case <-time.After(harness.Deadline):
				t.Fatal("a silent client was not closed by peek_timeout")
			}
		}
		sort.Slice(reap, func(i, j int) bool { return reap[i] < reap[j] })
		// The peek ended without a match (the counter names it), none before
		// peek_timeout (a timer checked from below).
		harness.WaitMetrics(t, p.MetricsURL(), "2,000 connections rejected as no_rule", func(m harness.Metrics) bool {
			return m.Value("dynamic_proxy_connections_rejected_total", harness.Labels{"protocol": "tcp", "reason": "no_rule"}) == idle
		})
		if reap[0] < 2*time.Second-100*time.Millisecond {
			t.Errorf("silent clients closed %v … %v after they opened; want none before peek_timeout (2s)", reap[0], reap[len(reap)-1])
		}
		if be.Conns() != 0 {
			t.Errorf("%d silent clients reached the backend", be.Conns())
		}
		harness.Eventually(t, "descriptors back to the baseline", func() bool { return CountFDs(t, p.PID()).Sockets == base.Sockets })
		t.Logf("2,000 silent clients on an http_host listener: %d HTTP clients served meanwhile; silent ones closed %v … %v after opening (peek_timeout 2s), none reached the backend",
			good, reap[0].Round(time.Millisecond), reap[len(reap)-1].Round(time.Millisecond))
	})
}

// TestHalfClosedAndHalfOpen
//
// Fault: connections where one side has finished sending (FIN) while the
// other goes on, and connections where one side finished and the other
// then never sends nor closes (half-open, as with a peer that vanished).
// Load: 50 connections of each kind at once, 1 MiB payloads.
// Must hold:
//   - client half-closes first: it still receives the backend's whole
//     1 MiB reply (sent only after the backend saw EOF), checksum equal;
//   - backend half-closes first: it still receives the client's whole
//     1 MiB sent afterwards, checksum equal;
//   - half-open either way: the proxy ends the connection after
//     idle_timeout (2 s), both peers see it closed;
//   - every such connection ends with its access log line and the proxy's
//     sockets are back to the baseline.
func TestHalfClosedAndHalfOpen(t *testing.T) {
	const n, size = 50, 1 << 20
	ev := &halfEvents{sums: map[string]chan []byte{}, ended: map[string]chan time.Time{}}
	hold := make(chan struct{})
	// The backend's behaviour is chosen by the first byte the client sends.
	be := StartBackend(t, func(c net.Conn) {
		tc := c.(*net.TCPConn)
		var hdr [9]byte
		if n, err := io.ReadFull(c, hdr[:]); err != nil {
			ev.note(fmt.Sprintf("a backend connection from %s ended after %d header bytes: %v", c.RemoteAddr(), n, err))
			return
		}
		id, key := string(hdr[1:]), string(hdr[:]) // key: kind and id, one per connection
		ev.note(key + ": header read by the backend")
		switch hdr[0] {
		case 'A': // read to EOF, then answer 1 MiB and close
			h := sha256.New()
			io.Copy(h, c)
			ev.sum(key) <- h.Sum(nil)
			c.Write(pattern(id, size))
		case 'B': // half-close at once, then read everything
			tc.CloseWrite()
			h := sha256.New()
			io.Copy(h, c)
			ev.sum(key) <- h.Sum(nil)
		case 'C': // the client half-closes; never answer nor close
			io.Copy(io.Discard, c) // the client's FIN
			<-hold
		case 'D': // half-close, then wait for the proxy to close
			tc.CloseWrite()
			ev.note(key + ": backend half-closed")
			_, err := io.Copy(io.Discard, c)
			ev.note(fmt.Sprintf("%s: backend saw the end (%v)", key, err))
			ev.end(key) <- time.Now()
		}
	})
	t.Cleanup(func() { close(hold) }) // before the backend's Kill, which waits for its handlers
	// Two proxies on the one backend: the half-closed transfers must not
	// depend on timing (a loaded machine may leave 1 MiB sitting in socket
	// buffers for seconds, which is idleness to the proxy), the half-open
	// ones are ended by a short idle_timeout.
	closedPort, openPort := harness.FreePort(t), harness.FreePort(t)
	pc := Start(t, harness.WriteConfig(t, server("")+noHealth+tcpRule("hc", closedPort, "b="+be.Addr)))
	po := Start(t, harness.WriteConfig(t, server(`idle_timeout = "2s"`)+noHealth+tcpRule("ho", openPort, "b="+be.Addr)))
	baseC, baseO := CountFDs(t, pc.PID()), CountFDs(t, po.PID())

	var wg sync.WaitGroup
	errs := make(chan error, 4*n)
	var mu sync.Mutex
	var halfOpen []time.Duration
	// The half-open connections have 2 s from their connect to their first
	// byte before idle_timeout ends them, so they connect and write first,
	// while nothing else in this process competes for the CPU (under -race
	// on a loaded machine, the 1 MiB transfers and their patterns and
	// checksums once held one such client off its write for 2 s); the
	// half-closed transfers start once every half-open header is written.
	var headers sync.WaitGroup
	headers.Add(2 * n)
	bulk := make(chan struct{})
	go func() { headers.Wait(); close(bulk) }()
	for i := 0; i < n; i++ {
		for _, kind := range "ABCD" {
			addr := fmt.Sprintf("127.0.0.1:%d", closedPort)
			if kind == 'C' || kind == 'D' {
				addr = fmt.Sprintf("127.0.0.1:%d", openPort)
			}
			wg.Add(1)
			go func(kind rune, id string) {
				defer wg.Done()
				var wrote func()
				if kind == 'C' || kind == 'D' {
					wrote = sync.OnceFunc(headers.Done)
					defer wrote() // also when the connection failed
				} else {
					<-bulk
				}
				d, err := halfConn(addr, kind, id, size, ev, wrote)
				if err != nil {
					errs <- fmt.Errorf("%c %s: %w", kind, id, err)
				}
				if d > 0 {
					mu.Lock()
					halfOpen = append(halfOpen, d)
					mu.Unlock()
				}
			}(kind, fmt.Sprintf("%08d", i))
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	sort.Slice(halfOpen, func(i, j int) bool { return halfOpen[i] < halfOpen[j] })
	// The access log below names idle_timeout as the end; its timer is
	// checked from below only, where a slow machine cannot make it fail.
	if halfOpen[0] < 2*time.Second {
		t.Errorf("half-open connections ended %v … %v after their last byte; want none before idle_timeout (2s)", halfOpen[0], halfOpen[len(halfOpen)-1])
	}
	harness.Eventually(t, "100 access log lines of each proxy", func() bool {
		return pc.Count("connection closed", "rule=hc") == 2*n && po.Count("connection closed", "rule=ho") == 2*n
	})
	if eof, idle := pc.Count("rule=hc", "end=eof"), po.Count("rule=ho", "end=idle_timeout"); eof != 2*n || idle != 2*n {
		t.Errorf("access log: %d half-closed connections with end=eof, %d half-open ones with end=idle_timeout; want %d each", eof, idle, 2*n)
	}
	// Only the kind C handlers, which never close by design, are left.
	harness.Eventually(t, "backend connections closed", func() bool { return be.Conns() == n })
	harness.Eventually(t, "descriptors back to the baseline", func() bool {
		return CountFDs(t, pc.PID()).Sockets == baseC.Sockets && CountFDs(t, po.PID()).Sockets == baseO.Sockets
	})
	t.Logf("%d half-closed connections each way moved 1 MiB after the FIN intact (end=eof); %d half-open ones ended %v … %v after their last byte (idle_timeout 2s, end=idle_timeout); sockets back to %d and %d",
		n, 2*n, halfOpen[0].Round(time.Millisecond), halfOpen[len(halfOpen)-1].Round(time.Millisecond), baseC.Sockets, baseO.Sockets)
}

// halfEvents carries what the backend saw to the client goroutines.
type halfEvents struct {
	mu    sync.Mutex
	log   []string                  // what the backend's handlers went through (for failures)
	sums  map[string]chan []byte    // kind and id → sha256 of what the backend received
	ended map[string]chan time.Time // kind and id → when the backend saw the proxy close (kind D)
}

func (e *halfEvents) sum(id string) chan []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.sums[id] == nil {
		e.sums[id] = make(chan []byte, 1)
	}
	return e.sums[id]
}

func (e *halfEvents) note(line string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log = append(e.log, time.Now().Format("15:04:05.000")+" "+line)
}

// notes returns the notes about key, and those of connections that ended
// before their header told the backend whose they were.
func (e *halfEvents) notes(key string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, l := range e.log {
		if strings.Contains(l, key) || strings.Contains(l, "header bytes") {
			out = append(out, l)
		}
	}
	return out
}

func (e *halfEvents) end(id string) chan time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ended[id] == nil {
		e.ended[id] = make(chan time.Time, 1)
	}
	return e.ended[id]
}

// pattern is size deterministic bytes derived from id (fast enough to
// generate while a connection waits, even under -race).
func pattern(id string, size int) []byte {
	out := make([]byte, size)
	mrand.NewChaCha8(sha256.Sum256([]byte(id))).Read(out)
	return out
}

// halfConn runs one connection of kind A–D (see TestHalfClosedAndHalfOpen).
// For the half-open kinds it returns how long after the FIN the proxy
// ended the connection. wrote (if not nil) is called once the header is
// written.
func halfConn(addr string, kind rune, id string, size int, ev *halfEvents, wrote func()) (time.Duration, error) {
	var payload []byte
	if kind == 'A' || kind == 'B' {
		payload = pattern("up"+id, size) // before connecting: the connection must not idle meanwhile
	}
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	tc := c.(*net.TCPConn)
	c.SetDeadline(time.Now().Add(harness.Deadline))
	key := string(kind) + id // as the backend keys its events
	sent := time.Now()       // just before the last byte of a half-open connection
	if _, err := io.WriteString(c, string(kind)+id); err != nil {
		return 0, err
	}
	if wrote != nil {
		wrote()
	}
	waitSum := func(payload []byte) error {
		select {
		case s := <-ev.sum(key):
			if !bytes.Equal(s, sha(payload)) {
				return errors.New("the backend received other bytes than were sent")
			}
			return nil
		case <-time.After(harness.Deadline):
			return errors.New("the backend never reached the end of the client's bytes")
		}
	}
	switch kind {
	case 'A':
		if _, err := c.Write(payload); err != nil {
			return 0, err
		}
		tc.CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil {
			return 0, err
		}
		if !bytes.Equal(got, pattern(id, size)) {
			return 0, fmt.Errorf("reply after the client's half-close: %d bytes, not the 1 MiB sent", len(got))
		}
		return 0, waitSum(payload)
	case 'B':
		if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
			return 0, fmt.Errorf("waiting for the backend's FIN: %d bytes, %v", n, err)
		}
		if _, err := c.Write(payload); err != nil {
			return 0, fmt.Errorf("writing after the backend's half-close: %w", err)
		}
		tc.CloseWrite()
		return 0, waitSum(payload)
	case 'C':
		tc.CloseWrite()
		// The backend never answers nor closes: the proxy must end it
		// (the backend's side is checked by the proxy's socket count).
		if _, err := io.Copy(io.Discard, c); err != nil {
			return 0, fmt.Errorf("waiting for the proxy to end the half-open connection: %w", err)
		}
		return time.Since(sent), nil
	default: // 'D'
		if _, err := io.Copy(io.Discard, c); err != nil { // the backend's FIN
			return 0, err
		}
		// Silent in both directions from now on: the proxy must end it.
		select {
		case at := <-ev.end(key):
			return at.Sub(sent), nil
		case <-time.After(harness.Deadline):
			// Say how far the backend got, so that a failure here can be
			// told apart: header never read, or the proxy's close not seen.
			return 0, fmt.Errorf("the half-open connection was never closed; backend notes: %v", ev.notes(key))
		}
	}
}

func sha(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// TestStalledReaderBoundedMemory
//
// Fault: clients that connect and then stop reading, while their backend
// pushes data as fast as it can.
// Load: 20 such connections, the backends pushing for 5 s.
// Must hold: the proxy does not buffer without bound: its RSS, sampled
// every 250 ms over the 5 s, stays within 16 MiB of what it was before the
// push; each backend's writes stall once the kernel's socket buffers and
// the splice pipe are full (no more than the kernel's buffers can hold:
// twice tcp_rmem's and tcp_wmem's maximum plus the 1 MiB pipe); and when
// the clients read again, each receives exactly the bytes its backend sent,
// in order (checksums equal).
func TestStalledReaderBoundedMemory(t *testing.T) {
	const n = 20
	push := 5 * time.Second
	type pushed struct {
		n   atomic.Int64
		sum chan []byte
	}
	var mu sync.Mutex
	byID := map[string]*pushed{}
	get := func(id string) *pushed {
		mu.Lock()
		defer mu.Unlock()
		if byID[id] == nil {
			byID[id] = &pushed{sum: make(chan []byte, 1)}
		}
		return byID[id]
	}
	stopPush := make(chan struct{})
	be := StartBackend(t, func(c net.Conn) {
		var id [8]byte
		if _, err := io.ReadFull(c, id[:]); err != nil {
			return
		}
		st := get(string(id[:]))
		h := sha256.New()
		chunk := make([]byte, 64<<10)
		for i := 0; ; i++ {
			select {
			case <-stopPush:
				c.(*net.TCPConn).CloseWrite()
				st.sum <- h.Sum(nil)
				io.Copy(io.Discard, c)
				return
			default:
			}
			rand.Read(chunk)
			c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			w, err := c.Write(chunk)
			h.Write(chunk[:w])
			st.n.Add(int64(w))
			if err != nil && !isTimeout(err) {
				st.sum <- nil
				return
			}
			if w < len(chunk) { // finish the chunk later, in order
				rest := chunk[w:]
				for len(rest) > 0 {
					select {
					case <-stopPush:
						c.SetWriteDeadline(time.Time{})
					default:
						c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
					}
					w, err := c.Write(rest)
					h.Write(rest[:w])
					st.n.Add(int64(w))
					rest = rest[w:]
					if err != nil && !isTimeout(err) {
						st.sum <- nil
						return
					}
				}
			}
		}
	})
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := Start(t, harness.WriteConfig(t, server("")+noHealth+tcpRule("stall", port, "b="+be.Addr)))

	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.DialTimeout("tcp", addr, harness.Deadline)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// A small receive buffer, as a slow client would have.
		c.(*net.TCPConn).SetReadBuffer(64 << 10)
		fmt.Fprintf(c, "%08d", i)
		conns[i] = c
	}
	harness.Eventually(t, "20 connections at the backend", func() bool { return be.Conns() == n })
	before := RSS(t, p.PID())
	peak := before
	start := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	for time.Since(start) < push {
		<-tick.C
		if r := RSS(t, p.PID()); r > peak {
			peak = r
		}
	}
	tick.Stop()
	var most int64
	for i := 0; i < n; i++ {
		if v := get(fmt.Sprintf("%08d", i)).n.Load(); v > most {
			most = v
		}
	}
	// Still stalled: what was pushed no longer grows.
	stalled := get("00000000").n.Load()
	cpu0 := CPU(t, p.PID())
	time.Sleep(time.Until(start.Add(push + time.Second))) // a measuring window, not a synchronisation
	cpuStalled := CPU(t, p.PID()) - cpu0
	grew := get("00000000").n.Load() - stalled
	close(stopPush)

	// Read everything now: exactly what was sent, in order.
	var wg sync.WaitGroup
	errs := make(chan error, n)
	var total atomic.Int64
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(time.Now().Add(harness.Deadline))
			h := sha256.New()
			got, err := io.Copy(h, c)
			total.Add(got)
			if err != nil {
				errs <- err
				return
			}
			want := <-get(fmt.Sprintf("%08d", i)).sum
			if !bytes.Equal(h.Sum(nil), want) {
				errs <- fmt.Errorf("connection %d: %d bytes read, checksum differs from what the backend sent", i, got)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d stalled readers, backends pushing for %v: proxy RSS %s before, peak %s (+%s); at most %s pushed into one stalled connection; %d bytes more in the last second; proxy CPU %v in that second; then %s delivered intact",
		n, push, MiB(before), MiB(peak), MiB(peak-before), MiB(most), grew, cpuStalled, MiB(total.Load()))
	if peak-before > 16<<20 {
		t.Errorf("proxy RSS grew by %s while clients did not read", MiB(peak-before))
	}
	if bound := kernelBuffers(t); most > bound {
		t.Errorf("%s pushed into one connection whose client does not read, more than the kernel's buffers (%s): the proxy buffers", MiB(most), MiB(bound))
	}
	if grew > 1<<20 {
		t.Errorf("a stalled connection still took %d bytes in a second", grew)
	}
}

// kernelBuffers is the most a stalled proxied connection can hold in the
// kernel: the receive and send buffers of both sockets of the proxy and of
// the peers (at their sysctl maximum), and the splice pipe (1 MiB).
func kernelBuffers(t *testing.T) int64 {
	t.Helper()
	max := func(name string) int64 {
		b, err := os.ReadFile("/proc/sys/net/ipv4/" + name)
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b))
		v, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
		return v
	}
	return 2*max("tcp_rmem") + 2*max("tcp_wmem") + 2<<20
}
