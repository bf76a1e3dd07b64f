package target

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/blockmap"
)

// File is an image file on one of A's filesystems, as the helpers reach
// it: extents of a block device that they write and read raw, never
// mounting the filesystem.
type File struct {
	Path   string
	Dev    string // the filesystem's block device, e.g. /dev/vda1
	FSType string
	Size   int64
	// Extents are the file's blocks on Dev, in file order, page aligned
	// and merged where they touch.
	Extents []blockmap.Extent
	// Immutable is whether the file carries the immutable attribute
	// (chattr +i), which keeps defragmenters from moving its blocks.
	Immutable bool
}

// PageSize is the unit of image space.
const PageSize = blockmap.PageSize

// fsImmutableFL is FS_IMMUTABLE_FL of include/uapi/linux/fs.h.
const fsImmutableFL = 0x10

// Filesystem magics (statfs f_type) that khib names.
const (
	magicExt   = 0xEF53
	magicXFS   = 0x58465342
	magicBtrfs = 0x9123683E
	magicTmpfs = 0x01021994
	magicRamfs = 0x858458F6
	magicNFS   = 0x6969
	magicFUSE  = 0x65735546
	magicOvl   = 0x794C7630
	magicF2FS  = 0xF2F52010
	magicMSDOS = 0x4D44
	magicZFS   = 0x2FC12FC1
	magicBcach = 0xCA451A4E
)

// fsRefusal says why khib cannot keep an image in a file on a filesystem
// of type magic, or "" if it can.
func fsRefusal(magic int64) (name, why string) {
	switch uint32(magic) {
	case magicExt:
		return "ext2/3/4", ""
	case magicXFS:
		return "xfs", ""
	case magicBtrfs:
		return "btrfs", "its extents move (copy on write) and FIEMAP gives btrfs's own addresses, not the device's"
	case magicBcach:
		return "bcachefs", "its extents move (copy on write)"
	case magicF2FS:
		return "f2fs", "its garbage collector moves blocks"
	case magicZFS:
		return "zfs", "its blocks are not plain extents of one device"
	case magicTmpfs, magicRamfs:
		return "tmpfs", "it lives in RAM and does not survive the power-off"
	case magicNFS, magicFUSE, magicOvl:
		return "a network, FUSE or overlay filesystem", "the helper kernel cannot reach its blocks (use dir: for a filesystem the helper mounts)"
	case magicMSDOS:
		return "vfat", "it keeps no immutable attribute, so nothing stops its blocks from moving (use dir: to write the image through vfat)"
	}
	return fmt.Sprintf("filesystem type %#x", magic), "khib keeps images only on ext2/3/4 and xfs, whose file blocks stay put"
}

// InspectFile checks that path is a file khib can keep an image in and
// returns where its blocks lie. Every refusal says why and what to do.
func InspectFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("image file %s: %w", path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("image file %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("image file %s is not a regular file", path)
	}
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &sfs); err != nil {
		return nil, fmt.Errorf("image file %s: statfs: %w", path, err)
	}
	if name, why := fsRefusal(int64(sfs.Type)); why != "" {
		return nil, fmt.Errorf("image file %s is on %s, where khib cannot keep an image: %s; choose a file on ext4 or xfs, or a partition", path, name, why)
	}
	dev, err := fsDevice(Dev{unix.Major(st.Dev), unix.Minor(st.Dev)})
	if err != nil {
		return nil, fmt.Errorf("image file %s: %w", path, err)
	}
	out := &File{Path: path, Dev: dev, Size: st.Size, FSType: fsName(int64(sfs.Type))}
	if st.Size < PageSize*8 || st.Size%PageSize != 0 {
		return nil, fmt.Errorf("image file %s has %d bytes, not a multiple of 4096 of at least 32 KiB; remove it and run khib prepare --target file:%s", path, st.Size, path)
	}
	fix := fmt.Sprintf("remove it and run khib prepare --target file:%s", path)
	if out.Extents, err = deviceExtents(f, "image file", st.Size, badExtent, fix); err != nil {
		return nil, err
	}
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	out.Immutable = err == nil && flags&fsImmutableFL != 0
	return out, nil
}

// deviceExtents reads the extents of the open file f of size bytes with
// FIEMAP and returns them as device extents in file order, merged where
// they touch. It refuses holes, a shortfall, extents that are not page
// aligned and those bad calls bad ("" for a good one); what names the
// file in errors, fix says what to do.
func deviceExtents(f *os.File, what string, size int64, bad func(flags uint32) string, fix string) ([]blockmap.Extent, error) {
	path := f.Name()
	ext, err := Fiemap(f)
	if err != nil {
		return nil, fmt.Errorf("%s %s: its filesystem cannot report where its blocks are: %w", what, path, err)
	}
	var out []blockmap.Extent
	var next uint64
	for _, e := range ext {
		if e.Logical != next {
			return nil, fmt.Errorf("%s %s has a hole at %d; %s", what, path, next, fix)
		}
		if why := bad(e.Flags); why != "" {
			return nil, fmt.Errorf("%s %s: the extent at %d %s; %s", what, path, e.Logical, why, fix)
		}
		if e.Physical%PageSize != 0 || e.Length%PageSize != 0 {
			return nil, fmt.Errorf("%s %s: the extent at %d is not page aligned on the device", what, path, e.Logical)
		}
		if n := len(out); n > 0 && out[n-1].End() == int64(e.Physical) {
			out[n-1].Len += int64(e.Length)
		} else {
			out = append(out, blockmap.Extent{Off: int64(e.Physical), Len: int64(e.Length)})
		}
		next += e.Length
	}
	if int64(next) < size || len(out) == 0 {
		return nil, fmt.Errorf("%s %s has blocks for %d of its %d bytes; %s", what, path, next, size, fix)
	}
	return out, nil
}

