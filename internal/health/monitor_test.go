package health

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

var errCheck = errors.New("dial tcp 127.0.0.1:9001: connect: connection refused")

// machine is a monitor fed results by hand: the state machine alone.
func machine(t *testing.T, retries, rise int) (*Monitor, *logBuffer) {
	t.Helper()
	log, lb := newLog()
	c := check(t, "tcp", "127.0.0.1:9001", func(h *config.HealthCheck) { h.Retries, h.Rise = retries, rise })
	return NewMonitor(c, &backend.Health{Address: c.Address}, log), lb
}

// TestStateMachine feeds sequences of results ('+' pass, '-' fail) and
// checks the state after each.
func TestStateMachine(t *testing.T) {
	for _, tc := range []struct {
		retries, rise int
		results       string
		states        string // 'U' up, 'D' down after each result
	}{
		{3, 2, "---", "UUD"},
		{3, 2, "--+---", "UUUUUD"},
		{3, 2, "---+-++", "UUDDDDU"},
		{1, 1, "-+-+", "DUDU"},
		{3, 2, "---++++--+--", "UUDDUUUUUUUU"},
		{2, 3, "--++-+++", "UDDDDDDU"},
		{3, 3, "-+-+-+-+-+-+-+-+-+-+", strings.Repeat("U", 20)},
		{3, 3, "---" + strings.Repeat("+-", 20), "UUD" + strings.Repeat("D", 40)},
		{3, 3, "--+--+--+--+", strings.Repeat("U", 12)},
		{3, 3, "---++-++-++-", strings.Repeat("U", 2) + strings.Repeat("D", 10)},
	} {
		t.Run(fmt.Sprintf("retries=%d,rise=%d,%s", tc.retries, tc.rise, tc.results), func(t *testing.T) {
			m, _ := machine(t, tc.retries, tc.rise)
			got := ""
			for _, r := range tc.results {
				if r == '+' {
					m.record(nil)
				} else {
					m.record(errCheck)
				}
				if m.h.Up() {
					got += "U"
				} else {
					got += "D"
				}
			}
			if got != tc.states {
				t.Errorf("results %s: states %s, want %s", tc.results, got, tc.states)
			}
		})
	}
}

// TestTransitionsLogged: each transition is one warn line with the reason.
func TestTransitionsLogged(t *testing.T) {
	m, lb := machine(t, 3, 2)
	m.SetNames([]string{"web/a", "api/a"})
	for i := 0; i < 3; i++ {
		m.record(errCheck)
	}
	st := m.h.Status()
	if st.Up || !strings.Contains(st.Reason, "connection refused") || !strings.Contains(st.Reason, "failed 3 tcp connect checks in a row") {
		t.Errorf("status after 3 failures: %+v", st)
	}
	for i := 0; i < 5; i++ {
		m.record(errCheck) // already down: no more lines
	}
	m.record(nil)
	m.record(nil)
	down, up := lb.lines("backend down"), lb.lines("backend up")
	if len(down) != 1 || len(up) != 1 {
		t.Fatalf("want one down and one up line, got:\n%s", lb)
	}
	for _, want := range []string{"level=WARN", `reason="dial tcp 127.0.0.1:9001: connect: connection refused (failed 3 tcp connect checks in a row)"`, "address=127.0.0.1:9001", "detection=active", "backends=\"[web/a api/a]\""} {
		if !strings.Contains(down[0], want) {
			t.Errorf("down line lacks %s:\n%s", want, down[0])
		}
	}
	if !strings.Contains(up[0], "level=WARN") || !strings.Contains(up[0], `reason="passed 2 tcp connect checks in a row"`) {
		t.Errorf("up line: %s", up[0])
	}
	if n := len(lb.lines("health check failed")); n != 3 {
		t.Errorf("want 3 debug lines for the failures up to the transition, got %d:\n%s", n, lb)
	}
}

