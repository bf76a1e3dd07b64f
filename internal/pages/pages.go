// Package pages finds which of A's pages are free, from A's own page
// structures (struct page, read through /proc/vmcore), so that the helper
// saves only the pages A has allocated.
//
// It follows A's pointers the way makedumpfile's free-page filter does,
// with code of its own: vmcoreinfo gives the address of mem_section and
// the layout of struct page; A's kernel page tables (init_top_pgt)
// translate A's virtual addresses; the head page of every free block of
// the buddy allocator carries the buddy page type, and its private field
// holds the block's order. Pages on per-CPU free lists are not marked and
// count as allocated, which is safe: a page is only ever left out when A
// itself says it is free.
package pages

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Memory is A's physical memory.
type Memory interface {
	ReadAtPhys(p []byte, addr uint64) (int, error)
}

// Info is what the walk needs from A's vmcoreinfo.
type Info struct {
	PageSize        uint64
	PhysBase        uint64 // NUMBER(phys_base)
	InitTopPgt      uint64 // SYMBOL(init_top_pgt), a kernel-image address
	L5              bool   // NUMBER(pgtable_l5_enabled)
	MemSection      uint64 // SYMBOL(mem_section): the roots array, a direct-map address
	MemSectionRoots uint64 // LENGTH(mem_section): NR_SECTION_ROOTS
	MemSectionSize  uint64 // SIZE(mem_section)
	SectionMemMap   uint64 // OFFSET(mem_section.section_mem_map)
	SectionSizeBits uint64 // NUMBER(SECTION_SIZE_BITS)
	PageStructSize  uint64 // SIZE(page)
	OffMapcount     uint64 // OFFSET(page._mapcount): page_type shares it
	OffPrivate      uint64 // OFFSET(page.private)
	BuddyType       uint32 // NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE): PGTY_buddy << 24
	MaxOrder        uint64 // LENGTH(zone.free_area) - 1
}

// Vmcoreinfo is the subset of elfcore.Vmcoreinfo that Info is read from.
type Vmcoreinfo interface {
	Symbol(name string) (uint64, error)
	Size(name string) (uint64, error)
	Offset(name string) (uint64, error)
	Length(name string) (uint64, error)
	Number(name string) (int64, error)
	PageSize() (uint64, error)
}

// ReadInfo collects Info; an error names the first missing key.
func ReadInfo(v Vmcoreinfo) (Info, error) {
	var in Info
	var err error
	get := func(dst *uint64, f func(string) (uint64, error), name string) {
		if err == nil {
			*dst, err = f(name)
		}
	}
	num := func(name string) (uint64, error) {
		n, e := v.Number(name)
		return uint64(n), e
	}
	if in.PageSize, err = v.PageSize(); err != nil {
		return in, err
	}
	get(&in.PhysBase, num, "phys_base")
	get(&in.InitTopPgt, v.Symbol, "init_top_pgt")
	get(&in.MemSection, v.Symbol, "mem_section")
	get(&in.MemSectionRoots, v.Length, "mem_section")
	get(&in.MemSectionSize, v.Size, "mem_section")
	get(&in.SectionMemMap, v.Offset, "mem_section.section_mem_map")
	get(&in.SectionSizeBits, num, "SECTION_SIZE_BITS")
	get(&in.PageStructSize, v.Size, "page")
	get(&in.OffMapcount, v.Offset, "page._mapcount")
	get(&in.OffPrivate, v.Offset, "page.private")
	var buddy, l5, orders uint64
	get(&buddy, num, "PAGE_BUDDY_MAPCOUNT_VALUE")
	get(&l5, num, "pgtable_l5_enabled")
	get(&orders, v.Length, "zone.free_area")
	if err != nil {
		return in, err
	}
	in.BuddyType, in.L5, in.MaxOrder = uint32(buddy), l5 != 0, orders-1
	switch {
	case in.PageSize != 4096:
		return in, fmt.Errorf("pages: page size %d, only 4096 is supported", in.PageSize)
	case in.PageStructSize < 32 || in.PageStructSize > 256:
		return in, fmt.Errorf("pages: SIZE(page)=%d out of range", in.PageStructSize)
	case in.OffMapcount+4 > in.PageStructSize || in.OffPrivate+8 > in.PageStructSize:
		return in, errors.New("pages: struct page offsets out of range")
	case in.SectionSizeBits < 20 || in.SectionSizeBits > 40:
		return in, fmt.Errorf("pages: SECTION_SIZE_BITS=%d out of range", in.SectionSizeBits)
	case in.MemSectionSize < 8 || in.MemSectionSize > in.PageSize || in.SectionMemMap+8 > in.MemSectionSize:
		return in, errors.New("pages: mem_section layout out of range")
	case in.MemSectionRoots == 0 || in.MemSectionRoots > 1<<20:
		return in, fmt.Errorf("pages: %d mem_section roots out of range", in.MemSectionRoots)
	case in.MaxOrder > 20 || orders == 0:
		return in, fmt.Errorf("pages: %d page orders out of range", orders)
	}
	return in, nil
}

