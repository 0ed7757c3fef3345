package proxy

import "github.com/dynamic-proxy/dynamic-proxy/internal/backend"

// epollState is what a Server keeps of the epoll engine: its TCP loops and
// its UDP listeners. Guarded by the Server's mu.
type epollState struct {
	loops []*tcpLoop                // the TCP event loops (tcp_loop_linux.go), started with the first TCP listener
	udp   map[*UDPListener]struct{} // until their sessions have ended
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

// closeBackendEpoll closes the epoll engine's connections and sessions to b.
func (s *Server) closeBackendEpoll(b *backend.Backend) int {
	n := s.closeUDPSessions(b)
	s.mu.Lock()
	loops := s.loops
	s.mu.Unlock()
	for _, lp := range loops {
		lp.Call(func() {
			lp.each(func(c *lconn) {
				if c.be == b {
					c.forceClose(EndDrained)
					n++
				}
			})
		})
	}
	return n
}
