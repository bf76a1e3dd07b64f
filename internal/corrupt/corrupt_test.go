package corrupt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/khib/khib/internal/image"
)

// memFile is a file in memory: what WriteTo writes into, and what the
// image writer writes to.
type memFile struct {
	mu sync.Mutex
	b  []byte
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if end := int(off) + len(p); end > len(f.b) {
		f.b = append(f.b, make([]byte, end-len(f.b))...)
	}
	return copy(f.b[off:], p), nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if off >= int64(len(f.b)) {
		return 0, io.EOF
	}
	n := copy(p, f.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) Truncate(n int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n < int64(len(f.b)) {
		f.b = f.b[:n]
	} else {
		f.b = append(f.b, make([]byte, int(n)-len(f.b))...)
	}
	return nil
}

// testImage writes a small image of every sort of page: random, text,
// zero, sparse; in a few RAM ranges with gaps. The device is a page
// longer than the image, as a partition would be.
func testImage(t testing.TB, seed uint64, codec string, pages int) []byte {
	return testImageKey(t, seed, codec, pages, nil)
}

// testKey is the master key of the encrypted test images.
var testKey = bytes.Repeat([]byte{0x6b}, image.KeySize)

// testImageKey is testImage, encrypted under key when key is set.
func testImageKey(t testing.TB, seed uint64, codec string, pages int, key []byte) []byte {
	t.Helper()
	var enc *image.Encryption
	if key != nil {
		slot, err := image.NewPassphraseSlot(key, []byte("test"), image.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1})
		if err != nil {
			t.Fatal(err)
		}
		enc = &image.Encryption{Key: key, Slots: []image.KeySlot{slot}}
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	f := &memFile{}
	meta := image.Meta{
		KernelRelease: "6.12.0-test", BuildID: "00112233",
		RAM:    []image.Range{{Start: 0, End: 0x10000000}},
		Region: image.Range{Start: 0x10000000, End: 0x20000000}, JumpBack: 0x10001000,
		Host: map[string]string{"firmware_ram": "test"},
	}
	w, err := image.NewWriter(f, 1<<30, image.WriterOptions{Codec: codec, ChunkPages: 4, Workers: 2, Meta: meta, Encryption: enc})
	if err != nil {
		t.Fatal(err)
	}
	words := []string{"khib ", "resume ", "page ", "0x1f000000 ", "\n"}
	pfn := uint64(0x100)
	for left := pages; left > 0; {
		n := min(left, 1+rng.IntN(24))
		data := make([]byte, n*image.PageSize)
		for i := range n {
			p := data[i*image.PageSize : (i+1)*image.PageSize]
			switch rng.IntN(4) {
			case 0:
				for k := 0; k < len(p); k += 8 {
					binary.LittleEndian.PutUint64(p[k:], rng.Uint64())
				}
			case 1:
				for k := 0; k < len(p); {
					k += copy(p[k:], words[rng.IntN(len(words))])
				}
			case 2: // zero
			case 3:
				for k := 0; k < len(p); k += 64 {
					binary.LittleEndian.PutUint64(p[k:], rng.Uint64()&0xfffff000|0x63)
				}
			}
		}
		if err := w.AddPages(pfn, data); err != nil {
			t.Fatal(err)
		}
		pfn += uint64(n + rng.IntN(3)*7)
		left -= n
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return append(f.b, make([]byte, image.PageSize)...)
}

func imgOf(b []byte) Image { return Image{R: bytes.NewReader(b), Size: int64(len(b))} }

func TestOverlay(t *testing.T) {
	base := []byte("0123456789abcdef")
	src := bytes.NewReader([]byte("ABCDEFGHIJKLMNOP"))
	for _, tc := range []struct {
		name    string
		size    int64
		patches []patch
		off     int64
		n       int
		want    string
		err     error
	}{
		{"plain", 16, nil, 0, 16, "0123456789abcdef", nil},
		{"bytes", 16, []patch{{off: 2, n: 3, data: []byte("xyz")}}, 0, 8, "01xyz567", nil},
		{"read inside a patch", 16, []patch{{off: 2, n: 3, data: []byte("xyz")}}, 3, 1, "y", nil},
		{"from another reader", 16, []patch{{off: 4, n: 4, src: src, srcOff: 10}}, 2, 8, "23KLMN89", nil},
		{"zeros", 16, []patch{{off: 1, n: 2}}, 0, 4, "0\x00\x003", nil},
		{"later patch wins", 16, []patch{{off: 0, n: 4}, {off: 2, n: 1, data: []byte("!")}}, 0, 5, "\x00\x00!\x004", nil},
		{"patch past the read", 16, []patch{{off: 14, n: 10}}, 10, 6, "abcd\x00\x00", nil},
		{"cut short", 10, nil, 6, 8, "6789", io.EOF},
		{"at the end", 10, nil, 10, 1, "", io.EOF},
		{"beyond the end", 10, nil, 11, 1, "", io.EOF},
		{"base shorter than the size", 20, nil, 14, 4, "ef", io.EOF},
		{"negative offset", 16, nil, -1, 1, "", errors.New("negative")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &overlay{base: bytes.NewReader(base), size: tc.size, patches: tc.patches}
			p := make([]byte, tc.n)
			n, err := o.ReadAt(p, tc.off)
			if string(p[:n]) != tc.want {
				t.Errorf("read %q, want %q", p[:n], tc.want)
			}
			switch {
			case tc.err == nil && err != nil, tc.err != nil && err == nil:
				t.Errorf("error %v, want %v", err, tc.err)
			case tc.err == io.EOF || tc.err == io.ErrUnexpectedEOF:
				if !errors.Is(err, tc.err) {
					t.Errorf("error %v, want %v", err, tc.err)
				}
			}
		})
	}
}

// The same seed makes the same mutations; another seed others.
func TestReproducible(t *testing.T) {
	img, other := testImage(t, 1, "s2", 60), testImage(t, 2, "s2", 50)
	gen := func(seed uint64) []string {
		g, err := New(imgOf(img), seed, imgOf(other))
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for range 200 {
			m, err := g.Next()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, fmt.Sprintf("#%d %v", m.Seq, m))
		}
		return out
	}
	a, b, c := gen(7), gen(7), gen(8)
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Error("seed 7 made two different sequences")
	}
	if strings.Join(a, "\n") == strings.Join(c, "\n") {
		t.Error("seeds 7 and 8 made the same sequence")
	}
	t.Logf("seed 7 starts with:\n%s", strings.Join(a[:8], "\n"))
}