// startKernelMap is __START_KERNEL_map on x86_64: kernel-image addresses
// are this plus the image's physical offset (phys_base).
const startKernelMap = 0xffffffff80000000

// sectionMapMask clears the flag bits of section_mem_map (mmzone.h:
// SECTION_MAP_LAST_BIT is 4 or 5); the encoded pointer is far more aligned.
const sectionMapMask = ^uint64(0x3f)

type walker struct {
	in  Info
	mem Memory
	buf [8]byte
	// The struct pages read last (spRead bytes, by their virtual
	// address): up to spBatch at a time, within one page-table leaf.
	spVA   uint64
	spPage []byte
	spOK   bool
	one    []byte
	// The page-table leaf that translated last: struct pages sit in a
	// few large leaves (the vmemmap's 2 MiB pages), so that most
	// translations need no walk.
	leafVA, leafSize, leafPA uint64
}

// spBatch is how many bytes of struct pages the walker reads at once: one
// read of /proc/vmcore costs the helper's kernel a mapping of A's memory,
// and under QEMU TCG the page-sized reads and their table walks took a
// second for a 4 GiB guest.
const spBatch = 64 << 10

// structPage returns the bytes of the struct page at virtual address va.
// Struct pages are read a page at a time: one translation and one read
// serve 64 of them.
func (w *walker) structPage(va uint64) ([]byte, bool) {
	size := w.in.PageStructSize
	off := va % w.in.PageSize
	if off+size > w.in.PageSize { // straddles two pages: read it alone
		if w.one == nil {
			w.one = make([]byte, size)
		}
		for i := uint64(0); i < size; i++ {
			pa, err := w.phys(va + i)
			if err != nil {
				return nil, false
			}
			if _, err := w.mem.ReadAtPhys(w.one[i:i+1], pa); err != nil {
				return nil, false
			}
		}
		return w.one, true
	}
	base := va - off
	if w.spPage == nil || base < w.spVA || base >= w.spVA+uint64(len(w.spPage)) {
		w.spVA, w.spOK, w.spPage = base, false, w.spPage[:0]
		if pa, err := w.phys(base); err == nil {
			// As much as spBatch, the leaf's end and the buffer allow,
			// in whole pages.
			n := min(spBatch, w.leafVA+w.leafSize-base)
			if cap(w.spPage) < int(n) {
				w.spPage = make([]byte, 0, spBatch)
			}
			w.spPage = w.spPage[:n]
			if _, err = w.mem.ReadAtPhys(w.spPage, pa); err != nil && n > w.in.PageSize {
				// Part of the batch may lie outside the core: the page alone.
				w.spPage = w.spPage[:w.in.PageSize]
				_, err = w.mem.ReadAtPhys(w.spPage, pa)
			}
			w.spOK = err == nil
		}
	}
	if !w.spOK {
		return nil, false
	}
	in := va - w.spVA
	return w.spPage[in : in+size], true
}

func (w *walker) u64(phys uint64) (uint64, error) {
	if _, err := w.mem.ReadAtPhys(w.buf[:], phys); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(w.buf[:]), nil
}

// imagePhys translates an address inside A's kernel image.
func (w *walker) imagePhys(v uint64) (uint64, error) {
	if v < startKernelMap {
		return 0, fmt.Errorf("pages: %#x is not a kernel-image address", v)
	}
	return v - startKernelMap + w.in.PhysBase, nil
}

// The table levels, by the virtual-address bit each one indexes from:
// with 5-level paging (pgtable_l5_enabled, on CPUs with LA57 and kernels
// with X86_5LEVEL, as distro kernels are) init_top_pgt is the PML5 and one
// more level sits above the PGD.
var (
	levels4 = []uint{39, 30, 21, 12}
	levels5 = []uint{48, 39, 30, 21, 12}
)

