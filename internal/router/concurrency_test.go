package router

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// TestConcurrentPicks runs every router under -race with pickers that open
// and close connections (and retry) while other goroutines change weights,
// health, enabled and draining, and checks that a backend disabled for the
// whole run is never picked and that every connection is accounted for.
func TestConcurrentPicks(t *testing.T) {
	for _, p := range allPlugins {
		t.Run(p.name, func(t *testing.T) {
			bs := newBackends(16, 1, 2, 3, 4)
			off := bs[15]
			off.SetEnabled(false)
			r := mustNew(t, p.plugin, p.config, bs)
			var picks, fails atomic.Int64
			var stop atomic.Bool
			var wg, changer sync.WaitGroup
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var req Request
					var held []*backend.Backend
					for i := range 3000 {
						req.Reset()
						req.Client = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(g), byte(i)}), uint16(i))
						b, err := r.Pick(&req)
						if err != nil {
							fails.Add(1)
							continue
						}
						if b == off {
							t.Errorf("picked %s, disabled all along", b.ID)
							return
						}
						picks.Add(1)
						if i%7 == 0 { // a failed dial: retry elsewhere
							req.Tried(b)
							if b2, err := r.Pick(&req); err == nil && b2 == b {
								t.Errorf("retry picked the backend already tried")
								return
							}
						}
						b.Acquire(0)
						held = append(held, b)
						if len(held) > 20 {
							held[0].Release(0)
							held = held[1:]
						}
					}
					for _, b := range held {
						b.Release(0)
					}
				}()
			}
			changer.Add(1)
			go func() {
				defer changer.Done()
				for i := 0; !stop.Load(); i++ {
					b := bs[i%15]
					switch i % 4 {
					case 0:
						b.SetWeight(1 + i%5)
					case 1:
						b.Health().SetUp(i%3 != 0)
					case 2:
						b.SetDraining(i%5 == 0)
					case 3:
						b.SetEnabled(i%6 != 0)
					}
				}
			}()
			wg.Wait()
			stop.Store(true)
			changer.Wait()
			for _, b := range bs {
				if b.Active() != 0 {
					t.Errorf("%s: %d connections still counted open", b.ID, b.Active())
				}
			}
			if picks.Load() == 0 {
				t.Fatalf("no successful picks (%d failures)", fails.Load())
			}
		})
	}
}

// The counts the least_connections tree and bounded_load's total are told
// by the backends stay exact while many goroutines open and close
// connections at once.
func TestWatchedCountsStayExact(t *testing.T) {
	bs := newBackends(8)
	lc := mustNew(t, "least_connections", nil, bs).(*leastConn)
	hr := mustNew(t, "hash", map[string]any{"bounded_load": 2.0}, bs).(*hashRouter)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var held []*backend.Backend
			for i := range 5000 {
				var b *backend.Backend
				var err error
				req := Request{Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(g), byte(i)}), 1)}
				if i%2 == 0 {
					b, err = lc.Pick(&req)
				} else {
					b, err = hr.Pick(&req)
				}
				if err != nil {
					t.Error(err)
					return
				}
				b.Acquire(0)
				held = append(held, b)
				if len(held) > 10+g {
					held[0].Release(0)
					held = held[1:]
				}
			}
		}()
	}
	wg.Wait()
	var sum int64
	lc.t.mu.Lock()
	for i, b := range bs {
		sum += b.Active()
		if lc.t.active[i] != b.Active() {
			t.Errorf("%s: tree has %d open, backend %d", b.ID, lc.t.active[i], b.Active())
		}
	}
	lc.t.mu.Unlock()
	if got := hr.load.sum.Load(); got != sum {
		t.Errorf("bounded_load total %d, backends %d", got, sum)
	}
	if sum != 4*10+6 {
		t.Errorf("%d open, want %d", sum, 4*10+6)
	}
}
