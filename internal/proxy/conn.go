package proxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
)

// admitConn takes a slot of max_connections for a new connection of the
// goroutine engine and counts it in Stats.Active, unless the cap is
// reached (slots.go); untrack gives both back.
func (s *Server) admitConn() bool {
	if s.slots.take(1) == 0 && !s.stealSlot(nil) {
		return false
	}
	s.Stats.Active.Add(1)
	return true
}

// abortive reports whether a copy error is a peer's reset or an I/O error,
// rather than the proxy closing the connection or the idle timeout.
func abortive(err error) bool {
	return err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded)
}

// dstError marks a relay error that came from writing to a direction's
// destination rather than reading its source, so that endReason blames the
// right side: the client→backend copy failing to write means the backend
// failed (a reset mid-stream), not the client.
type dstError struct{ error }

func (e dstError) Unwrap() error { return e.error }

// endReason says how a relayed connection ended from its two directions'
// errors; cut is the end a drain or a shutdown forced (EndEOF: none).
func endReason(upErr, downErr error, cut End) End {
	if cut != EndEOF {
		return cut
	}
	for _, e := range []struct {
		err        error
		side, peer End // whose fault an error reading (side) or writing (peer) is
	}{{upErr, EndClientError, EndBackendError}, {downErr, EndBackendError, EndClientError}} {
		switch {
		case e.err == nil, errors.Is(e.err, net.ErrClosed):
		case errors.Is(e.err, os.ErrDeadlineExceeded):
			return EndIdleTimeout
		case errors.As(e.err, new(dstError)):
			return e.peer
		default:
			return e.side
		}
	}
	return EndEOF
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return netip.AddrPort{}
}
