package engine

import (
	"testing"
	"time"
)

// TestSpreadCalls: every call is made, in order, none before its slot of
// the window (the i-th of n no earlier than i/n of it), and a stop ends
// the rest.
func TestSpreadCalls(t *testing.T) {
	const n, window = 50, 200 * time.Millisecond
	items := make([]int, n)
	for i := range items {
		items[i] = i
	}
	t0 := time.Now()
	var got []int
	var at []time.Duration
	spreadCalls(items, window, make(chan struct{}), func(i int) {
		got = append(got, i)
		at = append(at, time.Since(t0))
	})
	if len(got) != n {
		t.Fatalf("%d calls, want %d", len(got), n)
	}
	for i := range got {
		if got[i] != i {
			t.Fatalf("call %d was item %d", i, got[i])
		}
		if min := window * time.Duration(i) / n; at[i] < min {
			t.Errorf("call %d at %v, before its slot (%v)", i, at[i], min)
		}
	}

	stop := make(chan struct{})
	close(stop)
	calls := 0
	spreadCalls(items, time.Hour, stop, func(int) { calls++ })
	if calls > 1 {
		t.Errorf("stopped: %d calls, want at most the first", calls)
	}
}
