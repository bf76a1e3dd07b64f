package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cespare/xxhash/v2"
	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// WriterOptions configure a Writer. The zero value writes s2 chunks of
// 64 pages on GOMAXPROCS goroutines, without syncing.
type WriterOptions struct {
	Codec      string // "s2" (default), "zstd" or "none"
	Workers    int    // goroutines compressing chunks; 0 means GOMAXPROCS, at most 64
	ChunkPages int    // pages per chunk, 1 to MaxChunkPages; 0 means DefaultChunkPages
	// Sync makes everything written so far durable (fsync, a cache flush).
	// Close calls it before and after writing the complete mark, and
	// NewWriter after the Writing superblock. nil skips syncing, which is
	// only right for tests and throwaway files.
	Sync  func() error
	Meta  Meta  // A's identity; the writer fills in UUID (if zero), Created (if zero), PageSize, Codec and Hash
	Nonce Nonce // the request's nonce, kept in the superblock
	// Encryption, if set, makes an encrypted image (version 2): every
	// chunk, the index and the metadata sealed under a key derived from
	// Encryption.Key and the image's UUID, which the writer then always
	// draws fresh (Meta.UUID must be zero).
	Encryption *Encryption
}

// Writer streams pages into an image, in physical order. Compression runs
// on worker goroutines; chunks are written in order, at increasing offsets,
// in page-aligned pieces of about flushSize bytes. Close must be called,
// also after an error: it stops the goroutines.
type Writer struct {
	w          io.WriterAt
	capacity   uint64 // usable bytes, a whole number of pages
	sync       func() error
	codec      Codec
	chunkPages int
	meta       Meta
	metaEst    uint64 // bytes the metadata will take, padding included
	place      placement
	sb         Superblock
	seal       *sealer // nil: not encrypted

	// Owned by the goroutine calling AddPages.
	runs    []Run
	cur     *job
	nextPFN uint64
	seq     uint32
	closed  bool
	result  error

	// The pipeline: free → (filled by AddPages) → work and order → workers
	// compress → the sequencer takes jobs in order → free again. The number
	// of jobs bounds memory, and a caller outrunning the disk blocks on free.
	free    chan *job
	work    chan *job
	order   chan *job
	seqDone chan struct{}
	workers sync.WaitGroup
	zenc    *zstd.Encoder

	// Owned by the sequencer until seqDone is closed.
	chunks []Chunk
	out    []byte // staged bytes of the data area, starting at outOff
	outOff uint64
	// The data area goes out on its own goroutine (writeLoop), so that
	// the device works while the CPUs compress: full buffers to writes,
	// written ones back to outFree.
	outFree       chan []byte
	writes        chan pendingWrite
	writeDone     chan struct{}
	writesStopped bool
	// Nanoseconds spent in the data area's writes, and waiting for a
	// buffer because the writes fell behind (IOTimes).
	nsWrite, nsWait atomic.Int64
	dataEnd         uint64 // offset after the last chunk
	dataHash        *xxhash.Digest

	errMu sync.Mutex
	err   error // the first error; every later call returns it

	nPages, nZero, nData, nRuns  atomic.Uint64
	nChunks, nRawChunks, nStored atomic.Uint64
	nImage                       atomic.Uint64 // set once the image is complete
}

// maxWorkers bounds WriterOptions.Workers, and with it the writer's memory.
const maxWorkers = 64

// flushSize is how much of the data area the writer gathers before it
// writes: big enough that a block device sees few, large, aligned writes
// (which a store may send past the page cache: internal/store's directIO).
// outBuffers of them are in flight at most.
const (
	flushSize  = 4 << 20
	outBuffers = 3
)

// pendingWrite is a piece of the data area on its way to the device.
type pendingWrite struct {
	buf []byte // from outFree
	n   int    // bytes to write
	off uint64
}

// job is one chunk on its way through the pipeline.
type job struct {
	raw     []byte // the pages, cap chunkPages*PageSize
	n       int    // pages in raw
	enc     []byte // compression buffer
	seq     uint32
	lastPFN uint64 // of the chunk's last page, for the space estimate
	runs    int    // runs recorded when the chunk was cut, for the space estimate

	codec              Codec
	stored             []byte // raw or enc
	rawHash, storedSum uint64
	done               chan struct{} // cap 1; a worker signals, the sequencer waits
}

