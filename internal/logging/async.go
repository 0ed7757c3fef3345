package logging

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// AsyncQueue is how many records an Async handler holds for its writer.
const AsyncQueue = 4096

// dropped counts the records every Async handler of the process dropped.
var dropped atomic.Int64

// Dropped is the number of log records dropped because an Async handler's
// queue was full (its output did not keep up, or blocked).
func Dropped() int64 { return dropped.Load() }

// Async is a slog handler that never blocks its caller: records go into a
// bounded queue that one goroutine writes to the wrapped handler; when the
// queue is full the record is dropped and counted (Dropped). The event
// loops log through it, so a slow or blocked log output (a full pipe on
// stderr) costs them a dropped line, never a stalled loop.
type Async struct {
	q     *asyncQueue
	inner slog.Handler
}

type asyncQueue struct {
	ch      chan *asyncRecord // pointers: an idle queue holds 8 bytes a slot, not a whole record
	running atomic.Bool       // a writer goroutine runs (it leaves when the queue is empty)
}

type asyncRecord struct {
	h     slog.Handler
	r     slog.Record
	flush chan struct{} // a Flush marker (h nil): closed when reached
}

// NewAsync returns an Async handler writing to inner with a queue of size
// records (0: AsyncQueue).
func NewAsync(inner slog.Handler, size int) *Async {
	if size <= 0 {
		size = AsyncQueue
	}
	return &Async{q: &asyncQueue{ch: make(chan *asyncRecord, size)}, inner: inner}
}

// put queues rec without blocking; false when the queue is full. A writer
// goroutine is started when none runs.
func (q *asyncQueue) put(rec *asyncRecord) bool {
	select {
	case q.ch <- rec:
	default:
		return false
	}
	if q.running.CompareAndSwap(false, true) {
		go q.write()
	}
	return true
}

// write writes queued records until the queue is empty, then leaves (so an
// idle handler holds no goroutine).
func (q *asyncQueue) write() {
	for {
		select {
		case rec := <-q.ch:
			if rec.flush != nil {
				close(rec.flush)
				continue
			}
			_ = rec.h.Handle(context.Background(), rec.r)
		default:
			q.running.Store(false)
			// A record queued after the receive found none, before running
			// was cleared, would have no writer: take it unless a new
			// writer already has.
			if len(q.ch) == 0 || !q.running.CompareAndSwap(false, true) {
				return
			}
		}
	}
}

// Enabled is the wrapped handler's (its level follows a reload at once).
func (a *Async) Enabled(ctx context.Context, l slog.Level) bool { return a.inner.Enabled(ctx, l) }

// Handle queues r, or drops it when the queue is full.
func (a *Async) Handle(_ context.Context, r slog.Record) error {
	if !a.q.put(&asyncRecord{h: a.inner, r: r.Clone()}) {
		dropped.Add(1)
	}
	return nil
}

// WithAttrs and WithGroup share the queue and its writer.
func (a *Async) WithAttrs(as []slog.Attr) slog.Handler {
	return &Async{q: a.q, inner: a.inner.WithAttrs(as)}
}

func (a *Async) WithGroup(name string) slog.Handler {
	return &Async{q: a.q, inner: a.inner.WithGroup(name)}
}

// Flush waits until the records queued so far are written, or timeout
// passed; it reports whether they were.
func (a *Async) Flush(timeout time.Duration) bool {
	done := make(chan struct{})
	t := time.NewTimer(timeout)
	defer t.Stop()
	for !a.q.put(&asyncRecord{flush: done}) { // full: wait for room
		select {
		case <-t.C:
			return false
		case <-time.After(time.Millisecond):
		}
	}
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
