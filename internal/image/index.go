package image

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// The index, written after the data:
//
//	0   [4]byte "KHIX"
//	4   u32     reserved
//	8   u64     number of runs
//	16  u64     number of chunks
//	24  u64     reserved
//	32  runs:   Start u64, Count u32, Kind u8, 3 reserved bytes
//	    chunks: Offset u64, Stored u32, Pages u16, Codec u8, 1 reserved byte,
//	            RawHash u64, StoredHash u64

// appendIndex encodes the index.
func appendIndex(b []byte, runs []Run, chunks []Chunk) []byte {
	le := binary.LittleEndian
	b = append(b, indexMagic[:]...)
	b = le.AppendUint32(b, 0)
	b = le.AppendUint64(b, uint64(len(runs)))
	b = le.AppendUint64(b, uint64(len(chunks)))
	b = le.AppendUint64(b, 0)
	for _, r := range runs {
		b = le.AppendUint64(b, r.Start)
		b = le.AppendUint32(b, r.Count)
		b = append(b, byte(r.Kind), 0, 0, 0)
	}
	for _, c := range chunks {
		b = le.AppendUint64(b, c.Offset)
		b = appendChunkFields(b, &c)
	}
	return b
}

// appendChunkFields appends what a chunk's index entry and its header share.
func appendChunkFields(b []byte, c *Chunk) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, c.Stored)
	b = le.AppendUint16(b, c.Pages)
	b = append(b, byte(c.Codec), 0)
	b = le.AppendUint64(b, c.RawHash)
	b = le.AppendUint64(b, c.StoredHash)
	return b
}

// The chunk header, in front of every chunk's payload:
//
//	0   [4]byte "KHCK"
//	4   u32     chunk number
//	8   u32     Stored
//	12  u16     Pages
//	14  u8      Codec
//	15  u8      reserved
//	16  u64     RawHash
//	24  u64     StoredHash
//
// It repeats the chunk's index entry, so that a chunk found at an offset
// can be told from stale bytes of an older image, and so that a damaged
// index does not leave the data unreadable by hand. In an encrypted image
// RawHash is zero in the header: a hash of the pages in clear would let
// anyone holding the image test guesses of their content. The sealed
// index holds it.
func appendChunkHeader(b []byte, seq uint32, c *Chunk, sealed bool) []byte {
	b = append(b, chunkMagic[:]...)
	b = binary.LittleEndian.AppendUint32(b, seq)
	if sealed {
		h := *c
		h.RawHash = 0
		return appendChunkFields(b, &h)
	}
	return appendChunkFields(b, c)
}

// checkChunkHeader compares a chunk header with its index entry, byte for
// byte, reserved bytes included.
func checkChunkHeader(h []byte, seq int, c *Chunk, sealed bool) string {
	var want [chunkHeaderSize]byte
	appendChunkHeader(want[:0], uint32(seq), c, sealed)
	switch {
	case [4]byte(h[0:4]) != chunkMagic:
		return "no chunk header (bad magic)"
	case binary.LittleEndian.Uint32(h[4:]) != uint32(seq):
		return fmt.Sprintf("chunk header has number %d", binary.LittleEndian.Uint32(h[4:]))
	case !bytes.Equal(h[:chunkHeaderSize], want[:]):
		return "chunk header does not match the index"
	}
	return ""
}

// index is a parsed, checked index with the lookups a Reader needs.
type index struct {
	runs   []Run
	chunks []Chunk
	// runOrd[i] is, for data run i, the number of data pages before it:
	// the position of its first page in the concatenation of all chunks.
	runOrd []uint64
	// chunkOrd[i] is the number of data pages in chunks before chunk i.
	chunkOrd []uint64
}

