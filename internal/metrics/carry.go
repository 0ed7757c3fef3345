package metrics

import (
	"slices"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// A binary upgrade carries the counters over (internal/upgrade): the old
// process sends what its counters have counted (Carry), and the new one,
// which counts from zero what it serves itself, adds them to its own series
// (AddCarried). Each connection is counted by the one process that accepted
// it, and each byte by the one that moved it (a handed-over connection is
// not counted again as opened), so a dashboard sees neither a reset nor a
// double count.

// Carried is one counter series' value.
type Carried struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
	Value  float64           `json:"value"`
}

// counters are the carried counter families, by name.
func (m *Metrics) counters() map[string]*prometheus.CounterVec {
	return map[string]*prometheus.CounterVec{
		"connections_total": m.connTotal, "connections_rejected_total": m.connRejected,
		"listener_rejected_total": m.lnRejected, "requests_total": m.requests, "bytes_total": m.bytes,
		"backend_requests_total": m.beRequests, "connections_ended_total": m.beEnded,
		"health_checks_total": m.healthChecks, "router_selections_total": m.selections,
		"router_errors_total": m.routerErrors,
	}
}

// eachSeries reads every series of vec with its labels.
func eachSeries(vec *prometheus.CounterVec, f func(labels map[string]string, v float64)) {
	ch := make(chan prometheus.Metric, 64)
	go func() { vec.Collect(ch); close(ch) }()
	for mt := range ch {
		var d dto.Metric
		if mt.Write(&d) != nil || d.Counter == nil {
			continue
		}
		labels := make(map[string]string, len(d.Label))
		for _, l := range d.Label {
			labels[l.GetName()] = l.GetValue()
		}
		f(labels, d.Counter.GetValue())
	}
}

// Carry returns the value of every counter series (histograms and gauges
// are not carried: the gauges are read from live state, the histograms
// start again).
func (m *Metrics) Carry() []Carried {
	m.fold()
	var out []Carried
	for name, vec := range m.counters() {
		eachSeries(vec, func(labels map[string]string, v float64) {
			if v > 0 {
				out = append(out, Carried{Name: name, Labels: labels, Value: v})
			}
		})
	}
	return out
}

// AddCarried adds the old process's counts to the series this process has
// (those of its current rules, backends and listeners; a series it does
// not have is left out, as a reload removes it) and returns how many it
// added to.
func (m *Metrics) AddCarried(cs []Carried) int {
	vecs := m.counters()
	have := map[string]map[string]bool{}
	for name, vec := range vecs {
		have[name] = map[string]bool{}
		eachSeries(vec, func(labels map[string]string, _ float64) { have[name][labelKey(labels)] = true })
	}
	n := 0
	for _, c := range cs {
		vec := vecs[c.Name]
		if vec == nil || !have[c.Name][labelKey(c.Labels)] || c.Value <= 0 {
			continue
		}
		ctr, err := vec.GetMetricWith(c.Labels)
		if err != nil {
			continue
		}
		ctr.Add(c.Value)
		n++
	}
	return n
}

// labelKey is a label set as a comparable string.
func labelKey(labels map[string]string) string {
	names := make([]string, 0, len(labels))
	for k := range labels {
		names = append(names, k)
	}
	slices.Sort(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k + "\x00" + labels[k] + "\x00")
	}
	return b.String()
}
