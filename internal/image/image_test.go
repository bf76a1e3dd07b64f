package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cespare/xxhash/v2"
)

func TestRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name       string
		codec      string
		chunkPages int
		workers    int
		pages      int
	}{
		{"s2 default", "", 0, 0, 300},
		{"s2 one page per chunk", "s2", 1, 2, 50},
		{"s2 odd chunks", "s2", 7, 3, 200},
		{"s2 one worker", "s2", 64, 1, 200},
		{"s2 big chunks", "s2", MaxChunkPages, 4, 1500},
		{"zstd", "zstd", 64, 2, 300},
		{"zstd small chunks", "zstd", 3, 4, 100},
		{"none", "none", 16, 2, 100},
		{"empty", "s2", 64, 2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			segs := testSegs(uint64(len(tc.name)), tc.pages)
			opts := WriterOptions{Codec: tc.codec, ChunkPages: tc.chunkPages, Workers: tc.workers, Meta: testMeta(segs)}
			img, w := write(t, opts, segs)
			want := pageMap(segs)

			rd, err := openBytes(img)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer rd.Close()
			if ws, rs := w.Stats(), rd.Stats(); ws != rs {
				t.Errorf("writer stats %+v, reader stats %+v", ws, rs)
			}
			st := rd.Stats()
			if st.Pages != uint64(len(want)) || st.ZeroPages+st.DataPages != st.Pages {
				t.Errorf("stats %+v for %d pages", st, len(want))
			}
			if tc.codec == "none" && st.RawChunks != st.Chunks {
				t.Errorf("codec none: %d of %d chunks raw", st.RawChunks, st.Chunks)
			}
			m := rd.Meta()
			if m.UUID != rd.Superblock().UUID || m.KernelRelease != "6.12.117-khib" || m.PageSize != PageSize || m.Hash != HashName {
				t.Errorf("metadata %+v", m)
			}
			if c, _ := ParseCodec(tc.codec); m.Codec != c.String() {
				t.Errorf("metadata codec %q, want %v", m.Codec, c)
			}

			var calls int
			if err := rd.Verify(func(done, total int) {
				calls++
				if done != calls || total != len(rd.Chunks()) {
					t.Fatalf("progress(%d, %d) on call %d of %d chunks", done, total, calls, len(rd.Chunks()))
				}
			}); err != nil {
				t.Fatalf("Verify: %v", err)
			}

			got := map[uint64][]byte{}
			var next uint64
			err = rd.Restore(func(pfn uint64, p []byte, zero bool) error {
				if pfn < next {
					t.Fatalf("pfn %#x after %#x", pfn, next)
				}
				for i := 0; i < len(p)/PageSize; i++ {
					pg := p[i*PageSize : (i+1)*PageSize]
					if zero != isZero(pg) {
						t.Fatalf("pfn %#x: zero=%v for a page that is not", pfn+uint64(i), zero)
					}
					got[pfn+uint64(i)] = bytes.Clone(pg)
				}
				next = pfn + uint64(len(p)/PageSize)
				return nil
			})
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if len(got) != len(want) {
				t.Fatalf("Restore gave %d pages, want %d", len(got), len(want))
			}
			for pfn, p := range want {
				if !bytes.Equal(got[pfn], p) {
					t.Fatalf("Restore: pfn %#x differs", pfn)
				}
			}

			// The same pages from RestoreConcurrent, each frame once.
			var mu sync.Mutex
			cgot := map[uint64][]byte{}
			err = rd.RestoreConcurrent(func(pfn uint64, p []byte, zero bool) error {
				mu.Lock()
				defer mu.Unlock()
				for i := 0; i < len(p)/PageSize; i++ {
					if _, dup := cgot[pfn+uint64(i)]; dup {
						t.Errorf("RestoreConcurrent: pfn %#x twice", pfn+uint64(i))
					}
					cgot[pfn+uint64(i)] = bytes.Clone(p[i*PageSize : (i+1)*PageSize])
				}
				return nil
			})
			if err != nil {
				t.Fatalf("RestoreConcurrent: %v", err)
			}
			if len(cgot) != len(want) {
				t.Fatalf("RestoreConcurrent gave %d pages, want %d", len(cgot), len(want))
			}
			for pfn, p := range want {
				if !bytes.Equal(cgot[pfn], p) {
					t.Fatalf("RestoreConcurrent: pfn %#x differs", pfn)
				}
			}

			// And with every other chunk of consecutive pages decoded
			// in place: the same pages at the same frames.
			var wantSum pageSum
			for pfn, p := range want {
				wantSum.add(pfn, p)
			}
			var asked int
			dsum, offered, err := restoreDirect(t, rd, func(uint64) bool { asked++; return asked%2 == 1 })
			if err != nil {
				t.Fatalf("RestoreConcurrent with Direct: %v", err)
			}
			if dsum != wantSum {
				t.Fatalf("RestoreConcurrent with Direct gave other pages (%+v, want %+v)", dsum, wantSum)
			}
			if asked > 1 && len(offered) == 0 {
				t.Fatalf("Direct was asked %d times and no chunk was decoded in place", asked)
			}

			pfns := slices.Sorted(func(yield func(uint64) bool) {
				for k := range want {
					if !yield(k) {
						return
					}
				}
			})
			rng := rand.New(rand.NewPCG(7, 7))
			for range min(len(pfns), 200) {
				pfn := pfns[rng.IntN(len(pfns))]
				p, err := rd.ReadPage(pfn)
				if err != nil {
					t.Fatalf("ReadPage(%#x): %v", pfn, err)
				}
				if !bytes.Equal(p, want[pfn]) {
					t.Fatalf("ReadPage(%#x) differs", pfn)
				}
			}
			for _, pfn := range []uint64{0, 0xf, 1 << 40} {
				if _, err := rd.ReadPage(pfn); !errors.Is(err, ErrNoPage) {
					t.Errorf("ReadPage(%#x) = %v, want ErrNoPage", pfn, err)
				}
			}
		})
	}
}

