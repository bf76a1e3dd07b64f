// Package freecount counts the pages the running kernel's buddy allocator
// has free, from the kernel's own exports: /proc/kpageflags with
// /proc/kpagecount, and /proc/buddyinfo. It is A's side of the check that
// the helper's free-page walk over A's struct pages agrees with A itself.
package freecount

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// kpfBuddy is KPF_BUDDY (include/uapi/linux/kernel-page-flags.h).
const kpfBuddy = 10

// MaxOrder is the largest buddy order on x86_64 (MAX_PAGE_ORDER).
const MaxOrder = 10

const window = 1 << MaxOrder

// FromPageFlags counts free pages from the contents of /proc/kpageflags
// and /proc/kpagecount, read side by side one aligned block of 2^MaxOrder
// page frames at a time, so that counting allocates almost nothing and
// does not itself change the count much.
//
// A page with KPF_BUDDY heads a free block; kernels that flag only the
// head do not export its order, so the block is taken to reach as far as
// the head's alignment allows over pages with no flags and no references
// (pages on per-CPU free lists look the same, so this can overcount by at
// most what those lists hold). Kernels that flag every free page count
// page by page.
func FromPageFlags(flags, counts io.Reader) (pages uint64, err error) {
	fr := bufio.NewReaderSize(flags, 8*window)
	cr := bufio.NewReaderSize(counts, 8*window)
	fl := make([]uint64, window)
	ct := make([]uint64, window)
	raw := make([]byte, 8*window)
	for {
		n, err := io.ReadFull(fr, raw)
		if n%8 != 0 {
			return 0, fmt.Errorf("kpageflags: %d bytes, not whole 8-byte entries", n)
		}
		m := n / 8
		for i := 0; i < m; i++ {
			fl[i] = binary.LittleEndian.Uint64(raw[8*i:])
		}
		if m > 0 {
			if _, err := io.ReadFull(cr, raw[:n]); err != nil {
				return 0, fmt.Errorf("kpagecount is shorter than kpageflags: %w", err)
			}
			for i := 0; i < m; i++ {
				ct[i] = binary.LittleEndian.Uint64(raw[8*i:])
			}
			pages += countWindow(fl[:m], ct[:m])
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return pages, nil
		}
		if err != nil {
			return 0, fmt.Errorf("kpageflags: %w", err)
		}
	}
}

// countWindow counts one window whose first page frame is aligned to
// 2^MaxOrder, so that no free block crosses its end.
func countWindow(fl, ct []uint64) uint64 {
	var total uint64
	for p := 0; p < len(fl); p++ {
		if fl[p]&(1<<kpfBuddy) == 0 {
			continue
		}
		n := 1
		for o := 1; o <= MaxOrder; o++ {
			size := 1 << o
			if p%size != 0 || p+size > len(fl) {
				break
			}
			clean := true
			for q := p + size/2; q < p+size; q++ {
				if fl[q] != 0 || ct[q] != 0 {
					clean = false
					break
				}
			}
			if !clean {
				break
			}
			n = size
		}
		total += uint64(n)
		p += n - 1
	}
	return total
}

// FromBuddyinfo sums /proc/buddyinfo: "Node 0, zone DMA32 c0 c1 ... cN",
// the free lists' lengths per order.
func FromBuddyinfo(r io.Reader) (uint64, error) {
	var total uint64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 5 || f[0] != "Node" || f[2] != "zone" {
			return 0, fmt.Errorf("buddyinfo: unexpected line %q", sc.Text())
		}
		if len(f)-4 > MaxOrder+1 {
			return 0, fmt.Errorf("buddyinfo: %d orders, at most %d expected", len(f)-4, MaxOrder+1)
		}
		for o, s := range f[4:] {
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("buddyinfo: %q: %w", sc.Text(), err)
			}
			total += n << o
		}
	}
	return total, sc.Err()
}

// PCPFromZoneinfo sums the per-CPU free lists of /proc/zoneinfo (the
// "count:" of every CPU's pageset). Those pages are free but carry no
// KPF_BUDDY and are not in buddyinfo; the kernel moves them to the buddy
// lists in the background (mm/vmstat.c: refresh_cpu_vm_stats, which
// decays each list's high mark), so between a count in A and the helper's
// walk some or all of them become buddy pages.
func PCPFromZoneinfo(r io.Reader) (uint64, error) {
	var total uint64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || f[0] != "count:" {
			continue
		}
		n, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("zoneinfo: %q: %w", sc.Text(), err)
		}
		total += n
	}
	return total, sc.Err()
}
