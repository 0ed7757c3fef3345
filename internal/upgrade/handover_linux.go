//go:build linux

package upgrade

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// The connections' handover, once the new process serves: it says what it
// can adopt (proxy.Targets: its epoll-engine TCP listeners, rules and
// backends); the old process detaches those of its relayed connections
// (proxy.Server.DetachConns) and sends each as one packet, identity and
// held bytes in JSON, client and backend sockets in SCM_RIGHTS; the new
// one adopts each into a loop as it arrives (proxy.Server.AdoptConn).

// handoverDeadline bounds the whole exchange on either side.
const handoverDeadline = 30 * time.Second

// SendConns hands srv's movable connections to the new process and
// returns how many moved. The others (and every one if the new process
// does not answer) finish here.
func (h *Handover) SendConns(srv *proxy.Server) (int, error) {
	c := h.Conn
	_ = c.SetDeadline(time.Now().Add(handoverDeadline))
	var m message
	if _, err := recv(c, &m); err != nil {
		return 0, fmt.Errorf("the new process did not say what it adopts: %w", err)
	}
	if m.Targets == nil {
		return 0, errors.New("the new process did not say what it adopts")
	}
	ds := srv.DetachConns(*m.Targets)
	moved := 0
	var err error
	for _, d := range ds {
		if err == nil {
			err = send(c, message{Conn: &d.HandedConn}, []int{d.CFD, d.BFD})
			if err == nil {
				moved++
			}
		}
		if err != nil { // detached, not sent: it cannot be put back
			unix.Close(d.CFD)
			unix.Close(d.BFD)
			continue
		}
		unix.Close(d.CFD) // the new process holds them now
		unix.Close(d.BFD)
	}
	if err == nil {
		err = send(c, message{End: true}, nil)
	}
	if err != nil {
		return moved, fmt.Errorf("sending the connections (%d of %d sent, the rest reset): %w", moved, len(ds), err)
	}
	return moved, nil
}

// ReceiveConns, in a new process that is ready, asks the old one for its
// connections and adopts them into srv; it returns how many it took.
func (u *Upgrader) ReceiveConns(srv *proxy.Server) (int, error) {
	c := u.parent
	if c == nil {
		return 0, nil
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(handoverDeadline))
	t := srv.AdoptTargets()
	if t == nil {
		t = proxy.Targets{}
	}
	if err := send(c, message{Targets: &t}, nil); err != nil {
		return 0, err
	}
	n := 0
	buf, oob := make([]byte, maxPacket), make([]byte, unix.CmsgSpace(maxFDs*4))
	for {
		var m message
		fds, err := recvInto(c, &m, buf, oob)
		if err != nil {
			return n, fmt.Errorf("receiving the connections: %w", err)
		}
		if m.End {
			return n, nil
		}
		if m.Conn == nil || len(fds) != 2 {
			for _, fd := range fds {
				unix.Close(fd)
			}
			continue
		}
		if err := srv.AdoptConn(*m.Conn, fds[0], fds[1], n); err != nil {
			u.log.Warn("upgrade: a handed-over connection could not be adopted; closed", "client", m.Conn.Client, "err", err.Error())
			continue
		}
		n++
	}
}
