//go:build linux

package eventloop

import (
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Pipes for zero-copy forwarding with splice(2), without the idle-pipe
// trap.
//
// io.Copy between two *net.TCPConn already splices on Linux, but it takes a
// pipe pair from its pool before it waits for data and keeps it until EOF,
// so every idle proxied connection pins two pipes (4 descriptors and their
// kernel buffers) on top of its two sockets. A relay instead borrows a pipe
// from this pool only while a burst of data flows and gives it back as soon
// as the source would block: an idle connection holds exactly its two
// sockets.

// PipeSize is the capacity asked for each pipe, like Go's own splice;
// pages are only used while data is in flight.
const PipeSize = 1 << 20

// Pipe is a pipe's read and write ends, both non-blocking.
type Pipe struct{ R, W int }

// OpenPipe opens a pipe of PipeSize (best effort) bytes.
func OpenPipe() (*Pipe, error) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	_, _ = unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, PipeSize) // best effort
	return &Pipe{R: fds[0], W: fds[1]}, nil
}

// Close closes both ends.
func (p *Pipe) Close() {
	unix.Close(p.R)
	unix.Close(p.W)
}

// PipePool keeps empty pipes for reuse, up to Max of them.
type PipePool struct {
	Max  int
	mu   sync.Mutex
	free []*Pipe
}

// Get takes a free pipe, or returns nil when there is none.
func (pp *PipePool) Get() *Pipe {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	n := len(pp.free)
	if n == 0 {
		return nil
	}
	p := pp.free[n-1]
	pp.free = pp.free[:n-1]
	return p
}

// Put keeps an empty pipe, reporting false (the caller closes it) when
// the pool is full.
func (pp *PipePool) Put(p *Pipe) bool {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if len(pp.free) >= pp.Max {
		return false
	}
	pp.free = append(pp.free, p)
	return true
}

// Free is the number of pipes in the pool.
func (pp *PipePool) Free() int {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return len(pp.free)
}
