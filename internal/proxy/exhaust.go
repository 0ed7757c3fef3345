package proxy

import (
	"errors"
	"log/slog"
	"sync"
	"syscall"
	"time"
)

// Running out of descriptors.
//
// When the process reaches its descriptor limit (EMFILE), the system its
// file table limit (ENFILE), the kernel runs short of socket memory
// (ENOBUFS, ENOMEM) or of local ports (EADDRNOTAVAIL), accepting a client
// and dialling a backend fail until something closes. The proxy then backs
// off instead of spinning or failing everyone at once:
//
//   - the accept loop sleeps 5 ms, doubling to 1 s, between attempts; the
//     clients meanwhile wait in the listen backlog;
//   - a connection whose backend dial failed that way waits the same way
//     and dials the same backend again, until connection_timeout, rather
//     than being reset at once, trying every other backend for nothing, or
//     counting it against the backend's health (the backend did nothing
//     wrong);
//   - the episode is logged once when it starts and once when it is over
//     (no such failure for exhaustionQuiet), with how long it lasted and
//     how many accepts and dials failed: never once per attempt.

// exhaustionQuiet is how long without a resource failure ends an episode:
// longer than the longest backoff, so an episode does not end between two
// attempts that both fail.
const exhaustionQuiet = 2 * time.Second

// maxResourceBackoff bounds the wait between two attempts.
const maxResourceBackoff = time.Second

// resourceError reports whether err means this host is short of
// descriptors, socket memory or local ports, rather than a peer's fault.
func resourceError(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// nextBackoff doubles d from 5 ms up to maxResourceBackoff.
func nextBackoff(d time.Duration) time.Duration {
	if d == 0 {
		return 5 * time.Millisecond
	}
	return min(2*d, maxResourceBackoff)
}

// exhaustion tracks one server's episodes of resource exhaustion.
type exhaustion struct {
	mu      sync.Mutex
	active  bool
	since   time.Time // first failure of the episode
	last    time.Time // latest failure
	accepts int64     // accepts that failed during the episode
	dials   int64     // backend dials that failed during the episode
	timer   *time.Timer
}

// failed records a failed accept (dial false) or backend dial (dial true)
// with err, logging the start of an episode.
func (e *exhaustion) failed(log *slog.Logger, dial bool, where string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.last = time.Now()
	if dial {
		e.dials++
	} else {
		e.accepts++
	}
	if e.active {
		return
	}
	e.active, e.since = true, e.last
	op := "accept"
	if dial {
		op = "backend dial"
	}
	log.Error("out of descriptors or socket resources: accepts and backend dials back off until they succeed (logged once per episode)",
		"op", op, "at", where, "err", err.Error())
	e.timer = time.AfterFunc(exhaustionQuiet, func() { e.check(log) })
}

// check ends the episode once exhaustionQuiet passed without a failure.
func (e *exhaustion) check(log *slog.Logger) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if quiet := time.Since(e.last); quiet < exhaustionQuiet {
		e.timer.Reset(exhaustionQuiet - quiet)
		return
	}
	log.Info("descriptors available again: accepting and dialling normally",
		"lasted", e.last.Sub(e.since).Round(time.Millisecond), "failed_accepts", e.accepts, "failed_dials", e.dials)
	e.active, e.accepts, e.dials = false, 0, 0
}

// stop cancels a pending end-of-episode check (shutdown).
func (e *exhaustion) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.timer != nil {
		e.timer.Stop()
	}
}
