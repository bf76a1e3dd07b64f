package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"sync"
	"testing"
)

// smallImage is an image with a few chunks of every kind, and its layout.
func smallImage(t testing.TB, codec string) ([]byte, *Reader) {
	t.Helper()
	segs := testSegs(42, 120)
	img, _ := write(t, WriterOptions{Codec: codec, ChunkPages: 8, Workers: 2, Meta: testMeta(segs)}, segs)
	rd, err := openBytes(bytes.Clone(img))
	if err != nil {
		t.Fatal(err)
	}
	if len(rd.Chunks()) < 5 {
		t.Fatalf("only %d chunks", len(rd.Chunks()))
	}
	return img, rd
}

// offsets picks the bytes to corrupt: every byte of the superblock's fields,
// of the chunk headers and of the index, a sample of the rest (each chunk's
// payload at nine places, because each costs a Verify and a Restore).
func offsets(sb Superblock, chunks []Chunk) []uint64 {
	var offs []uint64
	add := func(from, to, step uint64) {
		for o := from; o < to; o += step {
			offs = append(offs, o)
		}
		if to > from {
			offs = append(offs, to-1)
		}
	}
	add(0, 200, 1)
	add(200, sbChecksumOff, 97)
	add(sbChecksumOff, SuperblockSize, 1)
	for _, c := range chunks {
		add(c.Offset, c.Offset+chunkHeaderSize, 1)
		add(c.Offset+chunkHeaderSize, c.Offset+chunkHeaderSize+uint64(c.Stored), max(uint64(c.Stored)/8, 1))
	}
	add(sb.DataOff+sb.DataLen, sb.IndexOff, 7)
	add(sb.IndexOff, sb.IndexOff+sb.IndexLen, 1)
	add(sb.IndexOff+sb.IndexLen, sb.MetaOff, 31)
	add(sb.MetaOff, sb.ImageSize, 3)
	return offs
}

// A corrupted byte anywhere in the image makes Open or Verify fail, and
// Verify and Restore name the chunk when the byte is in one.
func TestCorruptByte(t *testing.T) {
	for _, codec := range []string{"s2", "zstd", "none"} {
		t.Run(codec, func(t *testing.T) {
			img, good := smallImage(t, codec)
			sb, chunks := good.Superblock(), good.Chunks()
			if sb.ImageSize != uint64(len(img)) {
				t.Fatalf("image size %d, %d bytes", sb.ImageSize, len(img))
			}
			inChunk := func(off uint64) int {
				for i, c := range chunks {
					if off >= c.Offset && off < c.Offset+chunkHeaderSize+uint64(c.Stored) {
						return i
					}
				}
				return -1
			}
			offs := offsets(sb, chunks)
			for _, off := range offs {
				img[off] ^= 0x5a
				rd, err := openBytes(img)
				switch {
				case err != nil:
					want := ErrCorrupt
					switch {
					case off < 8:
						want = ErrNotImage
					case off < 12:
						want = ErrVersion
					}
					if !errors.Is(err, want) {
						t.Errorf("offset %#x: Open = %v, want %v", off, err, want)
					}
				case off < sb.DataOff || off >= sb.IndexOff:
					t.Errorf("offset %#x: Open did not notice", off)
				default:
					checkCorruptData(t, rd, off, inChunk(off))
				}
				img[off] ^= 0x5a
			}
			t.Logf("%d offsets of %d bytes", len(offs), len(img))
		})
	}
}

