package kexec

import (
	"fmt"
	"sort"
	"strings"
)

// PageSize is the x86_64 base page size that kexec segments are built of.
const PageSize = 4096

// Range is a physical address range [Start, End).
type Range struct{ Start, End uint64 }

// Size returns the range's length in bytes.
func (r Range) Size() uint64 { return r.End - r.Start }

func (r Range) String() string { return fmt.Sprintf("%#x-%#x", r.Start, r.End-1) }

// Segment is one piece of memory handed to kexec_load: Buf is copied to
// physical address Mem, and the rest of Memsz is zero-filled.
type Segment struct {
	Name  string
	Buf   []byte
	Mem   uint64
	Memsz uint64
}

// Defaults for where a helper kernel runs.
var (
	// DefaultLowWindow is the low memory given to a helper as RAM. Every
	// x86 kernel needs some memory below 1 MiB for its real-mode
	// trampoline (arch/x86/realmode/init.c). This window stays clear of
	// A's own trampoline, which the kernel allocates top-down below
	// 640 KiB and which A needs again to bring secondary CPUs back:
	// a window up to 639 KiB made A reset on its way back with 2 CPUs.
	DefaultLowWindow = Range{0x10000, 0x50000}
	// DefaultReserveTop is kept at the top of R, out of the helper's
	// RAM: it holds the backup of A's low window and, later, data that A
	// and the helper exchange.
	DefaultReserveTop uint64 = 2 << 20
)

// HelperSpec describes a helper kernel to place inside the reserved
// region R.
type HelperSpec struct {
	Kernel     *BzImage
	Initrd     []byte
	Cmdline    string
	Region     Range       // R
	LowWindow  Range       // low memory the helper may use as RAM
	ReserveTop uint64      // bytes at the top of R kept out of the helper's RAM
	Firmware   []E820Entry // the machine's firmware memory map (A's /sys/firmware/memmap)
	// CoreHeaders, when set, are ELF core headers describing A's memory.
	// They go into the reserved top of R, right after the low window's
	// backup, and the helper gets elfcorehdr= pointing at them. They must
	// lie outside the helper's RAM: inside it, the helper's kernel
	// overwrites them before /proc/vmcore is set up.
	CoreHeaders []byte
	// CoreHeadersFor, when set, builds CoreHeaders once the backup's
	// address is known (the headers point at the backup).
	CoreHeadersFor func(backup Range) ([]byte, error)
}

// HelperPlan is where everything of a helper goes, ready for kexec_load.
type HelperPlan struct {
	Segments  []Segment
	Entry     uint64      // the purgatory
	E820      []E820Entry // the helper's memory map
	Cmdline   string      // with the jump-back placeholder
	Backup    Range       // where the purgatory copies A's low window
	Core      Range       // the ELF core headers, if any
	Kernel    Range       // load address .. + init_size
	Initrd    Range
	HelperRAM Range // the part of R the helper uses as RAM
}

// JumpBackParam is the command-line parameter that the purgatory fills in
// with A's jump-back entry, as 16 hex digits.
const JumpBackParam = "khib.jumpback="

const jumpBackPlaceholder = JumpBackParam + "0x0000000000000000"

// HelperHeadroom is the memory a helper needs beyond its kernel and its
// initramfs (RegionNeeded counts the initramfs twice: as loaded and as
// unpacked): the kernel's own allocations, the Go runtime and working
// buffers. Measured peaks of khib's resident set in the helpers: 11-32
// MiB saving (1-4 GiB guests), 8-27 MiB restoring, about 45 MiB uploading
// to S3 (8 MiB parts, two in flight); 80 MiB leaves room above the
// largest. It was 96 MiB until the S3 client made khib's binary 3 MB
// larger and the helper stopped fitting a 128 MiB R.
const HelperHeadroom = 80 << 20

// RegionNeeded is how large R must be for a helper with this kernel and
// an initramfs of initrdSize bytes.
func RegionNeeded(k *BzImage, initrdSize uint64) uint64 {
	return alignUp(uint64(k.InitSize), 2<<20) + 2*alignUp(initrdSize, PageSize) +
		3*PageSize + PageSize + alignUp(uint64(k.CmdlineSize)+1, PageSize) +
		HelperHeadroom + DefaultReserveTop + uint64(k.KernelAlignment)
}

