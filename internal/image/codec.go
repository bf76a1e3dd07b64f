package image

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// isZero reports whether a page is all zero bytes. It ORs eight words at a
// time: most data pages differ in the first word, and a zero page costs 64
// iterations of plain loads, which QEMU TCG translates well (its vector
// instructions are emulated one helper call at a time).
func isZero(p []byte) bool {
	for len(p) >= 64 {
		q := p[:64:64]
		le := binary.LittleEndian
		if le.Uint64(q[0:])|le.Uint64(q[8:])|le.Uint64(q[16:])|le.Uint64(q[24:])|
			le.Uint64(q[32:])|le.Uint64(q[40:])|le.Uint64(q[48:])|le.Uint64(q[56:]) != 0 {
			return false
		}
		p = p[64:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// incompressible guesses, from four of its pages, that a chunk would not
// compress, so that it is stored raw without compressing it all: pages at
// 0, 1/4, 1/2 and 3/4 of the chunk must all shrink by less than 1/32 under
// s2. (With two samples, a chunk of independent pages a quarter of them
// random was stored raw one time in 16: images of the benchmark's page mix
// grew by 13%.) Compressing incompressible memory (random, encrypted,
// already compressed) costs s2 eight times what storing it does (597
// against 4708 MB/s on this host, and under TCG it was the save's limit at
// 89 MB/s); the guess costs 4 pages of s2 per chunk, less when the first
// page compresses. A chunk guessed wrong
// is merely stored larger than it could be.
func incompressible(raw []byte) bool {
	n := len(raw) / PageSize
	if n < 4 {
		return false // small chunks: just try
	}
	var buf [s2MaxPage]byte
	for _, i := range []int{0, n / 4, n / 2, 3 * n / 4} {
		p := raw[i*PageSize : (i+1)*PageSize]
		if len(s2.Encode(buf[:], p)) < PageSize-PageSize/32 {
			return false
		}
	}
	return true
}

// s2MaxPage bounds s2's encoding of one page (s2.MaxEncodedLen(PageSize)),
// so that the sample needs no allocation.
const s2MaxPage = PageSize + PageSize/6 + 64

// newZstdEncoder makes the encoder the Writer shares between its workers.
// The window need not be larger than a chunk: chunks are compressed
// independently.
func newZstdEncoder(workers, chunkBytes int) (*zstd.Encoder, error) {
	return zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(workers),
		zstd.WithEncoderCRC(false), // the chunk has its own hashes
		zstd.WithWindowSize(windowFor(chunkBytes)),
	)
}

// windowFor returns the smallest power of two that holds n, within zstd's limits.
func windowFor(n int) int {
	w := 1 << bits.Len(uint(n-1))
	return min(max(w, zstd.MinWindowSize), 1<<27)
}

// maxChunkBytes is the largest a chunk's pages decode to.
const maxChunkBytes = MaxChunkPages * PageSize

// newZstdDecoder makes a Reader's decoder. Its output is capped at the
// destination's capacity, so a hostile frame cannot make it allocate.
func newZstdDecoder() (*zstd.Decoder, error) {
	return zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(maxChunkBytes),
		zstd.WithDecoderMaxWindow(uint64(windowFor(maxChunkBytes))),
		zstd.WithDecodeAllCapLimit(true),
	)
}

// decode decodes a chunk payload into dst, whose capacity is exactly the
// size the chunk must decode to, and returns the pages. It never allocates
// more than dst: the decoded length is checked before decoding.
func decode(c Codec, payload, dst []byte, zd func() (*zstd.Decoder, error)) ([]byte, error) {
	want := cap(dst)
	switch c {
	case CodecNone:
		if len(payload) != want {
			return nil, fmt.Errorf("stored %d bytes, want %d", len(payload), want)
		}
		return payload, nil
	case CodecS2:
		n, err := s2.DecodedLen(payload)
		if err != nil {
			return nil, fmt.Errorf("s2: %v", err)
		}
		if n != want {
			return nil, fmt.Errorf("s2 block decodes to %d bytes, want %d", n, want)
		}
		out, err := s2.Decode(dst[:want], payload)
		if err != nil {
			return nil, fmt.Errorf("s2: %v", err)
		}
		return out, nil
	case CodecZstd:
		d, err := zd()
		if err != nil {
			return nil, err
		}
		out, err := d.DecodeAll(payload, dst[:0])
		if err != nil {
			return nil, fmt.Errorf("zstd: %v", err)
		}
		if len(out) != want {
			return nil, fmt.Errorf("zstd frame decodes to %d bytes, want %d", len(out), want)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown codec %v", c)
}