// NewWriter starts an image on w, which offers capacity bytes. It writes a
// superblock in state Writing at once (invalidating any image w held
// before) and syncs it.
func NewWriter(w io.WriterAt, capacity int64, opts WriterOptions) (*Writer, error) {
	codec, err := ParseCodec(opts.Codec)
	if err != nil {
		return nil, err
	}
	cp, workers := opts.shape()
	if cp < 1 || cp > MaxChunkPages {
		return nil, fmt.Errorf("image: %d pages per chunk, want 1 to %d", cp, MaxChunkPages)
	}
	m := opts.Meta.clone()
	if m.PageSize != 0 && m.PageSize != PageSize {
		return nil, fmt.Errorf("image: page size %d, this format stores %d-byte pages", m.PageSize, PageSize)
	}
	for i, r := range m.RAM {
		if r.End <= r.Start {
			return nil, fmt.Errorf("image: RAM range %d is empty or inverted: %#x-%#x", i, r.Start, r.End)
		}
	}
	if m.Region.End < m.Region.Start {
		return nil, fmt.Errorf("image: region inverted: %#x-%#x", m.Region.Start, m.Region.End)
	}
	m.PageSize = PageSize
	m.Codec = codec.String()
	m.Hash = HashName
	enc := opts.Encryption
	if enc != nil {
		// The image key is derived from the master key and the UUID: a
		// UUID the caller chose could repeat, and with it the key and
		// every nonce.
		if !m.UUID.IsZero() {
			return nil, errors.New("image: an encrypted image takes a fresh UUID; leave Meta.UUID zero")
		}
		if len(enc.Key) != KeySize {
			return nil, fmt.Errorf("image: a key of %d bytes, want %d", len(enc.Key), KeySize)
		}
		if _, err := EncodeSlots(enc.Slots); err != nil {
			return nil, err
		}
	}
	if m.UUID.IsZero() {
		if m.UUID, err = NewUUID(); err != nil {
			return nil, err
		}
	}
	if m.Created.IsZero() {
		m.Created = time.Now().UTC()
	}
	mj, err := json.Marshal(&m)
	if err != nil {
		return nil, fmt.Errorf("image: encoding metadata: %w", err)
	}
	if len(mj) > MaxMetaSize {
		return nil, fmt.Errorf("image: metadata of %d bytes, at most %d", len(mj), MaxMetaSize)
	}

	wr := &Writer{
		w:          w,
		capacity:   uint64(max(capacity, 0)) &^ (PageSize - 1),
		sync:       opts.Sync,
		codec:      codec,
		chunkPages: cp,
		meta:       m,
		// Notes added later grow the JSON; a page of slack covers the usual few.
		metaEst:  alignUp(uint64(len(mj))) + PageSize,
		place:    newPlacement(&m),
		outOff:   SuperblockSize,
		dataEnd:  SuperblockSize,
		dataHash: xxhash.New(),
		sb: Superblock{
			State:      StateWriting,
			UUID:       m.UUID,
			Nonce:      opts.Nonce,
			PageSize:   PageSize,
			ChunkPages: uint32(cp),
			Codec:      codec,
			Capacity:   uint64(max(capacity, 0)),
			Created:    m.Created.UnixNano(),
		},
	}
	if enc != nil {
		if wr.seal, err = newSealer(CipherAES256GCM, enc.Key, m.UUID); err != nil {
			return nil, err
		}
		wr.sb.Cipher = CipherAES256GCM
		wr.sb.Slots = cloneSlots(enc.Slots)
		wr.metaEst = alignUp(uint64(len(mj)+sealOverhead)) + PageSize
	}
	if need := uint64(SuperblockSize) + PageSize + wr.metaEst; wr.capacity < need {
		return nil, &TooSmallError{Capacity: capacity, Need: int64(need)}
	}
	if codec == CodecZstd {
		if wr.zenc, err = newZstdEncoder(workers, cp*PageSize); err != nil {
			return nil, fmt.Errorf("image: zstd: %w", err)
		}
	}
	// The Writing superblock goes first and is synced before any data, so
	// that a save that dies half-way can never leave an older image's
	// Complete superblock in front of new data.
	if _, err := w.WriteAt(wr.sb.Marshal(), 0); err != nil {
		wr.closeCodec()
		return nil, fmt.Errorf("image: writing superblock: %w", err)
	}
	if err := wr.doSync(); err != nil {
		wr.closeCodec()
		return nil, err
	}

	njobs := jobsFor(workers)
	wr.free = make(chan *job, njobs)
	wr.work = make(chan *job, njobs)
	wr.order = make(chan *job, njobs)
	wr.seqDone = make(chan struct{})
	// Room for a tag behind the payload, so that it is sealed in place.
	encCap := encodedCap(cp)
	for range njobs {
		wr.free <- &job{
			raw:  make([]byte, cp*PageSize, cp*PageSize+sealOverhead),
			enc:  make([]byte, 0, encCap),
			done: make(chan struct{}, 1),
		}
	}
	wr.outFree = make(chan []byte, outBuffers)
	for range outBuffers {
		wr.outFree <- alignedBuffer(outBufferSize(cp))
	}
	wr.out = (<-wr.outFree)[:0]
	wr.writes = make(chan pendingWrite, outBuffers)
	wr.writeDone = make(chan struct{})
	go wr.writeLoop()
	for range workers {
		wr.workers.Add(1)
		go wr.compressLoop()
	}
	go wr.sequence()
	return wr, nil
}

