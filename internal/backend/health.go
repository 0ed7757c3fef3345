package backend

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Health is the up/down state of one address as one health check sees it.
// Every backend that names the same address with the same check shares one
// *Health, so one check serves every rule. The pick path reads it with one
// atomic load (Up); the health checker (internal/health) changes it with
// Transition.
type Health struct {
	Address string
	down    atomic.Bool

	mu       sync.Mutex             // serialises transitions
	status   atomic.Pointer[Status] // the last transition; nil before any
	observer atomic.Pointer[Observer]
	sets     sets // the Sets of the backends sharing h (Set)

	slowStart atomic.Int64 // nanoseconds; 0: no slow start
	rampStart atomic.Int64 // unix nanoseconds of the down→up being ramped; 0: not ramping
}

// Status is a Health's state and its last transition.
type Status struct {
	Up     bool
	Reason string    // why it last changed, e.g. "dial tcp 127.0.0.1:9001: connect: connection refused"
	Since  time.Time // when it last changed; zero before any change
}

// Observer is told the outcome of every dial of real traffic to an address:
// passive health checking. It runs on the proxy's event loop that made the
// dial, so it must be quick and never block (a success should cost an
// atomic load).
type Observer interface {
	DialResult(err error)
}

// Up reports whether the address is considered healthy. A new Health is up.
func (h *Health) Up() bool { return !h.down.Load() }

// SetUp records the address's health and reports whether it changed.
func (h *Health) SetUp(up bool) (changed bool) { return h.Transition(up, "") }

// Transition sets the health to up or down for reason and reports whether it
// changed. A change to up starts the slow-start ramp when one is set.
func (h *Health) Transition(up bool, reason string) (changed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down.Load() == !up {
		return false
	}
	now := time.Now()
	h.status.Store(&Status{Up: up, Reason: reason, Since: now})
	if up && h.slowStart.Load() > 0 {
		h.rampStart.Store(now.UnixNano())
	} else {
		h.rampStart.Store(0)
	}
	h.down.Store(!up)
	bump(&h.sets)
	return true
}

// Status returns the current state and the last transition.
func (h *Health) Status() Status {
	if s := h.status.Load(); s != nil {
		return *s
	}
	return Status{Up: h.Up()}
}

// SetObserver installs the passive health observer (nil removes it).
func (h *Health) SetObserver(o Observer) {
	if o == nil {
		h.observer.Store(nil)
		return
	}
	h.observer.Store(&o)
}

// ReportDial tells the observer, if any, how a dial to the address went
// (err nil: it connected).
func (h *Health) ReportDial(err error) {
	if o := h.observer.Load(); o != nil {
		(*o).DialResult(err)
	}
}

// SetSlowStart sets the time over which a backend that comes back up ramps
// from weight 1 to its full weight (0: none).
func (h *Health) SetSlowStart(d time.Duration) {
	h.slowStart.Store(int64(d))
	if d <= 0 {
		h.rampStart.Store(0)
	}
}

// Ramping reports whether a slow start is in progress.
func (h *Health) Ramping() bool {
	start := h.rampStart.Load()
	if start == 0 {
		return false
	}
	if time.Now().UnixNano()-start >= h.slowStart.Load() {
		h.rampStart.CompareAndSwap(start, 0)
		return false
	}
	return true
}

// AdvanceRamp moves the version of every Set of h's backends, so that
// routers caching weights re-read the ramped weight, and reports whether
// the ramp goes on. The health checker
// calls it periodically during a slow start, and once after it ends.
func (h *Health) AdvanceRamp() (ramping bool) {
	ramping = h.Ramping()
	bump(&h.sets)
	return ramping
}

// scale returns weight w as ramped by a slow start in progress. Outside a
// ramp it costs one atomic load.
func (h *Health) scale(w int) int {
	start := h.rampStart.Load()
	if start == 0 {
		return w
	}
	total := h.slowStart.Load()
	elapsed := time.Now().UnixNano() - start
	if total <= 0 || elapsed >= total {
		h.rampStart.CompareAndSwap(start, 0)
		return w
	}
	return RampWeight(w, time.Duration(elapsed), time.Duration(total))
}

// RampWeight is weight w after elapsed of a slow start lasting total: it
// grows linearly from 1 to w, never below 1.
func RampWeight(w int, elapsed, total time.Duration) int {
	if total <= 0 || elapsed >= total {
		return w
	}
	if elapsed < 0 {
		elapsed = 0
	}
	x := int(math.Ceil(float64(w) * float64(elapsed) / float64(total)))
	return max(1, min(x, w))
}
