package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// Helpers of the metrics and admin tests are prefixed mx.

func mxExpect(t *testing.T, f harness.Metrics, checks []mxCheck) {
	t.Helper()
	for _, c := range checks {
		if got := f.Value(c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

type mxCheck struct {
	name   string
	labels map[string]string
	want   float64
}

// mxExchange sends n random bytes over a proxied connection to an echo
// backend, half-closes, and reads everything back: the greeting, then the
// n bytes. It returns how many bytes it read.
func mxExchange(t *testing.T, addr, greeting string, n int) int {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(harness.Deadline))
	payload := make([]byte, n)
	rand.Read(payload)
	go func() {
		c.Write(payload)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte(greeting+"\n"), payload...)
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want the greeting and the %d bytes echoed (%d)", len(got), n, len(want))
	}
	return len(got)
}

// TestMetricsExactTCP sends 10 connections with known byte counts through
// the binary and reads exactly those numbers from /metrics.
func TestMetricsExactTCP(t *testing.T) {
	e := StartEcho(t, "exact")
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[[rules]]
name = "web"
router = "rr"
[routers.rr]
plugin = "round_robin"
[[rules.backends]]
id = "e1"
address = %q
`, port, e.Addr)))
	url := p.MetricsURL()
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var in, out float64
	for i := 0; i < 10; i++ {
		n := 1000*i + 37*i + 1 // 1 … 9334 bytes, all different
		got := mxExchange(t, addr, "exact", n)
		in += float64(n)
		out += float64(got)
	}
	web := map[string]string{"rule": "web", "protocol": "tcp"}
	f := harness.WaitMetrics(t, url, "10 requests and no connection open", func(f harness.Metrics) bool {
		return f.Value("dynamic_proxy_requests_total", web) == 10 && f.Value("dynamic_proxy_connections_active", web) == 0
	})
	be := map[string]string{"rule": "web", "backend": "e1"}
	mxExpect(t, f, []mxCheck{
		{"dynamic_proxy_connections_total", web, 10},
		{"dynamic_proxy_requests_total", web, 10},
		{"dynamic_proxy_bytes_total", map[string]string{"rule": "web", "protocol": "tcp", "direction": "in"}, in},
		{"dynamic_proxy_bytes_total", map[string]string{"rule": "web", "protocol": "tcp", "direction": "out"}, out},
		{"dynamic_proxy_request_size_bytes_sum", web, in},
		{"dynamic_proxy_request_size_bytes_count", web, 10},
		{"dynamic_proxy_response_size_bytes_sum", web, out},
		{"dynamic_proxy_response_size_bytes_count", web, 10},
		{"dynamic_proxy_request_duration_seconds_count", web, 10},
		{"dynamic_proxy_connection_duration_seconds_count", web, 10},
		{"dynamic_proxy_connections_rejected_total", web, 0},
		{"dynamic_proxy_backend_requests_total", map[string]string{"rule": "web", "backend": "e1", "result": "success"}, 10},
		{"dynamic_proxy_backend_requests_total", map[string]string{"rule": "web", "backend": "e1", "result": "error"}, 0},
		{"dynamic_proxy_backend_response_seconds_count", be, 10},
		{"dynamic_proxy_backend_connections_active", be, 0},
		{"dynamic_proxy_backend_up", be, 1},
		{"dynamic_proxy_router_selections_total", map[string]string{"rule": "web", "router": "rr", "plugin": "round_robin", "backend": "e1"}, 10},
	})
	t.Logf("10 connections: %v bytes in, %v bytes out, counted exactly", in, out)
}

// mxUDPEcho is a UDP backend that sends every datagram back.
func mxUDPEcho(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
	return pc.LocalAddr().String()
}

// TestMetricsExactUDP: every client datagram is a request, every reply a
// response; 10 datagrams of known sizes show exactly those numbers.
func TestMetricsExactUDP(t *testing.T) {
	backendAddr := mxUDPEcho(t)
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
udp_bind = "127.0.0.1:%d"
[health_check]
enabled = false
[[rules]]
name = "dns"
protocol = "udp"
[[rules.backends]]
id = "u1"
address = %q
`, port, backendAddr)))
	url := p.MetricsURL()
	c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var total float64
	buf := make([]byte, 65536)
	for i := 0; i < 10; i++ {
		n := 100*i + 11
		payload := make([]byte, n)
		rand.Read(payload)
		// A datagram can be lost even on loopback: resend until its echo
		// comes back, and count what was sent.
		sent := 0
		for {
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
			sent++
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			m, err := c.Read(buf)
			if err == nil {
				if !bytes.Equal(buf[:m], payload) {
					t.Fatalf("datagram %d: echo differs", i)
				}
				break
			}
			if sent > 5 {
				t.Fatalf("datagram %d: no echo after %d tries: %v", i, sent, err)
			}
		}
		if sent != 1 {
			t.Fatalf("datagram %d needed %d sends on loopback; the exact count cannot be checked", i, sent)
		}
		total += float64(n)
	}
	dns := map[string]string{"rule": "dns", "protocol": "udp"}
	f := harness.WaitMetrics(t, url, "10 UDP requests and responses", func(f harness.Metrics) bool {
		return f.Value("dynamic_proxy_requests_total", dns) == 10 && f.Value("dynamic_proxy_response_size_bytes_count", dns) == 10
	})
	mxExpect(t, f, []mxCheck{
		{"dynamic_proxy_requests_total", dns, 10},
		{"dynamic_proxy_request_size_bytes_sum", dns, total},
		{"dynamic_proxy_response_size_bytes_sum", dns, total},
		{"dynamic_proxy_bytes_total", map[string]string{"rule": "dns", "protocol": "udp", "direction": "in"}, total},
		{"dynamic_proxy_bytes_total", map[string]string{"rule": "dns", "protocol": "udp", "direction": "out"}, total},
		{"dynamic_proxy_connections_total", dns, 1}, // one session
		{"dynamic_proxy_connections_active", dns, 1},
		{"dynamic_proxy_request_duration_seconds_count", dns, 10},
		{"dynamic_proxy_backend_requests_total", map[string]string{"rule": "dns", "backend": "u1", "result": "success"}, 10},
		{"dynamic_proxy_backend_response_seconds_count", map[string]string{"rule": "dns", "backend": "u1"}, 10},
		{"dynamic_proxy_backend_connections_active", map[string]string{"rule": "dns", "backend": "u1"}, 1},
		{"dynamic_proxy_router_selections_total", map[string]string{"rule": "dns", "backend": "u1"}, 1},
	})
}

