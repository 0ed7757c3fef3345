package router

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// randomClients returns n random client addresses (IPv4, random ports)
// from a generator seeded with seed.
func randomClients(seed uint64, n int) []netip.AddrPort {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	out := make([]netip.AddrPort, n)
	for i := range out {
		v := rng.Uint32()
		out[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), uint16(1024+rng.IntN(60000)))
	}
	return out
}

// mapping returns the backend ID each client is routed to.
func mapping(t testing.TB, r Router, clients []netip.AddrPort) []string {
	t.Helper()
	out := make([]string, len(clients))
	for i, c := range clients {
		req := Request{Client: c}
		b, err := r.Pick(&req)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = b.ID
	}
	return out
}

func moved(a, b []string) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

func TestHashSameKeySameBackendAcrossInstances(t *testing.T) {
	clients := randomClients(1, 20000)
	bs := newBackends(10)
	first := mapping(t, mustNew(t, "hash", nil, bs), clients)
	if again := mapping(t, mustNew(t, "hash", nil, bs), clients); moved(first, again) != 0 {
		t.Fatalf("a second router over the same backends moved %d keys", moved(first, again))
	}
	// Other Backend objects, other addresses, in reverse order: the same
	// backends by id and weight, so the same mapping.
	other := newBackends(10)
	slices.Reverse(other)
	for _, b := range other {
		b.Address = "127.0.0.2:1"
	}
	if again := mapping(t, mustNew(t, "hash", nil, other), clients); moved(first, again) != 0 {
		t.Fatalf("a router over the same backends in another order moved %d keys", moved(first, again))
	}
}

// hashChildEnv makes TestHashChildProcess print its mapping for the parent.
const hashChildEnv = "ROUTER_HASH_CHILD"

// TestHashChildProcess is run by TestHashAcrossProcesses in a new process.
func TestHashChildProcess(t *testing.T) {
	if os.Getenv(hashChildEnv) == "" {
		t.Skip("run by TestHashAcrossProcesses")
	}
	for _, id := range mapping(t, mustNew(t, "hash", nil, newBackends(7, 1, 2, 3)), randomClients(2, 5000)) {
		fmt.Println(id)
	}
}

// The mapping does not depend on a per-process seed: another process with
// the same backends routes every key the same way.
func TestHashAcrossProcesses(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHashChildProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), hashChildEnv+"=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child process: %v", err)
	}
	var theirs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if l := sc.Text(); len(l) > 1 && l[0] == 'b' {
			theirs = append(theirs, l)
		}
	}
	ours := mapping(t, mustNew(t, "hash", nil, newBackends(7, 1, 2, 3)), randomClients(2, 5000))
	if len(theirs) != len(ours) {
		t.Fatalf("child printed %d mappings, want %d:\n%s", len(theirs), len(ours), out)
	}
	if n := moved(ours, theirs); n != 0 {
		t.Fatalf("%d of %d keys map elsewhere in another process", n, len(ours))
	}
}

// 100,000 random client addresses over 10 equal backends: every backend's
// share within ±5% of the mean.
func TestHashBalance(t *testing.T) {
	seed := rand.Uint64()
	bs := newBackends(10)
	r := mustNew(t, "hash", nil, bs)
	c := map[string]int{}
	for _, id := range mapping(t, r, randomClients(seed, 100000)) {
		c[id]++
	}
	for _, b := range bs {
		if d := math.Abs(float64(c[b.ID])-10000) / 10000; d > 0.05 {
			t.Errorf("%s has %d of 100000 keys: %.1f%% off the mean (seed %d)", b.ID, c[b.ID], 100*d, seed)
		}
	}
	t.Logf("keys per backend: %v", c)
}

func TestHashHonoursWeights(t *testing.T) {
	weights := []int{1, 2, 3, 4}
	bs := newBackends(4, weights...)
	r := mustNew(t, "hash", nil, bs)
	c := map[string]int{}
	for _, id := range mapping(t, r, randomClients(rand.Uint64(), 100000)) {
		c[id]++
	}
	for i, b := range bs {
		want := 100000 * float64(weights[i]) / 10
		if d := math.Abs(float64(c[b.ID])-want) / want; d > 0.05 {
			t.Errorf("%s (weight %d) has %d keys, want %.0f ± 5%%", b.ID, weights[i], c[b.ID], want)
		}
	}
}

