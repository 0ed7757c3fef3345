package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dynamic-proxy/dynamic-proxy/internal/discovery"
)

// discoveryCollectors count the refreshes of the DNS names rules discover
// backends from ([[rules.discovery]]), per rule and name.
type discoveryCollectors struct {
	refreshes *prometheus.CounterVec // rule, name, result
	failures  *prometheus.CounterVec // rule, name
	endpoints *prometheus.GaugeVec   // rule, name
}

func newDiscoveryCollectors() discoveryCollectors {
	return discoveryCollectors{
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "discovery_refreshes_total", Help: "DNS refreshes of a discovered name, by result: changed (a new answer applied), unchanged, kept (the lookup failed: the last good answer stays), empty_pending (empty or NXDOMAIN, within empty_grace)."},
			[]string{"rule", "name", "result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "discovery_failures_total", Help: "DNS refreshes of a discovered name that failed (SERVFAIL, REFUSED, timeout, unreachable server); the last good answer stays."},
			[]string{"rule", "name"}),
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: Namespace,
			Name: "discovery_endpoints", Help: "Backends the answer in effect of a discovered name gives."},
			[]string{"rule", "name"}),
	}
}

func (d *discoveryCollectors) collectors() []prometheus.Collector {
	return []prometheus.Collector{d.refreshes, d.failures, d.endpoints}
}

var _ discovery.Observer = (*Metrics)(nil)

// DiscoveryRefreshed counts one refresh of a discovered name
// (discovery.Observer).
func (m *Metrics) DiscoveryRefreshed(rule, name string, o discovery.Outcome, endpoints int) {
	m.discovery.refreshes.WithLabelValues(rule, name, o.String()).Inc()
	m.discovery.failures.WithLabelValues(rule, name).Add(0)
	if o == discovery.Kept {
		m.discovery.failures.WithLabelValues(rule, name).Inc()
	}
	m.discovery.endpoints.WithLabelValues(rule, name).Set(float64(endpoints))
}

// DiscoveryRemoved drops the series of a name no longer watched.
func (m *Metrics) DiscoveryRemoved(rule, name string) {
	l := prometheus.Labels{"rule": rule, "name": name}
	m.discovery.refreshes.DeletePartialMatch(l)
	m.discovery.failures.DeletePartialMatch(l)
	m.discovery.endpoints.DeletePartialMatch(l)
}
