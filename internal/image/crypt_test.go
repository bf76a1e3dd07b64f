package image

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// cheapArgon2 keeps the tests fast; the format does not care.
var cheapArgon2 = Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}

const testPassphrase = "correct horse battery staple"

// testKey is a fixed master key; a real one is random for every save.
var testKey = bytes.Repeat([]byte{0x4b}, KeySize)

// testEncryption is an Encryption with a passphrase slot for testKey.
func testEncryption(t testing.TB) *Encryption {
	t.Helper()
	slot, err := NewPassphraseSlot(testKey, []byte(testPassphrase), cheapArgon2)
	if err != nil {
		t.Fatal(err)
	}
	return &Encryption{Key: testKey, Slots: []KeySlot{slot}}
}

func openKey(b []byte, key []byte) (*Reader, error) {
	return OpenWith(bytes.NewReader(b), int64(len(b)), OpenOptions{Key: key})
}

// encryptedImage writes segs encrypted and opens the result with the key.
func encryptedImage(t testing.TB, codec string, chunkPages int, segs []seg) ([]byte, *Reader) {
	t.Helper()
	img, _ := write(t, WriterOptions{Codec: codec, ChunkPages: chunkPages, Workers: 2, Meta: testMeta(segs), Encryption: testEncryption(t)}, segs)
	rd, err := openKey(bytes.Clone(img), testKey)
	if err != nil {
		t.Fatalf("OpenWith: %v", err)
	}
	return img, rd
}

// Unencrypted images are byte for byte what the writer produced before
// encryption existed (hashes taken with the version-1-only writer).
func TestUnencryptedUnchanged(t *testing.T) {
	golden := map[string]uint64{
		"s2":   0x2847caece17a64f,
		"zstd": 0xe8365163dc79d0ec,
		"none": 0xb4525e3f33ceb9d9,
	}
	for codec, want := range golden {
		t.Run(codec, func(t *testing.T) {
			segs := testSegs(7, 300)
			m := testMeta(segs)
			m.UUID = UUID{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
			m.Created = testTime
			img, _ := write(t, WriterOptions{Codec: codec, ChunkPages: 8, Workers: 2, Meta: m, Nonce: Nonce{9, 9, 9}}, segs)
			if got := xxhash.Sum64(img); got != want {
				t.Errorf("image hash %#x, want %#x", got, want)
			}
			if !isZero(img[sbCipherOff:sbChecksumOff]) {
				t.Error("version-1 superblock has bytes set past offset 200")
			}
		})
	}
}

func TestEncryptedRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name       string
		codec      string
		chunkPages int
		pages      int
	}{
		{"s2", "s2", 8, 150},
		{"zstd", "zstd", 8, 150},
		{"none", "none", 8, 150},
		{"one page per chunk", "s2", 1, 40},
		{"default chunks", "s2", 0, 300},
		{"no data pages", "s2", 8, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			segs := testSegs(11, tc.pages)
			if tc.pages == 0 {
				segs = []seg{{0x10, make([]byte, 3*PageSize)}}
			}
			img, rd := encryptedImage(t, tc.codec, tc.chunkPages, segs)
			defer rd.Close()
			if v := binary.LittleEndian.Uint32(img[8:]); v != VersionEncrypted {
				t.Fatalf("version %d, want %d", v, VersionEncrypted)
			}
			if !rd.Encrypted() {
				t.Fatal("Reader says not encrypted")
			}
			if err := rd.Verify(nil); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := pageMap(segs)
			n := 0
			err := rd.Restore(func(pfn uint64, p []byte, zero bool) error {
				for i := 0; i < len(p)/PageSize; i++ {
					if !bytes.Equal(p[i*PageSize:(i+1)*PageSize], want[pfn+uint64(i)]) {
						t.Fatalf("pfn %#x differs", pfn+uint64(i))
					}
					n++
				}
				return nil
			})
			if err != nil || n != len(want) {
				t.Fatalf("Restore: %d of %d pages, %v", n, len(want), err)
			}
			for pfn, p := range want {
				got, err := rd.ReadPage(pfn)
				if err != nil || !bytes.Equal(got, p) {
					t.Fatalf("ReadPage(%#x): %v", pfn, err)
				}
				break
			}
			if m := rd.Meta(); m.KernelRelease != "6.12.117-khib" || m.JumpBack != 0x1f001000 {
				t.Errorf("metadata %+v", m)
			}
		})
	}
}

