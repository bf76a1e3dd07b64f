package image

import (
	"fmt"
	"io"
	"runtime"
	"sort"
	"sync"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/zstd"
)

// Reader reads a complete image. Open has checked the superblock, the
// metadata and the index against their hashes; chunks are checked as they
// are read. A Reader is safe for concurrent use.
type Reader struct {
	// Workers is how many goroutines Verify and Restore use to read and
	// decode chunks ahead of the caller. Open sets GOMAXPROCS.
	Workers int

	// Direct, if set, lets RestoreConcurrent decode a chunk straight into
	// the memory its pages go to, saving a copy of every page: for a chunk
	// whose pages are physically consecutive it asks Direct for exactly
	// len bytes of writable memory at page frame pfn (other lengths fail
	// the chunk). Direct returns nil when it cannot offer them (the chunk
	// then goes to fn as usual), or the memory and a function that
	// RestoreConcurrent calls once it is done with it. Such a chunk's stored bytes are checked (and, encrypted,
	// opened) before anything is written; its decoded pages are checked
	// in place, after they are written, and a mismatch fails the restore
	// as any bad chunk does. fn never sees the chunk.
	Direct func(pfn uint64, len int) (mem []byte, done func())

	r    io.ReaderAt
	sb   Superblock
	meta Meta
	ix   *index
	seal *sealer // nil: not encrypted

	zonce sync.Once
	zdec  *zstd.Decoder
	zerr  error

	mu    sync.Mutex // guards cache
	cache []cached
	tick  uint64
}

// cached is a decoded chunk kept for ReadPage.
type cached struct {
	chunk int // -1: empty
	used  uint64
	bufs  chunkBufs
	pages []byte
}

// readPageCache is how many decoded chunks ReadPage keeps (1 MiB with
// 64-page chunks): enough for a caller that reads a few neighbouring pages.
const readPageCache = 4

// Open checks an image of size bytes and returns a Reader for it. A
// superblock in state Writing or Failed gives ErrIncomplete, one in state
// Invalidated ErrInvalidated. Nothing is allocated on the say-so of the
// image beyond what its size and the format's limits allow.
// An encrypted image gives ErrEncrypted: OpenWith takes its key.
func Open(r io.ReaderAt, size int64) (*Reader, error) {
	return OpenWith(r, size, OpenOptions{})
}

// OpenInvalidated opens an image like Open, but also one in state
// Invalidated: one that was resumed from, for inspection.
func OpenInvalidated(r io.ReaderAt, size int64) (*Reader, error) {
	return OpenWith(r, size, OpenOptions{Invalidated: true})
}

// OpenOptions are Open's variations.
type OpenOptions struct {
	// Key is the master key of an encrypted image (from UnlockPassphrase,
	// say). Without it an encrypted image gives ErrEncrypted, once its
	// superblock has checked out; an unencrypted image ignores it.
	Key []byte
	// Invalidated also opens an image in state Invalidated.
	Invalidated bool
}

// OpenWith opens an image like Open, with options. An encrypted image is
// opened with its key: the metadata and the index are opened (their
// seals checked) before they are parsed, and every chunk when it is read.
// A key that does not open the metadata gives ErrWrongKey.
func OpenWith(r io.ReaderAt, size int64, opts OpenOptions) (*Reader, error) {
	return open(r, size, opts.Invalidated, opts.Key)
}

