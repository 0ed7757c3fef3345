package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

var (
	backendUpDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "backend_up"),
		"1 when the backend's health is up, 0 when its health check or passive detection marked it down.",
		[]string{"rule", "backend"}, nil)
	backendActiveDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "backend_connections_active"),
		"Connections (UDP: sessions) open to the backend now.",
		[]string{"rule", "backend"}, nil)
)

// stateCollector reports the backends' live state when scraped: their health
// and active connections are atomics the data path keeps anyway, so reading
// them at scrape time costs the data path nothing and cannot drift.
type stateCollector struct{ m *Metrics }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- backendUpDesc
	ch <- backendActiveDesc
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	for _, rt := range c.m.current.Load().routes {
		for _, b := range rt.Backends {
			up := 0.0
			if b.Health().Up() {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(backendUpDesc, prometheus.GaugeValue, up, rt.Name, b.ID)
			ch <- prometheus.MustNewConstMetric(backendActiveDesc, prometheus.GaugeValue, float64(b.Active()), rt.Name, b.ID)
		}
	}
}

func newGoCollector() prometheus.Collector { return collectors.NewGoCollector() }

func newProcessCollector() prometheus.Collector {
	return collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})
}
