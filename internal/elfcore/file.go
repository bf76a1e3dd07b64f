package elfcore

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
)

// File is an ELF64 core, normally B's /proc/vmcore, read through an
// io.ReaderAt. Only the header and program headers are read by NewFile;
// notes and memory are read when asked for.
type File struct {
	r     io.ReaderAt
	size  int64
	progs []elf.ProgHeader
	loads []Load // PT_LOADs in file order
	byPA  []Load // the same, sorted by physical address, for ReadAtPhys

	closer io.Closer
}

// Open opens the core at path, normally /proc/vmcore, whose size the
// kernel reports through stat.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening core: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("opening core: %w", err)
	}
	c, err := NewFile(f, fi.Size())
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	c.closer = f
	return c, nil
}

// Close closes the file Open opened; for a File from NewFile it does
// nothing.
func (f *File) Close() error {
	if f.closer == nil {
		return nil
	}
	err := f.closer.Close()
	f.closer = nil
	return err
}

// NewFile reads the headers of an ELF64 x86_64 core of the given size
// from r. It checks what B's kernel checks (vmcore.c:
// parse_crash_elf64_headers) and that every PT_LOAD and PT_NOTE lies
// within the file.
func NewFile(r io.ReaderAt, size int64) (*File, error) {
	if size < ehdrSize {
		return nil, &FormatError{0, "file too small for an ELF64 header", size}
	}
	var raw [ehdrSize]byte
	if err := readFull(r, raw[:], 0); err != nil {
		return nil, fmt.Errorf("reading ELF header: %w", err)
	}
	var eh elf.Header64
	binary.Read(bytes.NewReader(raw[:]), binary.LittleEndian, &eh)
	switch {
	case string(eh.Ident[:4]) != elf.ELFMAG:
		return nil, &FormatError{0, "bad ELF magic", fmt.Sprintf("%q", eh.Ident[:4])}
	case elf.Class(eh.Ident[elf.EI_CLASS]) != wantClass:
		return nil, &FormatError{elf.EI_CLASS, "not a 64-bit ELF", elf.Class(eh.Ident[elf.EI_CLASS])}
	case elf.Data(eh.Ident[elf.EI_DATA]) != wantData:
		return nil, &FormatError{elf.EI_DATA, "not little-endian", elf.Data(eh.Ident[elf.EI_DATA])}
	case elf.Version(eh.Ident[elf.EI_VERSION]) != elf.EV_CURRENT:
		return nil, &FormatError{elf.EI_VERSION, "unknown ELF version", elf.Version(eh.Ident[elf.EI_VERSION])}
	case elf.Type(eh.Type) != wantType:
		return nil, &FormatError{16, "not a core file", elf.Type(eh.Type)}
	case elf.Machine(eh.Machine) != wantMachine:
		return nil, &FormatError{18, "not an x86_64 core", elf.Machine(eh.Machine)}
	case elf.Version(eh.Version) != elf.EV_CURRENT:
		return nil, &FormatError{20, "unknown ELF version", eh.Version}
	case eh.Ehsize != ehdrSize:
		return nil, &FormatError{52, "wrong e_ehsize", eh.Ehsize}
	case eh.Phentsize != phdrSize:
		return nil, &FormatError{54, "wrong e_phentsize", eh.Phentsize}
	case eh.Phnum == 0:
		return nil, &FormatError{56, "no program headers", nil}
	case eh.Phnum == pnXNum:
		return nil, &FormatError{56, "extended program header numbering (PN_XNUM) is not supported", nil}
	case eh.Phnum > MaxProgs:
		return nil, &FormatError{56, fmt.Sprintf("more than %d program headers", MaxProgs), eh.Phnum}
	}
	tableLen := uint64(eh.Phnum) * phdrSize
	if eh.Phoff > uint64(size) || tableLen > uint64(size)-eh.Phoff {
		return nil, &FormatError{32, "program header table extends past the end of the file", fmt.Sprintf("e_phoff %#x, %d entries, file size %#x", eh.Phoff, eh.Phnum, size)}
	}
	table := make([]byte, tableLen)
	if err := readFull(r, table, int64(eh.Phoff)); err != nil {
		return nil, fmt.Errorf("reading program headers at %#x: %w", eh.Phoff, err)
	}

	f := &File{r: r, size: size, progs: make([]elf.ProgHeader, eh.Phnum)}
	br := bytes.NewReader(table)
	for i := range f.progs {
		off := int64(eh.Phoff) + int64(i)*phdrSize
		var p elf.Prog64
		binary.Read(br, binary.LittleEndian, &p)
		ph := elf.ProgHeader{
			Type: elf.ProgType(p.Type), Flags: elf.ProgFlag(p.Flags),
			Off: p.Off, Vaddr: p.Vaddr, Paddr: p.Paddr,
			Filesz: p.Filesz, Memsz: p.Memsz, Align: p.Align,
		}
		f.progs[i] = ph
		if ph.Type != elf.PT_LOAD && ph.Type != elf.PT_NOTE {
			continue
		}
		if ph.Off > uint64(size) || ph.Filesz > uint64(size)-ph.Off {
			return nil, &FormatError{off, fmt.Sprintf("program header %d: %v segment extends past the end of the file", i, ph.Type), fmt.Sprintf("p_offset %#x, p_filesz %#x, file size %#x", ph.Off, ph.Filesz, size)}
		}
		if ph.Type == elf.PT_NOTE {
			if ph.Filesz > MaxNotesSegment {
				return nil, &FormatError{off, fmt.Sprintf("program header %d: note segment larger than %d bytes", i, MaxNotesSegment), ph.Filesz}
			}
			continue
		}
		if ph.Filesz > ph.Memsz {
			return nil, &FormatError{off, fmt.Sprintf("program header %d: PT_LOAD with p_filesz larger than p_memsz", i), fmt.Sprintf("%#x > %#x", ph.Filesz, ph.Memsz)}
		}
		if ph.Paddr+ph.Filesz < ph.Paddr {
			return nil, &FormatError{off, fmt.Sprintf("program header %d: PT_LOAD wraps the physical address space", i), fmt.Sprintf("p_paddr %#x, p_filesz %#x", ph.Paddr, ph.Filesz)}
		}
		if ph.Filesz > 0 {
			f.loads = append(f.loads, Load{PhysAddr: ph.Paddr, Size: ph.Filesz, Offset: ph.Off})
		}
	}
	f.byPA = slices.Clone(f.loads)
	slices.SortStableFunc(f.byPA, byPhysAddr)
	return f, nil
}

