//go:build linux

package engine

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
)

// TestWorkerThreads: worker_threads sets GOMAXPROCS before the first
// listener starts the TCP event loops, so it also sets how many there are,
// and the proxy serves through them.
func TestWorkerThreads(t *testing.T) {
	prev := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(prev) })
	want := 1
	if prev == 1 {
		want = 2
	}
	e, _ := newEngine(t)
	cfg := strings.Replace(webConfig(echo(t, "a")), "[server]\n", fmt.Sprintf("[server]\nworker_threads = %d\n", want), 1)
	if _, err := e.Apply(parse(t, cfg)); err != nil {
		t.Fatal(err)
	}
	if got := runtime.GOMAXPROCS(0); got != want {
		t.Errorf("GOMAXPROCS = %d, want worker_threads = %d", got, want)
	}
	if got := e.Server().TCPLoops(); got != want {
		t.Errorf("%d TCP event loops, want worker_threads = %d", got, want)
	}
	if got := greetings(t, proxyAddr(t, e), 4); got["a"] != 4 {
		t.Errorf("greetings %v, want 4 from a", got)
	}
}
