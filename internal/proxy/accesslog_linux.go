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
				if c.state == stRelay && c.Start.Before(since) {
					open = append(open, openConn{id: c.ID, rt: c.rt, b: c.be, client: c.ci.Client, start: c.Start, in: c.up.n, out: c.down.n})
				}
			})
		})
		for _, c := range open { // logged off the loop
			f(c)
		}
	}
}

// openUDPEpoll calls f for every open session of the epoll engine's UDP
// listeners that started before since, reading each shard's sessions in
// its loop.
func (s *Server) openUDPEpoll(since time.Time, f func(openConn)) {
	ls := keysOf(&s.mu, s.udp)
	var open []openConn
	for _, l := range ls {
		for _, sh := range l.shards {
			open = open[:0]
			sh.Call(func() {
				for _, us := range sh.sessions {
					if us.fd >= 0 && us.b != nil && us.start < since.UnixNano() {
						open = append(open, openConn{id: us.id, rt: us.route, b: us.b, client: us.client, start: time.Unix(0, us.start),
							udp: true, in: us.inB, out: us.outB, dIn: us.inN, dOut: us.outN})
					}
				}
			})
			for _, c := range open {
				f(c)
			}
		}
	}
}
