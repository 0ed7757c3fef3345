package proxy

import (
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/backend"
)

// The access log: the records of rules with access_log (a TCP
// connection's "connection closed", a UDP session's "udp session closed")
// go to the server's access logger, which is its log unless SetAccessLog
// gave another ([logging] access_log_file). With an interval set
// (SetAccessLogInterval, [logging] access_log_interval) every TCP
// connection open longer than it also gets a "connection progress" record
// once per interval, with the bytes moved so far, as Envoy's periodic TCP
// access logs do (and every UDP session a "udp session progress" record,
// with its datagrams and bytes).
//
// The progress records cost the data path nothing: no timer per
// connection and no per-byte bookkeeping beyond the byte counts the final
// record already has. One goroutine wakes a few times per interval and
// reads the connections' state where it lives: each epoll loop's
// connections inside that loop (Loop.Call), the goroutine engine's from
// their counters (atomics, written by the connection's goroutines).

// accessLog is a Server's access log settings and its progress goroutine.
type accessLog struct {
	logger   atomic.Pointer[slog.Logger] // nil: the server's log
	interval atomic.Int64                // ns; 0: no progress records

	mu   sync.Mutex    // serialises starting and stopping the goroutine
	stop chan struct{} // closed to stop it; nil: not running
	done chan struct{} // closed when it has left
}

// SetAccessLog sends the access log records to l (nil: the server's log).
// The event loops write them, so l's handler should not block
// (logging.Async).
func (s *Server) SetAccessLog(l *slog.Logger) { s.alog.logger.Store(l) }

// accessLogger is where the access log records go.
func (s *Server) accessLogger() *slog.Logger {
	if l := s.alog.logger.Load(); l != nil {
		return l
	}
	return s.log
}

// SetAccessLogInterval sets the interval of the progress records (0: none),
// starting or stopping the goroutine that writes them. A new interval
// applies from the next record of each connection.
func (s *Server) SetAccessLogInterval(d time.Duration) {
	a := &s.alog
	a.mu.Lock()
	defer a.mu.Unlock()
	a.interval.Store(int64(max(d, 0)))
	switch {
	case d > 0 && a.stop == nil:
		a.stop, a.done = make(chan struct{}), make(chan struct{})
		go s.progressLoop(a.stop, a.done)
	case d <= 0 && a.stop != nil:
		close(a.stop)
		<-a.done
		a.stop, a.done = nil, nil
	}
}

// stopProgress stops the progress goroutine (Shutdown).
func (s *Server) stopProgress() { s.SetAccessLogInterval(0) }

// progressTicks is how many times per interval the goroutine looks: a
// record is written within a quarter interval of when it is due.
const progressTicks = 4

// openConn is what a progress record says of one open connection or UDP
// session.
type openConn struct {
	id      uint64 // the connection's or session's id (conns.go)
	rt      *Route
	b       *backend.Backend
	client  netip.AddrPort
	start   time.Time
	in, out int64 // bytes
	udp     bool
	dIn     int64 // datagrams (UDP)
	dOut    int64
}

func (s *Server) progressLoop(stop, done chan struct{}) {
	defer close(done)
	reported := map[uint64]int64{} // intervals reported, by connection id
	for {
		iv := time.Duration(s.alog.interval.Load())
		t := time.NewTimer(max(iv/progressTicks, 10*time.Millisecond))
		select {
		case <-stop:
			t.Stop()
			return
		case <-t.C:
		}
		now := time.Now()
		seen := make(map[uint64]int64, len(reported))
		report := func(c openConn) {
			if !c.rt.AccessLog {
				return
			}
			k := c.id
			n := int64(now.Sub(c.start) / iv)
			done := reported[k]
			seen[k] = done
			if n > done {
				seen[k] = n
				s.logTCPProgress(c, now.Sub(c.start))
			}
		}
		s.openEpoll(now.Add(-iv), report)
		s.openGo(now.Add(-iv), report)
		s.openUDPEpoll(now.Add(-iv), report)
		s.openUDPGo(now.Add(-iv), report)
		reported = seen
	}
}

// openGo calls f for every relaying connection of the goroutine engine
// that started before since.
func (s *Server) openGo(since time.Time, f func(openConn)) {
	for _, c := range keysOf(&s.connMu, s.conns) {
		if !c.Start.Before(since) {
			continue
		}
		c.mu.Lock()
		// be and bc are set after rt and ci, under mu: reading them
		// here orders those reads after the writes.
		b, relaying := c.be, c.bc != nil && c.cancel == nil
		c.mu.Unlock()
		if b == nil || !relaying {
			continue
		}
		f(openConn{id: c.ID, rt: c.rt, b: b, client: c.ci.Client, start: c.Start, in: c.up.Load(), out: c.down.Load()})
	}
}

// openUDPGo calls f for every open session of the goroutine engine that
// started before since.
func (s *Server) openUDPGo(since time.Time, f func(openConn)) {
	for _, l := range keysOf(&s.mu, s.udpGo) {
		var open []openConn
		var sessions []*goUDPSession
		l.mu.Lock()
		for _, us := range l.sessions {
			if us.bc != nil && us.b != nil && us.start.Before(since) {
				open = append(open, openConn{id: us.id, rt: us.route, b: us.b, client: us.client, start: us.start, udp: true})
				sessions = append(sessions, us)
			}
		}
		l.mu.Unlock()
		for i, us := range sessions {
			us.mu.Lock()
			c := us.udpCounts
			us.mu.Unlock()
			open[i].in, open[i].out, open[i].dIn, open[i].dOut = c.inB, c.outB, c.inN, c.outN
			f(open[i])
		}
	}
}

// logTCPProgress writes the progress record of a connection (or UDP
// session) open for took.
func (s *Server) logTCPProgress(c openConn, took time.Duration) {
	if c.udp {
		s.accessLogger().Info("udp session progress", "conn", c.id, "rule", c.rt.Name, "client", c.client.String(),
			"backend", c.b.ID, "backend_addr", c.b.Address, "datagrams_in", c.dIn, "datagrams_out", c.dOut,
			"bytes_in", c.in, "bytes_out", c.out, "duration", took.Round(time.Microsecond))
		return
	}
	s.accessLogger().Info("connection progress", "conn", c.id, "rule", c.rt.Name, "client", c.client.String(),
		"backend", c.b.ID, "backend_addr", c.b.Address, "bytes_in", c.in, "bytes_out", c.out,
		"duration", took.Round(time.Microsecond))
}
