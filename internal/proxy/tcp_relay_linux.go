//go:build linux

package proxy

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
)

// The relay of a connected TCP connection (see lconn for how it moves
// bytes) and how it closes. Splice pipes come from eventloop's pool,
// borrowed only while a burst of data flows and counted against the data
// path's descriptor budget (fdbudget.go); copy buffers from pools by size.

// ldir is one direction of a relayed connection.
type ldir struct {
	pend   []byte  // read but not yet written to the destination
	pbuf   *[]byte // pend's pooled buffer, nil when pend is not pooled
	skip   int     // bytes at the front of pend not counted as traffic (PROXY header)
	pipe   *eventloop.Pipe
	inPipe int  // bytes in pipe not yet spliced to the destination
	bulk   bool // the last read filled the buffer: splice
	eof    bool // the source ended
	shut   bool // the destination was sent a FIN
	rd     bool // an edge said the source has bytes (or its FIN, or an error) not yet read
	wr     bool // the destination took the last write whole (or an edge said it is writable again)
	hup    bool // the source's FIN is known to be queued (EPOLLRDHUP/EPOLLHUP)
	n      int64
}

func (d *ldir) pending() bool { return len(d.pend) > 0 || d.inPipe > 0 }

// readable: the direction may read its source.
func (d *ldir) readable() bool { return !d.eof && !d.pending() }

// Readiness edges a socket's events set (the set is edge-triggered).
const (
	evRead  = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLERR | unix.EPOLLHUP
	evWrite = unix.EPOLLOUT | unix.EPOLLERR | unix.EPOLLHUP
	evHup   = unix.EPOLLRDHUP | unix.EPOLLHUP
)

// event records the readiness of one of the connection's sockets and acts
// on it.
func (c *lconn) event(backend bool, ev uint32) {
	// in reads from this socket, out writes to it.
	in, out := &c.up, &c.down
	if backend {
		in, out = &c.down, &c.up
	}
	if ev&evRead != 0 {
		in.rd = true
		in.hup = in.hup || ev&evHup != 0
	}
	if ev&evWrite != 0 {
		out.wr = true
	}
	switch c.state {
	case stConnecting:
		if !backend {
			return
		}
		c.connectDone(ev) // (the same event may say the backend sent already)
		if c.state != stRelay {
			return
		}
	case stRelay:
	default:
		return
	}
	c.drive()
}

// drive moves what the known readiness allows: each direction first
// writes what it holds, then reads its source while it has bytes. A
// direction that stopped with bytes still to read (its turn's bound) is
// queued for the loop's next turn, since no new edge will come for them.
func (c *lconn) drive() {
	for _, d := range [2]*ldir{&c.up, &c.down} {
		if d.pending() && d.wr && !c.flush(d) {
			return
		}
		if d.rd && d.readable() && !c.pump(d) {
			return
		}
	}
	if (c.up.rd && c.up.readable()) || (c.down.rd && c.down.readable()) {
		c.lp.again(c)
	}
	c.interest()
}

// defaultTurnReads is how many reads (or pipefuls) a direction makes per
// turn before other connections get theirs.
const defaultTurnReads = 8

// pump reads d's source and writes to its destination, a bounded number of
// times per turn so that other connections get theirs. A short read means
// the source is drained (a byte that comes later is a new edge) unless its
// FIN is known to be queued (d.hup): then it reads on to it.
func (c *lconn) pump(d *ldir) bool {
	src, dst := c.cfd, c.bfd
	if d == &c.down {
		src, dst = c.bfd, c.cfd
	}
	size := c.rt.BufferSize
	if size <= 0 {
		size = defaultBufSize
	}
	lp := c.lp
	if len(lp.buf) < size {
		lp.buf = make([]byte, size)
	}
	for range lp.turnReads {
		if d.bulk {
			more, ok := c.spliceIn(d, src, dst, size)
			if !ok {
				return false
			}
			if !more {
				if d.inPipe > 0 || !d.hup {
					return true // the destination is full, or the source drained (spliceIn)
				}
				// The FIN is queued behind what was read: on to it.
			}
			continue
		}
		buf := lp.buf[:size]
		n, err := eventloop.Recv(src, buf)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			d.rd = false
			return true
		}
		if err != nil {
			c.fail(d, os.NewSyscallError("recvfrom", err))
			return false
		}
		if n == 0 {
			return c.sourceEnded(d)
		}
		c.last = lp.now
		w, werr := writeSome(dst, buf[:n])
		if werr != nil {
			c.fail(d, dstError{os.NewSyscallError("sendto", werr)})
			return false
		}
		c.moved(d, int64(w))
		if w < n {
			d.wr = false
			d.keep(buf[w:n], size)
			return true
		}
		if n == size {
			d.bulk = true
			continue
		}
		if !d.hup {
			d.rd = false // a short read: the next edge says when there is more
			return true
		}
	}
	return true
}

