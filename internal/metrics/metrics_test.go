package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTest(t testing.TB) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	m, err := New(reg, false)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

func route(name, protocol, routerName, plugin string, bs ...*backend.Backend) *proxy.Route {
	return &proxy.Route{Name: name, Protocol: protocol, RouterName: routerName, Plugin: plugin, Backends: bs}
}

// values gathers reg into "name{k=v,...}" -> value (histograms: _count and _sum).
func values(t testing.TB, reg prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.Metric {
			var ls []string
			for _, lp := range mt.Label {
				ls = append(ls, lp.GetName()+"="+lp.GetValue())
			}
			key := mf.GetName() + "{" + strings.Join(ls, ",") + "}"
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = mt.Counter.GetValue()
			case dto.MetricType_GAUGE:
				out[key] = mt.Gauge.GetValue()
			case dto.MetricType_HISTOGRAM:
				out[strings.Replace(key, "{", "_count{", 1)] = float64(mt.Histogram.GetSampleCount())
				out[strings.Replace(key, "{", "_sum{", 1)] = mt.Histogram.GetSampleSum()
			}
		}
	}
	return out
}

func expect(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("%s: missing", k)
			continue
		}
		if g != v {
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}
}

func TestObserverCountsTCP(t *testing.T) {
	m, reg := newTest(t)
	b1 := backend.New("web", "b1", "127.0.0.1:9001", 1, nil)
	b2 := backend.New("web", "b2", "127.0.0.1:9002", 1, nil)
	rt := route("web", "tcp", "rr", "round_robin", b1, b2)
	o := m.Observer(rt)
	m.Retain([]*proxy.Route{rt})

	// Two proxied connections, one refused backend, one timeout, one with no backend.
	for i, n := range []int64{100, 250} {
		o.ConnOpened(0)
		o.Picked(0, b1)
		if i == 1 {
			o.Connected(0, b2, time.Millisecond, errors.New("connection refused"))
			o.Connected(0, b2, time.Second, timeoutErr{})
		}
		o.Connected(0, b1, 2*time.Millisecond, nil)
		o.BytesIn(0, n)
		o.BytesOut(0, 2*n)
		o.ConnClosed(0, b1, proxy.EndEOF, 3*time.Second, n, 2*n)
	}
	o.ConnOpened(0)
	o.PickFailed(0, router.NoBackend(2))
	o.Rejected(0, proxy.ReasonNoBackend)
	o.ConnClosed(0, nil, proxy.EndNoBackend, 0, 0, 0)
	o.PickFailed(0, errors.New("boom"))
	o.ConnOpened(0) // still open

	expect(t, values(t, reg), map[string]float64{
		`dynamic_proxy_connections_total{protocol=tcp,rule=web}`:                                     4,
		`dynamic_proxy_connections_active{protocol=tcp,rule=web}`:                                    1,
		`dynamic_proxy_connection_duration_seconds_count{protocol=tcp,rule=web}`:                     3,
		`dynamic_proxy_connection_duration_seconds_sum{protocol=tcp,rule=web}`:                       6,
		`dynamic_proxy_connections_rejected_total{protocol=tcp,reason=no_backend,rule=web}`:          1,
		`dynamic_proxy_connections_rejected_total{protocol=tcp,reason=max_connections,rule=web}`:     0,
		`dynamic_proxy_requests_total{protocol=tcp,rule=web}`:                                        2,
		`dynamic_proxy_request_duration_seconds_count{protocol=tcp,rule=web}`:                        2,
		`dynamic_proxy_request_size_bytes_sum{protocol=tcp,rule=web}`:                                350,
		`dynamic_proxy_response_size_bytes_sum{protocol=tcp,rule=web}`:                               700,
		`dynamic_proxy_bytes_total{direction=in,protocol=tcp,rule=web}`:                              350,
		`dynamic_proxy_bytes_total{direction=out,protocol=tcp,rule=web}`:                             700,
		`dynamic_proxy_backend_requests_total{backend=b1,result=success,rule=web}`:                   2,
		`dynamic_proxy_backend_requests_total{backend=b2,result=error,rule=web}`:                     1,
		`dynamic_proxy_backend_requests_total{backend=b2,result=timeout,rule=web}`:                   1,
		`dynamic_proxy_backend_response_seconds_count{backend=b1,rule=web}`:                          2,
		`dynamic_proxy_backend_response_seconds_sum{backend=b1,rule=web}`:                            0.004,
		`dynamic_proxy_router_selections_total{backend=b1,plugin=round_robin,router=rr,rule=web}`:    2,
		`dynamic_proxy_router_selections_total{backend=b2,plugin=round_robin,router=rr,rule=web}`:    0,
		`dynamic_proxy_router_errors_total{plugin=round_robin,reason=no_backend,router=rr,rule=web}`: 1,
		`dynamic_proxy_router_errors_total{plugin=round_robin,reason=error,router=rr,rule=web}`:      1,
		`dynamic_proxy_backend_up{backend=b1,rule=web}`:                                              1,
		`dynamic_proxy_backend_connections_active{backend=b1,rule=web}`:                              0,
	})
}

