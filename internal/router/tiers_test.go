package router

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// TestTieredFailsOverAndGivesBack: the best tier with a usable backend
// takes every pick; when its backends go down the next tier does, and the
// better tier takes the picks back once one of its backends is up again.
func TestTieredFailsOverAndGivesBack(t *testing.T) {
	for _, plugin := range Plugins() {
		t.Run(plugin, func(t *testing.T) {
			bs := letters(newBackends(4))
			r, err := NewTiered(plugin, map[string]any{}, bs, []int{0, 0, 1, 65536})
			if err != nil {
				t.Fatal(err)
			}
			only := func(what string, ids string) {
				t.Helper()
				for id := range counts(t, r, 40) {
					if !contains(ids, id) {
						t.Fatalf("%s: picked %s, want only %s", what, id, ids)
					}
				}
			}
			only("all up", "ab")
			bs[0].Health().SetUp(false)
			only("a down", "b")
			bs[1].SetEnabled(false)
			only("a down, b disabled", "c")
			bs[2].SetDraining(true)
			only("tiers 0 and 1 unusable", "d")
			bs[3].Health().SetUp(false)
			var req Request
			if _, err := r.Pick(&req); !errors.Is(err, ErrNoBackend) {
				t.Fatalf("nothing usable: err %v, want ErrNoBackend", err)
			}
			bs[0].Health().SetUp(true)
			only("a back", "a")
		})
	}
}

// TestTieredRetriesInTheNextTier: a connection whose dials to every backend
// of the best tier failed is retried in the next tier.
func TestTieredRetriesInTheNextTier(t *testing.T) {
	bs := letters(newBackends(3))
	r, err := NewTiered("round_robin", nil, bs, []int{0, 0, 5})
	if err != nil {
		t.Fatal(err)
	}
	var req Request
	seen := ""
	for range 3 {
		b, err := r.Pick(&req)
		if err != nil {
			t.Fatal(err)
		}
		seen += b.ID
		req.Tried(b)
	}
	if seen != "abc" && seen != "bac" {
		t.Fatalf("picks with retries %q, want the tier-0 backends then c", seen)
	}
	if _, err := r.Pick(&req); !errors.Is(err, ErrNoBackend) {
		t.Fatalf("every backend tried: err %v", err)
	}
}

// TestTieredOneTierIsThePluginsRouter: without tiers nothing is wrapped.
func TestTieredOneTierIsThePluginsRouter(t *testing.T) {
	r, err := NewTiered("round_robin", nil, newBackends(2), []int{3, 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := r.(*roundRobin); !ok || Tiers(r) != nil {
		t.Fatalf("one tier: got %T", r)
	}
}

// TestTieredHashIsTheSameEverywhere: two instances with the same backends
// and tiers, listed in another order, map every key to the same backend.
func TestTieredHashIsTheSameEverywhere(t *testing.T) {
	a := newBackends(6)
	tiersA := []int{0, 0, 0, 1, 1, 1}
	r1, err := NewTiered("hash", nil, a, tiersA)
	if err != nil {
		t.Fatal(err)
	}
	a2 := newBackends(6)
	perm := []int{5, 2, 4, 0, 3, 1}
	shuffled := make([]*backend.Backend, len(perm))
	tiersB := make([]int, len(perm))
	for i, p := range perm {
		shuffled[i] = a2[p]
		tiersB[i] = tiersA[p]
	}
	r2, err := NewTiered("hash", nil, shuffled, tiersB)
	if err != nil {
		t.Fatal(err)
	}
	a[0].Health().SetUp(false)
	a2[0].Health().SetUp(false)
	for i := range 500 {
		var q1, q2 Request
		q1.Client = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 4000)
		q2.Client = q1.Client
		b1, err1 := r1.Pick(&q1)
		b2, err2 := r2.Pick(&q2)
		if err1 != nil || err2 != nil || b1.ID != b2.ID {
			t.Fatalf("key %d: %v %v / %v %v", i, b1, err1, b2, err2)
		}
	}
}

func contains(ids string, id string) bool {
	for _, c := range ids {
		if string(c) == id {
			return true
		}
	}
	return false
}