// TestPassive: dial failures of real traffic mark a backend down without
// waiting for a check; a success or the window running out resets the count.
func TestPassive(t *testing.T) {
	log, lb := newLog()
	c := check(t, "tcp", "127.0.0.1:9001", func(h *config.HealthCheck) {
		h.PassiveFailures, h.PassiveWindow = 3, config.Duration(10*time.Second)
	})
	m := NewMonitor(c, &backend.Health{Address: c.Address}, log)
	now := time.Unix(1000, 0)
	m.now = func() time.Time { return now }
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}

	m.DialResult(refused)
	m.DialResult(refused)
	m.DialResult(nil) // a success in between: start again
	m.DialResult(refused)
	m.DialResult(refused)
	if !m.h.Up() {
		t.Fatal("down after failures that a success interrupted")
	}
	now = now.Add(11 * time.Second) // the window ran out: this is failure 1 again
	m.DialResult(refused)
	m.DialResult(refused)
	if !m.h.Up() {
		t.Fatal("down after failures spread over more than the window")
	}
	for i := 0; i < 5; i++ {
		m.DialResult(&net.OpError{Op: "dial", Net: "tcp", Err: syscall.EMFILE})
	}
	if !m.h.Up() {
		t.Fatal("down because this host ran out of file descriptors")
	}
	now = now.Add(time.Second)
	m.DialResult(refused)
	if m.h.Up() {
		t.Fatal("still up after 3 dial failures in a row within the window")
	}
	if st := m.h.Status(); !strings.Contains(st.Reason, "3 dials of traffic failed in a row within 10s") || !strings.Contains(st.Reason, "connection refused") {
		t.Errorf("reason %q", st.Reason)
	}
	if l := lb.lines("backend down"); len(l) != 1 || !strings.Contains(l[0], "detection=passive") {
		t.Errorf("log:\n%s", lb)
	}
	// Back up only after rise active passes.
	m.record(nil)
	if m.h.Up() {
		t.Fatal("up after 1 pass with rise 2")
	}
	m.record(nil)
	if !m.h.Up() {
		t.Fatal("not up after rise passes")
	}
}

// TestPassiveSuccessIsCheap: a successful dial does not lock.
func TestPassiveSuccessIsCheap(t *testing.T) {
	m, _ := machine(t, 3, 2)
	if n := testing.AllocsPerRun(1000, func() { m.DialResult(nil) }); n != 0 {
		t.Errorf("DialResult(nil) allocates %v times", n)
	}
}

// TestPassiveCooldown: with active checks off, a backend passive detection
// marked down comes back after the cool-down.
func TestPassiveCooldown(t *testing.T) {
	log, lb := newLog()
	c := check(t, "tcp", "127.0.0.1:9001", func(h *config.HealthCheck) {
		h.Enabled = false
		h.PassiveFailures, h.PassiveCooldown = 2, config.Duration(50*time.Millisecond)
	})
	h := &backend.Health{Address: c.Address}
	m := NewMonitor(c, h, log)
	m.Start()
	defer m.Stop()
	h.ReportDial(errCheck) // through the Health, as the proxy reports it
	h.ReportDial(errCheck)
	if h.Up() {
		t.Fatal("not down after passive_failures")
	}
	down := time.Now()
	harness.Eventually(t, "the cool-down to bring it back", h.Up)
	if took := time.Since(down); took < 40*time.Millisecond {
		t.Errorf("back after %v, before the 50ms cool-down", took)
	}
	harness.Eventually(t, "the up line", func() bool { return len(lb.lines("backend up")) > 0 })
	if l := lb.lines("backend up"); len(l) != 1 || !strings.Contains(l[0], "passive cool-down of 50ms is over") {
		t.Errorf("log:\n%s", lb)
	}
}

// liveMonitor runs a real monitor of addr and reports every check result.
func liveMonitor(t *testing.T, protocol, addr string, edit func(*config.HealthCheck)) (*Monitor, <-chan error, *logBuffer) {
	t.Helper()
	log, lb := newLog()
	c := check(t, protocol, addr, edit)
	m := NewMonitor(c, &backend.Health{Address: addr}, log)
	results := make(chan error, 1000)
	m.onResult = func(err error) {
		select {
		case results <- err:
		default:
		}
	}
	m.Start()
	t.Cleanup(m.Stop)
	return m, results, lb
}

// TestLiveDownAndUp: a backend that stops listening is marked down after
// retries failed checks, and up again after rise passed checks once it
// listens again.
func TestLiveDownAndUp(t *testing.T) {
	s := startTCP(t, nil)
	m, results, _ := liveMonitor(t, "tcp", s.addr, nil)
	c := m.check
	harness.Eventually(t, "a first passed check", func() bool { return <-results == nil })

	s.stop()
	harness.Eventually(t, "down", func() bool { return !m.h.Up() })
	// Down after exactly retries failed checks: the checks decide it, not
	// a clock.
	want := fmt.Sprintf("(failed %d tcp connect checks in a row)", c.Retries)
	if r := m.h.Status().Reason; !strings.Contains(r, "connection refused") || !strings.Contains(r, want) {
		t.Errorf("reason %q, want connection refused and %s", r, want)
	}

	for len(results) > 0 {
		<-results
	}
	s.start()
	harness.Eventually(t, "up", m.h.Up)
	if n := s.accepted.Load(); n < int64(c.Rise) {
		t.Errorf("up after %d checks reached the restarted backend, rise is %d", n, c.Rise)
	}
}

