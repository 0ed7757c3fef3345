package backend

import (
	"errors"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

func TestHealthTransition(t *testing.T) {
	h := &Health{Address: "127.0.0.1:1"}
	if !h.Up() || h.Status() != (Status{Up: true}) {
		t.Fatalf("new health: up=%v status=%+v", h.Up(), h.Status())
	}
	set := NewSet([]*Backend{New("r", "a", h.Address, 1, h)})
	defer set.Close()
	v := set.Version()
	before := time.Now()
	if !h.Transition(false, "connection refused") {
		t.Fatal("up→down not reported as a change")
	}
	if h.Transition(false, "again") {
		t.Fatal("down→down reported as a change")
	}
	st := h.Status()
	if h.Up() || st.Up || st.Reason != "connection refused" || st.Since.Before(before) {
		t.Errorf("after down: up=%v %+v", h.Up(), st)
	}
	if set.Version() == v {
		t.Error("a health transition did not move the version of its backends' set")
	}
	if !h.SetUp(true) || !h.Up() || h.Status().Reason != "" {
		t.Errorf("SetUp(true): up=%v %+v", h.Up(), h.Status())
	}
}

func TestBackendAvailableFollowsHealth(t *testing.T) {
	h := &Health{Address: "127.0.0.1:1"}
	a := New("r1", "a", h.Address, 1, h)
	b := New("r2", "b", h.Address, 1, h)
	h.Transition(false, "x")
	if a.Available() || b.Available() {
		t.Fatal("backends sharing a down health are available")
	}
	setA, setB := NewSet([]*Backend{a}), NewSet([]*Backend{b})
	defer setA.Close()
	defer setB.Close()
	h2 := &Health{Address: h.Address}
	va, vb := setA.Version(), setB.Version()
	a.SetHealth(h2)
	if a.Health() != h2 || !a.Available() || b.Available() {
		t.Errorf("after SetHealth: a=%v b=%v", a.Available(), b.Available())
	}
	if setA.Version() == va || setB.Version() != vb {
		t.Error("SetHealth did not move its backend's set's version alone")
	}
	// a's set now follows h2, and no longer h.
	va, vb = setA.Version(), setB.Version()
	h.Transition(true, "")
	if setA.Version() != va || setB.Version() == vb {
		t.Error("a transition of the old health: want b's set moved, a's not")
	}
	va = setA.Version()
	h2.Transition(false, "x")
	if setA.Version() == va {
		t.Error("a transition of the new health did not move a's set")
	}
	if c := New("r", "c", "127.0.0.1:2", 1, nil); c.Health() == nil || c.Health().Address != "127.0.0.1:2" {
		t.Error("New(nil health) has no health of its own")
	}
}

type recorder struct{ errs []error }

func (r *recorder) DialResult(err error) { r.errs = append(r.errs, err) }

func TestHealthReportDial(t *testing.T) {
	h := &Health{}
	h.ReportDial(errors.New("no observer: must not panic"))
	r := &recorder{}
	h.SetObserver(r)
	boom := errors.New("boom")
	h.ReportDial(nil)
	h.ReportDial(boom)
	if len(r.errs) != 2 || r.errs[0] != nil || r.errs[1] != boom {
		t.Errorf("observer saw %v", r.errs)
	}
	h.SetObserver(nil)
	h.ReportDial(boom)
	if len(r.errs) != 2 {
		t.Error("removed observer still told")
	}
}

func TestRampWeight(t *testing.T) {
	for _, tc := range []struct {
		w              int
		elapsed, total time.Duration
		want           int
	}{
		{100, 0, 10 * time.Second, 1},
		{100, time.Second, 10 * time.Second, 10},
		{100, 5 * time.Second, 10 * time.Second, 50},
		{100, 9999 * time.Millisecond, 10 * time.Second, 100},
		{100, 10 * time.Second, 10 * time.Second, 100},
		{100, time.Hour, 10 * time.Second, 100},
		{1, time.Second, 10 * time.Second, 1},
		{3, time.Second, 10 * time.Second, 1},
		{3, 4 * time.Second, 10 * time.Second, 2},
		{10000, time.Nanosecond, 365 * 24 * time.Hour, 1},
		{10, -time.Second, 10 * time.Second, 1},
		{10, time.Second, 0, 10},
	} {
		if got := RampWeight(tc.w, tc.elapsed, tc.total); got != tc.want {
			t.Errorf("RampWeight(%d, %v, %v) = %d, want %d", tc.w, tc.elapsed, tc.total, got, tc.want)
		}
	}
}

// TestSlowStart: a backend that comes back up starts at a small weight and
// reaches its configured weight when the slow start is over; one that was
// never down is at full weight from the start.
func TestSlowStart(t *testing.T) {
	h := &Health{Address: "127.0.0.1:1"}
	h.SetSlowStart(time.Hour)
	b := New("r", "a", h.Address, 100, h)
	if b.Weight() != 100 || h.Ramping() {
		t.Fatalf("never-down backend: weight %d, ramping %v", b.Weight(), h.Ramping())
	}
	h.Transition(false, "down")
	h.Transition(true, "up")
	if !h.Ramping() {
		t.Fatal("no ramp after down→up")
	}
	if w := b.Weight(); w < 1 || w > 2 {
		t.Errorf("weight right after coming up = %d, want 1 (or 2)", w)
	}
	if b.ConfiguredWeight() != 100 {
		t.Errorf("ConfiguredWeight = %d", b.ConfiguredWeight())
	}
	set := NewSet([]*Backend{b})
	defer set.Close()
	v := set.Version()
	if !h.AdvanceRamp() || set.Version() == v {
		t.Error("AdvanceRamp during the ramp: want true and a new set version")
	}

	// A short slow start ends; the weight is then full and the ramp over.
	h.SetSlowStart(20 * time.Millisecond)
	h.Transition(false, "down")
	h.Transition(true, "up")
	harness.Eventually(t, "the end of a 20ms slow start", func() bool { return !h.Ramping() })
	if b.Weight() != 100 || h.AdvanceRamp() {
		t.Errorf("after the slow start: weight %d, AdvanceRamp %v", b.Weight(), h.AdvanceRamp())
	}

	// Going down ends a ramp; without a slow start there is none.
	h.SetSlowStart(0)
	h.Transition(false, "down")
	h.Transition(true, "up")
	if h.Ramping() || b.Weight() != 100 {
		t.Errorf("without slow start: ramping %v weight %d", h.Ramping(), b.Weight())
	}
}
