package health

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// Monitor runs one Check and owns the state machine of one backend.Health:
//
//   - up → down after Retries active checks fail in a row, or at once when
//     PassiveFailures dials of real traffic fail in a row within
//     PassiveWindow;
//   - down → up after Rise active checks pass in a row, or, with active
//     checks off, when PassiveCooldown has passed since passive detection
//     marked it down.
//
// A pass resets the run of failures and a failure the run of passes, so a
// backend that alternates never reaches either threshold (with Retries and
// Rise above 1) and never flips.
type Monitor struct {
	check *Check
	h     *backend.Health
	log   *slog.Logger
	names atomic.Pointer[[]string] // "rule/id" of the backends sharing it, for logs

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // the check loop, a cool-down, a slow-start ramp

	mu       sync.Mutex
	started  bool
	stopped  bool
	fails    int       // active checks failed in a row
	passes   int       // active checks passed in a row
	pStreak  int       // dials failed in a row (passive)
	pStart   time.Time // when the current run of dial failures began
	ramping  bool      // a slow-start ramp goroutine runs
	awaiting bool      // new and held down until its first check passes (AwaitFirstCheck)
	pFailing atomic.Bool

	onResult func(err error)                    // test hook: after each active check is recorded
	checked  func(h *backend.Health, err error) // metrics (Registry.SetCheckObserver): after each active check
	changed  func(h *backend.Health, up bool)   // Registry.SetTransitionObserver: after each transition
	now      func() time.Time                   // the clock of the passive window
}

var _ backend.Observer = (*Monitor)(nil)

// NewMonitor returns a monitor of c driving h; Start runs it.
func NewMonitor(c *Check, h *backend.Health, log *slog.Logger) *Monitor {
	m := &Monitor{check: c, h: h, log: log, now: time.Now}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m
}

// Health is the health the monitor drives.
func (m *Monitor) Health() *backend.Health { return m.h }

// Check is the monitor's check.
func (m *Monitor) Check() *Check { return m.check }

// SetNames records which backends ("rule/id") share the monitor, for logs.
func (m *Monitor) SetNames(names []string) { m.names.Store(&names) }

func (m *Monitor) namesForLog() []string {
	if p := m.names.Load(); p != nil {
		return *p
	}
	return nil
}

// Start begins active checks (when enabled) and passive observation (when
// enabled). The first active check runs at a deterministic offset within the
// interval, then one runs every interval.
func (m *Monitor) Start() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started || m.stopped {
		return
	}
	m.started = true
	m.h.SetSlowStart(m.check.SlowStart)
	if m.check.PassiveFailures > 0 {
		m.h.SetObserver(m)
	}
	if m.check.Active {
		m.wg.Add(1)
		go m.run()
	}
}

// Stop ends the monitor and waits for its goroutines; a check in flight is
// abandoned at once.
func (m *Monitor) Stop() {
	m.cancel()
	m.mu.Lock()
	m.stopped = true
	m.mu.Unlock()
	m.wg.Wait()
}

func (m *Monitor) run() {
	defer m.wg.Done()
	m.mu.Lock()
	offset := m.check.offset()
	if m.awaiting {
		offset = 0 // a backend waiting for its first check gets it at once
	}
	m.mu.Unlock()
	due := time.Now().Add(offset)
	t := time.NewTimer(time.Until(due))
	defer t.Stop()
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		err := m.check.Probe(m.ctx)
		if m.ctx.Err() != nil {
			return
		}
		m.record(err)
		// Keep a fixed rhythm; skip a beat rather than bunch checks up if
		// this goroutine was held up.
		now := time.Now()
		for due = due.Add(m.check.Interval); !due.After(now); due = due.Add(m.check.Interval) {
		}
		t.Reset(due.Sub(now))
	}
}

// record feeds the result of one active check to the state machine.
func (m *Monitor) record(err error) {
	m.mu.Lock()
	m.recordLocked(err)
	m.mu.Unlock()
	if m.checked != nil {
		m.checked(m.h, err)
	}
	if m.onResult != nil {
		m.onResult(err)
	}
}

