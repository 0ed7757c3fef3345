package proxy

import (
	"errors"
	"math/bits"
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
//
// Each burst of data starts with one read into a pooled buffer of
// a.bufSize bytes (buffer_size), taken only once the socket is readable and
// returned before the next wait: a small request or reply costs a read and a
// write, as in any proxy. When that read fills the buffer more is likely
// queued, and the rest of the burst goes through splice(2) without being
// copied to user space. An idle connection holds neither a buffer nor a pipe.
func spliceCopy(dst, src *net.TCPConn, a *activity, m *meter) (int64, error) {
	srcRC, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	dstRC, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	size := a.bufSize
	if size <= 0 {
		size = defaultBufSize
	}
	var total int64
	for {
		var n int
		var rerr error
		var bp *[]byte
		// Read until EAGAIN before waiting. Stopping at a short read, as
		// nginx does with edge-triggered epoll, would save a system call
		// per burst, but only because nginx also sees EPOLLRDHUP: a FIN
		// that came with the last bytes raises no further edge, and only
		// another read finds it. Go's netpoller does not pass RDHUP on.
		if err := srcRC.Read(func(fd uintptr) bool {
			bp = getBuf(size)
			for {
				n, rerr = rawRead(int(fd), *bp)
				if rerr != unix.EINTR {
					break
				}
			}
			if rerr == unix.EAGAIN {
				putBuf(bp)
				bp = nil
				return false // wait for readability holding nothing
			}
			return true
		}); err != nil {
			if bp != nil {
				putBuf(bp)
			}
			if a.keepWaiting(err, src, true) {
				continue
			}
			return total, err
		}
		if rerr != nil {
			putBuf(bp)
			return total, os.NewSyscallError("read", rerr)
		}
		if n <= 0 { // EOF
			putBuf(bp)
			return total, nil
		}
		a.touch()
		full := n == len(*bp)
		werr := writeAll(dstRC, dst, (*bp)[:n], a)
		putBuf(bp)
		if werr != nil {
			return total, dstError{werr}
		}
		total += int64(n)
		m.add(int64(n))
		if !full {
			continue
		}
		sn, err := spliceBurst(dstRC, srcRC, dst, a, m)
		total += sn
		if err == errWouldBlock {
			continue
		}
		if err != nil {
			return total, err
		}
		if sn == 0 {
			return total, nil // EOF right after the buffered read
		}
	}
}

// writeAll writes b to dst, treating a write deadline that fires while the
// connection is still active as a reason to keep waiting.
func writeAll(dstRC syscall.RawConn, dst *net.TCPConn, b []byte, a *activity) error {
	for len(b) > 0 {
		w, err := writeRaw(dstRC, b)
		b = b[w:]
		if w > 0 {
			a.touch()
		}
		if err != nil {
			if a.keepWaiting(err, dst, false) {
				continue
			}
			if errno, ok := err.(unix.Errno); ok {
				return os.NewSyscallError("write", errno)
			}
			return err
		}
	}
	return nil
}

const defaultBufSize = 8192

// bufPools holds copy buffers by size class (powers of two from 1 KiB to
// 1 MiB), so buffer_size can change on a reload without mixing sizes.
var bufPools [11]sync.Pool

func sizeClass(size int) int {
	c := bits.Len(uint(size-1)) - 10
	return min(max(c, 0), len(bufPools)-1)
}

func getBuf(size int) *[]byte {
	c := sizeClass(size)
	if bp, ok := bufPools[c].Get().(*[]byte); ok && len(*bp) == size {
		return bp
	}
	b := make([]byte, size)
	return &b
}

func putBuf(bp *[]byte) { bufPools[sizeClass(len(*bp))].Put(bp) }

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
				in, ierr = rawSplice(int(fd), p.w, pipeSize, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
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
					out, oerr = rawSplice(p.r, int(fd), int(in), unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
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
				return total, dstError{werr}
			}
			if oerr != nil {
				p.close()
				return total, dstError{os.NewSyscallError("splice", oerr)}
			}
			in -= out
			total += out
			m.add(out)
			a.touch()
		}
	}
}
