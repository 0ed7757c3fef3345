package proxy

import (
	"errors"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Zero-copy forwarding with splice(2), without the idle-pipe trap.
//
// io.Copy between two *net.TCPConn already splices on Linux, but it takes a
// pipe pair from its pool before it waits for data and keeps it until EOF, so
// every idle proxied connection pins two pipes (4 descriptors and their kernel
// buffers) on top of its two sockets. The relay (tcpconn.go) instead borrows
// a pipe from this pool only while a burst of data flows and gives it back
// as soon as the source would block: an idle connection holds exactly its
// two sockets. The same goes for the buffers a burst starts with.

const pipeSize = 1 << 20 // like Go's own splice; pages are only used while data is in flight

type pipe struct{ r, w int }

var pipes = struct {
	sync.Mutex
	free []*pipe
}{}

const maxFreePipes = 256

// errPipeBudget: no free pipe, and a new one would take s's data path
// beyond its descriptor budget (fdbudget.go).
var errPipeBudget = errors.New("no splice pipe within the descriptor budget")

// getPipe takes a pipe from the pool, or opens one if s's descriptor
// budget has room for it.
func getPipe(s *Server) (*pipe, error) {
	pipes.Lock()
	if n := len(pipes.free); n > 0 {
		p := pipes.free[n-1]
		pipes.free = pipes.free[:n-1]
		pipes.Unlock()
		return p, nil
	}
	pipes.Unlock()
	if !s.fdRoom(2) {
		return nil, errPipeBudget
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	splicePipes.Add(2)                                                 // the descriptor budget (fdbudget.go)
	_, _ = unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize) // best effort
	return &pipe{r: fds[0], w: fds[1]}, nil
}

// putPipe returns an empty pipe to the pool.
func putPipe(p *pipe) {
	pipes.Lock()
	if len(pipes.free) < maxFreePipes {
		pipes.free = append(pipes.free, p)
		pipes.Unlock()
		return
	}
	pipes.Unlock()
	p.close()
}

func (p *pipe) close() {
	unix.Close(p.r)
	unix.Close(p.w)
	splicePipes.Add(-2)
}