func open(r io.ReaderAt, size int64, invalidatedOK bool, key []byte) (*Reader, error) {
	if size < 0 {
		size = 0
	}
	sb, err := ReadSuperblock(io.NewSectionReader(r, 0, size))
	if err != nil {
		return nil, err
	}
	switch sb.State {
	case StateComplete:
	case StateWriting:
		return nil, fmt.Errorf("%w: state %v (the save did not finish)", ErrIncomplete, sb.State)
	case StateFailed:
		return nil, fmt.Errorf("%w: state %v (the save gave up)", ErrIncomplete, sb.State)
	case StateInvalidated:
		if !invalidatedOK {
			return nil, fmt.Errorf("%w: state %v (already resumed from)", ErrInvalidated, sb.State)
		}
	}
	if err := checkLayout(sb, uint64(size)); err != nil {
		return nil, err
	}
	// Every later read stays below ImageSize, which checkLayout held to
	// size; the section makes sure.
	r = io.NewSectionReader(r, 0, size)
	rd := &Reader{Workers: runtime.GOMAXPROCS(0), r: r, sb: *sb}
	if sb.Encrypted() {
		if key == nil {
			return nil, fmt.Errorf("%w (%v, %s)", ErrEncrypted, sb.Cipher, slotKinds(sb.Slots))
		}
		if rd.seal, err = newSealer(sb.Cipher, key, sb.UUID); err != nil {
			return nil, err
		}
	}

	mb, err := readRegion(r, "metadata", sb.MetaOff, sb.MetaLen, sb.MetaHash)
	if err != nil {
		return nil, err
	}
	mb = mb[:sb.MetaLen]
	if rd.seal != nil {
		// The first seal a reader opens: its checksum held, so a failure
		// here is a key that is not this image's (or a forgery).
		if mb, err = rd.seal.open(nil, mb, domainMeta, 0, 0, 0); err != nil {
			return nil, fmt.Errorf("%w: the key does not open the metadata at offset %#x (%v): not this image's key, or the metadata was altered or comes from another image", ErrWrongKey, sb.MetaOff, err)
		}
	}
	m, err := parseMeta(mb, sb)
	if err != nil {
		return nil, err
	}
	rd.meta = *m

	ib, err := readRegion(r, "index", sb.IndexOff, sb.IndexLen, sb.IndexHash)
	if err != nil {
		return nil, err
	}
	if rd.seal != nil {
		if ib, err = rd.seal.open(ib[:0], ib[:sb.IndexLen], domainIndex, 0, 0, 0); err != nil {
			return nil, formatErr(sb.IndexOff, "index: %v (altered, or from another image)", err)
		}
	}
	place := newPlacement(m)
	if rd.ix, err = parseIndex(ib, sb, &place); err != nil {
		return nil, err
	}
	return rd, nil
}

// slotKinds names the kinds of key slots, for messages.
func slotKinds(slots []KeySlot) string {
	s := ""
	for i, k := range slots {
		if i > 0 {
			s += ", "
		}
		s += k.Kind.String()
	}
	return "key slots: " + s
}

// checkLayout checks a Complete superblock's numbers against each other,
// against the format's limits and against the image size, so that every
// later read is in bounds and every allocation bounded.
func checkLayout(sb *Superblock, size uint64) error {
	// What sealing adds to the index and the metadata (a tag each).
	var over uint64
	if sb.Encrypted() {
		over = sealOverhead
	}
	switch {
	case sb.PageSize != PageSize:
		return formatErr(48, "page size %d, want %d", sb.PageSize, PageSize)
	case sb.ChunkPages < 1 || sb.ChunkPages > MaxChunkPages:
		return formatErr(52, "%d pages per chunk, want 1 to %d", sb.ChunkPages, MaxChunkPages)
	case !sb.Codec.known():
		return formatErr(56, "unknown codec %d", uint8(sb.Codec))
	case sb.UUID.IsZero():
		return formatErr(16, "no UUID")
	case sb.DataOff != SuperblockSize:
		return formatErr(88, "data area at %#x, want %#x", sb.DataOff, SuperblockSize)
	// Each length is at most the image size (itself below 2^63), so the
	// sums below cannot wrap.
	case sb.ImageSize > size:
		return formatErr(size, "truncated: the image ends at %#x, only %#x bytes are there", sb.ImageSize, size)
	case sb.DataLen > sb.ImageSize || sb.IndexLen > sb.ImageSize || sb.MetaLen > sb.ImageSize:
		return formatErr(96, "region lengths (%#x, %#x, %#x) exceed the image (%#x)", sb.DataLen, sb.IndexLen, sb.MetaLen, sb.ImageSize)
	case sb.IndexOff != sb.DataOff+alignUp(sb.DataLen):
		return formatErr(112, "index at %#x, want %#x", sb.IndexOff, sb.DataOff+alignUp(sb.DataLen))
	case sb.MetaOff != sb.IndexOff+alignUp(sb.IndexLen):
		return formatErr(136, "metadata at %#x, want %#x", sb.MetaOff, sb.IndexOff+alignUp(sb.IndexLen))
	case sb.ImageSize != sb.MetaOff+alignUp(sb.MetaLen):
		return formatErr(72, "image size %#x, want %#x", sb.ImageSize, sb.MetaOff+alignUp(sb.MetaLen))
	case sb.MetaLen <= over || sb.MetaLen > MaxMetaSize:
		return formatErr(144, "metadata of %d bytes, want %d to %d", sb.MetaLen, over+1, MaxMetaSize)
	case sb.IndexLen < indexHeaderSize+over || sb.IndexLen > MaxIndexSize:
		return formatErr(120, "index of %d bytes, want %d to %d", sb.IndexLen, indexHeaderSize+over, MaxIndexSize)
	case sb.Runs > sb.IndexLen/runEntrySize || sb.Chunks > sb.IndexLen/chunkEntrySize ||
		sb.IndexLen != indexLen(sb.Runs, sb.Chunks)+over:
		return formatErr(120, "index of %d bytes cannot hold %d runs and %d chunks", sb.IndexLen, sb.Runs, sb.Chunks)
	case sb.ZeroPages > sb.Pages || sb.DataPages != sb.Pages-sb.ZeroPages:
		return formatErr(160, "%d pages are not %d zero + %d data", sb.Pages, sb.ZeroPages, sb.DataPages)
	case sb.Chunks > sb.DataPages || sb.DataPages > sb.Chunks*uint64(sb.ChunkPages):
		return formatErr(176, "%d data pages cannot fill %d chunks of up to %d", sb.DataPages, sb.Chunks, sb.ChunkPages)
	case sb.Chunks > sb.DataLen/(chunkHeaderSize+1) || (sb.Chunks == 0) != (sb.DataLen == 0):
		return formatErr(96, "data area of %d bytes cannot hold %d chunks", sb.DataLen, sb.Chunks)
	}
	return nil
}