// Random pages do not compress: the writer must store them raw rather than
// let them grow.
func TestIncompressibleStoredRaw(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	data := make([]byte, 40*PageSize)
	for i := 0; i < 40; i++ {
		fillPage(data[i*PageSize:(i+1)*PageSize], pgRandom, rng)
	}
	for _, codec := range []string{"s2", "zstd"} {
		img, w := write(t, WriterOptions{Codec: codec, ChunkPages: 8}, []seg{{0x100, data}})
		st := w.Stats()
		if st.RawChunks != st.Chunks || st.Chunks != 5 {
			t.Errorf("%s: %d of %d chunks raw, want 5 of 5", codec, st.RawChunks, st.Chunks)
		}
		if st.StoredBytes != st.RawBytes+5*chunkHeaderSize {
			t.Errorf("%s: stored %d bytes for %d raw", codec, st.StoredBytes, st.RawBytes)
		}
		rd, err := openBytes(img)
		if err != nil {
			t.Fatal(err)
		}
		if err := rd.Verify(nil); err != nil {
			t.Fatal(err)
		}
		p, _ := rd.ReadPage(0x100 + 39)
		if !bytes.Equal(p, data[39*PageSize:]) {
			t.Errorf("%s: last page differs", codec)
		}
	}
}

func TestIsZero(t *testing.T) {
	p := make([]byte, PageSize)
	if !isZero(p) {
		t.Fatal("zero page not zero")
	}
	for _, i := range []int{0, 7, 8, 63, 64, 2047, 4088, 4095} {
		p[i] = 0x80
		if isZero(p) {
			t.Errorf("page with byte %d set reads as zero", i)
		}
		p[i] = 0
	}
	if !isZero(p[:100]) || isZero(append(make([]byte, 99), 1)) {
		t.Error("isZero of a short slice")
	}
}

