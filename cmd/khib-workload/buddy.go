package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// kpfBuddy is KPF_BUDDY in /proc/kpageflags (include/uapi/linux/kernel-page-flags.h):
// the page heads a free block of the buddy allocator.
const kpfBuddy = 10

// maxOrder is the largest buddy order on x86_64 (MAX_PAGE_ORDER).
const maxOrder = 10

// buddyPages counts the pages the running kernel's buddy allocator has
// free, two ways, as a check on the helper's own count from A's struct
// pages:
//
//   - from /proc/kpageflags and /proc/kpagecount. Only a block's head page
//     carries KPF_BUDDY and the order is not exported, so a block is taken
//     to reach as far as its head's alignment allows over pages with no
//     flags and no references. Pages on per-CPU lists look like that too,
//     so this can overcount by at most what those lists hold.
//   - from /proc/buddyinfo: the free lists' lengths per order, exact.
func buddyPages() error {
	flags, err := os.Open("/proc/kpageflags")
	if err != nil {
		return fmt.Errorf("kpageflags: %w", err)
	}
	defer flags.Close()
	counts, err := os.Open("/proc/kpagecount")
	if err != nil {
		return fmt.Errorf("kpagecount: %w", err)
	}
	defer counts.Close()
	fr, cr := bufio.NewReaderSize(flags, 1<<20), bufio.NewReaderSize(counts, 1<<20)
	// The whole map fits easily: 8 bytes per page frame, twice.
	var fl, ct []uint64
	var b [8]byte
	for {
		if _, err := io.ReadFull(fr, b[:]); err != nil {
			break
		}
		fl = append(fl, binary.LittleEndian.Uint64(b[:]))
		if _, err := io.ReadFull(cr, b[:]); err != nil {
			return fmt.Errorf("kpagecount is shorter than kpageflags at pfn %d: %w", len(fl)-1, err)
		}
		ct = append(ct, binary.LittleEndian.Uint64(b[:]))
	}
	var fromFlags, heads uint64
	for pfn := uint64(0); pfn < uint64(len(fl)); pfn++ {
		if fl[pfn]&(1<<kpfBuddy) == 0 {
			continue
		}
		heads++
		n := uint64(1)
		for o := uint64(1); o <= maxOrder; o++ {
			size := uint64(1) << o
			if pfn%size != 0 || pfn+size > uint64(len(fl)) {
				break
			}
			clean := true
			for q := pfn + size/2; q < pfn+size; q++ {
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
		fromFlags += n
		pfn += n - 1
	}
	fromInfo, err := buddyinfoPages()
	if err != nil {
		return err
	}
	fmt.Printf("kpf_buddy_pages=%d kpf_buddy_heads=%d buddyinfo_pages=%d\n", fromFlags, heads, fromInfo)
	return nil
}

// buddyinfoPages sums /proc/buddyinfo: "Node 0, zone DMA32 c0 c1 ... c10".
func buddyinfoPages() (uint64, error) {
	b, err := os.ReadFile("/proc/buddyinfo")
	if err != nil {
		return 0, fmt.Errorf("buddyinfo: %w", err)
	}
	var total uint64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		for o, s := range f[4:] {
			n, err := strconv.ParseUint(s, 10, 64)
			if err != nil {
				return 0, fmt.Errorf("buddyinfo: %q: %w", line, err)
			}
			total += n << o
		}
	}
	return total, nil
}
