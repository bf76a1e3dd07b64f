package elfcore

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// lowBackup is where the tests' A keeps the copy of its low memory, in R
// above B's RAM.
const lowBackup = 0x2f000000

func TestBuildRoundTrip(t *testing.T) {
	tests := []struct {
		name     string
		ram      []Load
		noteAddr uint64
		// noteSrc is where B's kernel must read the note.
		noteSrc uint64
	}{
		{
			name: "identity",
			ram: []Load{
				{PhysAddr: 0x100000, Size: 0x1000000, Offset: 0x100000},
			},
			noteAddr: 0x7fb2b000,
		},
		{
			name: "low memory copied aside, unsorted, odd end",
			ram: []Load{
				{PhysAddr: 0x100000, Size: 0x2ef00000, Offset: 0x100000},
				{PhysAddr: 0x1000, Size: 0x9ec00, Offset: lowBackup + 0x1000},
				{PhysAddr: 0x100000000, Size: 0x40000000, Offset: 0x100000000},
			},
			noteAddr: 0x100c66000,
		},
		{
			name: "note inside the copied low memory",
			ram: []Load{
				{PhysAddr: 0x1000, Size: 0x9f000, Offset: lowBackup + 0x1000},
				{PhysAddr: 0x100000, Size: 0x100000, Offset: 0x100000},
			},
			noteAddr: 0x8a000,
			noteSrc:  lowBackup + 0x8a000,
		},
		{
			name: "note at an unaligned address in the last range",
			ram: []Load{
				{PhysAddr: 0x0, Size: 0x1000, Offset: 0x0},
				{PhysAddr: 0x5000, Size: 0x8000, Offset: 0x5000},
			},
			noteAddr: 0x5ff0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.noteSrc == 0 {
				tc.noteSrc = tc.noteAddr
			}
			hdr, err := Build(Headers{RAM: tc.ram, VmcoreinfoAddr: tc.noteAddr, VmcoreinfoSize: vmcoreinfoNoteSize})
			if err != nil {
				t.Fatal(err)
			}
			if want := ehdrSize + (len(tc.ram)+1)*phdrSize; len(hdr) != want {
				t.Errorf("headers are %d bytes, want %d", len(hdr), want)
			}

			// A's memory: each range's bytes at its Offset; the note
			// where B's kernel will read it (written last, so it lies
			// over the range that holds it, as in A).
			var mem physMem
			for i, l := range tc.ram {
				mem.fill(l.Offset, l.Size, uint64(i))
			}
			mem.put(tc.noteSrc, vmcoreinfoNote(sampleVmcoreinfo))

			vc, err := EmulateVmcore(hdr, &mem)
			if err != nil {
				t.Fatalf("B's kernel would refuse the headers: %v", err)
			}
			if len(vc.Warnings) > 0 {
				t.Errorf("B's kernel would warn: %q", vc.Warnings)
			}

			// debug/elf agrees on the layout.
			ef, err := elf.NewFile(vc)
			if err != nil {
				t.Fatalf("debug/elf: %v", err)
			}
			if ef.Progs[0].Type != elf.PT_NOTE || len(ef.Progs) != len(tc.ram)+1 {
				t.Errorf("debug/elf sees %d progs, first %v", len(ef.Progs), ef.Progs[0].Type)
			}

			f, err := NewFile(vc, vc.Size())
			if err != nil {
				t.Fatal(err)
			}
			sorted := slices.Clone(tc.ram)
			slices.SortFunc(sorted, byPhysAddr)
			loads := f.Loads()
			if len(loads) != len(sorted) {
				t.Fatalf("%d loads, want %d", len(loads), len(sorted))
			}
			for i, l := range loads {
				if l.PhysAddr != sorted[i].PhysAddr || l.Size != sorted[i].Size {
					t.Errorf("load %d is %v, want %v", i, l, sorted[i])
				}
				if l.Offset%pageSize != l.PhysAddr%pageSize {
					t.Errorf("load %d at file offset %#x is not page-aligned like %#x", i, l.Offset, l.PhysAddr)
				}
				// The bytes in /proc/vmcore are those at the source.
				n := min(l.Size, 3*pageSize)
				for _, at := range []uint64{0, l.Size - n} {
					got := make([]byte, n)
					if _, err := vc.ReadAt(got, int64(l.Offset+at)); err != nil {
						t.Fatal(err)
					}
					want := make([]byte, n)
					mem.ReadAt(want, int64(sorted[i].Offset+at))
					if !bytes.Equal(got, want) {
						t.Errorf("load %v: bytes at +%#x differ from the source", l, at)
					}
					got2 := make([]byte, n)
					if _, err := f.ReadAtPhys(got2, l.PhysAddr+at); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got2, want) {
						t.Errorf("ReadAtPhys(%#x) differs from the source", l.PhysAddr+at)
					}
				}
			}

			notes, err := f.Notes()
			if err != nil {
				t.Fatal(err)
			}
			if len(notes) != 1 || notes[0].Name != NoteNameVmcoreinfo || string(notes[0].Desc) != sampleVmcoreinfo {
				t.Fatalf("notes = %+v", notes)
			}
			vi, err := f.Vmcoreinfo()
			if err != nil {
				t.Fatal(err)
			}
			if id, _ := vi.BuildID(); id != "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678" {
				t.Errorf("BuildID = %q", id)
			}
			if ms, _ := vi.Symbol("mem_section"); ms != 0xffff88807ffd2000 {
				t.Errorf("SYMBOL(mem_section) = %#x", ms)
			}
		})
	}
}

