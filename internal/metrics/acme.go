package metrics

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dynamic-proxy/dynamic-proxy/internal/acme"
)

// ACME reports the state of every name managed by ACME, read from the
// manager at scrape time:
//
//	dynamic_proxy_acme_certificate_expiry_timestamp_seconds{rule,name}
//	dynamic_proxy_acme_renewal_timestamp_seconds{rule,name}
//	dynamic_proxy_acme_certificate_present{rule,name}
//	dynamic_proxy_acme_orders_obtained_total{rule,name}
//	dynamic_proxy_acme_orders_failed_total{rule,name}
//	dynamic_proxy_acme_last_error_timestamp_seconds{rule,name}
type ACME struct {
	src                                         atomic.Pointer[func() []acme.NameState]
	expiry, renewal, present, ok, failed, lastE *prometheus.Desc
}

// NewACME registers the ACME collector on reg; SetSource gives it the
// manager (nothing is reported before).
func NewACME(reg prometheus.Registerer) (*ACME, error) {
	l := []string{"rule", "name"}
	d := func(n, help string) *prometheus.Desc { return prometheus.NewDesc(Namespace+"_acme_"+n, help, l, nil) }
	m := &ACME{
		expiry:  d("certificate_expiry_timestamp_seconds", "When the certificate served for a name managed by ACME expires (Unix time); absent while it has none."),
		renewal: d("renewal_timestamp_seconds", "About when that certificate will be renewed: a third of its lifetime left (Unix time); absent while it has none."),
		present: d("certificate_present", "1 when a name managed by ACME has a certificate to serve, 0 while it has none (being obtained, or failing)."),
		ok:      d("orders_obtained_total", "Certificates this instance obtained or renewed for the name."),
		failed:  d("orders_failed_total", "Orders of this instance for the name that failed (retried with backoff)."),
		lastE:   d("last_error_timestamp_seconds", "When the last failed order of the name failed (Unix time); 0 when the last one succeeded or none failed."),
	}
	return m, reg.Register(acmeCollector{m})
}

// SetSource sets where the states are read (acme.Manager.State).
func (m *ACME) SetSource(f func() []acme.NameState) { m.src.Store(&f) }

type acmeCollector struct{ m *ACME }

func (c acmeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.m.expiry, c.m.renewal, c.m.present, c.m.ok, c.m.failed, c.m.lastE} {
		ch <- d
	}
}

func (c acmeCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.m.src.Load()
	if f == nil {
		return
	}
	for _, s := range (*f)() {
		present := 0.0
		if !s.NotAfter.IsZero() {
			present = 1
			ch <- prometheus.MustNewConstMetric(c.m.expiry, prometheus.GaugeValue, float64(s.NotAfter.Unix()), s.Rule, s.Name)
			ch <- prometheus.MustNewConstMetric(c.m.renewal, prometheus.GaugeValue, float64(s.NextRenewal.Unix()), s.Rule, s.Name)
		}
		ch <- prometheus.MustNewConstMetric(c.m.present, prometheus.GaugeValue, present, s.Rule, s.Name)
		ch <- prometheus.MustNewConstMetric(c.m.ok, prometheus.CounterValue, float64(s.Obtained), s.Rule, s.Name)
		ch <- prometheus.MustNewConstMetric(c.m.failed, prometheus.CounterValue, float64(s.Failed), s.Rule, s.Name)
		last := 0.0
		if !s.LastErrorAt.IsZero() {
			last = float64(s.LastErrorAt.Unix())
		}
		ch <- prometheus.MustNewConstMetric(c.m.lastE, prometheus.GaugeValue, last, s.Rule, s.Name)
	}
}
