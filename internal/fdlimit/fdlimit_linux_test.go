//go:build linux

package fdlimit

import (
	"os"
	"syscall"
	"testing"
)

func TestLimit(t *testing.T) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	got, err := Limit()
	if err != nil || got != int64(rl.Cur) {
		t.Fatalf("Limit() = %d, %v; getrlimit says %d", got, err, rl.Cur)
	}
}

// TestOpen checks the count against /proc/self/fd listed by the os package
// and follows descriptors opened and closed.
func TestOpen(t *testing.T) {
	n0, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	if want := len(ents) - 1; n0 != want { // ReadDir's own descriptor was listed too
		t.Errorf("Open() = %d; /proc/self/fd lists %d besides the reader's", n0, want)
	}
	const k = 3000 // more than one getdents buffer's worth
	var fds []int
	for range k {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
		if err != nil {
			t.Skipf("cannot open %d sockets: %v", k, err)
		}
		fds = append(fds, fd)
	}
	n1, err := Open()
	for _, fd := range fds {
		syscall.Close(fd)
	}
	if err != nil || n1 != n0+k {
		t.Errorf("after opening %d sockets Open() = %d, %v; want %d", k, n1, err, n0+k)
	}
	if n2, _ := Open(); n2 != n0 {
		t.Errorf("after closing them Open() = %d; want %d", n2, n0)
	}
}
