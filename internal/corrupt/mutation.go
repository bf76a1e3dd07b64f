package corrupt

import (
	"bytes"
	"fmt"
	"io"
)

// Kind names a sort of corruption.
type Kind string

// The kinds a Generator makes. Each says what it models.
const (
	// Flip XORs one byte anywhere below the image's end with a non-zero
	// value: a bit rot, a bad sector read back wrong.
	Flip Kind = "flip"
	// Truncate cuts the device short of the image's end: a smaller
	// partition, a copy that stopped.
	Truncate Kind = "truncate"
	// ZeroTail zeroes everything from an offset to the image's end: the
	// last writes of a save that never reached the disk.
	ZeroTail Kind = "zero-tail"
	// ZeroPages zeroes a run of whole pages: lost writes, a discard.
	ZeroPages Kind = "zero-pages"
	// SwapChunks exchanges the bytes of two chunks, whole records when
	// they are the same size, else equally long leading parts of them
	// (records or payloads): writes that landed at each other's place.
	SwapChunks Kind = "swap-chunks"
	// DupChunk writes the leading bytes of one chunk over another: a
	// write that landed twice.
	DupChunk Kind = "dup-chunk"
	// ZeroIndex zeroes the whole index region, padding included.
	ZeroIndex Kind = "zero-index"
	// ForeignSuperblock puts the superblock of another image in front of
	// this one: a device mix-up, a stale header.
	ForeignSuperblock Kind = "foreign-superblock"
	// ForeignPages puts a run of another image's pages at the same
	// offsets: leftovers of an older image, half overwritten.
	ForeignPages Kind = "foreign-pages"
	// State rewrites the superblock's state to another value, with a
	// valid checksum: an image that is not, or no longer, complete.
	State Kind = "state"
)

// Kinds lists every kind, in a fixed order.
func Kinds() []Kind {
	return []Kind{Flip, Truncate, ZeroTail, ZeroPages, SwapChunks, DupChunk, ZeroIndex, ForeignSuperblock, ForeignPages, State}
}

// Mutation is one corruption of an image: the image's bytes with some
// ranges replaced, seen through a device of Size bytes. It refers to the
// image it was made from and copies none of it.
type Mutation struct {
	Kind Kind
	// Size is the device size a reader of the mutated image is given:
	// the original's, or less after a truncation.
	Size int64
	// Seq numbers the mutations of a Generator from 1; with the seed it
	// names this one.
	Seq int
	// Region is the part of the image where the mutation starts (the
	// first patched byte, or the new end for a truncation): superblock,
	// chunk_header, chunk_payload, data_padding, index, index_padding,
	// metadata or metadata_padding.
	Region string
	desc   string

	base     io.ReaderAt
	baseSize int64
	patches  []patch
	key      []byte // of an encrypted image (Image.Key)
}

// String says exactly what the mutation did: its kind, offsets, lengths
// and values, enough to make it again by hand.
func (m *Mutation) String() string { return string(m.Kind) + ": " + m.desc }

// ReaderAt returns the mutated image. It is safe for concurrent use if
// the images it was made from are.
func (m *Mutation) ReaderAt() io.ReaderAt {
	return &overlay{base: m.base, size: m.Size, patches: m.patches}
}

// File is what WriteTo writes a mutation into: the device or file that
// holds the image the mutation was made from.
type File interface {
	io.WriterAt
	Truncate(size int64) error
}

// WriteTo makes the mutation real in f, which must hold the image it was
// made from: the patched bytes are written, and for a truncation f is cut
// to Size. Every patched byte is read before the first is written, so a
// patch may take its bytes from f itself (a swap of two chunks).
func (m *Mutation) WriteTo(f File) error {
	o := m.ReaderAt()
	type piece struct {
		off int64
		b   []byte
	}
	var pieces []piece
	for _, pt := range m.patches {
		n := min(pt.n, m.Size-pt.off)
		if n <= 0 {
			continue
		}
		b := make([]byte, n)
		if err := readFull(o, b, pt.off); err != nil {
			return fmt.Errorf("corrupt: %v: reading %d bytes at %#x: %w", m, n, pt.off, err)
		}
		pieces = append(pieces, piece{pt.off, b})
	}
	for _, p := range pieces {
		if _, err := f.WriteAt(p.b, p.off); err != nil {
			return fmt.Errorf("corrupt: %v: writing %d bytes at %#x: %w", m, len(p.b), p.off, err)
		}
	}
	if m.Size < m.baseSize {
		if err := f.Truncate(m.Size); err != nil {
			return fmt.Errorf("corrupt: %v: truncating to %d bytes: %w", m, m.Size, err)
		}
	}
	return nil
}

// changes reports whether the mutated image differs from the original
// as a reader sees it: shorter, or some patched byte different.
func (m *Mutation) changes() (bool, error) {
	if m.Size < m.baseSize {
		return true, nil
	}
	o := m.ReaderAt()
	const piece = 64 << 10
	a, b := make([]byte, piece), make([]byte, piece)
	for _, pt := range m.patches {
		end := min(pt.off+pt.n, m.Size)
		for off := pt.off; off < end; off += piece {
			n := min(piece, end-off)
			if err := readFull(m.base, a[:n], off); err != nil {
				return false, fmt.Errorf("corrupt: reading the image at %#x: %w", off, err)
			}
			if err := readFull(o, b[:n], off); err != nil {
				return false, err
			}
			if !bytes.Equal(a[:n], b[:n]) {
				return true, nil
			}
		}
	}
	return false, nil
}