func checkCorruptData(t *testing.T, rd *Reader, off uint64, chunk int) {
	t.Helper()
	err := rd.Verify(nil)
	var fe *FormatError
	if !errors.As(err, &fe) || fe.Chunk != chunk {
		t.Errorf("offset %#x in chunk %d: Verify = %v", off, chunk, err)
		return
	}
	if chunk < 0 {
		return // the data area's padding: nothing Restore reads
	}
	var data uint64
	err = rd.Restore(func(pfn uint64, p []byte, zero bool) error {
		if !zero {
			data += uint64(len(p) / PageSize)
		}
		return nil
	})
	if !errors.As(err, &fe) || fe.Chunk != chunk {
		t.Errorf("offset %#x in chunk %d: Restore = %v", off, chunk, err)
	}
	if data != rd.ix.chunkOrd[chunk] {
		t.Errorf("offset %#x in chunk %d: Restore handed %d data pages, the chunks before hold %d",
			off, chunk, data, rd.ix.chunkOrd[chunk])
	}
	// RestoreConcurrent fails at the same chunk, and never hands out its
	// pages (later chunks' may go out first).
	var mu sync.Mutex
	handed := map[uint64]bool{}
	err = rd.RestoreConcurrent(func(pfn uint64, p []byte, zero bool) error {
		mu.Lock()
		defer mu.Unlock()
		for i := range uint64(len(p) / PageSize) {
			handed[pfn+i] = !zero
		}
		return nil
	})
	if !errors.As(err, &fe) || fe.Chunk != chunk {
		t.Errorf("offset %#x in chunk %d: RestoreConcurrent = %v", off, chunk, err)
	}
	if handed[firstPFN(rd, chunk)] {
		t.Errorf("offset %#x in chunk %d: RestoreConcurrent handed out a page of the bad chunk", off, chunk)
	}
	// With every chunk it can take decoded in place: the same chunk,
	// and its memory untouched, for the stored bytes are checked first.
	_, offered, err := restoreDirect(t, rd, func(uint64) bool { return true })
	if !errors.As(err, &fe) || fe.Chunk != chunk {
		t.Errorf("offset %#x in chunk %d: RestoreConcurrent with Direct = %v", off, chunk, err)
	}
	if mem, ok := offered[firstPFN(rd, chunk)]; ok && bytes.Count(mem, []byte{directFill}) != len(mem) {
		t.Errorf("offset %#x in chunk %d: the bad chunk was written into the memory Direct offered", off, chunk)
	}
	if _, err := rd.ReadPage(firstPFN(rd, chunk)); !errors.As(err, &fe) || fe.Chunk != chunk {
		t.Errorf("offset %#x in chunk %d: ReadPage = %v", off, chunk, err)
	}
}

// firstPFN returns the page frame of a chunk's first page.
func firstPFN(rd *Reader, chunk int) uint64 {
	ord := rd.ix.chunkOrd[chunk]
	for i, r := range rd.ix.runs {
		if r.Kind == KindData && ord < rd.ix.runOrd[i]+uint64(r.Count) {
			return r.Start + ord - rd.ix.runOrd[i]
		}
	}
	panic("no page")
}

// Every truncation reads as corrupt (or, with fewer bytes than the magic,
// as no image at all), never as an image.
func TestTruncated(t *testing.T) {
	img, good := smallImage(t, "s2")
	sb := good.Superblock()
	mid := func(a, b uint64) uint64 { return (a + b) / 2 }
	c := good.Chunks()[2]
	for _, n := range []uint64{
		0, 1, 7, 8, 9, 100, sbChecksumOff, SuperblockSize - 1, SuperblockSize, SuperblockSize + 1,
		c.Offset, c.Offset + 10, mid(sb.DataOff, sb.IndexOff), sb.DataOff + sb.DataLen,
		sb.IndexOff, sb.IndexOff + 1, mid(sb.IndexOff, sb.MetaOff), sb.IndexOff + sb.IndexLen,
		sb.MetaOff, sb.MetaOff + 1, sb.MetaOff + sb.MetaLen, sb.ImageSize - 1,
	} {
		want := ErrCorrupt
		if n < 8 {
			want = ErrNotImage
		}
		if _, err := openBytes(img[:n]); !errors.Is(err, want) {
			t.Errorf("truncated to %d bytes: Open = %v, want %v", n, err, want)
		}
		// The same, with a size that lies: the reads themselves come up short.
		if rd, err := Open(bytes.NewReader(img[:n]), int64(len(img))); err == nil {
			if err := rd.Verify(nil); !errors.Is(err, want) {
				t.Errorf("truncated to %d bytes, size %d: Verify = %v", n, len(img), err)
			}
		} else if !errors.Is(err, want) {
			t.Errorf("truncated to %d bytes, size %d: Open = %v, want %v", n, len(img), err, want)
		}
	}
	// Bytes after the image are not part of it.
	if _, err := openBytes(append(bytes.Clone(img), make([]byte, 10000)...)); err != nil {
		t.Errorf("image with a tail: %v", err)
	}
}

