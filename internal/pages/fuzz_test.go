package pages

import (
	"encoding/binary"
	"testing"
)

// FuzzFree corrupts A's page tables, mem_section and struct pages: the
// walk must never panic or run away, and whatever it calls free must lie
// in the range asked for.
func FuzzFree(f *testing.F) {
	f.Add(uint32(0), uint64(0))
	f.Add(uint32(physBase+0x1000+((pageOffset>>39)&511)*8), uint64(0x7fffffffffffffff))
	f.Add(uint32(physBase+0x5000), uint64(3))
	f.Add(uint32(memMapPhys+1024*64+40), uint64(1<<40))
	f.Fuzz(func(t *testing.T, off uint32, val uint64) {
		mem, in := fakeA(t, map[uint64]uint64{1024: 3, 2048: 10})
		o := uint64(off) % uint64(len(mem)-8)
		binary.LittleEndian.PutUint64(mem[o:], val)
		free, err := Free(mem, in, 0, 4096)
		if err != nil {
			return
		}
		var last uint64
		for _, r := range free {
			if r.Start < last || r.Count == 0 || r.Start+r.Count > 4096 {
				t.Fatalf("free range %v out of order or out of [0, 4096)", r)
			}
			last = r.Start + r.Count
		}
	})
}