func badExtent(flags uint32) string {
	switch {
	case flags&ExtentShared != 0:
		return "shares its blocks with another file (a reflink or snapshot): writing them would change that file too"
	case flags&ExtentUnwritten != 0:
		return "is allocated but unwritten, and the filesystem may still zero or split it"
	case flags&(ExtentUnknown|ExtentDelalloc) != 0:
		return "has no blocks on the device yet"
	case flags&(ExtentEncoded|ExtentDataEncrypted) != 0:
		return "is compressed or encrypted by the filesystem"
	case flags&(ExtentDataInline|ExtentDataTail|ExtentNotAligned) != 0:
		return "is packed with other data (inline or tail)"
	}
	return ""
}

func fsName(magic int64) string { name, _ := fsRefusal(magic); return name }

// fsDevice returns the /dev node of the block device d, refusing one the
// helper kernel cannot see (device mapper, md: they are assembled by A's
// userspace, which the helpers do not have).
func fsDevice(d Dev) (string, error) {
	if d.Major == 0 {
		return "", fmt.Errorf("its filesystem has no block device")
	}
	real, err := filepath.EvalSymlinks(filepath.Join(Root, "sys/dev/block", d.String()))
	if err != nil {
		return "", fmt.Errorf("block device %s: %w", d, err)
	}
	name := filepath.Base(real)
	if slaves, _ := os.ReadDir(filepath.Join(real, "slaves")); len(slaves) > 0 {
		return "", fmt.Errorf("its filesystem is on %s, built by device mapper or md (LVM, dm-crypt, RAID) over %s, which the helper kernel cannot assemble; choose a file on a plain partition", name, slaves[0].Name())
	}
	if strings.HasPrefix(name, "loop") {
		return "", fmt.Errorf("its filesystem is on %s, a loop device, which the helper kernel does not have", name)
	}
	return filepath.Join(Root, "dev", name), nil
}

// PrepareFile creates path with size bytes (a multiple of 4096) for
// images: allocated (fallocate, so the filesystem can choose long
// extents), written once with zeros (so no extent stays unwritten, which
// the filesystem could still zero or split), synced and made immutable
// (so no defragmenter moves its blocks and nothing writes it through the
// filesystem). An existing file is refused: khib does not overwrite a
// file it did not make; remove it first. progress, if not nil, is called
// as the zeros are written.
func PrepareFile(path string, size int64, progress func(done, total int64)) error {
	if size < PageSize*8 || size%PageSize != 0 {
		return fmt.Errorf("image file size %d: give a multiple of 4096 of at least 32 KiB", size)
	}
	dir := filepath.Dir(path)
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return fmt.Errorf("image file %s: %w", path, err)
	}
	if name, why := fsRefusal(int64(sfs.Type)); why != "" {
		return fmt.Errorf("image file %s would be on %s, where khib cannot keep an image: %s; choose a file on ext4 or xfs, or a partition", path, name, why)
	}
	if avail := int64(sfs.Bavail) * int64(sfs.Bsize); avail < size {
		return fmt.Errorf("image file %s: %s has %d MiB free, the file needs %d MiB; free some space or give a smaller --size", path, dir, avail>>20, size>>20)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("creating image file: %w", err)
	}
	ok := false
	defer func() {
		f.Close()
		if !ok {
			os.Remove(path)
		}
	}()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err != nil {
		if errors.Is(err, unix.ENOSPC) {
			return fmt.Errorf("image file %s: the filesystem is full (%d MiB asked): %w", path, size>>20, err)
		}
		return fmt.Errorf("image file %s: fallocate: %w", path, err)
	}
	zeros := make([]byte, 4<<20)
	for off := int64(0); off < size; {
		n := min(int64(len(zeros)), size-off)
		if _, err := f.WriteAt(zeros[:n], off); err != nil {
			return fmt.Errorf("image file %s: writing it at %d: %w", path, off, err)
		}
		off += n
		if progress != nil {
			progress(off, size)
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("image file %s: %w", path, err)
	}
	// The zeros need not stay in the page cache: nothing reads the file
	// through the filesystem, and every cached page would be saved as
	// part of A's memory.
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	if err := SetImmutable(f, true); err != nil {
		return fmt.Errorf("image file %s: %w", path, err)
	}
	ok = true
	return nil
}

// SetImmutable sets or clears the immutable attribute (chattr +i / -i).
func SetImmutable(f *os.File, on bool) error {
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return fmt.Errorf("reading its attributes: %w", err)
	}
	if on {
		flags |= fsImmutableFL
	} else {
		flags &^= fsImmutableFL
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags); err != nil {
		return fmt.Errorf("setting the immutable attribute: %w", err)
	}
	return nil
}
