package proxy

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/fdlimit"
)

// The data path's descriptor budget.
//
// The admin API, /metrics and health checks need descriptors too, and most
// when the data path has taken every other one. So the data path stops
// short of the limit (RLIMIT_NOFILE): it keeps fdlimit.Reserve(limit)
// descriptors free for everything else, the way HAProxy stops at maxconn.
//
//   - What the data path holds is kept in counters it maintains anyway: 2
//     per TCP connection from accept to close (its client socket and its
//     backend socket, counted from the accept so that dials cannot
//     overshoot), 1 per UDP session, 2 per splice pipe (pooled or lent).
//     Checking the budget costs a few atomic loads.
//   - Everything else the process holds (listening sockets, event loops,
//     the admin and metrics servers and their clients, health checks,
//     Redis, log files, the runtime's own) changes slowly: it is counted
//     from /proc/self/fd after every apply (start-up, reload) and by a
//     watcher every 2 s once half the limit is in use (every 30 s before),
//     never on the accept path.
//   - At the budget a TCP event loop stops accepting, as on EMFILE
//     (exhaust.go): the listener leaves the epoll set for a backoff and
//     clients wait in the listen backlog until connections close. A new
//     UDP client's datagram is dropped. A burst that would take a new
//     splice pipe is copied through the loop's buffer instead.
//   - Each of the three is counted (DescriptorStats.Refused). A paused
//     accept or a dropped UDP datagram also starts an episode logged once,
//     like running out of descriptors; a burst copied instead of spliced
//     is only counted (nobody was refused).

// Kinds of refusal at the budget (DescriptorStats.Refused).
const (
	RefusedAccept     = iota // a TCP event loop paused accepting
	RefusedUDPSession        // a new UDP client's datagram was dropped
	RefusedPipe              // a burst was copied instead of spliced
	NumRefused
)

// RefusedNames are the kinds' label values.
var RefusedNames = [NumRefused]string{"tcp_accept", "udp_session", "splice_pipe"}

const (
	fdWatchEvery = 2 * time.Second  // the watcher's period
	fdCountIdle  = 30 * time.Second // between counts below half the limit
)

type descriptors struct {
	limit   atomic.Int64 // soft RLIMIT_NOFILE; 0: unknown, no budget
	reserve atomic.Int64
	other   atomic.Int64 // open at the last count, not the data path's
	counted atomic.Int64 // unix nanoseconds of the last count
	refused [NumRefused]atomic.Int64

	limitf func() (int64, error) // fdlimit.Limit; tests set another
	countf func() (int, error)   // fdlimit.Open; tests set another

	mu      sync.Mutex // serialises counts
	started bool       // the watcher runs (under Server.mu)
	stop    chan struct{}
	done    chan struct{}
}

// splicePipes counts the pipe ends of the pool (tcp_relay_linux.go), which is
// shared by every Server of the process.
var splicePipes atomic.Int64

// DescriptorStats is the descriptor budget as it stands.
type DescriptorStats struct {
	Limit    int64 // RLIMIT_NOFILE (soft); 0: unknown (no budget)
	Reserve  int64 // left free for everything but the data path
	DataPath int64 // held by connections, UDP sessions and splice pipes
	Other    int64 // open besides those, at the last count
	Budget   int64 // where the data path stops: Limit - Reserve - Other
	Refused  [NumRefused]int64
}

// dataFDs is the descriptors the data path holds (a DNS listener's
// clients hold none; its backend sockets one each).
func (s *Server) dataFDs() int64 { return 2*s.Active() + s.otherDataFDs() }

// otherDataFDs is the data path's descriptors but the TCP connections'.
func (s *Server) otherDataFDs() int64 {
	u := &s.UDP
	return u.Sessions.Load() - u.DNSClients.Load() + u.DNSSockets.Load() + splicePipes.Load()
}

