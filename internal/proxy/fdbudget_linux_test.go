package proxy

import (
	"bytes"
	"fmt"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeLimit gives s a descriptor limit of lim (changeable while it runs)
// and nothing open besides its data path, so that its budget is exactly
// lim less the reserve. Call it before the first listener.
func fakeLimit(s *Server, lim int64) *atomic.Int64 {
	var l atomic.Int64
	l.Store(lim)
	s.fds.limitf = func() (int64, error) { return l.Load(), nil }
	s.fds.countf = func() (int, error) { return int(s.dataFDs()), nil }
	return &l
}

// drainPipePool closes the pooled splice pipes earlier tests left, which
// count against every budget of the process.
func drainPipePool() {
	for p := pipes.Get(); p != nil; p = pipes.Get() {
		closePipe(p)
	}
}

func budgetLog(r logRec) bool { return strings.HasPrefix(r.msg, "out of descriptors") }

// TestDescriptorBudgetPausesAccept: at its budget the data path stops
// accepting; the next client waits in the backlog (not reset), the pause
// is counted and logged once, and the client is served as soon as a
// connection closes.
func TestDescriptorBudgetPausesAccept(t *testing.T) {
	drainPipePool()
	be := startBackend(t, echo)
	s, logs := newTestServer(t)
	fakeLimit(s, 8+6) // the reserve is 8: a budget of 6 descriptors, 3 connections
	addr := listen(t, s, newRoute(t, "fd", be.addr))
	if d := s.Descriptors(); d.Limit != 14 || d.Reserve != 8 || d.Budget != 6 || d.DataPath != 0 {
		t.Fatalf("budget before any connection: %+v; want limit 14, reserve 8, budget 6, none held", d)
	}
	var held []io.ReadWriteCloser
	for i := range 3 {
		c := dial(t, addr)
		c.Write([]byte("hello\n"))
		if got := readLine(t, c); got != "hello" {
			t.Fatalf("connection %d within the budget: echo %q", i, got)
		}
		held = append(held, c)
	}
	if d := s.Descriptors(); d.DataPath != 6 {
		t.Fatalf("3 connections hold %d descriptors by the count; want 6", d.DataPath)
	}
	late := dial(t, addr) // the kernel completes the handshake: the backlog holds it
	late.Write([]byte("late\n"))
	harness.Eventually(t, "the loop to pause accepting at the budget", func() bool { return s.Descriptors().Refused[RefusedAccept] > 0 })
	logs.wait(t, "for the episode", budgetLog)
	if n := s.Accepted(); n != 3 {
		t.Fatalf("%d connections accepted with room for 3", n)
	}
	if n := s.Stats.Rejected.Load(); n != 0 {
		t.Fatalf("%d connections rejected: the budget must make them wait, not reset them", n)
	}
	held[0].Close()
	if got := readLine(t, late); got != "late" {
		t.Fatalf("the waiting client once a connection closed: echo %q", got)
	}
	if n := logs.count(budgetLog); n != 1 {
		t.Errorf("%d \"out of descriptors\" lines for one episode; want 1", n)
	}
	r := logs.wait(t, "", budgetLog)
	if err := fmt.Sprint(r.attrs["err"]); !strings.Contains(err, "budget of 6") || !strings.Contains(err, "reserve of 8") {
		t.Errorf("the episode's line does not give the budget and the reserve: %q", err)
	}
}

// TestDescriptorBudgetCopiesWithoutPipe: with no room for a splice pipe a
// bulk transfer is copied through the buffer, whole, and counted.
func TestDescriptorBudgetCopiesWithoutPipe(t *testing.T) {
	drainPipePool()
	be := startBackend(t, echo)
	s, _ := newTestServer(t)
	fakeLimit(s, 8+2) // room for one connection and no pipe
	addr := listen(t, s, newRoute(t, "fd", be.addr))
	c := dial(t, addr)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: bursts that fill the buffer
	go c.Write(data)
	got := make([]byte, len(data))
	c.SetReadDeadline(time.Now().Add(deadline))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("1 MiB echoed without a pipe: %v, equal %v", err, bytes.Equal(got, data))
	}
	if n := s.Descriptors().Refused[RefusedPipe]; n == 0 {
		t.Fatal("the bursts took no splice pipe, and none was counted as refused")
	}
	if n := splicePipes.Load(); n != 0 {
		t.Fatalf("%d pipe ends open beyond the budget", n)
	}
}

// TestDescriptorBudgetUDP: at the budget a new client's datagrams are
// dropped and counted; once the limit is raised (prlimit on a running
// process) and counted, the client gets its session.
func TestDescriptorBudgetUDP(t *testing.T) {
	drainPipePool()
	be := startUDPBackend(t, echoReply)
	s, _ := newTestServer(t)
	lim := fakeLimit(s, 8) // a budget of 0
	l := listenUDPTest(t, s, newUDPRoute(t, "fd", be.addr))
	c := udpClient(t, l.Addr())
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, "the datagram to be refused at the budget", func() bool { return s.Descriptors().Refused[RefusedUDPSession] > 0 })
	if n := s.UDP.Sessions.Load(); n != 0 {
		t.Fatalf("%d sessions opened with a budget of 0", n)
	}
	lim.Store(8 + 1)
	s.RecountDescriptors()
	mustRoundTrip(t, c, []byte("ping"), []byte("ping"))
	if d := s.Descriptors(); d.DataPath != 1 || d.Budget != 1 {
		t.Fatalf("one session: %+v; want 1 descriptor held, budget 1", d)
	}
}
