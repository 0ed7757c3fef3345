package metrics

import (
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// TestListenerRejections: a listener's observer counts its refusals by
// reason, the same observer comes back for the same listener, and
// RetainListeners drops the series of a listener that is gone.
func TestListenerRejections(t *testing.T) {
	m, reg := newTest(t)
	o := m.ListenerObserver("tcp", "127.0.0.1:8000")
	if m.ListenerObserver("tcp", "127.0.0.1:8000") != o {
		t.Error("a second ListenerObserver of the same listener is another observer")
	}
	o.Rejected(proxy.ReasonMaxConnections)
	o.Rejected(proxy.ReasonMaxConnections)
	m.ListenerObserver("udp", "127.0.0.1:5353").Rejected(proxy.ReasonShutdown)
	key := `dynamic_proxy_listener_rejected_total{listener=127.0.0.1:8000,protocol=tcp,reason=max_connections}`
	udp := `dynamic_proxy_listener_rejected_total{listener=127.0.0.1:5353,protocol=udp,reason=shutdown}`
	expect(t, values(t, reg), map[string]float64{key: 2, udp: 1,
		`dynamic_proxy_listener_rejected_total{listener=127.0.0.1:8000,protocol=tcp,reason=no_rule}`: 0})

	m.RetainListeners([]string{"udp 127.0.0.1:5353"})
	got := values(t, reg)
	if _, ok := got[key]; ok {
		t.Error("the series of a listener no longer retained is still exported")
	}
	expect(t, got, map[string]float64{udp: 1})
	if m.ListenerObserver("tcp", "127.0.0.1:8000") == o {
		t.Error("a dropped listener's observer came back")
	}
}