// fdRoom reports whether the data path may take n more descriptors. It
// first counts every held slot of max_connections as a connection (an
// upper bound, read from one shared line); only near the budget does it
// sum the loops' counts.
func (s *Server) fdRoom(n int64) bool {
	lim := s.fds.limit.Load()
	if lim <= 0 {
		return true
	}
	room := lim - s.fds.reserve.Load() - s.fds.other.Load() - s.otherDataFDs() - n
	if held := s.slots.held(); held >= 0 && 2*held <= room {
		return true
	}
	return 2*s.Active() <= room
}

// refuse counts a refused accept or UDP session and reports the episode.
func (s *Server) refuse(kind int, where string) {
	s.fds.refused[kind].Add(1)
	s.exhaust.failed(s.log, false, where, budgetError{s})
}

// budgetError describes the budget reached, for the log; it is formatted
// only when an episode starts.
type budgetError struct{ s *Server }

func (e budgetError) Error() string {
	d := e.s.Descriptors()
	return fmt.Sprintf("descriptor budget reached: the data path holds %d descriptors, its budget of %d (the limit %d, less %d open besides it and a reserve of %d for the admin API, metrics and health checks)",
		d.DataPath, d.Budget, d.Limit, d.Other, d.Reserve)
}

// Descriptors returns the budget as it stands.
func (s *Server) Descriptors() DescriptorStats {
	d := DescriptorStats{Limit: s.fds.limit.Load(), Reserve: s.fds.reserve.Load(),
		DataPath: s.dataFDs(), Other: s.fds.other.Load()}
	if d.Limit > 0 {
		d.Budget = max(d.Limit-d.Reserve-d.Other, 0)
	}
	for i := range d.Refused {
		d.Refused[i] = s.fds.refused[i].Load()
	}
	return d
}

// RecountDescriptors reads the limit and counts the descriptors open
// outside the data path now. The engine calls it after every apply.
func (s *Server) RecountDescriptors() {
	s.fds.mu.Lock()
	defer s.fds.mu.Unlock()
	s.readLimit()
	if s.fds.limit.Load() <= 0 {
		return
	}
	count := fdlimit.Open
	if s.fds.countf != nil {
		count = s.fds.countf
	}
	n, err := count()
	if err != nil {
		return // the budget then counts only what the data path holds
	}
	s.fds.other.Store(max(int64(n)-s.dataFDs(), 0))
	s.fds.counted.Store(time.Now().UnixNano())
}

func (s *Server) readLimit() {
	limit := fdlimit.Limit
	if s.fds.limitf != nil {
		limit = s.fds.limitf
	}
	lim, err := limit()
	if err != nil {
		lim = 0
	}
	s.fds.limit.Store(lim)
	s.fds.reserve.Store(fdlimit.Reserve(lim))
}

// startFDWatch counts descriptors and starts the watcher, once, with the
// first listener. Called with s.mu held.
func (s *Server) startFDWatch() {
	if s.fds.started {
		return
	}
	s.fds.started = true
	s.RecountDescriptors()
	s.fds.stop, s.fds.done = make(chan struct{}), make(chan struct{})
	go s.watchFDs()
}

// watchFDs follows the limit (prlimit can change it under a running
// process) and recounts what the data path does not hold: every period
// once half the limit is in use, when near the budget matters, and now
// and then before.
func (s *Server) watchFDs() {
	defer close(s.fds.done)
	t := time.NewTicker(fdWatchEvery)
	defer t.Stop()
	for {
		select {
		case <-s.fds.stop:
			return
		case <-t.C:
		}
		s.fds.mu.Lock()
		s.readLimit()
		lim := s.fds.limit.Load()
		due := time.Now().UnixNano()-s.fds.counted.Load() >= int64(fdCountIdle)
		s.fds.mu.Unlock()
		if lim > 0 && (due || 2*(s.dataFDs()+s.fds.other.Load()) >= lim) {
			s.RecountDescriptors()
		}
	}
}

// stopFDWatch stops the watcher (shutdown), once closing is set.
func (s *Server) stopFDWatch() {
	if s.fds.started && s.fds.stop != nil {
		close(s.fds.stop)
		<-s.fds.done
		s.fds.stop = nil
	}
}
