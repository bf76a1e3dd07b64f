package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// memDev is a device in memory: WriteAt fails beyond size, like a block
// device, and unwritten bytes read as zeros.
type memDev struct {
	mu    sync.Mutex
	size  int64
	b     []byte
	syncs int
}

func newDev(size int64) *memDev { return &memDev{size: size} }

func (d *memDev) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("write of %d bytes at %#x beyond device of %#x", len(p), off, d.size)
	}
	if end := int(off) + len(p); end > len(d.b) {
		d.b = append(d.b, make([]byte, end-len(d.b))...)
	}
	copy(d.b[off:], p)
	return len(p), nil
}

func (d *memDev) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off >= d.size {
		return 0, io.EOF
	}
	n := len(p)
	if int64(n) > d.size-off {
		n = int(d.size - off)
	}
	clear(p[:n])
	if off < int64(len(d.b)) {
		copy(p[:n], d.b[off:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (d *memDev) Sync() error {
	d.mu.Lock()
	d.syncs++
	d.mu.Unlock()
	return nil
}

// snapshot returns a copy of what has been written.
func (d *memDev) snapshot() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	return bytes.Clone(d.b)
}

// Page contents, deterministic for a seed.
const (
	pgRandom = iota
	pgText
	pgZero
	pgSparse
	pgTailByte // zero but for the last byte: the zero test must look at all of it
	pgKinds
)

var words = []string{"khib ", "kexec ", "page ", "resume ", "the ", "of ", "memory ", "hibernate ", "\n", "0x1f000000 "}

func fillPage(p []byte, kind int, rng *rand.Rand) {
	clear(p)
	switch kind {
	case pgRandom:
		for i := 0; i < len(p); i += 8 {
			binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
		}
	case pgText:
		for i := 0; i < len(p); {
			i += copy(p[i:], words[rng.IntN(len(words))])
		}
	case pgSparse:
		for i := 0; i < len(p); i += 64 {
			binary.LittleEndian.PutUint64(p[i:], uint64(rng.IntN(1<<20))<<12|0x63)
		}
	case pgTailByte:
		p[len(p)-1] = 1
	}
}

// mixedPages returns n pages, a quarter each random, text-like, zero and
// sparse structs, in runs of random length, as the benchmark in
// design/measurements.md used.
func mixedPages(n int, seed uint64) []byte {
	rng := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n*PageSize)
	for i := 0; i < n; {
		kind := rng.IntN(4)
		for run := 1 + rng.IntN(8); run > 0 && i < n; run-- {
			fillPage(b[i*PageSize:(i+1)*PageSize], kind, rng)
			i++
		}
	}
	return b
}

// seg is one AddPages call.
type seg struct {
	pfn  uint64
	data []byte
}

// testSegs lays out pages the way a save meets them: a few RAM ranges with
// gaps between them, every kind of page, runs that cross segment bounds.
func testSegs(seed uint64, pages int) []seg {
	rng := rand.New(rand.NewPCG(seed, 2))
	var segs []seg
	pfn := uint64(0x10)
	for left := pages; left > 0; {
		n := min(left, 1+rng.IntN(max(pages/3, 1)))
		data := make([]byte, n*PageSize)
		for i := range n {
			fillPage(data[i*PageSize:(i+1)*PageSize], rng.IntN(pgKinds), rng)
		}
		segs = append(segs, seg{pfn, data})
		pfn += uint64(n)
		if rng.IntN(2) == 0 {
			pfn += uint64(1 + rng.IntN(100)) // pages not saved
		}
		left -= n
	}
	return segs
}

// ramOf returns RAM ranges that hold segs, as the metadata records them.
func ramOf(segs []seg) []Range {
	if len(segs) == 0 {
		return nil
	}
	last := segs[len(segs)-1]
	return []Range{{segs[0].pfn * PageSize, last.pfn*PageSize + uint64(len(last.data))}}
}

func testMeta(segs []seg) Meta {
	return Meta{
		KernelRelease: "6.12.117-khib",
		BuildID:       "0123456789abcdef",
		RAM:           ramOf(segs),
		Region:        Range{0x1f000000, 0x2f000000},
		JumpBack:      0x1f001000,
		Host:          map[string]string{"machine": "test"},
	}
}

// write writes segs into an image and returns its bytes.
func write(t testing.TB, opts WriterOptions, segs []seg) ([]byte, *Writer) {
	t.Helper()
	dev := newDev(1 << 30)
	if opts.Sync == nil {
		opts.Sync = dev.Sync
	}
	w, err := NewWriter(dev, dev.size, opts)
	if err != nil {
		t.Fatalf("NewWriter: %v", err)
	}
	for _, s := range segs {
		if err := w.AddPages(s.pfn, s.data); err != nil {
			t.Fatalf("AddPages(%#x): %v", s.pfn, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	img := dev.snapshot()
	if uint64(len(img)) != w.Stats().ImageBytes {
		t.Fatalf("image of %d bytes, Stats says %d", len(img), w.Stats().ImageBytes)
	}
	return img, w
}

// pageMap indexes the pages of segs by pfn.
func pageMap(segs []seg) map[uint64][]byte {
	m := map[uint64][]byte{}
	for _, s := range segs {
		for i := 0; i < len(s.data)/PageSize; i++ {
			m[s.pfn+uint64(i)] = s.data[i*PageSize : (i+1)*PageSize]
		}
	}
	return m
}

func openBytes(b []byte) (*Reader, error) {
	return Open(bytes.NewReader(b), int64(len(b)))
}

// randFor is a generator for fillPage.
func randFor(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 3)) }

// rehash recomputes every hash of an image from its (possibly mutated)
// bytes, so that tests and the fuzzer get past the checksums to the checks
// behind them. It trusts nothing it reads. Of an encrypted image it
// recomputes what a forger without the key can: the region hashes and the
// superblock's checksum, not the chunk hashes inside the sealed index.
func rehash(img []byte) {
	if len(img) < SuperblockSize || !bytes.HasPrefix(img, Magic[:]) {
		return
	}
	le := binary.LittleEndian
	size := uint64(len(img))
	get := func(off int) uint64 { return le.Uint64(img[off:]) }
	region := func(off, n uint64) []byte {
		if off > size || n > size || alignUp(n) > size-off {
			return nil
		}
		return img[off : off+alignUp(n)]
	}
	ix := region(get(112), get(120))
	if len(ix) >= indexHeaderSize && le.Uint32(img[8:]) != VersionEncrypted {
		nr, nc := le.Uint64(ix[8:]), le.Uint64(ix[16:])
		if nr <= uint64(len(ix))/runEntrySize {
			p := indexHeaderSize + nr*runEntrySize
			for k := uint64(0); k < nc && p+chunkEntrySize <= uint64(len(ix)); k++ {
				e := ix[p : p+chunkEntrySize]
				p += chunkEntrySize
				off, stored := le.Uint64(e), uint64(le.Uint32(e[8:]))
				if off > size || chunkHeaderSize+stored > size-off {
					continue
				}
				payload := img[off+chunkHeaderSize : off+chunkHeaderSize+stored]
				le.PutUint64(e[24:], xxhash.Sum64(payload))
				if pages := int(le.Uint16(e[12:])); pages <= MaxChunkPages {
					raw, err := decode(Codec(e[14]), payload, make([]byte, 0, pages*PageSize), testZstd)
					if err == nil {
						le.PutUint64(e[16:], xxhash.Sum64(raw))
					}
				}
				copy(img[off+8:off+chunkHeaderSize], e[8:])
			}
		}
	}
	if d := region(get(88), get(96)); d != nil {
		le.PutUint64(img[104:], xxhash.Sum64(d))
	}
	if ix != nil {
		le.PutUint64(img[128:], xxhash.Sum64(ix))
	}
	if m := region(get(136), get(144)); m != nil {
		le.PutUint64(img[152:], xxhash.Sum64(m))
	}
	le.PutUint64(img[sbChecksumOff:], xxhash.Sum64(img[:sbChecksumOff]))
}

var testZstd = sync.OnceValues(newZstdDecoder)

// pageSum sums pages with their frame numbers, in any order.
type pageSum struct{ pages, sum uint64 }

func (s *pageSum) add(pfn uint64, p []byte) {
	for i := 0; i < len(p); i += PageSize {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], pfn+uint64(i/PageSize))
		d := xxhash.New()
		d.Write(b[:])
		d.Write(p[i : i+PageSize])
		s.pages++
		s.sum += d.Sum64()
	}
}

