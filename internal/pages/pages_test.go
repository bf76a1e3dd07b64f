package pages

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"testing"
)

// fakeMem is A's physical memory for tests.
type fakeMem []byte

func (m fakeMem) ReadAtPhys(p []byte, addr uint64) (int, error) {
	if addr+uint64(len(p)) > uint64(len(m)) || addr+uint64(len(p)) < addr {
		return 0, fmt.Errorf("read %#x+%d outside memory", addr, len(p))
	}
	return copy(p, m[addr:]), nil
}

const (
	pageOffset = 0xffff888000000000 // where the fake direct map starts
	physBase   = 0x100000           // where the fake kernel image is
	memMapPhys = 0x200000
)

// fakeA lays out, in 16 MiB, what the walk reads: page tables that map
// the first GiB at pageOffset with one 1 GiB page, mem_section with one
// root and one present section, and struct pages (64 bytes each) for the
// 4096 page frames, with the given buddy heads (pfn -> order).
func fakeA(t *testing.T, heads map[uint64]uint64) (fakeMem, Info) {
	return fakeAPaging(t, heads, false)
}

// pageOffset5 is where a 5-level kernel's direct map starts
// (__PAGE_OFFSET_BASE_L5, before KASLR moves it).
const pageOffset5 = 0xff11000000000000

// fakeAPaging is fakeA with 4- or 5-level page tables; with 5 levels the
// direct map is at pageOffset5 and init_top_pgt is a PML5 whose entry
// points at a P4D.
func fakeAPaging(t *testing.T, heads map[uint64]uint64, l5 bool) (fakeMem, Info) {
	t.Helper()
	mem := make(fakeMem, 16<<20)
	le := binary.LittleEndian
	in := Info{
		PageSize: 4096, PhysBase: physBase,
		InitTopPgt: startKernelMap + 0x1000, MemSection: pageOffset + physBase + 0x4000,
		MemSectionRoots: 2048, MemSectionSize: 16, SectionMemMap: 0, SectionSizeBits: 27,
		PageStructSize: 64, OffMapcount: 48, OffPrivate: 40, BuddyType: 0xf0 << 24, MaxOrder: 10,
	}
	off := uint64(pageOffset)
	pgd, pud := uint64(physBase+0x1000), uint64(physBase+0x3000)
	if l5 {
		off = pageOffset5
		in.L5, in.MemSection = true, off+physBase+0x4000
		pml5 := uint64(physBase + 0x6000)
		in.InitTopPgt = startKernelMap + 0x6000
		le.PutUint64(mem[pml5+((off>>48)&511)*8:], pgd|1)
	}
	le.PutUint64(mem[pgd+((off>>39)&511)*8:], pud|1)
	le.PutUint64(mem[pud+((off>>30)&511)*8:], 0|1|1<<7) // 1 GiB page at 0
	roots, root0 := uint64(physBase+0x4000), uint64(physBase+0x5000)
	le.PutUint64(mem[roots:], off+root0)
	le.PutUint64(mem[root0:], (off+memMapPhys)|3) // section 0: present, has mem map
	for pfn := uint64(0); pfn < 4096; pfn++ {
		sp := mem[memMapPhys+pfn*64:]
		le.PutUint32(sp[48:], 0xffffffff) // no page type
	}
	for pfn, order := range heads {
		sp := mem[memMapPhys+pfn*64:]
		le.PutUint32(sp[48:], 0xf0<<24)
		le.PutUint64(sp[40:], order)
	}
	return mem, in
}

