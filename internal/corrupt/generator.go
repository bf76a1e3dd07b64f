package corrupt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"

	"github.com/cespare/xxhash/v2"

	"github.com/khib/khib/internal/image"
)

// Image is an image to corrupt, or to take foreign bytes from: its bytes
// and the size of the device that holds them (at least the image's size).
type Image struct {
	R    io.ReaderAt
	Size int64
	// Key is the master key of an encrypted image to corrupt: the
	// generator opens it with the key, and its mutations are checked with
	// it, as stage 1 checks an image whose passphrase it was given.
	Key []byte
}

// Generator makes mutations of one image, reproducibly: the same image,
// other images and seed give the same mutations in the same order.
type Generator struct {
	img    Image
	others []other
	seed   uint64
	rng    *rand.Rand
	sb     image.Superblock
	chunks []image.Chunk
	// sameSize holds the groups of two or more chunks whose records
	// (header and payload) are equally long, for whole-record swaps.
	sameSize [][]int
	spans    []span
	n        int
}

// other is a foreign image, with the end of its image (or device).
type other struct {
	Image
	end int64
}

// span is a region of the image that byte-level mutations pick from, with
// its weight. chunk spans stand for every chunk's header or payload.
type span struct {
	name   string
	lo, hi int64
	w      int
	chunk  int // 0: a plain range; 1: a chunk header; 2: a chunk payload
}

const (
	pageSize  = image.PageSize
	sbSize    = image.SuperblockSize
	chunkHdr  = 32  // bytes of a chunk header (docs/image-format.md)
	sbFields  = 200 // the superblock's fields end here; reserved bytes follow
	sbSumOff  = sbSize - 8
	indexHead = 32
)

// New returns a Generator for img, which must open as a complete image.
// others, if given, are other images (the bytes of another save) for the
// kinds that mix two images; without them those kinds are not made.
func New(img Image, seed uint64, others ...Image) (*Generator, error) {
	rd, err := image.OpenWith(img.R, img.Size, image.OpenOptions{Key: img.Key})
	if err != nil {
		return nil, fmt.Errorf("corrupt: the image to corrupt does not open: %w", err)
	}
	defer rd.Close()
	g := &Generator{
		img:    img,
		seed:   seed,
		rng:    rand.New(rand.NewPCG(seed, 0x6b686962)),
		sb:     rd.Superblock(),
		chunks: append([]image.Chunk(nil), rd.Chunks()...),
	}
	for _, o := range others {
		end := o.Size
		if sb, err := image.ReadSuperblock(o.R); err == nil && sb.ImageSize > 0 && int64(sb.ImageSize) < end {
			end = int64(sb.ImageSize)
		}
		if end < sbSize {
			return nil, fmt.Errorf("corrupt: another image of %d bytes is too short to take a superblock from", end)
		}
		g.others = append(g.others, other{o, end})
	}
	bySize := map[int64][]int{}
	for i, c := range g.chunks {
		n := chunkHdr + int64(c.Stored)
		bySize[n] = append(bySize[n], i)
	}
	for _, idx := range bySize {
		if len(idx) > 1 {
			g.sameSize = append(g.sameSize, idx)
		}
	}
	sort.Slice(g.sameSize, func(a, b int) bool { return g.sameSize[a][0] < g.sameSize[b][0] })
	sb := &g.sb
	dataEnd := int64(sb.DataOff + sb.DataLen)
	ixEnd, metaEnd := int64(sb.IndexOff+sb.IndexLen), int64(sb.MetaOff+sb.MetaLen)
	// Weights: the few bytes that describe the image get as many hits as
	// the many bytes of page data, so that every check is reached.
	for _, s := range []span{
		{"superblock fields", 0, sbFields, 12, 0},
		{"superblock reserved bytes", sbFields, sbSumOff, 3, 0},
		{"superblock checksum", sbSumOff, sbSize, 2, 0},
		{"chunk header", 0, 0, 15, 1},
		{"chunk payload", 0, 0, 25, 2},
		{"data area padding", dataEnd, int64(sb.IndexOff), 3, 0},
		{"index header", int64(sb.IndexOff), int64(sb.IndexOff) + indexHead, 5, 0},
		{"index tables", int64(sb.IndexOff) + indexHead, ixEnd, 12, 0},
		{"index padding", ixEnd, int64(sb.MetaOff), 3, 0},
		{"metadata", int64(sb.MetaOff), metaEnd, 10, 0},
		{"metadata padding", metaEnd, int64(sb.ImageSize), 3, 0},
	} {
		if s.chunk != 0 && len(g.chunks) > 0 || s.chunk == 0 && s.hi > s.lo {
			g.spans = append(g.spans, s)
		}
	}
	return g, nil
}

