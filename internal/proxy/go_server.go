package proxy

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
)

// Engine is the connection engine a Server runs its listeners on.
//
// The epoll engine (Linux) runs every connection in a few event loops with
// raw system calls; the goroutine engine runs a goroutine or two per TCP
// connection and per UDP session over the net package, and builds on every
// system Go supports. Both apply the same routes the same way: routing,
// matchers, inspection, access control, health, metrics, the access log,
// drain and shutdown are the shared code of this package; only how bytes
// and datagrams move differs. docs/architecture.md says when to pick which.
type Engine uint8

const (
	// EngineEpoll is the Linux event-loop engine.
	EngineEpoll Engine = iota + 1
	// EngineGoroutine is the portable engine (go_tcp.go, go_udp.go).
	EngineGoroutine
)

// EngineNames are the values of [server] engine.
var EngineNames = []string{"auto", "epoll", "goroutine"}

func (e Engine) String() string {
	switch e {
	case EngineEpoll:
		return "epoll"
	case EngineGoroutine:
		return "goroutine"
	}
	return "unknown"
}

// EpollSupported reports whether the epoll engine runs on this system.
const EpollSupported = runtime.GOOS == "linux"

// ParseEngine reads a [server] engine value: "auto" (or "") is the epoll
// engine on Linux and the goroutine engine elsewhere.
func ParseEngine(name string) (Engine, error) {
	switch name {
	case "", "auto":
		if EpollSupported {
			return EngineEpoll, nil
		}
		return EngineGoroutine, nil
	case "epoll":
		if !EpollSupported {
			return 0, fmt.Errorf("the epoll engine runs on Linux only (this is %s); use \"goroutine\" or \"auto\"", runtime.GOOS)
		}
		return EngineEpoll, nil
	case "goroutine":
		return EngineGoroutine, nil
	}
	return 0, fmt.Errorf("must be one of auto, epoll, goroutine; got %q", name)
}

// goState is what a Server keeps of the goroutine engine. Guarded by the
// Server's mu, except conns (its own lock).
type goState struct {
	engine Engine // fixed by the first listener

	tlsRot atomic.Uint32 // address rotation of the TLS connections the epoll engine hands over (tls.go)
	connMu sync.Mutex
	conns  map[*goConn]struct{}        // TCP connections from accept to close
	udpGo  map[*goUDPListener]struct{} // until their sessions have ended
}

var errEngineFixed = errors.New("the engine is chosen before the first listener and cannot change")

// SetEngine chooses the engine of the listeners to come. It must be called
// before the first ListenTCP or ListenUDP (the engine calls it on its first
// apply); without it a Server runs ParseEngine("auto").
func (s *Server) SetEngine(e Engine) error {
	if e == EngineEpoll && !EpollSupported {
		_, err := ParseEngine("epoll")
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.engine != 0 && s.engine != e {
		return errEngineFixed
	}
	s.engine = e
	return nil
}

// Engine returns the engine the Server runs (the default until a listener
// fixed it).
func (s *Server) Engine() Engine {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.engineLocked()
}

// engineLocked returns the engine and fixes it. Called with s.mu held.
func (s *Server) engineLocked() Engine {
	if s.engine == 0 {
		s.engine, _ = ParseEngine("auto")
	}
	return s.engine
}

func (s *Server) goroutineEngine() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.engineLocked() == EngineGoroutine
}

func (s *Server) initGo() {
	s.conns = map[*goConn]struct{}{}
	s.udpGo = map[*goUDPListener]struct{}{}
}

// register adds a goroutine engine listener to the server, counted in wg
// until it is closed, and runs also (nil: nothing) with s.mu held; false
// when the server is shutting down.
func (s *Server) register(l Listener, also func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return false
	}
	s.startFDWatch()
	s.listeners[l] = struct{}{}
	if also != nil {
		also()
	}
	s.wg.Add(1)
	return true
}

// unregister takes a closed listener out of the server's listeners.
func (s *Server) unregister(l Listener) {
	s.mu.Lock()
	delete(s.listeners, l)
	s.mu.Unlock()
}

// keysOf returns the keys of m, read under mu.
func keysOf[K comparable](mu *sync.Mutex, m map[K]struct{}) []K {
	mu.Lock()
	defer mu.Unlock()
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

// cutGo force-closes every connection and session of the goroutine engine
// and returns how many there were.
func (s *Server) cutGo() int {
	n := 0
	for _, c := range keysOf(&s.connMu, s.conns) {
		c.forceClose(EndShutdown)
		n++
	}
	for _, l := range keysOf(&s.mu, s.udpGo) {
		n += l.forceClose()
	}
	return n
}

// eachConnGo gives sink the goroutine engine's selected connections, read
// under the locks their goroutines take (conns.go).
func (s *Server) eachConnGo(f *ConnFilter, sink connSink) {
	if f.Protocol != "udp" {
		for _, c := range keysOf(&s.connMu, s.conns) {
			c.mu.Lock()
			rt, b, ci, bc, cut := c.rt, c.be, c.ci, c.bc, c.cut
			c.mu.Unlock()
			if cut != EndEOF { // closing: its goroutines are leaving
				continue
			}
			if !f.match("tcp", c.ID, rt, b, ci.Client) || !sink.want(c.ID) {
				continue
			}
			state := StateEstablished
			switch {
			case rt == nil:
				state = StateInspecting
			case bc == nil:
				state = StateConnecting
			}
			local := addrPort(c.c.LocalAddr())
			sink.put(connEntry("tcp", c.ConnIdent, rt, b, ci.Client, local, c.last.Load(), c.up.Load(), c.down.Load(), state), c.forceClose)
		}
	}
	if f.Protocol != "tcp" {
		for _, l := range keysOf(&s.mu, s.udpGo) {
			l.eachSession(f, sink)
		}
	}
}

// eachSession gives sink the listener's selected open sessions.
func (l *goUDPListener) eachSession(f *ConnFilter, sink connSink) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ss := range l.sessions {
		if ss.bc == nil || !f.match("udp", ss.id, ss.route, ss.b, ss.client) || !sink.want(ss.id) {
			continue
		}
		local := l.localFor(ss.dst)
		ss.mu.Lock()
		in, out := ss.inB, ss.outB
		ss.mu.Unlock()
		sink.put(connEntry("udp", ConnIdent{ID: ss.id, Start: ss.start}, ss.route, ss.b, ss.client, local, ss.last.Load(), in, out, StateEstablished),
			func(end End) { l.end(ss, end) })
	}
}