// checkImage runs every read path over an image and checks what must hold
// whatever the bytes: no panic, errors classified, Verify's verdict agreeing
// with Restore's, pages in order.
func checkImage(t *testing.T, data []byte) { checkImageKey(t, data, nil) }

// checkImageKey is checkImage with a key for encrypted images.
func checkImageKey(t *testing.T, data, key []byte) {
	rd, err := OpenWith(bytes.NewReader(data), int64(len(data)), OpenOptions{Key: key})
	if err != nil {
		for _, e := range []error{ErrCorrupt, ErrNotImage, ErrVersion, ErrIncomplete, ErrInvalidated, ErrEncrypted, ErrWrongKey} {
			if errors.Is(err, e) {
				return
			}
		}
		t.Fatalf("Open: unclassified error %v", err)
	}
	defer rd.Close()
	rd.Workers = 2
	sb := rd.Superblock()
	verr := rd.Verify(nil)
	if verr != nil && !errors.Is(verr, ErrCorrupt) {
		t.Fatalf("Verify: unclassified error %v", verr)
	}
	if sb.Pages > 1<<22 {
		// Zero runs cost the image 16 bytes however long they are, and
		// Restore hands out every page they hold: legitimate, but too
		// slow for a fuzzer to walk through.
		return
	}
	var pages uint64
	var next uint64
	firsts := map[uint64][]byte{}
	var sum pageSum
	rerr := rd.Restore(func(pfn uint64, p []byte, zero bool) error {
		sum.add(pfn, p)
		if len(p) == 0 || len(p)%PageSize != 0 {
			t.Fatalf("Restore handed %d bytes", len(p))
		}
		if pfn < next {
			t.Fatalf("Restore went back from pfn %#x to %#x", next, pfn)
		}
		if zero && !isZero(p) {
			t.Fatalf("Restore: zero pages at %#x are not zero", pfn)
		}
		if len(firsts) < 16 {
			firsts[pfn] = bytes.Clone(p[:PageSize])
		}
		n := uint64(len(p) / PageSize)
		next, pages = pfn+n, pages+n
		return nil
	})
	if verr == nil && rerr != nil {
		t.Fatalf("Verify passed, Restore failed: %v", rerr)
	}
	if rerr == nil && pages != sb.Pages {
		t.Fatalf("Restore handed %d pages, the superblock says %d", pages, sb.Pages)
	}
	// RestoreConcurrent: the same verdict and, when it succeeds, the same
	// pages at the same frames, in whatever order.
	var csum pageSum
	var mu sync.Mutex
	cerr := rd.RestoreConcurrent(func(pfn uint64, p []byte, zero bool) error {
		if len(p) == 0 || len(p)%PageSize != 0 {
			t.Errorf("RestoreConcurrent handed %d bytes", len(p))
		}
		mu.Lock()
		defer mu.Unlock()
		csum.add(pfn, p)
		return nil
	})
	if (rerr == nil) != (cerr == nil) {
		t.Fatalf("Restore: %v, RestoreConcurrent: %v", rerr, cerr)
	}
	if rerr == nil && csum != sum {
		t.Fatalf("RestoreConcurrent handed other pages than Restore (%+v, %+v)", csum, sum)
	}
	// And with chunks decoded in place: the same again.
	dsum, _, derr := restoreDirect(t, rd, func(pfn uint64) bool { return pfn%3 != 0 })
	if (rerr == nil) != (derr == nil) {
		t.Fatalf("Restore: %v, RestoreConcurrent with Direct: %v", rerr, derr)
	}
	if rerr == nil && dsum != sum {
		t.Fatalf("RestoreConcurrent with Direct gave other pages than Restore (%+v, %+v)", dsum, sum)
	}
	for pfn, want := range firsts {
		got, err := rd.ReadPage(pfn)
		if err != nil {
			if verr == nil {
				t.Fatalf("ReadPage(%#x) of a verified image: %v", pfn, err)
			}
			continue
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("ReadPage(%#x) differs from what Restore handed", pfn)
		}
	}
	_ = rd.Stats()
}

