package engine

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
)

const deadline = 20 * time.Second

// echo is a TCP backend that greets with its name.
func echo(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				io.WriteString(c, name+"\n")
				c.SetReadDeadline(time.Now().Add(deadline))
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// syncBuf is a log sink safe for concurrent writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newEngine(t *testing.T) (*Engine, *syncBuf) {
	t.Helper()
	var buf syncBuf
	e := New(slog.New(slog.NewTextHandler(&buf, nil)))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		e.Shutdown(ctx)
	})
	return e, &buf
}

func parse(t *testing.T, toml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("test.toml", []byte(toml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// proxyAddr is the bound address of the engine's only TCP listener.
func proxyAddr(t *testing.T, e *Engine) string {
	t.Helper()
	for k, l := range e.Listeners() {
		if strings.HasPrefix(k, "tcp ") {
			return l.Addr().String()
		}
	}
	t.Fatal("no TCP listener")
	return ""
}

// greetings makes n connections through addr and counts the greetings;
// a connection the proxy closes at once counts as "".
func greetings(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, deadline)
		if err != nil {
			out[""]++ // refused or reset at once
			continue
		}
		c.SetDeadline(time.Now().Add(deadline))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		out[strings.TrimSpace(line)]++
	}
	return out
}

func webConfig(a string) string {
	return fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:0"
[health_check]
enabled = false
[[rules]]
name = "web"
[[rules.backends]]
id = "a"
address = %q
`, a)
}

func TestDynamicBackendsJoinTheirRule(t *testing.T) {
	a, x := echo(t, "a"), echo(t, "x")
	e, logs := newEngine(t)
	if _, err := e.Apply(parse(t, webConfig(a))); err != nil {
		t.Fatal(err)
	}
	addr := proxyAddr(t, e)
	if got := greetings(t, addr, 4); got["a"] != 4 {
		t.Fatalf("file backend only: %v", got)
	}
	_, v0 := e.Config()
	err := e.SetDynamic(&Dynamic{Version: 3, Source: "redis", Backends: []DynamicBackend{
		{Rule: "web", ID: "x", Address: x, Weight: 1},
		{Rule: "web", ID: "a", Address: x, Weight: 1},  // clashes with the file's a
		{Rule: "nope", ID: "y", Address: x, Weight: 1}, // no such rule
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got := greetings(t, addr, 4); got["a"] != 2 || got["x"] != 2 {
		t.Fatalf("round robin over file + registered backends: %v", got)
	}
	if _, v := e.Config(); v != v0 {
		t.Errorf("a dynamic change moved the config version from %d to %d", v0, v)
	}
	rules := e.Rules()
	if len(rules) != 1 || len(rules[0].Backends) != 2 || rules[0].Backends[1].ID != "x" {
		t.Fatalf("status rules: %+v", rules)
	}
	log := logs.String()
	for _, want := range []string{
		`fleet: dynamic state applied" source=redis version=3 backends=3 states=0 backends_added=[web/x]`,
		`rule \"web\" defines backend \"a\" in its config file, which wins; ignored`,
		`the config has no rule \"nope\"; ignored`,
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	// The same problems are not logged again on the next change.
	if err := e.SetDynamic(&Dynamic{Version: 4, Backends: []DynamicBackend{
		{Rule: "web", ID: "a", Address: x, Weight: 1}, {Rule: "nope", ID: "y", Address: x, Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "which wins"); n != 1 {
		t.Errorf("clash logged %d times, want once", n)
	}
	if got := greetings(t, addr, 3); got["a"] != 3 {
		t.Fatalf("registration removed: %v", got)
	}
	// A reload keeps the dynamic state.
	if err := e.SetDynamic(&Dynamic{Version: 5, Backends: []DynamicBackend{{Rule: "web", ID: "x", Address: x, Weight: 3}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Apply(parse(t, webConfig(a))); err != nil {
		t.Fatal(err)
	}
	if got := greetings(t, addr, 4); got["a"] != 2 || got["x"] != 2 {
		t.Fatalf("after a reload: %v", got)
	}
	if b, err := e.Backend("web", "x"); err != nil || b.ConfiguredWeight() != 3 {
		t.Fatalf("registered backend through Backend(): %v %v", b, err)
	}
}

func bptr(b bool) *bool { return &b }

func TestSharedStateOverlay(t *testing.T) {
	a, b := echo(t, "a"), echo(t, "b")
	e, _ := newEngine(t)
	cfg := parse(t, webConfig(a)+fmt.Sprintf(`
[[rules.backends]]
id = "b"
address = %q
weight = 2
`, b))
	// State known before the first Apply is in force from the start.
	if err := e.SetDynamic(&Dynamic{States: []BackendState{{Rule: "web", ID: "a", Draining: bptr(true), Version: 1}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	addr := proxyAddr(t, e)
	ba, _ := e.Backend("web", "a")
	bb, _ := e.Backend("web", "b")
	if !ba.Draining() {
		t.Fatal("state from before the first Apply not applied")
	}
	if got := greetings(t, addr, 3); got["b"] != 3 {
		t.Fatalf("a draining: %v", got)
	}
	// A local change lasts while the shared state's version stays.
	ba.SetDraining(false)
	if err := e.SetDynamic(&Dynamic{States: []BackendState{{Rule: "web", ID: "a", Draining: bptr(true), Version: 1}}}); err != nil {
		t.Fatal(err)
	}
	if ba.Draining() {
		t.Fatal("an unchanged shared state was applied again")
	}
	// A new version applies, on top of the config values.
	if err := e.SetDynamic(&Dynamic{States: []BackendState{
		{Rule: "web", ID: "a", Draining: bptr(true), Version: 2},
		{Rule: "web", ID: "b", Enabled: bptr(false), Weight: 7, Version: 3},
	}}); err != nil {
		t.Fatal(err)
	}
	if !ba.Draining() || bb.Enabled() || bb.ConfiguredWeight() != 7 {
		t.Fatalf("a draining %v, b enabled %v weight %d", ba.Draining(), bb.Enabled(), bb.ConfiguredWeight())
	}
	// A reload that does not change the entries keeps the state; one that
	// does applies the state on top of the new entry.
	if _, err := e.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if !ba.Draining() || bb.Enabled() {
		t.Fatal("a reload lost the shared state")
	}
	// The state going away returns the backends to their config values.
	if err := e.SetDynamic(&Dynamic{}); err != nil {
		t.Fatal(err)
	}
	if ba.Draining() || !bb.Enabled() || bb.ConfiguredWeight() != 2 {
		t.Fatalf("after reset: a draining %v, b enabled %v weight %d", ba.Draining(), bb.Enabled(), bb.ConfiguredWeight())
	}
	if got := greetings(t, addr, 2); got["a"] != 1 || got["b"] != 1 {
		t.Fatalf("both take connections again: %v", got)
	}
}

// TestRuleWithOnlyRegisteredBackends: with [redis] a rule may have no
// backend in its file; connections are closed until one is registered.
func TestRuleWithOnlyRegisteredBackends(t *testing.T) {
	x := echo(t, "x")
	e, _ := newEngine(t)
	cfg := parse(t, `
[server]
tcp_bind = "127.0.0.1:0"
[redis]
url = "redis://127.0.0.1:1"
[[rules]]
name = "svc"
`)
	if _, err := e.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	addr := proxyAddr(t, e)
	if got := greetings(t, addr, 1); got[""] != 1 {
		t.Fatalf("no backend yet: %v", got)
	}
	if err := e.SetDynamic(&Dynamic{Backends: []DynamicBackend{{Rule: "svc", ID: "x", Address: x, Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	if got := greetings(t, addr, 2); got["x"] != 2 {
		t.Fatalf("registered: %v", got)
	}
	if _, err := config.Parse("x.toml", []byte("[[rules]]\nname = \"svc\"\n")); err == nil {
		t.Fatal("without [redis] a rule with no backend must be refused")
	}
}
