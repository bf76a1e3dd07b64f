package memmap

import (
	"math"
	"testing"
)

func TestRange(t *testing.T) {
	r := Range{0x1000000, 0xb000000} // iomem 01000000-0affffff
	if got := r.Size(); got != 160<<20 {
		t.Errorf("Size = %#x", got)
	}
	if got := r.MiB(); got != 160 {
		t.Errorf("MiB = %d", got)
	}
	if got := r.String(); got != "0x1000000-0xaffffff" {
		t.Errorf("String = %q", got)
	}
	if got := (Range{5, 5}).String(); got != "0x5-(empty)" {
		t.Errorf("empty String = %q", got)
	}
	if (Range{9, 5}).Size() != 0 {
		t.Error("inverted range has nonzero size")
	}
	contains := []struct {
		addr uint64
		want bool
	}{
		{0xffffff, false}, {0x1000000, true}, {0xaffffff, true}, {0xb000000, false},
	}
	for _, c := range contains {
		if got := r.Contains(c.addr); got != c.want {
			t.Errorf("Contains(%#x) = %v", c.addr, got)
		}
	}
	overlaps := []struct {
		o    Range
		want bool
	}{
		{Range{0, 0x1000000}, false},
		{Range{0, 0x1000001}, true},
		{Range{0xaffffff, 0xc000000}, true},
		{Range{0xb000000, 0xc000000}, false},
		{Range{0x2000000, 0x3000000}, true},
		{Range{0, math.MaxUint64}, true},
		{Range{0x2000000, 0x2000000}, false}, // empty
	}
	for _, c := range overlaps {
		if got := r.Overlaps(c.o); got != c.want {
			t.Errorf("Overlaps(%v) = %v", c.o, got)
		}
		if got := c.o.Overlaps(r); got != c.want {
			t.Errorf("%v.Overlaps(r) = %v, asymmetric", c.o, got)
		}
	}
	if !r.ContainsRange(Range{0x1000000, 0xb000000}) || r.ContainsRange(Range{0x1000000, 0xb000001}) {
		t.Error("ContainsRange")
	}
	if got := rangeIncl(0x1000, math.MaxUint64); got.End != math.MaxUint64 {
		t.Errorf("top of address space: %v", got)
	}
}