// shape is the chunk size and the number of compressing goroutines that
// o asks for, with the defaults filled in; the chunk size is not checked.
func (o WriterOptions) shape() (chunkPages, workers int) {
	chunkPages = o.ChunkPages
	if chunkPages == 0 {
		chunkPages = DefaultChunkPages
	}
	workers = o.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	// Each worker keeps two chunks in flight; more than this buys nothing.
	return chunkPages, min(workers, maxWorkers)
}

// jobsFor is how many chunks a writer with workers compressing goroutines
// keeps: two in flight per worker, one being filled, one being written.
func jobsFor(workers int) int { return 2*workers + 2 }

// encodedCap is the capacity of a job's buffer for a chunk's stored form.
func encodedCap(chunkPages int) int { return s2.MaxEncodedLen(chunkPages*PageSize) + sealOverhead }

// outBufferSize is the size of one output buffer: a flush's worth of
// whole pages, and the chunk that crosses it.
func outBufferSize(chunkPages int) int {
	return flushSize + chunkHeaderSize + chunkPages*PageSize + sealOverhead + PageSize
}

// BufferBytes is the memory a Writer with these options allocates for its
// chunks and output buffers, the bulk of what it uses (a zstd encoder's
// tables come on top). A helper that saves into a small reserved region
// checks its choice of chunk size and workers against it.
func (o WriterOptions) BufferBytes() int64 {
	cp, workers := o.shape()
	perJob := heapSize(cp*PageSize+sealOverhead) + heapSize(encodedCap(cp))
	return int64(jobsFor(workers))*perJob + outBuffers*heapSize(outBufferSize(cp)+PageSize)
}

// heapSize is what the Go heap takes for a buffer of n bytes: at least a
// 8 KiB page per 8 KiB for buffers beyond its largest size class (32 KiB),
// all the writer's buffers but the smallest chunks'.
func heapSize(n int) int64 {
	if n <= 32<<10 {
		return int64(n)
	}
	return int64((n + 8<<10 - 1) &^ (8<<10 - 1))
}

func (w *Writer) doSync() error {
	if w.sync == nil {
		return nil
	}
	if err := w.sync(); err != nil {
		return fmt.Errorf("image: sync: %w", err)
	}
	return nil
}

func (w *Writer) closeCodec() {
	if w.zenc != nil {
		w.zenc.Close()
	}
}

// fail records the first error.
func (w *Writer) fail(err error) error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	if w.err == nil {
		w.err = err
	}
	return w.err
}

func (w *Writer) failed() error {
	w.errMu.Lock()
	defer w.errMu.Unlock()
	return w.err
}

// UUID is the image's identity, also in the superblock and the metadata.
func (w *Writer) UUID() UUID { return w.meta.UUID }

// SetNote records a free-form figure in the metadata's Notes, for example
// how long the save took. Call it before Close.
func (w *Writer) SetNote(key, value string) {
	if w.meta.Notes == nil {
		w.meta.Notes = map[string]string{}
	}
	w.meta.Notes[key] = value
}

