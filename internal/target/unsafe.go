package target

import (
	"sort"
	"unsafe"
)

// addrOf is the virtual address of b's first byte, for /proc/self/pagemap.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }

func sortInt64(s []int64) { sort.Slice(s, func(i, j int) bool { return s[i] < s[j] }) }
