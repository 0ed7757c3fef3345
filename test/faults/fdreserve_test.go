package faults

import (
	"bufio"
	"fmt"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// greeter is a client of a Greet backend through the proxy: greeted says
// whether the greeting came (it is closed either way).
type greeter struct {
	c       net.Conn
	greeted chan bool
}

func dialGreeter(t *testing.T, addr string) *greeter {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, harness.Deadline)
	if err != nil {
		t.Fatalf("dial (the kernel completes the handshake; the backlog holds a client the proxy does not accept): %v", err)
	}
	t.Cleanup(func() { c.Close() })
	g := &greeter{c: c, greeted: make(chan bool, 1)}
	go func() {
		c.SetReadDeadline(time.Now().Add(2 * harness.Deadline))
		line, err := bufio.NewReader(c).ReadString('\n')
		g.greeted <- err == nil && line == "b\n"
		close(g.greeted)
	}()
	return g
}

// get fetches url on a new connection and returns its status code.
func get(t *testing.T, url string) int {
	t.Helper()
	c := &http.Client{Timeout: harness.Deadline, Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s while the data path is at its descriptor budget: %v", url, err)
	}
	res.Body.Close()
	return res.StatusCode
}

// TestObservableAtDescriptorBudget
//
// Fault: the proxy runs with a descriptor limit of 512 (exec'd under
// `prlimit --nofile=512:512`), and idle clients hold more connections
// than 512 descriptors can proxy (each takes 2).
// Must hold:
//   - the data path stops at its budget, the limit less a reserve (32 at
//     this limit) and what else the process holds: the next clients wait
//     in the backlog, and the pause is counted in
//     dynamic_proxy_descriptor_budget_refusals_total{kind="tcp_accept"};
//   - meanwhile /metrics and the admin API answer (HTTP 200), request
//     after request, each on a new connection;
//   - the scrape shows it: process_max_fds 512, the data path's
//     descriptors at its budget (within what health checks and the
//     scrapes themselves open and close), the process short of its limit
//     by about the reserve;
//   - the waiting clients are served once connections close.
func TestObservableAtDescriptorBudget(t *testing.T) {
	const limit, extra = 512, 5
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatal("prlimit (util-linux) is needed: ", err)
	}
	be := StartBackend(t, Greet("b"))
	port := harness.FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// max_connections = 0: nothing but the descriptor budget limits the
	// connections (a capped max_connections is the other test's).
	p := Start(t, harness.WriteConfig(t, server("connection_timeout = \"15s\"\nmax_connections = 0")+tcpRule("fd", port, "b="+be.Addr)),
		prlimit, fmt.Sprintf("--nofile=%d:%d", limit, limit))
	metricsURL, adminURL := p.MetricsURL(), p.AdminURL()

	// Fill: idle proxied connections until the proxy says it is at its
	// budget, each one greeted (proxied) before the next.
	var held []*greeter
	var waiting *greeter
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for waiting == nil {
		if len(held) > limit/2 {
			t.Fatalf("%d connections proxied with a limit of %d descriptors", len(held), limit)
		}
		g := dialGreeter(t, addr)
	wait:
		for {
			select {
			case ok := <-g.greeted:
				if !ok {
					t.Fatalf("client %d was closed or not greeted instead of proxied or made to wait", len(held))
				}
				held = append(held, g)
				break wait
			case <-tick.C:
				if p.Count("out of descriptors", "descriptor budget reached") > 0 {
					waiting = g
					break wait
				}
			}
		}
	}
	waiters := []*greeter{waiting}
	for len(waiters) < extra {
		waiters = append(waiters, dialGreeter(t, addr))
	}
	fds := CountFDs(t, p.PID())

	// Observable: scrapes and admin requests, each on a new connection.
	var m harness.Metrics
	for i := range 5 {
		m = harness.Scrape(t, metricsURL)
		for _, path := range []string{"/api/v1/status", "/healthz"} {
			if code := get(t, adminURL+path); code != http.StatusOK {
				t.Fatalf("admin %s (request %d) while the data path is at its budget: HTTP %d", path, i, code)
			}
		}
	}
	if got := m.Value("process_max_fds", nil); got != limit {
		t.Errorf("process_max_fds = %v; want %d", got, limit)
	}
	open, data, budget, reserve := m.Value("process_open_fds", nil), m.Value("dynamic_proxy_data_path_descriptors", nil),
		m.Value("dynamic_proxy_data_path_descriptor_budget", nil), m.Value("dynamic_proxy_descriptor_reserve", nil)
	if reserve != 32 {
		t.Errorf("dynamic_proxy_descriptor_reserve = %v at a limit of %d; want 32", reserve, limit)
	}
	if data < budget-8 || data > budget {
		t.Errorf("the data path holds %v descriptors at a budget of %v: not at the budget", data, budget)
	}
	if open > limit-reserve/2 {
		t.Errorf("process_open_fds = %v at the budget: the reserve (%v of %d) is not free", open, reserve, limit)
	}
	if n := m.Value("dynamic_proxy_descriptor_budget_refusals_total", harness.Labels{"kind": "tcp_accept"}); n == 0 {
		t.Error(`dynamic_proxy_descriptor_budget_refusals_total{kind="tcp_accept"} is 0 at the budget`)
	}

	// Connections close: the waiting clients are served.
	for _, g := range held[:extra+1] {
		g.c.Close()
	}
	for i, g := range waiters {
		if ok := <-g.greeted; !ok {
			t.Fatalf("waiting client %d was closed instead of served once connections closed", i)
		}
	}
	t.Logf("limit %d: %d connections proxied, then the data path's budget (%v descriptors; reserve %v) was reached with %v open; "+
		"5 scrapes and 10 admin requests answered 200, the last with process_open_fds %v, the data path holding %v; log: %q",
		limit, len(held), budget, reserve, fds, open, data, p.WaitLog("out of descriptors"))
}

