package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// The data path's series are counted by event loop: every route, backend,
// router selection and router error keeps one share per loop
// (backend.Shards of them), and a loop adds only to its own, so no cache
// line is written by two loops per connection or per datagram. The
// counters are folded into their Prometheus series when they are read (a
// scrape, or a binary upgrade's Carry): fold adds what the shares grew by
// since the last fold, so the series stay exact and every Prometheus
// mechanism (deletion, carrying, AddCarried) works on them unchanged. The
// histograms are summed over the shares at each scrape (histCollector).
// A series is shared by every observer of its labels, across reloads, as
// the Prometheus children are.

// Counters of a route's share, by index (routeShard.c, routeSeries.prom).
const (
	rOpened   = iota // connections_total; with rClosed, connections_active
	rClosed          // folded into connections_active only
	rRequests        // requests_total
	rBytesIn         // bytes_total{direction="in"}
	rBytesOut        // bytes_total{direction="out"}
	rRejected        // connections_rejected_total, by proxy.Reason from here
	rCount    = rRejected + int(proxy.NumReasons)
)

// Counters of a backend's share, by index.
const (
	bSuccess       = iota // backend_requests_total{result="success"}
	bFailed               // result="error"
	bTimeout              // result="timeout"
	bDNSUnanswered        // dns_dropped_total{reason="unanswered"} (dns = true rules)
	bDNSUnmatched         // reason="unmatched"
	bEnded                // connections_ended_total, by proxy.End from here
	bCount         = bEnded + int(proxy.NumEnds)
)

// Histogram bounds in the integer units the data path has: nanoseconds
// for durations, bytes for sizes. A value v goes to the first bucket with
// v <= bound, as in client_golang.
var (
	durationBounds = nanos(DurationBuckets)
	sizeBounds     = whole(SizeBuckets)
	responseBounds = nanos(ResponseBuckets)
)

func nanos(secs []float64) []int64 {
	out := make([]int64, len(secs))
	for i, s := range secs {
		out[i] = int64(s * 1e9)
	}
	return out
}

func whole(fs []float64) []int64 {
	out := make([]int64, len(fs))
	for i, f := range fs {
		out[i] = int64(f)
	}
	return out
}

// hist is one loop's share of a histogram: a count per bucket (the last
// one +Inf) and the sum of the values.
type hist struct {
	counts []atomic.Uint64
	sum    atomic.Int64
}

// newHist returns a share for bounds. The spare capacity keeps another
// allocation (another loop's share) off the line its last counts are on.
func newHist(bounds []int64) hist {
	return hist{counts: make([]atomic.Uint64, len(bounds)+1, len(bounds)+1+8)}
}

func (h *hist) observe(bounds []int64, v int64) {
	i := 0
	for i < len(bounds) && v > bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(v)
}

// histogram sums the shares of one histogram (at(i) is share i's) into a
// constant metric; the sum is divided by per (1e9: nanoseconds to seconds).
func histogram(desc *prometheus.Desc, fbounds []float64, per float64, n int, at func(int) *hist, labels ...string) prometheus.Metric {
	var total uint64
	var sum int64
	cum := make(map[float64]uint64, len(fbounds))
	for i := range n {
		h := at(i)
		sum += h.sum.Load()
		for j := range h.counts {
			c := h.counts[j].Load()
			total += c
			if j < len(fbounds) {
				cum[fbounds[j]] += c
			}
		}
	}
	var run uint64
	for _, b := range fbounds { // cumulative, in order
		run += cum[b]
		cum[b] = run
	}
	return prometheus.MustNewConstHistogram(desc, total, float64(sum)/per, cum, labels...)
}

// routeShard is one loop's share of a route's series, on lines of its own.
type routeShard struct {
	c                                  [rCount]atomic.Int64
	connDur, reqDur, reqSize, respSize hist
	_                                  [64]byte
}

// routeSeries is a rule's series (by rule and protocol).
type routeSeries struct {
	rule, protocol string
	shards         []routeShard
	prom           [rCount]prometheus.Counter // nil where there is none (rClosed, rejected no_rule)
	active         prometheus.Gauge
	done           [rCount]int64 // what fold has added (under foldMu)
}

