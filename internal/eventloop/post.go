//go:build linux

package eventloop

import "sync"

// Loop is a Poller with the one way other goroutines hand its goroutine
// work: Post queues a function and wakes the loop, which runs the queue
// when it sees the wake-up (RunPosted). Functions run in the order they
// were posted, on the loop's goroutine, so they may touch the loop's state
// without a lock.
type Loop struct {
	Poller

	mu      sync.Mutex
	cmds    []func()
	running []func() // cmds being run (swapped with cmds)
	stopped bool     // Exit was called: no more posts are run
	exited  chan struct{}
}

// Open opens the loop's poller (Poller.Open).
func (l *Loop) Open(name string, maxEvents int) error {
	l.mu.Lock()
	if l.exited == nil {
		l.exited = make(chan struct{})
	}
	l.mu.Unlock()
	return l.Poller.Open(name, maxEvents)
}

// Post runs f in the loop. It reports false when the loop is gone.
func (l *Loop) Post(f func()) bool {
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		return false
	}
	l.cmds = append(l.cmds, f)
	wake := len(l.cmds) == 1 // later posts find the loop woken already
	l.mu.Unlock()
	if wake {
		l.Wake()
	}
	return true
}

// Call runs f in the loop and waits for it. It reports false when the loop
// is gone, or left before it ran f.
func (l *Loop) Call(f func()) bool {
	done := make(chan struct{})
	if !l.Post(func() { f(); close(done) }) {
		return false
	}
	select {
	case <-done:
		return true
	case <-l.exited:
		return false
	}
}

// RunPosted consumes a wake-up and runs what was posted. The loop calls it
// when the wake-up descriptor (WakeFD) is readable.
func (l *Loop) RunPosted() {
	l.Woken()
	l.mu.Lock()
	cmds := l.cmds
	l.cmds, l.running = l.running[:0], nil
	l.mu.Unlock()
	for i, f := range cmds {
		f()
		cmds[i] = nil
	}
	l.mu.Lock()
	if l.running == nil {
		l.running = cmds[:0]
	}
	l.mu.Unlock()
}

// Exit stops the loop taking posts, releases its poller and tells Call's
// waiters (and Exited's) that it is gone. The loop's goroutine calls it
// last.
func (l *Loop) Exit() {
	l.mu.Lock()
	l.stopped = true
	l.cmds = nil
	l.mu.Unlock()
	l.Close()
	close(l.exited)
}

// Exited is closed once the loop has exited.
func (l *Loop) Exited() <-chan struct{} { return l.exited }