// When one of N backends goes down only its keys move (≤ 1/N + 2% of all),
// and they come back when it does.
func TestHashDownMovesOnlyItsKeys(t *testing.T) {
	clients := randomClients(3, 100000)
	bs := newBackends(10)
	r := mustNew(t, "hash", nil, bs)
	before := mapping(t, r, clients)
	for _, down := range []struct {
		name      string
		set, heal func(*backend.Backend)
	}{
		{"down", func(b *backend.Backend) { b.Health().SetUp(false) }, func(b *backend.Backend) { b.Health().SetUp(true) }},
		{"disabled", func(b *backend.Backend) { b.SetEnabled(false) }, func(b *backend.Backend) { b.SetEnabled(true) }},
		{"draining", func(b *backend.Backend) { b.SetDraining(true) }, func(b *backend.Backend) { b.SetDraining(false) }},
	} {
		victim := bs[3]
		down.set(victim)
		during := mapping(t, r, clients)
		n := 0
		to := map[string]int{}
		for i := range clients {
			switch {
			case before[i] == victim.ID:
				if during[i] == victim.ID {
					t.Fatalf("%s: a key still goes to %s", down.name, victim.ID)
				}
				n++
				to[during[i]]++
			case during[i] != before[i]:
				t.Fatalf("%s: key %v moved from %s to %s though %s is up", down.name, clients[i], before[i], during[i], before[i])
			}
		}
		f := float64(n) / float64(len(clients))
		if f > 0.1+0.02 {
			t.Fatalf("%s: %.1f%% of keys moved, want ≤ 12%%", down.name, 100*f)
		}
		t.Logf("%s: %.2f%% of keys moved (all of %s's), to %v", down.name, 100*f, victim.ID, to)
		// Its keys spread over the others, not onto one.
		for _, b := range bs {
			if b != victim && (to[b.ID] < n/9/2 || to[b.ID] > 2*n/9) {
				t.Errorf("%s: %s took %d of the %d moved keys", down.name, b.ID, to[b.ID], n)
			}
		}
		down.heal(victim)
		if m := moved(before, mapping(t, r, clients)); m != 0 {
			t.Fatalf("%s: back up, %d keys did not come back", down.name, m)
		}
	}
}

// Removing (or adding) a backend rebuilds the table: about 1/N of the keys
// move, at most 1/N + 2%.
func TestHashRemoveOrAddMovesAboutItsShare(t *testing.T) {
	clients := randomClients(4, 100000)
	bs := newBackends(11)
	ten := mapping(t, mustNew(t, "hash", nil, bs[:10]), clients)
	worst := 0.0
	for victim := range 10 {
		rest := slices.Concat(bs[:victim], bs[victim+1:10])
		nine := mapping(t, mustNew(t, "hash", nil, rest), clients)
		f := float64(moved(ten, nine)) / float64(len(clients))
		if f > 0.1+0.02 {
			t.Errorf("removing b%d moved %.2f%% of keys, want ≤ 12%%", victim, 100*f)
		}
		worst = max(worst, f)
	}
	eleven := mapping(t, mustNew(t, "hash", nil, bs), clients)
	f := float64(moved(ten, eleven)) / float64(len(clients))
	if f > 1.0/11+0.02 {
		t.Errorf("adding an 11th backend moved %.2f%% of keys, want ≤ %.2f%%", 100*f, 100*(1.0/11+0.02))
	}
	t.Logf("removing one of 10 moved at most %.2f%% of keys; adding an 11th moved %.2f%%", 100*worst, 100*f)
}

