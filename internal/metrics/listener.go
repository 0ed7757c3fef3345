package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// listenerReasons are the reasons a listener of each protocol counts: the
// refusals that belong to no rule (rule-level ones stay on
// connections_rejected_total of their rule).
var listenerReasons = map[string][]proxy.Reason{
	"tcp": {proxy.ReasonMaxConnections, proxy.ReasonNoRule, proxy.ReasonUntrustedProxy, proxy.ReasonBadProxyHeader, proxy.ReasonClientError},
	"udp": {proxy.ReasonShutdown, proxy.ReasonNoRule, proxy.ReasonDNSMalformed},
}

// listenerObserver is one listener's proxy.ListenerObserver, with its
// series resolved.
type listenerObserver struct {
	protocol, address string
	rejected          [proxy.NumReasons]prometheus.Counter
}

func (o *listenerObserver) Rejected(r proxy.Reason) {
	if r < proxy.NumReasons && o.rejected[r] != nil {
		o.rejected[r].Inc()
	}
}

// ListenerObserver returns the observer of the listener on address
// (as configured) for protocol, the same one for as long as the listener
// is retained (engine.ListenerMetrics).
func (m *Metrics) ListenerObserver(protocol, address string) proxy.ListenerObserver {
	key := protocol + " " + address
	m.mu.Lock()
	defer m.mu.Unlock()
	if o := m.listeners[key]; o != nil {
		return o
	}
	o := &listenerObserver{protocol: protocol, address: address}
	for _, r := range listenerReasons[protocol] {
		o.rejected[r] = m.lnRejected.WithLabelValues(address, protocol, r.String())
	}
	if m.listeners == nil {
		m.listeners = map[string]*listenerObserver{}
	}
	m.listeners[key] = o
	return o
}

// RetainListeners drops the observers and series of listeners not in keys
// (listen keys, "tcp 127.0.0.1:8000").
func (m *Metrics) RetainListeners(keys []string) {
	keep := make(map[string]bool, len(keys))
	for _, k := range keys {
		keep[k] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, o := range m.listeners {
		if keep[k] {
			continue
		}
		for _, r := range listenerReasons[o.protocol] {
			m.lnRejected.DeleteLabelValues(o.address, o.protocol, r.String())
		}
		delete(m.listeners, k)
	}
}
