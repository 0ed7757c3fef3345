package harness

import (
	"errors"
	"testing"
	"time"
)

// Eventually checks cond until it holds and fails the test if it does not
// within Deadline. cond is a func() bool, or a func() error that returns nil
// once it holds: then the last error it returned is in the failure message.
// It checks often at first (every millisecond) and backs off to every 25 ms,
// so a short wait costs little and a long one does not spin.
//
// Use it for a state that no event announces (a counter, a file in /proc, a
// port that stops accepting); a log line is waited on with Proxy.WaitLog.
func Eventually[C func() bool | func() error](t testing.TB, what string, cond C) {
	t.Helper()
	eventually(t, what, cond, Deadline)
}

func eventually[C func() bool | func() error](t testing.TB, what string, cond C, within time.Duration) {
	t.Helper()
	check := func() error {
		switch c := any(cond).(type) {
		case func() bool:
			if !c() {
				return errNotYet
			}
		case func() error:
			return c()
		}
		return nil
	}
	end := time.Now().Add(within)
	pause := time.Millisecond
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			if err == errNotYet {
				t.Fatalf("%s: not within %v", what, within)
			} else {
				t.Fatalf("%s: not within %v: %v", what, within, err)
			}
			return
		}
		time.Sleep(pause) // the polling interval of a wait on a state, not a synchronisation
		pause = min(2*pause, 25*time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")
