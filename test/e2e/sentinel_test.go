package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
)

// TestSentinelFailover: two instances follow a Sentinel set (one master,
// one replica, three sentinels). A config push, a backend add and a drain
// through the admin API reach both before a SENTINEL FAILOVER and after
// it, without a restart; a client loop through both instances across the
// failover has no error.
func TestSentinelFailover(t *testing.T) {
	sn := redistest.StartSentinel(t)
	a, b, x, y := StartEcho(t, "a"), StartEcho(t, "b"), StartEcho(t, "x"), StartEcho(t, "y")
	ps := []*fleetProxy{
		startFleetProxy(t, sn.URL(), "watch_config = true", ""),
		startFleetProxy(t, sn.URL(), "watch_config = true", ""),
	}
	dir := t.TempDir()
	push := func(name string, backends ...*EchoServer) {
		t.Helper()
		body := fmt.Sprintf("[server]\ntcp_bind = \"127.0.0.1:1\"\n[redis]\nurl = %q\n[health_check]\nenabled = false\n[[rules]]\nname = \"web\"\n", sn.URL())
		for _, e := range backends {
			body += fmt.Sprintf("[[rules.backends]]\nid = %q\naddress = %q\n", e.Name, e.Addr)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		cli(t, "config", "push", "-c", path)
	}
	drain := func(p *fleetProxy, id string) {
		t.Helper()
		url := p.Proxy.AdminURL() + "/api/v1/rules/web/backends/" + id + "/drain"
		res, err := http.Post(url, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("POST %s: %s", url, res.Status)
		}
	}

	// Before the failover.
	push("v1.toml", a, b)
	waitBoth(t, time.Now(), ps, "config reloaded", "trigger=redis", "rules_added=[web]")
	cli(t, "backend", "add", "--redis", sn.URL(), "--rule", "web", "--id", "x", "--address", x.Addr)
	waitBoth(t, time.Now(), ps, "backends_added=[web/x]")
	drain(ps[0], "b")
	waitBoth(t, time.Now(), ps, "states_changed=", "web/b draining")

	tr := startTraffic(ps[0].Addr, ps[1].Addr)
	defer tr.end()
	tr.more(t, 50)
	old := sn.MasterAddr()
	next := sn.Failover()
	end := time.Now()
	t.Logf("SENTINEL FAILOVER: master %s -> %s", old, next)
	tr.more(t, 50)

	// After it: each change, made from the failover's end on, reaches both.
	push("v2.toml", a, b, y)
	took := waitBoth(t, end, ps, "config reloaded", "trigger=redis", "rules_changed=[web]")
	t.Logf("config push after the failover applied on both instances %v after the failover's end", took)
	cli(t, "backend", "add", "--redis", sn.URL(), "--rule", "web", "--id", "x2", "--address", x.Addr)
	took = waitBoth(t, end, ps, "backends_added=[web/x2]")
	t.Logf("backend add after the failover applied on both instances %v after the failover's end", took)
	drain(ps[1], "a")
	took = waitBoth(t, end, ps, "states_changed=", "web/a draining")
	t.Logf("drain after the failover applied on both instances %v after the failover's end", took)
	for _, p := range ps {
		p.WaitLog("redis: the sentinels switched the master", "master="+next)
	}

	tr.more(t, 50)
	tr.end()
	tr.stop = make(chan struct{}) // the deferred end finds nothing running
	t.Logf("continuous traffic across the failover: %d connections, %d failed, by backend %v", tr.ok.Load(), tr.failed.Load(), tr.snapshot())
	if n := tr.failed.Load(); n != 0 {
		t.Fatalf("%d client connections failed across the failover: %v", n, tr.errs)
	}
}
