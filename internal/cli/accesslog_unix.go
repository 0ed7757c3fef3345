//go:build unix

package cli

import (
	"os"
	"syscall"
)

// reopenSignal reopens the access log file.
var reopenSignal os.Signal = syscall.SIGUSR1