// Seed is the generator's seed.
func (g *Generator) Seed() uint64 { return g.seed }

// ImageSize is the end of the image being corrupted, from its superblock.
func (g *Generator) ImageSize() int64 { return int64(g.sb.ImageSize) }

// kindWeights says how often Next makes each kind.
var kindWeights = []struct {
	k Kind
	w int
}{
	{Flip, 30}, {Truncate, 8}, {ZeroTail, 6}, {ZeroPages, 12}, {SwapChunks, 10},
	{DupChunk, 6}, {ZeroIndex, 3}, {ForeignSuperblock, 4}, {ForeignPages, 12}, {State, 5},
}

// Next returns the next mutation. Each one changes what a reader of the
// image sees: a mutation that would leave every byte as it was (zeroing
// zeros, swapping equal chunks) is drawn again.
func (g *Generator) Next() (*Mutation, error) {
	return g.next("")
}

// NextOf is Next for mutations of kind k alone.
func (g *Generator) NextOf(k Kind) (*Mutation, error) {
	return g.next(k)
}

func (g *Generator) next(only Kind) (*Mutation, error) {
	total := 0
	for _, kw := range kindWeights {
		total += kw.w
	}
	for range 1000 {
		k := only
		if k == "" {
			x := g.rng.IntN(total)
			for _, kw := range kindWeights {
				if x < kw.w {
					k = kw.k
					break
				}
				x -= kw.w
			}
		}
		m, err := g.Make(k)
		if errors.Is(err, errNotHere) {
			continue
		}
		if err != nil {
			return nil, err
		}
		ch, err := m.changes()
		if err != nil {
			return nil, err
		}
		if ch {
			g.n++
			m.Seq = g.n
			return m, nil
		}
	}
	if only != "" {
		return nil, fmt.Errorf("corrupt: no %s mutation changes this image", only)
	}
	return nil, errors.New("corrupt: no mutation changes this image")
}

// errNotHere: this kind cannot be made of this image (no other image, a
// single chunk), or its random draw changed nothing.
var errNotHere = errors.New("corrupt: kind not applicable to this image")

// Make returns a random mutation of kind k. It may leave the image as it
// was (zeroing what was zero); Next draws again then.
func (g *Generator) Make(k Kind) (*Mutation, error) {
	switch k {
	case Flip:
		return g.flip()
	case Truncate:
		return g.Truncated(g.truncLen()), nil
	case ZeroTail:
		off := g.offset()
		end := g.ImageSize()
		return g.mutation(ZeroTail, fmt.Sprintf("bytes %#x-%#x (%d, from %s to the image's end) zeroed", off, end-1, end-off, g.where(off)),
			patch{off: off, n: end - off}), nil
	case ZeroPages:
		off := g.offset() &^ (pageSize - 1)
		n := min(int64(1+g.rng.IntN(1+g.rng.IntN(16)))*pageSize, g.ImageSize()-off)
		return g.mutation(ZeroPages, fmt.Sprintf("%d pages at %#x-%#x (from %s) zeroed", n/pageSize, off, off+n-1, g.where(off)),
			patch{off: off, n: n}), nil
	case SwapChunks:
		return g.swap()
	case DupChunk:
		if len(g.chunks) < 2 {
			return nil, errNotHere
		}
		i, j := g.twoChunks()
		a, b := g.record(i), g.record(j)
		n := min(a.n, b.n)
		return g.mutation(DupChunk, fmt.Sprintf("the first %d bytes of chunk %d (at %#x) written over chunk %d (at %#x, %d bytes long)", n, i, a.off, j, b.off, b.n),
			patch{off: b.off, n: n, src: g.img.R, srcOff: a.off}), nil
	case ZeroIndex:
		return g.ZeroedIndex(), nil
	case ForeignSuperblock:
		if len(g.others) == 0 {
			return nil, errNotHere
		}
		return g.ForeignSuperblock(g.rng.IntN(len(g.others)))
	case ForeignPages:
		if len(g.others) == 0 {
			return nil, errNotHere
		}
		oi := g.rng.IntN(len(g.others))
		o := g.others[oi]
		off := g.offset() &^ (pageSize - 1)
		n := min(int64(1+g.rng.IntN(1+g.rng.IntN(16)))*pageSize, g.ImageSize()-off, o.end-off)
		if n <= 0 {
			return nil, errNotHere
		}
		return g.mutation(ForeignPages, fmt.Sprintf("%d bytes at %#x-%#x (from %s) taken from the same offsets of other image %d", n, off, off+n-1, g.where(off), oi),
			patch{off: off, n: n, src: o.R, srcOff: off}), nil
	case State:
		return g.state()
	}
	return nil, fmt.Errorf("corrupt: unknown kind %q", k)
}