// TestBuildLayout pins the fields B's kernel and its readers depend on.
func TestBuildLayout(t *testing.T) {
	hdr, err := Build(Headers{
		RAM:            []Load{{PhysAddr: 0x1000, Size: 0x9f000, Offset: lowBackup + 0x1000}, {PhysAddr: 0x100000, Size: 0x1000, Offset: 0x100000}},
		VmcoreinfoAddr: 0x100000 + 0x10, VmcoreinfoSize: 0x1024,
	})
	if err != nil {
		t.Fatal(err)
	}
	var eh elf.Header64
	binary.Read(bytes.NewReader(hdr), binary.LittleEndian, &eh)
	if string(eh.Ident[:4]) != elf.ELFMAG || eh.Ident[elf.EI_CLASS] != byte(elf.ELFCLASS64) ||
		eh.Ident[elf.EI_DATA] != byte(elf.ELFDATA2LSB) || eh.Ident[elf.EI_VERSION] != 1 ||
		elf.Type(eh.Type) != elf.ET_CORE || elf.Machine(eh.Machine) != elf.EM_X86_64 || eh.Version != 1 ||
		eh.Phoff != 64 || eh.Ehsize != 64 || eh.Phentsize != 56 || eh.Phnum != 3 || eh.Shnum != 0 {
		t.Errorf("header %+v", eh)
	}
	var ph [3]elf.Prog64
	binary.Read(bytes.NewReader(hdr[64:]), binary.LittleEndian, &ph)
	want := [3]elf.Prog64{
		{Type: uint32(elf.PT_NOTE), Off: 0x100010, Paddr: 0x100010, Filesz: 0x1024, Memsz: 0x1024, Align: 4},
		{Type: uint32(elf.PT_LOAD), Flags: 7, Off: lowBackup + 0x1000, Paddr: 0x1000, Filesz: 0x9f000, Memsz: 0x9f000},
		{Type: uint32(elf.PT_LOAD), Flags: 7, Off: 0x100000, Paddr: 0x100000, Filesz: 0x1000, Memsz: 0x1000},
	}
	if ph != want {
		t.Errorf("program headers\n got %+v\nwant %+v", ph, want)
	}
}