// readRegion reads a region with its padding and checks its hash. Its
// length has been bounded by checkLayout.
func readRegion(r io.ReaderAt, name string, off, n, sum uint64) ([]byte, error) {
	b := make([]byte, alignUp(n))
	if err := readFull(r, b, off); err != nil {
		if err == errShort {
			return nil, formatErr(off, "truncated %s", name)
		}
		return nil, fmt.Errorf("image: reading %s at offset %#x: %w", name, off, err)
	}
	if xxhash.Sum64(b) != sum {
		return nil, formatErr(off, "%s checksum mismatch", name)
	}
	return b, nil
}

// Close releases the decoder; the Reader must not be used afterwards.
func (rd *Reader) Close() error {
	rd.zonce.Do(func() { rd.zerr = fmt.Errorf("image: reader closed") })
	if rd.zdec != nil {
		rd.zdec.Close()
	}
	return nil
}

func (rd *Reader) zstdDecoder() (*zstd.Decoder, error) {
	rd.zonce.Do(func() {
		rd.zdec, rd.zerr = newZstdDecoder()
	})
	return rd.zdec, rd.zerr
}

// Superblock returns a copy of the superblock.
func (rd *Reader) Superblock() Superblock {
	sb := rd.sb
	sb.Slots = cloneSlots(sb.Slots)
	return sb
}

// Encrypted reports whether the image is sealed (version 2).
func (rd *Reader) Encrypted() bool { return rd.seal != nil }

// Meta returns a copy of the metadata.
func (rd *Reader) Meta() Meta { return rd.meta.clone() }

// Runs returns the page runs in physical order. The slice belongs to the
// Reader and must not be modified.
func (rd *Reader) Runs() []Run { return rd.ix.runs }

// Chunks returns the chunk table. The slice belongs to the Reader and must
// not be modified.
func (rd *Reader) Chunks() []Chunk { return rd.ix.chunks }

// Stats returns the image's figures.
func (rd *Reader) Stats() Stats {
	s := Stats{
		Pages:       rd.sb.Pages,
		ZeroPages:   rd.sb.ZeroPages,
		DataPages:   rd.sb.DataPages,
		Runs:        rd.sb.Runs,
		Chunks:      rd.sb.Chunks,
		RawBytes:    rd.sb.DataPages * PageSize,
		StoredBytes: rd.sb.DataLen,
		ImageBytes:  rd.sb.ImageSize,
	}
	for _, c := range rd.ix.chunks {
		if c.Codec == CodecNone {
			s.RawChunks++
		}
	}
	return s
}

