// Package faults is the hardening suite: it runs the built dynamic-proxy
// binary against misbehaving backends and clients, descriptor exhaustion,
// reload storms and a soak of mixed load, all on loopback, and checks what
// must hold after each fault.
//
// TestMain builds the binary once (with -race when FAULTS_RACE is set); each
// test starts its own proxy on free ports, waits for events (log lines,
// counters, /proc), never sleeps to synchronise, and stops everything it
// started. Running the binary is test/harness, shared with test/e2e; the
// helpers here are the fault suite's own.
package faults

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

var binary string

func TestMain(m *testing.M) { harness.Main(m, "faults", "FAULTS_RACE", &binary) }

// RewriteConfig replaces the config at path (by rename, as editors do).
func RewriteConfig(t testing.TB, path, toml string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(harness.WithFreeObservePorts(toml)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// Start runs the binary on configPath and waits for "dynamic-proxy started".
// wrapper (may be empty) is a command the binary is run under, such as
// prlimit. The process is killed when the test ends if still running.
func Start(t testing.TB, configPath string, wrapper ...string) *harness.Proxy {
	t.Helper()
	argv := append(append([]string{}, wrapper...), binary, "-c", configPath)
	p := harness.Launch(t, configPath, argv...)
	p.WaitLog("dynamic-proxy started")
	return p
}

var addressRe = regexp.MustCompile(`address=(\S+)`)

// Backend is a TCP backend that runs handle on every connection. It can be
// killed (listener and every connection closed at once) and restarted on
// the same address.
type Backend struct {
	t      testing.TB
	Addr   string
	handle func(net.Conn)

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// StartBackend starts a backend on a free port of 127.0.0.1.
func StartBackend(t testing.TB, handle func(net.Conn)) *Backend {
	t.Helper()
	b := &Backend{t: t, Addr: "127.0.0.1:0", handle: handle}
	b.Restart()
	t.Cleanup(b.Kill)
	return b
}

// Restart listens again on the backend's address.
func (b *Backend) Restart() {
	b.t.Helper()
	var ln net.Listener
	// The port is held a moment by the old socket's close.
	harness.Eventually(b.t, "listening again on "+b.Addr, func() (err error) {
		ln, err = net.Listen("tcp", b.Addr)
		return err
	})
	b.mu.Lock()
	b.ln, b.Addr, b.conns = ln, ln.Addr().String(), map[net.Conn]struct{}{}
	b.mu.Unlock()
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			if b.ln != ln {
				b.mu.Unlock()
				c.Close()
				return
			}
			b.conns[c] = struct{}{}
			b.wg.Add(1)
			b.mu.Unlock()
			go func() {
				defer b.wg.Done()
				defer func() {
					b.mu.Lock()
					delete(b.conns, c)
					b.mu.Unlock()
					c.Close()
				}()
				b.handle(c)
			}()
		}
	}()
}

// Kill closes the listener and resets every open connection, and waits for
// the handlers to return.
func (b *Backend) Kill() {
	b.mu.Lock()
	if b.ln != nil {
		b.ln.Close()
		b.ln = nil
	}
	for c := range b.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// Conns is the number of connections open now.
func (b *Backend) Conns() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// Echo copies a connection back to itself and half-closes at EOF.
func Echo(c net.Conn) {
	io.Copy(c, c)
	c.(*net.TCPConn).CloseWrite()
	io.Copy(io.Discard, c)
}

// Greet writes "name\n" and then echoes.
func Greet(name string) func(net.Conn) {
	return func(c net.Conn) {
		io.WriteString(c, name+"\n")
		Echo(c)
	}
}

// ---- /proc ----------------------------------------------------------------

// CPU is the CPU time (utime + stime) process pid has used.
func CPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// RSS is the resident set of process pid, in bytes (VmRSS).
func RSS(t testing.TB, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// FDs counts the descriptors of process pid: all, sockets and pipe ends.
type FDs struct{ All, Sockets, Pipes int }

func (f FDs) String() string {
	return fmt.Sprintf("%d fds (%d sockets, %d pipe ends)", f.All, f.Sockets, f.Pipes)
}

// CountFDs reads /proc/PID/fd.
func CountFDs(t testing.TB, pid int) FDs {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var f FDs
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		f.All++
		switch {
		case strings.HasPrefix(target, "socket:"):
			f.Sockets++
		case strings.HasPrefix(target, "pipe:"):
			f.Pipes++
		}
	}
	return f
}

// Goroutines reads go_goroutines from the metrics endpoint.
func Goroutines(t testing.TB, url string) int {
	t.Helper()
	return int(harness.Scrape(t, url).Value("go_goroutines", nil))
}

// MiB formats bytes in MiB.
func MiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// isTimeout reports whether err is a deadline.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// steadyBaseline waits until the proxy's goroutines and sockets have held
// still for 200 ms, with ready (if not nil) true, and returns them. No event
// says that the runtime parts a first connection starts lazily have
// settled, so a baseline is a value that stopped changing.
func steadyBaseline(t testing.TB, p *harness.Proxy, url string, ready func() bool) (int, FDs) {
	t.Helper()
	var g int
	var f FDs
	var since time.Time
	harness.Eventually(t, "a steady baseline", func() bool {
		g1, f1 := Goroutines(t, url), CountFDs(t, p.PID())
		if since.IsZero() || g1 != g || f1.Sockets != f.Sockets || (ready != nil && !ready()) {
			g, f, since = g1, f1, time.Now()
			return false
		}
		return time.Since(since) >= 200*time.Millisecond
	})
	return g, f
}

// backToBaseline waits until the proxy's goroutines and sockets are back to
// baseG and baseFD.Sockets, and stores the last values seen in g and f. On
// failure it lists the proxy's descriptors.
func backToBaseline(t testing.TB, p *harness.Proxy, url string, baseG int, baseFD FDs, g *int, f *FDs) {
	t.Helper()
	harness.Eventually(t, "back to the baseline", func() error {
		*g, *f = Goroutines(t, url), CountFDs(t, p.PID())
		if *g == baseG && f.Sockets == baseFD.Sockets {
			return nil
		}
		return offBaseline{fmt.Sprintf("goroutines %d (baseline %d), descriptors %v (baseline %v)", *g, baseG, *f, baseFD), p}
	})
}

// offBaseline is the state backToBaseline last saw; its message lists the
// proxy's descriptors as they are when the test fails.
type offBaseline struct {
	state string
	p     *harness.Proxy
}

func (e offBaseline) Error() string { return e.state + "\n" + debugDump(e.p) }

// debugDump lists the proxy's descriptors and, when the config turned
// [admin] pprof on, its goroutines: what a leak report needs.
func debugDump(p *harness.Proxy) string {
	var b strings.Builder
	dir := fmt.Sprintf("/proc/%d/fd", p.PID())
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		fmt.Fprintf(&b, "fd %s -> %s\n", e.Name(), target)
	}
	if m := addressRe.FindStringSubmatch(p.WaitLog("admin API listening")); m != nil && strings.Contains(p.Log(), "pprof=true") {
		c := &http.Client{Timeout: harness.Deadline, Transport: &http.Transport{DisableKeepAlives: true}}
		if res, err := c.Get("http://" + m[1] + "/debug/pprof/goroutine?debug=1"); err == nil {
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			b.Write(body)
		}
	}
	return b.String()
}
