//go:build linux

package eventloop

import (
	"math/rand/v2"
	"slices"
	"testing"
)

type timed struct {
	id int
	t  Timer[*timed]
}

// TestHeapOrder: timers come out by deadline, whatever order they were
// set, moved and stopped in.
func TestHeapOrder(t *testing.T) {
	var h Heap[*timed]
	r := rand.New(rand.NewPCG(1, 2))
	all := make([]*timed, 200)
	want := map[int]int64{}
	for i := range all {
		all[i] = &timed{id: i}
		all[i].t.Owner = all[i]
		due := r.Int64N(1000) + 1
		h.Set(&all[i].t, due)
		want[i] = due
	}
	for i := 0; i < 100; i++ { // move some, stop some
		x := all[r.IntN(len(all))]
		if i%3 == 0 {
			h.Stop(&x.t)
			h.Stop(&x.t) // twice: a no-op
			delete(want, x.id)
		} else {
			due := r.Int64N(1000) + 1
			h.Set(&x.t, due)
			want[x.id] = due
		}
	}
	if h.Len() != len(want) {
		t.Fatalf("Len %d, want %d", h.Len(), len(want))
	}
	if next, ok := h.Next(); !ok || next != slices.Min(mapValues(want)) {
		t.Errorf("Next = %d, %v; want %d", next, ok, slices.Min(mapValues(want)))
	}
	if _, ok := h.PopDue(0); ok {
		t.Fatal("a timer due after 0 popped at 0")
	}
	var last int64
	for h.Len() > 0 {
		x, ok := h.PopDue(1 << 62)
		if !ok {
			t.Fatal("PopDue found nothing in a non-empty heap")
		}
		if d := want[x.id]; d < last {
			t.Fatalf("timer %d (due %d) came after one due %d", x.id, d, last)
		} else {
			last = d
		}
		if x.t.idx != 0 {
			t.Fatalf("popped timer %d still has a place in the heap", x.id)
		}
		delete(want, x.id)
	}
	if len(want) != 0 {
		t.Errorf("%d timers never came out", len(want))
	}
}

func mapValues(m map[int]int64) []int64 {
	var v []int64
	for _, d := range m {
		v = append(v, d)
	}
	return v
}

func TestHeapSetDoesNotAllocate(t *testing.T) {
	var h Heap[*timed]
	xs := make([]timed, 64)
	for i := range xs {
		xs[i].t.Owner = &xs[i]
		h.Set(&xs[i].t, int64(i))
	}
	n := testing.AllocsPerRun(100, func() {
		for i := range xs {
			h.Set(&xs[i].t, int64(len(xs)-i))
		}
		x, _ := h.PopDue(1 << 62)
		h.Set(&x.t, 5)
	})
	if n != 0 {
		t.Errorf("%v allocations per run, want 0", n)
	}
}