// TestLiveFlappingNeverFlips: a backend whose replies alternate between good
// and bad never changes state with retries = rise = 3, from up or from down.
func TestLiveFlappingNeverFlips(t *testing.T) {
	var good atomic.Bool
	good.Store(true)
	var flap atomic.Bool
	s := startTCP(t, func(c net.Conn, n int64) {
		buf := make([]byte, 16)
		if _, err := c.Read(buf); err != nil {
			return
		}
		if good.Load() || flap.Load() && n%2 == 0 {
			io.WriteString(c, "+PONG\r\n")
		} else {
			io.WriteString(c, "-ERR\r\n")
		}
	})
	m, results, lb := liveMonitor(t, "tcp", s.addr, func(h *config.HealthCheck) {
		h.Send, h.Expect, h.Retries, h.Rise = "PING\r\n", "+PONG", 3, 3
		h.Interval, h.Timeout = config.Duration(10*time.Millisecond), config.Duration(8*time.Millisecond)
	})
	harness.Eventually(t, "a first passed check", func() bool { return <-results == nil })

	count := func(n int) (pass, fail int) {
		for pass+fail < n {
			select {
			case err := <-results:
				if err == nil {
					pass++
				} else {
					fail++
				}
			case <-time.After(deadline):
				t.Fatalf("no check result for %v", deadline)
			}
		}
		return
	}
	// Up, flapping: never down.
	good.Store(false)
	flap.Store(true)
	if pass, fail := count(40); pass < 10 || fail < 10 {
		t.Fatalf("not flapping: %d passes, %d failures", pass, fail)
	}
	if !m.h.Up() || len(lb.lines("backend down")) != 0 {
		t.Fatalf("a flapping backend went down:\n%s", lb)
	}
	// Down (every check fails), then flapping: never up.
	flap.Store(false)
	harness.Eventually(t, "down", func() bool { return !m.h.Up() })
	flap.Store(true)
	for len(results) > 0 {
		<-results
	}
	if pass, fail := count(40); pass < 10 || fail < 10 {
		t.Fatalf("not flapping: %d passes, %d failures", pass, fail)
	}
	if m.h.Up() || len(lb.lines("backend up")) != 0 {
		t.Fatalf("a flapping backend came up:\n%s", lb)
	}
}

// TestLiveUDPSilence: a UDP backend that stops replying goes down.
func TestLiveUDPSilence(t *testing.T) {
	var silent atomic.Bool
	s := startUDP(t, func(req []byte, _ int64) []byte {
		if silent.Load() {
			return nil
		}
		return []byte("pong")
	})
	m, results, _ := liveMonitor(t, "udp", s.addr, func(h *config.HealthCheck) { h.Send, h.Expect = "ping", "pong" })
	harness.Eventually(t, "a first passed check", func() bool { return <-results == nil })
	silent.Store(true)
	harness.Eventually(t, "down", func() bool { return !m.h.Up() })
	if r := m.h.Status().Reason; !strings.Contains(r, "no reply from udp "+s.addr) {
		t.Errorf("reason %q", r)
	}
	silent.Store(false)
	harness.Eventually(t, "up", m.h.Up)
}

// TestSlowStartRamp: coming back up with slow_start ramps the weight and
// moves the version of its backends' Set while it does.
func TestSlowStartRamp(t *testing.T) {
	m, _ := machine(t, 1, 1)
	m.check.SlowStart = 200 * time.Millisecond
	m.Start()
	defer m.Stop()
	b := backend.New("r", "a", m.check.Address, 1000, m.h)
	set := backend.NewSet([]*backend.Backend{b})
	defer set.Close()
	m.record(errCheck)
	m.record(nil)
	if w := b.Weight(); w > 500 {
		t.Errorf("weight %d right after coming up, want a small one", w)
	}
	v := set.Version()
	harness.Eventually(t, "the ramp to move the set's version", func() bool { return set.Version() != v })
	harness.Eventually(t, "full weight", func() bool { return b.Weight() == 1000 })
	harness.Eventually(t, "the ramp goroutine to end", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return !m.ramping
	})
}
