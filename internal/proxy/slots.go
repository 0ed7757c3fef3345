package proxy

import (
	"sync"
	"sync/atomic"
)

// Every open TCP connection holds one of server.max_connections' slots.
// slots.room is the number no one holds. The goroutine engine takes and
// gives them one at a time; an epoll loop takes them a batch at a time and
// keeps up to two batches spare (tcpLoop.takeSlot, giveSlot), so that
// opening and closing connections writes the shared count once a batch,
// not once a connection. The cap is never exceeded, and it is exact: a
// connection that finds no room takes a spare slot from another loop
// (Server.stealSlot) before it is refused, so it is refused only when
// every slot is held by an open connection. A loop's spare count sits on
// its own cache line, which only its loop writes until the room runs out.
// A change of the cap has every loop give its spares back (they were taken
// in batches of the old cap's size, and a lowered cap can leave the room
// below zero, where spares must not be used).
type slots struct {
	_     [64]byte
	room  atomic.Int64 // slots no one holds: the cap less those held (a loop's spares are held)
	_     [56]byte
	cap   atomic.Int64 // capOf(max_connections); written by setCap only
	batch atomic.Int64 // slots a loop takes at a time (batchFor)
	epoch atomic.Int64 // moved by setCap: spares taken before are given back, not used
	mu    sync.Mutex   // serialises setCap
}

// noCap is max_connections = 0 in slots: more than a process can hold.
const noCap = 1 << 40

func capOf(limit int64) int64 {
	if limit <= 0 {
		return noCap
	}
	return limit
}

// batchFor is the batch for a cap of limit (0: none) over workers loops:
// at most 64, and small enough that the loops' spares (two batches each)
// stay within 1/32 of the cap; 1, no spares, for a cap under 128 a loop.
func batchFor(limit int64, workers int) int64 {
	if limit <= 0 {
		return 64
	}
	return min(max(limit/(64*int64(max(workers, 1))), 1), 64)
}

func (sl *slots) init() {
	sl.cap.Store(noCap)
	sl.room.Store(noCap)
	sl.batch.Store(64)
}

// setCap moves the cap to limit (0: none) over workers loops. The order of
// the two writes keeps held an upper bound of the slots held meanwhile.
func (sl *slots) setCap(limit int64, workers int) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	c := capOf(limit)
	d := c - sl.cap.Load()
	sl.batch.Store(batchFor(limit, workers))
	sl.epoch.Add(1)
	if d > 0 {
		sl.cap.Store(c)
		sl.room.Add(d)
	} else if d < 0 {
		sl.room.Add(d)
		sl.cap.Store(c)
	}
}

// held is at least the number of TCP connections open.
func (sl *slots) held() int64 { return sl.cap.Load() - sl.room.Load() }

// take takes up to want slots (at least 1), or none when there is no room,
// and returns how many it took.
func (sl *slots) take(want int64) int64 {
	for {
		r := sl.room.Load()
		if r <= 0 {
			return 0
		}
		k := min(want, r)
		if sl.room.CompareAndSwap(r, r-k) {
			return k
		}
	}
}

// give gives n slots back.
func (sl *slots) give(n int64) { sl.room.Add(n) }