func (m *Monitor) recordLocked(err error) {
	if m.stopped {
		return
	}
	if err != nil && localError(err) {
		// This host is short of descriptors, socket memory or ports: the
		// check learnt nothing about the backend, so it neither passes
		// nor fails (as with passive detection below).
		m.log.Debug("health check could not run", "address", m.check.Address, "check", m.check.Kind(), "err", err.Error())
		return
	}
	if err == nil {
		m.fails = 0
		m.passes++
		if m.awaiting {
			m.awaiting = false
			m.transition(true, fmt.Sprintf("passed its first %s check", m.check.Kind()), "active")
			return
		}
		if !m.h.Up() && m.passes >= m.check.Rise {
			m.transition(true, fmt.Sprintf("passed %d %s checks in a row", m.passes, m.check.Kind()), "active")
		}
	} else {
		m.passes = 0
		m.fails++
		if m.h.Up() {
			m.log.Debug("health check failed", "address", m.check.Address, "target", m.check.Target,
				"check", m.check.Kind(), "failed_in_a_row", m.fails, "retries", m.check.Retries, "err", err.Error())
		}
		if m.h.Up() && m.fails >= m.check.Retries {
			m.transition(false, fmt.Sprintf("%v (failed %d %s checks in a row)", err, m.fails, m.check.Kind()), "active")
		}
	}
}

// DialResult is passive detection: the outcome of a dial of real traffic.
// A success costs one atomic load unless failures were being counted.
func (m *Monitor) DialResult(err error) {
	if err == nil {
		if m.pFailing.Load() {
			m.mu.Lock()
			m.pStreak = 0
			m.pFailing.Store(false)
			m.mu.Unlock()
		}
		return
	}
	if localError(err) {
		return // this host is short of sockets or ports: not the backend's fault
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped || !m.h.Up() {
		return
	}
	now := m.now()
	if m.pStreak == 0 || now.Sub(m.pStart) > m.check.PassiveWindow {
		m.pStreak, m.pStart = 0, now
	}
	m.pStreak++
	m.pFailing.Store(true)
	if m.pStreak < m.check.PassiveFailures {
		return
	}
	reason := fmt.Sprintf("%v (%d dials of traffic failed in a row within %v)", err, m.pStreak, m.check.PassiveWindow)
	m.pStreak = 0
	m.pFailing.Store(false)
	m.passes = 0 // the way back is Rise passes from now
	m.transition(false, reason, "passive")
	if !m.check.Active && m.started {
		m.cooldown()
	}
}

// cooldown brings a backend that passive detection marked down back after
// PassiveCooldown, when there are no active checks to do it. m.mu is held.
func (m *Monitor) cooldown() {
	d := m.check.PassiveCooldown
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-m.ctx.Done():
			return
		case <-t.C:
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if !m.stopped {
			m.transition(true, fmt.Sprintf("passive cool-down of %v is over", d), "passive")
		}
	}()
}

// transition changes the health and logs it at warn. m.mu is held.
func (m *Monitor) transition(up bool, reason, detection string) {
	if !m.h.Transition(up, reason) {
		return
	}
	msg := "backend down"
	if up {
		msg = "backend up"
	}
	attrs := []any{"address", m.check.Address, "protocol", m.check.Protocol, "reason", reason, "detection", detection, "backends", m.namesForLog()}
	if m.check.Target != m.check.Address {
		attrs = append(attrs, "target", m.check.Target)
	}
	if up && m.check.SlowStart > 0 {
		attrs = append(attrs, "slow_start", m.check.SlowStart)
	}
	m.log.Warn(msg, attrs...)
	if m.changed != nil {
		m.changed(m.h, up)
	}
	if up && m.check.SlowStart > 0 && m.started && !m.ramping {
		m.ramp()
	}
}

// ramp moves the routing-state version of the address's backends
// (Health.AdvanceRamp) in steps while a slow start runs, so that routers
// caching weights follow the ramp. m.mu is held.
func (m *Monitor) ramp() {
	m.ramping = true
	step := max(m.check.SlowStart/20, 10*time.Millisecond)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		tk := time.NewTicker(step)
		defer tk.Stop()
		for {
			select {
			case <-m.ctx.Done():
				return
			case <-tk.C:
			}
			m.mu.Lock()
			more := m.h.AdvanceRamp()
			if !more {
				m.ramping = false
			}
			m.mu.Unlock()
			if !more {
				return
			}
		}
	}()
}

// localError reports whether a dial failed for want of local resources.
func localError(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