func newRouteSeries(m *Metrics, rule, proto string) *routeSeries {
	rs := &routeSeries{rule: rule, protocol: proto, shards: make([]routeShard, backend.Shards())}
	for i := range rs.shards {
		s := &rs.shards[i]
		s.connDur, s.reqDur = newHist(durationBounds), newHist(durationBounds)
		s.reqSize, s.respSize = newHist(sizeBounds), newHist(sizeBounds)
	}
	rs.prom[rOpened] = m.connTotal.WithLabelValues(rule, proto)
	rs.prom[rRequests] = m.requests.WithLabelValues(rule, proto)
	rs.prom[rBytesIn] = m.bytes.WithLabelValues(rule, proto, DirectionIn)
	rs.prom[rBytesOut] = m.bytes.WithLabelValues(rule, proto, DirectionOut)
	for r := proxy.Reason(0); r < proxy.NumReasons; r++ {
		if r != proxy.ReasonNoRule { // a route matched; Unrouted counts these
			rs.prom[rRejected+int(r)] = m.connRejected.WithLabelValues(rule, proto, r.String())
		}
	}
	rs.active = m.connActive.WithLabelValues(rule, proto)
	return rs
}

func (rs *routeSeries) shard(loop int) *routeShard { return &rs.shards[loop&(len(rs.shards)-1)] }

// sum is counter i over the shares.
func (rs *routeSeries) sum(i int) int64 {
	var n int64
	for j := range rs.shards {
		n += rs.shards[j].c[i].Load()
	}
	return n
}

func (rs *routeSeries) fold() {
	// Closes first: every close counted then had its open counted before
	// it, so the gauge never dips below the connections open.
	closed := rs.sum(rClosed)
	for i := range rCount {
		var n int64
		if i == rClosed {
			n = closed
		} else {
			n = rs.sum(i)
		}
		d := n - rs.done[i]
		if d <= 0 {
			continue
		}
		rs.done[i] = n
		switch {
		case i == rOpened:
			rs.prom[i].Add(float64(d))
			rs.active.Add(float64(d))
		case i == rClosed:
			rs.active.Sub(float64(d))
		case rs.prom[i] != nil:
			rs.prom[i].Add(float64(d))
		}
	}
}

// backendShard is one loop's share of a backend's series.
type backendShard struct {
	c        [bCount]atomic.Int64
	response hist
	_        [64]byte
}

// backendSeries is a backend's series (by rule and backend id).
type backendSeries struct {
	rule, id string
	shards   []backendShard
	prom     [bCount]prometheus.Counter // nil for the ends not of the rule's protocol; guarded by foldMu
	done     [bCount]int64
}

func newBackendSeries(rule, id string) *backendSeries {
	bs := &backendSeries{rule: rule, id: id, shards: make([]backendShard, backend.Shards())}
	for i := range bs.shards {
		bs.shards[i].response = newHist(responseBounds)
	}
	return bs
}

// resolve makes the Prometheus children of a backend of a rule of
// protocol proto (dns: a dns = true rule), under foldMu. A reload that
// changes the rule's protocol adds the new protocol's ends.
func (bs *backendSeries) resolve(m *Metrics, proto string, dns bool) {
	bs.prom[bSuccess] = m.beRequests.WithLabelValues(bs.rule, bs.id, ResultSuccess)
	bs.prom[bFailed] = m.beRequests.WithLabelValues(bs.rule, bs.id, ResultError)
	bs.prom[bTimeout] = m.beRequests.WithLabelValues(bs.rule, bs.id, ResultTimeout)
	if dns {
		bs.prom[bDNSUnanswered] = m.dnsDropped.WithLabelValues(bs.rule, bs.id, DNSUnanswered)
		bs.prom[bDNSUnmatched] = m.dnsDropped.WithLabelValues(bs.rule, bs.id, DNSUnmatched)
	}
	for _, end := range proxy.EndsOf(proto) {
		bs.prom[bEnded+int(end)] = m.beEnded.WithLabelValues(bs.rule, bs.id, end.String())
	}
}

func (bs *backendSeries) shard(loop int) *backendShard { return &bs.shards[loop&(len(bs.shards)-1)] }

func (bs *backendSeries) fold() {
	for i := range bCount {
		var n int64
		for j := range bs.shards {
			n += bs.shards[j].c[i].Load()
		}
		if d := n - bs.done[i]; d > 0 && bs.prom[i] != nil {
			bs.prom[i].Add(float64(d))
			bs.done[i] = n
		}
	}
}

// share is one loop's share of a single counter, a line of its own.
type share struct {
	n atomic.Int64
	_ [56]byte
}

