package router

import (
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

func TestSmoothWeightedSequence(t *testing.T) {
	for _, tc := range []struct {
		weights []int
		want    string
	}{
		{[]int{5, 1, 1}, "aabacaa"},
		{[]int{1, 1, 1}, "abc"},
		{[]int{2, 1}, "aba"},
		{[]int{3, 2}, "ababa"},
		{[]int{1, 5, 1}, "bbabcbb"},
	} {
		bs := letters(newBackends(len(tc.weights), tc.weights...))
		for _, config := range []map[string]any{nil, {"smooth_weighted": true}} {
			r := mustNew(t, "weighted", config, bs)
			// Three cycles: the sequence repeats exactly.
			want := strings.Repeat(tc.want, 3)
			if got := sequence(t, r, len(want)); got != want {
				t.Errorf("weights %v: sequence %q, want %q", tc.weights, got, want)
			}
		}
	}
}

// nginxRef is nginx's smooth weighted round robin as nginx writes it: O(n)
// per pick over every backend's current weight.
type nginxRef struct{ cw []int64 }

func (n *nginxRef) pick(bs []*backend.Backend) *backend.Backend {
	var total int64
	best := -1
	for i, b := range bs {
		if !b.Available() {
			continue
		}
		w := weightOf(b)
		n.cw[i] += w
		total += w
		if best < 0 || n.cw[i] > n.cw[best] {
			best = i
		}
	}
	if best < 0 {
		return nil
	}
	n.cw[best] -= total
	return bs[best]
}

// TestSmoothWeightedMatchesNginx compares the grouped implementation with
// nginx's algorithm over random weights, availability and weight changes:
// the sequences must be identical. (After a change both start a new cycle:
// nginx's own reload does the same.)
func TestSmoothWeightedMatchesNginx(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		n := 1 + rng.IntN(12)
		weights := make([]int, n)
		for i := range weights {
			weights[i] = 1 + rng.IntN(6)
			if rng.IntN(5) == 0 {
				weights[i] = 1 + rng.IntN(100)
			}
		}
		bs := newBackends(n, weights...)
		r := mustNew(t, "weighted", nil, bs)
		ref := &nginxRef{cw: make([]int64, n)}
		for change := range 8 {
			var total int64
			for _, b := range bs {
				if b.Available() {
					total += weightOf(b)
				}
			}
			picks := int(3*total) + rng.IntN(7)
			for p := range picks {
				want := ref.pick(bs)
				var req Request
				got, err := r.Pick(&req)
				if want == nil {
					if err == nil {
						t.Fatalf("trial %d change %d: picked %s with nothing available", trial, change, got.ID)
					}
					break
				}
				if err != nil || got != want {
					t.Fatalf("trial %d change %d pick %d (weights %v): got %v (err %v), nginx picks %s", trial, change, p, weights, got, err, want.ID)
				}
			}
			// Change something at run time. When that changes the usable
			// weights, the router starts a new cycle, as nginx does on a
			// reload: so does the reference.
			before := usableWeights(bs)
			b := bs[rng.IntN(n)]
			switch rng.IntN(4) {
			case 0:
				b.SetWeight(1 + rng.IntN(8))
			case 1:
				b.SetEnabled(!b.Enabled())
			case 2:
				b.Health().SetUp(!b.Health().Up())
			case 3:
				b.SetDraining(!b.Draining())
			}
			if !slices.Equal(before, usableWeights(bs)) {
				ref = &nginxRef{cw: make([]int64, n)}
			}
		}
	}
}

func usableWeights(bs []*backend.Backend) []int64 {
	w := make([]int64, len(bs))
	for i, b := range bs {
		if b.Available() {
			w[i] = weightOf(b)
		}
	}
	return w
}

func TestSmoothWeightedExactPerCycle(t *testing.T) {
	weights := []int{7, 3, 3, 1, 10, 2}
	bs := newBackends(len(weights), weights...)
	r := mustNew(t, "weighted", nil, bs)
	c := counts(t, r, 26*40)
	for i, b := range bs {
		if c[b.ID] != weights[i]*40 {
			t.Errorf("%s (weight %d) picked %d times in 40 cycles, want %d", b.ID, weights[i], c[b.ID], weights[i]*40)
		}
	}
}

