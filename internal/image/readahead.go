package image

import (
	"errors"
	"io"
	"sync"
)

// readAhead serves the chunk workers' reads of the data area from large
// blocks that one goroutine reads in order ahead of them: a device then
// sees a stream of big aligned reads (which internal/store sends past the
// page cache) instead of one small read per chunk, and reading overlaps
// decoding. Reads outside the span go straight to r.
//
// Blocks are kept in a ring of raDepth. The prefetcher reads block k only
// once every block below k-raDepth+1 is released (release), and the
// chunk stream releases the blocks below a chunk once the caller has taken
// it, by which time every earlier chunk has been read.
type readAhead struct {
	r          io.ReaderAt
	start, end int64 // the span, start page-aligned

	mu   sync.Mutex
	cond *sync.Cond
	ring []raBlock
	next int64 // the block the prefetcher reads next
	low  int64 // blocks below low are released
	quit bool
	// failed is the error that stopped the prefetcher before the end:
	// blocks from next on never come.
	failed error
	done   chan struct{}
}

type raBlock struct {
	buf []byte
	n   int
	err error
}

// raBlockSize and raDepth size the read-ahead: 16 MiB in flight. A block
// must hold a whole chunk, so that the chunk a caller waits for spans at
// most two blocks and is always inside the ring.
const (
	raBlockSize = 2 << 20
	raDepth     = 8
)

var errReadAheadStopped = errors.New("image: read-ahead stopped")

func newReadAhead(r io.ReaderAt, start, end int64) *readAhead {
	ra := &readAhead{r: r, start: start, end: end, ring: make([]raBlock, raDepth), done: make(chan struct{})}
	ra.cond = sync.NewCond(&ra.mu)
	// A small image gets small buffers: only what its span needs.
	for i := range min(int64(raDepth), ra.blocks()) {
		ra.ring[i].buf = alignedBuffer(int(min(raBlockSize, end-start)))
	}
	go ra.prefetch()
	return ra
}

func (ra *readAhead) blocks() int64 {
	return (ra.end - ra.start + raBlockSize - 1) / raBlockSize
}

func (ra *readAhead) prefetch() {
	defer close(ra.done)
	for k := int64(0); k < ra.blocks(); k++ {
		ra.mu.Lock()
		for !ra.quit && k >= ra.low+raDepth {
			ra.cond.Wait()
		}
		if ra.quit {
			ra.mu.Unlock()
			return
		}
		b := &ra.ring[k%raDepth]
		ra.mu.Unlock()
		// Slot k%raDepth held block k-raDepth, released: nobody reads it.
		off := ra.start + k*raBlockSize
		n, err := ra.r.ReadAt(b.buf[:min(raBlockSize, ra.end-off)], off)
		if err == io.EOF && n > 0 {
			err = nil // the rest reads as short, where it is asked for
		}
		ra.mu.Lock()
		b.n, b.err = n, err
		ra.next = k + 1
		if err != nil {
			ra.failed = err
		}
		ra.cond.Broadcast()
		ra.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// ReadAt reads p at off, from the blocks read ahead when it lies in the
// span and its blocks have not been released.
func (ra *readAhead) ReadAt(p []byte, off int64) (int, error) {
	if off < ra.start || off+int64(len(p)) > ra.end {
		return ra.r.ReadAt(p, off)
	}
	done := 0
	for done < len(p) {
		pos := off + int64(done)
		k := (pos - ra.start) / raBlockSize
		ra.mu.Lock()
		if k < ra.low {
			ra.mu.Unlock()
			n, err := ra.r.ReadAt(p[done:], pos)
			return done + n, err
		}
		for !ra.quit && k >= ra.next && ra.failed == nil {
			ra.cond.Wait()
		}
		if ra.quit {
			ra.mu.Unlock()
			return done, errReadAheadStopped
		}
		if k >= ra.next {
			err := ra.failed
			ra.mu.Unlock()
			return done, err
		}
		b := &ra.ring[k%raDepth]
		if b.err != nil {
			err := b.err
			ra.mu.Unlock()
			return done, err
		}
		in := int(pos - ra.start - k*raBlockSize)
		if in >= b.n {
			ra.mu.Unlock()
			return done, io.EOF
		}
		done += copy(p[done:], b.buf[in:b.n])
		ra.mu.Unlock()
	}
	return done, nil
}

// release drops the blocks that lie wholly below off.
func (ra *readAhead) release(off int64) {
	ra.mu.Lock()
	if k := (off - ra.start) / raBlockSize; k > ra.low {
		ra.low = k
		ra.cond.Broadcast()
	}
	ra.mu.Unlock()
}

// stop ends the prefetcher and fails reads that wait for it.
func (ra *readAhead) stop() {
	ra.mu.Lock()
	ra.quit = true
	ra.cond.Broadcast()
	ra.mu.Unlock()
	<-ra.done
}
