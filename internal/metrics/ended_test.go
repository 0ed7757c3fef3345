package metrics

import (
	"strings"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// TestConnectionsEnded: how TCP connections and UDP sessions end is counted
// per backend and end, every end of the rule's protocol starts at 0 (and
// no other), and a backend a reload removed loses its series.
func TestConnectionsEnded(t *testing.T) {
	m, reg := newTest(t)
	b1 := backend.New("web", "b1", "127.0.0.1:9001", 1, nil)
	b2 := backend.New("web", "b2", "127.0.0.1:9002", 1, nil)
	u := backend.New("dns", "u1", "127.0.0.1:53", 1, nil)
	rt := route("web", "tcp", "rr", "round_robin", b1, b2)
	o := m.Observer(rt)
	udp := route("dns", "udp", "rr", "round_robin", u)
	uo := m.Observer(udp)
	m.Retain([]*proxy.Route{rt, udp})

	closed := func(o proxy.Observer, b *backend.Backend, end proxy.End) {
		o.ConnOpened(0)
		o.ConnClosed(0, b, end, 0, 0, 0)
	}
	closed(o, b1, proxy.EndEOF)
	closed(o, b1, proxy.EndBackendError)
	closed(o, b1, proxy.EndBackendError)
	closed(o, b2, proxy.EndIdleTimeout)
	closed(o, b2, proxy.EndMaxResponses) // not a TCP end: ignored, never a new series
	closed(o, b2, proxy.NumEnds+3)       // out of range: ignored
	closed(o, nil, proxy.EndNoBackend)   // no backend: not counted per backend
	closed(uo, u, proxy.EndMaxResponses)
	closed(uo, u, proxy.EndBackendRefused)
	v := values(t, reg)
	want := map[string]float64{}
	for _, b := range []string{"b1", "b2"} {
		for _, end := range proxy.EndsOf("tcp") {
			want[`dynamic_proxy_connections_ended_total{backend=`+b+`,end=`+end.String()+`,rule=web}`] = 0
		}
	}
	for _, end := range proxy.EndsOf("udp") {
		want[`dynamic_proxy_connections_ended_total{backend=u1,end=`+end.String()+`,rule=dns}`] = 0
	}
	want[`dynamic_proxy_connections_ended_total{backend=b1,end=eof,rule=web}`] = 1
	want[`dynamic_proxy_connections_ended_total{backend=b1,end=backend_error,rule=web}`] = 2
	want[`dynamic_proxy_connections_ended_total{backend=b2,end=idle_timeout,rule=web}`] = 1
	want[`dynamic_proxy_connections_ended_total{backend=u1,end=max_responses,rule=dns}`] = 1
	want[`dynamic_proxy_connections_ended_total{backend=u1,end=backend_refused,rule=dns}`] = 1
	expect(t, v, want)
	for k := range v {
		if strings.HasPrefix(k, "dynamic_proxy_connections_ended_total") {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected series %s", k)
			}
		}
	}

	// A reload without b2: its series go.
	rt2 := route("web", "tcp", "rr", "round_robin", b1)
	m.Observer(rt2)
	m.Retain([]*proxy.Route{rt2, udp})
	for k := range values(t, reg) {
		if strings.Contains(k, "connections_ended_total") && strings.Contains(k, "backend=b2") {
			t.Errorf("series of a removed backend survived: %s", k)
		}
	}
}
