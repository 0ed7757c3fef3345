package metrics

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dynamic-proxy/dynamic-proxy/internal/tlsconf"
)

// Label values of tls_handshakes_total's result.
const (
	HandshakeFull    = "full"    // a full handshake
	HandshakeResumed = "resumed" // resumed from a session ticket
	HandshakeFailed  = "failed"  // failed (the version label is then "")
)

// HandshakeBuckets for tls_handshake_duration_seconds: 250 µs to 10 s
// (the handshake timeout).
var HandshakeBuckets = []float64{.00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// handshakeVersions are the version label values of successful handshakes.
var handshakeVersions = [...]uint16{0x0301, 0x0302, 0x0303, 0x0304}

// TLS holds the metrics of TLS termination. They are registered apart
// from New's collectors (NewTLS) so that a proxy without TLS rules
// exports none of them.
type TLS struct {
	handshakes *prometheus.CounterVec   // rule, result, version
	duration   *prometheus.HistogramVec // rule, result
	servers    atomic.Pointer[map[string]*tlsconf.Server]
	expiry     *prometheus.Desc // rule, cert

	mu   sync.Mutex
	made map[string]bool // rules Observer resolved series for
}

// NewTLS registers the TLS collectors on reg:
//
//	dynamic_proxy_tls_handshakes_total{rule,result,version}
//	dynamic_proxy_tls_handshake_duration_seconds{rule,result}
//	dynamic_proxy_tls_certificate_expiry_seconds{rule,cert}
func NewTLS(reg prometheus.Registerer) (*TLS, error) {
	m := &TLS{
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace,
			Name: "tls_handshakes_total", Help: "TLS handshakes of terminating rules, by result (full, resumed, failed) and negotiated version (\"\" when failed)."},
			[]string{"rule", "result", "version"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: Namespace,
			Name: "tls_handshake_duration_seconds", Help: "How long TLS handshakes of terminating rules took, by result.", Buckets: HandshakeBuckets},
			[]string{"rule", "result"}),
		expiry: prometheus.NewDesc(Namespace+"_tls_certificate_expiry_seconds",
			"Seconds until each served certificate expires (negative once expired), by rule and certificate file.", []string{"rule", "cert"}, nil),
		made: map[string]bool{},
	}
	for _, c := range []prometheus.Collector{m.handshakes, m.duration, tlsCollector{m}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Observer returns the handshake observer of a rule, its series resolved
// once, to give tlsconf.NewServer.
func (m *TLS) Observer(rule string) tlsconf.Observer {
	m.mu.Lock()
	m.made[rule] = true
	m.mu.Unlock()
	o := &tlsObserver{
		failed:     m.handshakes.WithLabelValues(rule, HandshakeFailed, ""),
		failedTime: m.duration.WithLabelValues(rule, HandshakeFailed),
		fullTime:   m.duration.WithLabelValues(rule, HandshakeFull),
		resTime:    m.duration.WithLabelValues(rule, HandshakeResumed),
	}
	for i, v := range handshakeVersions {
		o.full[i] = m.handshakes.WithLabelValues(rule, HandshakeFull, tlsconf.VersionName(v))
		o.resumed[i] = m.handshakes.WithLabelValues(rule, HandshakeResumed, tlsconf.VersionName(v))
	}
	return o
}

// Retain sets the terminating servers by rule, whose certificates the
// expiry gauge reads at scrape time, and deletes the handshake series of
// rules no longer among them. The engine calls it after each apply.
func (m *TLS) Retain(servers map[string]*tlsconf.Server) {
	m.servers.Store(&servers)
	m.mu.Lock()
	defer m.mu.Unlock()
	for rule := range m.made {
		if _, ok := servers[rule]; !ok {
			m.handshakes.DeletePartialMatch(prometheus.Labels{"rule": rule})
			m.duration.DeletePartialMatch(prometheus.Labels{"rule": rule})
			delete(m.made, rule)
		}
	}
}

type tlsObserver struct {
	full, resumed                 [len(handshakeVersions)]prometheus.Counter
	failed                        prometheus.Counter
	failedTime, fullTime, resTime prometheus.Observer
}

func (o *tlsObserver) Handshake(version uint16, resumed bool, d time.Duration, err error) {
	i := int(version) - int(handshakeVersions[0])
	if err != nil || i < 0 || i >= len(handshakeVersions) {
		o.failed.Inc()
		o.failedTime.Observe(d.Seconds())
		return
	}
	if resumed {
		o.resumed[i].Inc()
		o.resTime.Observe(d.Seconds())
		return
	}
	o.full[i].Inc()
	o.fullTime.Observe(d.Seconds())
}

// tlsCollector reports certificate expiry from the servers at scrape time,
// so a reloaded certificate shows at once and the value counts down.
type tlsCollector struct{ m *TLS }

func (c tlsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.expiry }

func (c tlsCollector) Collect(ch chan<- prometheus.Metric) {
	p := c.m.servers.Load()
	if p == nil {
		return
	}
	now := time.Now()
	for rule, s := range *p {
		for _, ci := range s.Certificates() {
			ch <- prometheus.MustNewConstMetric(c.m.expiry, prometheus.GaugeValue, ci.NotAfter.Sub(now).Seconds(), rule, ci.Cert)
		}
	}
}