func TestHashKeys(t *testing.T) {
	bs := newBackends(10)
	byIP := mustNew(t, "hash", map[string]any{"hash_key": "client_ip"}, bs)
	byIPPort := mustNew(t, "hash", map[string]any{"hash_key": "client_ip_port"}, bs)
	ip := netip.MustParseAddr("127.0.0.9")
	ipSeen, portSeen := map[string]bool{}, map[string]bool{}
	for port := uint16(40000); port < 40200; port++ {
		req := Request{Client: netip.AddrPortFrom(ip, port)}
		b, _ := byIP.Pick(&req)
		ipSeen[b.ID] = true
		b, _ = byIPPort.Pick(&req)
		portSeen[b.ID] = true
	}
	if len(ipSeen) != 1 {
		t.Errorf("client_ip: one address over 200 ports went to %d backends, want 1", len(ipSeen))
	}
	if len(portSeen) < 9 {
		t.Errorf("client_ip_port: 200 ports went to only %d backends", len(portSeen))
	}
	// An IPv4-mapped IPv6 client is the IPv4 client.
	v4 := Request{Client: netip.MustParseAddrPort("127.0.0.9:1")}
	v6 := Request{Client: netip.MustParseAddrPort("[::ffff:127.0.0.9]:1")}
	a, _ := byIP.Pick(&v4)
	b, _ := byIP.Pick(&v6)
	if a != b {
		t.Errorf("127.0.0.9 went to %s, ::ffff:127.0.0.9 to %s", a.ID, b.ID)
	}
}

// A retry goes to another backend, the same one in every process; when all
// but one are down the key still finds it; with none, an error.
func TestHashRetryAndFallback(t *testing.T) {
	bs := newBackends(10)
	r := mustNew(t, "hash", nil, bs)
	client := netip.MustParseAddrPort("127.0.0.5:1234")
	req := Request{Client: client}
	first, _ := r.Pick(&req)
	req.Tried(first)
	second, err := r.Pick(&req)
	if err != nil || second == first {
		t.Fatalf("retry picked %v (err %v) after %s", second, err, first.ID)
	}
	req2 := Request{Client: client}
	req2.Tried(first)
	if again, _ := r.Pick(&req2); again != second {
		t.Fatalf("retry not deterministic: %s then %s", second.ID, again.ID)
	}
	for _, b := range bs[1:] {
		b.Health().SetUp(false)
	}
	for _, c := range randomClients(5, 200) {
		req := Request{Client: c}
		if b, err := r.Pick(&req); err != nil || b != bs[0] {
			t.Fatalf("with only b0 up, %v went to %v (err %v)", c, b, err)
		}
	}
	bs[0].SetEnabled(false)
	if _, err := r.Pick(&Request{Client: client}); err == nil {
		t.Fatal("all down: want an error")
	}
}

func TestHashWeightChangeApplies(t *testing.T) {
	clients := randomClients(6, 20000)
	bs := newBackends(2)
	r := mustNew(t, "hash", nil, bs)
	count := func() int {
		n := 0
		for _, id := range mapping(t, r, clients) {
			if id == "b1" {
				n++
			}
		}
		return n
	}
	if n := count(); n < 9000 || n > 11000 {
		t.Fatalf("equal weights: b1 has %d of 20000 keys", n)
	}
	bs[1].SetWeight(3)
	if n := count(); n < 14000 || n > 16000 {
		t.Fatalf("weights 1 and 3: b1 has %d of 20000 keys, want ~15000", n)
	}
}

// bounded_load: one client's connections would all go to one backend; with
// a factor c no backend holds more than ⌈c × its share of the mean⌉.
func TestHashBoundedLoad(t *testing.T) {
	client := netip.MustParseAddrPort("127.0.0.7:5000")
	open := func(r Router, bs []*backend.Backend, n int, check func(i int)) {
		for i := range n {
			req := Request{Client: client}
			b, err := r.Pick(&req)
			if err != nil {
				t.Fatal(err)
			}
			b.Acquire(0)
			check(i)
		}
	}
	bs := newBackends(4)
	open(mustNew(t, "hash", nil, bs), bs, 40, func(int) {})
	hot := 0
	for _, b := range bs {
		hot = max(hot, int(b.Active()))
	}
	if hot != 40 {
		t.Fatalf("unbounded: one client's 40 connections spread (max %d on one backend)", hot)
	}

	for _, c := range []float64{1.0, 1.25, 2} {
		bs := newBackends(4, 1, 1, 2, 4)
		r := mustNew(t, "hash", map[string]any{"bounded_load": c}, bs)
		open(r, bs, 400, func(i int) {
			total := i + 1
			for j, b := range bs {
				w := float64([]int{1, 1, 2, 4}[j])
				// At the moment b took its last connection the total was at most total-1.
				limit := math.Ceil(c * float64(total) * w / 8)
				if float64(b.Active()) > limit {
					t.Fatalf("factor %g, %d open: %s (weight %g) has %d, above %g", c, total, b.ID, w, b.Active(), limit)
				}
			}
		})
		for j, b := range bs {
			w := []int64{1, 1, 2, 4}[j]
			if c == 1.0 && b.Active() != 400*w/8 {
				t.Errorf("factor 1: %s (weight %d) has %d of 400, want %d", b.ID, w, b.Active(), 400*w/8)
			}
		}
		for _, b := range bs {
			for b.Active() > 0 {
				b.Release(0)
			}
		}
	}
}

func TestHashConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		config map[string]any
		want   string
	}{
		{map[string]any{"hash_key": "cookie"}, `config.hash_key: want one of ["client_ip" "client_ip_port" "sni"], got "cookie"`},
		{map[string]any{"hash_key": int64(1)}, `config.hash_key: want one of`},
		{map[string]any{"bounded_load": 0.5}, `config.bounded_load: want 0 (off) or a factor from 1 to 100`},
		{map[string]any{"bounded_load": "high"}, `config.bounded_load: want a number from 0 to 100, got "high"`},
		{map[string]any{"bounded_load": int64(101)}, `config.bounded_load: want a number from 0 to 100, got 101`},
		{map[string]any{"hashkey": "client_ip"}, `config.hashkey: unknown key (this plugin takes: bounded_load, hash_key)`},
	} {
		err := Validate("hash", tc.config)
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("config %v: error %v, want it to contain %q", tc.config, err, tc.want)
		}
	}
	if err := Validate("hash", map[string]any{"bounded_load": int64(2), "hash_key": "client_ip_port"}); err != nil {
		t.Errorf("a valid config: %v", err)
	}
}

// TestHashBySNI: hash_key = "sni" keeps one server name on one backend
// whatever the client, spreads names, and falls back to the client address
// without a name.
func TestHashBySNI(t *testing.T) {
	bs := make([]*backend.Backend, 5)
	for i := range bs {
		bs[i] = backend.New("r", fmt.Sprintf("b%d", i), fmt.Sprintf("127.0.0.1:%d", 9000+i), 1, nil)
	}
	r, err := New("hash", map[string]any{"hash_key": "sni"}, bs)
	if err != nil {
		t.Fatal(err)
	}
	if NeedsOf(r) != NeedSNI {
		t.Fatalf("hash_key = sni needs %v, want NeedSNI", NeedsOf(r))
	}
	if plain, err := New("hash", nil, bs); err != nil || NeedsOf(plain) != 0 {
		t.Fatalf("hash_key = client_ip needs %v (%v), want nothing", NeedsOf(plain), err)
	}
	seen := map[*backend.Backend]bool{}
	for n := 0; n < 50; n++ {
		name := fmt.Sprintf("svc%d.example.com", n)
		var first *backend.Backend
		for c := 0; c < 20; c++ {
			req := &Request{Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, byte(c), 1}), uint16(1000+c)), SNI: name}
			b, err := r.Pick(req)
			if err != nil {
				t.Fatal(err)
			}
			if first == nil {
				first = b
			} else if b != first {
				t.Fatalf("%s went to %s and %s", name, first.ID, b.ID)
			}
		}
		seen[first] = true
	}
	if len(seen) < 4 {
		t.Fatalf("50 names used only %d of 5 backends", len(seen))
	}
	ip := netip.MustParseAddrPort("127.0.0.7:1")
	b1, _ := r.Pick(&Request{Client: ip})
	byIP, _ := New("hash", map[string]any{}, bs)
	b2, _ := byIP.Pick(&Request{Client: ip})
	if b1 != b2 {
		t.Fatal("without a server name, sni hashing differs from client_ip")
	}
}
