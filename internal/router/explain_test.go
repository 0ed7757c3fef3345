package router

import (
	"net/netip"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// deterministic reports whether the plugin's next pick is decided by its
// state (not a random draw).
func deterministic(plugin string, config map[string]any) bool {
	switch plugin {
	case "random":
		return false
	case "weighted":
		return config["smooth_weighted"] != false
	}
	return true
}

// TestExplainChangesNothing: for every builtin plugin, explaining before
// each pick leaves the pick sequence exactly what it is without, and the
// explanation names the backend the next pick returns (a random pick's
// example is a usable backend).
func TestExplainChangesNothing(t *testing.T) {
	for _, p := range allPlugins {
		if p.plugin == "host_hash" {
			continue // the example plugin (another file) is not an Explainer
		}
		t.Run(p.name, func(t *testing.T) {
			mk := func() (Router, []*backend.Backend) {
				bs := letters(newBackends(5, 3, 1, 2, 1, 1))
				bs[3].SetDraining(true)
				return mustNew(t, p.plugin, p.config, bs), bs
			}
			plain, _ := mk()
			explained, bs := mk()
			for i := range 40 {
				req := Request{Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(i % 7), 1}), uint16(1000+i))}
				x := Explain(explained, &req)
				x2 := Explain(explained, &req)
				got, err := explained.Pick(&req)
				if err != nil {
					t.Fatal(err)
				}
				want, err := plain.Pick(&Request{Client: req.Client})
				if err != nil {
					t.Fatal(err)
				}
				if deterministic(p.plugin, p.config) {
					if got.ID != want.ID {
						t.Fatalf("pick %d: %s after Explain, %s without: Explain changed the router's state", i, got.ID, want.ID)
					}
					if x.Backend != got || x2.Backend != got {
						t.Fatalf("pick %d: Explain said %q then %q, the pick was %s (%s)", i, x.Chosen, x2.Chosen, got.ID, x.Reason)
					}
				} else if x.Backend == nil || x.Backend == bs[3] {
					t.Fatalf("pick %d: example %v is not a usable backend", i, x.Chosen)
				}
				if len(x.Candidates) != len(bs) {
					t.Fatalf("%d candidates, want %d", len(x.Candidates), len(bs))
				}
				if s := x.Candidates[3].Skipped; s != SkipDraining {
					t.Fatalf("the draining backend: skipped %q, want %q", s, SkipDraining)
				}
			}
		})
	}
}

// TestExplainRoundRobinDoesNotAdvance: a thousand dry runs leave the
// rotation where it was.
func TestExplainRoundRobinDoesNotAdvance(t *testing.T) {
	r := mustNew(t, "round_robin", nil, letters(newBackends(3)))
	pick(t, r) // a
	for range 1000 {
		if x := Explain(r, &Request{}); x.Chosen != "b" {
			t.Fatalf("Explain chose %q, want b (%s)", x.Chosen, x.Reason)
		}
	}
	if got := sequence(t, r, 3); got != "bca" {
		t.Fatalf("picks after the dry runs: %s, want bca", got)
	}
}

// TestExplainHash: the key, the slot and the probe sequence; the same
// client gets the same slot and backend every time; a drained backend's
// keys go on along their probe sequence and it is listed as skipped.
func TestExplainHash(t *testing.T) {
	bs := letters(newBackends(3))
	r := mustNew(t, "hash", nil, bs)
	req := Request{Client: netip.MustParseAddrPort("192.0.2.7:5555")}
	x := Explain(r, &req)
	y := Explain(r, &Request{Client: netip.MustParseAddrPort("192.0.2.7:6666")})
	if x.HashKey != "client_ip" || x.Slot == nil || x.TableSize != maglevSize(3) || x.Hash == 0 {
		t.Fatalf("explanation lacks the key, slot or table: %+v", x)
	}
	if *x.Slot != x.Hash%x.TableSize || len(x.Probes) == 0 || x.Probes[0] != *x.Slot {
		t.Fatalf("slot %d, hash %d, probes %v", *x.Slot, x.Hash, x.Probes)
	}
	if y.Chosen != x.Chosen || *y.Slot != *x.Slot {
		t.Fatalf("same client IP: %s slot %d, then %s slot %d", x.Chosen, *x.Slot, y.Chosen, *y.Slot)
	}
	if b, _ := r.Pick(&req); b != x.Backend {
		t.Fatalf("pick %s, explained %s", b.ID, x.Chosen)
	}
	x.Backend.SetDraining(true)
	z := Explain(r, &req)
	if z.Backend == nil || z.Backend == x.Backend || len(z.Probes) < 2 || *z.Slot != *x.Slot {
		t.Fatalf("with %s draining: %+v", x.Chosen, z)
	}
	for _, c := range z.Candidates {
		if c.ID == x.Chosen && c.Skipped != SkipDraining {
			t.Fatalf("%s: skipped %q, want draining", c.ID, c.Skipped)
		}
	}
	if b, _ := r.Pick(&req); b != z.Backend {
		t.Fatalf("pick %s, explained %s", b.ID, z.Chosen)
	}
}

// TestExplainTiers: the tier that takes the connection, and the backends
// of worse tiers listed as skipped for their tier.
func TestExplainTiers(t *testing.T) {
	bs := letters(newBackends(3))
	r, err := NewTiered("round_robin", nil, bs, []int{0, 1, 1})
	if err != nil {
		t.Fatal(err)
	}
	x := Explain(r, &Request{})
	if x.Chosen != "a" || x.Tier == nil || *x.Tier != 0 || x.Candidates[1].Skipped != SkipTier {
		t.Fatalf("all up: %+v", x)
	}
	bs[0].Health().SetUp(false)
	x = Explain(r, &Request{})
	if x.Chosen != "b" || *x.Tier != 1 || x.Candidates[0].Skipped != SkipDown {
		t.Fatalf("a down: %+v", x)
	}
	if got := sequence(t, r, 2); got != "bc" {
		t.Fatalf("picks %s, want bc", got)
	}
}
