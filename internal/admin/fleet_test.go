package admin

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/engine"
)

// fakeFleet records what the admin API asks of the fleet store. The real
// store (Redis) is tested in internal/store and end to end in test/e2e.
type fakeFleet struct {
	mu     sync.Mutex
	states []engine.BackendState
	regs   map[string]engine.DynamicBackend
	ttls   map[string]time.Duration
	err    error // returned by every call when set
}

func (f *fakeFleet) ShareState(_ context.Context, s engine.BackendState) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.states = append(f.states, s)
	return nil
}

func (f *fakeFleet) Register(_ context.Context, b engine.DynamicBackend, ttl time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.regs[b.Rule+"/"+b.ID], f.ttls[b.Rule+"/"+b.ID] = b, ttl
	return nil
}

func (f *fakeFleet) Deregister(_ context.Context, rule, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	if _, ok := f.regs[rule+"/"+id]; !ok {
		return fmt.Errorf("rule %q has no registered backend %q: %w", rule, id, engine.ErrUnknownBackend)
	}
	delete(f.regs, rule+"/"+id)
	return nil
}

func (f *fakeFleet) Registrations(context.Context) ([]engine.DynamicBackend, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	var out []engine.DynamicBackend
	for _, b := range f.regs {
		out = append(out, b)
	}
	return out, nil
}

func (f *fakeFleet) fail(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

func withFleet(t *testing.T) (*fixture, *fakeFleet) {
	ff := &fakeFleet{regs: map[string]engine.DynamicBackend{}, ttls: map[string]time.Duration{}}
	f := newFleetFixture(t, "", false, ff)
	return f, ff
}

func TestFleetEndpointsWithoutRedis(t *testing.T) {
	f := newFixture(t, "", false)
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/api/v1/registrations", ""},
		{"PUT", "/api/v1/rules/web/backends/x", `{"address":"127.0.0.1:9"}`},
		{"DELETE", "/api/v1/rules/web/backends/x", ""},
	} {
		code, m, _ := f.do(c.method, c.path, c.body)
		if code != 404 || !strings.Contains(fmt.Sprint(m["error"]), "no [redis] section") {
			t.Errorf("%s %s: %d %v", c.method, c.path, code, m)
		}
	}
	// A drain is local, as always.
	if code, m, _ := f.do("POST", "/api/v1/rules/web/backends/a/drain", ""); code != 200 || m["draining"] != true {
		t.Fatalf("drain without Redis: %d %v", code, m)
	}
}

func TestBackendActionsAreShared(t *testing.T) {
	f, ff := withFleet(t)
	for _, c := range []struct{ method, action, body string }{
		{"POST", "drain", ""}, {"POST", "enable", ""}, {"POST", "disable", ""}, {"PUT", "weight", `{"weight": 9}`},
	} {
		if code, m, _ := f.do(c.method, "/api/v1/rules/web/backends/b/"+c.action, c.body); code != 200 {
			t.Fatalf("%s: %d %v", c.action, code, m)
		}
	}
	var got []string
	for _, s := range ff.states {
		got = append(got, s.Rule+"/"+s.ID+" "+s.Describe())
	}
	want := "web/b draining|web/b not-draining,enabled|web/b disabled|web/b weight=9"
	if strings.Join(got, "|") != want {
		t.Fatalf("shared %q, want %q", strings.Join(got, "|"), want)
	}

	// Redis down: the change applies here, and the answer says it was not shared.
	ff.fail(errors.New("redis 127.0.0.1:1: connection refused"))
	code, m, _ := f.do("POST", "/api/v1/rules/web/backends/a/drain", "")
	if code != 503 || !strings.Contains(fmt.Sprint(m["error"]), "applied on this instance only; not shared with the fleet: redis 127.0.0.1:1: connection refused") {
		t.Fatalf("drain with Redis down: %d %v", code, m)
	}
	if b, _ := f.eng.Backend("web", "a"); !b.Draining() {
		t.Fatal("the change was not applied locally")
	}
}

