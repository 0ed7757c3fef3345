// Package proxy forwards connections: TCP listeners, the per-connection path
// (match a route, pick a backend, dial, copy both ways), connection tracking
// and graceful shutdown.
//
// The portable files hold the policy every engine shares: the Server,
// tables and routes, matching, access control, inspection, observers and
// how a connection ended. The epoll engine is the *_linux.go files (tcp_*
// for TCP, udp_* for UDP), built on internal/eventloop; docs/architecture.md
// ("The data path in layers") says which file does what.
//
// The engine gives each listener an immutable Table (its options and routes,
// listener.go) with SetTable; the accept path loads it with one atomic read
// per connection, so a reload switches tables without touching the
// listening socket.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
	"github.com/dynamic-proxy/dynamic-proxy/internal/resolve"
	"github.com/dynamic-proxy/dynamic-proxy/internal/router"
)

// Route is one rule as the data path sees it. It is immutable once published.
type Route struct {
	Name           string
	Protocol       string // "tcp" or "udp"
	RouterName     string
	Router         router.Router
	Backends       []*backend.Backend
	ConnectTimeout time.Duration // backend dial timeout
	IdleTimeout    time.Duration // 0: none
	BufferSize     int           // bytes of the pooled buffer each burst starts with; 0: 8192
	AccessLog      bool
	Plugin         string   // the router's plugin name (RouterName is the rule's router key)
	Observer       Observer // metrics hooks (observe.go); nil: metrics off

	// Matching and access (see match.go, access.go, inspect.go).
	Match     Matcher // nil: every connection
	Access    *Access // nil: no access control
	SendProxy int     // write a PROXY v1 or v2 header to the backend; 0: none

	// TLS (TCP only; see tls.go): terminate the client's TLS with TLS
	// (nil: pass the bytes through), and dial backend i with TLS
	// BackendTLS[i] (a nil slice or entry: plain TCP). A route with either
	// is served by the goroutine engine.
	TLS        Terminator
	BackendTLS []*tls.Config

	// UDP only (see udp_listener_linux.go); the session timeout is the
	// listener's (ListenOptions).
	MaxResponses int  // end a session after this many replies; 0: unlimited
	MaxSessions  int  // concurrent sessions; 0: no limit
	QUIC         bool // sessions follow their QUIC connection ids across client address changes (udp_quic.go)
	DNS          bool // dns = true: each query balanced on its own (udp_dns.go); the listener's ListenOptions.DNS says so too
}

// Listener is a bound TCP or UDP listener whose table can be swapped.
type Listener interface {
	Addr() net.Addr
	SetTable(Table)
	Close()
}

// Stats are the server's counters. Active and Accepted count the goroutine
// engine's connections only (each event loop counts its own): read the
// totals with Server.Active and Server.Accepted.
type Stats struct {
	Active, Accepted, Rejected, NoRoute, NoBackend atomic.Int64
}

// Server owns the listeners and tracks every proxied connection.
type Server struct {
	log      *slog.Logger
	maxConns atomic.Int64
	slots    slots // max_connections' slots (slots.go)
	Stats    Stats
	UDP      UDPStats
	QUIC     QUICStats // QUIC Initial peeking and connection id following (udp_quic.go)

	mu        sync.Mutex
	listeners map[Listener]struct{}
	closing   atomic.Bool    // set under mu (listeners check it there); the loops read it without
	wg        sync.WaitGroup // one per open TCP listener, TCP connection and UDP shard

	epollState // the epoll engine's loops and UDP listeners (Linux; guarded by mu)
	goState    // the goroutine engine's connections and UDP listeners (go_server.go)

	workersOnce sync.Once
	workers     int // Workers, fixed at its first call

	resolver *resolve.Resolver // backend host names, for TCP and UDP
	alog     accessLog         // where the access log goes, and its progress records (accesslog.go)

	explainSample atomic.Uint64 // connections whose decision is logged at debug: rand.Uint64() < it (explain.go)
	connIDs       atomic.Uint64 // numbers connections and sessions (conns.go)
	idEpoch       atomic.Uint64 // moved by SkipConnIDs: the loops' idRanges are stale

	inherited *Sockets // listening sockets handed over by an upgrade (inherit.go); guarded by mu

	noBackendLog rateLimit
	dialFailLog  rateLimit
	exhaust      exhaustion                       // out of descriptors: one log line per episode (exhaust.go)
	fds          descriptors                      // the data path's descriptor budget (fdbudget.go)
	unrouted     atomic.Pointer[UnroutedObserver] // metrics of unmatched traffic (observe.go)
	udpLimitLog  rateLimit
	udpRecvLog   rateLimit
}

// NewServer returns a server that logs to log.
func NewServer(log *slog.Logger) *Server {
	s := &Server{
		log:       log,
		resolver:  resolve.Default(),
		listeners: map[Listener]struct{}{},
	}
	s.slots.init()
	s.initEpoll()
	s.initGo()
	return s
}