// phys translates any of A's kernel virtual addresses through A's page
// tables (4 or 5 levels; 1 GiB and 2 MiB pages allowed).
func (w *walker) phys(v uint64) (uint64, error) {
	if w.leafSize != 0 && v >= w.leafVA && v-w.leafVA < w.leafSize {
		return w.leafPA + (v - w.leafVA), nil
	}
	top, err := w.imagePhys(w.in.InitTopPgt)
	if err != nil {
		return 0, err
	}
	const present, large = 1, 1 << 7
	const addrMask = 0x000ffffffffff000
	shifts := levels4
	if w.in.L5 {
		shifts = levels5
	}
	table := top
	for _, shift := range shifts {
		e, err := w.u64(table + ((v>>shift)&511)*8)
		if err != nil {
			return 0, fmt.Errorf("pages: reading page table for %#x: %w", v, err)
		}
		if e&present == 0 {
			return 0, fmt.Errorf("pages: %#x is not mapped in A", v)
		}
		// PS marks a leaf only in the PUD (1 GiB) and PMD (2 MiB); a PTE
		// is always one.
		if shift == 12 || ((shift == 30 || shift == 21) && e&large != 0) {
			size := uint64(1) << shift
			w.leafVA, w.leafSize, w.leafPA = v&^(size-1), size, (e&addrMask)&^(size-1)
			return w.leafPA | v&(size-1), nil
		}
		table = e & addrMask
	}
	return 0, fmt.Errorf("pages: no leaf for %#x in A's page tables", v)
}

// FreeRange is a block of pages free in A: [Start, Start+Count) in page
// frame numbers.
type FreeRange struct{ Start, Count uint64 }

// Free walks A's struct pages for the page frames in [lo, hi) and returns
// the free blocks of the buddy allocator, in increasing order. Any doubt
// (an unreadable structure, an order out of range, a misaligned block)
// makes that block count as allocated.
func Free(mem Memory, in Info, lo, hi uint64) ([]FreeRange, error) {
	w := &walker{in: in, mem: mem}
	// SPARSEMEM_EXTREME: mem_section is a pointer to the array of roots,
	// and vmcoreinfo gives its value (VMCOREINFO_SYMBOL_ARRAY), a direct-map
	// address, not the address of the variable.
	roots := in.MemSection
	if roots == 0 {
		return nil, errors.New("pages: mem_section is NULL")
	}
	perRoot := in.PageSize / in.MemSectionSize
	pagesPerSection := uint64(1) << (in.SectionSizeBits - 12)
	var out []FreeRange
	for sec := lo / pagesPerSection; sec*pagesPerSection < hi; sec++ {
		root, idx := sec/perRoot, sec%perRoot
		if root >= in.MemSectionRoots {
			break
		}
		rp, err := w.phys(roots + root*8)
		if err != nil {
			return nil, err
		}
		rootAddr, err := w.u64(rp)
		if err != nil || rootAddr == 0 {
			continue
		}
		mp, err := w.phys(rootAddr + idx*in.MemSectionSize + in.SectionMemMap)
		if err != nil {
			continue
		}
		coded, err := w.u64(mp)
		if err != nil || coded&1 == 0 || coded&sectionMapMask == 0 { // not present
			continue
		}
		if coded&2 == 0 { // SECTION_HAS_MEM_MAP
			continue
		}
		memMap := coded & sectionMapMask
		first := max(sec*pagesPerSection, lo)
		last := min((sec+1)*pagesPerSection, hi)
		for pfn := first; pfn < last; {
			// The encoding subtracts the section's first pfn, so this is
			// the struct page of pfn.
			sp, ok := w.structPage(memMap + pfn*in.PageStructSize)
			if !ok {
				pfn++
				continue
			}
			typ := binary.LittleEndian.Uint32(sp[in.OffMapcount:])
			if typ>>24 != in.BuddyType>>24 {
				pfn++
				continue
			}
			order := binary.LittleEndian.Uint64(sp[in.OffPrivate:])
			if order > in.MaxOrder {
				pfn++
				continue
			}
			n := uint64(1) << order
			if pfn%n != 0 || pfn+n > hi {
				pfn++
				continue
			}
			if len(out) > 0 && out[len(out)-1].Start+out[len(out)-1].Count == pfn {
				out[len(out)-1].Count += n
			} else {
				out = append(out, FreeRange{pfn, n})
			}
			pfn += n
		}
	}
	return out, nil
}
