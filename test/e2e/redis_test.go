package e2e

// Fleet tests: several dynamic-proxy processes share one real redis-server
// (started by the test on a free port of 127.0.0.1, with its own temporary
// directory), and the CLI writes to it. With DP_TEST_REDIS=cluster the
// TestFleet* tests run against a Redis Cluster of three masters instead
// (redistest.Start; scripts/test.sh runs them both ways).

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/store/redistest"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// fleetProxy is one instance of a fleet: its process and client address.
type fleetProxy struct {
	*harness.Proxy
	Addr string // 127.0.0.1:PORT, its tcp_bind
}

// startFleetProxy runs an instance following redisURL, serving on a free
// port. redisKeys go into its [redis] section, rest after it.
func startFleetProxy(t *testing.T, redisURL, redisKeys, rest string) *fleetProxy {
	t.Helper()
	port := harness.FreePort(t)
	cfg := fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
shutdown_timeout = "2s"

[redis]
url = %q
%s

[health_check]
enabled = false
%s`, port, redisURL, redisKeys, rest)
	p := Start(t, harness.WriteConfig(t, cfg), "--log-level", "debug")
	p.WaitLog("redis: subscribed and resynced") // following pub/sub from now on
	return &fleetProxy{Proxy: p, Addr: fmt.Sprintf("127.0.0.1:%d", port)}
}

// greetCount makes n connections through addr and counts who answered;
// a failed connection is a test failure.
func greetCount(t *testing.T, addr string, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for i := 0; i < n; i++ {
		name, err := harness.Greeting(addr)
		if err != nil {
			t.Fatalf("connection %d through %s: %v", i, addr, err)
		}
		out[name]++
	}
	return out
}

// cli runs a fleet command and fails the test unless it exits 0.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := Run(t, args...)
	if code != 0 {
		t.Fatalf("dynamic-proxy %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// waitBoth waits until both proxies logged a line with every sub, and
// returns how long after since that took.
func waitBoth(t *testing.T, since time.Time, ps []*fleetProxy, subs ...string) time.Duration {
	t.Helper()
	var last time.Duration
	for _, p := range ps {
		p.WaitLog(subs...)
		last = time.Since(since)
	}
	return last
}

func webRule(a *EchoServer) string {
	return fmt.Sprintf(`
[[rules]]
name = "web"
[[rules.backends]]
id = "a"
address = %q
`, a.Addr)
}

// TestFleetRegistration: a backend registered with the CLI gets traffic on
// both instances; bad data in Redis is rejected naming its key while the
// rest applies; a heartbeat keeps a TTL registration alive, and once it is
// killed the registration expires on both.
func TestFleetRegistration(t *testing.T) {
	srv := redistest.Start(t)
	a, x, hb := StartEcho(t, "a"), StartEcho(t, "x"), StartEcho(t, "hb")
	ps := []*fleetProxy{
		startFleetProxy(t, srv.URL(), "", webRule(a)),
		startFleetProxy(t, srv.URL(), "", webRule(a)),
	}

	start := time.Now()
	out := cli(t, "backend", "add", "--redis", srv.URL(), "--rule", "web", "--id", "x", "--address", x.Addr)
	if !strings.Contains(out, "registered web/x at "+x.Addr) {
		t.Fatalf("backend add said %q", out)
	}
	took := waitBoth(t, start, ps, "fleet: dynamic state applied", "backends_added=[web/x]")
	t.Logf("registration through the CLI applied on both instances %v after the command started", took)
	for _, p := range ps {
		if got := greetCount(t, p.Addr, 4); got["a"] != 2 || got["x"] != 2 {
			t.Fatalf("%s: round robin over a and the registered x: %v", p.Addr, got)
		}
	}

	// Bad data written by something else: rejected, named, the rest applies.
	rc := srv.Client() // one server, or the cluster
	ctx := context.Background()
	if err := rc.HSet(ctx, srv.Prefix+"backends:web", "junk", `{"address": "no port", "weight": 1, "version": 99}`).Err(); err != nil {
		t.Fatal(err)
	}
	cli(t, "backend", "add", "--redis", srv.URL(), "--rule", "web", "--id", "x", "--address", x.Addr, "--weight", "2")
	for _, p := range ps {
		p.WaitLog("redis: rejected an entry; the rest still applies", "key="+srv.Prefix+"backends:web", "field=junk", `invalid address \"no port\"`)
		if got := greetCount(t, p.Addr, 2); got["a"] != 1 || got["x"] != 1 {
			t.Fatalf("%s: after the bad entry: %v", p.Addr, got)
		}
	}
	rc.HDel(ctx, srv.Prefix+"backends:web", "junk")

	list := cli(t, "backend", "list", "--redis", srv.URL())
	if !regexp.MustCompile(`web\s+x\s+` + regexp.QuoteMeta(x.Addr) + `\s+2\s+never`).MatchString(list) {
		t.Fatalf("backend list:\n%s", list)
	}

	// A heartbeat with a 1s TTL renews every ~333ms.
	beat := startBackground(t, "backend", "heartbeat", "--redis", srv.URL(), "--rule", "web", "--id", "hb",
		"--address", hb.Addr, "--ttl", "1s", "--verbose")
	waitBoth(t, time.Now(), ps, "backends_added=[web/hb]")
	// Outlive the TTL several times over: six renewals take two seconds.
	beat.waitLines("heartbeat: renewed", 6)
	for _, p := range ps {
		if strings.Contains(p.Log(), "backends_removed=[web/hb]") {
			t.Fatalf("%s dropped web/hb while its heartbeat ran", p.Addr)
		}
		if got := greetCount(t, p.Addr, 3); got["hb"] != 1 {
			t.Fatalf("%s: web/hb not served while its heartbeat runs: %v", p.Addr, got)
		}
	}
	beat.kill() // a crash: no deregistration
	killed := time.Now()
	took = waitBoth(t, killed, ps, "backends_removed=[web/hb]")
	t.Logf("registration with ttl 1s left both instances %v after its heartbeat was killed", took)
	for _, p := range ps {
		if got := greetCount(t, p.Addr, 6); got["hb"] != 0 {
			t.Fatalf("%s: traffic to the expired web/hb: %v", p.Addr, got)
		}
	}

	// A heartbeat stopped gracefully with --remove-on-exit deregisters at once.
	gone := startBackground(t, "backend", "heartbeat", "--redis", srv.URL(), "--rule", "web", "--id", "hb2",
		"--address", hb.Addr, "--ttl", "1m", "--remove-on-exit")
	waitBoth(t, time.Now(), ps, "backends_added=[web/hb2]")
	gone.cmd.Process.Signal(syscall.SIGTERM)
	gone.waitLines("heartbeat: stopped and removed the registration", 1)
	waitBoth(t, time.Now(), ps, "backends_removed=[web/hb2]")

	// backend remove takes it out everywhere.
	cli(t, "backend", "remove", "--redis", srv.URL(), "--rule", "web", "--id", "x")
	waitBoth(t, time.Now(), ps, "backends_removed=[web/x]")
	if _, errOut, code := Run(t, "backend", "remove", "--redis", srv.URL(), "--rule", "web", "--id", "x"); code != 1 || !strings.Contains(errOut, "not registered") {
		t.Fatalf("second remove: exit %d %q", code, errOut)
	}
	if _, errOut, code := Run(t, "backend", "add", "--redis", srv.URL(), "--rule", "web", "--id", "y", "--address", "127.0.0.1"); code != 1 || !strings.Contains(errOut, "want host:port") {
		t.Fatalf("add with a bad address: exit %d %q", code, errOut)
	}
}