// mxFamilyTypes is every dynamic_proxy family docs/metrics.md lists, with its type.
var mxFamilyTypes = map[string]dto.MetricType{
	"connections_active":                           dto.MetricType_GAUGE,
	"connections_total":                            dto.MetricType_COUNTER,
	"connection_duration_seconds":                  dto.MetricType_HISTOGRAM,
	"connections_rejected_total":                   dto.MetricType_COUNTER,
	"connections_ended_total":                      dto.MetricType_COUNTER,
	"requests_total":                               dto.MetricType_COUNTER,
	"request_duration_seconds":                     dto.MetricType_HISTOGRAM,
	"request_size_bytes":                           dto.MetricType_HISTOGRAM,
	"response_size_bytes":                          dto.MetricType_HISTOGRAM,
	"bytes_total":                                  dto.MetricType_COUNTER,
	"backend_connections_active":                   dto.MetricType_GAUGE,
	"backend_requests_total":                       dto.MetricType_COUNTER,
	"backend_response_seconds":                     dto.MetricType_HISTOGRAM,
	"backend_up":                                   dto.MetricType_GAUGE,
	"health_checks_total":                          dto.MetricType_COUNTER,
	"router_selections_total":                      dto.MetricType_COUNTER,
	"router_errors_total":                          dto.MetricType_COUNTER,
	"config_reloads_total":                         dto.MetricType_COUNTER,
	"config_last_reload_success_timestamp_seconds": dto.MetricType_GAUGE,
	"build_info":                                   dto.MetricType_GAUGE,
	"max_connections":                              dto.MetricType_GAUGE,
	"data_path_descriptors":                        dto.MetricType_GAUGE,
	"data_path_descriptor_budget":                  dto.MetricType_GAUGE,
	"descriptor_reserve":                           dto.MetricType_GAUGE,
	"descriptor_budget_refusals_total":             dto.MetricType_COUNTER,
	"udp_quic_peeks_total":                         dto.MetricType_COUNTER,
	"udp_quic_migrations_total":                    dto.MetricType_COUNTER,
	"udp_quic_connection_ids":                      dto.MetricType_GAUGE,
	"log_records_dropped_total":                    dto.MetricType_COUNTER,
	"listener_rejected_total":                      dto.MetricType_COUNTER,
}

