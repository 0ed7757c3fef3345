package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
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

var (
	dataPathFDsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "data_path_descriptors"),
		"Descriptors the data path holds: 2 per TCP connection, 1 per UDP session, 2 per splice pipe (pooled or in use).", nil, nil)
	fdBudgetDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "data_path_descriptor_budget"),
		"Descriptors the data path may hold: the limit (process_max_fds) less the reserve and what else the process held at the last count.", nil, nil)
	fdReserveDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "descriptor_reserve"),
		"Descriptors the data path leaves free for the admin API, metrics and health checks.", nil, nil)
	fdRefusedDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "descriptor_budget_refusals_total"),
		"Times the data path was at its descriptor budget: kind tcp_accept (an event loop paused accepting; clients wait in the backlog), udp_session (a new client's datagram dropped), splice_pipe (a burst copied instead of spliced).",
		[]string{"kind"}, nil)
	quicPeeksDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "udp_quic_peeks_total"),
		"New UDP clients whose QUIC ClientHello was read for an sni or alpn matcher, by result: hello (read), not_quic (not a readable QUIC Initial), malformed, timeout (peek_timeout), overflow (too many datagrams held).",
		[]string{"result"}, nil)
	quicMigrationsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "udp_quic_migrations_total"),
		"QUIC sessions (rules with quic = true) whose client address changed and that followed it by connection id.", nil, nil)
	quicCIDsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "udp_quic_connection_ids"),
		"QUIC connection ids the UDP listeners know now, each tied to a session.", nil, nil)
	maxConnsDesc = prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "max_connections"),
		"The cap on concurrent TCP client connections in force: server.max_connections, or less when the descriptor limit cannot give it; 0: none.", nil, nil)
)

// serverCollector reports the proxy server's descriptor budget when
// scraped (the server keeps it in atomics anyway).
type serverCollector struct{ s atomic.Pointer[proxy.Server] }

func (c *serverCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- dataPathFDsDesc
	ch <- fdBudgetDesc
	ch <- fdReserveDesc
	ch <- fdRefusedDesc
	ch <- maxConnsDesc
	ch <- quicPeeksDesc
	ch <- quicMigrationsDesc
	ch <- quicCIDsDesc
}

func (c *serverCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s.Load()
	if s == nil {
		return
	}
	d := s.Descriptors()
	ch <- prometheus.MustNewConstMetric(dataPathFDsDesc, prometheus.GaugeValue, float64(d.DataPath))
	if d.Limit > 0 {
		ch <- prometheus.MustNewConstMetric(fdBudgetDesc, prometheus.GaugeValue, float64(d.Budget))
		ch <- prometheus.MustNewConstMetric(fdReserveDesc, prometheus.GaugeValue, float64(d.Reserve))
	}
	for k, n := range d.Refused {
		ch <- prometheus.MustNewConstMetric(fdRefusedDesc, prometheus.CounterValue, float64(n), proxy.RefusedNames[k])
	}
	ch <- prometheus.MustNewConstMetric(maxConnsDesc, prometheus.GaugeValue, float64(s.MaxConnections()))
	q := &s.QUIC
	for r := range proxy.NumQUICPeekResults {
		ch <- prometheus.MustNewConstMetric(quicPeeksDesc, prometheus.CounterValue, float64(q.Peeks[r].Load()), r.String())
	}
	ch <- prometheus.MustNewConstMetric(quicMigrationsDesc, prometheus.CounterValue, float64(q.Migrations.Load()))
	ch <- prometheus.MustNewConstMetric(quicCIDsDesc, prometheus.GaugeValue, float64(q.ConnectionIDs.Load()))
}

// SetServer makes the scrape report s's descriptor budget and connection
// cap (the engine calls it from SetMetrics).
func (m *Metrics) SetServer(s *proxy.Server) { m.server.s.Store(s) }
