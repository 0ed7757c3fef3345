//go:build linux

package eventloop

import (
	"runtime"
	"testing"
	"time"
)

// TestBusyLoopYields: a loop whose every turn finds an event ready (its
// eventfd, never consumed) parks once per YieldAfter when Busy is told
// the time, through Wait and through Poll alike, and each of those parks
// returns with the events still there. Meanwhile a second loop sharing
// the only P gets its wake-up.
func TestBusyLoopYields(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var a, b Loop
	for _, l := range []*Loop{&a, &b} {
		if err := l.Open("test", 8); err != nil {
			t.Fatal(err)
		}
	}
	defer a.Exit()
	bWoken := make(chan struct{})
	go func() {
		defer b.Exit()
		for {
			if err := b.Wait(); err != nil {
				return
			}
			for _, ev := range b.Events() {
				if int(ev.Fd) == b.WakeFD() {
					b.Woken()
					close(bWoken)
					return
				}
			}
		}
	}()

	a.Wake() // left unread: every turn of a finds it ready
	deadline := time.Now().Add(20 * time.Second)
	woke := false
	for turn := 0; ; turn++ {
		if turn%2 == 0 {
			if err := a.Wait(); err != nil {
				t.Fatal(err)
			}
		} else {
			a.Poll()
		}
		if len(a.Events()) == 0 {
			t.Fatalf("turn %d collected no events, with the eventfd readable", turn)
		}
		now := time.Now()
		a.Busy(now.UnixNano())
		if turn == 0 {
			b.Wake()
		}
		if !woke {
			select {
			case <-bWoken:
				woke = true
			default:
			}
		}
		if woke && a.Yields() >= 4 {
			break
		}
		if now.After(deadline) {
			t.Fatalf("after 20 s: the other loop woken %v, %d yields", woke, a.Yields())
		}
	}
}

// TestBusyAfterParkDoesNotYield: a loop that parks in between its turns
// (here until its deadline, having no events) never has to yield, however
// long it runs.
func TestBusyAfterParkDoesNotYield(t *testing.T) {
	var l Loop
	if err := l.Open("test", 8); err != nil {
		t.Fatal(err)
	}
	defer l.Exit()
	now := time.Now().UnixNano()
	for i := range 20 {
		l.SetDeadline(time.Now().Add(time.Millisecond).UnixNano())
		if err := l.Wait(); err != nil {
			t.Fatal(err)
		}
		if len(l.Events()) != 0 || l.Armed() != -1 {
			t.Fatalf("turn %d: %d events, deadline %d: want none, passed", i, len(l.Events()), l.Armed())
		}
		now += YieldAfter // as if every turn came a YieldAfter later
		l.Busy(now)
		if l.yield {
			t.Fatalf("turn %d: asked to yield after %d turns that parked", i, i+1)
		}
	}
	if l.Yields() != 0 {
		t.Fatalf("%d yields", l.Yields())
	}
}
