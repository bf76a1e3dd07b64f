package freecount

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func entries(v []uint64) *bytes.Reader {
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], x)
	}
	return bytes.NewReader(b)
}

func TestFromPageFlags(t *testing.T) {
	const buddy = 1 << kpfBuddy
	const lru = 1 << 5
	mk := func(n int, set func(fl, ct []uint64)) ([]uint64, []uint64) {
		fl, ct := make([]uint64, n), make([]uint64, n)
		for i := range fl {
			fl[i], ct[i] = lru, 1 // allocated
		}
		set(fl, ct)
		return fl, ct
	}
	free := func(fl, ct []uint64, from, n int, every bool) {
		for i := from; i < from+n; i++ {
			fl[i], ct[i] = 0, 0
			if every || i == from {
				fl[i] = buddy
			}
		}
	}
	tests := []struct {
		name string
		n    int
		set  func(fl, ct []uint64)
		want uint64
	}{
		{"nothing free", 4096, func(fl, ct []uint64) {}, 0},
		{"head-only order 3", 4096, func(fl, ct []uint64) { free(fl, ct, 8, 8, false) }, 8},
		{"head-only order 10 across the first window", 4096, func(fl, ct []uint64) { free(fl, ct, 1024, 1024, false) }, 1024},
		{"every page flagged", 4096, func(fl, ct []uint64) { free(fl, ct, 100, 28, true) }, 28},
		{"misaligned head counts one page", 4096, func(fl, ct []uint64) { free(fl, ct, 5, 4, false) }, 1},
		{"short last window", 1500, func(fl, ct []uint64) { free(fl, ct, 1280, 128, false) }, 128},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fl, ct := mk(tc.n, tc.set)
			got, err := FromPageFlags(entries(fl), entries(ct))
			if err != nil || got != tc.want {
				t.Fatalf("FromPageFlags = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
	if _, err := FromPageFlags(entries(make([]uint64, 10)), entries(make([]uint64, 5))); err == nil {
		t.Error("short kpagecount accepted")
	}
	if _, err := FromPageFlags(bytes.NewReader(make([]byte, 12)), entries(make([]uint64, 2))); err == nil {
		t.Error("partial entry accepted")
	}
}

func TestFromBuddyinfo(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"Node 0, zone      DMA      0      0      0      0      0      0      0      0      1      1      3 \n" +
			"Node 0, zone    DMA32      5      1      2      2      2      2      2      5      5      3    751 \n", 256 + 512 + 3072 + 5 + 2 + 8 + 16 + 32 + 64 + 128 + 640 + 1280 + 1536 + 751*1024, true},
		{"", 0, true},
		{"Node 0, zone DMA32 x\n", 0, false},
		{"garbage\n", 0, false},
		{"Node 0, zone DMA32 1 1 1 1 1 1 1 1 1 1 1 1\n", 0, false},
	}
	for _, tc := range tests {
		got, err := FromBuddyinfo(strings.NewReader(tc.in))
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("FromBuddyinfo(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func FuzzFromBuddyinfo(f *testing.F) {
	f.Add("Node 0, zone DMA32 5 1 2 2 2 2 2 5 5 3 751\n")
	f.Fuzz(func(t *testing.T, s string) { FromBuddyinfo(strings.NewReader(s)) })
}

func FuzzFromPageFlags(f *testing.F) {
	f.Add(make([]byte, 64), make([]byte, 64))
	f.Fuzz(func(t *testing.T, a, b []byte) { FromPageFlags(bytes.NewReader(a), bytes.NewReader(b)) })
}

func TestPCPFromZoneinfo(t *testing.T) {
	in := `Node 0, zone   DMA32
  pages free     71506
        nr_free_pages 71506
  pagesets
    cpu: 0
              count: 1544
              high:  2036
              batch: 63
    cpu: 1
              count: 12
              high:  2036
`
	got, err := PCPFromZoneinfo(strings.NewReader(in))
	if err != nil || got != 1556 {
		t.Fatalf("PCPFromZoneinfo = %d, %v; want 1556", got, err)
	}
	if _, err := PCPFromZoneinfo(strings.NewReader("    count: x\n")); err == nil {
		t.Fatal("bad count accepted")
	}
}