// PlanHelper decides where the helper's kernel, boot_params, command
// line, purgatory and initramfs go inside R, and builds its memory map.
func PlanHelper(s HelperSpec) (*HelperPlan, error) {
	k := s.Kernel
	if k == nil {
		return nil, fmt.Errorf("helper plan: no kernel")
	}
	if s.Region.Start%PageSize != 0 || s.Region.End%PageSize != 0 || s.Region.End <= s.Region.Start {
		return nil, fmt.Errorf("helper plan: region %v is not page aligned", s.Region)
	}
	if s.ReserveTop%PageSize != 0 || s.ReserveTop < s.LowWindow.Size() {
		return nil, fmt.Errorf("helper plan: reserve of %d bytes cannot hold the low window backup", s.ReserveTop)
	}
	if need := RegionNeeded(k, uint64(len(s.Initrd))); s.Region.Size() < need {
		return nil, fmt.Errorf("helper plan: reserved region %v is %d MiB, the helper needs %d MiB",
			s.Region, s.Region.Size()>>20, (need+(1<<20)-1)>>20)
	}
	p := &HelperPlan{HelperRAM: Range{s.Region.Start, s.Region.End - s.ReserveTop}}
	p.Backup = BackupRange(s.Region, s.ReserveTop, s.LowWindow)
	core := s.CoreHeaders
	if s.CoreHeadersFor != nil {
		var err error
		if core, err = s.CoreHeadersFor(p.Backup); err != nil {
			return nil, err
		}
	}
	var extra []string
	if len(core) > 0 {
		start := alignUp(p.Backup.End, PageSize)
		p.Core = Range{start, start + uint64(len(core))}
		if alignUp(p.Core.End, PageSize) > s.Region.End {
			return nil, fmt.Errorf("helper plan: %d bytes of core headers do not fit in the reserve at the top of R", len(core))
		}
		extra = append(extra, fmt.Sprintf("elfcorehdr=%#x", p.Core.Start))
	}

	kaddr := alignUp(s.Region.Start, uint64(k.KernelAlignment))
	p.Kernel = Range{kaddr, kaddr + uint64(k.InitSize)}

	// boot_params, command line and purgatory share one segment right
	// after the kernel's init_size.
	cmdline := strings.Join(append(append([]string{s.Cmdline}, extra...), jumpBackPlaceholder), " ")
	cmdline = strings.TrimSpace(cmdline)
	if uint32(len(cmdline)) > k.CmdlineSize {
		return nil, fmt.Errorf("helper plan: command line is %d bytes, the kernel takes %d", len(cmdline), k.CmdlineSize)
	}
	p.Cmdline = cmdline
	bpAddr := alignUp(p.Kernel.End, PageSize)
	cmdAddr := bpAddr + PageSize
	cmdLen := alignUp(uint64(len(cmdline))+1, PageSize)
	purgAddr := cmdAddr + cmdLen

	isize := alignUp(uint64(len(s.Initrd)), PageSize)
	p.Initrd = Range{p.HelperRAM.End - isize, p.HelperRAM.End - isize + uint64(len(s.Initrd))}
	if purgAddr+PageSize > p.Initrd.Start {
		return nil, fmt.Errorf("helper plan: kernel and initramfs do not fit in %v", p.HelperRAM)
	}
	if p.Initrd.End-1 > uint64(k.InitrdAddrMax) && k.XLoadFlags&xlfCanBeAbove4 == 0 {
		return nil, fmt.Errorf("helper plan: initramfs at %v is above the kernel's initrd_addr_max %#x", p.Initrd, k.InitrdAddrMax)
	}

	p.E820 = HelperE820(s.Firmware, s.LowWindow, p.HelperRAM)
	bp, err := k.BootParams(cmdAddr, p.Initrd.Start, uint64(len(s.Initrd)), p.E820)
	if err != nil {
		return nil, err
	}
	purg, err := Purgatory{
		Entry:      kaddr + 0x200, // the 64-bit entry, boot.rst
		BootParams: bpAddr,
		HexDst:     cmdAddr + uint64(len(cmdline)-16),
		Copies:     []Copy{{Src: s.LowWindow.Start, Dst: p.Backup.Start, Len: s.LowWindow.Size()}},
	}.Build()
	if err != nil {
		return nil, err
	}
	boot := make([]byte, purgAddr-bpAddr+uint64(len(purg)))
	copy(boot, bp)
	copy(boot[cmdAddr-bpAddr:], cmdline)
	copy(boot[purgAddr-bpAddr:], purg)

	p.Entry = purgAddr
	p.Segments = []Segment{
		{Name: "kernel", Buf: k.Kernel, Mem: kaddr, Memsz: alignUp(uint64(len(k.Kernel)), PageSize)},
		{Name: "boot_params+cmdline+purgatory", Buf: boot, Mem: bpAddr, Memsz: alignUp(uint64(len(boot)), PageSize)},
		{Name: "initramfs", Buf: s.Initrd, Mem: p.Initrd.Start, Memsz: isize},
	}
	if len(core) > 0 {
		p.Segments = append(p.Segments, Segment{Name: "elfcorehdr", Buf: core, Mem: p.Core.Start, Memsz: alignUp(uint64(len(core)), PageSize)})
	}
	return p, nil
}

// BackupRange is where the purgatory copies A's low window: the start of
// the reserve at the top of R.
func BackupRange(region Range, reserveTop uint64, low Range) Range {
	start := region.End - reserveTop
	return Range{start, start + low.Size()}
}

// HelperE820 builds a helper's memory map from the machine's firmware map:
// only the low window and the helper's part of R are RAM. The rest of A's
// RAM is marked reserved, so the helper neither allocates it nor mistakes
// it for a gap to place PCI windows in; with STRICT_DEVMEM the helper can
// still reach it through /dev/mem, because it is not RAM in its view.
// Non-RAM firmware entries (ACPI tables, NVS, reserved) pass through.
func HelperE820(firmware []E820Entry, low, ram Range) []E820Entry {
	var out []E820Entry
	give := []Range{low, ram}
	for _, e := range firmware {
		if e.Type != E820RAM {
			out = append(out, e)
			continue
		}
		for _, piece := range Subtract(Range{e.Addr, e.Addr + e.Size}, give) {
			out = append(out, E820Entry{piece.Start, piece.Size(), E820Reserved})
		}
	}
	for _, r := range give {
		if r.Size() > 0 {
			out = append(out, E820Entry{r.Start, r.Size(), E820RAM})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}

// Subtract returns the parts of r not covered by any of cut.
func Subtract(r Range, cut []Range) []Range {
	parts := []Range{r}
	for _, c := range cut {
		var next []Range
		for _, p := range parts {
			if c.End <= p.Start || c.Start >= p.End {
				next = append(next, p)
				continue
			}
			if c.Start > p.Start {
				next = append(next, Range{p.Start, c.Start})
			}
			if c.End < p.End {
				next = append(next, Range{c.End, p.End})
			}
		}
		parts = next
	}
	return parts
}

func alignUp(v, a uint64) uint64 {
	if a == 0 {
		return v
	}
	return (v + a - 1) &^ (a - 1)
}