// Every kind is made, changes the image, says what it did, and is
// refused; written into a copy of the image, it reads as its overlay.
func TestKinds(t *testing.T) {
	img, other := testImage(t, 3, "s2", 80), testImage(t, 4, "zstd", 40)
	g, err := New(imgOf(img), 99, imgOf(other))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Kinds() {
		t.Run(string(k), func(t *testing.T) {
			made := 0
			for range 20 {
				m, err := g.Make(k)
				if errors.Is(err, errNotHere) {
					continue // the other image is shorter than the offset drawn
				}
				if err != nil {
					t.Fatal(err)
				}
				ch, err := m.changes()
				if err != nil {
					t.Fatal(err)
				}
				if !ch {
					continue // Next would draw again
				}
				if s := m.String(); !strings.HasPrefix(s, string(k)+": ") || !strings.Contains(s, "0x") {
					t.Errorf("String() = %q: no kind or offset", s)
				}
				if err := Check(m); err == nil {
					t.Errorf("%v: accepted", m)
				}
				f := &memFile{b: bytes.Clone(img)}
				if err := m.WriteTo(f); err != nil {
					t.Fatal(err)
				}
				want := make([]byte, m.Size)
				if err := readFull(m.ReaderAt(), want, 0); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(f.b, want) {
					t.Errorf("%v: WriteTo wrote other bytes than the overlay reads", m)
				}
				made++
			}
			if made == 0 {
				t.Errorf("no %s mutation that changes the image in 20 draws", k)
			}
		})
	}
}

