//go:build linux

package fdlimit

import (
	"encoding/binary"
	"os"

	"golang.org/x/sys/unix"
)

// Limit returns the soft RLIMIT_NOFILE: the first descriptor number the
// process cannot open.
func Limit() (int64, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 0, os.NewSyscallError("getrlimit", err)
	}
	if rl.Cur > 1<<40 {
		return 1 << 40, nil // RLIM_INFINITY
	}
	return int64(rl.Cur), nil
}

// Open counts the process's open descriptors, the one it reads them
// through left out. It lists /proc/self/fd, which costs the kernel about
// a microsecond per descriptor: call it now and then, not per connection.
func Open() (int, error) {
	fd, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, os.NewSyscallError("open /proc/self/fd", err)
	}
	defer unix.Close(fd)
	var buf [16 << 10]byte
	n := 0
	for {
		m, err := unix.Getdents(fd, buf[:])
		if err != nil {
			return 0, os.NewSyscallError("getdents /proc/self/fd", err)
		}
		if m <= 0 {
			break
		}
		// struct linux_dirent64: ino u64, off s64, reclen u16, type u8, name.
		for off := 0; off+19 <= m; {
			reclen := int(binary.NativeEndian.Uint16(buf[off+16:]))
			if reclen == 0 {
				break
			}
			if name := buf[off+19]; name != '.' { // not "." or ".."
				n++
			}
			off += reclen
		}
	}
	return n - 1, nil // the directory's own descriptor
}
