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
