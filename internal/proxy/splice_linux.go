package proxy

import (
	"errors"
	"math/bits"
	"sync"

	"github.com/dynamic-proxy/dynamic-proxy/internal/eventloop"
)

// Splice pipes come from eventloop's pool: a relay borrows one only while
// a burst of data flows (tcpconn.go). Every pipe counts against the data
// path's descriptor budget (fdbudget.go).

var pipes = eventloop.PipePool{Max: 256}

// errPipeBudget: no free pipe, and a new one would take s's data path
// beyond its descriptor budget (fdbudget.go).
var errPipeBudget = errors.New("no splice pipe within the descriptor budget")

// getPipe takes a pipe from the pool, or opens one if s's descriptor
// budget has room for it.
func getPipe(s *Server) (*eventloop.Pipe, error) {
	if p := pipes.Get(); p != nil {
		return p, nil
	}
	if !s.fdRoom(2) {
		return nil, errPipeBudget
	}
	p, err := eventloop.OpenPipe()
	if err != nil {
		return nil, err
	}
	splicePipes.Add(2) // the descriptor budget (fdbudget.go)
	return p, nil
}

// putPipe returns an empty pipe to the pool, or closes it when the pool
// is full.
func putPipe(p *eventloop.Pipe) {
	if !pipes.Put(p) {
		closePipe(p)
	}
}

// closePipe closes a pipe of the pool's.
func closePipe(p *eventloop.Pipe) {
	p.Close()
	splicePipes.Add(-2)
}

const defaultBufSize = 8192

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