// chunkBufs are the buffers one chunk is read into: as stored (header
// and payload), decoded, and, in an encrypted image, opened.
type chunkBufs struct {
	stored, raw, plain []byte
}

// chunkBufs returns buffers large enough for any chunk of this image.
func (rd *Reader) chunkBufs() chunkBufs {
	n := int(rd.sb.ChunkPages) * PageSize
	if rd.seal == nil {
		return chunkBufs{stored: make([]byte, chunkHeaderSize+n), raw: make([]byte, n)}
	}
	return chunkBufs{stored: make([]byte, chunkHeaderSize+n+sealOverhead), raw: make([]byte, n), plain: make([]byte, n)}
}

// readChunk reads chunk i into its stored buffer, checks its header and
// hashes, opens its seal in an encrypted image, and returns its pages (in
// raw, or for a raw chunk in stored or plain). The stored bytes stay as
// they were read. No page of a chunk is returned unless all of it checked
// out.
//
// With dst not nil (exactly the chunk's pages long), the pages are
// decoded into dst instead, and checked there, after they are written.
func (rd *Reader) readChunk(src io.ReaderAt, i int, bufs chunkBufs, dst []byte) ([]byte, error) {
	c := &rd.ix.chunks[i]
	raw := bufs.raw
	if dst != nil {
		if len(dst) != int(c.Pages)*PageSize {
			return nil, fmt.Errorf("image: chunk %d: %d bytes to decode into, want %d", i, len(dst), int(c.Pages)*PageSize)
		}
		raw = dst
	}
	b := bufs.stored[:chunkHeaderSize+int(c.Stored)]
	if err := readFull(src, b, c.Offset); err != nil {
		if err == errShort {
			return nil, chunkErr(i, c.Offset, "truncated")
		}
		return nil, fmt.Errorf("image: reading chunk %d at offset %#x: %w", i, c.Offset, err)
	}
	if msg := checkChunkHeader(b, i, c, rd.seal != nil); msg != "" {
		return nil, chunkErr(i, c.Offset, "%s", msg)
	}
	payload := b[chunkHeaderSize:]
	if xxhash.Sum64(payload) != c.StoredHash {
		return nil, chunkErr(i, c.Offset, "checksum mismatch")
	}
	if rd.seal != nil {
		var err error
		if payload, err = rd.seal.open(bufs.plain[:0], payload, domainChunk, uint64(i), c.Pages, c.Codec); err != nil {
			return nil, chunkErr(i, c.Offset, "%v: the chunk was altered, moved or replayed", err)
		}
	}
	pages, err := decode(c.Codec, payload, raw[:0:int(c.Pages)*PageSize], rd.zstdDecoder)
	if err != nil {
		return nil, chunkErr(i, c.Offset, "%v", err)
	}
	if dst != nil && (len(pages) == 0 || &pages[0] != &dst[0]) {
		// Stored raw (decode hands back the payload), or decoded
		// elsewhere: the pages still go where they belong.
		pages = dst[:copy(dst, pages)]
	}
	if xxhash.Sum64(pages) != c.RawHash {
		return nil, chunkErr(i, c.Offset, "checksum of the decoded pages mismatch (%v)", c.Codec)
	}
	return pages, nil
}

// ReadPage returns a copy of the page at page frame pfn. A page the image
// does not hold gives ErrNoPage.
func (rd *Reader) ReadPage(pfn uint64) ([]byte, error) {
	runs := rd.ix.runs
	i := sort.Search(len(runs), func(k int) bool { return runs[k].End() > pfn })
	if i == len(runs) || runs[i].Start > pfn {
		return nil, fmt.Errorf("%w: pfn %#x", ErrNoPage, pfn)
	}
	page := make([]byte, PageSize)
	if runs[i].Kind == KindZero {
		return page, nil
	}
	ord := rd.ix.runOrd[i] + (pfn - runs[i].Start)
	co := rd.ix.chunkOrd
	ci := sort.Search(len(co), func(k int) bool { return co[k]+uint64(rd.ix.chunks[k].Pages) > ord })
	if ci == len(co) {
		// parseIndex checked that chunks and runs hold the same pages.
		return nil, formatErr(rd.sb.IndexOff, "no chunk holds data page %d", ord)
	}
	rd.mu.Lock()
	defer rd.mu.Unlock()
	e, err := rd.cached(ci)
	if err != nil {
		return nil, err
	}
	off := (ord - co[ci]) * PageSize
	copy(page, e.pages[off:off+PageSize])
	return page, nil
}