// AddPages adds len(data)/PageSize physically consecutive pages starting at
// page frame pfn. Calls must come in increasing physical order; the pages
// between two calls are simply not in the image. Zero pages are recorded
// and not stored. AddPages copies what it keeps: data may be reused when it
// returns. After an error the Writer is unusable, and Close reports the
// error again. AddPages and Close are called from one goroutine.
func (w *Writer) AddPages(pfn uint64, data []byte) error {
	if w.closed {
		return errors.New("image: AddPages after Close")
	}
	if err := w.failed(); err != nil {
		return err
	}
	if len(data)%PageSize != 0 {
		return w.fail(fmt.Errorf("image: %d bytes at pfn %#x are not whole pages", len(data), pfn))
	}
	n := uint64(len(data) / PageSize)
	if n == 0 {
		return nil
	}
	switch {
	case pfn < w.nextPFN:
		return w.fail(fmt.Errorf("image: pages out of order: pfn %#x after pages up to %#x", pfn, w.nextPFN-1))
	case pfn > MaxPFN-n:
		return w.fail(fmt.Errorf("image: pfn %#x+%d beyond physical memory", pfn, n))
	}
	if msg := w.place.check(pfn, pfn+n); msg != "" {
		return w.fail(errors.New("image: " + msg))
	}
	w.nextPFN = pfn + n

	var zero uint64
	for i := uint64(0); i < n; i++ {
		p := data[i*PageSize : (i+1)*PageSize : (i+1)*PageSize]
		if isZero(p) {
			w.record(pfn+i, KindZero)
			zero++
			continue
		}
		w.record(pfn+i, KindData)
		if w.cur == nil {
			w.cur = <-w.free
			w.cur.n = 0
		}
		copy(w.cur.raw[w.cur.n*PageSize:], p)
		w.cur.n++
		if w.cur.n == w.chunkPages {
			w.submit(pfn + i)
			if err := w.failed(); err != nil {
				return err
			}
		}
	}
	w.nPages.Add(n)
	w.nZero.Add(zero)
	w.nData.Add(n - zero)
	w.nRuns.Store(uint64(len(w.runs)))
	return nil
}

// record notes the kind of one page, extending the last run if it can.
func (w *Writer) record(pfn uint64, k Kind) {
	if i := len(w.runs) - 1; i >= 0 {
		r := &w.runs[i]
		if r.Kind == k && r.End() == pfn && r.Count < maxRunPages {
			r.Count++
			return
		}
	}
	w.runs = append(w.runs, Run{Start: pfn, Count: 1, Kind: k})
}

// submit hands the current chunk to the workers and the sequencer. Neither
// send blocks: both channels hold every job there is.
func (w *Writer) submit(lastPFN uint64) {
	j := w.cur
	w.cur = nil
	j.seq = w.seq
	w.seq++
	j.lastPFN = lastPFN
	j.runs = len(w.runs)
	w.order <- j
	w.work <- j
}

func (w *Writer) compressLoop() {
	defer w.workers.Done()
	for j := range w.work {
		w.compress(j)
		j.done <- struct{}{}
	}
}

// compress fills in a job's stored form and hashes, sealing it in place
// in an encrypted image.
func (w *Writer) compress(j *job) {
	raw := j.raw[:j.n*PageSize]
	j.rawHash = xxhash.Sum64(raw)
	var enc []byte
	codec := w.codec
	if codec != CodecNone && incompressible(raw) {
		codec = CodecNone
	}
	switch codec {
	case CodecS2:
		enc = s2.Encode(j.enc[:cap(j.enc)-sealOverhead], raw)
	case CodecZstd:
		enc = w.zenc.EncodeAll(raw, j.enc[:0])
		if cap(enc) > cap(j.enc) {
			j.enc = enc[:0]
		}
	}
	if codec == CodecNone || len(enc) >= len(raw) {
		j.codec, j.stored, j.storedSum = CodecNone, raw, j.rawHash
	} else {
		j.codec, j.stored = w.codec, enc
	}
	if w.seal != nil {
		j.stored = w.seal.seal(j.stored[:0], j.stored, domainChunk, uint64(j.seq), uint16(j.n), j.codec)
	}
	if w.seal != nil || j.codec != CodecNone {
		j.storedSum = xxhash.Sum64(j.stored)
	}
}

// sequence writes finished chunks in order. After an error it keeps
// draining, so that AddPages never waits for a job that will not come back.
func (w *Writer) sequence() {
	defer close(w.seqDone)
	for j := range w.order {
		<-j.done
		if w.failed() == nil {
			if err := w.emit(j); err != nil {
				w.fail(err)
			}
		}
		w.free <- j
	}
}