type timeoutErr struct{}

func (timeoutErr) Error() string { return "i/o timeout" }
func (timeoutErr) Timeout() bool { return true }

func TestObserverCountsUDP(t *testing.T) {
	m, reg := newTest(t)
	b := backend.New("dns", "d1", "127.0.0.1:5353", 1, nil)
	rt := route("dns", "udp", "round_robin", "round_robin", b)
	o := m.Observer(rt)
	m.Retain([]*proxy.Route{rt})
	o.ConnOpened(0)
	o.Datagram(0, b, 40, nil)
	o.Datagram(0, b, 60, nil)
	o.Datagram(0, b, 10, errors.New("sendmsg: no buffer space"))
	o.Reply(0, b, 500, 5*time.Millisecond)
	o.Reply(0, b, 300, 0)
	o.ConnClosed(0, b, proxy.EndIdleTimeout, time.Second, 0, 0)
	expect(t, values(t, reg), map[string]float64{
		`dynamic_proxy_requests_total{protocol=udp,rule=dns}`:                      2,
		`dynamic_proxy_request_size_bytes_count{protocol=udp,rule=dns}`:            2,
		`dynamic_proxy_request_size_bytes_sum{protocol=udp,rule=dns}`:              100,
		`dynamic_proxy_response_size_bytes_count{protocol=udp,rule=dns}`:           2,
		`dynamic_proxy_response_size_bytes_sum{protocol=udp,rule=dns}`:             800,
		`dynamic_proxy_bytes_total{direction=in,protocol=udp,rule=dns}`:            100,
		`dynamic_proxy_bytes_total{direction=out,protocol=udp,rule=dns}`:           800,
		`dynamic_proxy_request_duration_seconds_count{protocol=udp,rule=dns}`:      1,
		`dynamic_proxy_backend_response_seconds_count{backend=d1,rule=dns}`:        1,
		`dynamic_proxy_backend_requests_total{backend=d1,result=success,rule=dns}`: 2,
		`dynamic_proxy_backend_requests_total{backend=d1,result=error,rule=dns}`:   1,
		`dynamic_proxy_connections_total{protocol=udp,rule=dns}`:                   1,
		`dynamic_proxy_connections_active{protocol=udp,rule=dns}`:                  0,
	})
}

func TestBackendStateAtScrape(t *testing.T) {
	m, reg := newTest(t)
	h := &backend.Health{Address: "127.0.0.1:9001"}
	b := backend.New("web", "b1", "127.0.0.1:9001", 1, h)
	rt := route("web", "tcp", "round_robin", "round_robin", b)
	m.Observer(rt)
	m.Retain([]*proxy.Route{rt})
	b.Acquire(0)
	b.Acquire(0)
	b.Release(0)
	h.SetUp(false)
	expect(t, values(t, reg), map[string]float64{
		`dynamic_proxy_backend_up{backend=b1,rule=web}`:                 0,
		`dynamic_proxy_backend_connections_active{backend=b1,rule=web}`: 1,
	})
	h.SetUp(true)
	expect(t, values(t, reg), map[string]float64{`dynamic_proxy_backend_up{backend=b1,rule=web}`: 1})
}

