package resolve

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"
)

const deadline = 20 * time.Second

// fakeDNS is an injected lookup: answers by host, a gate to hold lookups,
// and a count of lookups made.
type fakeDNS struct {
	mu      sync.Mutex
	answers map[string][]netip.Addr
	fail    map[string]error
	calls   map[string]int
	gate    chan struct{} // nil: answer at once; else each lookup waits for a receive
}

func newFakeDNS() *fakeDNS {
	return &fakeDNS{answers: map[string][]netip.Addr{}, fail: map[string]error{}, calls: map[string]int{}}
}

func (f *fakeDNS) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	f.mu.Lock()
	f.calls[host]++
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail[host]; err != nil {
		return nil, err
	}
	return f.answers[host], nil
}

func (f *fakeDNS) set(host string, addrs ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	f.answers[host] = as
	delete(f.fail, host)
}

func (f *fakeDNS) setFail(host string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[host] = err
}

func (f *fakeDNS) count(host string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[host]
}

// clock is a hand-moved time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTest(t *testing.T, f *fakeDNS) (*Resolver, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1000, 0)}
	return New(Options{Lookup: f.lookup, TTL: 30 * time.Second, NegativeTTL: 5 * time.Second, Now: c.now, MaxEntries: 8}), c
}

// wait does a lookup and returns its answer, from the cache or from the
// finished lookup.
func wait(t *testing.T, r *Resolver, host string) Result {
	t.Helper()
	ch := make(chan Result, 1)
	if res, ok := r.Lookup(host, func(res Result) { ch <- res }); ok {
		return res
	}
	select {
	case res := <-ch:
		return res
	case <-time.After(deadline):
		t.Fatalf("lookup of %s never finished", host)
		return Result{}
	}
}

func TestEveryAddressReturned(t *testing.T) {
	f := newFakeDNS()
	f.set("svc", "127.0.0.2", "127.0.0.3", "::1")
	r, _ := newTest(t, f)
	res := wait(t, r, "svc")
	want := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"), netip.MustParseAddr("::1")}
	if res.Err != nil || !slices.Equal(res.Addrs, want) {
		t.Fatalf("got %v %v, want %v", res.Addrs, res.Err, want)
	}
}

func TestCachedUntilTTL(t *testing.T) {
	f := newFakeDNS()
	f.set("svc", "127.0.0.2")
	r, c := newTest(t, f)
	wait(t, r, "svc")
	for range 5 {
		if _, ok := r.Lookup("svc", func(Result) { t.Error("a fresh answer was looked up again") }); !ok {
			t.Fatal("a fresh answer was not served from the cache")
		}
	}
	if n := f.count("svc"); n != 1 {
		t.Fatalf("%d lookups, want 1", n)
	}
	// Past the TTL the stale answer is served at once and refreshed behind.
	f.set("svc", "127.0.0.9")
	c.add(31 * time.Second)
	res, ok := r.Lookup("svc", nil)
	if !ok || res.Addrs[0] != netip.MustParseAddr("127.0.0.2") {
		t.Fatalf("expired entry: got %v ok=%v, want the stale answer at once", res.Addrs, ok)
	}
	eventually(t, func() bool {
		res, ok := r.Lookup("svc", nil)
		return ok && res.Addrs[0] == netip.MustParseAddr("127.0.0.9")
	}, "the refresh was not taken in")
}

// TestStaleKeptOnFailedRefresh: a failed refresh keeps the last good answer.
func TestStaleKeptOnFailedRefresh(t *testing.T) {
	f := newFakeDNS()
	f.set("svc", "127.0.0.2")
	r, c := newTest(t, f)
	wait(t, r, "svc")
	f.setFail("svc", errors.New("SERVFAIL"))
	c.add(31 * time.Second)
	r.Lookup("svc", nil) // starts the refresh
	eventually(t, func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return f.count("svc") == 2 && !r.entries["svc"].inflight
	}, "the refresh did not run")
	res, ok := r.Lookup("svc", nil)
	if !ok || res.Err != nil || len(res.Addrs) != 1 || res.Addrs[0] != netip.MustParseAddr("127.0.0.2") {
		t.Fatalf("after a failed refresh: got %v %v ok=%v, want the last good answer", res.Addrs, res.Err, ok)
	}
	// It is retried after the negative TTL, not the full TTL.
	c.add(6 * time.Second)
	f.set("svc", "127.0.0.4")
	r.Lookup("svc", nil)
	eventually(t, func() bool {
		res, _ := r.Lookup("svc", nil)
		return res.Addrs[0] == netip.MustParseAddr("127.0.0.4")
	}, "the failed refresh was not retried")
}