// parseIndex decodes and checks an index whose hash has been verified
// (and, in an encrypted image, that has been opened) and whose length
// matches the superblock's counts (Reader.checkLayout).
func parseIndex(b []byte, sb *Superblock, place *placement) (*index, error) {
	// A sealed chunk is its payload and a tag.
	var over uint64
	if sb.Encrypted() {
		over = sealOverhead
	}
	le := binary.LittleEndian
	off := sb.IndexOff
	if [4]byte(b[0:4]) != indexMagic {
		return nil, formatErr(off, "no index (bad magic)")
	}
	if le.Uint64(b[8:]) != sb.Runs || le.Uint64(b[16:]) != sb.Chunks {
		return nil, formatErr(off, "index counts (%d runs, %d chunks) differ from the superblock's (%d, %d)",
			le.Uint64(b[8:]), le.Uint64(b[16:]), sb.Runs, sb.Chunks)
	}
	// The counts were checked against IndexLen, which is at most
	// MaxIndexSize and within the image: these allocations are bounded.
	ix := &index{
		runs:     make([]Run, sb.Runs),
		runOrd:   make([]uint64, sb.Runs),
		chunks:   make([]Chunk, sb.Chunks),
		chunkOrd: make([]uint64, sb.Chunks),
	}
	p := indexHeaderSize
	var next, zero, data uint64
	for i := range ix.runs {
		e := b[p : p+runEntrySize]
		eoff := off + uint64(p)
		p += runEntrySize
		r := Run{Start: le.Uint64(e), Count: le.Uint32(e[8:]), Kind: Kind(e[12])}
		switch {
		case r.Kind != KindZero && r.Kind != KindData:
			return nil, formatErr(eoff, "run %d: unknown kind %d", i, e[12])
		case r.Count == 0:
			return nil, formatErr(eoff, "run %d: no pages", i)
		case r.Start > MaxPFN-uint64(r.Count):
			return nil, formatErr(eoff, "run %d: pfn %#x+%d beyond physical memory", i, r.Start, r.Count)
		case i > 0 && r.Start < next:
			return nil, formatErr(eoff, "run %d at pfn %#x overlaps or precedes the one before (ends at %#x)", i, r.Start, next)
		}
		if msg := place.check(r.Start, r.End()); msg != "" {
			return nil, formatErr(eoff, "run %d: %s", i, msg)
		}
		next = r.End()
		ix.runs[i] = r
		if r.Kind == KindZero {
			zero += uint64(r.Count)
		} else {
			ix.runOrd[i] = data
			data += uint64(r.Count)
		}
	}
	if zero != sb.ZeroPages || data != sb.DataPages {
		return nil, formatErr(off, "runs hold %d zero and %d data pages, the superblock says %d and %d",
			zero, data, sb.ZeroPages, sb.DataPages)
	}
	pos := sb.DataOff
	var pages uint64
	for i := range ix.chunks {
		e := b[p : p+chunkEntrySize]
		eoff := off + uint64(p)
		p += chunkEntrySize
		c := Chunk{
			Offset:     le.Uint64(e),
			Stored:     le.Uint32(e[8:]),
			Pages:      le.Uint16(e[12:]),
			Codec:      Codec(e[14]),
			RawHash:    le.Uint64(e[16:]),
			StoredHash: le.Uint64(e[24:]),
		}
		raw := uint64(c.Pages) * PageSize
		switch {
		case c.Offset != pos:
			return nil, formatErr(eoff, "chunk %d: at offset %#x, want %#x (chunks are contiguous)", i, c.Offset, pos)
		case c.Pages == 0 || uint32(c.Pages) > sb.ChunkPages:
			return nil, formatErr(eoff, "chunk %d: %d pages, want 1 to %d", i, c.Pages, sb.ChunkPages)
		case !c.Codec.known():
			return nil, formatErr(eoff, "chunk %d: unknown codec %d", i, uint8(c.Codec))
		case c.Codec == CodecNone && uint64(c.Stored) != raw+over:
			return nil, formatErr(eoff, "chunk %d: stored raw in %d bytes, want %d", i, c.Stored, raw+over)
		case c.Codec != CodecNone && (uint64(c.Stored) <= over || uint64(c.Stored) >= raw+over):
			// The writer stores raw whatever does not shrink.
			return nil, formatErr(eoff, "chunk %d: %v payload of %d bytes for %d pages", i, c.Codec, c.Stored, c.Pages)
		}
		// pos stays below DataOff+DataLen, itself within the image, so
		// neither sum can wrap.
		pos += chunkHeaderSize + uint64(c.Stored)
		if pos > sb.DataOff+sb.DataLen {
			return nil, formatErr(eoff, "chunk %d: ends at %#x, beyond the data area (%#x)", i, pos, sb.DataOff+sb.DataLen)
		}
		ix.chunks[i] = c
		ix.chunkOrd[i] = pages
		pages += uint64(c.Pages)
	}
	if pos != sb.DataOff+sb.DataLen {
		return nil, formatErr(off, "chunks end at %#x, the data area at %#x", pos, sb.DataOff+sb.DataLen)
	}
	if pages != sb.DataPages {
		return nil, formatErr(off, "chunks hold %d pages, the runs %d", pages, sb.DataPages)
	}
	return ix, nil
}
