package logging

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// blockingWriter blocks every Write until released.
type blockingWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	release chan struct{}
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// TestAsyncNeverBlocks: with the output blocked, logging returns at once;
// what the queue cannot hold is dropped and counted.
func TestAsyncNeverBlocks(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	a := NewAsync(slog.NewTextHandler(w, nil), 4)
	log := slog.New(a).With("loop", 1)
	before := Dropped()
	done := make(chan struct{})
	go func() {
		for i := range 100 {
			log.Info("line", "i", i)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("logging blocked on a blocked output")
	}
	// The writer holds one record, the queue four: the rest were dropped.
	if d := Dropped() - before; d < 100-5 || d > 100-4 {
		t.Errorf("%d records dropped, want 95 or 96", d)
	}
	close(w.release)
	if !a.Flush(20 * time.Second) {
		t.Fatal("flush did not finish")
	}
	w.mu.Lock()
	out := w.buf.String()
	w.mu.Unlock()
	if n := strings.Count(out, "msg=line"); n < 4 || !strings.Contains(out, "loop=1") {
		t.Errorf("%d lines written (want 4 or 5, with the logger's attributes):\n%s", n, out)
	}
}

func TestAsyncLevelFollowsInner(t *testing.T) {
	var lv slog.LevelVar
	lv.Set(slog.LevelWarn)
	a := NewAsync(slog.NewTextHandler(&bytes.Buffer{}, &slog.HandlerOptions{Level: &lv}), 0)
	if a.Enabled(context.Background(), slog.LevelInfo) {
		t.Error("info enabled at level warn")
	}
	lv.Set(slog.LevelDebug)
	if !a.Enabled(context.Background(), slog.LevelDebug) {
		t.Error("debug not enabled after the level changed")
	}
}