// Nothing of the pages, the metadata or the index shows in an encrypted
// image, while the same pages show in an unencrypted one.
func TestEncryptedHidesContent(t *testing.T) {
	secret := []byte("KHIB-TEST-SECRET-5f1d3a9c0e")
	data := make([]byte, 64*PageSize)
	for i := 0; i < 64; i++ {
		p := data[i*PageSize : (i+1)*PageSize]
		fillPage(p, pgText, randFor(uint64(i)))
		copy(p[100:], secret)
	}
	segs := []seg{{0x100, data}}
	m := testMeta(segs)
	plain, _ := write(t, WriterOptions{Codec: "none", Meta: m}, segs)
	enc, _ := write(t, WriterOptions{Codec: "none", Meta: m, Encryption: testEncryption(t)}, segs)
	needles := map[string][]byte{
		"secret":       secret,
		"page text":    data[PageSize+200 : PageSize+264],
		"kernel":       []byte(m.KernelRelease),
		"build id":     []byte(m.BuildID),
		"index magic":  indexMagic[:],
		"metadata key": []byte(`"jump_back"`),
	}
	for name, n := range needles {
		if !bytes.Contains(plain, n) {
			t.Errorf("control: %s not in the unencrypted image", name)
		}
		if bytes.Contains(enc, n) {
			t.Errorf("%s in the encrypted image", name)
		}
	}
	// Nor does a chunk header give away the hash of its pages.
	rd, err := openKey(enc, testKey)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range rd.Chunks() {
		if c.RawHash == 0 {
			t.Fatalf("chunk %d: no RawHash in the index", i)
		}
		if h := binary.LittleEndian.Uint64(enc[c.Offset+16:]); h != 0 {
			t.Errorf("chunk %d: header RawHash %#x in clear", i, h)
		}
	}
}