func (g *Generator) mutation(k Kind, desc string, patches ...patch) *Mutation {
	m := &Mutation{Kind: k, Size: g.img.Size, desc: desc, base: g.img.R, baseSize: g.img.Size, patches: patches, key: g.img.Key}
	if len(patches) > 0 {
		m.Region = g.region(patches[0].off)
	}
	return m
}

// Truncated returns the image on a device cut to n bytes, n below the
// image's end.
func (g *Generator) Truncated(n int64) *Mutation {
	n = max(min(n, g.ImageSize()-1), 0)
	m := g.mutation(Truncate, fmt.Sprintf("device cut to %d bytes (%#x, in %s; the image ends at %#x)", n, n, g.where(n), g.ImageSize()))
	m.Size, m.Region = n, g.region(n)
	return m
}

// ZeroedIndex returns the image with its index region, padding included,
// zeroed.
func (g *Generator) ZeroedIndex() *Mutation {
	off, n := int64(g.sb.IndexOff), int64(g.sb.MetaOff-g.sb.IndexOff)
	return g.mutation(ZeroIndex, fmt.Sprintf("index region %#x-%#x (%d bytes) zeroed", off, off+n-1, n), patch{off: off, n: n})
}

// ForeignSuperblock returns the image with the first page of other image
// i (as given to New) in place of its own superblock.
func (g *Generator) ForeignSuperblock(i int) (*Mutation, error) {
	if i < 0 || i >= len(g.others) {
		return nil, fmt.Errorf("corrupt: no other image %d (%d given)", i, len(g.others))
	}
	desc := fmt.Sprintf("superblock (bytes 0-%#x) taken from other image %d", sbSize-1, i)
	if sb, err := image.ReadSuperblock(g.others[i].R); err == nil {
		desc += fmt.Sprintf(" (UUID %v, state %v, image size %#x; this image's UUID %v, size %#x)", sb.UUID, sb.State, sb.ImageSize, g.sb.UUID, g.sb.ImageSize)
	}
	return g.mutation(ForeignSuperblock, desc, patch{off: 0, n: sbSize, src: g.others[i].R, srcOff: 0}), nil
}

// offset picks a byte of the image by the spans' weights.
func (g *Generator) offset() int64 {
	off, _ := g.pick()
	return off
}

func (g *Generator) pick() (int64, string) {
	total := 0
	for _, s := range g.spans {
		total += s.w
	}
	x := g.rng.IntN(total)
	for _, s := range g.spans {
		if x >= s.w {
			x -= s.w
			continue
		}
		switch s.chunk {
		case 1:
			c := g.chunks[g.rng.IntN(len(g.chunks))]
			return int64(c.Offset) + g.rng.Int64N(chunkHdr), s.name
		case 2:
			c := g.chunks[g.rng.IntN(len(g.chunks))]
			if c.Stored == 0 {
				return int64(c.Offset), s.name
			}
			return int64(c.Offset) + chunkHdr + g.rng.Int64N(int64(c.Stored)), s.name
		}
		return s.lo + g.rng.Int64N(s.hi-s.lo), s.name
	}
	return 0, "superblock"
}

