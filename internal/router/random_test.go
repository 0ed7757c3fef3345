package router

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

func TestRandomUniform(t *testing.T) {
	bs := newBackends(5)
	r := mustNew(t, "random", nil, bs)
	checkShares(t, counts(t, r, 100000), bs, []int{1, 1, 1, 1, 1})
}

func TestRandomWeighted(t *testing.T) {
	weights := []int{1, 3, 6}
	bs := newBackends(3, weights...)
	for _, cfg := range []map[string]any{nil, {"choices": int64(1)}} {
		r := mustNew(t, "random", cfg, bs)
		checkShares(t, counts(t, r, 100000), bs, weights)
	}
}

func TestRandomSkipsUnavailableAndFollowsWeightChanges(t *testing.T) {
	bs := newBackends(4)
	r := mustNew(t, "random", nil, bs)
	bs[1].SetEnabled(false)
	bs[2].Health().SetUp(false)
	c := counts(t, r, 20000)
	if c["b1"] != 0 || c["b2"] != 0 {
		t.Fatalf("picked unavailable backends: %v", c)
	}
	checkShares(t, c, []*backend.Backend{bs[0], bs[3]}, []int{1, 1})
	bs[3].SetWeight(4)
	c = counts(t, r, 50000)
	checkShares(t, c, []*backend.Backend{bs[0], bs[3]}, []int{1, 4})
}

// A retry draws among the backends not yet tried, whatever their weight.
func TestRandomRetryExcludesTried(t *testing.T) {
	bs := newBackends(3, 1000, 1, 1)
	for _, cfg := range []map[string]any{nil, {"choices": int64(2)}} {
		r := mustNew(t, "random", cfg, bs)
		for range 200 {
			var req Request
			req.Tried(bs[0])
			req.Tried(bs[2])
			b, err := r.Pick(&req)
			if err != nil || b != bs[1] {
				t.Fatalf("%v: with b0 and b2 tried picked %v (err %v), want b1", cfg, b, err)
			}
			req.Tried(b)
			if _, err := r.Pick(&req); err == nil {
				t.Fatalf("%v: all tried, want an error", cfg)
			}
		}
	}
}

// Power of two choices: with two backends both are always drawn, so the one
// with fewer connections always wins and open connections stay within one
// of each other; with one choice they drift apart.
func TestRandomTwoChoicesBalancesLoad(t *testing.T) {
	bs := newBackends(2)
	r := mustNew(t, "random", map[string]any{"choices": int64(2)}, bs)
	for i := range 1000 {
		b := pick(t, r)
		b.Acquire(0)
		if d := bs[0].Active() - bs[1].Active(); d > 1 || d < -1 {
			t.Fatalf("after %d connections: %d and %d open", i+1, bs[0].Active(), bs[1].Active())
		}
	}
}

// With several backends, choices = 2 keeps the spread of open connections
// far below what one choice gives.
func TestRandomTwoChoicesVersusOne(t *testing.T) {
	spread := func(choices int64) int64 {
		bs := newBackends(10)
		r := mustNew(t, "random", map[string]any{"choices": choices}, bs)
		for range 5000 {
			pick(t, r).Acquire(0)
		}
		lo, hi := bs[0].Active(), bs[0].Active()
		for _, b := range bs {
			lo, hi = min(lo, b.Active()), max(hi, b.Active())
		}
		return hi - lo
	}
	// One choice: the spread is about 4.5 standard deviations of a
	// binomial(5000, 0.1), ~95; two choices keep it to a handful.
	two, one := spread(2), spread(1)
	if two > 6 || one < 2*two {
		t.Fatalf("spread of open connections: %d with two choices, %d with one", two, one)
	}
}

// Weighted power of two choices: load per unit of weight is what is compared.
func TestRandomTwoChoicesWeighted(t *testing.T) {
	bs := newBackends(2, 1, 3)
	r := mustNew(t, "random", map[string]any{"choices": int64(2)}, bs)
	for range 4000 {
		pick(t, r).Acquire(0)
	}
	if a, b := bs[0].Active(), bs[1].Active(); a < 990 || a > 1010 {
		t.Fatalf("weights 1 and 3 hold %d and %d of 4000 connections, want 1000 and 3000", a, b)
	}
}

// The alias table gives each backend exactly its weight's share (to 2⁻³²),
// checked by summing the table's probabilities rather than by sampling.
func TestRandomAliasTableIsExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 500 {
		n := 1 + rng.IntN(50)
		weights := make([]int64, n)
		var total float64
		for i := range weights {
			if rng.IntN(4) > 0 {
				weights[i] = 1 + rng.Int64N(10000)
			}
			total += float64(weights[i])
		}
		tab := newRandTable(weights)
		got := make([]float64, n)
		buckets := float64(len(tab.idx))
		for k := range tab.idx {
			keep := float64(tab.thresh[k]) / (1 << 32)
			got[tab.idx[k]] += keep / buckets
			got[tab.idx[tab.alias[k]]] += (1 - keep) / buckets
		}
		for i, w := range weights {
			want := 0.0
			if total > 0 {
				want = float64(w) / total
			}
			if math.Abs(got[i]-want) > 1e-8 {
				t.Fatalf("weights %v: backend %d has probability %g, want %g", weights, i, got[i], want)
			}
		}
	}
}
