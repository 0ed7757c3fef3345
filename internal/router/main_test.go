package router

import (
	"fmt"
	"testing"

	"go.uber.org/goleak"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newBackends returns n backends b0…b(n-1) of the given weights (1 when
// weights is shorter).
func newBackends(n int, weights ...int) []*backend.Backend {
	bs := make([]*backend.Backend, n)
	for i := range bs {
		w := 1
		if i < len(weights) {
			w = weights[i]
		}
		bs[i] = backend.New("r", fmt.Sprintf("b%d", i), fmt.Sprintf("127.0.0.1:%d", 10000+i), w, nil)
	}
	return bs
}

// mustNew builds a router or fails the test.
func mustNew(t testing.TB, plugin string, config map[string]any, bs []*backend.Backend) Router {
	t.Helper()
	r, err := New(plugin, config, bs)
	if err != nil {
		t.Fatalf("New(%q, %v): %v", plugin, config, err)
	}
	return r
}

// pick picks once for a fresh request, failing the test on an error.
func pick(t testing.TB, r Router) *backend.Backend {
	t.Helper()
	var req Request
	b, err := r.Pick(&req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sequence returns the IDs of n picks, concatenated.
func sequence(t testing.TB, r Router, n int) string {
	t.Helper()
	s := ""
	for range n {
		s += pick(t, r).ID
	}
	return s
}

// letters names backends a, b, c… for readable sequences.
func letters(bs []*backend.Backend) []*backend.Backend {
	for i, b := range bs {
		b.ID = string(rune('a' + i))
	}
	return bs
}

// counts picks n times and counts the picks of each backend ID.
func counts(t testing.TB, r Router, n int) map[string]int {
	t.Helper()
	c := map[string]int{}
	for range n {
		c[pick(t, r).ID]++
	}
	return c
}

// allPlugins are the builtin plugins and a config for each that exercises
// its options.
var allPlugins = []struct {
	name, plugin string
	config       map[string]any
}{
	{"round_robin", "round_robin", nil},
	{"weighted", "weighted", nil},
	{"weighted_random", "weighted", map[string]any{"smooth_weighted": false}},
	{"hash", "hash", nil},
	{"hash_ip_port", "hash", map[string]any{"hash_key": "client_ip_port"}},
	{"hash_bounded", "hash", map[string]any{"bounded_load": 1.25}},
	{"least_connections", "least_connections", nil},
	{"random", "random", nil},
	{"random_p2c", "random", map[string]any{"choices": int64(2)}},
	{"host_hash", "host_hash", nil}, // the worked example, example_host_test.go
}