// An unchanged image gets through the very same check, so a run can fail:
// the control for every test here.
func TestControl(t *testing.T) {
	img := testImage(t, 5, "s2", 40)
	g, err := New(imgOf(img), 1)
	if err != nil {
		t.Fatal(err)
	}
	same := g.mutation("none", "nothing changed", patch{off: 100, n: 1, data: img[100:101]})
	if ch, err := same.changes(); err != nil || ch {
		t.Errorf("changes() of a patch that writes what is there = %v, %v", ch, err)
	}
	if err := Check(same); err != nil {
		t.Fatalf("the unchanged image is refused: %v", err)
	}
	if p := ProbeRestore(same); !p.Opened || p.Err != nil || p.Pages == 0 {
		t.Errorf("ProbeRestore of the unchanged image = %+v", p)
	}
	// Zeroing the metadata's padding changes nothing either.
	rd, err := image.Open(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	sb := rd.Superblock()
	pad := g.mutation(ZeroPages, "padding", patch{off: int64(sb.MetaOff + sb.MetaLen), n: int64(sb.ImageSize - sb.MetaOff - sb.MetaLen)})
	if ch, err := pad.changes(); err != nil || ch {
		t.Errorf("changes() of zeroing zeros = %v, %v", ch, err)
	}
}

// At least 1000 random mutations of synthetic images in every codec, all
// refused by the check stage 1 runs.
func TestRandomMutations(t *testing.T) {
	const perCodec = 400
	total := 0
	for i, codec := range []string{"s2", "zstd", "none"} {
		t.Run(codec, func(t *testing.T) {
			img, other := testImage(t, uint64(10+i), codec, 96), testImage(t, uint64(20+i), "s2", 64)
			if err := Check(&Mutation{Kind: "none", Size: int64(len(img)), base: bytes.NewReader(img), baseSize: int64(len(img))}); err != nil {
				t.Fatalf("control: the image itself is refused: %v", err)
			}
			g, err := New(imgOf(img), uint64(1000+i), imgOf(other))
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Run(g, Options{N: perCodec, ProbeEvery: 10, Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			total += rep.Mutations
			if len(rep.Accepted) > 0 {
				t.Errorf("seed %d: %d mutations got through:\n%s", rep.Seed, len(rep.Accepted), strings.Join(rep.Accepted, "\n"))
			}
			for _, r := range []string{"superblock", "chunk_header", "chunk_payload", "index", "metadata"} {
				if rep.FlipsByRegion[r] == 0 {
					t.Errorf("no flip in the %s: %v", r, rep.FlipsByRegion)
				}
			}
			for _, k := range Kinds() {
				if rep.Tried[k] == 0 {
					t.Errorf("no %s mutation in %d", k, rep.Mutations)
				}
				if rep.Refused[k] != rep.Tried[k] {
					t.Errorf("%s: %d tried, %d refused", k, rep.Tried[k], rep.Refused[k])
				}
			}
			t.Logf("flips by region %v", rep.FlipsByRegion)
			t.Logf("seed %d, %d mutations in %.2f s: tried %v, refused %v, errors %v; Restore without Verify: %d probed, %d opened, "+
				"%d handed out pages before failing, %d ran to the end %v (%d pages in all, %d of them not the original's)",
				rep.Seed, rep.Mutations, rep.Seconds, rep.Tried, rep.Refused, rep.Errors,
				rep.Probed, rep.ProbeOpened, rep.ProbeLeaked, len(rep.ProbeCompleted), rep.ProbeCompleted, rep.ProbePages, rep.ProbeWrong)
			// Restore checks each chunk before its pages leave the reader:
			// what it hands out of a mutated image are the original's pages.
			if rep.ProbeWrong != 0 {
				t.Errorf("Restore handed out %d pages that are not the original's", rep.ProbeWrong)
			}
		})
	}
	t.Logf("%d mutations, all refused", total)
	if total < 1000 {
		t.Errorf("only %d mutations", total)
	}
}

// The same for encrypted images, checked with their key: every mutation
// refused, and in particular every swapped, duplicated or foreign chunk
// (the other image is sealed under the same master key, so only the
// image key and the seals' associated data tell its chunks apart).
func TestRandomMutationsEncrypted(t *testing.T) {
	const perCodec = 400
	total := 0
	for i, codec := range []string{"s2", "zstd", "none"} {
		t.Run(codec, func(t *testing.T) {
			img := testImageKey(t, uint64(30+i), codec, 96, testKey)
			other := testImageKey(t, uint64(30+i), codec, 96, testKey) // same pages, same key, another UUID
			base := &Mutation{Kind: "none", Size: int64(len(img)), base: bytes.NewReader(img), baseSize: int64(len(img)), key: testKey}
			if err := Check(base); err != nil {
				t.Fatalf("control: the image itself is refused: %v", err)
			}
			if err := Check(&Mutation{Kind: "none", Size: int64(len(img)), base: bytes.NewReader(img), baseSize: int64(len(img))}); !errors.Is(err, image.ErrEncrypted) {
				t.Fatalf("without its key: %v", err)
			}
			g, err := New(Image{R: bytes.NewReader(img), Size: int64(len(img)), Key: testKey}, uint64(2000+i), imgOf(other))
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Run(g, Options{N: perCodec, ProbeEvery: 10, Logf: t.Logf})
			if err != nil {
				t.Fatal(err)
			}
			total += rep.Mutations
			if len(rep.Accepted) > 0 {
				t.Errorf("seed %d: %d mutations got through:\n%s", rep.Seed, len(rep.Accepted), strings.Join(rep.Accepted, "\n"))
			}
			for _, k := range Kinds() {
				if rep.Tried[k] == 0 {
					t.Errorf("no %s mutation in %d", k, rep.Mutations)
				}
				if rep.Refused[k] != rep.Tried[k] {
					t.Errorf("%s: %d tried, %d refused", k, rep.Tried[k], rep.Refused[k])
				}
			}
			if rep.ProbeWrong != 0 {
				t.Errorf("Restore handed out %d pages that are not the original's", rep.ProbeWrong)
			}
			t.Logf("seed %d, %d mutations: tried %v, errors %v", rep.Seed, rep.Mutations, rep.Tried, rep.Errors)
		})
	}
	if total < 1000 {
		t.Errorf("only %d mutations", total)
	}
}

// New refuses what it cannot corrupt.
func TestNewErrors(t *testing.T) {
	img := testImage(t, 6, "s2", 20)
	for _, tc := range []struct {
		name   string
		img    Image
		others []Image
	}{
		{"not an image", imgOf(make([]byte, 3*image.PageSize)), nil},
		{"truncated", imgOf(img[:len(img)/2]), nil},
		{"other too short", imgOf(img), []Image{imgOf(img[:100])}},
	} {
		if _, err := New(tc.img, 1, tc.others...); err == nil {
			t.Errorf("%s: New succeeded", tc.name)
		}
	}
	g, err := New(imgOf(img), 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.ForeignSuperblock(0); err == nil {
		t.Error("ForeignSuperblock without another image succeeded")
	}
	if _, err := g.Make("nonsense"); err == nil {
		t.Error("Make of an unknown kind succeeded")
	}
	if _, err := g.NextOf(ForeignSuperblock); err == nil {
		t.Error("NextOf(foreign-superblock) without another image succeeded")
	}
	for _, k := range []Kind{Flip, SwapChunks, ZeroTail} {
		m, err := g.NextOf(k)
		if err != nil || m.Kind != k {
			t.Errorf("NextOf(%s) = %v, %v", k, m, err)
		}
	}
	// Without another image, Next still makes mutations, of the other kinds.
	for range 50 {
		m, err := g.Next()
		if err != nil {
			t.Fatal(err)
		}
		if m.Kind == ForeignPages || m.Kind == ForeignSuperblock {
			t.Fatalf("%v without another image", m)
		}
	}
}
