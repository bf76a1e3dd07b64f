// Package memmap reads the physical memory maps that Linux exposes: /proc/iomem and /sys/firmware/memmap.
package memmap

import (
	"fmt"
	"math"
)

// Range is a span of physical addresses. End is exclusive, unlike the
// inclusive ends that /proc/iomem and /sys/firmware/memmap print; a range
// whose inclusive end is the very last address (0xffffffffffffffff) cannot be
// represented and is clamped to end one byte short.
type Range struct {
	Start, End uint64
}

// rangeIncl converts an inclusive [first, last] pair to a Range.
func rangeIncl(first, last uint64) Range {
	if last == math.MaxUint64 {
		return Range{first, last}
	}
	return Range{first, last + 1}
}

// Size is the number of bytes in r; an inverted range has size 0.
func (r Range) Size() uint64 {
	if r.End <= r.Start {
		return 0
	}
	return r.End - r.Start
}

// Contains reports whether addr lies in r.
func (r Range) Contains(addr uint64) bool {
	return r.Start <= addr && addr < r.End
}

// ContainsRange reports whether o lies wholly within r.
func (r Range) ContainsRange(o Range) bool {
	return r.Start <= o.Start && o.End <= r.End
}

// Overlaps reports whether r and o share at least one address; an empty
// range overlaps nothing.
func (r Range) Overlaps(o Range) bool {
	return r.Start < o.End && o.Start < r.End && r.Start < r.End && o.Start < o.End
}

// String formats r the way /proc/iomem does, with an inclusive end, as
// "0x1000000-0xaffffff"; an empty range prints as "0x1000000-(empty)".
func (r Range) String() string {
	if r.End <= r.Start {
		return fmt.Sprintf("%#x-(empty)", r.Start)
	}
	return fmt.Sprintf("%#x-%#x", r.Start, r.End-1)
}

// MiB returns r's size in mebibytes, rounded down.
func (r Range) MiB() uint64 {
	return r.Size() >> 20
}
