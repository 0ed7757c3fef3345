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
func spliceCopy(dst, src *net.TCPConn, dstRC, srcRC syscall.RawConn, cp *copier, a *activity, m *meter) (int64, error) {
	cp.size = a.bufSize
	if cp.size <= 0 {
		cp.size = defaultBufSize
	}
	// Method values made once: the RawConn callbacks then capture nothing
	// new, so a read or a write allocates nothing per burst.
	readFn, writeFn := cp.read, cp.write
	var total int64
	for {
		// Read until EAGAIN before waiting. Stopping at a short read, as
		// nginx does with edge-triggered epoll, would save a system call
		// per burst, but only because nginx also sees EPOLLRDHUP: a FIN
		// that came with the last bytes raises no further edge, and only
		// another read finds it. Go's netpoller does not pass RDHUP on.
		if err := srcRC.Read(readFn); err != nil {
			if cp.bp != nil {
				putBuf(cp.bp)
				cp.bp = nil
			}
			if a.keepWaiting(err, src, true) {
				continue
			}
			return total, err
		}
		bp, n := cp.bp, cp.n
		cp.bp = nil
		if cp.rerr != nil {
			putBuf(bp)
			return total, os.NewSyscallError("read", cp.rerr)
		}
		if n <= 0 { // EOF
			putBuf(bp)
			return total, nil
		}
		a.touch()
		full := n == len(*bp)
		werr := cp.writeAll(dstRC, writeFn, dst, (*bp)[:n], a)
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

// copier is one direction's state between spliceCopy and its RawConn
// callbacks (part of the connection, so it costs no allocation of its own).
type copier struct {
	size int
	// read's results: a pooled buffer (nil while waiting), the bytes read
	// into it, and the error.
	bp   *[]byte
	n    int
	rerr error
	// write's input and results.
	wb   []byte
	wn   int
	werr error
}

// read is the RawConn.Read callback: one read into a pooled buffer taken
// only now that the socket is readable, given back if it would block.
func (cp *copier) read(fd uintptr) bool {
	cp.bp = getBuf(cp.size)
	for {
		cp.n, cp.rerr = rawRead(int(fd), *cp.bp)
		if cp.rerr != unix.EINTR {
			break
		}
	}
	if cp.rerr == unix.EAGAIN {
		putBuf(cp.bp)
		cp.bp = nil
		return false // wait for readability holding nothing
	}
	return true
}

// write is the RawConn.Write callback: it writes cp.wb until it is all
// gone, the socket would block (wait) or a write fails.
func (cp *copier) write(fd uintptr) bool {
	for len(cp.wb) > 0 {
		w, e := rawWrite(int(fd), cp.wb)
		if e == unix.EINTR {
			continue
		}
		if e == unix.EAGAIN {
			return false
		}
		if e != nil {
			cp.werr = os.NewSyscallError("write", e)
			return true
		}
		cp.wn += w
		cp.wb = cp.wb[w:]
	}
	return true
}

// writeAll writes b to dst, treating a write deadline that fires while the
// connection is still active as a reason to keep waiting.
func (cp *copier) writeAll(dstRC syscall.RawConn, writeFn func(uintptr) bool, dst *net.TCPConn, b []byte, a *activity) error {
	cp.wb = b
	defer func() { cp.wb = nil }()
	for len(cp.wb) > 0 {
		cp.wn, cp.werr = 0, nil
		err := dstRC.Write(writeFn)
		if cp.wn > 0 {
			a.touch()
		}
		if err == nil {
			err = cp.werr
		}
		if err != nil {
			if a.keepWaiting(err, dst, false) {
				continue
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
