package discovery

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func eps(addrs ...string) []Endpoint {
	out := make([]Endpoint, len(addrs))
	for i, a := range addrs {
		out[i] = Endpoint{Addr: netip.MustParseAddrPort(a), Weight: 1}
	}
	return out
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// TestRefreshFollowsTheTTLWithinBounds: the next refresh is the answer's
// TTL, raised to min_ttl and cut to max_ttl.
func TestRefreshFollowsTheTTLWithinBounds(t *testing.T) {
	b := Bounds{MinTTL: 2 * time.Second, MaxTTL: time.Minute}
	for _, c := range []struct{ ttl, want time.Duration }{
		{0, 2 * time.Second},
		{time.Second, 2 * time.Second},
		{2 * time.Second, 2 * time.Second},
		{30 * time.Second, 30 * time.Second},
		{time.Minute, time.Minute},
		{24 * time.Hour, time.Minute},
	} {
		var s State
		s.Observe(t0, Answer{Endpoints: eps("127.0.0.2:80"), TTL: c.ttl}, nil, b)
		if got := s.Next.Sub(t0); got != c.want {
			t.Errorf("TTL %s: next refresh in %s, want %s", c.ttl, got, c.want)
		}
	}
}

// TestFailureKeepsTheLastGoodAnswer: SERVFAIL or a timeout changes nothing
// in effect, counts a failure and retries at min_ttl.
func TestFailureKeepsTheLastGoodAnswer(t *testing.T) {
	b := Bounds{MinTTL: time.Second, MaxTTL: time.Minute, EmptyGrace: 10 * time.Second}
	var s State
	if o := s.Observe(t0, Answer{Endpoints: eps("127.0.0.2:80", "127.0.0.3:80"), TTL: 30 * time.Second}, nil, b); o != Changed {
		t.Fatalf("first answer: %v", o)
	}
	fail := fmt.Errorf("%w: A web at 127.0.0.1:53: SERVFAIL", ErrFailed)
	if o := s.Observe(t0.Add(30*time.Second), Answer{}, fail, b); o != Kept {
		t.Fatalf("SERVFAIL: %v, want kept", o)
	}
	if len(s.Applied) != 2 || s.Failures != 1 || s.LastError == "" || s.Next != t0.Add(31*time.Second) {
		t.Fatalf("after SERVFAIL: %+v", s)
	}
	if o := s.Observe(t0.Add(31*time.Second), Answer{Endpoints: eps("127.0.0.2:80", "127.0.0.3:80"), TTL: 30 * time.Second}, nil, b); o != Unchanged || s.LastError != "" {
		t.Fatalf("answer again: %v %+v", o, s)
	}
}

// TestEmptyAnswerWaitsForTheGrace: an empty answer (or NXDOMAIN) empties
// the name's backends only once it has been seen for empty_grace; an answer
// with endpoints in between resets the grace.
func TestEmptyAnswerWaitsForTheGrace(t *testing.T) {
	b := Bounds{MinTTL: time.Second, MaxTTL: time.Minute, EmptyGrace: 10 * time.Second}
	full := Answer{Endpoints: eps("127.0.0.2:80"), TTL: time.Second}
	empty := Answer{Rcode: "NXDOMAIN", TTL: 5 * time.Second}
	var s State
	s.Observe(t0, full, nil, b)
	if o := s.Observe(t0.Add(time.Second), empty, nil, b); o != EmptyPending || len(s.Applied) != 1 {
		t.Fatalf("first empty answer: %v, applied %v", o, s.Applied)
	}
	if s.Next != t0.Add(6*time.Second) {
		t.Fatalf("next refresh %s after the start, want at the TTL, 6s", s.Next.Sub(t0))
	}
	if o := s.Observe(t0.Add(9*time.Second), empty, nil, b); o != EmptyPending || s.Next != t0.Add(11*time.Second) {
		t.Fatalf("empty within the grace: %v, next %s (want the grace's end, 11s)", o, s.Next.Sub(t0))
	}
	// An answer with endpoints resets the grace.
	s.Observe(t0.Add(10*time.Second), full, nil, b)
	if o := s.Observe(t0.Add(12*time.Second), empty, nil, b); o != EmptyPending {
		t.Fatalf("empty again after a full answer: %v (the grace must start again)", o)
	}
	if o := s.Observe(t0.Add(22*time.Second), empty, nil, b); o != Changed || len(s.Applied) != 0 {
		t.Fatalf("empty for the whole grace: %v, applied %v", o, s.Applied)
	}
	// Without a grace, an empty answer applies at once.
	var z State
	z.Observe(t0, full, nil, Bounds{MinTTL: time.Second, MaxTTL: time.Minute})
	if o := z.Observe(t0.Add(time.Second), empty, nil, Bounds{MinTTL: time.Second, MaxTTL: time.Minute}); o != Changed {
		t.Fatalf("empty_grace 0: %v", o)
	}
	// A first answer that is empty has nothing to keep.
	var f State
	if o := f.Observe(t0, empty, nil, b); o != Changed || !f.Answered {
		t.Fatalf("first answer empty: %v", o)
	}
}

func TestSystemResolverReadsResolvConf(t *testing.T) {
	p := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(p, []byte("# x\nsearch example\nnameserver not-an-ip\nnameserver 10.0.0.53\n"), 0o644)
	if got := resolvConfServer(p); got != "10.0.0.53:53" {
		t.Fatalf("got %q", got)
	}
	if got := resolvConfServer(filepath.Join(t.TempDir(), "none")); got != "127.0.0.1:53" {
		t.Fatalf("no file: %q", got)
	}
	if !errors.Is(fmt.Errorf("%w: x", ErrFailed), ErrFailed) {
		t.Fatal("ErrFailed")
	}
}