// emit stages one chunk, writing out the data area in page-aligned pieces.
func (w *Writer) emit(j *job) error {
	c := Chunk{
		Offset:     w.dataEnd,
		Stored:     uint32(len(j.stored)),
		Pages:      uint16(j.n),
		Codec:      j.codec,
		RawHash:    j.rawHash,
		StoredHash: j.storedSum,
	}
	end := w.dataEnd + chunkHeaderSize + uint64(len(j.stored))
	// Room must remain for the index as it stands and the metadata;
	// checking now, not at Close, stops a hopeless save early.
	need := alignUp(end) + alignUp(indexLen(uint64(j.runs), uint64(len(w.chunks)+1))) + w.metaEst
	if need > w.capacity {
		return w.tooSmall(end, j)
	}
	start := len(w.out)
	w.out = appendChunkHeader(w.out, j.seq, &c, w.seal != nil)
	w.out = append(w.out, j.stored...)
	w.dataHash.Write(w.out[start:])
	w.chunks = append(w.chunks, c)
	w.dataEnd = end
	w.nChunks.Add(1)
	w.nStored.Add(chunkHeaderSize + uint64(len(j.stored)))
	if j.codec == CodecNone {
		w.nRawChunks.Add(1)
	}
	if len(w.out) >= flushSize {
		return w.flush(false)
	}
	return nil
}

// flush hands the staged whole pages, or with final everything, padded
// with zeros to a page, to writeLoop; the bytes after the last whole page
// move to the next buffer. A final flush waits until everything is
// written. A write's error shows at a later flush (and at the final one
// for sure), and stops the save there.
func (w *Writer) flush(final bool) error {
	n := len(w.out) &^ (PageSize - 1)
	if final {
		pad := int(alignUp(uint64(len(w.out)))) - len(w.out)
		start := len(w.out)
		w.out = append(w.out, make([]byte, pad)...)
		w.dataHash.Write(w.out[start:])
		n = len(w.out)
	}
	if n > 0 {
		t := time.Now()
		next := <-w.outFree
		w.nsWait.Add(int64(time.Since(t)))
		next = next[:copy(next[:cap(next)], w.out[n:])]
		w.writes <- pendingWrite{buf: w.out, n: n, off: w.outOff}
		w.outOff += uint64(n)
		w.out = next
	}
	if final {
		w.stopWrites()
	}
	return w.failed()
}

// stopWrites waits for the pieces handed to writeLoop and ends it.
func (w *Writer) stopWrites() {
	if !w.writesStopped {
		w.writesStopped = true
		close(w.writes)
		<-w.writeDone
	}
}

// writeLoop writes the data area's pieces in order. After an error it
// writes no more, and only hands the buffers back.
func (w *Writer) writeLoop() {
	defer close(w.writeDone)
	for p := range w.writes {
		if w.failed() == nil {
			t := time.Now()
			if _, err := w.w.WriteAt(p.buf[:p.n], int64(p.off)); err != nil {
				w.fail(fmt.Errorf("image: writing data at offset %#x: %w", p.off, err))
			}
			w.nsWrite.Add(int64(time.Since(t)))
		}
		w.outFree <- p.buf[:0]
	}
}

// alignedBuffer returns n zeroed bytes at an address that is a multiple of
// the page size, so that a write from them, or a read into them, may go
// straight to a device (O_DIRECT).
func alignedBuffer(n int) []byte {
	b := make([]byte, n+PageSize)
	skip := (PageSize - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%PageSize)) % PageSize
	return b[skip : skip+n : skip+n]
}

// tooSmall builds the error for a chunk that does not fit, with the size
// the whole image would need, extrapolated from the share of A's RAM saved
// so far when the metadata says how much RAM there is.
func (w *Writer) tooSmall(end uint64, j *job) error {
	data := end - SuperblockSize
	idx := indexLen(uint64(j.runs), uint64(len(w.chunks)+1))
	e := &TooSmallError{Capacity: int64(w.sb.Capacity)}
	if f := w.place.fraction(j.lastPFN + 1); f > 0 {
		data = uint64(float64(data) / f)
		idx = uint64(float64(idx) / f)
		e.Estimated = true
	} else {
		e.AtLeast = true
	}
	e.Need = int64(SuperblockSize + alignUp(data) + alignUp(idx) + w.metaEst)
	return e
}

// IOTimes says how long the data area's writes took, and how long the
// writer waited for them because they fell behind compression: a save
// whose wait is most of its time is bound by its target. It may be called
// from any goroutine.
func (w *Writer) IOTimes() (writing, waiting time.Duration) {
	return time.Duration(w.nsWrite.Load()), time.Duration(w.nsWait.Load())
}

