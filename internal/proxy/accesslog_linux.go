//go:build linux

package proxy

import "time"

// openEpoll calls f for every relaying connection of the epoll engine that
// started before since, reading each loop's connections in that loop.
func (s *Server) openEpoll(since time.Time, f func(openConn)) {
	s.mu.Lock()
	loops := s.loops
	s.mu.Unlock()
	var open []openConn
	for _, lp := range loops {
		open = open[:0]
		lp.Call(func() {
			lp.each(func(c *lconn) {
				if c.state == stRelay && c.start.Before(since) {
					open = append(open, openConn{key: c, rt: c.rt, b: c.be, client: c.ci.Client, start: c.start, in: c.up.n, out: c.down.n})
				}
			})
		})
		for _, c := range open { // logged off the loop
			f(c)
		}
	}
}