// TestMetricsEveryFamily checks that every family is exported with its
// type, the Go and process collectors too, and that no label value is a
// client's address.
func TestMetricsEveryFamily(t *testing.T) {
	e := StartEcho(t, "fam")
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close() // connections to it are refused
	port, port2 := harness.FreePort(t), harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
enabled = false
passive_failures = 0
[[rules]]
name = "web"
[[rules.backends]]
id = "e1"
address = %q
[[rules]]
name = "broken"
[rules.matcher]
type = "port"
port = %d
[[rules.backends]]
id = "gone"
address = %q
`, port, e.Addr, port2, deadAddr)))
	url := p.MetricsURL()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), harness.Deadline)
	if err != nil {
		t.Fatal(err)
	}
	client := c.LocalAddr().String()
	mxExchange(t, fmt.Sprintf("127.0.0.1:%d", port), "fam", 10)
	if _, err := harness.Greeting(fmt.Sprintf("127.0.0.1:%d", port2)); err == nil {
		t.Fatal("a connection to a rule whose backend is gone got a greeting")
	}
	f := harness.WaitMetrics(t, url, "the rejected connection", func(f harness.Metrics) bool {
		return f.Value("dynamic_proxy_connections_rejected_total", map[string]string{"rule": "broken", "reason": "connect_failed"}) == 1
	})
	c.Close()
	for name, typ := range mxFamilyTypes {
		mf, ok := f["dynamic_proxy_"+name]
		if !ok {
			t.Errorf("family dynamic_proxy_%s missing", name)
			continue
		}
		if mf.GetType() != typ || mf.GetHelp() == "" || len(mf.Metric) == 0 {
			t.Errorf("dynamic_proxy_%s: type %v help %q series %d", name, mf.GetType(), mf.GetHelp(), len(mf.Metric))
		}
	}
	for name := range f {
		if short, ok := strings.CutPrefix(name, "dynamic_proxy_"); ok {
			if _, listed := mxFamilyTypes[short]; !listed {
				t.Errorf("family %s is exported but not listed (docs/metrics.md)", name)
			}
		}
	}
	for _, n := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "go_gc_duration_seconds",
		"process_cpu_seconds_total", "process_open_fds", "process_max_fds", "process_resident_memory_bytes"} {
		if _, ok := f[n]; !ok {
			t.Errorf("system metric %s missing", n)
		}
	}
	mxExpect(t, f, []mxCheck{
		{"dynamic_proxy_backend_requests_total", map[string]string{"rule": "broken", "backend": "gone", "result": "error"}, 1},
		{"dynamic_proxy_router_selections_total", map[string]string{"rule": "broken", "backend": "gone"}, 1},
		{"dynamic_proxy_build_info", nil, 1},
		{"dynamic_proxy_config_reloads_total", nil, 0},
	})
	if ts := f.Value("dynamic_proxy_config_last_reload_success_timestamp_seconds", nil); time.Since(time.Unix(int64(ts), 0)) > time.Minute {
		t.Errorf("config_last_reload_success_timestamp_seconds = %v, want the start-up time", ts)
	}
	// Label values come from the config and fixed sets only.
	values := map[string]bool{}
	for _, mf := range f {
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				values[lp.GetValue()] = true
			}
		}
	}
	host, cport, _ := net.SplitHostPort(client)
	for v := range values {
		if strings.Contains(v, cport) || v == client || v == host {
			t.Errorf("a label value names the client: %q", v)
		}
	}
}

// TestMetricsListenerRejections: a connection refused by the server's
// max_connections belongs to no rule: on a listener with two rules it is
// counted on listener_rejected_total of the listener, and on neither rule.
func TestMetricsListenerRejections(t *testing.T) {
	e := StartEcho(t, "lr")
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = %q
max_connections = 1
[[rules]]
name = "first"
[rules.matcher]
type = "source"
cidrs = ["127.0.0.0/8"]
[[rules.backends]]
id = "e1"
address = %q
[[rules]]
name = "second"
[[rules.backends]]
id = "e2"
address = %q
`, addr, e.Addr, e.Addr)))
	url := p.MetricsURL()
	held := dialT(t, addr)
	defer held.Close()
	readLine(t, bufio.NewReader(held))
	if _, err := harness.Greeting(addr); err == nil {
		t.Fatal("a connection beyond max_connections got a greeting")
	}
	ln := map[string]string{"listener": addr, "protocol": "tcp", "reason": "max_connections"}
	f := harness.WaitMetrics(t, url, "the refusal on the listener", func(f harness.Metrics) bool {
		return f.Value("dynamic_proxy_listener_rejected_total", ln) == 1
	})
	for _, rule := range []string{"first", "second"} {
		if n := f.Value("dynamic_proxy_connections_rejected_total", map[string]string{"rule": rule, "reason": "max_connections"}); n != 0 {
			t.Errorf("rule %s counted %v max_connections rejections", rule, n)
		}
	}
	if n := f.Value("dynamic_proxy_connections_total", map[string]string{"rule": "first"}); n != 1 {
		t.Errorf("rule first counted %v connections, want 1 (the held one)", n)
	}
}

