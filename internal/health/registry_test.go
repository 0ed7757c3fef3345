package health

import (
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

func testHC(interval time.Duration) config.HealthCheck {
	return config.HealthCheck{
		Enabled: true, Interval: config.Duration(interval), Timeout: config.Duration(interval / 2),
		Retries: 2, Rise: 1, PassiveFailures: 3, PassiveWindow: config.Duration(time.Second),
	}
}

func mustHealth(t *testing.T, u *Update, protocol, addr string, hc config.HealthCheck, name string) *Monitor {
	t.Helper()
	h, err := u.Health(protocol, addr, hc, name)
	if err != nil {
		t.Fatal(err)
	}
	for k, m := range u.mons {
		if m.h == h && k.Address == addr && k.Protocol == protocol && k.Check == hc {
			return m
		}
	}
	t.Fatalf("no monitor for %s", addr)
	return nil
}

// TestRegistryShares: backends of any rule with the same protocol, address
// and check share one Health; a different check or protocol gets its own.
func TestRegistryShares(t *testing.T) {
	log, _ := newLog()
	r := NewRegistry(log)
	defer r.Close()
	hc := testHC(time.Hour)
	u := r.Begin()
	a := mustHealth(t, u, "tcp", "127.0.0.1:1", hc, "web/a")
	b := mustHealth(t, u, "tcp", "127.0.0.1:1", hc, "api/x")
	other := hc
	other.Rise = 5
	c := mustHealth(t, u, "tcp", "127.0.0.1:1", other, "slow/a")
	d := mustHealth(t, u, "udp", "127.0.0.1:1", testHCUDP(), "dns/a")
	if a != b || a == c || a == d || c == d {
		t.Fatalf("sharing wrong: a=%p b=%p c=%p d=%p", a, b, c, d)
	}
	if len(r.Monitors()) != 0 {
		t.Fatal("monitors running before Commit")
	}
	u.Commit()
	if len(r.Monitors()) != 3 {
		t.Fatalf("%d monitors running, want 3", len(r.Monitors()))
	}
	if got := *a.names.Load(); len(got) != 2 || got[0] != "api/x" || got[1] != "web/a" {
		t.Errorf("names %v", got)
	}
	if a.h.Address != "127.0.0.1:1" {
		t.Errorf("health address %q", a.h.Address)
	}
}

func testHCUDP() config.HealthCheck {
	hc := testHC(time.Hour)
	hc.Send = "ping"
	return hc
}

// TestRegistryReload: an unchanged check keeps its monitor and state across
// an update; a changed one starts afresh but keeps the address's up/down
// state; an unused one stops.
func TestRegistryReload(t *testing.T) {
	log, _ := newLog()
	r := NewRegistry(log)
	defer r.Close()
	hc := testHC(time.Hour)
	u := r.Begin()
	keep := mustHealth(t, u, "tcp", "127.0.0.1:1", hc, "web/a")
	change := mustHealth(t, u, "tcp", "127.0.0.1:2", hc, "web/b")
	gone := mustHealth(t, u, "tcp", "127.0.0.1:3", hc, "web/c")
	u.Commit()
	keep.h.Transition(false, "keep is down")
	change.h.Transition(false, "change is down")

	// An update that is dropped changes nothing.
	dropped := r.Begin()
	mustHealth(t, dropped, "tcp", "127.0.0.1:9", hc, "x/y")
	if len(r.Monitors()) != 3 {
		t.Fatal("a dropped update changed the running monitors")
	}

	changed := hc
	changed.Interval = config.Duration(2 * time.Hour)
	u = r.Begin()
	keep2 := mustHealth(t, u, "tcp", "127.0.0.1:1", hc, "web/a")
	change2 := mustHealth(t, u, "tcp", "127.0.0.1:2", changed, "web/b")
	u.Commit()
	if keep2 != keep {
		t.Error("an unchanged check got a new monitor")
	}
	if change2 == change || change2.h == change.h {
		t.Fatal("a changed check kept its monitor")
	}
	if change2.h.Up() || change2.h.Status().Reason != "change is down" {
		t.Errorf("a changed check lost the address's down state: %+v", change2.h.Status())
	}
	mons := r.Monitors()
	if len(mons) != 2 {
		t.Fatalf("%d monitors after the update, want 2", len(mons))
	}
	for _, m := range []*Monitor{change, gone} {
		select {
		case <-m.ctx.Done():
		default:
			t.Errorf("monitor of %s not stopped", m.check.Address)
		}
	}
}

// TestRegistryChecksRun: committed monitors check their backend; Close
// stops them (goleak verifies no goroutine is left).
func TestRegistryChecksRun(t *testing.T) {
	s := startTCP(t, nil)
	log, _ := newLog()
	r := NewRegistry(log)
	u := r.Begin()
	if _, err := u.Health("tcp", s.addr, testHC(20*time.Millisecond), "web/a"); err != nil {
		t.Fatal(err)
	}
	u.Commit()
	harness.Eventually(t, "two checks", func() bool { return s.accepted.Load() >= 2 })
	r.Close()
	if len(r.Monitors()) != 0 {
		t.Error("monitors left after Close")
	}
	// Nothing runs after Close, not even a later update.
	u = r.Begin()
	u.Health("tcp", s.addr, testHC(20*time.Millisecond), "web/a")
	u.Commit()
	if len(r.Monitors()) != 0 {
		t.Error("an update after Close started monitors")
	}
}

func TestRegistryCompileError(t *testing.T) {
	log, _ := newLog()
	r := NewRegistry(log)
	defer r.Close()
	hc := testHC(time.Hour)
	hc.Rise = 0
	if _, err := r.Begin().Health("tcp", "127.0.0.1:1", hc, "web/a"); err == nil {
		t.Fatal("a bad check compiled")
	}
}

// TestAwaitFirstCheck: a new monitor told to await its first check starts
// down and comes up on its first pass, at once (not after rise passes, not
// at its place in an hour-long interval); a running monitor is left alone.
func TestAwaitFirstCheck(t *testing.T) {
	log, _ := newLog()
	r := NewRegistry(log)
	defer r.Close()
	srv := startTCP(t, func(c net.Conn, _ int64) { c.Close() })
	hc := testHC(time.Hour)
	hc.Rise = 5
	u := r.Begin()
	m := mustHealth(t, u, "tcp", srv.addr, hc, "r/new")
	u.AwaitFirstCheck(m.h)
	if m.h.Up() || m.h.Status().Reason != "new: awaiting its first health check" {
		t.Fatalf("awaiting: up %v, %+v", m.h.Up(), m.h.Status())
	}
	u.Commit()
	harness.Eventually(t, "the first check to bring it up", m.h.Up)

	// The same address in the next update: the running monitor keeps its state.
	u2 := r.Begin()
	m2 := mustHealth(t, u2, "tcp", srv.addr, hc, "r/new")
	u2.AwaitFirstCheck(m2.h)
	if m2 != m || !m2.h.Up() {
		t.Fatal("a running monitor was held down again")
	}
	u2.Commit()
}

// TestTransitionObserver: the registry's transition observer hears every
// down and up of its monitors, passive ones included, and nothing else.
func TestTransitionObserver(t *testing.T) {
	log, _ := newLog()
	r := NewRegistry(log)
	defer r.Close()
	var got []string
	r.SetTransitionObserver(func(h *backend.Health, up bool) {
		got = append(got, fmt.Sprintf("%s:%v", h.Address, up))
	})
	u := r.Begin()
	m := mustHealth(t, u, "tcp", "127.0.0.1:1", testHC(time.Hour), "web/a") // (not committed: no checks run)
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for range 3 {
		m.DialResult(refused) // passive: down at the third
	}
	m.DialResult(refused) // already down: no transition
	m.record(nil)         // rise 1: up
	if want := "127.0.0.1:1:false,127.0.0.1:1:true"; strings.Join(got, ",") != want {
		t.Fatalf("observed %v, want %s", got, want)
	}
}
