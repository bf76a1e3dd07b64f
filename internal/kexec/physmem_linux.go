package kexec

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// A helper reaches A's memory through mmap of /dev/mem, never read(2) or
// write(2): those stop at the running kernel's own top of RAM
// (arch/x86/mm/mmap.c: valid_phys_addr_range), which for a helper
// confined to R is below most of A's memory. With STRICT_DEVMEM the
// helper may map pages that are not its own RAM, which is all of A's,
// since the helper's memory map marks them reserved.

func openMem(write bool) (int, error) {
	flags := unix.O_RDONLY
	if write {
		flags = unix.O_RDWR
	}
	fd, err := unix.Open("/dev/mem", flags|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening /dev/mem: %w", err)
	}
	return fd, nil
}

// mapPhys maps the pages of /dev/mem that cover [addr, addr+n).
func mapPhys(fd int, addr, n uint64, write bool) (m []byte, base uint64, err error) {
	base = addr &^ (PageSize - 1)
	prot := unix.PROT_READ
	if write {
		prot |= unix.PROT_WRITE
	}
	m, err = unix.Mmap(fd, int64(base), int(alignUp(addr+n, PageSize)-base), prot, unix.MAP_SHARED)
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			err = ErrRAM
		}
		return nil, 0, fmt.Errorf("mapping /dev/mem at %#x (%d MiB): %w", base, n>>20, err)
	}
	return m, base, nil
}

// ReadPhys reads n bytes of physical memory at addr.
func ReadPhys(addr uint64, n int) ([]byte, error) {
	fd, err := openMem(false)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	m, base, err := mapPhys(fd, addr, uint64(n), false)
	if err != nil {
		return nil, err
	}
	defer unix.Munmap(m)
	out := make([]byte, n)
	copy(out, m[addr-base:])
	return out, nil
}

// WritePhys writes b to physical memory at addr.
func WritePhys(addr uint64, b []byte) error {
	fd, err := openMem(true)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	m, base, err := mapPhys(fd, addr, uint64(len(b)), true)
	if err != nil {
		return err
	}
	copy(m[addr-base:], b)
	return unix.Munmap(m)
}

// PhysWriter writes large amounts of physical memory, such as all of A's
// pages during a restore, through /dev/mem mapped a window at a time.
type PhysWriter struct {
	fd   int
	base uint64
	m    []byte
	// avoid is the running kernel's own RAM: /dev/mem refuses a mapping
	// that touches any page of it, so windows stop at its edges.
	avoid []Range
}

// physWindow is how much a PhysWriter maps at once.
const physWindow = 64 << 20

// NewPhysWriter opens /dev/mem for writing; avoid lists the running
// kernel's own RAM, which is never written.
func NewPhysWriter(avoid []Range) (*PhysWriter, error) {
	fd, err := openMem(true)
	if err != nil {
		return nil, err
	}
	return &PhysWriter{fd: fd, avoid: avoid}, nil
}

// Write copies b to physical address addr, or, with zero, clears
// len(b) bytes there.
func (w *PhysWriter) Write(addr uint64, b []byte, zero bool) error {
	for len(b) > 0 {
		if w.m == nil || addr < w.base || addr >= w.base+uint64(len(w.m)) {
			if err := w.mapAt(addr); err != nil {
				return err
			}
		}
		n := min(uint64(len(b)), w.base+uint64(len(w.m))-addr)
		dst := w.m[addr-w.base : addr-w.base+n]
		if zero {
			clear(dst)
		} else {
			copy(dst, b[:n])
		}
		addr += n
		b = b[n:]
	}
	return nil
}

func (w *PhysWriter) mapAt(addr uint64) error {
	w.unmap()
	start := addr &^ (PageSize - 1)
	end := start + physWindow
	for _, r := range w.avoid {
		if r.Start > start && r.Start < end {
			end = r.Start
		}
	}
	m, base, err := mapPhys(w.fd, start, end-start, true)
	if err != nil {
		return err
	}
	w.m, w.base = m, base
	return nil
}

func (w *PhysWriter) unmap() {
	if w.m != nil {
		unix.Munmap(w.m)
		w.m = nil
	}
}

// Close unmaps the last window and closes /dev/mem.
func (w *PhysWriter) Close() error {
	w.unmap()
	if w.fd < 0 {
		return nil
	}
	err := unix.Close(w.fd)
	w.fd = -1
	return err
}
