package store

import (
	"errors"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directIO reads and writes a block device through two descriptors: one
// opened with O_DIRECT for large aligned transfers, which go from the
// caller's buffer to the device without a copy through the page cache,
// and the ordinary one for the rest (superblocks, map pages, anything
// unaligned). The kernel keeps the two coherent: a direct transfer first
// writes back and then drops the cached pages of its range
// (mm/filemap.c, kiocb_invalidate_pages).
//
// Under QEMU TCG the copy and the page-cache bookkeeping of buffered I/O
// were a third of the helper's save and a quarter of its restore (CPU
// profiles, khib.profile=1); a direct write also lets the device work
// while the CPU compresses the next piece.
type directIO struct {
	*os.File          // buffered
	direct   *os.File // O_DIRECT, nil if the device refused it
	off      atomic.Bool
}

// directMin is the smallest transfer worth a direct one, and directAlign
// the alignment of offset, length and buffer address it needs (the
// largest logical block size in use).
const (
	directMin   = 64 << 10
	directAlign = 4096
)

// newDirectIO adds an O_DIRECT descriptor to f when f is a block device.
func newDirectIO(f *os.File, writable bool) *directIO {
	d := &directIO{File: f}
	st, err := f.Stat()
	if err != nil || st.Mode()&os.ModeDevice == 0 {
		return d
	}
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	if g, err := os.OpenFile(f.Name(), flag|unix.O_DIRECT, 0); err == nil {
		d.direct = g
	}
	return d
}

func (d *directIO) useDirect(p []byte, off int64) bool {
	return d.direct != nil && !d.off.Load() && len(p) >= directMin &&
		off%directAlign == 0 && len(p)%directAlign == 0 &&
		uintptr(unsafe.Pointer(unsafe.SliceData(p)))%directAlign == 0
}

// ReadAt reads p at off, directly when p and off allow it.
func (d *directIO) ReadAt(p []byte, off int64) (int, error) {
	if d.useDirect(p, off) {
		n, err := d.direct.ReadAt(p, off)
		if !errors.Is(err, unix.EINVAL) {
			return n, err
		}
		d.off.Store(true) // the device or its driver refuses: buffered from now on
	}
	return d.File.ReadAt(p, off)
}

// WriteAt writes p at off, directly when p and off allow it.
func (d *directIO) WriteAt(p []byte, off int64) (int, error) {
	if d.useDirect(p, off) {
		n, err := d.direct.WriteAt(p, off)
		if !errors.Is(err, unix.EINVAL) {
			return n, err
		}
		d.off.Store(true)
	}
	return d.File.WriteAt(p, off)
}

// Close closes both descriptors.
func (d *directIO) Close() error {
	if d.direct != nil {
		d.direct.Close()
	}
	return d.File.Close()
}
