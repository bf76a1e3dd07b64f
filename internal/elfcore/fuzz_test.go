package elfcore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func FuzzNewFile(f *testing.F) {
	good := goodCore(f)
	f.Add(good)
	f.Add(good[:4096+64])
	f.Add(good[:64])
	f.Add(make([]byte, 64))
	bad := bytes.Clone(good)
	binary.LittleEndian.PutUint32(bad[4096+4:], 0xfffffff0)
	f.Add(bad)
	bad = bytes.Clone(good)
	binary.LittleEndian.PutUint16(bad[56:], 0xffff)
	f.Add(bad)
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := NewFile(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v does not wrap ErrFormat", err)
			}
			return
		}
		for _, l := range c.Loads() {
			if l.Size == 0 || l.Offset+l.Size > uint64(len(b)) || l.Offset+l.Size < l.Offset {
				t.Fatalf("load %v outside a %d-byte file", l, len(b))
			}
			p := make([]byte, min(l.Size, 64))
			if _, err := c.ReadAtPhys(p, l.PhysAddr); err != nil {
				t.Fatalf("ReadAtPhys at the start of %v: %v", l, err)
			}
		}
		notes, err := c.Notes()
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("Notes error %v does not wrap ErrFormat", err)
			}
			return
		}
		size := 0
		for _, n := range notes {
			size += nhdrSize + len(n.Name) + len(n.Desc)
		}
		if size > len(b) {
			t.Fatalf("%d bytes of notes from a %d-byte file", size, len(b))
		}
		v, err := VmcoreinfoFromNotes(notes)
		if err != nil {
			return
		}
		exercise(v)
	})
}

// exercise calls every helper on every key, as a reader would.
func exercise(v Vmcoreinfo) {
	v.OSRelease()
	v.BuildID()
	v.PageSize()
	for k := range v {
		v.Get(k)
		for _, pre := range []string{"SYMBOL(", "SIZE(", "OFFSET(", "LENGTH(", "NUMBER("} {
			if len(k) > len(pre) && k[:len(pre)] == pre && k[len(k)-1] == ')' {
				name := k[len(pre) : len(k)-1]
				v.Symbol(name)
				v.Size(name)
				v.Offset(name)
				v.Length(name)
				v.Number(name)
			}
		}
	}
}

func FuzzParseVmcoreinfo(f *testing.F) {
	f.Add([]byte(sampleVmcoreinfo))
	f.Add([]byte("NUMBER(x)=0x\nSYMBOL(y)=\n=\n"))
	f.Add([]byte("A=1\nB"))
	f.Add([]byte("PAGESIZE=4095\nBUILD-ID=abc\n\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseVmcoreinfo(b)
		if err != nil {
			if !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v does not wrap ErrFormat", err)
			}
			return
		}
		if len(v) > len(b)/2+1 {
			t.Fatalf("%d keys from %d bytes", len(v), len(b))
		}
		for k, val := range v {
			if k == "" || bytes.ContainsAny([]byte(k+val), "\n\x00") {
				t.Fatalf("key %q value %q", k, val)
			}
		}
		exercise(v)
	})
}

func FuzzBuildIDFromNotes(f *testing.F) {
	f.Add(hereNotes)
	f.Add(hereNotes[:30])
	f.Add(appendNote(nil, "GNU", NoteTypeGNUBuildID, []byte{1, 2, 3}))
	f.Add(vmcoreinfoNote(sampleVmcoreinfo))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := BuildIDFromNotes(b)
		if err == nil && len(id) != 2*BuildIDSize {
			t.Fatalf("build-id %q", id)
		}
		if err != nil && !errors.Is(err, ErrNoBuildID) {
			t.Fatalf("error %v does not wrap ErrNoBuildID", err)
		}
		notes, err := ParseNotes(b)
		if err != nil && !errors.Is(err, ErrFormat) {
			t.Fatalf("ParseNotes error %v does not wrap ErrFormat", err)
		}
		for _, n := range notes {
			if n.Off < 0 || int(n.Off)+nhdrSize+len(n.Desc) > len(b) {
				t.Fatalf("note %+v outside %d bytes", n, len(b))
			}
		}
	})
}

func FuzzParseVmcoreinfoSysfs(f *testing.F) {
	f.Add([]byte("0x0000000100c66000 1024\n"))
	f.Add([]byte("0x0 0\n"))
	f.Add([]byte("hello"))
	f.Fuzz(func(t *testing.T, b []byte) {
		addr, size, err := ParseVmcoreinfoSysfs(b)
		if err == nil && (addr == 0 || size == 0) {
			t.Fatalf("accepted %q as %#x %#x", b, addr, size)
		}
		if err != nil && !errors.Is(err, ErrFormat) {
			t.Fatalf("error %v does not wrap ErrFormat", err)
		}
	})
}

// FuzzBuild checks that whatever Build accepts, B's kernel accepts too and
// shows the same ranges through /proc/vmcore.
func FuzzBuild(f *testing.F) {
	f.Add([]byte{0, 1, 0, 0, 0x10, 0, 0, 0, 2, 0, 0, 0}, uint64(0x180000), uint64(vmcoreinfoNoteSize))
	f.Add([]byte{0, 0, 0, 0, 1, 0, 0, 0xf0, 0xff, 0xff, 0xff, 0xff}, uint64(0x1000), uint64(12))
	f.Fuzz(func(t *testing.T, spec []byte, noteAddr, noteSize uint64) {
		// Each 12 bytes of spec make a range: 4 bytes of page number,
		// 4 of pages, 4 of where its copy is (0: not copied).
		var ram []Load
		for len(spec) >= 12 && len(ram) < 64 {
			pa := uint64(binary.LittleEndian.Uint32(spec)) << 12
			size := uint64(binary.LittleEndian.Uint32(spec[4:])) << 12
			off := uint64(binary.LittleEndian.Uint32(spec[8:])) << 12
			if off == 0 {
				off = pa
			}
			ram = append(ram, Load{PhysAddr: pa, Size: size, Offset: off})
			spec = spec[12:]
		}
		noteSize %= 2 * vmcoreinfoNoteSize
		hdr, err := Build(Headers{RAM: ram, VmcoreinfoAddr: noteAddr, VmcoreinfoSize: noteSize})
		if err != nil {
			return
		}
		var mem physMem
		for i, l := range ram {
			mem.fill(l.Offset, l.Size, uint64(i))
		}
		// Wherever B reads the note, it finds one, and room after it.
		src := uint64(binary.LittleEndian.Uint64(hdr[ehdrSize+8:]))
		note := appendNote(nil, NoteNameVmcoreinfo, 0, nil)
		note = append(note, make([]byte, nhdrSize)...)
		mem.put(src, note)
		vc, err := EmulateVmcore(hdr, &mem)
		if err != nil {
			if noteSize >= uint64(len(note)) {
				t.Fatalf("Build accepted what B's kernel refuses: %v", err)
			}
			return
		}
		c, err := NewFile(vc, vc.Size())
		if err != nil {
			t.Fatalf("NewFile on emulated /proc/vmcore: %v", err)
		}
		if got := c.Loads(); len(got) != len(ram) {
			t.Fatalf("%d loads, built %d", len(got), len(ram))
		}
		for _, l := range ram {
			var a, b [1]byte
			if _, err := c.ReadAtPhys(a[:], l.End()-1); err != nil {
				t.Fatal(err)
			}
			mem.ReadAt(b[:], int64(l.Offset+l.Size-1))
			if a != b {
				t.Fatalf("last byte of %v differs", l)
			}
		}
	})
}
