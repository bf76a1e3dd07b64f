package elfcore

import "encoding/binary"

// physMem is a sparse physical address space: regions hold bytes, and
// everything else reads as zeros, as unused RAM would.
type physMem struct{ regions []region }

// A region holds either bytes or, so that gigabytes cost nothing, size
// bytes of the pattern of seed.
type region struct {
	addr, size uint64
	b          []byte
	seed       uint64
}

func (m *physMem) put(addr uint64, b []byte) {
	m.add(region{addr: addr, size: uint64(len(b)), b: b})
}

func (m *physMem) fill(addr, size, seed uint64) {
	m.add(region{addr: addr, size: size, seed: seed})
}

// add lays r over the regions added before it.
func (m *physMem) add(r region) { m.regions = append(m.regions, r) }

func (m *physMem) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	a := uint64(off)
	for _, r := range m.regions {
		lo, hi := max(a, r.addr), min(a+uint64(len(p)), r.addr+r.size)
		if lo >= hi {
			continue
		}
		if r.b != nil {
			copy(p[lo-a:hi-a], r.b[lo-r.addr:hi-r.addr])
			continue
		}
		for x := lo; x < hi; x++ {
			p[x-a] = patternByte(r.seed, x-r.addr)
		}
	}
	return len(p), nil
}

// patternByte is byte i of a pattern that differs from those of other
// seeds and repeats nowhere near a page.
func patternByte(seed, i uint64) byte {
	x := (i>>3+1)*0x9e3779b97f4a7c15 ^ (seed+1)*0xbf58476d1ce4e5b9
	x ^= x >> 29
	x *= 0x94d049bb133111eb
	x ^= x >> 32
	return byte(x >> (8 * (i & 7)))
}

// pattern returns the first n bytes of seed's pattern.
func pattern(seed, n uint64) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = patternByte(seed, uint64(i))
	}
	return b
}

// appendNote appends one note the way the kernel's append_elf_note does.
func appendNote(b []byte, name string, typ uint32, desc []byte) []byte {
	var h [nhdrSize]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(len(name)+1))
	binary.LittleEndian.PutUint32(h[4:], uint32(len(desc)))
	binary.LittleEndian.PutUint32(h[8:], typ)
	b = append(b, h[:]...)
	b = append(b, name...)
	b = append(b, 0)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	b = append(b, desc...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// vmcoreinfoNoteSize is VMCOREINFO_NOTE_SIZE on x86_64: two note headers,
// the padded name and a page of text.
const vmcoreinfoNoteSize = 2*nhdrSize + 12 + 4096

// vmcoreinfoNote returns A's note buffer as kernel/vmcore_info.c lays it
// out: the note, an empty note, then zeros up to VMCOREINFO_NOTE_SIZE.
func vmcoreinfoNote(text string) []byte {
	b := appendNote(nil, NoteNameVmcoreinfo, NoteTypeVmcoreinfo, []byte(text))
	b = append(b, make([]byte, nhdrSize)...) // final_note
	if len(b) < vmcoreinfoNoteSize {
		b = append(b, make([]byte, vmcoreinfoNoteSize-len(b))...)
	}
	return b
}

// sampleVmcoreinfo is the start of a real 6.12 x86_64 vmcoreinfo text.
const sampleVmcoreinfo = `OSRELEASE=6.12.17-khib
BUILD-ID=a1b2c3d4e5f60718293a4b5c6d7e8f9012345678
PAGESIZE=4096
SYMBOL(init_uts_ns)=ffffffff82a15f00
OFFSET(uts_namespace.name)=0
SYMBOL(node_online_map)=ffffffff82b0c9a8
SYMBOL(swapper_pg_dir)=ffffffff82a0c000
SYMBOL(_stext)=ffffffff81000000
NUMBER(VMALLOC_START)=0xffffc90000000000
SYMBOL(vmemmap)=ffffea0000000000
SYMBOL(mem_section)=ffff88807ffd2000
LENGTH(mem_section)=2048
SIZE(mem_section)=16
OFFSET(mem_section.section_mem_map)=0
NUMBER(SECTION_SIZE_BITS)=27
NUMBER(MAX_PHYSMEM_BITS)=46
SIZE(page)=64
SIZE(nodemask_t)=8
OFFSET(page.flags)=0
OFFSET(page._refcount)=52
OFFSET(page.private)=40
OFFSET(page._mapcount)=48
OFFSET(page.compound_head)=8
LENGTH(zone.free_area)=11
NUMBER(PG_head_mask)=64
NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)=4026531840
NUMBER(phys_base)=1073741824
SYMBOL(init_top_pgt)=ffffffff82a0c000
NUMBER(pgtable_l5_enabled)=0
KERNELOFFSET=0
NUMBER(KERNEL_IMAGE_SIZE)=1073741824
NUMBER(sme_mask)=0
`
