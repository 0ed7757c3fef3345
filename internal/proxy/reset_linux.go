package proxy

import (
	"os"
	"sync/atomic"
	"syscall"
)

// errPeerReset is what a copy that read a plain EOF reports when the peer
// had in fact reset the connection (see resetByPeer).
var errPeerReset = os.NewSyscallError("read", syscall.ECONNRESET)

// tcpStateClose is TCP_CLOSE in tcp_info.tcpi_state.
const tcpStateClose = 7

// resetByPeer tells a reset from an orderly end after a read from c saw EOF.
//
// Both copies of a connection use each socket, and a socket's pending error
// is reported once: when the copy writing to a socket is the first to
// notice the peer's reset (EPIPE, ECONNRESET), the copy reading from it
// then sees a plain EOF. The TCP state still tells the two apart: after the
// peer's FIN the socket is in CLOSE_WAIT until we send our own FIN, after a
// reset it is CLOSE. finSent is set just before we send our FIN on c (once
// both FINs crossed, the state is CLOSE too), and is read after the state
// so that a FIN we sent meanwhile is not taken for a reset.
func resetByPeer(rc syscall.RawConn, finSent *atomic.Bool) bool {
	return tcpState(rc) == tcpStateClose && !finSent.Load()
}
