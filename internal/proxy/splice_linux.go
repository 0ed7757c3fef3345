package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Zero-copy forwarding with splice(2), without the idle-pipe trap.
//
// io.Copy between two *net.TCPConn already splices on Linux, but it takes a
// pipe pair from its pool before it waits for data and keeps it until EOF, so
// every idle proxied connection pins two pipes (4 descriptors and their kernel
// buffers) on top of its two sockets. spliceCopy instead waits for the source
// to be readable holding nothing, borrows a pipe only while data flows, and
// gives it back as soon as the source would block: an idle connection holds
// exactly its two sockets.

const pipeSize = 1 << 20 // like Go's own splice; pages are only used while data is in flight

type pipe struct{ r, w int }

var pipes = struct {
	sync.Mutex
	free []*pipe
}{}

const maxFreePipes = 256

func getPipe() (*pipe, error) {
	pipes.Lock()
	if n := len(pipes.free); n > 0 {
		p := pipes.free[n-1]
		pipes.free = pipes.free[:n-1]
		pipes.Unlock()
		return p, nil
	}
	pipes.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
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
}

// errWouldBlock is internal: the source has no data right now.
var errWouldBlock = errors.New("would block")

// spliceCopy copies src to dst until src reaches EOF or an error, calling
// a.touch whenever bytes move. It returns the bytes copied. A deadline on
// either conn ends the wait with os.ErrDeadlineExceeded, which the caller
// may treat as idleness. m (nil: none) counts the bytes as they are written.
func spliceCopy(dst, src *net.TCPConn, a *activity, m *meter) (int64, error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	var total int64
	var peek [1]byte
	for {
		// Wait for data (or EOF) holding no pipe.
		var eof bool
		var perr error
		if err := srcRC.Read(func(fd uintptr) bool {
			n, _, e := unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if e == unix.EAGAIN || e == unix.EINTR {
				return false
			}
			if e != nil {
				perr = os.NewSyscallError("recvfrom", e)
			} else if n == 0 {
				eof = true
			}
			return true
		}); err != nil {
			if a.keepWaiting(err, src, true) {
				continue
			}
			return total, err
		}
		if perr != nil {
			return total, perr
		}
		if eof {
			return total, nil
		}
		n, err := spliceBurst(dstRC, srcRC, dst, a, m)
		total += n
		if err == errWouldBlock {
			continue
		}
		if err != nil || n == 0 {
			return total, err
		}
	}
}

// spliceBurst moves data from src to dst through a pooled pipe until src
// would block or ends. It returns errWouldBlock in the first case and
// (n, nil) with the last read being 0 bytes at EOF.
func spliceBurst(dstRC, srcRC syscall.RawConn, dst *net.TCPConn, a *activity, m *meter) (int64, error) {
	p, err := getPipe()
	if err != nil {
		return 0, err
	}
	var total int64
	for {
		var in int64
		var ierr error
		if rerr := srcRC.Read(func(fd uintptr) bool {
			for {
				in, ierr = unix.Splice(int(fd), nil, p.w, nil, pipeSize, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				if ierr != unix.EINTR {
					return true
				}
			}
		}); rerr != nil {
			// A deadline or a close before the splice ran: the pipe is empty,
			// and the caller's wait sorts out idleness from a real end (this
			// must not read as EOF, which would half-close the other side).
			putPipe(p)
			return total, errWouldBlock
		}
		if ierr == unix.EAGAIN {
			putPipe(p)
			return total, errWouldBlock
		}
		if ierr != nil {
			p.close()
			return total, os.NewSyscallError("splice", ierr)
		}
		if in == 0 { // EOF
			putPipe(p)
			return total, nil
		}
		a.touch()
		// Drain the pipe into dst, waiting for dst to be writable as needed.
		for in > 0 {
			var out int64
			var oerr error
			werr := dstRC.Write(func(fd uintptr) bool {
				for {
					out, oerr = unix.Splice(p.r, nil, int(fd), nil, int(in), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
					if oerr != unix.EINTR {
						return oerr != unix.EAGAIN
					}
				}
			})
			if werr != nil {
				if a.keepWaiting(werr, dst, false) {
					continue
				}
				p.close()
				return total, werr
			}
			if oerr != nil {
				p.close()
				return total, os.NewSyscallError("splice", oerr)
			}
			in -= out
			total += out
			m.add(out)
			a.touch()
		}
	}
}
