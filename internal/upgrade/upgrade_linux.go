//go:build linux

package upgrade

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudflare/tableflip"
	"golang.org/x/sys/unix"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
	"github.com/dynamic-proxy/dynamic-proxy/internal/version"
)

// Supported reports whether this system can upgrade in place.
const Supported = true

// Upgrader is the process's side of upgrades: as the new process, what it
// inherited from the old one; as the old one, the upgrade it runs.
type Upgrader struct {
	log     *slog.Logger
	tf      *tableflip.Upgrader
	running atomic.Bool // an upgrade runs (or ran and succeeded: done)
	done    atomic.Bool // this process has a successor
	parent  *net.UnixConn
}

var (
	once      sync.Once
	single    *Upgrader
	singleErr error
)

// New returns the process's Upgrader (tableflip allows one per process);
// timeout bounds how long a new process may take to report ready before
// it is killed and the upgrade fails. Only the first call's timeout is
// used.
func New(log *slog.Logger, timeout time.Duration) (*Upgrader, error) {
	once.Do(func() {
		tf, err := tableflip.New(tableflip.Options{UpgradeTimeout: timeout})
		if err != nil {
			singleErr = err
			return
		}
		single = &Upgrader{tf: tf}
	})
	if singleErr != nil {
		return nil, singleErr
	}
	single.log = log
	return single, nil
}

// Upgraded reports whether this process was started by an upgrade.
func (u *Upgrader) Upgraded() bool { return u.tf.HasParent() }

// message is one packet of the handover socket (SOCK_SEQPACKET: one JSON
// object per packet, its descriptors in the packet's SCM_RIGHTS).
type message struct {
	Hello    *Result `json:"hello,omitempty"`    // new → old: who asks
	Listener string  `json:"listener,omitempty"` // old → new: a listener's key, its sockets attached
	End      bool    `json:"end,omitempty"`      // old → new: no more listeners (or connections)

	// Once the new process is ready (handover_linux.go):
	Targets  *proxy.Targets       `json:"targets,omitempty"`  // new → old: what it can adopt
	Conn     *proxy.HandedConn    `json:"conn,omitempty"`     // old → new: a connection, its client and backend sockets attached
	Session  *proxy.HandedSession `json:"session,omitempty"`  // old → new: a UDP session, its backend socket attached
	Counters json.RawMessage      `json:"counters,omitempty"` // old → new: some of its counters' values (after the sessions)
}

// Inherit is the new process's first step: it asks the old process for
// its listening sockets, by listener key. A process not started by an
// upgrade inherits nothing (nil).
func (u *Upgrader) Inherit() (*proxy.Sockets, error) {
	if !u.tf.HasParent() {
		return nil, nil
	}
	addr := os.Getenv(EnvSocket)
	os.Unsetenv(EnvSocket) // not for a process this one starts
	if addr == "" {
		return nil, errors.New("upgrade: started as an upgrade but $" + EnvSocket + " is not set")
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: addr, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("upgrade: the old process's handover socket: %w", err)
	}
	if err := send(c, message{Hello: &Result{PID: os.Getpid(), Version: version.Get().Version}}, nil); err != nil {
		c.Close()
		return nil, err
	}
	m := map[string][]*os.File{}
	for {
		var msg message
		fs, err := recv(c, &msg)
		if err != nil {
			c.Close()
			for _, fs := range m {
				for _, f := range fs {
					f.Close()
				}
			}
			return nil, fmt.Errorf("upgrade: receiving the listeners: %w", err)
		}
		if msg.End {
			break
		}
		m[msg.Listener] = fs
	}
	u.parent = c
	return proxy.NewSockets(m), nil
}

// Parent is the new process's connection to the old one (nil when this
// process was not started by an upgrade), over which the old process
// hands over its connections once this one is ready.
func (u *Upgrader) Parent() *net.UnixConn { return u.parent }

// Ready says this process serves: to systemd (its PID, then READY=1, so
// that systemd follows it before the old process exits) and to the old
// process, whose upgrade then succeeds.
func (u *Upgrader) Ready() error {
	if err := Notify(readyLines()...); err != nil {
		u.log.Warn("cannot notify systemd", "err", err.Error())
	}
	return u.tf.Ready()
}

// Stop refuses upgrades from now on and kills a new process that has not
// reported ready (this process is shutting down).
func (u *Upgrader) Stop() { u.tf.Stop() }

// Handover is the old process's side once the new one serves: the socket
// to it, for the connections.
type Handover struct {
	Conn *net.UnixConn
}

// Close closes the socket to the new process.
func (h *Handover) Close() error { return h.Conn.Close() }

// Upgrade starts the binary at this process's path with its arguments,
// gives it the listening sockets that listeners returns when it asks for
// them (the caller's current set, by key; the files are closed here), and
// waits until it reports ready. On success this process must stop
// accepting and hand over what it can; on any error (the binary could not
// start, exited, or did not report ready within the timeout) nothing has
// changed here. A second upgrade while one runs, or after one succeeded,
// is refused with ErrRunning.
func (u *Upgrader) Upgrade(listeners func() (map[string][]*os.File, error)) (Result, *Handover, error) {
	if u.done.Load() || !u.running.CompareAndSwap(false, true) {
		return Result{}, nil, ErrRunning
	}
	ok := false
	defer func() {
		if !ok {
			u.running.Store(false)
		}
	}()
	name := fmt.Sprintf("@dynamic-proxy-upgrade-%d-%d", os.Getpid(), time.Now().UnixNano())
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: name, Net: "unixpacket"})
	if err != nil {
		return Result{}, nil, fmt.Errorf("handover socket: %w", err)
	}
	type served struct {
		res  Result
		conn *net.UnixConn
		err  error
	}
	sc := make(chan served, 1)
	go func() {
		res, conn, err := serveChild(ln, listeners)
		sc <- served{res, conn, err}
	}()
	os.Setenv(EnvSocket, name) // read by tableflip for the new process's environment
	err = u.tf.Upgrade()
	os.Unsetenv(EnvSocket)
	ln.Close() // no other process may connect
	s := <-sc
	if err != nil {
		if s.conn != nil {
			s.conn.Close()
		}
		if strings.Contains(err.Error(), "parent hasn't exited") {
			return Result{}, nil, fmt.Errorf("%w: the process this one replaced has not exited yet", ErrRunning)
		}
		err = fmt.Errorf("the new process did not report ready: %w", err)
		if s.err != nil && !errors.Is(s.err, net.ErrClosed) {
			err = fmt.Errorf("%w (handover: %v)", err, s.err)
		}
		return Result{}, nil, err
	}
	if s.err != nil { // ready without its listeners: cannot happen with our binary
		return Result{}, nil, fmt.Errorf("the new process reported ready but the handover failed: %w", s.err)
	}
	ok = true
	u.done.Store(true)
	return s.res, &Handover{Conn: s.conn}, nil
}

