package elfcore

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
)

// Vmcore is /proc/vmcore as B's kernel would build it from a set of core
// headers and A's memory. It lets tests check headers and the code that
// reads /proc/vmcore without booting a helper kernel.
type Vmcore struct {
	// Warnings are the messages B's kernel would print with pr_warn while
	// reading the headers ("Exceeded p_memsz...", "Zero PT_NOTE...").
	// Headers from Build must produce none.
	Warnings []string

	head   []byte // ELF header and program headers, page-rounded
	notes  []byte // merged notes, page-rounded
	chunks []vmcoreChunk
	size   int64
	mem    io.ReaderAt
}

type vmcoreChunk struct{ off, paddr, size uint64 }

// EmulateVmcore does what B's kernel does with elfcorehdr= (fs/proc/vmcore.c:
// parse_crash_elf64_headers, merge_note_headers_elf64,
// process_ptload_program_headers_elf64): check the header, merge the
// PT_NOTEs into one note segment after the program headers, and lay the
// PT_LOADs out page by page after it. oldmem is A's physical memory, read
// at physical addresses. Where the kernel would refuse the headers or
// fail, EmulateVmcore returns an error saying why.
func EmulateVmcore(elfcorehdr []byte, oldmem io.ReaderAt) (*Vmcore, error) {
	if len(elfcorehdr) < ehdrSize {
		return nil, fmt.Errorf("vmcore: %d bytes of headers: Core image elf header not found", len(elfcorehdr))
	}
	var eh elf.Header64
	binary.Read(bytes.NewReader(elfcorehdr), binary.LittleEndian, &eh)
	if string(eh.Ident[:4]) != elf.ELFMAG {
		return nil, fmt.Errorf("vmcore: Core image elf header not found")
	}
	if eh.Type != uint16(elf.ET_CORE) || eh.Machine != uint16(elf.EM_X86_64) ||
		eh.Ident[elf.EI_CLASS] != byte(elf.ELFCLASS64) ||
		eh.Ident[elf.EI_VERSION] != byte(elf.EV_CURRENT) || eh.Version != uint32(elf.EV_CURRENT) ||
		eh.Ehsize != ehdrSize || eh.Phentsize != phdrSize || eh.Phnum == 0 {
		return nil, fmt.Errorf("vmcore: Core image elf header is not sane")
	}
	// The kernel reads the table right after the header, whatever
	// e_phoff says.
	n := int(eh.Phnum)
	if len(elfcorehdr) < ehdrSize+n*phdrSize {
		return nil, fmt.Errorf("vmcore: headers hold %d bytes, %d program headers need %d", len(elfcorehdr), n, ehdrSize+n*phdrSize)
	}
	progs := make([]elf.Prog64, n)
	binary.Read(bytes.NewReader(elfcorehdr[ehdrSize:]), binary.LittleEndian, progs)

	v := &Vmcore{mem: oldmem}

	// update_note_header_size_elf64: each PT_NOTE's p_memsz becomes the
	// size of the notes found in it.
	nrNote := 0
	var notes []byte
	for i := range progs {
		p := &progs[i]
		if p.Type != uint32(elf.PT_NOTE) {
			continue
		}
		nrNote++
		max := p.Memsz
		switch {
		case max == 0:
			return nil, fmt.Errorf("vmcore: PT_NOTE %d has p_memsz 0: the kernel dereferences kmalloc(0)'s ZERO_SIZE_PTR", i)
		case max < nhdrSize:
			return nil, fmt.Errorf("vmcore: PT_NOTE %d has p_memsz %d: the kernel reads a note header past its buffer", i, max)
		case max > MaxNoteSize:
			return nil, fmt.Errorf("vmcore: PT_NOTE %d has p_memsz %#x: kmalloc fails (-ENOMEM)", i, max)
		}
		buf := make([]byte, max)
		if err := readFull(oldmem, buf, int64(p.Off)); err != nil {
			return nil, fmt.Errorf("vmcore: reading PT_NOTE %d at %#x: %w", i, p.Off, err)
		}
		real := uint64(0)
		for {
			if real+nhdrSize > max {
				// The kernel reads this header past its buffer.
				v.Warnings = append(v.Warnings, fmt.Sprintf("PT_NOTE %d: notes fill p_memsz with no empty note after them", i))
				break
			}
			namesz := binary.LittleEndian.Uint32(buf[real:])
			descsz := binary.LittleEndian.Uint32(buf[real+4:])
			if namesz == 0 {
				break
			}
			sz := nhdrSize + (uint64(namesz)+3)&^3 + (uint64(descsz)+3)&^3
			if real+sz > max {
				v.Warnings = append(v.Warnings, fmt.Sprintf("Warning: Exceeded p_memsz, dropping PT_NOTE entry n_namesz=0x%x, n_descsz=0x%x", namesz, descsz))
				break
			}
			real += sz
		}
		if real == 0 {
			v.Warnings = append(v.Warnings, "Warning: Zero PT_NOTE entries found")
		}
		p.Memsz = real
		notes = append(notes, buf[:real]...)
	}
	// merge_note_headers_elf64: vmalloc(0) fails when there are no notes.
	if len(notes) == 0 {
		return nil, fmt.Errorf("vmcore: no notes (%d PT_NOTE): vmalloc(0) fails and the kernel prints \"Kdump: vmcore not initialized\"", nrNote)
	}
	notesSz, _ := alignUp(uint64(len(notes)), pageSize)
	v.notes = make([]byte, notesSz)
	copy(v.notes, notes)

	// The merged PT_NOTE replaces the first nrNote entries, whatever they
	// are: the kernel assumes the PT_NOTEs come first.
	out := make([]elf.Prog64, 0, n-nrNote+1)
	noteOff, _ := alignUp(uint64(ehdrSize+(n-nrNote+1)*phdrSize), pageSize)
	out = append(out, elf.Prog64{Type: uint32(elf.PT_NOTE), Off: noteOff, Filesz: uint64(len(notes)), Memsz: uint64(len(notes)), Align: 4})
	out = append(out, progs[nrNote:]...)
	headSz, _ := alignUp(uint64(ehdrSize+len(out)*phdrSize), pageSize)

	// process_ptload_program_headers_elf64: p_offset is the physical
	// address to read; it becomes the offset in /proc/vmcore.
	off := headSz + notesSz
	for i := range out {
		p := &out[i]
		if p.Type != uint32(elf.PT_LOAD) {
			continue
		}
		start := p.Off &^ (pageSize - 1)
		end, ok := alignUp(p.Off+p.Memsz, pageSize)
		if !ok || p.Off+p.Memsz < p.Off {
			return nil, fmt.Errorf("vmcore: PT_LOAD at %#x+%#x wraps", p.Off, p.Memsz)
		}
		v.chunks = append(v.chunks, vmcoreChunk{off: off, paddr: start, size: end - start})
		p.Off = off + (p.Off - start)
		off += end - start
	}
	if off > 1<<62 {
		return nil, fmt.Errorf("vmcore: %#x bytes", off)
	}
	v.size = int64(off)

	eh.Phnum = uint16(len(out))
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, &eh)
	binary.Write(&b, binary.LittleEndian, out)
	v.head = make([]byte, headSz)
	copy(v.head, b.Bytes())
	return v, nil
}

// Size returns the size /proc/vmcore would have.
func (v *Vmcore) Size() int64 { return v.size }

// ReadAt reads /proc/vmcore as read_vmcore would.
func (v *Vmcore) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("vmcore: negative offset %d", off)
	}
	n := 0
	for n < len(p) {
		o := uint64(off) + uint64(n)
		if o >= uint64(v.size) {
			return n, io.EOF
		}
		var m int
		switch h, no := uint64(len(v.head)), uint64(len(v.notes)); {
		case o < h:
			m = copy(p[n:], v.head[o:])
		case o < h+no:
			m = copy(p[n:], v.notes[o-h:])
		default:
			for _, c := range v.chunks {
				if o < c.off || o >= c.off+c.size {
					continue
				}
				want := min(uint64(len(p)-n), c.off+c.size-o)
				if err := readFull(v.mem, p[n:n+int(want)], int64(c.paddr+(o-c.off))); err != nil {
					return n, fmt.Errorf("vmcore: reading old memory at %#x: %w", c.paddr+(o-c.off), err)
				}
				m = int(want)
				break
			}
		}
		if m == 0 {
			return n, fmt.Errorf("vmcore: offset %#x maps to nothing", o)
		}
		n += m
	}
	return n, nil
}