// cached returns chunk ci decoded, from the cache or read into its least
// recently used slot. rd.mu is held.
func (rd *Reader) cached(ci int) (*cached, error) {
	rd.tick++
	if rd.cache == nil {
		rd.cache = make([]cached, readPageCache)
		for k := range rd.cache {
			rd.cache[k].chunk = -1
		}
	}
	victim := &rd.cache[0]
	for k := range rd.cache {
		e := &rd.cache[k]
		if e.chunk == ci {
			e.used = rd.tick
			return e, nil
		}
		if e.used < victim.used {
			victim = e
		}
	}
	if victim.bufs.stored == nil {
		victim.bufs = rd.chunkBufs()
	}
	victim.chunk = -1
	pages, err := rd.readChunk(rd.r, ci, victim.bufs, nil)
	if err != nil {
		return nil, err
	}
	victim.chunk, victim.used, victim.pages = ci, rd.tick, pages
	return victim, nil
}

// Verify reads every chunk, checks its header, its stored and decoded
// hashes, and the hash of the whole data area. It names the first bad
// chunk. progress, if not nil, is called after each chunk with the number
// of chunks done and the total.
func (rd *Reader) Verify(progress func(done, total int)) error {
	h := xxhash.New()
	s := rd.stream()
	defer s.stop()
	total := len(rd.ix.chunks)
	for k := 0; k < total; k++ {
		j, err := s.next()
		if err != nil {
			return err
		}
		h.Write(j.bufs.stored[:chunkHeaderSize+int(rd.ix.chunks[k].Stored)])
		if progress != nil {
			progress(k+1, total)
		}
	}
	return rd.checkDataHash(h)
}

// zeroPages backs the zero runs Restore hands out. It is never written, so
// it costs no memory until read, and then only the kernel's zero page.
var zeroPages [256 * PageSize]byte

// Restore calls fn for every page of the image in increasing physical
// order, in pieces of physically consecutive pages: pages holds them, and
// zero says they are all zero (pages is then all zeros, so fn may either
// copy it or clear its destination). pages is only valid during the call
// and must not be modified. Each chunk is checked before any of its pages
// reach fn, and once the last page is out Restore checks the data area's
// hash as Verify does, so that a Restore that returns nil has checked
// every byte Verify checks, in one read. If Restore fails part-way, fn has
// seen some pages and not others: a caller restoring into memory must not
// resume A then. Call Verify first to find a bad image before writing
// anything, at the cost of a second read. The work is
// proportional to the pages the image describes, zero runs included (which
// cost the image 16 bytes however long they are): a caller checks
// Stats().Pages and Meta().RAM against the memory it restores into first.
func (rd *Reader) Restore(fn func(pfn uint64, pages []byte, zero bool) error) error {
	s := rd.stream()
	defer s.stop()
	h := xxhash.New()
	next := func() (*rjob, error) {
		j, err := s.next()
		if err == nil {
			h.Write(j.bufs.stored[:chunkHeaderSize+int(rd.ix.chunks[j.i].Stored)])
		}
		return j, err
	}
	var cur []byte // pages of the current chunk not yet handed out
	for _, run := range rd.ix.runs {
		pfn, left := run.Start, uint64(run.Count)
		for left > 0 {
			if run.Kind == KindZero {
				n := min(left, uint64(len(zeroPages)/PageSize))
				if err := fn(pfn, zeroPages[:n*PageSize], true); err != nil {
					return err
				}
				pfn, left = pfn+n, left-n
				continue
			}
			if len(cur) == 0 {
				j, err := next()
				if err != nil {
					return err
				}
				cur = j.pages
			}
			n := min(left, uint64(len(cur)/PageSize))
			if err := fn(pfn, cur[:n*PageSize], false); err != nil {
				return err
			}
			cur = cur[n*PageSize:]
			pfn, left = pfn+n, left-n
		}
	}
	// Chunks no run took (the index allows none, but the hash covers
	// them all the same), then the padding.
	for s.n < len(rd.ix.chunks) {
		if _, err := next(); err != nil {
			return err
		}
	}
	return rd.checkDataHash(h)
}

