//go:build !windows

package cli

import (
	"os"
	"syscall"
)

// upgradeSignal starts a binary upgrade (HAProxy's and nginx's habit).
var upgradeSignal os.Signal = syscall.SIGUSR2

func isUpgradeSignal(s os.Signal) bool { return s == syscall.SIGUSR2 }