func TestNegativeCached(t *testing.T) {
	f := newFakeDNS()
	f.setFail("nope", errors.New("NXDOMAIN"))
	r, c := newTest(t, f)
	if res := wait(t, r, "nope"); res.Err == nil {
		t.Fatal("a failed lookup returned no error")
	}
	if res, ok := r.Lookup("nope", func(Result) {}); !ok || res.Err == nil {
		t.Fatalf("a fresh failure was not served from the cache: %v %v", res.Err, ok)
	}
	c.add(6 * time.Second)
	f.set("nope", "127.0.0.5")
	if res := wait(t, r, "nope"); res.Err != nil || res.Addrs[0] != netip.MustParseAddr("127.0.0.5") {
		t.Fatalf("after the negative TTL: %v %v", res.Addrs, res.Err)
	}
}

// TestFirstLookupDoesNotBlock: a lookup that has not answered holds up no
// caller; every waiter is told once it answers, from one lookup.
func TestFirstLookupDoesNotBlock(t *testing.T) {
	f := newFakeDNS()
	f.set("slow", "127.0.0.2")
	f.set("fast", "127.0.0.3")
	f.gate = make(chan struct{})
	r, _ := newTest(t, f)
	got := make(chan Result, 3)
	for range 3 {
		if _, ok := r.Lookup("slow", func(res Result) { got <- res }); ok {
			t.Fatal("answered before the lookup finished")
		}
	}
	// Another name is looked up on its own while the first is held.
	fast := make(chan Result, 1)
	r.Lookup("fast", func(res Result) { fast <- res })
	f.gate <- struct{}{} // one of the two held lookups goes
	f.gate <- struct{}{}
	select {
	case res := <-fast:
		if res.Addrs[0] != netip.MustParseAddr("127.0.0.3") {
			t.Fatal(res)
		}
	case <-time.After(deadline):
		t.Fatal("fast lookup never answered")
	}
	for range 3 {
		select {
		case res := <-got:
			if res.Err != nil || res.Addrs[0] != netip.MustParseAddr("127.0.0.2") {
				t.Fatal(res)
			}
		case <-time.After(deadline):
			t.Fatal("a waiter was not told")
		}
	}
	if n := f.count("slow"); n != 1 {
		t.Fatalf("%d lookups for three waiters, want 1", n)
	}
}

func TestBounded(t *testing.T) {
	f := newFakeDNS()
	r, _ := newTest(t, f)
	for i := range 50 {
		h := "h" + string(rune('a'+i%26)) + string(rune('a'+i/26))
		f.set(h, "127.0.0.2")
		wait(t, r, h)
	}
	r.mu.Lock()
	n := len(r.entries)
	r.mu.Unlock()
	if n > 8 {
		t.Fatalf("%d entries, want at most 8", n)
	}
}

func TestHitDoesNotAllocate(t *testing.T) {
	f := newFakeDNS()
	f.set("svc", "127.0.0.2")
	r, _ := newTest(t, f)
	wait(t, r, "svc")
	done := func(Result) {}
	if n := testing.AllocsPerRun(100, func() { r.Lookup("svc", done) }); n != 0 {
		t.Fatalf("%v allocations per cache hit", n)
	}
}

func TestScopeID(t *testing.T) {
	if got := ScopeID(netip.MustParseAddr("fe80::1%3")); got != 3 {
		t.Fatalf("ScopeID(%%3) = %d", got)
	}
	if got := ScopeID(netip.MustParseAddr("::1")); got != 0 {
		t.Fatalf("ScopeID(no zone) = %d", got)
	}
	lo := NumericZone(netip.MustParseAddr("fe80::1%lo"))
	if ScopeID(lo) == 0 {
		t.Fatalf("NumericZone(%%lo) = %v, want lo's index", lo)
	}
}

func eventually(t *testing.T, cond func() bool, msg string) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatal(msg)
		}
		time.Sleep(time.Millisecond)
	}
}