// RestoreConcurrent restores like Restore, but fn gets each chunk's pages
// from the goroutine that read and checked the chunk, as soon as it has:
// fn runs on up to Workers goroutines at once, every call for pages of
// its own, in no particular order. The zero runs come from the calling
// goroutine, first. As with Restore, no page of a chunk reaches fn before
// all of the chunk checked out, and an error stops the restore with the
// pages handed out so far written; the data area's hash is checked last.
// It is for a caller whose writes cost more than decoding (C writing A's
// memory), so that they spread over the CPUs. With rd.Direct set, the
// chunks it takes are decoded in place and checked there (see Direct).
func (rd *Reader) RestoreConcurrent(fn func(pfn uint64, pages []byte, zero bool) error) error {
	var dataRuns []int
	for i, r := range rd.ix.runs {
		if r.Kind != KindZero {
			dataRuns = append(dataRuns, i)
		}
	}
	// runAt finds the data run that holds data page ord (counted over
	// the image's data pages in order): its index in dataRuns, or
	// len(dataRuns) if none does.
	runAt := func(ord uint64) int {
		return sort.Search(len(dataRuns), func(k int) bool {
			r := dataRuns[k]
			return rd.ix.runOrd[r]+uint64(rd.ix.runs[r].Count) > ord
		})
	}
	deliver := func(i int, pages []byte) error {
		ord := rd.ix.chunkOrd[i]
		k := runAt(ord)
		for len(pages) > 0 {
			if k == len(dataRuns) {
				return chunkErr(i, rd.ix.chunks[i].Offset, "pages beyond the index's runs")
			}
			r := rd.ix.runs[dataRuns[k]]
			skip := ord - rd.ix.runOrd[dataRuns[k]]
			n := min(uint64(r.Count)-skip, uint64(len(pages))/PageSize)
			if err := fn(r.Start+skip, pages[:n*PageSize], false); err != nil {
				return err
			}
			pages, ord, k = pages[n*PageSize:], ord+n, k+1
		}
		return nil
	}
	// where finds the page frame of chunk i's pages if they are
	// consecutive: all of them in one run.
	var where func(i int) (pfn uint64, ok bool)
	if rd.Direct != nil {
		where = func(i int) (uint64, bool) {
			ord := rd.ix.chunkOrd[i]
			k := runAt(ord)
			if k == len(dataRuns) {
				return 0, false
			}
			r := rd.ix.runs[dataRuns[k]]
			skip := ord - rd.ix.runOrd[dataRuns[k]]
			if uint64(r.Count)-skip < uint64(rd.ix.chunks[i].Pages) {
				return 0, false
			}
			return r.Start + skip, true
		}
	}
	s := rd.streamTo(deliver, where)
	defer s.stop()
	for _, run := range rd.ix.runs {
		if run.Kind != KindZero {
			continue
		}
		for pfn, left := run.Start, uint64(run.Count); left > 0; {
			n := min(left, uint64(len(zeroPages)/PageSize))
			if err := fn(pfn, zeroPages[:n*PageSize], true); err != nil {
				return err
			}
			pfn, left = pfn+n, left-n
		}
	}
	h := xxhash.New()
	for s.n < len(rd.ix.chunks) {
		j, err := s.next()
		if err != nil {
			return err
		}
		h.Write(j.bufs.stored[:chunkHeaderSize+int(rd.ix.chunks[j.i].Stored)])
	}
	return rd.checkDataHash(h)
}

// checkDataHash finishes the data area's hash h, which has the chunks
// hashed in order, with the area's padding and compares it.
func (rd *Reader) checkDataHash(h *xxhash.Digest) error {
	end := rd.sb.DataOff + rd.sb.DataLen
	pad := make([]byte, alignUp(end)-end)
	if err := readFull(rd.r, pad, end); err != nil {
		if err == errShort {
			return formatErr(end, "truncated data area")
		}
		return fmt.Errorf("image: reading data area at offset %#x: %w", end, err)
	}
	h.Write(pad)
	if h.Sum64() != rd.sb.DataHash {
		return formatErr(rd.sb.DataOff, "data area checksum mismatch")
	}
	return nil
}