func TestFree(t *testing.T) {
	tests := []struct {
		name   string
		heads  map[uint64]uint64
		lo, hi uint64
		want   []FreeRange
	}{
		{"none", nil, 0, 4096, nil},
		{"two blocks", map[uint64]uint64{1024: 3, 2048: 10}, 0, 4096, []FreeRange{{1024, 8}, {2048, 1024}}},
		{"adjacent blocks merge", map[uint64]uint64{8: 3, 16: 4}, 0, 4096, []FreeRange{{8, 24}}},
		{"misaligned head is not trusted", map[uint64]uint64{3001: 2}, 0, 4096, nil},
		{"order beyond MAX_ORDER is not trusted", map[uint64]uint64{0: 15}, 0, 4096, nil},
		{"block past the range is not trusted", map[uint64]uint64{2048: 10}, 0, 3000, nil},
		{"range starts inside", map[uint64]uint64{100: 2, 200: 0}, 150, 4096, []FreeRange{{200, 1}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem, in := fakeA(t, tc.heads)
			got, err := Free(mem, in, tc.lo, tc.hi)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Free = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFreeFiveLevel(t *testing.T) {
	heads := map[uint64]uint64{1024: 3, 2048: 10}
	want := []FreeRange{{1024, 8}, {2048, 1024}}
	mem, in := fakeAPaging(t, heads, true)
	got, err := Free(mem, in, 0, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Free with 5-level tables = %v, want %v", got, want)
	}
	// The same memory read as 4-level finds nothing mapped: the walk
	// really follows the extra level.
	in.L5 = false
	if _, err := Free(mem, in, 0, 4096); err == nil {
		t.Fatal("5-level tables walked as 4-level succeeded")
	}
}

func TestFreeUnmappedStructPages(t *testing.T) {
	mem, in := fakeA(t, map[uint64]uint64{1024: 3})
	// Unmap the direct map: nothing can be read, so nothing is free.
	le := binary.LittleEndian
	le.PutUint64(mem[physBase+0x3000+((pageOffset>>30)&511)*8:], 0)
	if _, err := Free(mem, in, 0, 4096); err == nil {
		t.Fatal("walk through an unmapped root succeeded")
	}
}

type fakeInfo map[string]int64

func (f fakeInfo) get(k string) (uint64, error) {
	v, ok := f[k]
	if !ok {
		return 0, errors.New("no " + k)
	}
	return uint64(v), nil
}
func (f fakeInfo) Symbol(n string) (uint64, error) { return f.get("SYMBOL(" + n + ")") }
func (f fakeInfo) Size(n string) (uint64, error)   { return f.get("SIZE(" + n + ")") }
func (f fakeInfo) Offset(n string) (uint64, error) { return f.get("OFFSET(" + n + ")") }
func (f fakeInfo) Length(n string) (uint64, error) { return f.get("LENGTH(" + n + ")") }
func (f fakeInfo) Number(n string) (int64, error) {
	v, err := f.get("NUMBER(" + n + ")")
	return int64(v), err
}
func (f fakeInfo) PageSize() (uint64, error) { return f.get("PAGESIZE") }

func TestReadInfo(t *testing.T) {
	good := fakeInfo{
		"PAGESIZE": 4096, "NUMBER(phys_base)": 0x1000000, "SYMBOL(init_top_pgt)": -0x7e000000,
		"SYMBOL(mem_section)": -0x7d000000, "LENGTH(mem_section)": 2048, "SIZE(mem_section)": 16,
		"OFFSET(mem_section.section_mem_map)": 0, "NUMBER(SECTION_SIZE_BITS)": 27, "SIZE(page)": 64,
		"OFFSET(page._mapcount)": 48, "OFFSET(page.private)": 40, "NUMBER(PAGE_BUDDY_MAPCOUNT_VALUE)": -268435456,
		"NUMBER(pgtable_l5_enabled)": 0, "LENGTH(zone.free_area)": 11,
	}
	in, err := ReadInfo(good)
	if err != nil {
		t.Fatal(err)
	}
	if in.BuddyType>>24 != 0xf0 || in.MaxOrder != 10 || in.L5 {
		t.Fatalf("ReadInfo = %+v", in)
	}
	for _, tc := range []struct {
		key string
		val int64
	}{
		{"SIZE(page)", 4}, {"LENGTH(zone.free_area)", 0}, {"PAGESIZE", 65536},
	} {
		bad := fakeInfo{}
		for k, v := range good {
			bad[k] = v
		}
		bad[tc.key] = tc.val
		if _, err := ReadInfo(bad); err == nil {
			t.Errorf("%s=%d accepted", tc.key, tc.val)
		}
	}
	delete(good, "SYMBOL(mem_section)")
	if _, err := ReadInfo(good); err == nil {
		t.Error("missing mem_section accepted")
	}
}