// counterSeries is one counter series counted by loop: a router's
// selections of a backend, or its errors of one reason.
type counterSeries struct {
	shares []share
	prom   prometheus.Counter
	done   int64
}

func newCounterSeries(c prometheus.Counter) *counterSeries {
	return &counterSeries{shares: make([]share, backend.Shards()), prom: c}
}

func (cs *counterSeries) add(loop int) { cs.shares[loop&(len(cs.shares)-1)].n.Add(1) }

func (cs *counterSeries) fold() {
	var n int64
	for i := range cs.shares {
		n += cs.shares[i].n.Load()
	}
	if d := n - cs.done; d > 0 {
		cs.prom.Add(float64(d))
		cs.done = n
	}
}

// series are the data path's series by their labels, under foldMu.
type series struct {
	routes     map[[2]string]*routeSeries   // rule, protocol
	backends   map[[2]string]*backendSeries // rule, backend
	selections map[[4]string]*counterSeries // rule, router, plugin, backend
	errors     map[[4]string]*counterSeries // rule, router, plugin, reason
}

func newSeries() series {
	return series{routes: map[[2]string]*routeSeries{}, backends: map[[2]string]*backendSeries{},
		selections: map[[4]string]*counterSeries{}, errors: map[[4]string]*counterSeries{}}
}

// fold adds to the Prometheus counters what the loops counted since the
// last fold. The sums only grow, so the series stay exact: what is counted
// after a fold is in the next one.
func (m *Metrics) fold() {
	m.foldMu.Lock()
	defer m.foldMu.Unlock()
	for _, rs := range m.series.routes {
		rs.fold()
	}
	for _, bs := range m.series.backends {
		bs.fold()
	}
	for _, cs := range m.series.selections {
		cs.fold()
	}
	for _, cs := range m.series.errors {
		cs.fold()
	}
}

// folded is a registered counter or gauge family that is folded before
// it is collected.
type folded struct {
	m *Metrics
	c prometheus.Collector
}

func (f folded) Describe(ch chan<- *prometheus.Desc) { f.c.Describe(ch) }

func (f folded) Collect(ch chan<- prometheus.Metric) {
	f.m.fold()
	f.c.Collect(ch)
}

var (
	connDurationDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "connection_duration_seconds"),
		"How long client connections (UDP: sessions) lasted.", []string{"rule", "protocol"}, nil)
	reqDurationDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "request_duration_seconds"),
		"TCP: accept to close of proxied connections. UDP: client datagram to the backend's first reply.", []string{"rule", "protocol"}, nil)
	reqSizeDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "request_size_bytes"),
		"Bytes from the client per request (TCP: per connection; UDP: per datagram).", []string{"rule", "protocol"}, nil)
	respSizeDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "response_size_bytes"),
		"Bytes to the client per response (TCP: per connection; UDP: per reply datagram).", []string{"rule", "protocol"}, nil)
	beResponseDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "backend_response_seconds"),
		"TCP: time to connect to the backend. UDP: time from a client datagram to the backend's first reply.", []string{"rule", "backend"}, nil)
)

// histCollector collects the data path's histograms, summing each one's
// shares.
type histCollector struct{ m *Metrics }

func (h histCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{connDurationDesc, reqDurationDesc, reqSizeDesc, respSizeDesc, beResponseDesc} {
		ch <- d
	}
}

func (h histCollector) Collect(ch chan<- prometheus.Metric) {
	m := h.m
	m.foldMu.Lock()
	defer m.foldMu.Unlock()
	for _, rs := range m.series.routes {
		n := len(rs.shards)
		ch <- histogram(connDurationDesc, DurationBuckets, 1e9, n, func(i int) *hist { return &rs.shards[i].connDur }, rs.rule, rs.protocol)
		ch <- histogram(reqDurationDesc, DurationBuckets, 1e9, n, func(i int) *hist { return &rs.shards[i].reqDur }, rs.rule, rs.protocol)
		ch <- histogram(reqSizeDesc, SizeBuckets, 1, n, func(i int) *hist { return &rs.shards[i].reqSize }, rs.rule, rs.protocol)
		ch <- histogram(respSizeDesc, SizeBuckets, 1, n, func(i int) *hist { return &rs.shards[i].respSize }, rs.rule, rs.protocol)
	}
	for _, bs := range m.series.backends {
		ch <- histogram(beResponseDesc, ResponseBuckets, 1e9, len(bs.shards), func(i int) *hist { return &bs.shards[i].response }, bs.rule, bs.id)
	}
}
