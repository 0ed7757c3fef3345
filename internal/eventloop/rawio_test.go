//go:build linux

package eventloop

import (
	"net"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestSendRaisesNoSIGPIPE: the relay's send to a peer that has gone fails
// with EPIPE and raises no SIGPIPE, where write(2) raises one. SIGPIPE is
// blocked on the test's thread so that a raised one stays pending there,
// where rt_sigpending sees it at once: no waiting on the runtime's signal
// forwarding.
func TestSendRaisesNoSIGPIPE(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var set, old unix.Sigset_t
	set.Val[0] = 1 << (uint(unix.SIGPIPE) - 1)
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &set, &old); err != nil {
		t.Fatal(err)
	}
	defer unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	pending := func() bool {
		var p unix.Sigset_t
		if _, _, e := unix.RawSyscall(unix.SYS_RT_SIGPENDING, uintptr(unsafe.Pointer(&p)), 8, 0); e != 0 {
			t.Fatal(e)
		}
		return p.Val[0]&set.Val[0] != 0
	}
	take := func() { // consume the pending SIGPIPE
		var ts unix.Timespec
		unix.RawSyscall6(unix.SYS_RT_SIGTIMEDWAIT, uintptr(unsafe.Pointer(&set)), 0, uintptr(unsafe.Pointer(&ts)), 8, 0, 0)
	}
	if pending() {
		take()
	}

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	unix.Close(fds[1])

	// The control: write(2) raises it, so the check below can see one.
	if _, err := RawWrite(fds[0], []byte("x")); err != unix.EPIPE {
		t.Fatalf("write to a closed peer: %v, want EPIPE", err)
	}
	if !pending() {
		t.Fatal("write(2) to a closed peer left no SIGPIPE pending: the check cannot see one")
	}
	take()
	if pending() {
		t.Fatal("the pending SIGPIPE was not consumed")
	}

	if _, err := Send(fds[0], []byte("x")); err != unix.EPIPE {
		t.Fatalf("send to a closed peer: %v, want EPIPE", err)
	}
	if pending() {
		take()
		t.Fatal("send to a closed peer raised SIGPIPE")
	}
}

// TestLocalAddrPort: the getsockname behind router.Request.Local on a
// wildcard listener gives a connection's own local address.
func TestLocalAddrPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, ok := LocalAddrPort(int(f.Fd()))
	if want := c.LocalAddr().(*net.TCPAddr).AddrPort(); !ok || got != want {
		t.Errorf("LocalAddrPort = %v, %v; want %v", got, ok, want)
	}
	if _, ok := LocalAddrPort(-1); ok {
		t.Error("LocalAddrPort of no socket reported an address")
	}
}