func TestHealthCheckedCountsEveryBackendSharingTheHealth(t *testing.T) {
	m, reg := newTest(t)
	h := &backend.Health{Address: "127.0.0.1:9001"}
	a := backend.New("a", "x", "127.0.0.1:9001", 1, h)
	b := backend.New("b", "y", "127.0.0.1:9001", 1, h)
	c := backend.New("b", "z", "127.0.0.1:9002", 1, nil)
	ra, rb := route("a", "tcp", "round_robin", "round_robin", a), route("b", "tcp", "round_robin", "round_robin", b, c)
	m.Observer(ra)
	m.Observer(rb)
	m.Retain([]*proxy.Route{ra, rb})
	m.HealthChecked(h, true)
	m.HealthChecked(h, true)
	m.HealthChecked(h, false)
	m.HealthChecked(&backend.Health{}, false) // unknown: ignored
	expect(t, values(t, reg), map[string]float64{
		`dynamic_proxy_health_checks_total{backend=x,result=success,rule=a}`: 2,
		`dynamic_proxy_health_checks_total{backend=x,result=failure,rule=a}`: 1,
		`dynamic_proxy_health_checks_total{backend=y,result=success,rule=b}`: 2,
		`dynamic_proxy_health_checks_total{backend=y,result=failure,rule=b}`: 1,
		`dynamic_proxy_health_checks_total{backend=z,result=success,rule=b}`: 0,
	})
}

// TestRetainDropsRemovedSeries reloads many times with renamed rules and
// backends: the number of series stays that of one config, and the series
// of what is kept keep their values.
func TestRetainDropsRemovedSeries(t *testing.T) {
	m, reg := newTest(t)
	keep := backend.New("stable", "s1", "127.0.0.1:9000", 1, nil)
	stable := route("stable", "tcp", "round_robin", "round_robin", keep)
	so := m.Observer(stable)
	so.ConnOpened(0)
	so.ConnClosed(0, keep, proxy.EndEOF, time.Second, 0, 0)
	count := func() int {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, mf := range mfs {
			n += len(mf.Metric)
		}
		return n
	}
	var first int
	for i := 0; i < 50; i++ {
		b := backend.New(fmt.Sprintf("r%d", i), fmt.Sprintf("b%d", i), "127.0.0.1:9001", 1, nil)
		rt := route(fmt.Sprintf("r%d", i), "tcp", fmt.Sprintf("router%d", i), "round_robin", b)
		// Rebuilt like the engine does on each apply.
		stable = route("stable", "tcp", "round_robin", "round_robin", keep)
		m.Observer(stable)
		o := m.Observer(rt)
		o.ConnOpened(0)
		o.Picked(0, b)
		// A failed apply in between: its routes were observed, never retained.
		failed := route(fmt.Sprintf("failed%d", i), "udp", "round_robin", "round_robin",
			backend.New(fmt.Sprintf("failed%d", i), "f", "127.0.0.1:9003", 1, nil))
		m.Observer(failed)
		m.Retain([]*proxy.Route{stable, rt})
		if i == 0 {
			first = count()
		} else if n := count(); n != first {
			t.Fatalf("reload %d: %d series, want %d as after the first", i, n, first)
		}
	}
	v := values(t, reg)
	expect(t, v, map[string]float64{
		`dynamic_proxy_connections_total{protocol=tcp,rule=stable}`:                                      1,
		`dynamic_proxy_connections_total{protocol=tcp,rule=r49}`:                                         1,
		`dynamic_proxy_router_selections_total{backend=b49,plugin=round_robin,router=router49,rule=r49}`: 1,
	})
	for k := range v {
		if strings.Contains(k, "rule=r48") || strings.Contains(k, "rule=failed") || strings.Contains(k, "router=router48") {
			t.Errorf("series of a removed rule survived: %s", k)
		}
	}
	// A rule that changes protocol or router drops its old series.
	nb := backend.New("stable", "s1", "127.0.0.1:9000", 1, nil)
	moved := route("stable", "udp", "weighted", "weighted", nb)
	m.Observer(moved)
	m.Retain([]*proxy.Route{moved})
	for k := range values(t, reg) {
		if strings.Contains(k, "protocol=tcp") || strings.Contains(k, "router=round_robin") {
			t.Errorf("series of the old protocol or router survived: %s", k)
		}
	}
}

