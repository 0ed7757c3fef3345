package engine

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// listenerMetrics is countingMetrics with listener observers.
type listenerMetrics struct {
	countingMetrics
	lmu      sync.Mutex
	made     map[string]*listenerCount
	retained [][]string
}

type listenerCount struct{ _ int } // not zero-sized: each is its own pointer

func (c *listenerCount) Rejected(proxy.Reason) {}

func (m *listenerMetrics) ListenerObserver(protocol, address string) proxy.ListenerObserver {
	m.lmu.Lock()
	defer m.lmu.Unlock()
	k := protocol + " " + address
	if m.made[k] == nil {
		m.made[k] = &listenerCount{}
	}
	return m.made[k]
}

func (m *listenerMetrics) RetainListeners(keys []string) {
	m.lmu.Lock()
	defer m.lmu.Unlock()
	m.retained = append(m.retained, keys)
}

// TestListenerTables: the engine gives each listener its own options,
// from its first enabled rule (accept_proxy_protocol and trusted_proxies,
// which the rules agree on, peek_timeout, the UDP session_timeout), and
// the listener's observer from the metrics collector.
func TestListenerTables(t *testing.T) {
	a := echo(t, "a")
	e, _ := newEngine(t)
	m := &listenerMetrics{made: map[string]*listenerCount{}}
	e.SetMetrics(m)
	cfg := fmt.Sprintf(`
[server]
tcp_bind = "127.0.0.1:0"
udp_bind = "127.0.0.1:0"
peek_timeout = "2s"
[health_check]
enabled = false
[[rules]]
name = "web"
accept_proxy_protocol = true
trusted_proxies = ["127.0.0.0/8"]
[[rules.backends]]
id = "a"
address = %q
[[rules]]
name = "dns-local"
protocol = "udp"
session_timeout = "5s"
[rules.matcher]
type = "source"
cidrs = ["127.0.0.5/32"]
[[rules.backends]]
id = "d"
address = "127.0.0.1:53"
[[rules]]
name = "dns"
protocol = "udp"
session_timeout = "9s"
[[rules.backends]]
id = "d"
address = "127.0.0.1:53"
`, a)
	if _, err := e.Apply(parse(t, cfg)); err != nil {
		t.Fatal(err)
	}
	lns := e.Listeners()
	table := func(key string) proxy.Table {
		l, ok := lns[key].(interface{ Table() proxy.Table })
		if !ok {
			t.Fatalf("no listener %q with a table: %v", key, lns)
		}
		return l.Table()
	}
	tcp, udp := table("tcp 127.0.0.1:0"), table("udp 127.0.0.1:0")
	if o := tcp.Options; !o.AcceptProxy || len(o.Trusted) != 1 || o.Trusted[0] != netip.MustParsePrefix("127.0.0.0/8") || o.PeekTimeout != 2*time.Second {
		t.Errorf("tcp listener options %+v", o)
	}
	if o := udp.Options; o.SessionTimeout != 5*time.Second || o.AcceptProxy {
		t.Errorf("udp listener options %+v, want the first rule's session_timeout 5s", o)
	}
	if len(udp.Routes) != 2 || udp.Routes[0].Name != "dns-local" || udp.Routes[1].Name != "dns" {
		t.Errorf("udp routes %v", routeNames(udp.Routes))
	}
	if tcp.Options.Observer != m.made["tcp 127.0.0.1:0"] || udp.Options.Observer != m.made["udp 127.0.0.1:0"] || tcp.Options.Observer == nil {
		t.Errorf("listener observers %v %v, made %v", tcp.Options.Observer, udp.Options.Observer, m.made)
	}
	m.lmu.Lock()
	defer m.lmu.Unlock()
	if len(m.retained) != 1 || len(m.retained[0]) != 2 {
		t.Errorf("RetainListeners calls %v, want one with both listeners", m.retained)
	}
}