// TestFleetSharedDrain: a drain through one instance's admin API stops new
// connections to that backend on the other; an enable through the other
// brings it back on both.
func TestFleetSharedDrain(t *testing.T) {
	srv := redistest.Start(t)
	a, b := StartEcho(t, "a"), StartEcho(t, "b")
	rule := webRule(a) + fmt.Sprintf("[[rules.backends]]\nid = \"b\"\naddress = %q\n", b.Addr)
	ps := []*fleetProxy{startFleetProxy(t, srv.URL(), "", rule), startFleetProxy(t, srv.URL(), "", rule)}

	post := func(p *fleetProxy, action string) {
		t.Helper()
		url := p.Proxy.AdminURL() + "/api/v1/rules/web/backends/b/" + action
		res, err := http.Post(url, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("POST %s: %s", url, res.Status)
		}
	}
	start := time.Now()
	post(ps[0], "drain")
	took := waitBoth(t, start, ps[1:], "fleet: dynamic state applied", "states_changed=", "web/b draining")
	t.Logf("drain through instance 1's admin API applied on instance 2 %v after the request", took)
	for _, p := range ps {
		if got := greetCount(t, p.Addr, 6); got["a"] != 6 {
			t.Fatalf("%s: new connections reached the drained b: %v", p.Addr, got)
		}
	}
	post(ps[1], "enable")
	waitBoth(t, time.Now(), ps[:1], "web/b not-draining,enabled")
	for _, p := range ps {
		if got := greetCount(t, p.Addr, 2); got["a"] != 1 || got["b"] != 1 {
			t.Fatalf("%s: after enable: %v", p.Addr, got)
		}
	}
	list := cli(t, "backend", "list", "--redis", srv.URL())
	if !regexp.MustCompile(`web\s+b\s+\(config file\)\s+-\s+-\s+not-draining,enabled`).MatchString(list) {
		t.Fatalf("backend list shows no shared state:\n%s", list)
	}
	cli(t, "backend", "reset", "--redis", srv.URL(), "--rule", "web", "--id", "b")
	waitBoth(t, time.Now(), ps, "states_changed=", "web/b reset")
}

