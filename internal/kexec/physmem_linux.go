package kexec

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

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
// pages during a restore, through /dev/mem mapped a window at a time. It
// is safe for concurrent use: writers share the windows, which stay
// mapped while anyone writes through them.
type PhysWriter struct {
	fd int
	// avoid is the running kernel's own RAM: /dev/mem refuses a mapping
	// that touches any page of it, so windows stop at its edges.
	avoid []Range

	mu   sync.Mutex
	wins []*physWin
	tick uint64
}

// physWin is one mapped window.
type physWin struct {
	base uint64
	m    []byte
	refs int    // writes in progress through it
	used uint64 // tick of its last use
}

// physWindow is the size and alignment of a window, and physWindows how
// many stay mapped at most when nobody writes through them: a few, for
// writers working on neighbouring chunks.
const (
	physWindow  = 64 << 20
	physWindows = 4
)

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
// len(b) bytes there. A page that already reads as zeros is not written:
// in a virtual machine, memory the guest has not touched since power-on
// is zero and not yet backed by the host, and writing zeros into it would
// make the host allocate it (under the rig's QEMU TCG, clearing ran at
// about 250 MB/s for that reason). Reading a page costs about what
// clearing it does on real hardware.
func (w *PhysWriter) Write(addr uint64, b []byte, zero bool) error {
	for len(b) > 0 {
		win, err := w.acquire(addr)
		if err != nil {
			return err
		}
		n := min(uint64(len(b)), win.base+uint64(len(win.m))-addr)
		dst := win.m[addr-win.base : addr-win.base+n]
		if zero {
			clearNonZero(dst)
		} else {
			copy(dst, b[:n])
		}
		w.release(win)
		addr += n
		b = b[n:]
	}
	return nil
}

// Direct returns the n bytes of physical memory at addr, writable, and a
// function to call once they are written, for a caller that builds
// pages in place (C decoding A's pages). It returns nil if any of them
// is in the running kernel's own RAM (the ranges given to NewPhysWriter),
// or if they cross a window's edge. The memory must not be used after
// done.
func (w *PhysWriter) Direct(addr uint64, n int) (mem []byte, done func(), err error) {
	for _, r := range w.avoid {
		if addr < r.End && r.Start < addr+uint64(n) {
			return nil, nil, nil
		}
	}
	win, err := w.acquire(addr)
	if err != nil {
		return nil, nil, err
	}
	end := win.base + uint64(len(win.m))
	if n <= 0 || addr+uint64(n) > end {
		w.release(win)
		return nil, nil, nil
	}
	off := addr - win.base
	return win.m[off : off+uint64(n) : off+uint64(n)], func() { w.release(win) }, nil
}

// zeroPage is a page of zeros to compare with.
var zeroPage [PageSize]byte

// clearNonZero clears the pages of b that are not all zeros already.
func clearNonZero(b []byte) {
	for len(b) > 0 {
		n := min(len(b), PageSize)
		if !bytes.Equal(b[:n], zeroPage[:n]) {
			clear(b[:n])
		}
		b = b[n:]
	}
}

// acquire returns the window holding addr, mapped and held.
func (w *PhysWriter) acquire(addr uint64) (*physWin, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tick++
	for _, x := range w.wins {
		if addr >= x.base && addr < x.base+uint64(len(x.m)) {
			x.refs++
			x.used = w.tick
			return x, nil
		}
	}
	// Make room: drop the least recently used windows nobody holds.
	for len(w.wins) >= physWindows {
		lru := -1
		for i, x := range w.wins {
			if x.refs == 0 && (lru < 0 || x.used < w.wins[lru].used) {
				lru = i
			}
		}
		if lru < 0 {
			break // all held: map one more for now
		}
		unix.Munmap(w.wins[lru].m)
		w.wins = append(w.wins[:lru], w.wins[lru+1:]...)
	}
	start := addr &^ (physWindow - 1)
	end := start + physWindow
	for _, r := range w.avoid {
		if r.End > start && r.End <= addr {
			start = r.End
		}
		if r.Start > addr && r.Start < end {
			end = r.Start
		}
	}
	m, base, err := mapPhys(w.fd, start, end-start, true)
	if err != nil {
		return nil, err
	}
	x := &physWin{base: base, m: m, refs: 1, used: w.tick}
	w.wins = append(w.wins, x)
	return x, nil
}

func (w *PhysWriter) release(x *physWin) {
	w.mu.Lock()
	x.refs--
	w.mu.Unlock()
}

// Close unmaps the windows and closes /dev/mem. No Write may be running.
func (w *PhysWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, x := range w.wins {
		unix.Munmap(x.m)
	}
	w.wins = nil
	if w.fd < 0 {
		return nil
	}
	err := unix.Close(w.fd)
	w.fd = -1
	return err
}
