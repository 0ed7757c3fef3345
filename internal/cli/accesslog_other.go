//go:build !unix

package cli

import "os"

// reopenSignal: no SIGUSR1 here; the file is reopened by a restart.
var reopenSignal os.Signal