func (g *Generator) flip() (*Mutation, error) {
	off := g.offset()
	var b [1]byte
	if err := readFull(g.img.R, b[:], off); err != nil {
		return nil, fmt.Errorf("corrupt: reading the image at %#x: %w", off, err)
	}
	x := byte(1) << g.rng.IntN(8) // a bit, half of the time
	if g.rng.IntN(2) == 0 {
		x = byte(1 + g.rng.IntN(255))
	}
	return g.mutation(Flip, fmt.Sprintf("byte %#x (%s) xor %#02x: was %#02x, now %#02x", off, g.where(off), x, b[0], b[0]^x),
		patch{off: off, data: []byte{b[0] ^ x}, n: 1}), nil
}

// truncLen picks a truncation: anywhere, or next to a boundary between
// regions or chunks, where off-by-one mistakes live.
func (g *Generator) truncLen() int64 {
	if g.rng.IntN(2) == 0 {
		return g.rng.Int64N(g.ImageSize())
	}
	sb := &g.sb
	marks := []int64{0, 8, 12, sbSumOff, sbSize, int64(sb.DataOff + sb.DataLen), int64(sb.IndexOff),
		int64(sb.IndexOff + sb.IndexLen), int64(sb.MetaOff), int64(sb.MetaOff + sb.MetaLen), g.ImageSize()}
	if len(g.chunks) > 0 {
		c := g.chunks[g.rng.IntN(len(g.chunks))]
		marks = append(marks, int64(c.Offset), int64(c.Offset)+chunkHdr, int64(c.Offset)+chunkHdr+int64(c.Stored))
	}
	return marks[g.rng.IntN(len(marks))] + g.rng.Int64N(3) - 1
}

// record is chunk i's header and payload.
func (g *Generator) record(i int) struct{ off, n int64 } {
	c := g.chunks[i]
	return struct{ off, n int64 }{int64(c.Offset), chunkHdr + int64(c.Stored)}
}

func (g *Generator) twoChunks() (int, int) {
	i := g.rng.IntN(len(g.chunks))
	j := g.rng.IntN(len(g.chunks) - 1)
	if j >= i {
		j++
	}
	return i, j
}

func (g *Generator) swap() (*Mutation, error) {
	if len(g.chunks) < 2 {
		return nil, errNotHere
	}
	var i, j int
	var a, b struct{ off, n int64 }
	var what string
	switch mode := g.rng.IntN(3); {
	case mode == 0 && len(g.sameSize) > 0:
		grp := g.sameSize[g.rng.IntN(len(g.sameSize))]
		x, y := g.rng.IntN(len(grp)), g.rng.IntN(len(grp)-1)
		if y >= x {
			y++
		}
		i, j = grp[x], grp[y]
		a, b = g.record(i), g.record(j)
		what = "whole records"
	case mode == 1:
		i, j = g.twoChunks()
		a, b = g.record(i), g.record(j)
		a.off, a.n, b.off, b.n = a.off+chunkHdr, a.n-chunkHdr, b.off+chunkHdr, b.n-chunkHdr
		what = "payloads, headers kept"
	default:
		i, j = g.twoChunks()
		a, b = g.record(i), g.record(j)
		what = "records, headers included"
	}
	n := min(a.n, b.n)
	if n == 0 {
		return nil, errNotHere
	}
	return g.mutation(SwapChunks, fmt.Sprintf("chunks %d and %d swapped (%s): %d bytes at %#x and %#x", i, j, what, n, a.off, b.off),
		patch{off: a.off, n: n, src: g.img.R, srcOff: b.off},
		patch{off: b.off, n: n, src: g.img.R, srcOff: a.off}), nil
}

// state rewrites the superblock with another state and a checksum that
// matches it.
func (g *Generator) state() (*Mutation, error) {
	page := make([]byte, sbSize)
	if err := readFull(g.img.R, page, 0); err != nil {
		return nil, fmt.Errorf("corrupt: reading the superblock: %w", err)
	}
	states := []image.State{image.StateWriting, image.StateInvalidated, image.StateFailed, 0, 5, image.State(g.rng.Uint32())}
	s := states[g.rng.IntN(len(states))]
	if s == image.StateComplete {
		s = image.StateWriting
	}
	le := binary.LittleEndian
	old := image.State(le.Uint32(page[12:]))
	le.PutUint32(page[12:], uint32(s))
	le.PutUint64(page[sbSumOff:], xxhash.Sum64(page[:sbSumOff]))
	return g.mutation(State, fmt.Sprintf("superblock state %v changed to %v (%d), checksum recomputed to %#x", old, s, uint32(s), le.Uint64(page[sbSumOff:])),
		patch{off: 0, n: sbSize, data: page}), nil
}