// Hostile values behind valid checksums: rehash makes every hash match, so
// only the structural checks stand between them and the reader.
func TestHostile(t *testing.T) {
	img, good := smallImage(t, "s2")
	sb := good.Superblock()
	le := binary.LittleEndian
	run := func(i int) uint64 { return sb.IndexOff + indexHeaderSize + uint64(i)*runEntrySize }
	chunk := func(i int) uint64 { return run(int(sb.Runs)) + uint64(i)*chunkEntrySize }
	u64 := func(off, v uint64) func([]byte) { return func(b []byte) { le.PutUint64(b[off:], v) } }
	u32 := func(off uint64, v uint32) func([]byte) { return func(b []byte) { le.PutUint32(b[off:], v) } }
	u16 := func(off uint64, v uint16) func([]byte) { return func(b []byte) { le.PutUint16(b[off:], v) } }
	u8 := func(off uint64, v byte) func([]byte) { return func(b []byte) { b[off] = v } }
	text := func(old, new string) func([]byte) {
		return func(b []byte) {
			m := b[sb.MetaOff : sb.MetaOff+sb.MetaLen]
			i := bytes.Index(m, []byte(old))
			if i < 0 || len(old) != len(new) {
				t.Fatalf("metadata %s has no %q", m, old)
			}
			copy(m[i:], new)
		}
	}
	r1 := good.Runs()[1]
	cc := -1 // a compressed chunk
	for i, c := range good.Chunks() {
		if c.Codec != CodecNone {
			cc = i
			break
		}
	}
	if cc < 0 {
		t.Fatal("no compressed chunk")
	}
	ccOff := good.Chunks()[cc].Offset
	if alignUp(sb.IndexLen-16) != alignUp(sb.IndexLen) {
		t.Fatal("index length on a page boundary: change the test image")
	}
	for _, tc := range []struct {
		name   string
		mutate func([]byte)
		chunk  int    // -1: Open must fail; else Verify must fail on this chunk
		want   string // in the error
	}{
		{"state", u32(12, 9), -1, "unknown state"},
		{"page size", u32(48, 8192), -1, "page size"},
		{"no chunk pages", u32(52, 0), -1, "pages per chunk"},
		{"huge chunks", u32(52, MaxChunkPages+1), -1, "pages per chunk"},
		{"codec", u8(56, 7), -1, "unknown codec"},
		{"no UUID", func(b []byte) { clear(b[16:32]) }, -1, "no UUID"},
		{"image size", u64(72, sb.ImageSize+PageSize), -1, "truncated"},
		{"data offset", u64(88, 0), -1, "data area at"},
		{"huge index", u64(120, 1<<40), -1, "exceed the image"},
		{"index length", u64(120, sb.IndexLen-16), -1, "cannot hold"},
		{"huge run count", u64(184, 1<<60), -1, "cannot hold"},
		{"huge chunk count", u64(192, 1<<59), -1, "cannot hold"},
		{"pages", u64(160, sb.Pages+1), -1, "zero +"},
		{"zero pages", u64(168, sb.Pages+1), -1, "zero +"},
		{"counts", func(b []byte) { le.PutUint64(b[168:], sb.ZeroPages+1); le.PutUint64(b[176:], sb.DataPages-1) }, -1, "runs hold"},
		{"metadata length", u64(144, MaxMetaSize+1), -1, "exceed the image"},
		{"index magic", u8(sb.IndexOff, 'X'), -1, "bad magic"},
		{"index run count", u64(sb.IndexOff+8, sb.Runs-1), -1, "differ from the superblock"},
		{"run kind", u8(run(1)+12, 7), -1, "unknown kind"},
		{"run empty", u32(run(1)+8, 0), -1, "no pages"},
		{"run overlap", u64(run(1), good.Runs()[0].Start), -1, "overlaps"},
		{"run beyond memory", u64(run(1), MaxPFN), -1, "beyond physical memory"},
		{"run outside RAM", u64(run(1), r1.Start+0x1000000), -1, "not all in the saved RAM"},
		{"chunk offset", u64(chunk(1), good.Chunks()[1].Offset+1), -1, "contiguous"},
		{"chunk pages", u16(chunk(1)+12, 0), -1, "pages, want 1 to 8"},
		{"chunk too many pages", u16(chunk(1)+12, 9), -1, "pages, want 1 to 8"},
		{"chunk codec", u8(chunk(1)+14, 9), -1, "unknown codec"},
		{"chunk raw size", u8(chunk(cc)+14, 0), -1, "stored raw"},
		{"chunk stored size", u32(chunk(cc)+8, 1<<31), -1, "payload of 2147483648 bytes"},
		{"last chunk longer", u32(chunk(int(sb.Chunks)-1)+8, good.Chunks()[sb.Chunks-1].Stored+1), -1, "data area"},
		{"metadata JSON", u8(sb.MetaOff, 'x'), -1, "metadata"},
		{"metadata page size", text(`"page_size":4096`, `"page_size":8192`), -1, "metadata page size"},
		{"metadata hash", text(`"hash":"xxhash64"`, `"hash":"crc32c32"`), -1, "names hash"},
		{"metadata codec", text(`"codec":"s2"`, `"codec":"xx"`), -1, "metadata codec"},
		{"metadata UUID", func(b []byte) {
			m := b[sb.MetaOff : sb.MetaOff+sb.MetaLen]
			i := bytes.Index(m, []byte(`"uuid":"`)) + 8
			// Another hex digit, so that the UUID still parses but differs.
			if m[i] == '0' {
				m[i] = '1'
			} else {
				m[i] = '0'
			}
		}, -1, "metadata UUID"},
		{"metadata RAM", func(b []byte) {
			m := b[sb.MetaOff : sb.MetaOff+sb.MetaLen]
			m[bytes.Index(m, []byte(`"ram":[{"start":`))+16] = '-'
		}, -1, "metadata"},
		{"metadata region", text(`"region":{"start":520093696`, `"region":{"start":920093696`), -1, "region inverted"},
		{"chunk number", u32(good.Chunks()[3].Offset+4, 4), 3, "number 4"},
		{"chunk magic", u8(good.Chunks()[2].Offset, 'X'), 2, "bad magic"},
		{"chunk reserved byte", u8(chunk(4)+15, 1), 4, "does not match the index"},
		{"s2 length", func(b []byte) { b[ccOff+chunkHeaderSize]++ }, cc, "s2 block decodes to"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(img)
			tc.mutate(b)
			rehash(b)
			rd, err := openBytes(b)
			if tc.chunk < 0 {
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Open = %v, want a corrupt image error about %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			err = rd.Verify(nil)
			var fe *FormatError
			if !errors.As(err, &fe) || fe.Chunk != tc.chunk || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Verify = %v, want chunk %d and %q", err, tc.chunk, tc.want)
			}
			t.Log(err)
		})
	}
}

// Restore alone, without Verify, checks every byte Verify does: a flip in
// the data area's padding, which no chunk covers, fails it at the end.
func TestRestoreChecksDataPadding(t *testing.T) {
	img, good := smallImage(t, "s2")
	sb := good.Superblock()
	end := sb.DataOff + sb.DataLen
	if end == alignUp(end) {
		t.Skip("the data area of this image has no padding")
	}
	bad := bytes.Clone(img)
	bad[end] ^= 1
	rd, err := openBytes(bad)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	pages := 0
	err = rd.Restore(func(pfn uint64, p []byte, zero bool) error { pages += len(p) / PageSize; return nil })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "data area checksum mismatch") {
		t.Fatalf("Restore of an image with a flipped padding byte = %v, want a data area checksum mismatch", err)
	}
	if pages != int(sb.Pages) {
		t.Errorf("Restore handed out %d pages before failing, want all %d (the padding follows them)", pages, sb.Pages)
	}
	if err := good.Restore(func(uint64, []byte, bool) error { return nil }); err != nil {
		t.Errorf("Restore of the good image: %v", err)
	}
}