// TestMetricsBackendUpFollowsAKilledBackend kills a backend and starts it
// again on the same address: backend_up follows, health checks are counted.
func TestMetricsBackendUpFollowsAKilledBackend(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	serve := func(ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}
	go serve(ln)
	t.Cleanup(func() { ln.Close() })
	port := harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[health_check]
interval = "100ms"
timeout = "80ms"
retries = 1
rise = 1
[[rules]]
name = "web"
[[rules.backends]]
id = "k"
address = %q
`, port, addr)))
	url := p.MetricsURL()
	k := map[string]string{"rule": "web", "backend": "k"}
	harness.WaitMetrics(t, url, "backend_up 1 after passing checks", func(f harness.Metrics) bool {
		return f.Value("dynamic_proxy_backend_up", k) == 1 &&
			f.Value("dynamic_proxy_health_checks_total", map[string]string{"rule": "web", "backend": "k", "result": "success"}) >= 1
	})
	ln.Close()
	f := harness.WaitMetrics(t, url, "backend_up 0 after the kill", func(f harness.Metrics) bool {
		return f.Value("dynamic_proxy_backend_up", k) == 0
	})
	if n := f.Value("dynamic_proxy_health_checks_total", map[string]string{"rule": "web", "backend": "k", "result": "failure"}); n < 1 {
		t.Errorf("health_checks_total{result=failure} = %v after the backend went down", n)
	}
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("restart the backend on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln2.Close() })
	go serve(ln2)
	harness.WaitMetrics(t, url, "backend_up 1 after the restart", func(f harness.Metrics) bool {
		return f.Value("dynamic_proxy_backend_up", k) == 1
	})
}

// TestMetricsReloads counts reloads by result and drops the series of a
// backend a reload removed.
func TestMetricsReloads(t *testing.T) {
	a, b := StartEcho(t, "a"), StartEcho(t, "b")
	port := harness.FreePort(t)
	render := func(backends ...*EchoServer) string {
		var sb strings.Builder
		fmt.Fprintf(&sb, "[server]\ntcp_bind = \"127.0.0.1:%d\"\nwatch_config = false\n[metrics]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"\"\n[[rules]]\nname = \"web\"\n", port)
		for _, e := range backends {
			fmt.Fprintf(&sb, "[[rules.backends]]\nid = %q\naddress = %q\n", e.Name, e.Addr)
		}
		return sb.String()
	}
	cfg := harness.WriteConfig(t, render(a, b))
	p := Start(t, cfg)
	url := p.MetricsURL()
	if n := strings.Count(p.Log(), "admin API listening"); n != 0 {
		t.Errorf("[admin] bind = \"\" still started the admin API")
	}
	f := harness.Scrape(t, url)
	start := f.Value("dynamic_proxy_config_last_reload_success_timestamp_seconds", nil)
	if f.Value("dynamic_proxy_backend_up", map[string]string{"backend": "b"}) != 1 {
		t.Fatal("backend b has no backend_up series")
	}

	writeAtomic(t, cfg, render(a))
	p.Signal(syscall.SIGHUP)
	p.WaitLog("config reloaded")
	f = harness.WaitMetrics(t, url, "one successful reload", func(f harness.Metrics) bool {
		return f.Value("dynamic_proxy_config_reloads_total", map[string]string{"result": "success"}) == 1
	})
	if ts := f.Value("dynamic_proxy_config_last_reload_success_timestamp_seconds", nil); ts < start {
		t.Errorf("last reload timestamp went from %v to %v", start, ts)
	}
	var left []string
	for name, mf := range f {
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				if lp.GetName() == "backend" && lp.GetValue() == "b" {
					left = append(left, name)
				}
			}
		}
	}
	sort.Strings(left)
	if len(left) > 0 {
		t.Errorf("series of the removed backend b are still exported: %v", left)
	}

	writeAtomic(t, cfg, "[[rules]]\nname = 1\n")
	p.Signal(syscall.SIGHUP)
	p.WaitLog("reload failed")
	mxExpect(t, harness.Scrape(t, url), []mxCheck{
		{"dynamic_proxy_config_reloads_total", map[string]string{"result": "failure"}, 1},
		{"dynamic_proxy_config_reloads_total", map[string]string{"result": "success"}, 1},
	})
}

// TestMetricsDisabled: with [metrics] enabled = false nothing listens and
// proxying works.
func TestMetricsDisabled(t *testing.T) {
	e := StartEcho(t, "plain")
	port, mport := harness.FreePort(t), harness.FreePort(t)
	p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
[metrics]
enabled = false
bind = "127.0.0.1:%d"
[[rules]]
name = "web"
[[rules.backends]]
id = "e"
address = %q
`, port, mport, e.Addr)))
	if name, err := harness.Greeting(fmt.Sprintf("127.0.0.1:%d", port)); err != nil || name != "plain" {
		t.Fatalf("proxying with metrics off: %q %v", name, err)
	}
	if strings.Contains(p.Log(), "metrics listening") {
		t.Error("metrics server started although disabled")
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", mport), time.Second); err == nil {
		c.Close()
		t.Error("something listens on the metrics port although metrics are disabled")
	}
}

