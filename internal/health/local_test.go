package health

import (
	"net"
	"os"
	"syscall"
	"testing"
)

// TestActiveCheckLocalErrorIsNoResult: an active check that could not run
// because this host is out of descriptors, socket memory or ports neither
// fails nor passes: the backend stays up through any number of them, and a
// down backend does not come back on them either (found by
// test/faults TestDescriptorExhaustion: an EMFILE episode marked every
// backend down).
func TestActiveCheckLocalErrorIsNoResult(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL} {
		local := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", errno)}
		m, _ := machine(t, 2, 2)
		for i := 0; i < 10; i++ {
			m.record(local)
		}
		if !m.h.Up() {
			t.Fatalf("%v: backend marked down by checks that could not run", errno)
		}
		// Local errors do not break a streak of real failures either way.
		m.record(errCheck)
		m.record(local)
		m.record(errCheck)
		if m.h.Up() {
			t.Fatalf("%v: 2 real failures around a local error did not mark the backend down", errno)
		}
		m.record(nil)
		m.record(local)
		m.record(nil)
		if !m.h.Up() {
			t.Fatalf("%v: 2 passes around a local error did not bring the backend up", errno)
		}
	}
}
