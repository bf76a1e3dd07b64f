// Package elfcore builds and reads the ELF64 core headers through which a helper kernel sees the memory of the kernel it was started from.
//
// A (the running kernel) builds the headers with Build and places them as a
// kexec segment; B (the helper) is started with elfcorehdr=<their address>
// and its kernel turns them into /proc/vmcore (fs/proc/vmcore.c). B reads
// /proc/vmcore with NewFile. The same Load type describes a range on both
// sides: in A, Offset is the physical address where the bytes are; in
// /proc/vmcore, it is the file offset where the kernel put them.
package elfcore

import (
	"debug/elf"
	"errors"
	"fmt"
)

// Load is one range of A's memory.
type Load struct {
	// PhysAddr is the range's physical address in A's view (p_paddr).
	PhysAddr uint64
	// Size is the range's length in bytes (p_filesz and p_memsz).
	Size uint64
	// Offset is where the bytes are (p_offset). In headers built for B's
	// kernel it is a physical address, equal to PhysAddr unless the range
	// was copied aside (A's low memory, which B reuses). In /proc/vmcore
	// it is an offset within that file.
	Offset uint64
}

// End returns the first physical address after the range.
func (l Load) End() uint64 { return l.PhysAddr + l.Size }

func (l Load) String() string {
	if l.Offset == l.PhysAddr {
		return fmt.Sprintf("[%#x-%#x]", l.PhysAddr, l.PhysAddr+l.Size-1)
	}
	return fmt.Sprintf("[%#x-%#x]@%#x", l.PhysAddr, l.PhysAddr+l.Size-1, l.Offset)
}

// Sizes fixed by the ELF64 format and by x86_64.
const (
	ehdrSize  = 64 // sizeof(Elf64_Ehdr)
	phdrSize  = 56 // sizeof(Elf64_Phdr)
	nhdrSize  = 12 // sizeof(Elf64_Nhdr): namesz, descsz, type, 4 bytes each
	pageSize  = 4096
	pnXNum    = 0xffff // PN_XNUM: e_phnum escape that vmcore.c does not understand
	noteAlign = 4      // Linux pads note names and descriptors to 4 bytes in both classes
)

// Limits that keep builder and reader within what B's kernel accepts and
// away from allocations a hostile header could ask for.
const (
	// MaxProgs bounds the program headers of a core. x86's e820 table
	// holds at most E820_MAX_ENTRIES (128 + 3*MAX_NUMNODES, 3200 with
	// 1024 nodes) ranges, and khib needs one PT_LOAD per range plus a note.
	MaxProgs = 8192
	// MaxNoteSize bounds one PT_NOTE that Build writes: vmcore.c kmallocs
	// p_memsz bytes for each (update_note_header_size_elf64), and kmalloc
	// stops at KMALLOC_MAX_SIZE, 4 MiB on x86_64.
	MaxNoteSize = 4 << 20
	// MaxNotesSegment bounds the note segment NewFile reads whole. In
	// /proc/vmcore it holds the merged notes of A plus any device dumps.
	MaxNotesSegment = 64 << 20
	// MaxVmcoreinfoSize bounds the VMCOREINFO text: the kernel keeps it
	// in one page (VMCOREINFO_BYTES), at most 64 KiB on any architecture.
	MaxVmcoreinfoSize = 64 << 10
)

// Note types and names khib looks for.
const (
	// NoteNameVmcoreinfo and NoteTypeVmcoreinfo identify A's vmcoreinfo
	// note (kernel/vmcore_info.c: update_vmcoreinfo_note).
	NoteNameVmcoreinfo = "VMCOREINFO"
	NoteTypeVmcoreinfo = 0
	// NoteNameGNU and NoteTypeGNUBuildID identify the kernel's build-id
	// note in /sys/kernel/notes (NT_GNU_BUILD_ID).
	NoteNameGNU        = "GNU"
	NoteTypeGNUBuildID = 3
	// BuildIDSize is the length the kernel gives every build-id it prints
	// (BUILD_ID_SIZE_MAX): shorter ones are padded with zero bytes.
	BuildIDSize = 20
)

var (
	// ErrFormat is wrapped by every error about malformed headers, notes
	// or vmcoreinfo text.
	ErrFormat = errors.New("elfcore: malformed input")
	// ErrNoVmcoreinfo means the core holds no VMCOREINFO note.
	ErrNoVmcoreinfo = errors.New("elfcore: no VMCOREINFO note")
	// ErrNoKey is wrapped by Vmcoreinfo helpers when a key is missing.
	ErrNoKey = errors.New("key not in vmcoreinfo")
	// ErrNoBuildID means a note sequence holds no GNU build-id note.
	ErrNoBuildID = errors.New("elfcore: no GNU build-id note")
)

// FormatError reports where in the input a value was wrong.
type FormatError struct {
	Off int64
	Msg string
	Val any
}

func (e *FormatError) Error() string {
	msg := fmt.Sprintf("elfcore: %s at offset %#x", e.Msg, e.Off)
	if e.Val != nil {
		msg += fmt.Sprintf(": %v", e.Val)
	}
	return msg
}

func (e *FormatError) Unwrap() error { return ErrFormat }

// Values Build writes and NewFile insists on, named as in debug/elf so that
// errors print them by name.
const (
	wantClass   = elf.ELFCLASS64
	wantData    = elf.ELFDATA2LSB
	wantType    = elf.ET_CORE
	wantMachine = elf.EM_X86_64
)

func alignUp(x, a uint64) (uint64, bool) {
	y := (x + a - 1) &^ (a - 1)
	return y, y >= x
}
