package backend

import (
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"
)

// TestBytesAcrossLoops: bytes counted by many loops at once (any loop
// number) add up exactly.
func TestBytesAcrossLoops(t *testing.T) {
	b := New("r", "a", "127.0.0.1:1", 1, nil)
	var wg sync.WaitGroup
	for loop := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				b.AddBytesIn(loop, 3)
				b.AddBytesOut(loop, 5)
			}
		}()
	}
	wg.Wait()
	if in, out := b.Bytes(); in != 300_000 || out != 500_000 {
		t.Errorf("bytes in %d out %d, want 300000 and 500000", in, out)
	}
}

// TestConnectionsAcrossLoops: connections opened on one loop and ended on
// another (a share going negative) are counted exactly, while a reader
// sums the shares.
func TestConnectionsAcrossLoops(t *testing.T) {
	b := New("r", "a", "127.0.0.1:1", 1, nil)
	var wg sync.WaitGroup
	for loop := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				b.Acquire(loop)
				b.Acquire(loop)
				b.Release(loop + 1)
				_ = b.Active()
			}
		}()
	}
	wg.Wait()
	if a, n := b.Active(), b.Total(); a != 8000 || n != 16000 {
		t.Errorf("active %d total %d, want 8000 and 16000", a, n)
	}
	for loop := range 8 {
		for range 1000 {
			b.Release(loop + 3)
		}
	}
	if a := b.Active(); a != 0 {
		t.Errorf("active %d after every release, want 0", a)
	}
}

// TestByteSharesOwnTheirCacheLine: each loop's share is 64 bytes and
// starts on a 64-byte boundary, and there is a power-of-two number of them.
func TestByteSharesOwnTheirCacheLine(t *testing.T) {
	if s := unsafe.Sizeof(loopCounts{}); s != 64 {
		t.Fatalf("a share is %d bytes, want 64", s)
	}
	if n := byteShards; n < 1 || n&(n-1) != 0 {
		t.Fatalf("%d shares, want a power of two", n)
	}
	for range 100 {
		b := New("r", "a", "127.0.0.1:1", 1, nil)
		if p := uintptr(unsafe.Pointer(&b.loops[0])); p%64 != 0 {
			t.Fatalf("shares start at %#x, not on a cache line", p)
		}
	}
}

// BenchmarkBytes: every goroutine counts as a loop of its own (sharded)
// against all of them on one counter, as before the split.
func BenchmarkBytes(b *testing.B) {
	be := New("r", "a", "127.0.0.1:1", 1, nil)
	var next atomic.Int64
	b.Run("sharded", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			loop := int(next.Add(1))
			for pb.Next() {
				be.AddBytesIn(loop, 64)
			}
		})
	})
	var one atomic.Int64
	b.Run("one-counter", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				one.Add(64)
			}
		})
	})
}
