//go:build linux

package eventloop

// Timer is one deadline of an Owner (a connection) in a Heap; an owner
// with one deadline at a time embeds one Timer and sets Owner to itself.
// The heap compares and moves Timers directly, without the interface calls
// and boxing of container/heap.
type Timer[T any] struct {
	Owner T     // what the deadline is of, returned by Heap.PopDue
	due   int64 // unix ns
	idx   int   // place in the heap + 1; 0: not in it
}

// Due is the deadline set; meaningful while the timer is in a heap.
func (t *Timer[T]) Due() int64 { return t.due }

// Heap is a min-heap of Timers by deadline, for one loop's goroutine.
type Heap[T any] struct {
	ts []*Timer[T]
}

// Len is the number of timers set.
func (h *Heap[T]) Len() int { return len(h.ts) }

// Next is the earliest deadline, and false when no timer is set.
func (h *Heap[T]) Next() (int64, bool) {
	if len(h.ts) == 0 {
		return 0, false
	}
	return h.ts[0].due, true
}

// Set sets t's deadline to due, adding t or moving it.
func (h *Heap[T]) Set(t *Timer[T], due int64) {
	t.due = due
	if t.idx > 0 {
		h.fix(t.idx - 1)
		return
	}
	h.ts = append(h.ts, t)
	t.idx = len(h.ts)
	h.up(len(h.ts) - 1)
}

// Stop takes t out of the heap if it is in it.
func (h *Heap[T]) Stop(t *Timer[T]) {
	if t.idx == 0 {
		return
	}
	i, n := t.idx-1, len(h.ts)-1
	if i != n {
		h.swap(i, n)
	}
	h.ts[n] = nil
	h.ts = h.ts[:n]
	t.idx = 0
	if i != n {
		h.fix(i)
	}
}

// PopDue takes out the earliest timer if it is due at now, and returns its
// owner.
func (h *Heap[T]) PopDue(now int64) (T, bool) {
	if len(h.ts) == 0 || h.ts[0].due > now {
		var zero T
		return zero, false
	}
	t := h.ts[0]
	h.Stop(t)
	return t.Owner, true
}

func (h *Heap[T]) swap(i, j int) {
	h.ts[i], h.ts[j] = h.ts[j], h.ts[i]
	h.ts[i].idx, h.ts[j].idx = i+1, j+1
}

func (h *Heap[T]) fix(i int) {
	if !h.down(i) {
		h.up(i)
	}
}

func (h *Heap[T]) up(j int) {
	for j > 0 {
		i := (j - 1) / 2
		if h.ts[i].due <= h.ts[j].due {
			break
		}
		h.swap(i, j)
		j = i
	}
}

// down moves ts[i] down to its place; it reports whether it moved.
func (h *Heap[T]) down(i0 int) bool {
	i, n := i0, len(h.ts)
	for {
		l := 2*i + 1
		if l >= n || l < 0 {
			break
		}
		j := l
		if r := l + 1; r < n && h.ts[r].due < h.ts[l].due {
			j = r
		}
		if h.ts[j].due >= h.ts[i].due {
			break
		}
		h.swap(i, j)
		i = j
	}
	return i > i0
}
