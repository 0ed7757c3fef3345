package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

var (
	fleetInstancesDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "fleet_limits", "instances"),
		"Instances sharing the fleet-wide access limits, as the last good sync saw them (this one included).", nil, nil)
	fleetSyncedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "fleet_limits", "synced"),
		"1 while the fleet-wide access limits are synced through Redis; 0 while each is this instance's share (the limit / instances).", nil, nil)
	fleetSyncsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "fleet_limits", "syncs_total"),
		"Syncs of the fleet-wide access limits with Redis, by result (success, failure).", []string{"result"}, nil)
	fleetConnsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "fleet_limits", "connections"),
		"Open connections (UDP: sessions) of the clients under the rule's fleet_max_connections_per_ip: scope local (this instance) or fleet (every instance, as last synced).",
		[]string{"rule", "scope"}, nil)
	fleetAdmitsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "fleet_limits", "admitted_total"),
		"New connections (UDP: sessions) counted by the rule's fleet-wide rate limits: scope local (admitted by this instance) or fleet (by every instance, as synced).",
		[]string{"rule", "scope"}, nil)
)

// fleetCollector reports the fleet-wide access limits' counts when scraped.
type fleetCollector struct {
	f atomic.Pointer[proxy.FleetLimits]
}

func (c *fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- fleetInstancesDesc
	ch <- fleetSyncedDesc
	ch <- fleetSyncsDesc
	ch <- fleetConnsDesc
	ch <- fleetAdmitsDesc
}

func (c *fleetCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.f.Load()
	if f == nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(fleetInstancesDesc, prometheus.GaugeValue, float64(f.Instances()))
	synced := 0.0
	if f.Synced() {
		synced = 1
	}
	ch <- prometheus.MustNewConstMetric(fleetSyncedDesc, prometheus.GaugeValue, synced)
	ok, failed := f.Syncs()
	ch <- prometheus.MustNewConstMetric(fleetSyncsDesc, prometheus.CounterValue, float64(ok), ResultSuccess)
	ch <- prometheus.MustNewConstMetric(fleetSyncsDesc, prometheus.CounterValue, float64(failed), ResultFailure)
	for _, s := range f.Stats() {
		if s.ConnLimited {
			ch <- prometheus.MustNewConstMetric(fleetConnsDesc, prometheus.GaugeValue, float64(s.LocalConns), s.Rule, "local")
			ch <- prometheus.MustNewConstMetric(fleetConnsDesc, prometheus.GaugeValue, float64(s.FleetConns), s.Rule, "fleet")
		}
		if s.RateLimited {
			ch <- prometheus.MustNewConstMetric(fleetAdmitsDesc, prometheus.CounterValue, float64(s.LocalAdmits), s.Rule, "local")
			ch <- prometheus.MustNewConstMetric(fleetAdmitsDesc, prometheus.CounterValue, float64(s.FleetAdmits), s.Rule, "fleet")
		}
	}
}

// SetFleetLimits makes the scrape report f's counts (the engine calls it).
func (m *Metrics) SetFleetLimits(f *proxy.FleetLimits) { m.fleet.f.Store(f) }
