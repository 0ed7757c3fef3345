package router

import "testing"

func TestRoundRobinRotates(t *testing.T) {
	bs := letters(newBackends(3))
	r := mustNew(t, "round_robin", nil, bs)
	if got := sequence(t, r, 7); got != "abcabca" {
		t.Fatalf("sequence %q, want abcabca", got)
	}
}

func TestRoundRobinSkipsUnavailableWithoutDisturbingTheRest(t *testing.T) {
	bs := letters(newBackends(4))
	r := mustNew(t, "round_robin", nil, bs)
	if got := sequence(t, r, 2); got != "ab" {
		t.Fatalf("sequence %q, want ab", got)
	}
	bs[2].SetEnabled(false)
	if got := sequence(t, r, 6); got != "dabdab" {
		t.Fatalf("with c disabled: sequence %q, want dabdab", got)
	}
	bs[2].SetEnabled(true)
	bs[0].Health().SetUp(false)
	bs[3].SetDraining(true)
	if got := sequence(t, r, 4); got != "bcbc" && got != "cbcb" {
		t.Fatalf("with a down and d draining: sequence %q, want b and c in turn", got)
	}
}
