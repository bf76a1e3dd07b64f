package image

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// seedImages returns small images of each kind for the fuzzers: valid ones
// in every codec, an incomplete one, and a few with a byte changed.
func seedImages(t testing.TB) map[string][]byte {
	page := func(kind int) []byte {
		p := make([]byte, PageSize)
		fillPage(p, kind, nil)
		return p
	}
	text := func(s string) []byte {
		p := make([]byte, PageSize)
		for i := 0; i < len(p); i += copy(p[i:], s) {
		}
		return p
	}
	// fillPage's random kinds need a generator; these pages do not.
	data := bytes.Join([][]byte{text("khib "), page(pgZero), text("resume "), page(pgTailByte), page(pgZero), text("0x1f000000 ")}, nil)
	segs := []seg{{0x10, data}, {0x20, text("page ")}}
	meta := Meta{KernelRelease: "6.12", RAM: []Range{{0x10000, 0x30000}}, Region: Range{0x100000, 0x200000},
		Created: testTime, UUID: UUID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}}
	seeds := map[string][]byte{}
	for _, codec := range []string{"s2", "zstd", "none"} {
		img, _ := write(t, WriterOptions{Codec: codec, ChunkPages: 2, Workers: 1, Meta: meta}, segs)
		seeds[codec] = img
	}
	inc := bytes.Clone(seeds["s2"])
	inc[12] = byte(StateWriting)
	rehash(inc)
	seeds["incomplete"] = inc
	s2 := seeds["s2"]
	for name, off := range map[string]int{"bad-superblock": 100, "bad-chunk": SuperblockSize + 40, "bad-index": len(s2) - 2*PageSize + 40} {
		b := bytes.Clone(s2)
		b[off] ^= 0x10
		seeds[name] = b
	}
	return seeds
}

var testTime = mustTime("2026-01-02T03:04:05Z")

func FuzzOpen(f *testing.F) {
	for _, b := range seedImages(f) {
		f.Add(b)
	}
	// Without its key an encrypted image stops at ErrEncrypted, once its
	// superblock (cipher, key slots) has parsed: FuzzOpenEncrypted goes on.
	segs := testSegs(4, 6)
	enc, _ := write(f, WriterOptions{ChunkPages: 2, Workers: 1, Meta: testMeta(segs), Encryption: testEncryption(f)}, segs)
	f.Add(enc)
	f.Add([]byte{})
	f.Add(Magic[:])
	f.Fuzz(func(t *testing.T, data []byte) {
		checkImage(t, data)
	})
}

// FuzzOpenRehashed recomputes every hash of its input before reading it, so
// that mutations get past the checksums to the layout and index checks and
// into the decoders.
func FuzzOpenRehashed(f *testing.F) {
	for _, b := range seedImages(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rehash(data)
		checkImage(t, data)
	})
}

// TestFuzzSeeds checks that the committed seed corpus is there and that
// its valid images still open. KHIB_WRITE_SEEDS=1 rewrites it.
func TestFuzzSeeds(t *testing.T) {
	seeds := seedImages(t)
	for _, target := range []string{"FuzzOpen", "FuzzOpenRehashed"} {
		dir := filepath.Join("testdata", "fuzz", target)
		for name, b := range seeds {
			path := filepath.Join(dir, "seed-"+name)
			if os.Getenv("KHIB_WRITE_SEEDS") == "1" {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			// The bytes may differ from what this machine writes (the
			// codecs' assembly depends on the CPU); what matters is that
			// the seed reads the same way.
			f, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with KHIB_WRITE_SEEDS=1 to write the seeds)", err)
			}
			q, ok := bytes.CutPrefix(f, []byte("go test fuzz v1\n[]byte("))
			q, ok2 := bytes.CutSuffix(q, []byte(")\n"))
			img, err := strconv.Unquote(string(q))
			if !ok || !ok2 || err != nil {
				t.Fatalf("%s: not a corpus file", path)
			}
			rd, err := openBytes([]byte(img))
			if err == nil {
				err = rd.Verify(nil)
			}
			if valid := name == "s2" || name == "zstd" || name == "none"; valid != (err == nil) {
				t.Errorf("%s: Open and Verify = %v", path, err)
			}
		}
	}
}

func mustTime(s string) time.Time {
	v, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return v
}