// The longest run of one backend is bounded by the smooth spread: with
// weights 5,1,1 never five in a row (nginx gives a a b a c a a, so four at
// most, across the end of one cycle and the start of the next).
func TestSmoothWeightedSpreadsOut(t *testing.T) {
	bs := letters(newBackends(3, 5, 1, 1))
	r := mustNew(t, "weighted", nil, bs)
	seq := sequence(t, r, 700)
	if strings.Contains(seq, "aaaaa") {
		t.Fatalf("a run of five in %q", seq)
	}
	if !strings.Contains(seq, "aaaa") {
		t.Fatalf("no run of four across cycles in %q: not the nginx sequence", seq[:28])
	}
}

func TestSmoothWeightedWeightChangeAppliesFromNextPick(t *testing.T) {
	bs := letters(newBackends(2, 1, 1))
	r := mustNew(t, "weighted", nil, bs)
	if got := sequence(t, r, 3); got != "aba" {
		t.Fatalf("sequence %q, want aba", got)
	}
	bs[1].SetWeight(3)
	// A new cycle over weights 1,3 starts at the very next pick: b b a b.
	if got := sequence(t, r, 8); got != "babbbabb" {
		t.Fatalf("after weight change: %q, want babbbabb", got)
	}
}

func TestSmoothWeightedSkipsUnavailable(t *testing.T) {
	bs := letters(newBackends(3, 5, 1, 1))
	r := mustNew(t, "weighted", nil, bs)
	bs[0].SetEnabled(false)
	if got := sequence(t, r, 4); got != "bcbc" {
		t.Fatalf("with a disabled: %q, want bcbc", got)
	}
	bs[0].SetEnabled(true)
	if got := sequence(t, r, 7); got != "aabacaa" {
		t.Fatalf("with a back: %q, want aabacaa", got)
	}
}

// A retry (the pick's backend already tried) gets another backend without
// disturbing the rotation others see.
func TestSmoothWeightedRetry(t *testing.T) {
	bs := letters(newBackends(3, 5, 1, 1))
	r := mustNew(t, "weighted", nil, bs)
	var req Request
	b, _ := r.Pick(&req) // a
	req.Tried(b)
	b2, err := r.Pick(&req)
	if err != nil || b2 == b {
		t.Fatalf("retry picked %v (err %v), want another than %s", b2, err, b.ID)
	}
	// The rotation goes on as if the retry had not happened: a b a c a a.
	if got := sequence(t, r, 6); got != "abacaa" {
		t.Fatalf("after the retry: %q, want abacaa", got)
	}
	req.Tried(b2)
	b3, _ := r.Pick(&req)
	req.Tried(b3)
	if _, err := r.Pick(&req); err == nil {
		t.Fatal("every backend tried, want an error")
	}
}

func TestWeightedRandomDistribution(t *testing.T) {
	weights := []int{1, 2, 3, 4}
	bs := newBackends(len(weights), weights...)
	r := mustNew(t, "weighted", map[string]any{"smooth_weighted": false}, bs)
	checkShares(t, counts(t, r, 100000), bs, weights)
}

// checkShares checks that each backend's share of the picks is its weight's
// share within 5 standard deviations of a binomial draw (a false alarm about
// once in 3.5 million runs).
func checkShares(t *testing.T, c map[string]int, bs []*backend.Backend, weights []int) {
	t.Helper()
	n, sum := 0, 0
	for _, v := range c {
		n += v
	}
	for _, w := range weights {
		sum += w
	}
	for i, b := range bs {
		p := float64(weights[i]) / float64(sum)
		want := p * float64(n)
		sd := math.Sqrt(float64(n) * p * (1 - p))
		if d := math.Abs(float64(c[b.ID]) - want); d > 5*sd {
			t.Errorf("%s (weight %d): %d of %d picks, want %.0f ± %.0f", b.ID, weights[i], c[b.ID], n, want, 5*sd)
		}
	}
}
