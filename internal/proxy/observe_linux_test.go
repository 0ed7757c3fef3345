package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// recObserver records every Observer event.
type recObserver struct {
	mu                            sync.Mutex
	opened, closed, picked        int
	pickFailed                    []error
	rejected                      map[Reason]int
	connected                     map[*backend.Backend][]error
	bytesIn, bytesOut             int64
	requests                      int
	reqIn, reqOut                 int64
	changed                       chan struct{}
	datagrams, replies, replyRTTs int
	ends                          []End // of the connections that reached a backend
}

func newRecObserver() *recObserver {
	return &recObserver{rejected: map[Reason]int{}, connected: map[*backend.Backend][]error{}, changed: make(chan struct{}, 1000)}
}

func (o *recObserver) note(f func()) {
	o.mu.Lock()
	f()
	o.mu.Unlock()
	o.changed <- struct{}{}
}

func (o *recObserver) ConnOpened(int) { o.note(func() { o.opened++ }) }
func (o *recObserver) ConnClosed(_ int, b *backend.Backend, end End, _ time.Duration, in, out int64) {
	o.note(func() {
		o.closed++
		if b != nil {
			o.ends = append(o.ends, end)
			o.requests++
			o.reqIn += in
			o.reqOut += out
		}
	})
}

func (o *recObserver) Rejected(_ int, r Reason) { o.rejectedOn(r) }

// recListener is a recObserver as a ListenerObserver.
type recListener struct{ *recObserver }

func (o recListener) Rejected(r Reason) { o.rejectedOn(r) }

func (o *recObserver) rejectedOn(r Reason)          { o.note(func() { o.rejected[r]++ }) }
func (o *recObserver) Picked(int, *backend.Backend) { o.note(func() { o.picked++ }) }
func (o *recObserver) PickFailed(_ int, err error) {
	o.note(func() { o.pickFailed = append(o.pickFailed, err) })
}
func (o *recObserver) BytesIn(_ int, n int64)  { o.note(func() { o.bytesIn += n }) }
func (o *recObserver) BytesOut(_ int, n int64) { o.note(func() { o.bytesOut += n }) }
func (o *recObserver) Datagram(int, *backend.Backend, int, error) {
	o.note(func() { o.datagrams++ })
}
func (o *recObserver) Reply(_ int, _ *backend.Backend, _ int, rtt time.Duration) {
	o.note(func() {
		o.replies++
		if rtt > 0 {
			o.replyRTTs++
		}
	})
}
func (o *recObserver) Connected(_ int, b *backend.Backend, _ time.Duration, err error) {
	o.note(func() { o.connected[b] = append(o.connected[b], err) })
}

// waitFor waits until cond holds (checked under the lock after each event).
func (o *recObserver) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	timeout := time.After(deadline)
	for {
		o.mu.Lock()
		ok := cond()
		o.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-o.changed:
		case <-timeout:
			t.Fatalf("observer never saw %s", what)
		}
	}
}

