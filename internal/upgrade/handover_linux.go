//go:build linux

package upgrade

import (
	"encoding/json"
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

// Moved counts what a handover moved. Gone, when the new process said what
// it adopts, tells a rule and backend it does not have (proxy.ConnFilter's
// Gone): the connections on them stay here and are drained.
type Moved struct {
	Conns, Sessions int
	Gone            func(rule, id, addr string) bool
}

// SendConns hands srv's movable TCP connections and UDP sessions to the
// new process and returns how many moved. The others (and every one if
// the new process does not answer) finish here.
//
// counters, called once everything movable has moved, returns this
// process's counters in packets' worth (each marshalled to JSON), for the
// new process to carry on from (nil: none).
func (h *Handover) SendConns(srv *proxy.Server, counters func() []any) (Moved, error) {
	c := h.Conn
	_ = c.SetDeadline(time.Now().Add(handoverDeadline))
	var m message
	if _, err := recv(c, &m); err != nil {
		return Moved{}, fmt.Errorf("the new process did not say what it adopts: %w", err)
	}
	if m.Targets == nil {
		return Moved{}, errors.New("the new process did not say what it adopts")
	}
	var gone func(rule, id, addr string) bool
	// Empty: a goroutine-engine process, which adopts nothing but may have
	// every rule; nothing is taken as gone then.
	if t := *m.Targets; len(t) > 0 {
		gone = t.Lacks
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
	if err != nil {
		return Moved{Conns: moved, Gone: gone}, fmt.Errorf("sending the connections (%d of %d sent, the rest reset): %w", moved, len(ds), err)
	}
	ss := srv.DetachSessions(*m.Targets)
	sent := 0
	for _, d := range ss {
		if err == nil {
			if err = send(c, message{Session: &d.HandedSession}, []int{d.FD}); err == nil {
				sent++
			}
		}
		unix.Close(d.FD)
	}
	if err == nil && counters != nil {
		for _, part := range counters() {
			b, merr := json.Marshal(part)
			if merr != nil {
				continue
			}
			if err = send(c, message{Counters: b}, nil); err != nil {
				break
			}
		}
	}
	if err == nil {
		err = send(c, message{End: true}, nil)
	}
	if err != nil {
		return Moved{moved, sent, gone}, fmt.Errorf("sending the UDP sessions or counters (%d of %d sent, the rest ended): %w", sent, len(ss), err)
	}
	return Moved{moved, sent, gone}, nil
}

// ReceiveConns, in a new process that is ready, asks the old one for its
// connections and sessions and adopts them into srv; it returns how many
// it took.
//
// counters receives each packet of the old process's counters.
func (u *Upgrader) ReceiveConns(srv *proxy.Server, counters func(json.RawMessage)) (Moved, error) {
	var n Moved
	c := u.parent
	if c == nil {
		return n, nil
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(handoverDeadline))
	t := srv.AdoptTargets()
	if t == nil {
		t = proxy.Targets{}
	}
	if err := send(c, message{Targets: &t}, nil); err != nil {
		return n, err
	}
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
		switch {
		case m.Counters != nil && len(fds) == 0:
			if counters != nil {
				counters(m.Counters)
			}
		case m.Conn != nil && len(fds) == 2:
			if err := srv.AdoptConn(*m.Conn, fds[0], fds[1], n.Conns); err != nil {
				u.log.Warn("upgrade: a handed-over connection could not be adopted; closed", "client", m.Conn.Client, "err", err.Error())
				continue
			}
			n.Conns++
		case m.Session != nil && len(fds) == 1:
			if err := srv.AdoptSession(*m.Session, fds[0]); err != nil {
				u.log.Warn("upgrade: a handed-over UDP session could not be adopted; ended", "client", m.Session.Client, "err", err.Error())
				continue
			}
			n.Sessions++
		default:
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}
}