func TestEncryptedKeys(t *testing.T) {
	segs := testSegs(3, 40)
	img, rd := encryptedImage(t, "s2", 8, segs)
	rd.Close()
	sb, err := ReadSuperblock(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if sb.Cipher != CipherAES256GCM || len(sb.Slots) != 1 || sb.Slots[0].Kind != SlotPassphrase {
		t.Fatalf("superblock cipher %v, slots %+v", sb.Cipher, sb.Slots)
	}
	other := bytes.Repeat([]byte{0x11}, KeySize)
	for _, tc := range []struct {
		name string
		key  []byte
		want error
	}{
		{"no key", nil, ErrEncrypted},
		{"wrong key", other, ErrWrongKey},
		{"short key", testKey[:16], nil}, // an error, of no particular kind
		{"right key", testKey, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rd, err := openKey(img, tc.key)
			switch {
			case tc.name == "right key":
				if err != nil {
					t.Fatal(err)
				}
				rd.Close()
			case err == nil:
				t.Fatal("opened")
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Fatalf("%v, want %v", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		pass string
		ok   bool
	}{
		{testPassphrase, true},
		{testPassphrase + " ", false},
		{"", false},
		{strings.ToUpper(testPassphrase), false},
	} {
		key, err := UnlockPassphrase(sb, []byte(tc.pass))
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrWrongKey)) {
			t.Errorf("UnlockPassphrase(%q): %v", tc.pass, err)
		}
		if tc.ok && !bytes.Equal(key, testKey) {
			t.Errorf("UnlockPassphrase(%q) gave another key", tc.pass)
		}
	}
	// The image key is unique to the image: the same pages under the same
	// master key seal differently in two images.
	img2, _ := write(t, WriterOptions{Codec: "s2", ChunkPages: 8, Meta: testMeta(segs), Encryption: testEncryption(t)}, segs)
	rd2, err := openKey(img2, testKey)
	if err != nil {
		t.Fatal(err)
	}
	c := rd2.Chunks()[0]
	if bytes.Equal(img[c.Offset+chunkHeaderSize:c.Offset+chunkHeaderSize+64], img2[c.Offset+chunkHeaderSize:c.Offset+chunkHeaderSize+64]) {
		t.Error("two images under one master key sealed chunk 0 alike")
	}
	// A caller cannot choose the UUID of an encrypted image.
	m := testMeta(segs)
	m.UUID = UUID{1}
	if _, err := NewWriter(newDev(1<<24), 1<<24, WriterOptions{Meta: m, Encryption: testEncryption(t)}); err == nil {
		t.Error("NewWriter took a given UUID for an encrypted image")
	}
	for name, enc := range map[string]*Encryption{
		"short key": {Key: testKey[:31], Slots: testEncryption(t).Slots},
		"no slots":  {Key: testKey},
		"bad slot":  {Key: testKey, Slots: []KeySlot{{Kind: 9, Body: []byte{1}}}},
	} {
		if _, err := NewWriter(newDev(1<<24), 1<<24, WriterOptions{Meta: testMeta(segs), Encryption: enc}); err == nil {
			t.Errorf("%s: NewWriter accepted it", name)
		}
	}
}

// checkEncrypted runs stage 1's checks (image.Check with the key) over an
// encrypted image.
func checkEncrypted(b []byte) error {
	rd, err := Check(bytes.NewReader(b), int64(len(b)), CheckOptions{Key: testKey})
	if err != nil {
		return err
	}
	rd.Close()
	return nil
}

// Every byte flipped in an encrypted image is refused, as in an
// unencrypted one. Flipped and rehashed (the image's checksums made to
// match, as a forger would), every byte of a chunk, the index or the
// metadata is still refused: the seals cannot be recomputed without the
// key. What a forger can change unnoticed (the superblock's free fields,
// padding) changes nothing restored.
func TestEncryptedCorruptByte(t *testing.T) {
	segs := testSegs(5, 120)
	img, rd := encryptedImage(t, "s2", 8, segs)
	sb, chunks := rd.Superblock(), rd.Chunks()
	want := restoreAll(t, rd)
	rd.Close()
	sealed := func(off uint64) bool {
		for _, c := range chunks {
			if off >= c.Offset && off < c.Offset+chunkHeaderSize+uint64(c.Stored) {
				return true
			}
		}
		return (off >= sb.IndexOff && off < sb.IndexOff+sb.IndexLen) || (off >= sb.MetaOff && off < sb.MetaOff+sb.MetaLen)
	}
	n, forged := 0, 0
	for _, off := range offsets(sb, chunks) {
		for _, re := range []bool{false, true} {
			b := bytes.Clone(img)
			b[off] ^= 0x20
			if re {
				rehash(b)
			}
			err := checkEncrypted(b)
			n++
			if !re {
				if err == nil {
					t.Fatalf("byte %#x flipped: accepted", off)
				}
				continue
			}
			if sealed(off) && err == nil {
				t.Fatalf("byte %#x flipped and rehashed, in a sealed piece: accepted", off)
			}
			if err == nil {
				// Accepted: it must restore exactly what was sealed.
				forged++
				rd, err := openKey(b, testKey)
				if err != nil {
					t.Fatal(err)
				}
				if got := restoreAll(t, rd); !bytes.Equal(got, want) {
					t.Fatalf("byte %#x flipped and rehashed: accepted and restores other pages", off)
				}
				rd.Close()
			}
		}
	}
	t.Logf("%d mutations; %d rehashed ones outside the seals were accepted and restore the same pages", n, forged)
}

// restoreAll returns every page Restore hands out, with its pfn, in order.
func restoreAll(t *testing.T, rd *Reader) []byte {
	t.Helper()
	var out []byte
	err := rd.Restore(func(pfn uint64, p []byte, zero bool) error {
		out = binary.LittleEndian.AppendUint64(out, pfn)
		out = append(out, p...)
		return nil
	})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	return out
}

// Chunks moved, swapped or replayed, from this image or another sealed
// under the same master key, are refused, even with every checksum and
// chunk header made to match.
func TestEncryptedMovedChunks(t *testing.T) {
	// Pages that compress alike, so that chunks have equal sizes and can
	// be swapped without changing the layout.
	data := make([]byte, 6*8*PageSize)
	for i := 0; i < len(data)/PageSize; i++ {
		p := data[i*PageSize : (i+1)*PageSize]
		fillPage(p, pgRandom, randFor(uint64(i)))
	}
	segs := []seg{{0x100, data}}
	opts := func() WriterOptions {
		return WriterOptions{Codec: "none", ChunkPages: 8, Meta: testMeta(segs), Encryption: testEncryption(t)}
	}
	img, _ := write(t, opts(), segs)
	older, _ := write(t, opts(), segs) // same key, same pages, another UUID
	rd, err := openKey(img, testKey)
	if err != nil {
		t.Fatal(err)
	}
	chunks := rd.Chunks()
	rd.Close()
	size := chunkHeaderSize + uint64(chunks[0].Stored)
	at := func(b []byte, i int) []byte { return b[chunks[i].Offset : chunks[i].Offset+size] }
	// put copies chunk src of from over chunk dst of b, giving it dst's
	// header number, so that only the seal can tell.
	put := func(b, from []byte, dst, src int) {
		copy(at(b, dst), at(from, src))
		binary.LittleEndian.PutUint32(at(b, dst)[4:], uint32(dst))
	}
	for _, tc := range []struct {
		name string
		edit func(b []byte)
	}{
		{"chunks 1 and 4 swapped", func(b []byte) {
			c1 := bytes.Clone(at(b, 1))
			put(b, b, 1, 4)
			copy(at(b, 4), c1)
			binary.LittleEndian.PutUint32(at(b, 4)[4:], 4)
		}},
		{"chunk 2 replayed as chunk 3", func(b []byte) { put(b, b, 3, 2) }},
		{"chunk 0 replayed as the last", func(b []byte) { put(b, b, len(chunks)-1, 0) }},
		{"chunk 2 of an older image", func(b []byte) { put(b, older, 2, 2) }},
		{"every chunk of an older image", func(b []byte) {
			for i := range chunks {
				put(b, older, i, i)
			}
		}},
		{"index of an older image", func(b []byte) {
			o, _ := ReadSuperblock(bytes.NewReader(older))
			copy(b[o.IndexOff:o.IndexOff+alignUp(o.IndexLen)], older[o.IndexOff:])
		}},
		{"metadata of an older image", func(b []byte) {
			o, _ := ReadSuperblock(bytes.NewReader(older))
			copy(b[o.MetaOff:o.MetaOff+alignUp(o.MetaLen)], older[o.MetaOff:])
		}},
		{"superblock of an older image", func(b []byte) { copy(b[:SuperblockSize], older) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(chunks) < 5 {
				t.Fatalf("only %d chunks", len(chunks))
			}
			b := bytes.Clone(img)
			tc.edit(b)
			rehash(b)
			err := checkEncrypted(b)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrWrongKey) {
				t.Fatalf("unclassified: %v", err)
			}
			t.Log(err)
			if !strings.Contains(tc.name, "chunk") {
				return
			}
			// The chunk headers and checksums caught it; xxhash is no
			// defence against a forger, though. Let the index vouch for
			// the moved bytes' headers and checksums, as a forger who
			// beat xxhash would: the seal alone must refuse them.
			rd, err := openKey(img, testKey)
			if err != nil {
				t.Fatal(err)
			}
			defer rd.Close()
			rd.r = bytes.NewReader(b)
			for i := range rd.ix.chunks {
				rd.ix.chunks[i].StoredHash = binary.LittleEndian.Uint64(at(b, i)[24:])
			}
			err = rd.Verify(nil)
			if err == nil || !strings.Contains(err.Error(), "authentication failed") {
				t.Fatalf("with headers and checksums that match, Verify: %v; want the seal to fail", err)
			}
			t.Log(err)
		})
	}
}

func TestParseSlots(t *testing.T) {
	pass := testEncryption(t).Slots[0]
	enc := func(slots ...KeySlot) []byte {
		b, err := EncodeSlots(slots)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := enc(pass)
	withBody := func(edit func(b []byte)) []byte {
		b := bytes.Clone(good)
		edit(b[slotHeaderSize:])
		return b
	}
	params := func(time, mem uint32, lanes byte) []byte {
		return withBody(func(b []byte) {
			binary.LittleEndian.PutUint32(b[0:], time)
			binary.LittleEndian.PutUint32(b[4:], mem)
			b[8] = lanes
		})
	}
	tpm := KeySlot{Kind: SlotTPM, Body: bytes.Repeat([]byte{7}, 300)}
	for _, tc := range []struct {
		name string
		b    []byte
		n    int
		want string // "" ok, else part of the error
	}{
		{"passphrase", good, 1, ""},
		{"passphrase and tpm", enc(pass, tpm), 2, ""},
		{"four", enc(pass, tpm, pass, tpm), 4, ""},
		{"count zero", good, 0, "0 key slots"},
		{"count too high", good, 5, "5 key slots"},
		{"count above the slots", good, 2, "truncated"},
		{"bytes left over", append(bytes.Clone(good), 0), 1, "after the last"},
		{"empty", nil, 1, "truncated"},
		{"body runs past the end", good[:len(good)-1], 1, "only"},
		{"unknown kind", append([]byte{9, 0, 1, 0}, 1), 1, "unknown kind"},
		{"reserved byte", append([]byte{1, 1}, good[2:]...), 1, "reserved"},
		{"passphrase body short", append([]byte{1, 0, 75, 0}, good[4:79]...), 1, "75 bytes"},
		{"passphrase reserved", withBody(func(b []byte) { b[10] = 1 }), 1, "reserved"},
		{"time zero", params(0, 64, 1), 1, "time 0"},
		{"time huge", params(MaxArgon2Time+1, 64, 1), 1, "time"},
		{"lanes zero", params(1, 64, 0), 1, "lanes 0"},
		{"lanes huge", params(1, 1024, MaxArgon2Lanes+1), 1, "lanes"},
		{"memory below 8 per lane", params(1, 31, 4), 1, "memory 31"},
		{"memory huge", params(1, MaxArgon2Memory+1, 1), 1, "memory"},
		{"memory at the limit", params(1, MaxArgon2Memory, 1), 1, ""},
		{"tpm empty", []byte{2, 0, 0, 0}, 1, "TPM slot of 0"},
		{"tpm too big", append([]byte{2, 0, 0x01, 0x08}, make([]byte, 2049)...), 1, "TPM slot of 2049"},
		{"too big for the superblock", make([]byte, maxSlotArea+1), 1, "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			slots, err := ParseSlots(tc.b, tc.n)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if len(slots) != tc.n {
					t.Fatalf("%d slots", len(slots))
				}
				again, err := EncodeSlots(slots)
				if err != nil || !bytes.Equal(again, tc.b) {
					t.Fatalf("encodes back differently: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestPassphraseSlot(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  []byte
		pass string
		p    Argon2Params
		ok   bool
	}{
		{"cheap", testKey, "x", cheapArgon2, true},
		{"4 lanes", testKey, "pass", Argon2Params{Time: 2, MemoryKiB: 256, Threads: 4}, true},
		{"empty passphrase", testKey, "", cheapArgon2, false},
		{"short key", testKey[:8], "x", cheapArgon2, false},
		{"bad params", testKey, "x", Argon2Params{Time: 1, MemoryKiB: 8, Threads: 4}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewPassphraseSlot(tc.key, []byte(tc.pass), tc.p)
			if !tc.ok {
				if err == nil {
					t.Fatal("made a slot")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			ps, err := s.Passphrase()
			if err != nil {
				t.Fatal(err)
			}
			if ps.Params != tc.p {
				t.Fatalf("params %v, want %v", ps.Params, tc.p)
			}
			if k, err := ps.Unwrap([]byte(tc.pass)); err != nil || !bytes.Equal(k, tc.key) {
				t.Fatalf("Unwrap: %v", err)
			}
			if _, err := ps.Unwrap([]byte(tc.pass + "!")); !errors.Is(err, ErrWrongKey) {
				t.Fatalf("Unwrap with another passphrase: %v", err)
			}
			// The parameters are bound to the wrapped key: changing them
			// (to cheaper ones, say) does not unwrap it.
			b := bytes.Clone(s.Body)
			b[0]++
			ps2, err := KeySlot{Kind: SlotPassphrase, Body: b}.Passphrase()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ps2.Unwrap([]byte(tc.pass)); !errors.Is(err, ErrWrongKey) {
				t.Fatalf("Unwrap with changed parameters: %v", err)
			}
		})
	}
}

func FuzzParseSlots(f *testing.F) {
	pass := testEncryption(f).Slots[0]
	for _, slots := range [][]KeySlot{{pass}, {pass, {Kind: SlotTPM, Body: []byte("sealed")}}} {
		b, _ := EncodeSlots(slots)
		f.Add(b, uint8(len(slots)))
	}
	f.Add([]byte{}, uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, n uint8) {
		slots, err := ParseSlots(b, int(n))
		if err != nil {
			return
		}
		again, err := EncodeSlots(slots)
		if err != nil {
			t.Fatalf("parsed slots do not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatal("parsed slots encode differently")
		}
		for _, s := range slots {
			if s.Kind == SlotPassphrase {
				ps, err := s.Passphrase()
				if err != nil {
					t.Fatalf("a parsed passphrase slot does not parse: %v", err)
				}
				if ps.Params.check() != "" {
					t.Fatal("parameters out of range passed")
				}
			}
		}
	})
}

// FuzzOpenEncrypted runs the read paths over mutations of encrypted
// images, with their key: whatever the bytes, nothing panics, and an image
// that opens verifies and restores consistently.
func FuzzOpenEncrypted(f *testing.F) {
	for _, codec := range []string{"s2", "zstd", "none"} {
		segs := testSegs(9, 30)
		img, _ := write(f, WriterOptions{Codec: codec, ChunkPages: 4, Workers: 1, Meta: testMeta(segs), Encryption: testEncryption(f)}, segs)
		f.Add(img, false)
		f.Add(img, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, re bool) {
		if re {
			rehash(data)
		}
		checkImageKey(t, data, testKey)
	})
}

// A's encrypted reservation carries the key slots to the helper, which
// finds it by its nonce and writes them into the image; SetState keeps them.
func TestEncryptedReservation(t *testing.T) {
	enc := testEncryption(t)
	dev := newDev(1 << 26)
	nonce := Nonce{7, 7}
	if err := WriteEncryptedReservation(dev, nonce, dev.size, enc.Slots); err != nil {
		t.Fatal(err)
	}
	if err := WriteEncryptedReservation(dev, nonce, dev.size, nil); err == nil {
		t.Error("an encrypted reservation without key slots")
	}
	sb, err := FindReservation(dev, nonce)
	if err != nil || sb.Version != VersionEncrypted || !sb.Encrypted() || len(sb.Slots) != 1 || !bytes.Equal(sb.Slots[0].Body, enc.Slots[0].Body) {
		t.Fatalf("FindReservation = %+v, %v", sb, err)
	}
	if _, err := Open(dev, dev.size); !errors.Is(err, ErrIncomplete) {
		t.Errorf("Open of a reservation = %v", err)
	}
	segs := testSegs(2, 30)
	w, err := NewWriter(dev, dev.size, WriterOptions{Nonce: nonce, Meta: testMeta(segs), Encryption: &Encryption{Key: testKey, Slots: sb.Slots}})
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
	if err := SetState(dev, StateInvalidated); err != nil {
		t.Fatal(err)
	}
	sb, err = ReadSuperblock(dev)
	if err != nil || sb.State != StateInvalidated || len(sb.Slots) != 1 {
		t.Fatalf("after SetState: %+v, %v", sb, err)
	}
	key, err := UnlockPassphrase(sb, []byte(testPassphrase))
	if err != nil {
		t.Fatal(err)
	}
	rd, err := OpenWith(dev, dev.size, OpenOptions{Key: key, Invalidated: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := rd.Verify(nil); err != nil {
		t.Fatal(err)
	}
}