// serveChild takes the new process's connection, checks that it is our
// child, and sends it the listening sockets.
func serveChild(ln *net.UnixListener, listeners func() (map[string][]*os.File, error)) (Result, *net.UnixConn, error) {
	c, err := ln.AcceptUnix()
	if err != nil {
		return Result{}, nil, err
	}
	fail := func(err error) (Result, *net.UnixConn, error) { c.Close(); return Result{}, nil, err }
	if err := checkPeer(c); err != nil {
		return fail(err)
	}
	var hello message
	if _, err := recv(c, &hello); err != nil {
		return fail(err)
	}
	if hello.Hello == nil {
		return fail(errors.New("the new process did not say hello"))
	}
	m, err := listeners()
	if err != nil {
		return fail(err)
	}
	var sendErr error
	for key, fs := range m {
		if sendErr == nil {
			sendErr = sendFiles(c, message{Listener: key}, fs)
		}
		for _, f := range fs {
			f.Close()
		}
	}
	if sendErr == nil {
		sendErr = send(c, message{End: true}, nil)
	}
	if sendErr != nil {
		return fail(sendErr)
	}
	return *hello.Hello, c, nil
}

// checkPeer accepts only a process of our user whose parent we are: the
// socket's abstract name can be reached by any process of the network
// namespace, and it hands out listening sockets.
func checkPeer(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if cerr != nil {
		return os.NewSyscallError("getsockopt SO_PEERCRED", cerr)
	}
	if int(cred.Uid) != os.Getuid() {
		return fmt.Errorf("handover socket: refused a peer of uid %d", cred.Uid)
	}
	if pp, err := parentOf(int(cred.Pid)); err != nil || pp != os.Getpid() {
		return fmt.Errorf("handover socket: refused pid %d, not a process this one started", cred.Pid)
	}
	return nil
}

// parentOf reads a process's parent PID from /proc/PID/stat.
func parentOf(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := strings.LastIndexByte(string(b), ')') // the command may hold spaces and parentheses
	if i < 0 {
		return 0, errors.New("bad stat")
	}
	f := strings.Fields(string(b[i+1:])) // state ppid …
	if len(f) < 2 {
		return 0, errors.New("bad stat")
	}
	return strconv.Atoi(f[1])
}

// maxFDs is the most descriptors one packet carries (a UDP listener's
// shards: at most 16).
const maxFDs = 32

// fdsOf returns the files' descriptors without (*os.File).Fd, which
// would make them blocking — and with them the sockets, whose open file
// descriptions both processes share.
func fdsOf(fs []*os.File) ([]int, error) {
	fds := make([]int, 0, len(fs))
	for _, f := range fs {
		rc, err := f.SyscallConn()
		if err != nil {
			return nil, err
		}
		if err := rc.Control(func(fd uintptr) { fds = append(fds, int(fd)) }); err != nil {
			return nil, err
		}
	}
	return fds, nil
}

// sendFiles sends m with the files' descriptors.
func sendFiles(c *net.UnixConn, m message, fs []*os.File) error {
	fds, err := fdsOf(fs)
	if err != nil {
		return err
	}
	return send(c, m, fds)
}

// send sends m as one packet, with fds in its SCM_RIGHTS.
func send(c *net.UnixConn, m message, fds []int) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	_, _, err = c.WriteMsgUnix(b, oob, nil)
	return err
}

// recv reads one packet into m and returns the descriptors it carried,
// as files.
func recv(c *net.UnixConn, m *message) ([]*os.File, error) {
	fds, err := recvFds(c, m)
	fs := make([]*os.File, len(fds))
	for i, fd := range fds {
		fs[i] = os.NewFile(uintptr(fd), "handover")
	}
	return fs, err
}

// maxPacket bounds a packet: a connection's held bytes (at most
// proxy.MaxHandedBytes, base64 in JSON) and its identity.
const maxPacket = 256 << 10

// recvFds reads one packet into m and returns the descriptors it carried.
func recvFds(c *net.UnixConn, m *message) ([]int, error) {
	return recvInto(c, m, make([]byte, maxPacket), make([]byte, unix.CmsgSpace(maxFDs*4)))
}

// recvInto is recvFds with the caller's buffers.
func recvInto(c *net.UnixConn, m *message, buf, oob []byte) ([]int, error) {
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, errors.New("the other process closed the handover socket")
	}
	var fds []int
	if oobn > 0 {
		cms, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, err
		}
		for _, cm := range cms {
			if got, err := unix.ParseUnixRights(&cm); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	if err := json.Unmarshal(buf[:n], m); err != nil {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, err
	}
	return fds, nil
}