func TestEveryFamilyLintsClean(t *testing.T) {
	m, reg := newTest(t)
	b := backend.New("web", "b1", "127.0.0.1:9001", 1, nil)
	rt := route("web", "tcp", "round_robin", "round_robin", b)
	o := m.Observer(rt)
	m.Retain([]*proxy.Route{rt})
	m.Unrouted("tcp", proxy.ReasonNoRule)
	m.ReloadResult(nil)
	m.ReloadResult(errors.New("bad"))
	o.ConnOpened(0)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	mfs, _ := reg.Gather()
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	sort.Strings(names)
	want := []string{"backend_connections_active", "backend_requests_total", "backend_response_seconds", "backend_up",
		"build_info", "bytes_total", "config_last_reload_success_timestamp_seconds", "config_reloads_total",
		"connection_duration_seconds", "connections_active", "connections_ended_total", "connections_rejected_total", "connections_total",
		"health_checks_total", "log_records_dropped_total", "request_duration_seconds", "request_size_bytes", "requests_total",
		"response_size_bytes", "router_errors_total", "router_selections_total"}
	for i := range want {
		want[i] = Namespace + "_" + want[i]
	}
	if strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("families:\n got %v\nwant %v", names, want)
	}
	v := values(t, reg)
	expect(t, v, map[string]float64{
		`dynamic_proxy_config_reloads_total{result=success}`:                          1,
		`dynamic_proxy_config_reloads_total{result=failure}`:                          1,
		`dynamic_proxy_connections_rejected_total{protocol=tcp,reason=no_rule,rule=}`: 1,
	})
	if ts := v[`dynamic_proxy_config_last_reload_success_timestamp_seconds{}`]; time.Since(time.Unix(int64(ts), 0)) > time.Minute {
		t.Errorf("last reload timestamp %v is not now", ts)
	}
}

func TestRuntimeCollectors(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := New(reg, true); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, mf := range mfs {
		have[mf.GetName()] = true
	}
	for _, n := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_cpu_seconds_total", "process_open_fds", "process_max_fds", "process_resident_memory_bytes"} {
		if !have[n] {
			t.Errorf("missing %s", n)
		}
	}
	// Registering twice on one registry is refused, not a panic.
	if _, err := New(reg, false); err == nil {
		t.Error("second New on the same registry succeeded")
	}
}