// Zero runs are handed out in pieces, and runs longer than a run entry can
// count are split.
func TestLongZeroRun(t *testing.T) {
	const n = 3000
	data := make([]byte, n*PageSize)
	data[1500*PageSize] = 1
	img, _ := write(t, WriterOptions{}, []seg{{0, data}})
	rd, err := openBytes(img)
	if err != nil {
		t.Fatal(err)
	}
	if rs := rd.Runs(); len(rs) != 3 || rs[0] != (Run{0, 1500, KindZero}) || rs[1] != (Run{1500, 1, KindData}) {
		t.Fatalf("runs %v", rs)
	}
	var pages int
	err = rd.Restore(func(pfn uint64, p []byte, zero bool) error {
		pages += len(p) / PageSize
		return nil
	})
	if err != nil || pages != n {
		t.Fatalf("Restore: %d pages, %v", pages, err)
	}

	// A run of more than 2^32-1 pages is split in the writer's bookkeeping.
	w := &Writer{runs: []Run{{Start: 5, Count: maxRunPages, Kind: KindZero}}}
	w.record(5+maxRunPages, KindZero)
	if len(w.runs) != 2 || w.runs[1] != (Run{5 + maxRunPages, 1, KindZero}) {
		t.Errorf("runs %v", w.runs)
	}
}