// TestFleetConfigPush: instances with watch_config take their rules from
// Redis; a push of a new rule opens its listener on both, an invalid push
// is refused and changes nothing.
func TestFleetConfigPush(t *testing.T) {
	srv := redistest.Start(t)
	a, b := StartEcho(t, "a"), StartEcho(t, "b")
	ps := []*fleetProxy{
		startFleetProxy(t, srv.URL(), "watch_config = true", ""),
		startFleetProxy(t, srv.URL(), "watch_config = true", ""),
	}
	for _, p := range ps {
		p.WaitLog("none was pushed yet")
		if _, err := net.Dial("tcp", p.Addr); err == nil {
			t.Fatalf("%s listens before any rule was pushed", p.Addr)
		}
	}
	dir := t.TempDir()
	fleetFile := func(name, toml string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	// The pushed tcp_bind is the fleet's; each instance keeps its own.
	good := fleetFile("fleet.toml", fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:1"
[redis]
url = %q
[health_check]
enabled = false
%s`, srv.URL(), webRule(a)))
	start := time.Now()
	out := cli(t, "config", "push", "-c", good)
	if !strings.Contains(out, "as config version 1") {
		t.Fatalf("push said %q", out)
	}
	took := waitBoth(t, start, ps, "config reloaded", "trigger=redis", "rules_added=[web]", "listeners_opened=")
	t.Logf("config push of a new rule applied (listener open) on both instances %v after the command started", took)
	for _, p := range ps {
		p.WaitLog("listening", "address="+p.Addr)
		if got := greetCount(t, p.Addr, 2); got["a"] != 2 {
			t.Fatalf("%s: %v", p.Addr, got)
		}
	}

	bad := fleetFile("bad.toml", fmt.Sprintf("[redis]\nurl = %q\n[[rules]]\nname = \"web\"\nrouter = \"fastest\"\n", srv.URL()))
	_, errOut, code := Run(t, "config", "push", "-c", bad)
	if code != 1 || !strings.Contains(errOut, "nothing was pushed") || !strings.Contains(errOut, bad+":5: rules[0].router: no router \"fastest\"") {
		t.Fatalf("invalid push: exit %d\n%s", code, errOut)
	}
	show := cli(t, "config", "show", "--redis", srv.URL())
	if !strings.HasPrefix(show, "# dynamic-proxy config version 1,") || !strings.Contains(show, a.Addr) {
		t.Fatalf("config show after the refused push:\n%s", show)
	}

	// A valid change goes through validate → diff → apply on both, and
	// drops no connection: one opened before it carries on after it.
	open := make([]net.Conn, len(ps))
	for i, p := range ps {
		c, err := net.DialTimeout("tcp", p.Addr, harness.Deadline)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(harness.Deadline))
		if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || line != "a\n" {
			t.Fatalf("greeting %q %v", line, err)
		}
		open[i] = c
	}
	next := fleetFile("fleet2.toml", strings.Replace(mustRead(t, good), a.Addr, b.Addr, 1))
	cli(t, "config", "push", "-c", next)
	waitBoth(t, time.Now(), ps, "config reloaded", "trigger=redis", "rules_changed=[web]")
	for i, c := range open {
		if _, err := c.Write([]byte("still here\n")); err != nil {
			t.Fatalf("%s: connection from before the push: %v", ps[i].Addr, err)
		}
		buf := make([]byte, len("still here\n"))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still here\n" {
			t.Fatalf("%s: connection from before the push: %q %v", ps[i].Addr, buf, err)
		}
	}
	for _, p := range ps {
		if got := greetCount(t, p.Addr, 2); got["b"] != 2 {
			t.Fatalf("%s after the second push: %v", p.Addr, got)
		}
		// Two pushes stored, two applied: the refused one never reached Redis.
		if n := strings.Count(p.Log(), "redis: new config version"); n != 2 {
			t.Fatalf("%s saw %d new config versions, want 2 (the initial and the second push)", p.Addr, n)
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// traffic keeps connecting through some proxies and counts.
type traffic struct {
	ok, failed atomic.Int64
	progress   chan struct{}
	stop       chan struct{}
	wg         sync.WaitGroup
	mu         sync.Mutex
	names      map[string]int
	errs       []string
}

func startTraffic(addrs ...string) *traffic {
	tr := &traffic{progress: make(chan struct{}, 1), stop: make(chan struct{}), names: map[string]int{}}
	for _, addr := range addrs {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			for {
				select {
				case <-tr.stop:
					return
				default:
				}
				name, err := harness.Greeting(addr)
				tr.mu.Lock()
				if err != nil {
					tr.failed.Add(1)
					tr.errs = append(tr.errs, err.Error())
				} else {
					tr.ok.Add(1)
					tr.names[name]++
				}
				tr.mu.Unlock()
				select {
				case tr.progress <- struct{}{}:
				default:
				}
			}
		}()
	}
	return tr
}

// more waits until n more connections succeeded.
func (tr *traffic) more(t *testing.T, n int64) {
	t.Helper()
	target := tr.ok.Load() + n
	timeout := time.After(harness.Deadline)
	for tr.ok.Load() < target {
		select {
		case <-tr.progress:
		case <-timeout:
			t.Fatalf("traffic stalled: %d ok, %d failed", tr.ok.Load(), tr.failed.Load())
		}
	}
}

func (tr *traffic) snapshot() map[string]int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := map[string]int{}
	for k, v := range tr.names {
		out[k] = v
	}
	return out
}

func (tr *traffic) end() {
	close(tr.stop)
	tr.wg.Wait()
}

// TestFleetRedisOutage: Redis killed under continuous traffic through two
// instances: no client connection fails and the registered backend keeps
// serving; Redis restarted: a change made meanwhile arrives on both.
func TestFleetRedisOutage(t *testing.T) {
	srv := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	a, x, y := StartEcho(t, "a"), StartEcho(t, "x"), StartEcho(t, "y")
	ps := []*fleetProxy{startFleetProxy(t, srv.URL(), "", webRule(a)), startFleetProxy(t, srv.URL(), "", webRule(a))}
	cli(t, "backend", "add", "--redis", srv.URL(), "--rule", "web", "--id", "x", "--address", x.Addr)
	waitBoth(t, time.Now(), ps, "backends_added=[web/x]")

	tr := startTraffic(ps[0].Addr, ps[1].Addr)
	defer tr.end()
	tr.more(t, 50)
	srv.Kill()
	waitBoth(t, time.Now(), ps, "redis: unreachable; traffic continues on the last known state")
	before := tr.snapshot()
	tr.more(t, 200)
	during := tr.snapshot()
	if during["x"] <= before["x"] || during["a"] <= before["a"] {
		t.Fatalf("while Redis was down not both backends served: before %v, after %v", before, during)
	}

	srv.Restart()
	// Made as soon as Redis is back, before the instances (retrying with
	// backoff) necessarily are: it must still reach both.
	start := time.Now()
	cli(t, "backend", "add", "--redis", srv.URL(), "--rule", "web", "--id", "y", "--address", y.Addr)
	took := waitBoth(t, start, ps, "backends_added=[web/y]")
	t.Logf("change made right after Redis restarted applied on both instances %v later", took)
	for _, p := range ps {
		p.WaitLog("redis: reachable again; resynced")
	}
	tr.more(t, 50)
	tr.end()
	tr.stop = make(chan struct{}) // the deferred end finds nothing running
	t.Logf("continuous traffic across the outage: %d connections, %d failed", tr.ok.Load(), tr.failed.Load())
	if n := tr.failed.Load(); n != 0 {
		t.Fatalf("%d client connections failed across the Redis outage: %v", n, tr.errs)
	}
	if final := tr.snapshot(); final["y"] == 0 {
		t.Fatalf("the backend added after the restart got no traffic: %v", final)
	}
}

// TestFleetCacheRestart: an instance restarted while Redis is down serves
// the registered backends it cached.
func TestFleetCacheRestart(t *testing.T) {
	srv := redistest.Start(t)
	x := StartEcho(t, "x")
	cache := filepath.Join(t.TempDir(), "fleet-cache.json")
	// A rule with no backend of its own: only the registered one serves.
	rule := "\n[[rules]]\nname = \"svc\"\n"
	p := startFleetProxy(t, srv.URL(), fmt.Sprintf("cache_file = %q", cache), rule)
	cli(t, "backend", "add", "--redis", srv.URL(), "--rule", "svc", "--id", "x", "--address", x.Addr)
	p.WaitLog("backends_added=[svc/x]")
	if got := greetCount(t, p.Addr, 2); got["x"] != 2 {
		t.Fatalf("before: %v", got)
	}
	p.Signal(syscall.SIGTERM)
	if code := p.Wait(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	srv.Kill()

	p2 := StartNoWait(t, p.Config)
	p2.WaitLog("redis: unreachable at start-up; serving the file config and the cached dynamic state", "cache_file="+cache, "backends=1")
	p2.WaitLog("dynamic-proxy started")
	if got := greetCount(t, p.Addr, 3); got["x"] != 3 {
		t.Fatalf("after a restart with Redis down: %v", got)
	}
	// Redis back (empty: no persistence): the instance follows it.
	srv.Restart()
	p2.WaitLog("redis: its data was reset (new epoch, versions start again); following it")
	p2.WaitLog("backends_removed=[svc/x]")
}

// background is a fleet command running in the background.
type background struct {
	t      *testing.T
	cmd    *exec.Cmd
	mu     sync.Mutex
	lines  []string
	notify chan struct{}
	exited chan struct{}
}

func startBackground(t *testing.T, args ...string) *background {
	t.Helper()
	b := &background{t: t, cmd: exec.Command(binary, args...), notify: make(chan struct{}), exited: make(chan struct{})}
	out, err := b.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	b.cmd.Stdout = b.cmd.Stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			b.mu.Lock()
			b.lines = append(b.lines, sc.Text())
			close(b.notify)
			b.notify = make(chan struct{})
			b.mu.Unlock()
		}
		b.cmd.Wait()
		close(b.exited)
	}()
	t.Cleanup(b.kill)
	return b
}

// waitLines waits until n lines contain sub.
func (b *background) waitLines(sub string, n int) {
	b.t.Helper()
	timeout := time.After(harness.Deadline)
	for {
		b.mu.Lock()
		count := 0
		for _, l := range b.lines {
			if strings.Contains(l, sub) {
				count++
			}
		}
		ch, out := b.notify, strings.Join(b.lines, "\n")
		b.mu.Unlock()
		if count >= n {
			return
		}
		select {
		case <-ch:
		case <-b.exited:
			b.t.Fatalf("%v exited; output:\n%s", b.cmd.Args, out)
		case <-timeout:
			b.t.Fatalf("%v: %d lines with %q within %v, want %d; output:\n%s", b.cmd.Args, count, sub, harness.Deadline, n, out)
		}
	}
}

// kill ends it with SIGKILL (a crash) and waits.
func (b *background) kill() {
	select {
	case <-b.exited:
		return
	default:
	}
	b.cmd.Process.Kill()
	<-b.exited
}

// TestFleetStartupErrors: settings that cannot work stop the start-up with
// a message naming them.
func TestFleetStartupErrors(t *testing.T) {
	a := StartEcho(t, "a")
	noRedis := harness.WriteConfig(t, "[server]\ntcp_bind = \"127.0.0.1:0\"\n"+webRule(a))
	_, errOut, code := Run(t, "-c", noRedis, "--config-from-redis")
	if code != 1 || !strings.Contains(errOut, "--config-from-redis needs a [redis] section in "+noRedis) {
		t.Fatalf("--config-from-redis without [redis]: exit %d %s", code, errOut)
	}
	missing := filepath.Join(t.TempDir(), "no-such-dir", "cache.json")
	badCache := harness.WriteConfig(t, fmt.Sprintf("[server]\ntcp_bind = \"127.0.0.1:0\"\n[redis]\nurl = \"redis://127.0.0.1:1\"\ncache_file = %q\n%s", missing, webRule(a)))
	_, errOut, code = Run(t, "-c", badCache)
	if code != 1 || !strings.Contains(errOut, "redis.cache_file") || !strings.Contains(errOut, "no such file or directory") {
		t.Fatalf("cache_file in a missing directory: exit %d %s", code, errOut)
	}
	badURL := harness.WriteConfig(t, "[server]\ntcp_bind = \"127.0.0.1:0\"\n[redis]\nurl = \"redis://127.0.0.1:1?dial_timeout=soon\"\n"+webRule(a))
	_, errOut, code = Run(t, "-c", badURL)
	if code != 1 || !strings.Contains(errOut, "redis.url") {
		t.Fatalf("bad redis URL: exit %d %s", code, errOut)
	}
	noTag := harness.WriteConfig(t, "[server]\ntcp_bind = \"127.0.0.1:0\"\n[redis]\nurl = \"redis+cluster://127.0.0.1:1,127.0.0.1:2\"\nkey_prefix = \"fleet:\"\n"+webRule(a))
	_, errOut, code = Run(t, "--validate", "-c", noTag)
	if code != 1 || !strings.Contains(errOut, fmt.Sprintf("%s:%d: redis.key_prefix: a cluster needs a {…} hash tag", noTag, lineOf(t, noTag, "key_prefix"))) {
		t.Fatalf("cluster prefix without a hash tag: exit %d %s", code, errOut)
	}
	noMaster := harness.WriteConfig(t, "[server]\ntcp_bind = \"127.0.0.1:0\"\n[redis]\nurl = \"redis+sentinel://127.0.0.1:1\"\n"+webRule(a))
	_, errOut, code = Run(t, "--validate", "-c", noMaster)
	if code != 1 || !strings.Contains(errOut, fmt.Sprintf("%s:%d: redis.url: missing master name", noMaster, lineOf(t, noMaster, "url ="))) {
		t.Fatalf("sentinel URL without a master name: exit %d %s", code, errOut)
	}
	_, errOut, code = Run(t, "backend", "list", "-c", noRedis)
	if code != 1 || !strings.Contains(errOut, "has no [redis] section: add one or give --redis URL") {
		t.Fatalf("fleet command without Redis settings: exit %d %s", code, errOut)
	}
	_, errOut, code = Run(t, "backend", "frobnicate")
	if code != 2 || !strings.Contains(errOut, `unknown command "backend frobnicate"`) {
		t.Fatalf("unknown subcommand: exit %d %s", code, errOut)
	}
}

// TestFleetTLS: rediss:// speaks TLS and verifies Redis's certificate.
func TestFleetTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "redis.crt"), filepath.Join(dir, "redis.key")
	writeSelfSigned(t, certFile, keyFile)
	srv := redistest.StartTLS(t, certFile, keyFile)
	// Trust the test certificate in the processes started from here on.
	t.Setenv("SSL_CERT_FILE", certFile)
	x := StartEcho(t, "x")
	p := startFleetProxy(t, srv.URL(), "", "\n[[rules]]\nname = \"svc\"\n")
	cli(t, "backend", "add", "--redis", srv.URL(), "--rule", "svc", "--id", "x", "--address", x.Addr)
	p.WaitLog("backends_added=[svc/x]")
	if got := greetCount(t, p.Addr, 2); got["x"] != 2 {
		t.Fatalf("through TLS: %v", got)
	}
	// Without trusting it, the certificate is refused; plain redis:// to
	// the TLS port gets nowhere either.
	for _, c := range []struct{ url, env, want string }{
		{srv.URL(), "SSL_CERT_FILE=" + filepath.Join(dir, "none.pem"), "certificate signed by unknown authority"},
		{"redis://" + srv.Addr, "SSL_CERT_FILE=" + certFile, "redis " + srv.Addr},
	} {
		cmd := exec.Command(binary, "backend", "list", "--redis", c.url)
		cmd.Env = append(os.Environ(), c.env)
		out, err := cmd.CombinedOutput()
		t.Logf("%s: %s", c.url, strings.TrimSpace(string(out)))
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("backend list --redis %s (%s): %v\n%s", c.url, c.env, err, out)
		}
	}
}

// writeSelfSigned writes a self-signed certificate for 127.0.0.1 and its key.
func writeSelfSigned(t *testing.T, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "dynamic-proxy test redis"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, // a TLS cluster's nodes present it to each other
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// lineOf is the number of the first line of file that contains s (the
// config writer may add lines, e.g. E2E_ENGINE's engine key).
func lineOf(t *testing.T, file, s string) int {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, s) {
			return i + 1
		}
	}
	t.Fatalf("%s has no line with %q", file, s)
	return 0
}