// Size returns the size of the file.
func (f *File) Size() int64 { return f.size }

// Progs returns the program headers as the file has them.
func (f *File) Progs() []elf.ProgHeader { return slices.Clone(f.progs) }

// Loads returns the PT_LOAD segments that hold bytes, in file order: in
// /proc/vmcore, PhysAddr is A's address (p_paddr, which vmcore.c leaves
// alone) and Offset is where the bytes are in the file (p_offset, which
// vmcore.c rewrites).
func (f *File) Loads() []Load { return slices.Clone(f.loads) }

// Notes returns the notes of every PT_NOTE segment. In /proc/vmcore there is
// one, which vmcore.c merged from the PT_NOTEs of the headers it was given.
func (f *File) Notes() ([]Note, error) {
	var all []Note
	total := uint64(0)
	for _, p := range f.progs {
		if p.Type != elf.PT_NOTE || p.Filesz == 0 {
			continue
		}
		// Each segment was checked against the file size and
		// MaxNotesSegment; bound their sum as well.
		total += p.Filesz
		if total > MaxNotesSegment {
			return nil, &FormatError{int64(p.Off), "note segments too large together", total}
		}
		b := make([]byte, p.Filesz)
		if err := readFull(f.r, b, int64(p.Off)); err != nil {
			return nil, fmt.Errorf("reading note segment at %#x: %w", p.Off, err)
		}
		notes, err := parseNotes(b, int64(p.Off))
		if err != nil {
			return nil, err
		}
		all = append(all, notes...)
	}
	return all, nil
}

// Vmcoreinfo returns the parsed VMCOREINFO note of A's kernel.
func (f *File) Vmcoreinfo() (Vmcoreinfo, error) {
	notes, err := f.Notes()
	if err != nil {
		return nil, err
	}
	return VmcoreinfoFromNotes(notes)
}

// VmcoreinfoFromNotes parses the first VMCOREINFO note among notes.
func VmcoreinfoFromNotes(notes []Note) (Vmcoreinfo, error) {
	for _, n := range notes {
		if n.Name == NoteNameVmcoreinfo && n.Type == NoteTypeVmcoreinfo {
			v, err := ParseVmcoreinfo(n.Desc)
			if err != nil {
				return nil, fmt.Errorf("note at %#x: %w", n.Off, err)
			}
			return v, nil
		}
	}
	return nil, ErrNoVmcoreinfo
}

// LoadAt returns the PT_LOAD holding physical address a. Loads may
// overlap (kexec-tools adds one for the kernel's text over a RAM range), so
// it looks back from the last load that starts at or below a.
func (f *File) LoadAt(a uint64) (Load, bool) {
	i, _ := slices.BinarySearchFunc(f.byPA, a, func(l Load, t uint64) int {
		if l.PhysAddr <= t {
			return -1
		}
		return 1
	})
	for i--; i >= 0; i-- {
		if a < f.byPA[i].End() {
			return f.byPA[i], true
		}
	}
	return Load{}, false
}

// readFull reads len(p) bytes at off; an io.EOF that comes with all of
// them, which io.ReaderAt allows, is not an error.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// ErrNotInCore is returned by ReadAtPhys for an address no PT_LOAD covers.
var ErrNotInCore = errors.New("elfcore: physical address not in the core")

// ReadAtPhys reads len(p) bytes of A's memory at physical address addr,
// across adjacent PT_LOADs if need be. It is how B follows A's pointers
// (mem_section, struct pages) once translated to physical addresses.
func (f *File) ReadAtPhys(p []byte, addr uint64) (int, error) {
	n := 0
	for n < len(p) {
		a := addr + uint64(n)
		if a < addr {
			return n, fmt.Errorf("reading %d bytes at %#x: %w", len(p), addr, ErrNotInCore)
		}
		l, ok := f.LoadAt(a)
		if !ok {
			return n, fmt.Errorf("reading at %#x: %w", a, ErrNotInCore)
		}
		chunk := min(uint64(len(p)-n), l.End()-a)
		if err := readFull(f.r, p[n:n+int(chunk)], int64(l.Offset+(a-l.PhysAddr))); err != nil {
			return n, fmt.Errorf("reading %#x from the core: %w", a, err)
		}
		n += int(chunk)
	}
	return n, nil
}
