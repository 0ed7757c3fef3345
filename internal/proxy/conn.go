package proxy

import (
	"errors"
	"net"
	"net/netip"
	"os"
)

// admitConn counts a new connection in Stats.Active unless that would take
// it beyond max (0: no limit). The check and the count are one atomic step,
// so listeners accepting at the same moment cannot overshoot the cap together.
func (s *Server) admitConn(max int64) bool {
	for {
		n := s.Stats.Active.Load()
		if max > 0 && n >= max {
			return false
		}
		if s.Stats.Active.CompareAndSwap(n, n+1) {
			return true
		}
	}
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
