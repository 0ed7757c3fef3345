package cli

import "os"

// upgradeSignal: Windows has no SIGUSR2; an upgrade there is refused anyway
// (internal/upgrade).
var upgradeSignal os.Signal

func isUpgradeSignal(os.Signal) bool { return false }
