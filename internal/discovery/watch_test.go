package discovery

import (
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"

	"github.com/dynamic-proxy/dynamic-proxy/internal/config"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeDNS is an in-process DNS server on a loopback UDP socket whose A
// answer for web.test the test sets, or makes SERVFAIL.
type fakeDNS struct {
	addr     string
	mu       sync.Mutex
	ips      []string
	servfail bool
	queries  atomic.Int64
}

func startFakeDNS(t *testing.T, ips ...string) *fakeDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDNS{addr: pc.LocalAddr().String(), ips: ips}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) }, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		f.queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(q)
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.servfail {
			m.Rcode = dns.RcodeServerFailure
		} else if q.Question[0].Qtype == dns.TypeA && strings.EqualFold(q.Question[0].Name, "web.test.") {
			for _, ip := range f.ips {
				rr, _ := dns.NewRR("web.test. 1 IN A " + ip)
				m.Answer = append(m.Answer, rr)
			}
		}
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	return f
}

func (f *fakeDNS) set(servfail bool, ips ...string) {
	f.mu.Lock()
	f.servfail, f.ips = servfail, ips
	f.mu.Unlock()
}

// TestManagerFollowsTheAnswer: a watched name's endpoints follow its DNS
// answer, a SERVFAIL keeps them, a settings change keeps the watcher (and
// its answer), and Close stops every goroutine.
func TestManagerFollowsTheAnswer(t *testing.T) {
	f := startFakeDNS(t, "127.0.0.2", "127.0.0.3")
	var changes atomic.Int64
	m := NewManager(slog.New(slog.NewTextHandler(io.Discard, nil)), func() { changes.Add(1) })
	defer m.Close()
	d := config.Discovery{Name: "web.test:80", Type: "a", Resolver: f.addr, MinTTL: config.Duration(10 * time.Millisecond),
		MaxTTL: config.Duration(20 * time.Millisecond), Timeout: config.Duration(time.Second), EmptyGrace: config.Duration(time.Hour), Weight: 1}
	m.Sync([]Spec{{Rule: "r", D: d}})
	addrs := func() string {
		eps, _ := m.Endpoints("r", d)
		var s []string
		for _, e := range eps {
			s = append(s, e.Addr.String())
		}
		return strings.Join(s, ",")
	}
	harness.Eventually(t, "the first answer", func() bool { return addrs() == "127.0.0.2:80,127.0.0.3:80" })
	f.set(false, "127.0.0.2", "127.0.0.3", "127.0.0.4")
	harness.Eventually(t, "the added address", func() bool { return addrs() == "127.0.0.2:80,127.0.0.3:80,127.0.0.4:80" })
	if changes.Load() < 2 {
		t.Fatalf("%d change callbacks, want one per answer", changes.Load())
	}
	f.set(true)
	harness.Eventually(t, "failures counted", func() bool { return m.Statuses()[0].State.Failures >= 2 })
	if got := addrs(); got != "127.0.0.2:80,127.0.0.3:80,127.0.0.4:80" {
		t.Fatalf("after SERVFAIL the endpoints are %q, want the last good answer", got)
	}
	if st := m.Statuses()[0].State; !strings.Contains(st.LastError, "SERVFAIL") {
		t.Fatalf("last error %q", st.LastError)
	}
	f.set(false)
	harness.Eventually(t, "the empty answer to be seen", func() bool { return !m.Statuses()[0].State.EmptySince.IsZero() })
	if got := addrs(); got != "127.0.0.2:80,127.0.0.3:80,127.0.0.4:80" {
		t.Fatalf("an empty answer within the grace changed the endpoints to %q", got)
	}
	// New bounds, same name and resolver: the same watcher, its answer kept.
	d2 := d
	d2.EmptyGrace = config.Duration(0)
	m.Sync([]Spec{{Rule: "r", D: d2}})
	harness.Eventually(t, "the empty answer applied with no grace", func() bool { return addrs() == "" })
	if st := m.Statuses(); len(st) != 1 || st[0].State.Refreshes < 3 {
		t.Fatalf("statuses after the settings change: %+v", st)
	}
	m.Sync(nil)
	if len(m.Statuses()) != 0 {
		t.Fatal("a name no longer listed is still watched")
	}
}
