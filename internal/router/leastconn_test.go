package router

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

func TestLeastConnEqualBackendsTakeTurns(t *testing.T) {
	bs := letters(newBackends(3))
	r := mustNew(t, "least_connections", nil, bs)
	// Nothing open: all equal, so they take turns.
	if got := sequence(t, r, 7); got != "abcabca" {
		t.Fatalf("sequence %q, want abcabca", got)
	}
}

func TestLeastConnFewestPerWeight(t *testing.T) {
	bs := letters(newBackends(3, 1, 2, 1))
	r := mustNew(t, "least_connections", nil, bs)
	seq := ""
	for range 8 {
		b := pick(t, r)
		b.Acquire(0)
		seq += b.ID
	}
	// a (0/1) → b (0/2) → c (0/1) → b (1/2 < 1) → c? no: a,b,c all 1 per
	// weight, next after b is c → a → b → b.
	if seq != "abcbcabb" {
		t.Fatalf("sequence %q, want abcbcabb", seq)
	}
	if bs[0].Active() != 2 || bs[1].Active() != 4 || bs[2].Active() != 2 {
		t.Fatalf("open %d/%d/%d, want 2/4/2", bs[0].Active(), bs[1].Active(), bs[2].Active())
	}
	// Closing connections makes a backend the least loaded at once.
	bs[2].Release(0)
	bs[2].Release(0)
	if b := pick(t, r); b != bs[2] {
		t.Fatalf("after c's connections closed picked %s, want c", b.ID)
	}
}

// lcRef is least connections by scanning every backend: the usable one with
// the fewest Active ÷ Weight, the first at or after next (cyclically) among
// equals.
type lcRef struct{ next int }

func (l *lcRef) pick(bs []*backend.Backend, req *Request) *backend.Backend {
	n := len(bs)
	best := -1
	for k := range n {
		i := (l.next + k) % n
		b := bs[i]
		if !req.Usable(b) {
			continue
		}
		if best < 0 || b.Active()*weightOf(bs[best]) < bs[best].Active()*weightOf(b) {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	l.next = best + 1
	return bs[best]
}

// TestLeastConnMatchesScan runs random opens, closes, weight and
// availability changes and retries, and checks that the tree picks what a
// scan of every backend picks.
func TestLeastConnMatchesScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := range 100 {
		n := 1 + rng.IntN(40)
		weights := make([]int, n)
		for i := range weights {
			weights[i] = 1 + rng.IntN(4)
		}
		bs := newBackends(n, weights...)
		r := mustNew(t, "least_connections", nil, bs)
		ref := &lcRef{}
		for step := range 2000 {
			switch op := rng.IntN(20); {
			case op < 10:
				var req, refReq Request
				if rng.IntN(10) == 0 { // a retry
					tried := bs[rng.IntN(n)]
					req.Tried(tried)
					refReq.Tried(tried)
				}
				want := ref.pick(bs, &refReq)
				got, err := r.Pick(&req)
				if want == nil {
					if err == nil {
						t.Fatalf("trial %d step %d: picked %s with nothing usable", trial, step, got.ID)
					}
					continue
				}
				if got != want {
					t.Fatalf("trial %d step %d: picked %v, a scan picks %s", trial, step, got, want.ID)
				}
				got.Acquire(0)
			case op < 17:
				if b := bs[rng.IntN(n)]; b.Active() > 0 {
					b.Release(0)
				}
			case op == 17:
				bs[rng.IntN(n)].SetWeight(1 + rng.IntN(4))
			case op == 18:
				b := bs[rng.IntN(n)]
				b.SetEnabled(!b.Enabled())
			case op == 19:
				b := bs[rng.IntN(n)]
				b.Health().SetUp(!b.Health().Up())
			}
		}
	}
}

// A router that nothing references any more stops watching its backends.
func TestRoutersStopWatchingWhenDropped(t *testing.T) {
	for _, tc := range []struct {
		plugin string
		config map[string]any
	}{
		{"least_connections", nil},
		{"hash", map[string]any{"bounded_load": 1.5}},
	} {
		bs := newBackends(3)
		r := mustNew(t, tc.plugin, tc.config, bs)
		pick(t, r)
		if bs[0].Watchers() != 1 {
			t.Fatalf("%s: watchers %d, want 1", tc.plugin, bs[0].Watchers())
		}
		r = nil
		harness.Eventually(t, tc.plugin+": no watcher once the router is collected", func() error {
			runtime.GC()
			if n := bs[0].Watchers(); n != 0 {
				return fmt.Errorf("still %d watchers after the router was dropped", n)
			}
			return nil
		})
		_ = r
	}
}