func TestBuildErrors(t *testing.T) {
	ok := []Load{{PhysAddr: 0x100000, Size: 0x100000, Offset: 0x100000}}
	many := make([]Load, MaxProgs)
	for i := range many {
		many[i] = Load{PhysAddr: uint64(i) << 20, Size: 0x1000, Offset: uint64(i) << 20}
	}
	tests := []struct {
		name string
		h    Headers
		want string
	}{
		{"no RAM", Headers{VmcoreinfoAddr: 0x1000, VmcoreinfoSize: 0x1024}, "no RAM"},
		{"empty range", Headers{RAM: []Load{{PhysAddr: 0x1000}}, VmcoreinfoAddr: 0x1000, VmcoreinfoSize: 0x1024}, "empty"},
		{"wrap", Headers{RAM: []Load{{PhysAddr: ^uint64(0) - 0xfff, Size: 0x2000, Offset: 0}}, VmcoreinfoAddr: 0x1000, VmcoreinfoSize: 0x1024}, "wraps"},
		{"overlap", Headers{RAM: []Load{ok[0], {PhysAddr: 0x180000, Size: 0x100000, Offset: 0x180000}}, VmcoreinfoAddr: 0x1000, VmcoreinfoSize: 0x1024}, "overlap"},
		{"copy misaligned", Headers{RAM: []Load{{PhysAddr: 0x1000, Size: 0x1000, Offset: 0x2f000800}}, VmcoreinfoAddr: 0x100000, VmcoreinfoSize: 0x1024}, "page-aligned"},
		{"too many ranges", Headers{RAM: many, VmcoreinfoAddr: 0x1000, VmcoreinfoSize: 0x1024}, "at most"},
		{"no note", Headers{RAM: ok}, "no vmcoreinfo note"},
		{"note shorter than a header", Headers{RAM: ok, VmcoreinfoAddr: 0x100000, VmcoreinfoSize: 8}, "shorter than a note header"},
		{"note too large", Headers{RAM: ok, VmcoreinfoAddr: 0x100000, VmcoreinfoSize: MaxNoteSize + 1}, "kmalloc"},
		{"note wraps", Headers{RAM: ok, VmcoreinfoAddr: ^uint64(0) - 4, VmcoreinfoSize: 0x1024}, "wraps"},
		{"note straddles copied range", Headers{RAM: []Load{{PhysAddr: 0x1000, Size: 0x9f000, Offset: lowBackup + 0x1000}}, VmcoreinfoAddr: 0x9ff00, VmcoreinfoSize: 0x1024}, "straddles"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(tc.h)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Build = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestEmulateKernelRefusals checks that the emulator refuses what B's
// kernel refuses, so that a passing round trip means something.
func TestEmulateKernelRefusals(t *testing.T) {
	good, err := Build(Headers{RAM: []Load{{PhysAddr: 0x100000, Size: 0x1000, Offset: 0x100000}}, VmcoreinfoAddr: 0x200000, VmcoreinfoSize: vmcoreinfoNoteSize})
	if err != nil {
		t.Fatal(err)
	}
	var mem physMem
	mem.put(0x200000, vmcoreinfoNote(sampleVmcoreinfo))
	tests := []struct {
		name   string
		mutate func(b []byte)
		mem    io.ReaderAt
		want   string
	}{
		{"zeros where the note should be", nil, &physMem{}, "vmcore not initialized"},
		{"bad magic", func(b []byte) { b[1] = 'X' }, &mem, "not found"},
		{"32-bit class", func(b []byte) { b[elf.EI_CLASS] = byte(elf.ELFCLASS32) }, &mem, "not sane"},
		{"wrong machine", func(b []byte) { binary.LittleEndian.PutUint16(b[18:], uint16(elf.EM_AARCH64)) }, &mem, "not sane"},
		{"note p_memsz 0", func(b []byte) { binary.LittleEndian.PutUint64(b[64+40:], 0) }, &mem, "ZERO_SIZE_PTR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := slices.Clone(good)
			if tc.mutate != nil {
				tc.mutate(b)
			}
			_, err := EmulateVmcore(b, tc.mem)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("EmulateVmcore = %v, want an error containing %q", err, tc.want)
			}
		})
	}
	// A note buffer the notes fill exactly, with no empty note after
	// them, makes the kernel read past its buffer: Build's callers pass
	// the whole VMCOREINFO_NOTE_SIZE, which leaves room.
	tight := appendNote(nil, NoteNameVmcoreinfo, 0, []byte("A=1\n"))
	h, _ := Build(Headers{RAM: []Load{{PhysAddr: 0x100000, Size: 0x1000, Offset: 0x100000}}, VmcoreinfoAddr: 0x200000, VmcoreinfoSize: uint64(len(tight))})
	var m2 physMem
	m2.put(0x200000, tight)
	m2.put(0x200000+uint64(len(tight)), []byte{1, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0})
	vc, err := EmulateVmcore(h, &m2)
	if err != nil || len(vc.Warnings) == 0 {
		t.Errorf("tight note: err %v, warnings %q; want a warning", err, vc.Warnings)
	}
}

// goodCore returns /proc/vmcore bytes for a small A.
func goodCore(t testing.TB) []byte {
	hdr, err := Build(Headers{
		RAM:            []Load{{PhysAddr: 0x1000, Size: 0x2000, Offset: lowBackup + 0x1000}, {PhysAddr: 0x100000, Size: 0x3000, Offset: 0x100000}},
		VmcoreinfoAddr: 0x101000, VmcoreinfoSize: vmcoreinfoNoteSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	var mem physMem
	mem.put(lowBackup+0x1000, pattern(1, 0x2000))
	mem.put(0x100000, pattern(2, 0x3000))
	mem.put(0x101000, vmcoreinfoNote(sampleVmcoreinfo))
	vc, err := EmulateVmcore(hdr, &mem)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, vc.Size())
	if _, err := vc.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestNewFileRejects(t *testing.T) {
	good := goodCore(t)
	if _, err := NewFile(bytes.NewReader(good), int64(len(good))); err != nil {
		t.Fatalf("good core: %v", err)
	}
	const ph0 = 64      // the merged PT_NOTE
	const ph1 = 64 + 56 // the first PT_LOAD
	put16 := func(off int, v uint16) func([]byte) []byte {
		return func(b []byte) []byte { binary.LittleEndian.PutUint16(b[off:], v); return b }
	}
	put64 := func(off int, v uint64) func([]byte) []byte {
		return func(b []byte) []byte { binary.LittleEndian.PutUint64(b[off:], v); return b }
	}
	tests := []struct {
		name   string
		mutate func([]byte) []byte
		want   string // in the error; "" means NewFile succeeds and Notes fails
	}{
		{"empty", func([]byte) []byte { return nil }, "too small"},
		{"bad magic", func(b []byte) []byte { b[0] = 0; return b }, "magic"},
		{"32-bit", func(b []byte) []byte { b[elf.EI_CLASS] = 1; return b }, "ELFCLASS32"},
		{"big-endian", func(b []byte) []byte { b[elf.EI_DATA] = 2; return b }, "ELFDATA2MSB"},
		{"ident version", func(b []byte) []byte { b[elf.EI_VERSION] = 0; return b }, "version"},
		{"executable", put16(16, uint16(elf.ET_EXEC)), "ET_EXEC"},
		{"arm64", put16(18, uint16(elf.EM_AARCH64)), "EM_AARCH64"},
		{"e_ehsize", put16(52, 52), "e_ehsize"},
		{"e_phentsize", put16(54, 32), "e_phentsize"},
		{"no phdrs", put16(56, 0), "no program headers"},
		{"PN_XNUM", put16(56, pnXNum), "PN_XNUM"},
		{"too many phdrs", put16(56, MaxProgs+1), "more than"},
		{"phdr table past end", put64(32, 1<<40), "program header table"},
		{"phdr table wraps", put64(32, ^uint64(0)-8), "program header table"},
		{"phnum past end", func(b []byte) []byte { binary.LittleEndian.PutUint16(b[56:], 5000); return b[:8192] }, "program header table"},
		{"truncated", func(b []byte) []byte { return b[:100] }, "program header table"},
		{"PT_LOAD past end", put64(ph1+8, 1<<40), "PT_LOAD segment extends"},
		{"PT_LOAD size past end", put64(ph1+32, 1<<40), "PT_LOAD segment extends"},
		{"PT_LOAD wraps", put64(ph1+32, ^uint64(0)), "PT_LOAD segment extends"},
		{"PT_LOAD filesz > memsz", put64(ph1+40, 1), "p_filesz larger"},
		{"PT_LOAD paddr wraps", put64(ph1+24, ^uint64(0)), "wraps the physical"},
		{"PT_NOTE past end", put64(ph0+8, 1<<40), "PT_NOTE segment extends"},
		{"PT_NOTE size past end", put64(ph0+32, 1<<40), "PT_NOTE segment extends"},
		{"note descsz past segment", func(b []byte) []byte { binary.LittleEndian.PutUint32(b[4096+4:], 1<<20); return b }, ""},
		{"note namesz huge", func(b []byte) []byte { binary.LittleEndian.PutUint32(b[4096:], 0xffffffff); return b }, ""},
		{"note segment cut", put64(ph0+32, 20), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mutate(slices.Clone(good))
			f, err := NewFile(bytes.NewReader(b), int64(len(b)))
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("NewFile = %v, want an error containing %q", err, tc.want)
				}
				if !errors.Is(err, ErrFormat) {
					t.Errorf("error %v does not wrap ErrFormat", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Notes(); !errors.Is(err, ErrFormat) {
				t.Errorf("Notes = %v, want a format error", err)
			}
			if _, err := f.Vmcoreinfo(); !errors.Is(err, ErrFormat) {
				t.Errorf("Vmcoreinfo = %v, want a format error", err)
			}
		})
	}
}

func TestReadAtPhys(t *testing.T) {
	good := goodCore(t)
	f, err := NewFile(bytes.NewReader(good), int64(len(good)))
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8)
	if _, err := f.ReadAtPhys(got, 0x2ff8); err != nil {
		t.Fatal(err)
	}
	if want := pattern(1, 0x2000)[0x1ff8:]; !bytes.Equal(got, want) {
		t.Errorf("low copy: %x, want %x", got, want)
	}
	for _, a := range []uint64{0, 0x2ffc, 0x3000, 0xfffff, 0x103000, ^uint64(0) - 3} {
		if _, err := f.ReadAtPhys(make([]byte, 8), a); !errors.Is(err, ErrNotInCore) {
			t.Errorf("ReadAtPhys(%#x) = %v, want ErrNotInCore", a, err)
		}
	}

	// Adjacent ranges read as one, even when one of them was copied
	// aside; overlapping ones (a kernel-text PT_LOAD over RAM) are found
	// from either side.
	hdr, err := Build(Headers{
		RAM:            []Load{{PhysAddr: 0, Size: 0x100000, Offset: lowBackup}, {PhysAddr: 0x100000, Size: 0x100000, Offset: 0x100000}},
		VmcoreinfoAddr: 0x180000, VmcoreinfoSize: vmcoreinfoNoteSize,
	})
	if err != nil {
		t.Fatal(err)
	}
	var mem physMem
	mem.fill(lowBackup, 0x100000, 7)
	mem.fill(0x100000, 0x100000, 8)
	mem.put(0x180000, vmcoreinfoNote("A=1\n"))
	vc, err := EmulateVmcore(hdr, &mem)
	if err != nil {
		t.Fatal(err)
	}
	f, err = NewFile(vc, vc.Size())
	if err != nil {
		t.Fatal(err)
	}
	got = make([]byte, 0x2000)
	if n, err := f.ReadAtPhys(got, 0xff000); n != len(got) || err != nil {
		t.Fatalf("ReadAtPhys across ranges = %d, %v", n, err)
	}
	if !bytes.Equal(got[:0x1000], pattern(7, 0x100000)[0xff000:]) || !bytes.Equal(got[0x1000:], pattern(8, 0x1000)) {
		t.Errorf("ReadAtPhys across ranges read the wrong bytes")
	}
	f.byPA = append(f.byPA, Load{PhysAddr: 0x1000, Size: 0x10, Offset: 0})
	slices.SortStableFunc(f.byPA, byPhysAddr)
	if l, ok := f.LoadAt(0x2000); !ok || l.PhysAddr != 0 {
		t.Errorf("LoadAt behind an overlapping load = %v, %v", l, ok)
	}
}

func TestParseVmcoreinfo(t *testing.T) {
	v, err := ParseVmcoreinfo([]byte(sampleVmcoreinfo))
	if err != nil {
		t.Fatal(err)
	}
	str := func(f func() (string, error)) any { s, err := f(); return or(s, err) }
	u := func(f func(string) (uint64, error), k string) any { n, err := f(k); return or(n, err) }
	checks := []struct {
		what      string
		got, want any
	}{
		{"OSRelease", str(v.OSRelease), "6.12.17-khib"},
		{"BuildID", str(v.BuildID), "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"},
		{"PageSize", or(v.PageSize()), uint64(4096)},
		{"Symbol", u(v.Symbol, "mem_section"), uint64(0xffff88807ffd2000)},
		{"Symbol missing", u(v.Symbol, "nope"), "vmcoreinfo: no SYMBOL(nope): key not in vmcoreinfo"},
		{"Size", u(v.Size, "page"), uint64(64)},
		{"Offset", u(v.Offset, "page.private"), uint64(40)},
		{"Offset missing", u(v.Offset, "page.lru"), "vmcoreinfo: no OFFSET(page.lru): key not in vmcoreinfo"},
		{"Length", u(v.Length, "zone.free_area"), uint64(11)},
		{"Number", or(v.Number("SECTION_SIZE_BITS")), int64(27)},
		{"Number large", or(v.Number("PAGE_BUDDY_MAPCOUNT_VALUE")), int64(0xf0000000)},
		{"Number hex", or(v.Number("VMALLOC_START")), int64(-0x370000000000)},
		{"Number missing", or(v.Number("nope")), "vmcoreinfo: no NUMBER(nope): key not in vmcoreinfo"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if _, err := v.Symbol("nope"); !errors.Is(err, ErrNoKey) {
		t.Errorf("missing key error %v does not wrap ErrNoKey", err)
	}

	tests := []struct {
		name string
		text string
		key  string // present with value val, or absent if val == "-"
		val  string
		err  string
	}{
		{"empty", "", "OSRELEASE", "-", ""},
		{"cut last line dropped", "OSRELEASE=6.12\nSYMBOL(mem_section)=ffff88", "SYMBOL(mem_section)", "-", ""},
		{"NUL padding", "PAGESIZE=4096\n\x00\x00\x00", "PAGESIZE", "4096", ""},
		{"last value wins", "CRASHTIME=1\nCRASHTIME=2\n", "CRASHTIME", "2", ""},
		{"blank lines", "\n\nA=1\n\n", "A", "1", ""},
		{"value with =", "A=b=c\n", "A", "b=c", ""},
		{"no =", "OSRELEASE=6.12\nhello\n", "", "", "line 2"},
		{"no key", "=1\n", "", "", "no key"},
		{"NUL in line", "A=1\x002\n", "", "", "NUL"},
		{"too large", strings.Repeat("A=1\n", MaxVmcoreinfoSize/4+1), "", "", "more than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := ParseVmcoreinfo([]byte(tc.text))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrFormat) {
					t.Fatalf("ParseVmcoreinfo = %v, want a format error containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, ok := v[tc.key]
			if tc.val == "-" && ok || tc.val != "-" && got != tc.val {
				t.Errorf("%s = %q, %v; want %q", tc.key, got, ok, tc.val)
			}
		})
	}

	bad := []struct {
		text string
		call func(Vmcoreinfo) error
	}{
		{"PAGESIZE=4095\n", func(v Vmcoreinfo) error { _, err := v.PageSize(); return err }},
		{"PAGESIZE=0\n", func(v Vmcoreinfo) error { _, err := v.PageSize(); return err }},
		{"PAGESIZE=-4096\n", func(v Vmcoreinfo) error { _, err := v.PageSize(); return err }},
		{"SIZE(page)=+64\n", func(v Vmcoreinfo) error { _, err := v.Size("page"); return err }},
		{"SIZE(page)=0x40\n", func(v Vmcoreinfo) error { _, err := v.Size("page"); return err }},
		{"SYMBOL(x)=xyz\n", func(v Vmcoreinfo) error { _, err := v.Symbol("x"); return err }},
		{"SYMBOL(x)=\n", func(v Vmcoreinfo) error { _, err := v.Symbol("x"); return err }},
		{"SYMBOL(x)=ffff_8880\n", func(v Vmcoreinfo) error { _, err := v.Symbol("x"); return err }},
		{"NUMBER(x)=+1\n", func(v Vmcoreinfo) error { _, err := v.Number("x"); return err }},
		{"NUMBER(x)=0x\n", func(v Vmcoreinfo) error { _, err := v.Number("x"); return err }},
		{"NUMBER(x)=99999999999999999999\n", func(v Vmcoreinfo) error { _, err := v.Number("x"); return err }},
		{"BUILD-ID=xyz\n", func(v Vmcoreinfo) error { _, err := v.BuildID(); return err }},
		{"BUILD-ID=\n", func(v Vmcoreinfo) error { _, err := v.BuildID(); return err }},
		{"OSRELEASE=\n", func(v Vmcoreinfo) error { _, err := v.OSRelease(); return err }},
	}
	for _, tc := range bad {
		v, err := ParseVmcoreinfo([]byte(tc.text))
		if err != nil {
			t.Fatalf("%q: %v", tc.text, err)
		}
		key, _, _ := strings.Cut(tc.text, "=")
		if err := tc.call(v); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), key) {
			t.Errorf("%q: %v, want a format error naming %s", tc.text, err, key)
		}
	}
	// Older kernels printed some numbers negative.
	v, _ = ParseVmcoreinfo([]byte("NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=-129\nBUILD-ID=A1B2\n"))
	if n, err := v.Number("PAGE_BUDDY_MAPCOUNT_VALUE"); n != -129 || err != nil {
		t.Errorf("negative Number = %d, %v", n, err)
	}
	if id, err := v.BuildID(); id != "a1b2" || err != nil {
		t.Errorf("upper-case BuildID = %q, %v", id, err)
	}
}

// or folds a value and an error into one comparable value.
func or[T any](v T, err error) any {
	if err != nil {
		return err.Error()
	}
	return v
}

// hereNotes is /sys/kernel/notes of a 6.1 x86_64 kernel: a GNU build-id,
// two Linux notes and two Xen notes.
var hereNotes = []byte("" +
	"\x04\x00\x00\x00\x14\x00\x00\x00\x03\x00\x00\x00GNU\x00" +
	"\xe4\xf1\x8d\x9d\xc1\xd0\xe6\xfc\x2b\x17\xe9\x3e\x88\x5a\x64\x7b\x3c\x0a\x6f\xc1" +
	"\x06\x00\x00\x00\x04\x00\x00\x00\x01\x01\x00\x00Linux\x00\x00\x00\x00\x00\x00\x00" +
	"\x06\x00\x00\x00\x1e\x00\x00\x00\x00\x01\x00\x00Linux\x00\x00\x00" +
	"6.1.102-1.182.amzn2023.x86_64\x00\x00\x00" +
	"\x04\x00\x00\x00\x0c\x00\x00\x00\x13\x00\x00\x00Xen\x00\x00\x00\x00\x01\x00\x00\x00\x01\xff\xff\xff\x3f" +
	"\x04\x00\x00\x00\x08\x00\x00\x00\x12\x00\x00\x00Xen\x00\x00\xfe\x78\x03\x00\x00\x00\x00")

func TestBuildIDFromNotes(t *testing.T) {
	gnu := func(desc []byte) []byte { return appendNote(nil, "GNU", NoteTypeGNUBuildID, desc) }
	tests := []struct {
		name  string
		notes []byte
		want  string
		err   error
	}{
		{"real kernel", hereNotes, "e4f18d9dc1d0e6fc2b17e93e885a647b3c0a6fc1", nil},
		{"after other notes", append(appendNote(nil, "Linux", 6, []byte("x")), gnu(bytes.Repeat([]byte{0xab}, 20))...), strings.Repeat("ab", 20), nil},
		{"after an empty note", append(make([]byte, 12), gnu([]byte{1, 2, 3, 4})...), "01020304" + strings.Repeat("00", 16), nil},
		{"md5-sized, padded like vmcoreinfo", gnu(bytes.Repeat([]byte{0xcd}, 16)), strings.Repeat("cd", 16) + "00000000", nil},
		{"too long skipped", append(gnu(make([]byte, 21)), gnu([]byte{9})...), "09" + strings.Repeat("00", 19), nil},
		{"empty desc skipped", gnu(nil), "", ErrNoBuildID},
		{"wrong type", appendNote(nil, "GNU", 1, []byte{1}), "", ErrNoBuildID},
		{"name without NUL", func() []byte {
			b := gnu([]byte{1, 2, 3, 4})
			binary.LittleEndian.PutUint32(b, 3)
			return b
		}(), "", ErrNoBuildID},
		{"nothing", nil, "", ErrNoBuildID},
		{"truncated", hereNotes[:30], "", ErrFormat},
		{"desc past end", func() []byte {
			b := gnu([]byte{1, 2, 3, 4})
			binary.LittleEndian.PutUint32(b[4:], 0xfffffff0)
			return b
		}(), "", ErrFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := BuildIDFromNotes(tc.notes)
			if got != tc.want || (tc.err == nil) != (err == nil) || tc.err != nil && !errors.Is(err, tc.err) {
				t.Errorf("BuildIDFromNotes = %q, %v; want %q, %v", got, err, tc.want, tc.err)
			}
		})
	}
	// What the kernel prints as BUILD-ID and what it reads from its notes
	// compare equal.
	v, _ := ParseVmcoreinfo([]byte("BUILD-ID=e4f18d9dc1d0e6fc2b17e93e885a647b3c0a6fc1\n"))
	a, _ := v.BuildID()
	b, _ := BuildIDFromNotes(hereNotes)
	if a != b {
		t.Errorf("%q != %q", a, b)
	}
}

func TestParseNotes(t *testing.T) {
	notes, err := ParseNotes(hereNotes)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range notes {
		names = append(names, n.Name)
	}
	if got := strings.Join(names, ","); got != "GNU,Linux,Linux,Xen,Xen" {
		t.Errorf("names %s", got)
	}
	if string(notes[2].Desc) != "6.1.102-1.182.amzn2023.x86_64\x00" || notes[2].Off != 0x3c {
		t.Errorf("note 2 = %+v", notes[2])
	}
	// A's note buffer ends at the empty note, zeros after it.
	notes, err = ParseNotes(vmcoreinfoNote("A=1\n"))
	if err != nil || len(notes) != 1 {
		t.Errorf("vmcoreinfo buffer: %v, %+v", err, notes)
	}
}

func TestParseVmcoreinfoSysfs(t *testing.T) {
	tests := []struct {
		in         string
		addr, size uint64
		ok         bool
	}{
		{"0x0000000100c66000 1024\n", 0x100c66000, 0x1024, true},
		{"0x000000007fb2b000 1024", 0x7fb2b000, 0x1024, true},
		{"7fb2b000 0x1024\n", 0x7fb2b000, 0x1024, true},
		{"", 0, 0, false},
		{"\n", 0, 0, false},
		{"hello\n", 0, 0, false},
		{"0x0 1024\n", 0, 0, false},
		{"0x1000 0\n", 0, 0, false},
		{"0x1000 1024 7\n", 0, 0, false},
		{"0x1_000 1024\n", 0, 0, false},
		{"-0x1000 1024\n", 0, 0, false},
		{"0x10000000000000000 1024\n", 0, 0, false},
	}
	for _, tc := range tests {
		addr, size, err := ParseVmcoreinfoSysfs([]byte(tc.in))
		if (err == nil) != tc.ok || addr != tc.addr || size != tc.size {
			t.Errorf("ParseVmcoreinfoSysfs(%q) = %#x, %#x, %v", tc.in, addr, size, err)
		}
		if err != nil && !errors.Is(err, ErrFormat) {
			t.Errorf("%q: %v does not wrap ErrFormat", tc.in, err)
		}
	}
}
