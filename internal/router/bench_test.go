package router

import (
	"fmt"
	"net/netip"
	"sync/atomic"
	"testing"
)

// TestPickDoesNotAllocate: in the steady state (no weight or health change
// since the last pick) no router allocates per pick, with 10 or 1,000
// backends, including the Acquire and Release that follow a pick.
func TestPickDoesNotAllocate(t *testing.T) {
	for _, p := range allPlugins {
		for _, n := range []int{10, 1000} {
			t.Run(fmt.Sprintf("%s/%d", p.name, n), func(t *testing.T) {
				bs := newBackends(n, 1, 2, 3)
				r := mustNew(t, p.plugin, p.config, bs)
				var req Request
				i := 0
				// AllocsPerRun counts the whole process's allocations, and the
				// GC cleanups of routers that earlier subtests left behind
				// (their watchers unregistering) may run during one
				// measurement. A pick that allocates does so in every run, so
				// the fewest of three runs is the pick's own count.
				allocs := -1.0
				for range 3 {
					n := testing.AllocsPerRun(1000, func() {
						req.Reset()
						i++
						req.Client = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, byte(i >> 16), byte(i >> 8), byte(i)}), uint16(i))
						b, err := r.Pick(&req)
						if err != nil {
							t.Fatal(err)
						}
						b.Acquire(0)
						b.Release(0)
					})
					if allocs < 0 || n < allocs {
						allocs = n
					}
					if allocs == 0 {
						break
					}
				}
				if allocs != 0 {
					t.Fatalf("%.1f allocations per pick, want 0", allocs)
				}
			})
		}
	}
}

// BenchmarkPick is the pick path alone:
//
//	go test -run '^$' -bench . -benchmem ./internal/router/
//
// Every backend is usable and the weights cycle 1, 2, 3; each pick has
// another client address (for hash).
func BenchmarkPick(b *testing.B) {
	for _, p := range allPlugins {
		for _, n := range []int{10, 1000} {
			b.Run(fmt.Sprintf("%s/%d", p.name, n), func(b *testing.B) {
				bs := newBackends(n, 1, 2, 3)
				r := mustNew(b, p.plugin, p.config, bs)
				clients := randomClients(7, 4096)
				var req Request
				i := 0
				for b.Loop() {
					req.Reset()
					req.Client = clients[i&4095]
					i++
					if _, err := r.Pick(&req); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkPickAcquireRelease adds what follows a pick in the proxy:
// Acquire and Release, which is where least_connections (and hash with
// bounded_load) keep their index of backends by load up to date.
func BenchmarkPickAcquireRelease(b *testing.B) {
	for _, p := range allPlugins {
		for _, n := range []int{10, 1000} {
			b.Run(fmt.Sprintf("%s/%d", p.name, n), func(b *testing.B) {
				bs := newBackends(n, 1, 2, 3)
				r := mustNew(b, p.plugin, p.config, bs)
				clients := randomClients(7, 4096)
				var req Request
				i := 0
				for b.Loop() {
					req.Reset()
					req.Client = clients[i&4095]
					i++
					be, err := r.Pick(&req)
					if err != nil {
						b.Fatal(err)
					}
					be.Acquire(0)
					be.Release(0)
				}
			})
		}
	}
}

// BenchmarkPickParallel is the pick path from every P at once.
func BenchmarkPickParallel(b *testing.B) {
	for _, p := range allPlugins {
		for _, n := range []int{10, 1000} {
			b.Run(fmt.Sprintf("%s/%d", p.name, n), func(b *testing.B) {
				bs := newBackends(n, 1, 2, 3)
				r := mustNew(b, p.plugin, p.config, bs)
				clients := randomClients(7, 4096)
				var loops atomic.Int32
				b.RunParallel(func(pb *testing.PB) {
					loop := int(loops.Add(1)) // each goroutine an event loop of its own
					var req Request
					i := 0
					for pb.Next() {
						req.Reset()
						req.Client = clients[i&4095]
						i++
						be, err := r.Pick(&req)
						if err != nil {
							b.Fatal(err)
						}
						be.Acquire(loop)
						be.Release(loop)
					}
				})
			})
		}
	}
}

// BenchmarkScanReference is what the O(n) algorithms the routers replace
// cost per pick: nginx's smooth weighted round robin over every backend's
// current weight, and least connections by scanning every backend. For
// comparison with BenchmarkPick's weighted and least_connections.
func BenchmarkScanReference(b *testing.B) {
	for _, n := range []int{10, 1000} {
		bs := newBackends(n, 1, 2, 3)
		b.Run(fmt.Sprintf("nginx_smooth_weighted/%d", n), func(b *testing.B) {
			ref := &nginxRef{cw: make([]int64, n)}
			for b.Loop() {
				ref.pick(bs)
			}
		})
		b.Run(fmt.Sprintf("least_connections_scan/%d", n), func(b *testing.B) {
			ref := &lcRef{}
			var req Request
			for b.Loop() {
				ref.pick(bs, &req)
			}
		})
	}
}

// BenchmarkExplain: one dry run per plugin with 10 backends (the admin
// API's GET /api/v1/explain, and each sampled connection of
// explain_sample).
func BenchmarkExplain(b *testing.B) {
	for _, p := range allPlugins {
		if p.plugin == "host_hash" {
			continue
		}
		b.Run(p.name, func(b *testing.B) {
			r := mustNew(b, p.plugin, p.config, newBackends(10, 1, 2, 3))
			req := Request{Client: netip.MustParseAddrPort("192.0.2.7:5555")}
			b.ReportAllocs()
			for b.Loop() {
				Explain(r, &req)
			}
		})
	}
}
