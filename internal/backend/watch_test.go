package backend

import (
	"sync"
	"testing"
)

// A set's version moves on every change of what routers cache, and only then.
func TestVersionMovesOnChange(t *testing.T) {
	b := New("r", "a", "127.0.0.1:1", 2, nil)
	set := NewSet([]*Backend{b, New("r", "b", "127.0.0.1:2", 1, nil)})
	defer set.Close()
	for _, tc := range []struct {
		name   string
		change func()
		moves  bool
	}{
		{"same weight", func() { b.SetWeight(2) }, false},
		{"weight", func() { b.SetWeight(3) }, true},
		{"still enabled", func() { b.SetEnabled(true) }, false},
		{"disabled", func() { b.SetEnabled(false) }, true},
		{"enabled", func() { b.SetEnabled(true) }, true},
		{"draining", func() { b.SetDraining(true) }, true},
		{"still draining", func() { b.SetDraining(true) }, false},
		{"down", func() { b.Health().SetUp(false) }, true},
		{"still down", func() { b.Health().SetUp(false) }, false},
		{"a connection cap", func() { b.SetMaxConnections(5) }, true},
		{"the same cap", func() { b.SetMaxConnections(5) }, false},
		{"another health", func() { b.SetHealth(&Health{Address: b.Address}) }, true},
		{"a connection", func() { b.Acquire(0) }, false},
	} {
		v := set.Version()
		tc.change()
		if moved := set.Version() != v; moved != tc.moves {
			t.Errorf("%s: Version moved %v, want %v", tc.name, moved, tc.moves)
		}
	}
}

type countWatcher struct {
	mu   sync.Mutex
	seen []int64
}

func (w *countWatcher) ActiveChanged(b *Backend) {
	w.mu.Lock()
	w.seen = append(w.seen, b.Active())
	w.mu.Unlock()
}

func TestWatchActive(t *testing.T) {
	b := New("r", "a", "127.0.0.1:1", 1, nil)
	w1, w2 := &countWatcher{}, &countWatcher{}
	stop1 := b.WatchActive(w1)
	stop2 := b.WatchActive(w2)
	if b.Watchers() != 2 {
		t.Fatalf("watchers %d, want 2", b.Watchers())
	}
	b.Acquire(0)
	b.Acquire(0)
	b.Release(0)
	stop1()
	stop1() // twice is harmless
	b.Release(0)
	stop2()
	b.Acquire(0)
	if got := w1.seen; len(got) != 3 || got[0] != 1 || got[1] != 2 || got[2] != 1 {
		t.Errorf("first watcher saw %v, want [1 2 1]", got)
	}
	if got := w2.seen; len(got) != 4 || got[3] != 0 {
		t.Errorf("second watcher saw %v, want [1 2 1 0]", got)
	}
	if b.Watchers() != 0 {
		t.Errorf("watchers %d after both stopped, want 0", b.Watchers())
	}
}

func TestWatchActiveConcurrent(t *testing.T) {
	b := New("r", "a", "127.0.0.1:1", 1, nil)
	w := &countWatcher{}
	stop := b.WatchActive(w)
	defer stop()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				b.Acquire(0)
				b.Release(0)
			}
			// Watchers come and go while others count.
			s := b.WatchActive(&countWatcher{})
			s()
		}()
	}
	wg.Wait()
	if len(w.seen) != 8000 || b.Active() != 0 {
		t.Fatalf("watcher told %d times, active %d; want 8000 and 0", len(w.seen), b.Active())
	}
}

// TestSetVersionsIndependent: a change to the backends of one set does not
// move another set's version (one rule's change leaves other rules' router
// tables alone), except through a Health both sets' backends share; a closed
// set no longer moves.
func TestSetVersionsIndependent(t *testing.T) {
	shared := &Health{Address: "127.0.0.1:3"}
	a1, a2 := New("a", "1", "127.0.0.1:1", 1, nil), New("a", "s", shared.Address, 1, shared)
	b1, b2 := New("b", "1", "127.0.0.1:2", 1, nil), New("b", "s", shared.Address, 1, shared)
	setA, setB := NewSet([]*Backend{a1, a2}), NewSet([]*Backend{b1, b2})
	defer setB.Close()
	for _, change := range []func(){
		func() { a1.SetWeight(7) },
		func() { a1.SetEnabled(false) },
		func() { a1.SetDraining(true) },
		func() { a1.SetMaxConnections(3) },
		func() { a1.Health().SetUp(false) },
		func() { a1.SetHealth(&Health{Address: a1.Address}) },
		func() { a1.Health().SetUp(false) },
	} {
		va, vb := setA.Version(), setB.Version()
		change()
		if setA.Version() == va {
			t.Fatal("a change in set A did not move A's version")
		}
		if setB.Version() != vb {
			t.Fatal("a change in set A moved set B's version")
		}
	}
	va, vb := setA.Version(), setB.Version()
	shared.SetUp(false)
	if setA.Version() == va || setB.Version() == vb {
		t.Error("a transition of a shared health did not move both sets")
	}
	setA.Close()
	va = setA.Version()
	a1.SetWeight(9)
	shared.SetUp(true)
	if setA.Version() != va {
		t.Error("a closed set's version moved")
	}
	// The closed set is dropped from a1 when the next set registers with it.
	setC := NewSet([]*Backend{a1})
	defer setC.Close()
	if l := a1.sets.Load(); l == nil || len(*l) != 1 || (*l)[0] != setC {
		t.Errorf("a1's sets after a new one registered: %v; want only the new one", l)
	}
}

// TestSetCloseDoesNotAllocate: Close runs as a GC cleanup, at any moment,
// also inside a measured hot path: it must not allocate.
func TestSetCloseDoesNotAllocate(t *testing.T) {
	bs := []*Backend{New("r", "a", "127.0.0.1:1", 1, nil), New("r", "b", "127.0.0.1:2", 1, nil)}
	sets := make([]*Set, 200)
	for i := range sets {
		sets[i] = NewSet(bs)
	}
	i := 0
	if n := testing.AllocsPerRun(100, func() { sets[i].Close(); i++ }); n != 0 {
		t.Errorf("Close: %.1f allocations, want 0", n)
	}
}
