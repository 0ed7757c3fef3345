package procs

import (
	"context"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	inf := math.Inf(1)
	type step struct {
		used, spare float64
		want        int
	}
	for _, tc := range []struct {
		name    string
		p, most int
		steps   []step
	}{
		{"busy with an idle CPU: doubles", 1, 8, []step{{0.9, 1, 2}}},
		{"busy, doubling capped at most", 4, 6, []step{{3.6, 2, 6}}},
		{"busy at most: stays", 4, 4, []step{{4, inf, 4}}},
		{"busy but no idle CPU: stays", 1, 2, []step{{0.95, 0.3, 1}}},
		{"not busy enough: stays", 2, 4, []step{{1.6, inf, 2}}},
		{"low for ShrinkAfter intervals: shrinks", 2, 2, func() []step {
			s := make([]step, ShrinkAfter)
			for i := range s {
				s[i] = step{0.3, inf, 2}
			}
			s[ShrinkAfter-1].want = 1
			return s
		}()},
		{"shrinks to what the window's peak needs", 16, 16, func() []step {
			s := make([]step, ShrinkAfter)
			for i := range s {
				s[i] = step{1, inf, 16}
			}
			s[3].used = 3.2 // ceil(3.2 / 0.5) = 7
			s[ShrinkAfter-1].want = 7
			return s
		}()},
		{"a busy interval restarts the count", 2, 2, func() []step {
			s := make([]step, 2*ShrinkAfter-1)
			for i := range s {
				s[i] = step{0.3, inf, 2}
			}
			s[ShrinkAfter-2].used = 0.8 // between the thresholds
			s[len(s)-1].want = 1
			return s
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s state
			p := tc.p
			for i, st := range tc.steps {
				p = s.next(p, tc.most, st.used, st.spare)
				if p != st.want {
					t.Fatalf("step %d (used %v, idle %v): %d Ps, want %d", i, st.used, st.spare, p, st.want)
				}
			}
		})
	}
}

// TestGovernorFollowsLoad runs the Governor with a process whose CPU use is
// a fraction of its Ps (the test's load) and a machine with idle CPUs: it
// shrinks to one P when idle, grows to Max under load, shrinks back, and
// gives the process its Max Ps back when it stops.
func TestGovernorFollowsLoad(t *testing.T) {
	var (
		mu   sync.Mutex
		p    = 0
		cpu  time.Duration
		last = time.Now()
		load atomic.Value // float64: busy fraction of the Ps in use
	)
	load.Store(0.0)
	sets := make(chan int, 100)
	g := &Governor{Max: 4, interval: 2 * time.Millisecond,
		cpu: func() time.Duration { // CPU time at load × p since the last call
			mu.Lock()
			defer mu.Unlock()
			now := time.Now()
			cpu += time.Duration(float64(now.Sub(last)) * load.Load().(float64) * float64(p))
			last = now
			return cpu
		},
		idle: func() time.Duration { return time.Duration(time.Now().UnixNano()) * 8 },
		set: func(n int) {
			mu.Lock()
			p = n
			mu.Unlock()
			sets <- n
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { g.Run(ctx); close(stopped) }()
	waitFor := func(want int) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case n := <-sets:
				if n == want {
					return
				}
			case <-deadline:
				t.Fatalf("GOMAXPROCS never set to %d", want)
			}
		}
	}
	waitFor(4) // Run starts from Max
	waitFor(1) // idle
	load.Store(0.95)
	waitFor(2)
	waitFor(4)
	load.Store(0.0)
	waitFor(1)
	cancel()
	<-stopped
	waitFor(4)
}

// TestProcessCPUAndIdle: the real sources read something and move forward.
func TestProcessCPUAndIdle(t *testing.T) {
	start := processCPU()
	deadline := time.Now().Add(30 * time.Second)
	for processCPU()-start < 20*time.Millisecond { // burn CPU until it shows
		if time.Now().After(deadline) {
			t.Fatalf("process CPU time did not advance: %v then %v", start, processCPU())
		}
	}
	var ps procStat
	ps.open()
	defer ps.close()
	first := ps.idle()
	if first <= 0 {
		t.Fatalf("machine idle time %v, want > 0 from /proc/stat", first)
	}
	if again := ps.idle(); again < first { // the same open file, read again
		t.Errorf("machine idle time went back: %v then %v", first, again)
	}
	if n := testing.AllocsPerRun(100, func() { ps.idle() }); n != 0 {
		t.Errorf("%v allocations per read of /proc/stat, want 0", n)
	}
}

func TestParseIdle(t *testing.T) {
	for line, want := range map[string]time.Duration{
		"cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0": (46828483 + 16683) * time.Second / 100,
		"cpu 1 2 3 4 5":    9 * time.Second / 100,
		"cpu 1 2 3 4":      -1, // no iowait
		"cpu0 1 2 3 4 5":   -1, // a CPU's line, not the total
		"cpu 1 2 3 x 5":    -1,
		"intr 1 2 3 4 5 6": -1,
		"":                 -1,
	} {
		if got := parseIdle([]byte(line)); got != want {
			t.Errorf("parseIdle(%q) = %v, want %v", line, got, want)
		}
	}
}
