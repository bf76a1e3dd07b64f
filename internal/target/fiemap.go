package target

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FIEMAP (Documentation/filesystems/fiemap.rst): the ioctl, and the flags
// of an extent that khib must know.
const (
	fsIocFiemap = 0xC020660B // _IOWR('f', 11, struct fiemap)

	fiemapFlagSync = 0x1

	ExtentLast          = 0x1
	ExtentUnknown       = 0x2
	ExtentDelalloc      = 0x4
	ExtentEncoded       = 0x8
	ExtentDataEncrypted = 0x80
	ExtentNotAligned    = 0x100
	ExtentDataInline    = 0x200
	ExtentDataTail      = 0x400
	ExtentUnwritten     = 0x800
	ExtentMerged        = 0x1000
	ExtentShared        = 0x2000
)

// FileExtent is one extent of a file as FIEMAP reports it.
type FileExtent struct {
	Logical, Physical, Length uint64
	Flags                     uint32
}

// fiemapBatch is how many extents one ioctl asks for.
const fiemapBatch = 256

// Fiemap returns every extent of the open file f, syncing it first
// (FIEMAP_FLAG_SYNC) so that no extent is still delayed.
func Fiemap(f *os.File) ([]FileExtent, error) {
	const hdr, ext = 32, 56
	buf := make([]byte, hdr+fiemapBatch*ext)
	le := binary.LittleEndian
	var out []FileExtent
	start := uint64(0)
	for {
		clear(buf)
		le.PutUint64(buf[0:], start)           // fm_start
		le.PutUint64(buf[8:], ^uint64(0))      // fm_length
		le.PutUint32(buf[16:], fiemapFlagSync) // fm_flags
		le.PutUint32(buf[24:], fiemapBatch)    // fm_extent_count
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0])))
		if errno != 0 {
			return nil, fmt.Errorf("FIEMAP on %s: %w", f.Name(), errno)
		}
		n := le.Uint32(buf[20:]) // fm_mapped_extents
		if n == 0 {
			return out, nil
		}
		for i := uint32(0); i < n && i < fiemapBatch; i++ {
			e := buf[hdr+int(i)*ext:]
			fe := FileExtent{Logical: le.Uint64(e[0:]), Physical: le.Uint64(e[8:]), Length: le.Uint64(e[16:]), Flags: le.Uint32(e[40:])}
			out = append(out, fe)
			if fe.Flags&ExtentLast != 0 {
				return out, nil
			}
			start = fe.Logical + fe.Length
		}
	}
}
