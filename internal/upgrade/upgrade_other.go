//go:build !linux

package upgrade

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/dynamic-proxy/dynamic-proxy/internal/proxy"
)

// Supported reports whether this system can upgrade in place.
const Supported = false

// ErrUnsupported is the answer to an upgrade off Linux.
var ErrUnsupported = errors.New("upgrading in place is supported on Linux only: restart the process to run a new binary")

// Upgrader refuses every upgrade off Linux; a process started here serves
// as usual and tells systemd (where there is one) that it is ready.
type Upgrader struct{ log *slog.Logger }

// Handover is never made off Linux.
type Handover struct{ Conn *net.UnixConn }

// Close does nothing.
func (h *Handover) Close() error { return nil }

// New returns an Upgrader that refuses upgrades.
func New(log *slog.Logger, _ time.Duration) (*Upgrader, error) { return &Upgrader{log: log}, nil }

// Upgraded is false: no process here is started by an upgrade.
func (u *Upgrader) Upgraded() bool { return false }

// Inherit inherits nothing.
func (u *Upgrader) Inherit() (*proxy.Sockets, error) { return nil, nil }

// Parent is nil.
func (u *Upgrader) Parent() *net.UnixConn { return nil }

// Ready tells systemd, if any, that the process serves.
func (u *Upgrader) Ready() error { return Notify(readyLines()...) }

// Stop does nothing.
func (u *Upgrader) Stop() {}

// Upgrade is refused.
func (u *Upgrader) Upgrade(func() (map[string][]*os.File, error)) (Result, *Handover, error) {
	return Result{}, nil, ErrUnsupported
}

// Moved counts what a handover moved.
type Moved struct {
	Conns, Sessions int
	Gone            func(rule, id, addr string) bool
}

// SendConns moves nothing.
func (h *Handover) SendConns(*proxy.Server, func() []any) (Moved, error) { return Moved{}, nil }

// ReceiveConns adopts nothing.
func (u *Upgrader) ReceiveConns(*proxy.Server, func(json.RawMessage)) (Moved, error) {
	return Moved{}, nil
}
