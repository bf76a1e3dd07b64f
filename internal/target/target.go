// Package target checks and opens the block devices that khib writes
// images to, so that an image never lands on something the running system
// uses.
package target

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Dev is a block device number.
type Dev struct{ Major, Minor uint32 }

func (d Dev) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// Info describes a block device that may take an image.
type Info struct {
	Path string
	Dev  Dev
	Size int64  // bytes
	Disk Dev    // the whole disk it belongs to (itself for a whole disk)
	Name string // kernel name, e.g. vdb1
}

// ErrInUse means the device is mounted, used as swap, or held by another
// device (device mapper, md).
var ErrInUse = errors.New("device in use")

// Root is the filesystem root under which /proc and /sys are read; tests
// point it at a fake tree.
var Root = "/"

// Inspect returns what khib needs to know about the block device at path.
func Inspect(path string) (*Info, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("target %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return nil, fmt.Errorf("target %s is not a block device (files and swap come later; give a partition or disk)", path)
	}
	d := Dev{unix.Major(st.Rdev), unix.Minor(st.Rdev)}
	info := &Info{Path: path, Dev: d, Disk: d}
	sys := filepath.Join(Root, "sys/dev/block", d.String())
	if real, err := filepath.EvalSymlinks(sys); err == nil {
		info.Name = filepath.Base(real)
		if _, err := os.Stat(filepath.Join(real, "partition")); err == nil {
			if pd, err := readDev(filepath.Join(filepath.Dir(real), "dev")); err == nil {
				info.Disk = pd
			}
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", path, err)
	}
	defer f.Close()
	size, err := DeviceSize(f)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", path, err)
	}
	info.Size = size
	return info, nil
}

// DeviceSize returns the size of an open block device (BLKGETSIZE64).
func DeviceSize(f *os.File) (int64, error) {
	var size uint64
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size)))
	if errno != 0 {
		return 0, fmt.Errorf("BLKGETSIZE64: %w", errno)
	}
	return int64(size), nil
}

// CheckUnused refuses a device that A has mounted (itself, or a partition
// of it, or the disk it is a partition of), uses as swap, or that another
// device holds.
func CheckUnused(info *Info) error {
	mounts, err := mountedDevs()
	if err != nil {
		return err
	}
	for dev, where := range mounts {
		if dev == info.Dev {
			return fmt.Errorf("%s is mounted on %s: %w", info.Path, where, ErrInUse)
		}
		if info.Disk == info.Dev && diskOf(dev) == info.Dev {
			return fmt.Errorf("%s has a partition mounted on %s: %w", info.Path, where, ErrInUse)
		}
		if info.Disk != info.Dev && dev == info.Disk {
			return fmt.Errorf("the disk of %s is mounted on %s: %w", info.Path, where, ErrInUse)
		}
	}
	swaps, err := swapDevs()
	if err != nil {
		return err
	}
	for _, s := range swaps {
		if s.dev == info.Dev || (info.Disk == info.Dev && diskOf(s.dev) == info.Dev) {
			return fmt.Errorf("%s is in use as swap (%s); swap targets come later: %w", info.Path, s.path, ErrInUse)
		}
	}
	holders, _ := os.ReadDir(filepath.Join(Root, "sys/dev/block", info.Dev.String(), "holders"))
	if len(holders) > 0 {
		return fmt.Errorf("%s is held by %s: %w", info.Path, holders[0].Name(), ErrInUse)
	}
	return nil
}

// mountedDevs maps the device numbers in /proc/self/mountinfo to a mount
// point.
func mountedDevs() (map[Dev]string, error) {
	f, err := os.Open(filepath.Join(Root, "proc/self/mountinfo"))
	if err != nil {
		return nil, fmt.Errorf("reading mounts: %w", err)
	}
	defer f.Close()
	out := map[Dev]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 5 {
			continue
		}
		if d, err := parseDev(fields[2]); err == nil && d.Major != 0 {
			if _, seen := out[d]; !seen {
				out[d] = fields[4]
			}
		}
	}
	return out, s.Err()
}

type swapDev struct {
	path string
	dev  Dev
}

func swapDevs() ([]swapDev, error) {
	f, err := os.Open(filepath.Join(Root, "proc/swaps"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil // kernel without swap
	}
	if err != nil {
		return nil, fmt.Errorf("reading swaps: %w", err)
	}
	defer f.Close()
	var out []swapDev
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 2 || fields[0] == "Filename" || fields[1] != "partition" {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join(Root, fields[0]), &st) == nil {
			out = append(out, swapDev{fields[0], Dev{unix.Major(st.Rdev), unix.Minor(st.Rdev)}})
		}
	}
	return out, s.Err()
}

// diskOf returns the whole disk a device belongs to.
func diskOf(d Dev) Dev {
	real, err := filepath.EvalSymlinks(filepath.Join(Root, "sys/dev/block", d.String()))
	if err != nil {
		return d
	}
	if _, err := os.Stat(filepath.Join(real, "partition")); err != nil {
		return d
	}
	if pd, err := readDev(filepath.Join(filepath.Dir(real), "dev")); err == nil {
		return pd
	}
	return d
}

func readDev(path string) (Dev, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Dev{}, err
	}
	return parseDev(strings.TrimSpace(string(b)))
}

func parseDev(s string) (Dev, error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return Dev{}, fmt.Errorf("bad device number %q", s)
	}
	ma, err1 := strconv.ParseUint(a, 10, 32)
	mi, err2 := strconv.ParseUint(b, 10, 32)
	if err1 != nil || err2 != nil {
		return Dev{}, fmt.Errorf("bad device number %q", s)
	}
	return Dev{uint32(ma), uint32(mi)}, nil
}

// BlockDevices lists /dev paths of all block devices, whole disks first,
// as the helper does to find its target after (re)discovering devices.
func BlockDevices() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(Root, "sys/class/block"))
	if err != nil {
		return nil, fmt.Errorf("listing block devices: %w", err)
	}
	var disks, parts []string
	for _, e := range ents {
		p := filepath.Join(Root, "dev", e.Name())
		if _, err := os.Stat(filepath.Join(Root, "sys/class/block", e.Name(), "partition")); err == nil {
			parts = append(parts, p)
		} else {
			disks = append(disks, p)
		}
	}
	return append(disks, parts...), nil
}

// Find opens, read-write, the first block device whose content satisfies
// match (given a reader over its first bytes). The helper uses it to find
// the device that A reserved, by the nonce A wrote there, whatever the
// device is called in the helper.
func Find(match func(r io.ReaderAt) bool) (*os.File, string, error) {
	paths, err := BlockDevices()
	if err != nil {
		return nil, "", err
	}
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			continue
		}
		if match(f) {
			return f, p, nil
		}
		f.Close()
	}
	looked := "no block devices at all"
	if len(paths) > 0 {
		looked = "looked at " + strings.Join(paths, " ")
	}
	return nil, "", fmt.Errorf("no block device carries khib's reservation (%s): the helper kernel cannot read the target "+
		"or has no driver for it; choose a target on a disk the helper kernel supports", looked)
}
