package proxy

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
)

// epollState is what a Server keeps of the epoll engine: its TCP loops and
// its UDP listeners. Guarded by the Server's mu.
type epollState struct {
	loops []*tcpLoop                // the TCP event loops (tcp_loop_linux.go), started with the first TCP listener
	udp   map[*UDPListener]struct{} // until their sessions have ended
	// turnReads bounds the reads a direction makes per turn (0:
	// defaultTurnReads); tests lower it before the first listener.
	turnReads int
	loopsOnce atomic.Pointer[[]*tcpLoop] // loops, once started, for readers without mu
}

func (s *Server) initEpoll() { s.udp = map[*UDPListener]struct{}{} }

// cutEpoll force-closes every connection and session of the epoll engine
// (the shutdown timeout is over) and returns how many there were.
func (s *Server) cutEpoll() int {
	s.mu.Lock()
	loops := s.loops
	s.mu.Unlock()
	n := 0
	for _, lp := range loops {
		lp.Call(func() {
			n += lp.nconns
			lp.each(func(c *lconn) { c.forceClose(EndShutdown) })
		})
	}
	s.mu.Lock()
	for l := range s.udp {
		n += l.forceClose()
	}
	s.mu.Unlock()
	return n
}

// acceptedEpoll sums the loops' counts of accepted connections.
func (s *Server) acceptedEpoll() int64 {
	var n int64
	for _, lp := range s.loopList() {
		n += lp.accepted.Load()
	}
	return n
}

// activeEpoll sums the loops' counts of the connections they hold.
func (s *Server) activeEpoll() int64 {
	var n int64
	for _, lp := range s.loopList() {
		n += lp.active.Load()
	}
	return n
}

// loopList is the TCP loops, without the lock (nil until they start).
func (s *Server) loopList() []*tcpLoop {
	if p := s.loopsOnce.Load(); p != nil {
		return *p
	}
	return nil
}

// collectSpareSlots has every loop give its spare slots back, and waits
// for it (a change of max_connections).
func (s *Server) collectSpareSlots() {
	for _, lp := range s.loopList() {
		lp.Call(lp.giveSpare)
	}
}

// stealSlot takes a slot for a connection that found no room: a spare one
// of a loop other than from (nil: any), then the room once more, in case a
// loop gave its spares back meanwhile. False: every slot is held by an
// open connection.
func (s *Server) stealSlot(from *tcpLoop) bool {
	e := s.slots.epoch.Load()
	for _, lp := range s.loopList() {
		if lp != from && lp.useSpare(e) {
			return true
		}
	}
	return s.slots.take(1) > 0
}

// stopEpoll stops the TCP loops once every connection has ended.
func (s *Server) stopEpoll() {
	s.mu.Lock()
	loops := s.loops
	s.mu.Unlock()
	for _, lp := range loops {
		lp.Post(func() { lp.stop = true })
		<-lp.Exited()
	}
}

// eachConnEpoll gives sink the epoll engine's selected connections, each
// loop's and each UDP shard's read in that loop (conns.go).
func (s *Server) eachConnEpoll(f *ConnFilter, sink connSink) {
	s.mu.Lock()
	loops := s.loops
	s.mu.Unlock()
	udp := keysOf(&s.mu, s.udp)
	if f.Protocol != "udp" {
		for _, lp := range loops {
			lp.Call(func() {
				if c := lp.conns; c != nil {
					for {
						if f.match("tcp", c.ID, c.rt, c.be, c.ci.Client) && sink.want(c.ID) {
							sink.put(c.entry(), c.closer())
						}
						if c = c.next; c == lp.conns {
							break
						}
					}
				}
			})
		}
	}
	if f.Protocol != "tcp" {
		for _, l := range udp {
			for _, sh := range l.shards {
				sh.Call(func() {
					for _, ss := range sh.sessions {
						if ss.fd >= 0 && f.match("udp", ss.id, ss.route, ss.b, ss.client) && sink.want(ss.id) {
							sink.put(sh.entry(ss), sh.closer(ss))
						}
					}
				})
			}
		}
	}
}

// entry is the connection as listed. Called in its loop.
func (c *lconn) entry() ConnEntry {
	local := c.l.local
	if local.Addr().IsUnspecified() && c.cfd >= 0 {
		if ap, ok := eventloop.LocalAddrPort(c.cfd); ok {
			local = ap
		}
	}
	var state string
	switch c.state {
	case stRoute:
		state = StateRouting
	case stInspect:
		state = StateInspecting
	case stResolve:
		state = StateResolving
	case stDialWait, stConnecting:
		state = StateConnecting
	default:
		state = StateEstablished
	}
	return connEntry("tcp", c.ConnIdent, c.rt, c.be, c.ci.Client, local, c.last, c.up.n, c.down.n, state)
}

// closer closes the connection from any goroutine, in its loop, unless it
// ended meanwhile.
func (c *lconn) closer() func(End) {
	lp, id := c.lp, c.ID
	return func(end End) {
		lp.Post(func() {
			if c.next != nil && c.ID == id && c.state != stDone {
				c.forceClose(end)
			}
		})
	}
}

// entry is session ss as listed. Called in the shard's loop.
func (l *udpShard) entry(ss *udpSession) ConnEntry {
	local := l.local
	if dst, _, ok := eventloop.ParsePktinfo(ss.oob[:ss.ooblen]); ok {
		local = netip.AddrPortFrom(dst, local.Port())
	}
	return connEntry("udp", ConnIdent{ID: ss.id, Start: time.Unix(0, ss.start)}, ss.route, ss.b, ss.client, local, ss.last, ss.inB, ss.outB, StateEstablished)
}

// closer ends session ss from any goroutine, in the shard's loop, unless
// it ended meanwhile.
func (l *udpShard) closer(ss *udpSession) func(End) {
	return func(end End) {
		l.Post(func() {
			if !ss.removed && ss.fd >= 0 {
				l.end(ss, end)
			}
		})
	}
}
