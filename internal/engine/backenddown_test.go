package engine

import (
	"bufio"
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// TestSpreadCalls: every call is made, in order, none before its slot of
// the window (the i-th of n no earlier than i/n of it), and a stop ends
// the rest.
func TestSpreadCalls(t *testing.T) {
	const n, window = 50, 200 * time.Millisecond
	items := make([]int, n)
	for i := range items {
		items[i] = i
	}
	t0 := time.Now()
	var got []int
	var at []time.Duration
	spreadCalls(items, window, make(chan struct{}), func(i int) {
		got = append(got, i)
		at = append(at, time.Since(t0))
	})
	if len(got) != n {
		t.Fatalf("%d calls, want %d", len(got), n)
	}
	for i := range got {
		if got[i] != i {
			t.Fatalf("call %d was item %d", i, got[i])
		}
		if min := window * time.Duration(i) / n; at[i] < min {
			t.Errorf("call %d at %v, before its slot (%v)", i, at[i], min)
		}
	}

	stop := make(chan struct{})
	close(stop)
	calls := 0
	spreadCalls(items, time.Hour, stop, func(int) { calls++ })
	if calls > 1 {
		t.Errorf("stopped: %d calls, want at most the first", calls)
	}
}

// TestOnBackendDownRegistrationGone: with on_backend_down = "close", a
// registered backend that leaves the fleet's state (its registration
// expired or was removed) has its connections closed; the file backend's
// stay open.
func TestOnBackendDownRegistrationGone(t *testing.T) {
	a, x := echo(t, "a"), echo(t, "x")
	e, logs := newEngine(t)
	cfg := strings.Replace(webConfig(a), `name = "web"`, "name = \"web\"\non_backend_down = \"close\"\non_backend_down_window = \"200ms\"", 1)
	if _, err := e.Apply(parse(t, cfg)); err != nil {
		t.Fatal(err)
	}
	if err := e.SetDynamic(&Dynamic{Version: 1, Backends: []DynamicBackend{{Rule: "web", ID: "x", Address: x, Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	addr := proxyAddr(t, e)
	byName := map[string][]*bufio.Reader{}
	for range 6 {
		c, err := net.DialTimeout("tcp", addr, deadline)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(deadline))
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		byName[strings.TrimSpace(line)] = append(byName[strings.TrimSpace(line)], r)
	}
	if len(byName["a"]) != 3 || len(byName["x"]) != 3 {
		t.Fatalf("connections: a %d, x %d", len(byName["a"]), len(byName["x"]))
	}
	if err := e.SetDynamic(&Dynamic{Version: 2}); err != nil { // x's registration is gone
		t.Fatal(err)
	}
	for _, r := range byName["x"] {
		if _, err := r.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a connection to the removed backend: %v, want its end", err)
		}
	}
	if n := e.Server().Conns(proxy.ConnFilter{Backend: "a"}, 0, 10).Total; n != 3 {
		t.Errorf("%d connections left on a, want 3", n)
	}
	if log := logs.String(); !strings.Contains(log, `on_backend_down: closing the backend's connections" rule=web backend=x why=removed connections=3 window=200ms`) {
		t.Errorf("log:\n%s", log)
	}
}
