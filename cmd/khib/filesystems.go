package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/khib/khib/internal/check"
	"github.com/khib/khib/internal/fsstate"
	"github.com/khib/khib/internal/target"
)

// A resume onto a file system that was mounted or written after the
// hibernation corrupts it: A's page cache, inode and block maps describe
// the file system as it was, and A writes them back over the changes.
// So the image records each of A's block file systems with its on-disk
// change counters (internal/fsstate), and stage 1 compares them before
// it writes a page. The three sides:
//
//   - A (khib hibernate) lists its mounted block file systems and reads
//     each ext2/3/4 one's UUID, and sends the list in the request. It
//     refuses to hibernate if it cannot identify one, since then nobody
//     could check it.
//   - B (the helper) reads their counters from the raw devices, found by
//     UUID and size: A's kernel is stopped then and has synced, so what
//     B reads is exactly what A expects to find when it resumes. B
//     records, for each, the counters or why it could not read them.
//   - Stage 1 reads the same counters the same way before anything
//     mounts, and refuses the image if any differ or if a recorded file
//     system is nowhere to be found.
//
// File systems khib cannot read (not ext2/3/4, or on a device the helper
// kernel does not see: dm-crypt, LVM, loop) are recorded by type, mount
// point and device name, and stage 1 warns that it cannot check them and
// resumes, as every hibernation system does.

// fsMountinfo is where A lists its mounts; fsDevRoot the root under which
// its /sys and /dev are read. Tests point them elsewhere.
var (
	fsMountinfo = "/proc/self/mountinfo"
	fsDevRoot   = "/"
)

// maxFSRequest bounds the file systems' part of the mailbox request,
// which holds about 2 KiB in all.
const maxFSRequest = 1400

// mountedFilesystems lists A's mounted block file systems for the helper.
func mountedFilesystems() ([]fsstate.Mount, error) {
	f, err := os.Open(fsMountinfo)
	if err != nil {
		return nil, fmt.Errorf("listing the mounted file systems: %w", err)
	}
	ms, err := fsstate.ParseMountinfo(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("listing the mounted file systems: %w", err)
	}
	var out []fsstate.Mount
	size := 0
	for _, m := range fsstate.BlockMounts(ms) {
		fm := fsstate.Mount{Type: m.Type, Dir: m.Dir, Source: m.Source}
		if fsstate.Supported(m.Type) {
			if err := identify(&fm, m); err != nil {
				return nil, fmt.Errorf("cannot identify the %s file system on %s (%s), so a resume could not tell whether it changed: %w; unmount it to hibernate",
					m.Type, m.Dir, m.Source, err)
			}
		}
		size += len(fm.Type) + len(fm.Dir) + len(fm.Source) + len(fm.UUID) + 60
		out = append(out, fm)
	}
	if size > maxFSRequest {
		return nil, fmt.Errorf("%d block file systems are mounted, too many to describe to the helper in one page (about %d bytes, room for %d); unmount some to hibernate",
			len(out), size, maxFSRequest)
	}
	return out, nil
}

// identify reads the UUID and size of the ext2/3/4 file system that m
// mounts, from the block device behind its device number.
func identify(fm *fsstate.Mount, m fsstate.MountInfo) error {
	dev := devNode(m.Major, m.Minor)
	if dev == "" {
		dev = m.Source
	}
	f, err := os.Open(dev)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := fileSize(f)
	if err != nil {
		return fmt.Errorf("%s: %w", dev, err)
	}
	sb, err := fsstate.ReadSuperblock(f, size)
	if err != nil {
		return fmt.Errorf("%s: %w", dev, err)
	}
	fm.Source, fm.UUID, fm.Size = dev, sb.UUID.String(), size
	return nil
}

// devNode finds the /dev node of a block device number through sysfs
// (the mount source may be /dev/root, which need not exist).
func devNode(major, minor uint32) string {
	if major == 0 {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(fsDevRoot, "sys/dev/block", fmt.Sprintf("%d:%d", major, minor), "uevent"))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(l, "DEVNAME="); ok && name != "" {
			p := filepath.Join(fsDevRoot, "dev", name)
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	return ""
}

// extDevice is a block device holding an ext2/3/4 superblock.
type extDevice struct {
	path string
	size int64
}

// scanExt reads the superblock of every block device and indexes those
// holding ext2/3/4 by UUID. It only reads.
func scanExt() (map[fsstate.UUID][]extDevice, []string, error) {
	paths, err := target.BlockDevices()
	if err != nil {
		return nil, nil, err
	}
	out := map[fsstate.UUID][]extDevice{}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		size, err := fileSize(f)
		if err == nil {
			if sb, err := fsstate.ReadSuperblock(f, size); err == nil {
				out[sb.UUID] = append(out[sb.UUID], extDevice{p, size})
			}
		}
		f.Close()
	}
	return out, paths, nil
}

// candidates are the devices that may hold the file system m: its UUID,
// and its size when A gave one.
func candidates(index map[fsstate.UUID][]extDevice, m fsstate.Mount) ([]extDevice, error) {
	u, err := fsstate.ParseUUID(m.UUID)
	if err != nil {
		return nil, err
	}
	var out []extDevice
	for _, d := range index[u] {
		if m.Size == 0 || d.size == m.Size {
			out = append(out, d)
		}
	}
	return out, nil
}

