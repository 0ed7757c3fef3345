package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/dynamic-proxy/dynamic-proxy/test/harness"
)

// TestEndReasonBlamesTheRightSide: an error writing to a side is that
// side's fault, as much as an error reading from it (a backend reset
// mid-stream used to be logged as client_error when the client→backend
// copy noticed it first).
func TestEndReasonBlamesTheRightSide(t *testing.T) {
	reset := os.NewSyscallError("read", syscall.ECONNRESET)
	pipeW := dstError{os.NewSyscallError("splice", syscall.EPIPE)}
	for _, tc := range []struct {
		up, down error
		cut      End
		want     string
	}{
		{nil, nil, EndEOF, "eof"},
		{reset, nil, EndEOF, "client_error"},    // reading the client failed
		{nil, reset, EndEOF, "backend_error"},   // reading the backend failed
		{pipeW, nil, EndEOF, "backend_error"},   // writing to the backend failed
		{nil, pipeW, EndEOF, "client_error"},    // writing to the client failed
		{pipeW, reset, EndEOF, "backend_error"}, // the backend reset: both copies see it
		{reset, pipeW, EndEOF, "client_error"},  // the client reset: both copies see it
		{net.ErrClosed, nil, EndDrained, "drained"},
		{net.ErrClosed, nil, EndShutdown, "shutdown"},
		{dstError{os.ErrDeadlineExceeded}, nil, EndEOF, "idle_timeout"},
		{nil, os.ErrDeadlineExceeded, EndEOF, "idle_timeout"},
	} {
		if got := endReason(tc.up, tc.down, tc.cut).String(); got != tc.want {
			t.Errorf("endReason(%v, %v) = %s, want %s", tc.up, tc.down, got, tc.want)
		}
	}
}

func TestResourceError(t *testing.T) {
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.EADDRNOTAVAIL} {
		err := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("socket", e)}
		if !resourceError(err) {
			t.Errorf("%v: not a resource error", err)
		}
	}
	for _, err := range []error{syscall.ECONNREFUSED, syscall.ETIMEDOUT, errors.New("x"), os.ErrDeadlineExceeded} {
		if resourceError(err) {
			t.Errorf("%v: a resource error", err)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestExhaustionLoggedOncePerEpisode: a thousand failures make one line at
// the start and one at the end (after exhaustionQuiet without failure),
// with the counts; a new failure after that is a new episode.
func TestExhaustionLoggedOncePerEpisode(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var e exhaustion
	defer e.stop()
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	for i := 0; i < 1000; i++ {
		e.failed(log, i%2 == 1, "127.0.0.1:1", emfile)
	}
	harness.Eventually(t, "the end of the episode", func() error {
		if !strings.Contains(buf.String(), "descriptors available again") {
			return fmt.Errorf("log:\n%s", buf.String())
		}
		return nil
	})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], "out of descriptors") ||
		!strings.Contains(lines[1], "failed_accepts=500 failed_dials=500") {
		t.Fatalf("want 2 lines (start, end with counts); got:\n%s", buf.String())
	}
	e.failed(log, false, "127.0.0.1:1", emfile)
	if n := strings.Count(buf.String(), "out of descriptors"); n != 2 {
		t.Fatalf("a failure after the episode ended started %d episodes in all, want 2", n)
	}
}