// TestDescriptorMetrics: the server's descriptor budget and connection cap
// are scraped from it, and lint clean.
func TestDescriptorMetrics(t *testing.T) {
	m, reg := newTest(t)
	s := proxy.NewServer(slog.New(slog.DiscardHandler))
	m.SetServer(s)
	s.SetMaxConnections(7)
	v := values(t, reg)
	expect(t, v, map[string]float64{
		`dynamic_proxy_max_connections{}`:                                  7,
		`dynamic_proxy_data_path_descriptors{}`:                            0,
		`dynamic_proxy_descriptor_budget_refusals_total{kind=tcp_accept}`:  0,
		`dynamic_proxy_descriptor_budget_refusals_total{kind=udp_session}`: 0,
		`dynamic_proxy_descriptor_budget_refusals_total{kind=splice_pipe}`: 0,
	})
	if _, ok := v[`dynamic_proxy_descriptor_reserve{}`]; ok {
		t.Error("a reserve reported before the limit was read (no listener yet)")
	}
	l, err := s.ListenTCP("127.0.0.1:0", proxy.Table{}) // reads the limit and counts
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		l.Close()
		if err := s.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	d := s.Descriptors()
	if d.Limit <= 0 || d.Reserve <= 0 || d.Budget <= 0 || d.Budget != d.Limit-d.Reserve-d.Other {
		t.Fatalf("descriptor budget with a listener: %+v", d)
	}
	expect(t, values(t, reg), map[string]float64{
		`dynamic_proxy_descriptor_reserve{}`:          float64(d.Reserve),
		`dynamic_proxy_data_path_descriptor_budget{}`: float64(d.Budget),
	})
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// BenchmarkObserverConnection is the metrics work of one proxied TCP
// connection: it must not allocate.
func BenchmarkObserverConnection(b *testing.B) {
	m, _ := newTest(b)
	be := backend.New("web", "b1", "127.0.0.1:9001", 1, nil)
	rt := route("web", "tcp", "round_robin", "round_robin", be)
	o := m.Observer(rt)
	m.Retain([]*proxy.Route{rt})
	b.ReportAllocs()
	for b.Loop() {
		o.ConnOpened(0)
		o.Picked(0, be)
		o.Connected(0, be, time.Millisecond, nil)
		o.BytesIn(0, 100)
		o.BytesOut(0, 1000)
		o.ConnClosed(0, be, proxy.EndEOF, time.Second, 100, 1000)
	}
}

// TestRetainNothingLeavesNoRouteSeries observes TCP and UDP routes, counts
// into every kind of series, then retains no route: the series left are
// exactly those of a registry that never saw a route.
func TestRetainNothingLeavesNoRouteSeries(t *testing.T) {
	names := func(reg prometheus.Gatherer) []string {
		var out []string
		for k := range values(t, reg) {
			out = append(out, k)
		}
		sort.Strings(out)
		return out
	}
	_, empty := newTest(t)
	want := names(empty)

	m, reg := newTest(t)
	var routes []*proxy.Route
	for _, p := range []string{"tcp", "udp"} {
		b1 := backend.New("r-"+p, "b1", "127.0.0.1:9000", 1, nil)
		b2 := backend.New("r-"+p, "b2", "127.0.0.1:9001", 1, nil)
		rt := route("r-"+p, p, "rr", "round_robin", b1, b2)
		o := m.Observer(rt)
		rt.Observer = o
		o.ConnOpened(0)
		o.Picked(0, b1)
		o.Connected(0, b1, time.Millisecond, nil)
		o.ConnClosed(0, b1, proxy.EndEOF, time.Second, 10, 20)
		o.BytesIn(0, 10)
		o.Rejected(0, proxy.ReasonNoBackend)
		routes = append(routes, rt)
	}
	m.Retain(routes)
	if n := len(names(reg)); n <= len(want) {
		t.Fatalf("%d series with two routes, want more than the %d of none", n, len(want))
	}
	m.Retain(nil)
	if got := names(reg); !reflect.DeepEqual(got, want) {
		t.Errorf("series after retaining no route:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestSeriesByLoopExact: four goroutines count as four event loops (a TCP
// route's connections and bytes, a UDP route's sessions and datagrams)
// while /metrics is scraped and the counters are carried meanwhile; once
// they are done, every counter, gauge and histogram holds every event, and
// Carry holds what was counted after the last scrape.
func TestSeriesByLoopExact(t *testing.T) {
	m, reg := newTest(t)
	b1 := backend.New("web", "b1", "127.0.0.1:9001", 1, nil)
	rt := route("web", "tcp", "rr", "round_robin", b1)
	o := m.Observer(rt)
	u1 := backend.New("dns", "u1", "127.0.0.1:53", 1, nil)
	udp := route("dns", "udp", "rr", "round_robin", u1)
	uo := m.Observer(udp)
	m.Retain([]*proxy.Route{rt, udp})
	const loops, conns = 4, 2000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		for {
			select {
			case <-stop:
				return
			default:
				if _, err := reg.Gather(); err != nil {
					t.Error(err)
					return
				}
				m.Carry()
			}
		}
	}()
	for loop := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range conns {
				n := int64(i%7 + 1)
				o.ConnOpened(loop)
				o.Picked(loop, b1)
				o.Connected(loop, b1, time.Millisecond, nil)
				o.BytesIn(loop, n)
				o.BytesOut(loop, 3)
				o.ConnClosed(loop, b1, proxy.EndEOF, time.Second, n, 3)
				uo.ConnOpened(loop)
				uo.Datagram(loop, u1, 40, nil)
				uo.Reply(loop, u1, 100, 2*time.Millisecond)
				uo.ConnClosed(loop, u1, proxy.EndIdleTimeout, 2*time.Second, 0, 0)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-scraped
	var in float64
	for i := range conns {
		in += float64(i%7 + 1)
	}
	in *= loops
	const all = loops * conns
	expect(t, values(t, reg), map[string]float64{
		`dynamic_proxy_bytes_total{direction=in,protocol=tcp,rule=web}`:                           in,
		`dynamic_proxy_bytes_total{direction=out,protocol=tcp,rule=web}`:                          3 * all,
		`dynamic_proxy_connections_total{protocol=tcp,rule=web}`:                                  all,
		`dynamic_proxy_connections_active{protocol=tcp,rule=web}`:                                 0,
		`dynamic_proxy_requests_total{protocol=tcp,rule=web}`:                                     all,
		`dynamic_proxy_connection_duration_seconds_count{protocol=tcp,rule=web}`:                  all,
		`dynamic_proxy_connection_duration_seconds_sum{protocol=tcp,rule=web}`:                    all,
		`dynamic_proxy_request_size_bytes_sum{protocol=tcp,rule=web}`:                             in,
		`dynamic_proxy_response_size_bytes_count{protocol=tcp,rule=web}`:                          all,
		`dynamic_proxy_backend_requests_total{backend=b1,result=success,rule=web}`:                all,
		`dynamic_proxy_backend_response_seconds_count{backend=b1,rule=web}`:                       all,
		`dynamic_proxy_router_selections_total{backend=b1,plugin=round_robin,router=rr,rule=web}`: all,
		`dynamic_proxy_connections_ended_total{backend=b1,end=eof,rule=web}`:                      all,
		`dynamic_proxy_connections_total{protocol=udp,rule=dns}`:                                  all,
		`dynamic_proxy_connections_active{protocol=udp,rule=dns}`:                                 0,
		`dynamic_proxy_requests_total{protocol=udp,rule=dns}`:                                     all,
		`dynamic_proxy_bytes_total{direction=in,protocol=udp,rule=dns}`:                           40 * all,
		`dynamic_proxy_bytes_total{direction=out,protocol=udp,rule=dns}`:                          100 * all,
		`dynamic_proxy_request_duration_seconds_count{protocol=udp,rule=dns}`:                     all,
		`dynamic_proxy_connection_duration_seconds_sum{protocol=udp,rule=dns}`:                    2 * all,
		`dynamic_proxy_connections_ended_total{backend=u1,end=idle_timeout,rule=dns}`:             all,
	})
	// Counted after the last scrape, carried without one.
	o.BytesIn(1, 10)
	o.ConnOpened(2)
	for _, c := range m.Carry() {
		switch {
		case c.Name == "bytes_total" && c.Labels["rule"] == "web" && c.Labels["direction"] == "in" && c.Value != in+10:
			t.Errorf("carried bytes_total in = %v, want %v", c.Value, in+10)
		case c.Name == "connections_total" && c.Labels["rule"] == "web" && c.Value != all+1:
			t.Errorf("carried connections_total = %v, want %v", c.Value, all+1)
		}
	}
	expect(t, values(t, reg), map[string]float64{`dynamic_proxy_connections_active{protocol=tcp,rule=web}`: 1})
}

// TestHistogramBuckets: a histogram counted by loop puts each value in the
// bucket client_golang's would (a value on a bound in that bound's bucket)
// and sums the loops' shares.
func TestHistogramBuckets(t *testing.T) {
	m, reg := newTest(t)
	b1 := backend.New("web", "b1", "127.0.0.1:9001", 1, nil)
	rt := route("web", "tcp", "rr", "round_robin", b1)
	o := m.Observer(rt)
	m.Retain([]*proxy.Route{rt})
	ref := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ref", Buckets: DurationBuckets})
	for i, d := range []time.Duration{0, time.Millisecond, time.Millisecond + 1, 7 * time.Millisecond, time.Second, 2 * time.Hour} {
		o.ConnOpened(i)
		o.ConnClosed(i, nil, proxy.EndNoBackend, d, 0, 0)
		ref.Observe(d.Seconds())
	}
	var want dto.Metric
	if err := ref.Write(&want); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "dynamic_proxy_connection_duration_seconds" {
			continue
		}
		got := mf.Metric[0].Histogram
		if got.GetSampleCount() != want.Histogram.GetSampleCount() || got.GetSampleSum() != want.Histogram.GetSampleSum() {
			t.Errorf("count, sum = %d, %v; want %d, %v", got.GetSampleCount(), got.GetSampleSum(), want.Histogram.GetSampleCount(), want.Histogram.GetSampleSum())
		}
		for i, b := range want.Histogram.Bucket {
			if g := got.Bucket[i]; g.GetUpperBound() != b.GetUpperBound() || g.GetCumulativeCount() != b.GetCumulativeCount() {
				t.Errorf("bucket %v: %d, want %d", b.GetUpperBound(), g.GetCumulativeCount(), b.GetCumulativeCount())
			}
		}
		return
	}
	t.Fatal("no connection_duration_seconds")
}
