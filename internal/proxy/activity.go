package proxy

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"time"
)

// activity implements the idle timeout of one proxied connection: the
// connection ends only when no byte moved in either direction for idle.
// Each direction arms a read deadline once; when it fires, keepWaiting
// re-arms it from the last activity instead of ending the connection if the
// other direction was busy meanwhile. Bytes moving cost one atomic store.
type activity struct {
	idle    time.Duration // 0: no idle timeout
	bufSize int           // copy buffer size (buffer_size); 0: the default
	last    atomic.Int64  // unix nanoseconds of the last byte moved
}

func (a *activity) touch() {
	if a.idle > 0 {
		a.last.Store(time.Now().UnixNano())
	}
}

// arm sets the first deadlines on both conns.
func (a *activity) arm(conns ...net.Conn) {
	if a.idle <= 0 {
		return
	}
	now := time.Now()
	a.last.Store(now.UnixNano())
	for _, c := range conns {
		_ = c.SetDeadline(now.Add(a.idle))
	}
}

// keepWaiting reports whether err is a deadline that fired although the
// connection was active within idle; if so it re-arms the deadline.
func (a *activity) keepWaiting(err error, c net.Conn, read bool) bool {
	if a.idle <= 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	next := time.Unix(0, a.last.Load()).Add(a.idle)
	if !time.Now().Before(next) {
		return false
	}
	if read {
		_ = c.SetReadDeadline(next)
	} else {
		_ = c.SetWriteDeadline(next)
	}
	return true
}
