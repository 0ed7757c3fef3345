package proxy

import (
	"math/bits"
	"sync"
)

// bufPools holds copy buffers by size class (powers of two from 1 KiB to
// 1 MiB), so buffer_size can change on a reload without mixing sizes.
var bufPools [11]sync.Pool

func sizeClass(size int) int {
	c := bits.Len(uint(size-1)) - 10
	return min(max(c, 0), len(bufPools)-1)
}

func getBuf(size int) *[]byte {
	c := sizeClass(size)
	if bp, ok := bufPools[c].Get().(*[]byte); ok && len(*bp) == size {
		return bp
	}
	b := make([]byte, size)
	return &b
}

func putBuf(bp *[]byte) { bufPools[sizeClass(len(*bp))].Put(bp) }