func TestRegistrationEndpoints(t *testing.T) {
	f, ff := withFleet(t)
	code, m, _ := f.do("PUT", "/api/v1/rules/web/backends/x", `{"address": "127.0.0.1:9100", "weight": 4, "ttl": "15s"}`)
	if code != 200 || m["ttl"] != "15s" || m["weight"] != float64(4) {
		t.Fatalf("register: %d %v", code, m)
	}
	if b := ff.regs["web/x"]; b.Address != "127.0.0.1:9100" || b.Weight != 4 || ff.ttls["web/x"] != 15*time.Second {
		t.Fatalf("stored %+v ttl %v", b, ff.ttls["web/x"])
	}
	if code, m, _ := f.do("PUT", "/api/v1/rules/web/backends/y", `{"address": "127.0.0.1:9101"}`); code != 200 || m["weight"] != float64(1) {
		t.Fatalf("register with defaults: %d %v", code, m)
	}
	for _, c := range []struct {
		path, body string
		code       int
		want       string
	}{
		{"/api/v1/rules/web/backends/z", `{"address": "127.0.0.1"}`, 400, "want host:port"},
		{"/api/v1/rules/web/backends/z", `{"address": "127.0.0.1:1", "weight": 0}`, 400, "weight must be from 1"},
		{"/api/v1/rules/web/backends/z", `{"address": "127.0.0.1:1", "ttl": "soon"}`, 400, `ttl "soon"`},
		{"/api/v1/rules/web/backends/z", `{"address": "127.0.0.1:1", "ttl": "10ms"}`, 400, "at least 1s"},
		{"/api/v1/rules/web/backends/z", `{"address": "127.0.0.1:1", "port": 3}`, 400, `unknown field "port"`},
		{"/api/v1/rules/web/backends/z", ``, 400, "empty body"},
		{"/api/v1/rules/web/backends/" + strings.Repeat("x", 129), `{"address": "127.0.0.1:1"}`, 400, "backend id is 129 bytes long; at most 128"},
		{"/api/v1/rules/web/backends/a%22b", `{"address": "127.0.0.1:1"}`, 400, `has '"' at byte 1`},
		{"/api/v1/rules/nope/backends/z", `{"address": "127.0.0.1:1"}`, 409, `no rule "nope"`},
		{"/api/v1/rules/web/backends/a", `{"address": "127.0.0.1:1"}`, 409, `defines backend "a" in its config file`},
	} {
		code, m, _ := f.do("PUT", c.path, c.body)
		if code != c.code || !strings.Contains(fmt.Sprint(m["error"]), c.want) {
			t.Errorf("PUT %s %s: %d %v, want %d %q", c.path, c.body, code, m, c.code, c.want)
		}
	}
	if len(ff.regs) != 2 {
		t.Fatalf("a refused registration was stored: %v", ff.regs)
	}
	code, m, _ = f.do("GET", "/api/v1/registrations", "")
	if regs, _ := m["registrations"].([]any); code != 200 || len(regs) != 2 {
		t.Fatalf("list: %d %v", code, m)
	}
	if code, m, _ := f.do("DELETE", "/api/v1/rules/web/backends/x", ""); code != 200 || m["status"] != "removed" {
		t.Fatalf("delete: %d %v", code, m)
	}
	if code, m, _ := f.do("DELETE", "/api/v1/rules/web/backends/x", ""); code != 404 {
		t.Fatalf("delete again: %d %v", code, m)
	}
	if code, _, hdr := f.do("POST", "/api/v1/rules/web/backends/x", ""); code != 405 || !strings.Contains(hdr.Get("Allow"), "PUT") {
		t.Fatalf("POST on a registration: %d allow %q", code, hdr.Get("Allow"))
	}
	ff.fail(errors.New("redis down"))
	if code, m, _ := f.do("PUT", "/api/v1/rules/web/backends/q", `{"address": "127.0.0.1:1"}`); code != 503 {
		t.Fatalf("register with Redis down: %d %v", code, m)
	}
}
