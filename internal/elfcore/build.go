package elfcore

import (
	"bytes"
	"cmp"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Headers describes A's memory for B's kernel.
type Headers struct {
	// RAM lists A's memory, one PT_LOAD each. Offset is the physical
	// address where B's kernel reads the range; it must be congruent to
	// PhysAddr modulo the page size, so that every page of A is one page
	// of /proc/vmcore and can be mapped as such.
	//
	// Every Offset range, like the headers themselves and the note, must
	// lie outside B's usable RAM: B's kernel reads them with ioremap_cache
	// (arch/x86/kernel/crash_dump_64.c), which refuses RAM the running
	// kernel owns (arch/x86/mm/ioremap.c: __ioremap_caller), and read(2)
	// on /proc/vmcore then fails with EFAULT.
	RAM []Load
	// VmcoreinfoAddr and VmcoreinfoSize locate A's vmcoreinfo note, as
	// /sys/kernel/vmcoreinfo gives them (see ReadVmcoreinfoSysfs).
	VmcoreinfoAddr, VmcoreinfoSize uint64
}

// Build returns ELF64 core headers for h that B's kernel accepts as
// elfcorehdr= (fs/proc/vmcore.c: parse_crash_elf64_headers). The PT_NOTE
// comes first and the PT_LOADs follow in order of physical address.
func Build(h Headers) ([]byte, error) {
	if len(h.RAM) == 0 {
		return nil, fmt.Errorf("elfcore: no RAM ranges")
	}
	// One PT_NOTE plus the loads; e_phnum is 16 bits and vmcore.c has no
	// PN_XNUM support, and MaxProgs is below both.
	if len(h.RAM)+1 > MaxProgs {
		return nil, fmt.Errorf("elfcore: %d RAM ranges, at most %d fit", len(h.RAM), MaxProgs-1)
	}
	ram := slices.Clone(h.RAM)
	slices.SortFunc(ram, byPhysAddr)
	for i, l := range ram {
		switch {
		case l.Size == 0:
			return nil, fmt.Errorf("elfcore: RAM range at %#x is empty", l.PhysAddr)
		case l.PhysAddr+l.Size < l.PhysAddr || l.Offset+l.Size < l.Offset || l.Offset+l.Size > ^uint64(pageSize-1):
			// B's kernel rounds the end of p_offset+p_memsz up to a page.
			return nil, fmt.Errorf("elfcore: RAM range %v wraps the address space", l)
		case l.Offset%pageSize != l.PhysAddr%pageSize:
			return nil, fmt.Errorf("elfcore: RAM range %v: copy is not page-aligned like the original", l)
		case i > 0 && l.PhysAddr < ram[i-1].End():
			return nil, fmt.Errorf("elfcore: RAM ranges %v and %v overlap", ram[i-1], l)
		}
	}

	noteOff, err := noteSource(h, ram)
	if err != nil {
		return nil, err
	}

	var b bytes.Buffer
	b.Grow(ehdrSize + (len(ram)+1)*phdrSize)
	eh := elf.Header64{
		Type:      uint16(wantType),
		Machine:   uint16(wantMachine),
		Version:   uint32(elf.EV_CURRENT),
		Phoff:     ehdrSize, // vmcore.c ignores e_phoff: the table must follow the header
		Ehsize:    ehdrSize,
		Phentsize: phdrSize,
		Phnum:     uint16(len(ram) + 1),
	}
	copy(eh.Ident[:], elf.ELFMAG)
	eh.Ident[elf.EI_CLASS] = byte(wantClass)
	eh.Ident[elf.EI_DATA] = byte(wantData)
	eh.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	eh.Ident[elf.EI_OSABI] = byte(elf.ELFOSABI_NONE)
	binary.Write(&b, binary.LittleEndian, &eh)

	// vmcore.c merges the PT_NOTEs by overwriting the first entries of
	// the table (merge_note_headers_elf64), so the note must come first.
	// p_memsz is the whole note buffer, terminating empty note included:
	// the kernel walks notes until n_namesz == 0 and reads that header
	// from within p_memsz only if there is room for it.
	binary.Write(&b, binary.LittleEndian, &elf.Prog64{
		Type:   uint32(elf.PT_NOTE),
		Off:    noteOff,
		Paddr:  h.VmcoreinfoAddr,
		Filesz: h.VmcoreinfoSize,
		Memsz:  h.VmcoreinfoSize,
		Align:  noteAlign,
	})
	for _, l := range ram {
		// vmcore.c reads p_offset as the physical address to copy from
		// (process_ptload_program_headers_elf64) and keeps p_paddr,
		// p_vaddr and p_filesz as they are for readers of /proc/vmcore.
		// p_vaddr stays 0: A's direct map moves with KASLR and is not
		// known to userspace; B translates through vmcoreinfo instead.
		binary.Write(&b, binary.LittleEndian, &elf.Prog64{
			Type:   uint32(elf.PT_LOAD),
			Flags:  uint32(elf.PF_R | elf.PF_W | elf.PF_X),
			Off:    l.Offset,
			Paddr:  l.PhysAddr,
			Filesz: l.Size,
			Memsz:  l.Size,
		})
	}
	return b.Bytes(), nil
}

func byPhysAddr(a, b Load) int { return cmp.Compare(a.PhysAddr, b.PhysAddr) }

// noteSource checks the vmcoreinfo note's place and returns the physical
// address B's kernel must read it from: if the note lies in a range that
// was copied aside, B reads the copy.
func noteSource(h Headers, ram []Load) (uint64, error) {
	addr, size := h.VmcoreinfoAddr, h.VmcoreinfoSize
	switch {
	// Without a note B's kernel gets zero bytes of notes, vmalloc(0)
	// fails and /proc/vmcore is never created.
	case size == 0:
		return 0, fmt.Errorf("elfcore: no vmcoreinfo note (size 0); B's kernel refuses a core without notes")
	// A PT_NOTE shorter than one note header makes vmcore.c read past
	// its buffer (a zero size oopses on ZERO_SIZE_PTR).
	case size < nhdrSize:
		return 0, fmt.Errorf("elfcore: vmcoreinfo note of %d bytes is shorter than a note header", size)
	case size > MaxNoteSize:
		return 0, fmt.Errorf("elfcore: vmcoreinfo note of %d bytes exceeds B's kmalloc limit of %d", size, MaxNoteSize)
	case addr+size < addr:
		return 0, fmt.Errorf("elfcore: vmcoreinfo note at %#x wraps the address space", addr)
	}
	for _, l := range ram {
		if addr >= l.End() || addr+size <= l.PhysAddr {
			continue
		}
		if addr < l.PhysAddr || addr+size > l.End() {
			if l.Offset != l.PhysAddr {
				return 0, fmt.Errorf("elfcore: vmcoreinfo note [%#x-%#x] straddles the edge of copied range %v", addr, addr+size-1, l)
			}
			continue
		}
		return l.Offset + (addr - l.PhysAddr), nil
	}
	return addr, nil
}

// ReadVmcoreinfoSysfs reads the physical address and size of the running
// kernel's vmcoreinfo note from path, normally /sys/kernel/vmcoreinfo.
func ReadVmcoreinfoSysfs(path string) (addr, size uint64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	// The file is one short line; anything longer is not it.
	b, err := io.ReadAll(io.LimitReader(f, 256))
	if err != nil {
		return 0, 0, fmt.Errorf("reading %s: %w", path, err)
	}
	addr, size, err = ParseVmcoreinfoSysfs(b)
	if err != nil {
		return 0, 0, fmt.Errorf("reading %s: %w", path, err)
	}
	return addr, size, nil
}

// ParseVmcoreinfoSysfs parses the text of /sys/kernel/vmcoreinfo, which
// kernel/ksysfs.c writes as "%pa %x": the address in hex with 0x, the size
// in hex without (0x1024, 4132 bytes, on x86_64).
func ParseVmcoreinfoSysfs(b []byte) (addr, size uint64, err error) {
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("vmcoreinfo location %q is not \"<address> <size>\": %w", clip(b), ErrFormat)
	}
	addr, err = parseHex(f[0])
	if err != nil {
		return 0, 0, fmt.Errorf("vmcoreinfo address %q: %w", f[0], ErrFormat)
	}
	size, err = parseHex(f[1])
	if err != nil {
		return 0, 0, fmt.Errorf("vmcoreinfo size %q: %w", f[1], ErrFormat)
	}
	if addr == 0 || size == 0 {
		return 0, 0, fmt.Errorf("the kernel published no vmcoreinfo note (%q): %w", clip(b), ErrFormat)
	}
	return addr, size, nil
}

// parseHex parses hex digits with an optional 0x, and nothing else (no
// underscores, which strconv's base 0 would allow).
func parseHex(s string) (uint64, error) {
	return strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
}

func clip(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 64 {
		s = s[:64] + "..."
	}
	return s
}
