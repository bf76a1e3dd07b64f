package main

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/elfcore"
	"github.com/khib/khib/internal/image"
)

// mappedCore reads A's memory for the classification through mappings of
// /proc/vmcore, one window at a time, instead of read(2), which maps each
// old page into the kernel, copies it through a bounce buffer and unmaps
// it again (B's classification of a 4 GiB guest with 3.6 GiB in use,
// TCG: 0.38-0.50 s with reads, 0.28-0.33 s mapped).
type mappedCore struct {
	fd   int
	core *elfcore.File
	win  []byte
	base uint64 // physical address of win[0]
}

// mappedCoreWindow is the size of one mapping: struct pages come 64 bytes
// per page of A, 64 MiB of them for 4 GiB, read in increasing order.
const mappedCoreWindow = 8 << 20

func openMappedCore(core *elfcore.File) (*mappedCore, error) {
	fd, err := unix.Open("/proc/vmcore", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /proc/vmcore: %w", err)
	}
	return &mappedCore{fd: fd, core: core}, nil
}

// ReadAtPhys reads len(p) bytes of A's memory at physical address addr.
func (m *mappedCore) ReadAtPhys(p []byte, addr uint64) (int, error) {
	n := 0
	for n < len(p) {
		a := addr + uint64(n)
		if m.win == nil || a < m.base || a >= m.base+uint64(len(m.win)) {
			if err := m.mapAt(a); err != nil {
				return n, err
			}
		}
		n += copy(p[n:], m.win[a-m.base:])
	}
	return n, nil
}

// mapAt maps the window of A's memory that holds physical address a.
func (m *mappedCore) mapAt(a uint64) error {
	m.unmap()
	l, ok := m.core.LoadAt(a)
	if !ok {
		return fmt.Errorf("reading A's memory at %#x: %w", a, elfcore.ErrNotInCore)
	}
	start := max(l.PhysAddr, a&^(mappedCoreWindow-1))
	end := min(l.End(), start+mappedCoreWindow)
	w, err := mapLoad(m.fd, l, start-l.PhysAddr, end-start)
	if err != nil {
		return err
	}
	m.win, m.base = w, start
	return nil
}

// mapLoad maps n bytes of A's memory range l, from off bytes into it,
// read-only from /proc/vmcore (open as fd).
func mapLoad(fd int, l elfcore.Load, off, n uint64) ([]byte, error) {
	if (l.Offset+off)%image.PageSize != 0 {
		return nil, fmt.Errorf("mapping A's memory at %#x: the core's data is not page aligned", l.PhysAddr+off)
	}
	m, err := unix.Mmap(fd, int64(l.Offset+off), int(n), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("mapping A's memory at %#x: %w", l.PhysAddr+off, err)
	}
	return m, nil
}

func (m *mappedCore) unmap() {
	if m.win != nil {
		unix.Munmap(m.win)
		m.win = nil
	}
}

// Close unmaps the window and closes /proc/vmcore.
func (m *mappedCore) Close() error {
	m.unmap()
	return unix.Close(m.fd)
}