func obsServer(t *testing.T, rt *Route) (*Server, string) {
	t.Helper()
	srv := NewServer(slog.New(slog.DiscardHandler))
	l, err := srv.ListenTCP("127.0.0.1:0", Table{Routes: []*Route{rt}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return srv, l.Addr().String()
}

func obsRoute(t *testing.T, o Observer, bs ...*backend.Backend) *Route {
	t.Helper()
	rr, err := router.New("round_robin", map[string]any{}, bs)
	if err != nil {
		t.Fatal(err)
	}
	return &Route{Name: "r", Protocol: "tcp", RouterName: "round_robin", Plugin: "round_robin", Router: rr,
		Backends: bs, ConnectTimeout: 5 * time.Second, Observer: o}
}

// TestObserverSeesEveryTCPEvent: known bytes come out exactly in the
// per-chunk counters, the request totals and the backend's own counters.
func TestObserverSeesEveryTCPEvent(t *testing.T) {
	o := newRecObserver()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	bDead := backend.New("r", "dead", deadAddr, 1, nil)
	bLive := backend.New("r", "live", startBackend(t, echo).addr, 1, nil)
	_, addr := obsServer(t, obsRoute(t, o, bDead, bLive))

	var sent int64
	for i := 0; i < 4; i++ {
		n := 70000*i + 5 // up to 210 KB: several splice chunks
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		payload := make([]byte, n)
		go func() { c.Write(payload); c.(*net.TCPConn).CloseWrite() }()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || len(got) != n {
			t.Fatalf("echo of %d bytes: got %d, %v", n, len(got), err)
		}
		sent += int64(n)
	}
	o.waitFor(t, "4 requests done and closed", func() bool { return o.requests == 4 && o.closed == 4 })
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.opened != 4 || o.bytesIn != sent || o.bytesOut != sent || o.reqIn != sent || o.reqOut != sent {
		t.Errorf("opened %d, bytes %d/%d, request bytes %d/%d; want 4 and %d everywhere", o.opened, o.bytesIn, o.bytesOut, o.reqIn, o.reqOut, sent)
	}
	if in, out := bLive.Bytes(); in != sent || out != sent {
		t.Errorf("backend counted %d/%d bytes, want %d", in, out, sent)
	}
	// Round robin starts with the dead backend on every other connection:
	// each such connection shows a failed connect then a successful one.
	if len(o.connected[bLive]) != 4 || len(o.connected[bDead]) == 0 {
		t.Fatalf("connects: live %v dead %v", o.connected[bLive], o.connected[bDead])
	}
	for _, err := range o.connected[bLive] {
		if err != nil {
			t.Errorf("live backend connect reported %v", err)
		}
	}
	for _, err := range o.connected[bDead] {
		if err == nil {
			t.Error("dead backend connect reported success")
		}
	}
	if o.picked != 4+len(o.connected[bDead]) {
		t.Errorf("picked %d times for %d connects", o.picked, 4+len(o.connected[bDead]))
	}
	if len(o.rejected) != 0 || len(o.pickFailed) != 0 {
		t.Errorf("unexpected rejections %v / pick failures %v", o.rejected, o.pickFailed)
	}
}

// TestObserverRejections: every way a connection is refused is counted
// with its reason, and still opened and closed.
func TestObserverRejections(t *testing.T) {
	o := newRecObserver()
	b := backend.New("r", "b", startBackend(t, echo).addr, 1, nil)
	srv, addr := obsServer(t, obsRoute(t, o, b))
	greet := func() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return // the proxy's reset can beat connect's return on loopback
		}
		c.SetDeadline(time.Now().Add(deadline))
		c.Read(make([]byte, 1)) // EOF or reset: the proxy closed it
		c.Close()
	}

	b.SetDraining(true) // no usable backend
	greet()
	o.waitFor(t, "no_backend", func() bool { return o.rejected[ReasonNoBackend] == 1 && o.closed == 1 })
	o.mu.Lock()
	if len(o.pickFailed) != 1 || !errors.Is(o.pickFailed[0], router.ErrNoBackend) {
		t.Errorf("pick failures %v", o.pickFailed)
	}
	o.mu.Unlock()
	b.SetDraining(false)
	// The server releases its slot just after the observer's ConnClosed.
	harness.Eventually(t, "the rejected connection no longer active", func() bool { return srv.Active() == 0 })

	// max_connections: one held open, the next refused.
	srv.SetMaxConnections(1)
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	o.waitFor(t, "the held connection", func() bool { return o.requests == 0 && len(o.connected[b]) == 1 })
	rejected := srv.Stats.Rejected.Load()
	greet()
	harness.Eventually(t, "the refused connection counted", func() bool { return srv.Stats.Rejected.Load() == rejected+1 })
	held.Close()
	// max_connections is the server's, no rule's: the rule's observer does
	// not count it (the listener's does: TestMaxConnectionsCountedOnListener).
	o.waitFor(t, "everything closed", func() bool { return o.opened == o.closed && o.opened == 2 })
	o.mu.Lock()
	if o.rejected[ReasonMaxConnections] != 0 {
		t.Errorf("the rule counted %d max_connections rejections", o.rejected[ReasonMaxConnections])
	}
	o.mu.Unlock()

	// connect_failed: the only backend refuses.
	srv.SetMaxConnections(0)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	o2 := newRecObserver()
	_, addr2 := obsServer(t, obsRoute(t, o2, backend.New("r", "gone", deadAddr, 1, nil)))
	if c, err := net.Dial("tcp", addr2); err == nil {
		c.SetDeadline(time.Now().Add(deadline))
		c.Read(make([]byte, 1))
		c.Close()
	}
	o2.waitFor(t, "connect_failed", func() bool { return o2.rejected[ReasonConnectFailed] == 1 && o2.closed == 1 })
}

// TestObserverNilCostsNothing: a route without an observer proxies as before.
func TestObserverNilCostsNothing(t *testing.T) {
	b := backend.New("r", "b", startBackend(t, echo).addr, 1, nil)
	_, addr := obsServer(t, obsRoute(t, nil, b))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() { c.Write([]byte("ping")); c.(*net.TCPConn).CloseWrite() }()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "ping" {
		t.Fatalf("got %q %v", got, err)
	}
	if in, out := b.Bytes(); in != 4 || out != 4 {
		t.Errorf("backend bytes %d/%d without metrics, want 4/4", in, out)
	}
}

func TestReasonNames(t *testing.T) {
	seen := map[string]bool{}
	for r := Reason(0); r < NumReasons; r++ {
		s := r.String()
		if s == "" || s == "unknown" || seen[s] {
			t.Errorf("reason %d: %q", r, s)
		}
		seen[s] = true
	}
	if NumReasons.String() != "unknown" {
		t.Error("out-of-range reason")
	}
}

// TestEndNames: every end has its own name, and each protocol's ends are
// named ends that a connection with a backend can have.
func TestEndNames(t *testing.T) {
	seen := map[string]bool{}
	for e := End(0); e < NumEnds; e++ {
		s := e.String()
		if s == "" || s == "unknown" || seen[s] {
			t.Errorf("end %d: %q", e, s)
		}
		seen[s] = true
	}
	if NumEnds.String() != "unknown" {
		t.Error("out-of-range end")
	}
	for _, p := range []string{"tcp", "udp"} {
		for _, e := range EndsOf(p) {
			if e >= NumEnds || e == EndNoBackend {
				t.Errorf("%s: end %v", p, e)
			}
		}
	}
}