// directFill is what memory offered to Reader.Direct holds before a chunk
// is decoded into it.
const directFill = 0xa5

// restoreDirect runs RestoreConcurrent with a Direct that offers fresh
// memory, filled with directFill, for the chunks at the page frames offer
// accepts (offer is called under a lock). It returns the sum of every
// page, decoded in place or handed to fn, and the memory offered, by page
// frame, as it was when Direct's done came.
func restoreDirect(t testing.TB, rd *Reader, offer func(pfn uint64) bool) (sum pageSum, offered map[uint64][]byte, err error) {
	var mu sync.Mutex
	offered = map[uint64][]byte{}
	rd.Direct = func(pfn uint64, n int) ([]byte, func()) {
		mu.Lock()
		ok := offer(pfn) // Direct runs on several goroutines at once
		mu.Unlock()
		if !ok {
			return nil, nil
		}
		mem := bytes.Repeat([]byte{directFill}, n)
		return mem, func() {
			mu.Lock()
			defer mu.Unlock()
			if _, dup := offered[pfn]; dup {
				t.Errorf("Direct: memory at pfn %#x offered twice", pfn)
			}
			offered[pfn] = mem
			sum.add(pfn, mem)
		}
	}
	defer func() { rd.Direct = nil }()
	err = rd.RestoreConcurrent(func(pfn uint64, p []byte, zero bool) error {
		mu.Lock()
		defer mu.Unlock()
		sum.add(pfn, p)
		return nil
	})
	return sum, offered, err
}