// chunkStream reads and checks chunks in order, Workers of them ahead of
// the caller.
type chunkStream struct {
	rd    *Reader
	ra    *readAhead
	free  chan *rjob
	order chan *rjob
	quit  chan struct{}
	wg    sync.WaitGroup
	prev  *rjob
	n     int // chunks handed out
}

type rjob struct {
	i     int
	bufs  chunkBufs
	pages []byte
	err   error
	done  chan struct{}
}

func (rd *Reader) stream() *chunkStream { return rd.streamTo(nil, nil) }

// streamTo is stream with deliver, if not nil, called by the worker that
// read and checked a chunk, before the chunk is handed out; its error
// becomes the chunk's. A chunk that where, if not nil, places (at
// consecutive page frames) is decoded into the memory rd.Direct offers
// for it, if it does, instead of going to deliver.
func (rd *Reader) streamTo(deliver func(i int, pages []byte) error, where func(i int) (uint64, bool)) *chunkStream {
	workers := min(max(rd.Workers, 1), 64)
	njobs := workers + 2
	s := &chunkStream{
		rd:    rd,
		free:  make(chan *rjob, njobs),
		order: make(chan *rjob, njobs),
		quit:  make(chan struct{}),
	}
	if len(rd.ix.chunks) == 0 {
		close(s.order)
		return s
	}
	for range njobs {
		j := &rjob{done: make(chan struct{}, 1)}
		j.bufs = rd.chunkBufs()
		s.free <- j
	}
	s.ra = newReadAhead(rd.r, int64(rd.sb.DataOff), int64(rd.sb.DataOff+rd.sb.DataLen))
	work := make(chan *rjob, njobs)
	s.wg.Add(1 + workers)
	go func() {
		defer s.wg.Done()
		defer close(work)
		defer close(s.order)
		for i := range rd.ix.chunks {
			var j *rjob
			select {
			case j = <-s.free:
			case <-s.quit:
				return
			}
			j.i = i
			// Neither send blocks: each channel holds every job.
			s.order <- j
			work <- j
		}
	}()
	for range workers {
		go func() {
			defer s.wg.Done()
			for j := range work {
				select {
				case <-s.quit:
					j.pages, j.err = nil, errStopped
				default:
					if rd.readDirect(s.ra, j, where) {
						break
					}
					j.pages, j.err = rd.readChunk(s.ra, j.i, j.bufs, nil)
					if j.err == nil && deliver != nil {
						j.err = deliver(j.i, j.pages)
					}
				}
				j.done <- struct{}{}
			}
		}()
	}
	return s
}

// readDirect reads and checks job j's chunk into the memory rd.Direct
// offers for it, if where places the chunk and Direct offers memory. It
// reports whether it did; the job's pages are then nil (the memory is
// the caller's again), and its error the chunk's.
func (rd *Reader) readDirect(src io.ReaderAt, j *rjob, where func(i int) (uint64, bool)) bool {
	if where == nil {
		return false
	}
	pfn, ok := where(j.i)
	if !ok {
		return false
	}
	n := int(rd.ix.chunks[j.i].Pages) * PageSize
	mem, done := rd.Direct(pfn, n)
	if mem == nil {
		return false
	}
	_, j.err = rd.readChunk(src, j.i, j.bufs, mem)
	j.pages = nil
	done()
	return true
}

var errStopped = fmt.Errorf("image: stopped")

// next returns the next chunk, checked; the one before goes back to the pool.
func (s *chunkStream) next() (*rjob, error) {
	if s.prev != nil {
		s.free <- s.prev
		s.prev = nil
	}
	j, ok := <-s.order
	if !ok {
		return nil, formatErr(s.rd.sb.IndexOff, "index runs need more than the %d chunks there are", s.n)
	}
	<-j.done
	if err := j.err; err != nil {
		s.free <- j // j is the feeder's again from here on
		return nil, err
	}
	s.n++
	s.prev = j
	// Every chunk up to j is read: the data before its end is not needed.
	c := &s.rd.ix.chunks[j.i]
	s.ra.release(int64(c.Offset) + chunkHeaderSize + int64(c.Stored))
	return j, nil
}

// stop ends the goroutines and waits for them.
func (s *chunkStream) stop() {
	close(s.quit)
	if s.ra != nil {
		s.ra.stop()
	}
	for j := range s.order {
		<-j.done
	}
	s.wg.Wait()
}