// TestAdaptiveThreads: with worker_threads = 2 the proxy runs two event
// loops; while idle it runs Go code on one thread (go_sched_gomaxprocs_threads
// 1) and still serves. With adaptive_threads = false it keeps two.
func TestAdaptiveThreads(t *testing.T) {
	e := StartEcho(t, "adapt")
	for _, adaptive := range []bool{true, false} {
		port := harness.FreePort(t)
		p := Start(t, harness.WriteConfig(t, fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:%d"
worker_threads = 2
adaptive_threads = %v
[[rules]]
name = "web"
[[rules.backends]]
id = "e1"
address = %q
`, port, adaptive, e.Addr)))
		url := p.MetricsURL()
		p.WaitLog("dynamic-proxy started")
		want := 2.0
		if adaptive {
			want = 1
			if !strings.Contains(p.Log(), "worker threads follow the load") {
				t.Errorf("adaptive: no \"worker threads follow the load\" line before \"dynamic-proxy started\"")
			}
		} else if strings.Contains(p.Log(), "worker threads follow the load") {
			t.Errorf("adaptive_threads = false, yet the log says: worker threads follow the load")
		}
		harness.WaitMetrics(t, url, fmt.Sprintf("adaptive %v: GOMAXPROCS %v", adaptive, want), func(f harness.Metrics) bool {
			return f.Value("go_sched_gomaxprocs_threads", nil) == want
		})
		for i := 0; i < 8; i++ { // the two loops take turns on one thread
			mxExchange(t, fmt.Sprintf("127.0.0.1:%d", port), "adapt", 1000)
		}
	}
}