// readCounters reads the counters of the file system on path.
func readCounters(path string) (*fsstate.Superblock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := fileSize(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sb, err := fsstate.ReadState(f, size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sb, nil
}

// recordFilesystems is the helper's part: the counters of each of A's
// file systems, read from its own view of the devices. A file system it
// finds but cannot read fails the save (A goes on and says why); one it
// cannot find or read the type of is recorded as unchecked.
func recordFilesystems(mounts []fsstate.Mount) ([]fsstate.Record, error) {
	recs := []fsstate.Record{}
	if len(mounts) == 0 {
		return recs, nil
	}
	index, paths, err := scanExt()
	if err != nil {
		return nil, err
	}
	for _, m := range mounts {
		r := fsstate.Record{Mount: m}
		switch {
		case !fsstate.Supported(m.Type):
			r.Unchecked = "khib reads the change counters of ext2/3/4 only"
		default:
			cs, err := candidates(index, m)
			if err != nil {
				return nil, fmt.Errorf("the %v: %w", m, err)
			}
			switch len(cs) {
			case 0:
				r.Unchecked = fmt.Sprintf("the helper kernel found no device with this UUID and size (it looked at %s): a device it has no driver for, or one built by A (dm-crypt, LVM, loop)",
					orNothing(paths))
			case 1:
				sb, err := readCounters(cs[0].path)
				if err != nil {
					return nil, fmt.Errorf("reading the change counters of the %v: %w", m, err)
				}
				r.Device, r.State = cs[0].path, &sb.Counters
			default:
				r.Unchecked = fmt.Sprintf("%d devices carry this UUID and size (%s)", len(cs), devPaths(cs))
			}
		}
		recs = append(recs, r)
		console("khib-helper: %s", describeRecord(r))
	}
	return recs, nil
}

func describeRecord(r fsstate.Record) string {
	if !r.Checked() {
		return fmt.Sprintf("%v: not checked at resume: %s", r.Mount, r.Unchecked)
	}
	s := fmt.Sprintf("%v is %s here: mount count %d, %d KiB written", r.Mount, r.Device, r.State.MountCount, r.State.KBytesWritten)
	if j := r.State.Journal; j != nil {
		s += fmt.Sprintf(", journal sequence %d", j.Sequence)
	}
	return s
}

func orNothing(paths []string) string {
	if len(paths) == 0 {
		return "no block devices at all"
	}
	return strings.Join(paths, " ")
}

func devPaths(ds []extDevice) string {
	var p []string
	for _, d := range ds {
		p = append(p, d.path)
	}
	return strings.Join(p, " ")
}

// fsWait is how long stage 1 waits for a recorded file system's device
// to appear: the resume device has, and its neighbours seldom lag.
var fsWait = 5 * time.Second

// checkFilesystems is stage 1's part: every file system the image
// recorded with counters must be on exactly one device here, with the
// same counters. Unchecked ones get a warning line. It only reads.
func checkFilesystems(recs []fsstate.Record) error {
	var checked []fsstate.Record
	for _, r := range recs {
		if r.Checked() {
			checked = append(checked, r)
		} else {
			console("khib: warning: cannot tell whether the %v changed since the hibernation (%s); resuming anyway", r.Mount, r.Unchecked)
		}
	}
	if len(checked) == 0 {
		return nil
	}
	deadline := time.Now().Add(fsWait)
	for {
		index, paths, err := scanExt()
		if err != nil {
			return fmt.Errorf("cannot check A's file systems: %w", err)
		}
		var missing error
		for _, r := range checked {
			cs, err := candidates(index, r.Mount)
			if err != nil {
				return fmt.Errorf("the image's record of the %v: %w", r.Mount, err)
			}
			switch len(cs) {
			case 0:
				missing = fmt.Errorf("the %v is on no device here (looked at %s): it may have been removed or reformatted, and khib cannot tell whether it changed",
					r.Mount, orNothing(paths))
				continue
			case 1:
			default:
				return fmt.Errorf("the %v: %d devices here carry its UUID and size (%s), one of them may have changed", r.Mount, len(cs), devPaths(cs))
			}
			sb, err := readCounters(cs[0].path)
			if err != nil {
				return fmt.Errorf("cannot read the change counters of the %v: %w", r.Mount, err)
			}
			if err := r.Compare(cs[0].path, sb.Counters); err != nil {
				return err
			}
		}
		if missing == nil {
			break
		}
		if time.Now().After(deadline) {
			return missing
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, r := range checked {
		console("khib: the %v is unchanged since the hibernation", r.Mount)
	}
	return nil
}

// filesystemsVerdict is khib check's view of the same: which of this
// system's file systems a resume will check.
func filesystemsVerdict() check.Verdict {
	v := check.Verdict{Name: "filesystems"}
	ms, err := mountedFilesystems()
	if err != nil {
		v.Detail = err.Error()
		v.Fix = "khib must identify every mounted block file system before it hibernates; unmount the one named, or repair it"
		if errors.Is(err, os.ErrPermission) {
			v.Unknown = true
			v.Fix = "run khib check as root"
		}
		return v
	}
	v.OK = true
	var yes, no []string
	for _, m := range ms {
		if fsstate.Supported(m.Type) {
			yes = append(yes, m.Type+" on "+m.Dir)
		} else {
			no = append(no, m.Type+" on "+m.Dir)
		}
	}
	switch {
	case len(ms) == 0:
		v.Detail = "no block file systems mounted"
	case len(no) == 0:
		v.Detail = fmt.Sprintf("a resume checks that %s did not change since the hibernation", strings.Join(yes, ", "))
	default:
		checks := "nothing"
		if len(yes) > 0 {
			checks = strings.Join(yes, ", ")
		}
		v.Detail = fmt.Sprintf("a resume checks %s, but cannot check %s (khib reads ext2/3/4 only) and only warns", checks, strings.Join(no, ", "))
	}
	return v
}
