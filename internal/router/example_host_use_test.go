package router

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// TestHostHashExample runs the worked example of docs/routers.md "Writing a
// router" (example_host_test.go, registered as host_hash): it declares that
// it needs the Host, sends every connection for one Host to one backend
// whatever the client, spreads hosts, moves only a down backend's hosts
// (which come back with it), and hashes a connection without a Host by its
// client address. allPlugins runs the shared tests (concurrency, no
// allocation, errors) over it too.
func TestHostHashExample(t *testing.T) {
	bs := newBackends(5)
	r := mustNew(t, "host_hash", nil, bs)
	if NeedsOf(r) != NeedHost {
		t.Fatalf("host_hash needs %v, want NeedHost", NeedsOf(r))
	}
	client := func(c int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(c >> 8), byte(c)}), uint16(40000+c))
	}
	pickFor := func(host string, c int) *backend.Backend {
		t.Helper()
		req := &Request{Client: client(c), Host: host}
		b, err := r.Pick(req)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	hosts := make([]string, 200)
	owner := map[string]*backend.Backend{}
	perBackend := map[*backend.Backend]int{}
	for i := range hosts {
		hosts[i] = fmt.Sprintf("site%d.example.com", i)
		first := pickFor(hosts[i], 0)
		for c := 1; c < 20; c++ {
			if b := pickFor(hosts[i], c); b != first {
				t.Fatalf("%s: client %d went to %s, client 0 to %s", hosts[i], c, b.ID, first.ID)
			}
		}
		owner[hosts[i]] = first
		perBackend[first]++
	}
	for _, b := range bs {
		if perBackend[b] < 10 { // 40 expected of 200 hosts
			t.Errorf("%s has %d of %d hosts: not spread", b.ID, perBackend[b], len(hosts))
		}
	}

	down := bs[2]
	down.Health().SetUp(false)
	for _, h := range hosts {
		b := pickFor(h, 7)
		if b == down {
			t.Fatalf("%s went to the down backend", h)
		}
		if owner[h] != down && b != owner[h] {
			t.Errorf("%s moved from %s to %s although only %s went down", h, owner[h].ID, b.ID, down.ID)
		}
	}
	down.Health().SetUp(true)
	for _, h := range hosts {
		if b := pickFor(h, 9); b != owner[h] {
			t.Errorf("%s did not come back to %s (went to %s)", h, owner[h].ID, b.ID)
		}
	}

	// Without a Host, the client's IP decides: the same client, any port.
	spread := map[*backend.Backend]bool{}
	for c := range 50 {
		req := &Request{Client: client(c)}
		b, err := r.Pick(req)
		if err != nil {
			t.Fatal(err)
		}
		req = &Request{Client: netip.AddrPortFrom(client(c).Addr(), 1)}
		if b2, _ := r.Pick(req); b2 != b {
			t.Errorf("client %v without a Host: %s, then %s from another port", client(c).Addr(), b.ID, b2.ID)
		}
		spread[b] = true
	}
	if len(spread) < 3 {
		t.Errorf("50 clients without a Host went to %d backends", len(spread))
	}
}

// TestHostHashExampleInDocs: docs/routers.md shows example_host_test.go
// word for word, so the worked example cannot drift from the tested code.
func TestHostHashExampleInDocs(t *testing.T) {
	code, err := os.ReadFile("example_host_test.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/routers.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range strings.Split(string(doc), "```go\n")[1:] {
		block, _, _ = strings.Cut(block, "```\n")
		if block == string(code) {
			return
		}
	}
	t.Fatal("docs/routers.md has no ```go block equal to internal/router/example_host_test.go; copy the file into the doc")
}