// Stats returns the figures so far; it may be called from any goroutine.
func (w *Writer) Stats() Stats {
	s := Stats{
		Pages:       w.nPages.Load(),
		ZeroPages:   w.nZero.Load(),
		DataPages:   w.nData.Load(),
		Runs:        w.nRuns.Load(),
		Chunks:      w.nChunks.Load(),
		RawChunks:   w.nRawChunks.Load(),
		StoredBytes: w.nStored.Load(),
	}
	s.RawBytes = s.DataPages * PageSize
	s.ImageBytes = w.nImage.Load()
	return s
}

// Close finishes the image: the last chunk, the index, the metadata, a
// sync, and only then the superblock in state Complete, and a sync again.
// If anything failed, before or now, the superblock stays in state
// Writing and Close returns the error. Close may be called more than once.
func (w *Writer) Close() error {
	if w.closed {
		return w.result
	}
	w.closed = true
	w.result = w.finish()
	return w.result
}

func (w *Writer) finish() error {
	if w.cur != nil {
		if w.cur.n > 0 && w.failed() == nil {
			w.submit(w.nextPFN - 1)
		} else {
			w.free <- w.cur
			w.cur = nil
		}
	}
	close(w.work)
	close(w.order)
	<-w.seqDone
	w.workers.Wait()
	w.closeCodec()
	if err := w.failed(); err != nil {
		w.stopWrites()
		return err
	}
	if err := w.flush(true); err != nil {
		return err
	}

	sb := &w.sb
	sb.DataOff = SuperblockSize
	sb.DataLen = w.dataEnd - SuperblockSize
	sb.DataHash = w.dataHash.Sum64()

	ix := appendIndex(make([]byte, 0, alignUp(indexLen(uint64(len(w.runs)), uint64(len(w.chunks)))+sealOverhead)), w.runs, w.chunks)
	if w.seal != nil {
		ix = w.seal.seal(ix[:0], ix, domainIndex, 0, 0, 0)
	}
	sb.IndexOff = SuperblockSize + alignUp(sb.DataLen)
	sb.IndexLen = uint64(len(ix))
	ix = padPage(ix)
	sb.IndexHash = xxhash.Sum64(ix)

	mj, err := json.Marshal(&w.meta)
	if err != nil {
		return fmt.Errorf("image: encoding metadata: %w", err)
	}
	if w.seal != nil {
		mj = w.seal.seal(nil, mj, domainMeta, 0, 0, 0)
	}
	if len(mj) > MaxMetaSize {
		return fmt.Errorf("image: metadata of %d bytes, at most %d", len(mj), MaxMetaSize)
	}
	sb.MetaOff = sb.IndexOff + alignUp(sb.IndexLen)
	sb.MetaLen = uint64(len(mj))
	mj = padPage(mj)
	sb.MetaHash = xxhash.Sum64(mj)
	sb.ImageSize = sb.MetaOff + uint64(len(mj))
	if sb.ImageSize > w.capacity {
		return &TooSmallError{Capacity: int64(sb.Capacity), Need: int64(sb.ImageSize)}
	}

	if _, err := w.w.WriteAt(ix, int64(sb.IndexOff)); err != nil {
		return fmt.Errorf("image: writing index at offset %#x: %w", sb.IndexOff, err)
	}
	if _, err := w.w.WriteAt(mj, int64(sb.MetaOff)); err != nil {
		return fmt.Errorf("image: writing metadata at offset %#x: %w", sb.MetaOff, err)
	}
	// Everything the superblock vouches for must be on the device before
	// the superblock says so: otherwise a power cut between the two could
	// leave a Complete image pointing at stale bytes.
	if err := w.doSync(); err != nil {
		return err
	}
	sb.Pages = w.nPages.Load()
	sb.ZeroPages = w.nZero.Load()
	sb.DataPages = w.nData.Load()
	sb.Runs = uint64(len(w.runs))
	sb.Chunks = uint64(len(w.chunks))
	sb.State = StateComplete
	if _, err := w.w.WriteAt(sb.Marshal(), 0); err != nil {
		return fmt.Errorf("image: writing superblock: %w", err)
	}
	if err := w.doSync(); err != nil {
		return err
	}
	w.nImage.Store(sb.ImageSize)
	return nil
}

// padPage pads b with zeros to a whole number of pages.
func padPage(b []byte) []byte {
	return append(b, make([]byte, int(alignUp(uint64(len(b))))-len(b))...)
}