// ListenTCP binds addr and starts accepting with table t (replaced later
// with SetTable); without routes connections are closed as unmatched.
func (s *Server) ListenTCP(addr string, t Table) (Listener, error) {
	if s.goroutineEngine() {
		return s.listenTCPGo(addr, t)
	}
	l, err := s.listenTCPEpoll(addr, t)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// ListenUDP binds addr and starts serving datagrams with table t (replaced
// later with SetTable).
func (s *Server) ListenUDP(addr string, t Table) (Listener, error) {
	if s.goroutineEngine() {
		return s.listenUDPGo(addr, t)
	}
	l, err := s.listenUDPEpoll(addr, t, udpOptions{})
	if err != nil {
		return nil, err
	}
	return l, nil
}

// udpOptions change a listener's buffers, for tests and benchmarks.
type udpOptions struct {
	maxDatagram int // bytes per message buffer; 0: the largest datagram
	batch       int // messages per recvmmsg/sendmmsg; 0: batchSize
}

// Workers is the number of event loops the server runs: TCP loops, and
// loops per UDP listener (at most 16 of those). It is GOMAXPROCS when it is
// first asked for (the engine asks once it has set GOMAXPROCS from
// worker_threads) and does not change after that, whatever GOMAXPROCS does.
func (s *Server) Workers() int {
	s.workersOnce.Do(func() { s.workers = max(runtime.GOMAXPROCS(0), 1) })
	return s.workers
}

// SetMaxConnections sets the cap on concurrent client connections (0: none).
func (s *Server) SetMaxConnections(n int) {
	s.maxConns.Store(int64(n))
	s.slots.setCap(int64(n), max(runtime.NumCPU(), len(s.loopList())))
	s.collectSpareSlots()
}

// MaxConnections returns the cap on concurrent client connections (0: none).
func (s *Server) MaxConnections() int64 { return s.maxConns.Load() }

// Active returns the number of client TCP connections open now: the
// goroutine engine's Stats.Active (with the TLS connections the loops
// handed to it) and each event loop's count.
func (s *Server) Active() int64 { return s.Stats.Active.Load() + s.activeEpoll() }

// Accepted returns the number of TCP connections accepted so far: the
// goroutine engine's Stats.Accepted and each event loop's count.
func (s *Server) Accepted() int64 {
	return s.Stats.Accepted.Load() + s.acceptedEpoll()
}

// StopAccepting closes every listener: no new connection or session is
// taken from now on (UDP sessions open run on). Shutdown calls it first;
// calling it before is harmless.
func (s *Server) StopAccepting() {
	s.exhaust.stop()
	s.mu.Lock()
	s.closing.Store(true)
	ls := make([]Listener, 0, len(s.listeners))
	for l := range s.listeners {
		ls = append(ls, l)
	}
	s.mu.Unlock()
	s.stopFDWatch() // none starts once closing is set
	for _, l := range ls {
		l.Close()
	}
}

// Shutdown stops every listener, waits for connections in flight to finish
// until ctx ends, then closes the rest and waits for them to end. It
// returns ctx.Err() when connections had to be cut.
func (s *Server) Shutdown(ctx context.Context) error {
	s.StopAccepting()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		n := s.cutEpoll() + s.cutGo()
		s.log.Warn("shutdown timeout: closing connections still open", "connections", n)
		<-done
		err = ctx.Err()
	}
	s.stopEpoll()
	s.stopProgress()
	return err
}

// CloseBackendConns closes every connection proxied to b (a backend a reload
// removed, once its drain_timeout is over) and returns how many.
func (s *Server) CloseBackendConns(b *backend.Backend) int {
	n := s.CloseConns(ConnFilter{Of: b}, EndDrained)
	// A DNS listener's clients are not connections of their own; their
	// sockets to b are closed, and the clients whose last query went there.
	n += s.closeDNSBackendEpoll(b)
	for _, l := range keysOf(&s.mu, s.udpGo) {
		n += l.dnsCloseBackend(b)
	}
	return n
}

// UDPStats are the UDP counters of a Server, over all its UDP listeners.
type UDPStats struct {
	Sessions      atomic.Int64 // sessions open now
	SessionsTotal atomic.Int64 // sessions ever opened

	DatagramsIn  atomic.Int64 // client → backend, forwarded
	DatagramsOut atomic.Int64 // backend → client, delivered
	BytesIn      atomic.Int64
	BytesOut     atomic.Int64

	// Datagrams dropped, by reason.
	DroppedMaxSessions atomic.Int64 // a new client beyond max_sessions
	DroppedOversize    atomic.Int64 // larger than the buffer or the path (EMSGSIZE)
	DroppedNoRoute     atomic.Int64 // no rule of the listener matched the client
	DroppedDenied      atomic.Int64 // refused by the rule's access control (allow/deny, per-IP limits)
	DroppedNoBackend   atomic.Int64 // no usable backend for a new session
	DroppedShutdown    atomic.Int64 // a new client while the listener drains
	DroppedSendError   atomic.Int64 // a send failed (socket buffer full, unreachable…)
	DroppedMaxResponse atomic.Int64 // backend datagrams after max_responses

	// DNS-aware balancing (dns = true listeners, udp_dns.go).
	DroppedDNSMalformed atomic.Int64 // client datagrams that are not DNS queries
	DNSUnanswered       atomic.Int64 // queries forgotten after session_timeout without a reply
	DNSUnmatched        atomic.Int64 // replies that matched no waiting query
	DNSRewritten        atomic.Int64 // queries sent with another id than their client's (it was taken on the socket)
	DNSClients          atomic.Int64 // open sessions that are DNS clients (counted in Sessions; they hold no socket)
	DNSSockets          atomic.Int64 // backend sockets of DNS listeners open now

	// Ended counts the sessions that ended, by how (EndsOf("udp")).
	Ended [NumEnds]atomic.Int64
}

// rateLimit lets a repeated log line through at most once per interval and
// counts what it suppressed.
type rateLimit struct {
	next       atomic.Int64
	suppressed atomic.Int64
}

// allow reports whether to log now, and how many were suppressed since.
func (r *rateLimit) allow(every time.Duration) (bool, int64) {
	now := time.Now().UnixNano()
	n := r.next.Load()
	if now < n || !r.next.CompareAndSwap(n, now+int64(every)) {
		r.suppressed.Add(1)
		return false, 0
	}
	return true, r.suppressed.Swap(0)
}

var errShutdown = errors.New("shutdown")

// defaultBufSize is buffer_size's default: the bytes a burst is first read
// into, by either engine.
const defaultBufSize = 8192
