package router

import (
	"testing"
)

// TestHashTableBuiltByWriter: the Maglev table is rebuilt by the goroutine
// that changes a weight, before any pick; a pick after other changes
// (health, enabled) uses the published table as it is and allocates
// nothing.
func TestHashTableBuiltByWriter(t *testing.T) {
	bs := newBackends(3)
	r := mustNew(t, "hash", nil, bs).(*hashRouter)
	t0 := r.tables.table.Load()
	if len(t0.slots) == 0 {
		t.Fatal("no table built with the router")
	}
	bs[1].SetWeight(7)
	t1 := r.tables.table.Load()
	if t1 == t0 || t1.weights[1] != 7 {
		t.Fatalf("SetWeight did not rebuild the table on its goroutine (weights %v)", t1.weights)
	}
	bs[2].SetEnabled(false)
	req := &Request{}
	if n := testing.AllocsPerRun(100, func() {
		if _, err := r.Pick(req); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per pick", n)
	}
	if r.tables.table.Load() != t1 {
		t.Error("a pick replaced the table")
	}
	bs[1].SetWeight(7) // unchanged: no rebuild
	if r.tables.table.Load() != t1 {
		t.Error("setting the same weight rebuilt the table")
	}
}