func TestWriterRefuses(t *testing.T) {
	page := func(b byte) []byte { p := make([]byte, PageSize); p[0] = b; return p }
	meta := Meta{RAM: []Range{{0, 0x100000}, {0x200000, 0x300000}}, Region: Range{0x1000000, 0x2000000}}
	for _, tc := range []struct {
		name string
		opts WriterOptions
		segs []seg
		want string
	}{
		{"bad codec", WriterOptions{Codec: "lz4"}, nil, "unknown codec"},
		{"chunk too big", WriterOptions{ChunkPages: MaxChunkPages + 1}, nil, "pages per chunk"},
		{"page size", WriterOptions{Meta: Meta{PageSize: 65536}}, nil, "page size"},
		{"inverted RAM", WriterOptions{Meta: Meta{RAM: []Range{{5, 5}}}}, nil, "RAM range 0"},
		{"out of order", WriterOptions{}, []seg{{10, page(1)}, {9, page(1)}}, "out of order"},
		{"overlap", WriterOptions{}, []seg{{10, append(page(1), page(2)...)}, {11, page(1)}}, "out of order"},
		{"partial page", WriterOptions{}, []seg{{10, make([]byte, 100)}}, "not whole pages"},
		{"beyond memory", WriterOptions{}, []seg{{MaxPFN, page(1)}}, "beyond physical memory"},
		{"outside RAM", WriterOptions{Meta: meta}, []seg{{0x100, page(1)}}, "not all in the saved RAM"},
		{"across a RAM gap", WriterOptions{Meta: meta}, []seg{{0xff, make([]byte, 2*PageSize)}}, "not all in the saved RAM"},
		{"in R", WriterOptions{Meta: Meta{Region: meta.Region}}, []seg{{0x1fff, page(1)}}, "overlap the helper region"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newDev(1 << 24)
			w, err := NewWriter(dev, dev.size, tc.opts)
			if err == nil {
				for _, s := range tc.segs {
					if err = w.AddPages(s.pfn, s.data); err != nil {
						break
					}
				}
				if cerr := w.Close(); err == nil {
					err = cerr
				} else if cerr == nil {
					t.Fatalf("Close succeeded after %v", err)
				}
				if sb, _ := ReadSuperblock(dev); err != nil && sb.State != StateWriting {
					t.Errorf("state %v after a failed save", sb.State)
				}
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// A save that never reached Close, or died before the complete mark, reads
// as incomplete.
func TestIncomplete(t *testing.T) {
	segs := testSegs(3, 600)
	dev := newDev(1 << 28)
	var atSync [][]byte
	w, err := NewWriter(dev, dev.size, WriterOptions{
		ChunkPages: 4,
		Codec:      "none", // so that a lot of data goes out before Close
		Sync: func() error {
			atSync = append(atSync, dev.snapshot())
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range segs {
		if err := w.AddPages(s.pfn, s.data); err != nil {
			t.Fatal(err)
		}
	}
	// Some data may have reached the device by now, or not yet: either way
	// the superblock says Writing.
	beforeClose := dev.snapshot()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if len(atSync) != 3 {
		t.Fatalf("%d syncs, want 3 (after the Writing superblock, before and after the complete mark)", len(atSync))
	}
	for name, img := range map[string][]byte{
		"before Close":                beforeClose,
		"at the first sync":           atSync[0],
		"index written, not complete": atSync[1],
	} {
		_, err := openBytes(img)
		if !errors.Is(err, ErrIncomplete) || !strings.Contains(err.Error(), "incomplete image") {
			t.Errorf("%s: Open = %v, want ErrIncomplete", name, err)
		}
	}
	if _, err := openBytes(atSync[2]); err != nil {
		t.Errorf("after the complete mark: %v", err)
	}
}

func TestTooSmall(t *testing.T) {
	segs := testSegs(11, 2000)
	full, _ := write(t, WriterOptions{Meta: testMeta(segs)}, segs)
	for _, tc := range []struct {
		name     string
		capacity int64
		meta     Meta
		want     string
	}{
		{"no room for the superblock", 3000, testMeta(segs), "needs 0.1 MiB"},
		{"estimated from RAM", int64(len(full)) / 4, testMeta(segs), "needs about"},
		{"RAM unknown", int64(len(full)) / 4, Meta{}, "needs more than"},
		{"short by a page", int64(len(full)) - PageSize, testMeta(segs), "this image needs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newDev(tc.capacity)
			w, err := NewWriter(dev, dev.size, WriterOptions{Meta: tc.meta, Sync: dev.Sync})
			if err == nil {
				for _, s := range segs {
					if err = w.AddPages(s.pfn, s.data); err != nil {
						break
					}
				}
				if cerr := w.Close(); err == nil {
					err = cerr
				}
				sb, serr := ReadSuperblock(dev)
				if serr != nil || sb.State != StateWriting {
					t.Errorf("superblock %v, %v after running out of space; want state writing", sb, serr)
				}
				if _, oerr := Open(dev, dev.size); !errors.Is(oerr, ErrIncomplete) {
					t.Errorf("Open = %v, want ErrIncomplete", oerr)
				}
			}
			var ts *TooSmallError
			if !errors.Is(err, ErrTooSmall) || !errors.As(err, &ts) {
				t.Fatalf("error %v, want ErrTooSmall", err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "device holds") {
				t.Errorf("error %q, want it to say %q", err, tc.want)
			}
			if ts.Need <= ts.Capacity {
				t.Errorf("needs %d, capacity %d", ts.Need, ts.Capacity)
			}
			if ts.Estimated && (ts.Need < int64(len(full))/2 || ts.Need > 2*int64(len(full))) {
				t.Errorf("estimated %d bytes, the image takes %d", ts.Need, len(full))
			}
			t.Log(err)
		})
	}
}

func TestReservationAndStates(t *testing.T) {
	nonce, err := NewNonce()
	if err != nil {
		t.Fatal(err)
	}
	dev := newDev(1 << 26)
	if err := WriteReservation(dev, [16]byte{9}, dev.size); err != nil {
		t.Fatal(err)
	}
	if err := WriteReservation(dev, nonce, dev.size); err != nil {
		t.Fatal(err)
	}
	sb, err := FindReservation(dev, nonce)
	if err != nil || sb.State != StateWriting || sb.Capacity != uint64(dev.size) {
		t.Fatalf("FindReservation = %+v, %v", sb, err)
	}
	if _, err := FindReservation(dev, Nonce{1}); !errors.Is(err, ErrNoReservation) {
		t.Errorf("FindReservation of another nonce = %v", err)
	}
	if _, err := FindReservation(newDev(1<<20), nonce); !errors.Is(err, ErrNotImage) {
		t.Errorf("FindReservation of a blank device = %v", err)
	}
	if _, err := Open(dev, dev.size); !errors.Is(err, ErrIncomplete) {
		t.Errorf("Open of a reservation = %v", err)
	}
	if err := WriteReservation(dev, nonce, 4096); !errors.Is(err, ErrTooSmall) {
		t.Errorf("reservation on a tiny device = %v", err)
	}

	// B saves onto the device it found.
	segs := testSegs(5, 100)
	w, err := NewWriter(dev, dev.size, WriterOptions{Nonce: nonce, Meta: testMeta(segs)})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range segs {
		if err := w.AddPages(s.pfn, s.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := w.AddPages(0, make([]byte, PageSize)); err == nil {
		t.Error("AddPages after Close succeeded")
	}
	sb, err = FindReservation(dev, nonce)
	if err != nil || sb.State != StateComplete || sb.UUID != w.UUID() {
		t.Fatalf("after the save: %+v, %v", sb, err)
	}
	if _, err := Open(dev, dev.size); err != nil {
		t.Fatal(err)
	}

	for _, s := range []State{StateComplete, StateWriting, State(0)} {
		if err := SetState(dev, s); err == nil {
			t.Errorf("SetState(%v) succeeded", s)
		}
	}
	// A reserved byte, as a later minor revision might use: SetState
	// must keep it.
	dev.b[300] = 0xa5
	binary.LittleEndian.PutUint64(dev.b[sbChecksumOff:], xxhash.Sum64(dev.b[:sbChecksumOff]))
	if err := SetState(dev, StateInvalidated); err != nil {
		t.Fatal(err)
	}
	if dev.b[300] != 0xa5 {
		t.Error("SetState cleared a reserved byte")
	}
	if _, err := Open(dev, dev.size); !errors.Is(err, ErrInvalidated) {
		t.Errorf("Open after invalidation = %v", err)
	}
	if rd, err := OpenInvalidated(dev, dev.size); err != nil {
		t.Errorf("OpenInvalidated: %v", err)
	} else if err := rd.Verify(nil); err != nil {
		t.Errorf("Verify of an invalidated image: %v", err)
	}
	if err := SetState(dev, StateFailed); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dev, dev.size); !errors.Is(err, ErrIncomplete) {
		t.Errorf("Open of a failed save = %v", err)
	}
	if _, err := OpenInvalidated(dev, dev.size); !errors.Is(err, ErrIncomplete) {
		t.Errorf("OpenInvalidated of a failed save = %v", err)
	}
	if sb, err := ReadSuperblock(dev); err != nil || sb.UUID != w.UUID() || sb.State != StateFailed {
		t.Errorf("superblock %+v, %v", sb, err)
	}
}

func TestNotImage(t *testing.T) {
	for _, b := range [][]byte{nil, []byte("KHIB"), make([]byte, 8192), []byte("\x7fELF" + strings.Repeat("x", 5000))} {
		if _, err := openBytes(b); !errors.Is(err, ErrNotImage) {
			t.Errorf("Open(%.8q) = %v, want ErrNotImage", b, err)
		}
	}
}

func TestVersion(t *testing.T) {
	segs := testSegs(1, 10)
	good, _ := write(t, WriterOptions{}, segs)
	if v := binary.LittleEndian.Uint32(good[8:]); v != Version {
		t.Fatalf("an unencrypted image is version %d, want %d", v, Version)
	}
	for _, tc := range []struct {
		version uint32
		rehash  bool
		want    error
	}{
		{3, false, ErrVersion},
		{3, true, ErrVersion},
		{0, true, ErrVersion},
		// Version 2 is known: a bit flipped to it reads as corruption,
		// and a version-2 superblock without a cipher is malformed.
		{VersionEncrypted, false, ErrCorrupt},
		{VersionEncrypted, true, ErrCorrupt},
	} {
		img := bytes.Clone(good)
		binary.LittleEndian.PutUint32(img[8:], tc.version)
		if tc.rehash {
			rehash(img)
		}
		if _, err := openBytes(img); !errors.Is(err, tc.want) {
			t.Errorf("version %d (rehashed %v): %v, want %v", tc.version, tc.rehash, err, tc.want)
		}
	}
}

func TestCheckKernel(t *testing.T) {
	m := Meta{KernelRelease: "6.12.117", BuildID: "abcd"}
	for _, tc := range []struct {
		release, build string
		ok             bool
	}{
		{"6.12.117", "abcd", true},
		{"6.12.117", "", true},
		{"6.12.117", "ef01", false},
		{"6.1.0", "", false},
		{"6.1.0", "abcd", true}, // the build ID decides
	} {
		err := m.CheckKernel(tc.release, tc.build)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrForeignKernel)) {
			t.Errorf("CheckKernel(%q, %q) = %v", tc.release, tc.build, err)
		}
	}
}

func TestErrorText(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&FormatError{Off: 0x3a2f000, Chunk: 1832, Msg: "checksum mismatch"}, "image: chunk 1832 at offset 0x3a2f000: checksum mismatch"},
		{&FormatError{Off: 0x1000, Chunk: -1, Msg: "index checksum mismatch"}, "image: offset 0x1000: index checksum mismatch"},
		{&FormatError{Off: -1, Chunk: -1, Msg: "bad"}, "image: bad"},
		{&TooSmallError{Capacity: 64 << 20, Need: 310<<20 - 5, Estimated: true}, "image: device too small: device holds 64 MiB; this image needs about 310 MiB"},
		{&TooSmallError{Capacity: 1 << 19, Need: 1<<20 + 1}, "image: device too small: device holds 0.5 MiB; this image needs 1.1 MiB"},
	} {
		if got := tc.err.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	if !errors.Is(&FormatError{}, ErrCorrupt) || !errors.Is(&TooSmallError{}, ErrTooSmall) {
		t.Error("errors do not wrap their sentinels")
	}
}

func TestUUIDText(t *testing.T) {
	u, err := NewUUID()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := u.MarshalText()
	var v UUID
	if err := v.UnmarshalText(b); err != nil || v != u {
		t.Fatalf("%s round-trips to %s, %v", b, v, err)
	}
	for _, s := range []string{"", "not-a-uuid", strings.Repeat("z", 36), "0123456789abcdef0123456789abcdef0123"} {
		if err := v.UnmarshalText([]byte(s)); err == nil {
			t.Errorf("UnmarshalText(%q) succeeded", s)
		}
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{StateComplete.String(), "complete"},
		{State(9).String(), "State(9)"},
		{CodecZstd.String(), "zstd"},
		{Codec(7).String(), "Codec(7)"},
		{KindZero.String(), "zero"},
		{Kind(0).String(), "Kind(0)"},
		{Range{0x1000, 0x2000}.String(), "0x1000-0x1fff"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

// TestBufferBytes: what BufferBytes says a writer allocates is what
// NewWriter allocates, give or take the small things (the metadata, the
// channels), so that a helper can rely on it to fit a reserved region.
func TestBufferBytes(t *testing.T) {
	tests := []struct {
		chunkPages, workers int
	}{
		{0, 1}, {64, 2}, {256, 2}, {256, 4}, {MaxChunkPages, 1}, {8, 64},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d pages, %d workers", tt.chunkPages, tt.workers), func(t *testing.T) {
			opts := WriterOptions{Codec: "s2", ChunkPages: tt.chunkPages, Workers: tt.workers, Meta: testMeta(nil)}
			dev := newDev(1 << 30)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			w, err := NewWriter(dev, dev.size, opts)
			if err != nil {
				t.Fatal(err)
			}
			runtime.ReadMemStats(&after)
			defer w.Close()
			got := int64(after.TotalAlloc - before.TotalAlloc)
			want := opts.BufferBytes()
			t.Logf("allocated %d, BufferBytes %d", got, want)
			if got < want || got > want+256<<10 {
				t.Errorf("NewWriter allocated %d bytes, BufferBytes says %d", got, want)
			}
		})
	}
}