// sbFieldNames names the superblock's fields by offset (docs/image-format.md).
var sbFieldNames = []struct {
	off  int64
	name string
}{
	{0, "Magic"}, {8, "Version"}, {12, "State"}, {16, "UUID"}, {32, "Nonce"}, {48, "PageSize"},
	{52, "ChunkPages"}, {56, "Codec"}, {57, "reserved"}, {64, "Capacity"}, {72, "ImageSize"},
	{80, "Created"}, {88, "DataOff"}, {96, "DataLen"}, {104, "DataHash"}, {112, "IndexOff"},
	{120, "IndexLen"}, {128, "IndexHash"}, {136, "MetaOff"}, {144, "MetaLen"}, {152, "MetaHash"},
	{160, "Pages"}, {168, "ZeroPages"}, {176, "DataPages"}, {184, "Runs"}, {192, "Chunks"},
	{200, "reserved"}, {sbSumOff, "Checksum"},
}

// region names the part of the image off is in, coarsely.
func (g *Generator) region(off int64) string {
	sb := &g.sb
	switch {
	case off < sbSize:
		return "superblock"
	case off < int64(sb.DataOff+sb.DataLen):
		i := sort.Search(len(g.chunks), func(k int) bool { return int64(g.chunks[k].Offset) > off }) - 1
		if i >= 0 && off-int64(g.chunks[i].Offset) < chunkHdr {
			return "chunk_header"
		}
		return "chunk_payload"
	case off < int64(sb.IndexOff):
		return "data_padding"
	case off < int64(sb.IndexOff+sb.IndexLen):
		return "index"
	case off < int64(sb.MetaOff):
		return "index_padding"
	case off < int64(sb.MetaOff+sb.MetaLen):
		return "metadata"
	case off < int64(sb.ImageSize):
		return "metadata_padding"
	}
	return "beyond_image"
}

// where says what lies at off in the image being corrupted.
func (g *Generator) where(off int64) string {
	sb := &g.sb
	switch {
	case off < sbSize:
		f := sbFieldNames[0]
		for _, x := range sbFieldNames {
			if x.off <= off {
				f = x
			}
		}
		return fmt.Sprintf("superblock %s, byte %d of it", f.name, off-f.off)
	case off < int64(sb.DataOff+sb.DataLen):
		i := sort.Search(len(g.chunks), func(k int) bool { return int64(g.chunks[k].Offset) > off }) - 1
		if i < 0 {
			return "the data area"
		}
		if d := off - int64(g.chunks[i].Offset); d < chunkHdr {
			return fmt.Sprintf("chunk %d header, byte %d", i, d)
		} else {
			return fmt.Sprintf("chunk %d payload, byte %d of %d", i, d-chunkHdr, g.chunks[i].Stored)
		}
	case off < int64(sb.IndexOff):
		return "the data area's padding"
	case off < int64(sb.IndexOff)+indexHead:
		return fmt.Sprintf("index header, byte %d", off-int64(sb.IndexOff))
	case off < int64(sb.IndexOff+sb.IndexLen):
		d := off - int64(sb.IndexOff) - indexHead
		if runs := int64(sb.Runs) * 16; d < runs {
			return fmt.Sprintf("index run %d, byte %d", d/16, d%16)
		} else {
			return fmt.Sprintf("index chunk entry %d, byte %d", (d-runs)/32, (d-runs)%32)
		}
	case off < int64(sb.MetaOff):
		return "the index's padding"
	case off < int64(sb.MetaOff+sb.MetaLen):
		return fmt.Sprintf("metadata, byte %d of %d", off-int64(sb.MetaOff), sb.MetaLen)
	case off < int64(sb.ImageSize):
		return "the metadata's padding"
	}
	return "beyond the image"
}