var cappedRe = regexp.MustCompile(`capped at (\d+)`)

// TestMaxConnectionsCappedByDescriptorLimit
//
// Fault: server.max_connections = 1000 needs more than 2000 descriptors;
// the proxy runs under `prlimit --nofile=1024:1024`.
// Must hold:
//   - --validate (exit 0) warns with both numbers and the cap;
//   - start-up logs the same warning with the same cap, and runs with it
//     (dynamic_proxy_max_connections);
//   - a reload to max_connections = 2000 warns again, with the new number;
//   - without the low limit (20,000 here) neither warns.
func TestMaxConnectionsCappedByDescriptorLimit(t *testing.T) {
	const limit = 1024
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Fatal("prlimit (util-linux) is needed: ", err)
	}
	under := []string{prlimit, fmt.Sprintf("--nofile=%d:%d", limit, limit)}
	be := StartBackend(t, Greet("b"))
	port, port2 := harness.FreePort(t), harness.FreePort(t)
	cfg := func(max int) string {
		return server(fmt.Sprintf("max_connections = %d", max)) + tcpRule("cap", port, "b="+be.Addr)
	}
	path := harness.WriteConfig(t, cfg(1000))

	validate := func(wrapper ...string) (string, int) {
		t.Helper()
		argv := append(append([]string{}, wrapper...), binary, "--validate", "-c", path)
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	out, code := validate(under...)
	if code != 0 || !strings.Contains(out, "warning: server.max_connections 1000 needs about") ||
		!strings.Contains(out, fmt.Sprintf("the descriptor limit (RLIMIT_NOFILE) is %d", limit)) {
		t.Fatalf("--validate under a limit of %d: exit %d, output:\n%s", limit, code, out)
	}
	cm := cappedRe.FindStringSubmatch(out)
	if cm == nil {
		t.Fatalf("--validate does not say what max_connections is capped at:\n%s", out)
	}
	capped, _ := strconv.Atoi(cm[1])
	if capped <= 0 || capped >= limit/2 {
		t.Fatalf("capped at %d with a limit of %d", capped, limit)
	}
	if out, code := validate(); code != 0 || strings.Contains(out, "max_connections") {
		t.Fatalf("--validate under this machine's limit: exit %d, a warning for 1000 connections:\n%s", code, out)
	}

	p := Start(t, path, under...)
	line := p.WaitLog("server.max_connections capped")
	for _, want := range []string{"max_connections=1000", fmt.Sprintf("limit=%d", limit), fmt.Sprintf("capped_at=%d", capped), "descriptors_needed="} {
		if !strings.Contains(line, want) {
			t.Errorf("the start-up warning does not say %q: %s", want, line)
		}
	}
	if got := harness.Scrape(t, p.MetricsURL()).Value("dynamic_proxy_max_connections", nil); got != float64(capped) {
		t.Errorf("dynamic_proxy_max_connections = %v; want the cap %d", got, capped)
	}
	from := p.NumLines()
	RewriteConfig(t, path, cfg(2000))
	p.Signal(syscall.SIGHUP)
	line = p.WaitLogFrom(from, "server.max_connections capped")
	if !strings.Contains(line, "max_connections=2000") || !strings.Contains(line, fmt.Sprintf("capped_at=%d", capped)) {
		t.Errorf("the reload's warning: %s; want max_connections=2000 capped at %d", line, capped)
	}

	q := Start(t, harness.WriteConfig(t, server("max_connections = 1000")+tcpRule("cap", port2, "b="+be.Addr)))
	if n := q.Count("max_connections capped"); n != 0 {
		t.Errorf("max_connections 1000 capped under a limit of 20,000: %q", q.WaitLog("max_connections capped"))
	}
	t.Logf("limit %d, max_connections 1000: capped at %d; --validate: %q; start-up: %q", limit, capped,
		strings.TrimSpace(strings.Split(out, "\n")[0]), line)
}
