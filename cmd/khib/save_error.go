package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// deviceErrnos are the errors by which a block device refuses the image:
// it fails, is full, turned read-only or went away. A save that ends in
// one of them gets a reason that says so in words (saveFailure).
var deviceErrnos = []unix.Errno{unix.EIO, unix.ENOSPC, unix.ENXIO, unix.ENODEV, unix.ENOMEDIUM, unix.EROFS}

// saveFailure is the reason a save that failed writing to the device at
// path (size bytes, as the device reports) gives A. Errors of the device
// itself say what happened to it and what to do; the helper's writes go
// through the page cache, so a failed write usually surfaces only at the
// final sync, and where it failed comes from the kernel's own log. Other
// errors (the device too small, A's memory unreadable) keep their words.
func saveFailure(path string, size int64, err error) string {
	var errno unix.Errno
	if !errors.As(err, &errno) || !slices.Contains(deviceErrnos, errno) {
		return fmt.Sprintf("save to %s: %v", path, err)
	}
	msgs, _ := readKmsg("/dev/kmsg") // without the log, the reason only lacks the offset
	return describeDeviceFailure(sysfsBlockDev("/sys", path, size), errno, err, msgs)
}

// blockDev is what the kernel calls the target.
type blockDev struct {
	Path  string
	Size  int64
	Disk  string // the whole disk's name in the kernel's messages ("vda")
	Start uint64 // the partition's first sector on Disk; 0 for a whole disk
	Gone  bool   // the device is no longer in sysfs: it was unplugged
}

// sysfsBlockDev looks path up under sysRoot/class/block.
func sysfsBlockDev(sysRoot, path string, size int64) blockDev {
	d := blockDev{Path: path, Size: size}
	if p, err := filepath.EvalSymlinks(path); err == nil {
		path = p
	}
	name := filepath.Base(path)
	d.Disk = name
	dir := filepath.Join(sysRoot, "class", "block", name)
	if _, err := os.Stat(dir); err != nil {
		d.Gone = errors.Is(err, os.ErrNotExist)
		return d
	}
	if _, err := os.Stat(filepath.Join(dir, "partition")); err != nil {
		return d
	}
	// A partition's directory sits in its disk's: .../block/vda/vda3.
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		d.Disk = filepath.Base(filepath.Dir(real))
	}
	if b, err := os.ReadFile(filepath.Join(dir, "start")); err == nil {
		d.Start, _ = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	}
	return d
}

// kernelWriteErrorRE matches the block layer's report of a failed write
// request (blk_print_req_error): "I/O error, dev vda, sector 130952 op
// 0x1:(WRITE) flags ...", or "critical space allocation error, ..." for a
// device out of space.
var kernelWriteErrorRE = regexp.MustCompile(`^(.+?) error, dev (\S+), sector (\d+) op 0x1:\(WRITE\)`)

// firstWriteError finds the first failed write to disk in the kernel's
// messages: the kind of error and the first sector of the failed request.
func firstWriteError(msgs []string, disk string) (kind string, sector uint64, ok bool) {
	for _, m := range msgs {
		f := kernelWriteErrorRE.FindStringSubmatch(m)
		if f == nil || f[2] != disk {
			continue
		}
		s, err := strconv.ParseUint(f[3], 10, 64)
		if err != nil {
			continue
		}
		return f[1], s, true
	}
	return "", 0, false
}

func describeDeviceFailure(d blockDev, errno unix.Errno, err error, msgs []string) string {
	where := ""
	if kind, sector, ok := firstWriteError(msgs, d.Disk); ok && sector >= d.Start {
		off := (sector - d.Start) * 512
		where = fmt.Sprintf(" at %.1f MiB of the %d MiB it reports (the kernel's %s error at sector %d of %s)",
			float64(off)/(1<<20), d.Size>>20, kind, sector, d.Disk)
	}
	var what string
	switch {
	case d.Gone:
		what = fmt.Sprintf("the device disappeared during the save (%v%s); reconnect it or choose another target", errno, where)
	case errno == unix.ENOSPC:
		what = fmt.Sprintf("the device is full (%v)%s: it holds less than it claims, or the storage behind it ran out of space; choose a target that holds the whole image", errno, where)
	case errno == unix.EROFS:
		what = fmt.Sprintf("the device turned read-only (%v)%s; choose another target", errno, where)
	default:
		what = fmt.Sprintf("the device failed a write (%v)%s: it is failing, smaller than it claims, full, or was removed; check it or choose another target", errno, where)
	}
	return fmt.Sprintf("save to %s failed: %s; no usable image was written (%v)", d.Path, what, err)
}

// maxKmsgRecords bounds one pass over the kernel log.
const maxKmsgRecords = 1 << 16

// readKmsg returns the messages in the kernel's log buffer, oldest first,
// without their "level,seq,time,flags;" prefixes and continuation lines.
func readKmsg(path string) ([]string, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	defer unix.Close(fd)
	var out []string
	buf := make([]byte, 8192) // one record per read; records are at most about 1 KiB
	for range maxKmsgRecords {
		n, err := unix.Read(fd, buf)
		switch {
		case err == unix.EAGAIN || (err == nil && n == 0):
			return out, nil
		case err == unix.EPIPE || err == unix.EINTR:
			continue // records overwritten while we read; go on with the next
		case err != nil:
			return out, fmt.Errorf("reading %s: %w", path, err)
		}
		out = append(out, kmsgText(string(buf[:n])))
	}
	return out, nil
}

// kmsgText is a /dev/kmsg record's message.
func kmsgText(rec string) string {
	if _, msg, ok := strings.Cut(rec, ";"); ok {
		rec = msg
	}
	msg, _, _ := strings.Cut(rec, "\n")
	return msg
}