// spliceIn moves one pipeful from src to dst. more reports that the source
// may have more right away; ok false that the connection ended.
func (c *lconn) spliceIn(d *ldir, src, dst, size int) (more, ok bool) {
	if d.pipe == nil {
		p, err := getPipe(c.lp.srv)
		if err == errPipeBudget { // (fdbudget.go)
			c.lp.srv.fds.refused[RefusedPipe].Add(1)
		}
		if err == errPipeBudget || resourceError(err) {
			d.bulk = false // copy this burst through the buffer instead
			return true, true
		}
		if err != nil {
			c.fail(d, err)
			return false, false
		}
		d.pipe = p
	}
	in, err := eventloop.Splice(src, d.pipe.W, eventloop.PipeSize, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
	switch {
	case err == unix.EINTR:
		return true, true
	case err == unix.EAGAIN:
		d.bulk, d.rd = false, false
		c.putPipe(d)
		return false, true
	case err != nil:
		c.fail(d, os.NewSyscallError("splice", err))
		return false, false
	case in == 0:
		c.putPipe(d)
		return false, c.sourceEnded(d)
	}
	c.last = c.lp.now
	if in < int64(size) {
		d.bulk = false
		d.rd = d.hup // a short read drained the source (but for a queued FIN)
	}
	d.inPipe = int(in)
	if !c.flushPipe(d, dst) {
		return false, false
	}
	return d.inPipe == 0 && d.bulk, true
}

// flushPipe splices what the pipe holds to dst; it reports false when the
// connection ended.
func (c *lconn) flushPipe(d *ldir, dst int) bool {
	for d.inPipe > 0 {
		out, err := eventloop.Splice(d.pipe.R, dst, d.inPipe, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			d.wr = false
			return true // wait for dst to be writable, holding the pipe
		}
		if err != nil {
			c.fail(d, dstError{os.NewSyscallError("splice", err)})
			return false
		}
		d.inPipe -= int(out)
		c.moved(d, out)
	}
	c.putPipe(d)
	return true
}

// putPipe gives an empty pipe back to the pool.
func (c *lconn) putPipe(d *ldir) {
	if d.pipe != nil && d.inPipe == 0 {
		putPipe(d.pipe)
		d.pipe = nil
	}
}

// keep saves bytes the destination did not take.
func (d *ldir) keep(b []byte, size int) {
	d.pbuf = getBuf(size)
	d.pend = (*d.pbuf)[:copy(*d.pbuf, b)]
}

// flush writes what d holds to its destination. It reports false when the
// connection ended.
func (c *lconn) flush(d *ldir) bool {
	dst := c.bfd
	if d == &c.down {
		dst = c.cfd
	}
	if d.inPipe > 0 {
		if !c.flushPipe(d, dst) {
			return false
		}
	}
	for len(d.pend) > 0 {
		w, err := writeSome(dst, d.pend)
		if err != nil {
			c.fail(d, dstError{os.NewSyscallError("sendto", err)})
			return false
		}
		if w == 0 {
			d.wr = false
			return true
		}
		counted := w
		if d.skip > 0 {
			s := min(d.skip, w)
			d.skip -= s
			counted -= s
		}
		c.moved(d, int64(counted))
		d.pend = d.pend[w:]
	}
	if d.pbuf != nil {
		putBuf(d.pbuf)
		d.pbuf = nil
	}
	d.pend = nil
	if d.eof && !d.pending() {
		return c.sourceEnded(d)
	}
	return true
}

// sourceEnded: d's source sent its FIN. Once d's destination has taken
// everything it is sent a FIN too; when both directions ended the
// connection is over.
func (c *lconn) sourceEnded(d *ldir) bool {
	d.eof = true
	if d.pending() {
		return true
	}
	if !d.shut {
		d.shut = true
		// The last direction to end needs no shutdown: finish closes
		// both sockets, and the close sends the FIN (nothing is left
		// unread on either, so it is not a reset).
		if other := c.opposite(d); !other.shut {
			if d == &c.up {
				eventloop.ShutdownWR(c.bfd)
			} else {
				eventloop.ShutdownWR(c.cfd)
			}
		}
	}
	if c.up.shut && c.down.shut {
		c.finish(false)
		return false
	}
	return true
}

// opposite is the direction other than d.
func (c *lconn) opposite(d *ldir) *ldir {
	if d == &c.up {
		return &c.down
	}
	return &c.up
}

// moved accounts n bytes written in direction d: the direction's count,
// the backend's (this loop's share, for the admin API), the route's
// metrics, and the activity idle_timeout watches.
func (c *lconn) moved(d *ldir, n int64) {
	c.last = c.lp.now
	if n <= 0 {
		return
	}
	d.n += n
	o := c.rt.Observer
	if d == &c.up {
		c.be.AddBytesIn(c.lp.idx, n)
		if o != nil {
			o.BytesIn(c.lp.idx, n)
		}
		return
	}
	c.be.AddBytesOut(c.lp.idx, n)
	if o != nil {
		o.BytesOut(c.lp.idx, n)
	}
}

// fail ends the connection on an error in direction d: a reset or I/O
// error on one side is passed on as a reset, so the other peer sees a
// broken stream as broken (ECONNRESET), never as an orderly end of a
// truncated one.
func (c *lconn) fail(d *ldir, err error) {
	if d == &c.up {
		c.upErr = err
	} else {
		c.downErr = err
	}
	c.finish(abortive(err))
}

// writeSome writes b without blocking: the bytes written (0 when the socket
// would block) or an error.
func writeSome(fd int, b []byte) (int, error) {
	for {
		w, err := eventloop.Send(fd, b)
		switch err {
		case nil:
			return w, nil
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return 0, nil
		}
		return 0, err
	}
}

// interest registers the connection's sockets in the epoll set, edge-
// triggered, once: the backend's since its connect (for reads, writes and
// the connect's end), the client's once relaying starts, for reads. The
// client's writes are added the first time a write to it falls short, and
// stay. Nothing else changes a registration, and a socket whose peer ended
// stays in the set: an edge is reported once, not on every wait.
func (c *lconn) interest() {
	if !c.creg || (c.down.pending() && c.cmask&unix.EPOLLOUT == 0) {
		m := uint32(unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET)
		if c.down.pending() || c.cmask&unix.EPOLLOUT != 0 {
			m |= unix.EPOLLOUT
		}
		c.register(false, m)
	}
	if !c.breg {
		c.register(true, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET)
	}
}

// register adds the client's (or backend's) socket to the epoll set with
// events m, or changes its events to m.
func (c *lconn) register(backend bool, m uint32) {
	fd, reg, mask := c.cfd, &c.creg, &c.cmask
	if backend {
		fd, reg, mask = c.bfd, &c.breg, &c.bmask
	}
	op := unix.EPOLL_CTL_MOD
	if !*reg {
		op = unix.EPOLL_CTL_ADD
	}
	if err := c.lp.Control(op, fd, m); err != nil {
		c.lp.srv.log.Error("epoll_ctl failed", "conn", c.ID, "err", err)
		return
	}
	*reg, *mask = true, m
}

// finish closes a relayed connection and accounts for it.
func (c *lconn) finish(reset bool) {
	rt, b := c.rt, c.be
	c.state = stDone
	for _, d := range []*ldir{&c.up, &c.down} {
		if d.pbuf != nil {
			putBuf(d.pbuf)
			d.pbuf, d.pend = nil, nil
		}
		if d.pipe != nil {
			if d.inPipe == 0 {
				putPipe(d.pipe)
			} else {
				closePipe(d.pipe)
			}
			d.pipe = nil
		}
	}
	if c.cfd >= 0 {
		c.closeFd(false, reset)
	}
	if c.bfd >= 0 {
		c.closeFd(true, reset)
	}
	c.lp.srv.tcpFinished(c.lp.idx, rt, b, c.ci.Client, c.ConnIdent, c.release, c.upErr, c.downErr, c.cut, c.up.n, c.down.n)
	c.untrack()
}

var pipes = eventloop.PipePool{Max: 256}

// errPipeBudget: no free pipe, and a new one would take s's data path
// beyond its descriptor budget (fdbudget.go).
var errPipeBudget = errors.New("no splice pipe within the descriptor budget")

// getPipe takes a pipe from the pool, or opens one if s's descriptor
// budget has room for it.
func getPipe(s *Server) (*eventloop.Pipe, error) {
	if p := pipes.Get(); p != nil {
		return p, nil
	}
	if !s.fdRoom(2) {
		return nil, errPipeBudget
	}
	p, err := eventloop.OpenPipe()
	if err != nil {
		return nil, err
	}
	splicePipes.Add(2) // the descriptor budget (fdbudget.go)
	return p, nil
}

// putPipe returns an empty pipe to the pool, or closes it when the pool
// is full.
func putPipe(p *eventloop.Pipe) {
	if !pipes.Put(p) {
		closePipe(p)
	}
}

// closePipe closes a pipe of the pool's.
func closePipe(p *eventloop.Pipe) {
	p.Close()
	splicePipes.Add(-2)
}
