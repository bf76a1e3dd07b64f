package config

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
)

// Spec kinds, as they appear before the '=' of a device spec.
const (
	KindUUID      = "UUID"      // a filesystem's (or swap area's) UUID
	KindLabel     = "LABEL"     // a filesystem's label
	KindPartUUID  = "PARTUUID"  // a partition's: GPT unique GUID, or msdos <disk signature>-<number>
	KindPartLabel = "PARTLABEL" // a GPT partition's name
	KindPath      = "path"      // a path to a /dev node or a symlink to one
)

// udevDirs are the /dev/disk/by-* directories udev makes for each kind.
var udevDirs = map[string]string{
	KindUUID: "by-uuid", KindLabel: "by-label", KindPartUUID: "by-partuuid", KindPartLabel: "by-partlabel",
}

// ParseSpec splits a device spec into its kind and value.
func ParseSpec(spec string) (kind, value string, err error) {
	if strings.HasPrefix(spec, "/") {
		return KindPath, filepath.Clean(spec), nil
	}
	k, v, ok := strings.Cut(spec, "=")
	if !ok {
		return "", "", fmt.Errorf("%q is neither KIND=VALUE (UUID, PARTUUID, LABEL, PARTLABEL) nor an absolute /dev path", clip(spec))
	}
	switch strings.ToUpper(k) {
	case KindUUID, KindLabel, KindPartUUID, KindPartLabel:
		k = strings.ToUpper(k)
	default:
		return "", "", fmt.Errorf("%q: unknown kind %s= (known: UUID=, PARTUUID=, LABEL=, PARTLABEL=, or an absolute /dev path)", clip(spec), clip(k))
	}
	if v == "" {
		return "", "", fmt.Errorf("%q names no %s", spec, k)
	}
	if strings.ContainsAny(v, "/\x00") {
		return "", "", fmt.Errorf("%q: a %s cannot contain '/'", clip(spec), k)
	}
	return k, v, nil
}

// ErrNotFound is wrapped by Resolve's error when no device matches.
var ErrNotFound = errors.New("no such device")

// ErrAmbiguous is wrapped when several devices match; khib overwrites its
// target, so it never guesses between clones.
var ErrAmbiguous = errors.New("several devices match")

// Resolve returns the /dev node (under root) that spec names. Paths are
// followed through symlinks. UUID=, LABEL=, PARTUUID= and PARTLABEL= are
// looked up in udev's /dev/disk/by-* links when they exist, and otherwise
// by reading every block device listed in /sys/class/block: filesystem
// superblocks (ext2/3/4, xfs, btrfs, vfat, swap) for UUID and LABEL, the
// partition table of a partition's disk (GPT, msdos) for PARTUUID and
// PARTLABEL. It runs no program: stage 1 calls it in an initramfs that may
// have no blkid. Root is "/" except in tests.
func Resolve(root, spec string) (string, error) {
	kind, val, err := ParseSpec(spec)
	if err != nil {
		return "", err
	}
	if kind == KindPath {
		p, err := filepath.EvalSymlinks(filepath.Join(root, val))
		if err != nil {
			return "", fmt.Errorf("%s: %w", spec, notFound(err))
		}
		return p, nil
	}
	if p, ok := fromUdev(root, kind, val); ok {
		return p, nil
	}
	return scan(root, kind, val, spec)
}

// notFound maps a missing file to ErrNotFound and keeps other errors.
func notFound(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w (%v)", ErrNotFound, err)
	}
	return err
}

// ResolveWait retries Resolve until it succeeds or timeout passes: at boot
// the device may appear a few seconds after udev started. Only a missing
// device is retried; a malformed spec or an ambiguous one fails at once.
func ResolveWait(root, spec string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		p, err := Resolve(root, spec)
		if err == nil || !errors.Is(err, ErrNotFound) || time.Now().After(deadline) {
			if err != nil && errors.Is(err, ErrNotFound) && timeout > 0 {
				err = fmt.Errorf("%w (waited %.0f s)", err, timeout.Seconds())
			}
			return p, err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// fromUdev follows /dev/disk/by-*/VALUE. udev escapes unusual characters
// in those names, so only plain values are tried there; the scan finds the
// rest.
func fromUdev(root, kind, val string) (string, bool) {
	plain := !strings.ContainsFunc(val, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r))
	})
	if !plain {
		return "", false
	}
	cands := []string{val}
	if kind == KindUUID || kind == KindPartUUID {
		cands = append(cands, strings.ToLower(val), strings.ToUpper(val))
	}
	for _, c := range cands {
		if p, err := filepath.EvalSymlinks(filepath.Join(root, "dev/disk", udevDirs[kind], c)); err == nil {
			return p, true
		}
	}
	return "", false
}

// blockDev is one entry of /sys/class/block.
type blockDev struct {
	name string // kernel name: sda1, nvme0n1p2
	node string // its /dev node under root
	part int    // partition number, 0 for a whole disk
	disk string // for a partition: the kernel name of its disk
}

// blockDevs lists the block devices with a non-zero size.
func blockDevs(root string) ([]blockDev, error) {
	cls := filepath.Join(root, "sys/class/block")
	ents, err := os.ReadDir(cls)
	if err != nil {
		return nil, fmt.Errorf("listing block devices: %w", err)
	}
	var out []blockDev
	for _, e := range ents {
		d := blockDev{name: e.Name(), node: filepath.Join(root, "dev", strings.ReplaceAll(e.Name(), "!", "/"))}
		dir := filepath.Join(cls, e.Name())
		if s, err := readSmall(filepath.Join(dir, "size")); err == nil && s == "0" {
			continue // an empty drive or an unused loop device
		}
		if s, err := readSmall(filepath.Join(dir, "partition")); err == nil {
			n, err := strconv.Atoi(s)
			if err != nil || n <= 0 {
				continue
			}
			d.part = n
			if real, err := filepath.EvalSymlinks(dir); err == nil {
				d.disk = filepath.Base(filepath.Dir(real))
			}
		}
		out = append(out, d)
	}
	return out, nil
}

func scan(root, kind, val, spec string) (string, error) {
	devs, err := blockDevs(root)
	if err != nil {
		return "", err
	}
	var matches, looked []string
	for _, d := range devs {
		looked = append(looked, d.name)
		var got string
		switch kind {
		case KindUUID, KindLabel:
			fs, err := probeNode(d.node)
			if err != nil {
				continue
			}
			got = fs.UUID
			if kind == KindLabel {
				got = fs.Label
			}
		case KindPartUUID, KindPartLabel:
			if d.part == 0 || d.disk == "" {
				continue
			}
			p, err := partitionOf(root, d)
			if err != nil {
				continue
			}
			got = p.UUID
			if kind == KindPartLabel {
				got = p.Label
			}
		}
		if got == "" {
			continue
		}
		if (kind == KindLabel || kind == KindPartLabel) && got == val || strings.EqualFold(got, val) && (kind == KindUUID || kind == KindPartUUID) {
			matches = append(matches, d.node)
		}
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		seen := strings.Join(looked, ", ")
		if seen == "" {
			seen = "none"
		}
		return "", fmt.Errorf("no block device has %s (looked at: %s): %w", spec, seen, ErrNotFound)
	default:
		return "", fmt.Errorf("%s matches %s: %w; name the device by another spec (khib overwrites it)", spec, strings.Join(matches, " and "), ErrAmbiguous)
	}
}

func readSmall(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 256))
	return strings.TrimSpace(string(b)), err
}

func probeNode(node string) (FS, error) {
	f, err := os.Open(node)
	if err != nil {
		return FS{}, err
	}
	defer f.Close()
	return ProbeFS(f)
}

// partitionOf reads the partition table of d's disk for d's entry.
func partitionOf(root string, d blockDev) (Partition, error) {
	sector := 512
	if s, err := readSmall(filepath.Join(root, "sys/class/block", d.disk, "queue/logical_block_size")); err == nil {
		if n, err := strconv.Atoi(s); err == nil && n >= 512 && n <= 65536 && n&(n-1) == 0 {
			sector = n
		}
	}
	f, err := os.Open(filepath.Join(root, "dev", strings.ReplaceAll(d.disk, "!", "/")))
	if err != nil {
		return Partition{}, err
	}
	defer f.Close()
	return ProbePartition(f, sector, d.part)
}

// FS is what a filesystem superblock says about itself.
type FS struct {
	Type  string // ext4 (for ext2/3/4), xfs, btrfs, vfat, swap
	UUID  string // as blkid prints it: lower-case 8-4-4-4-12, or XXXX-XXXX for vfat
	Label string
}

// ErrUnknownFS means no known superblock was found.
var ErrUnknownFS = errors.New("no known filesystem or swap signature")

// probeLen covers every superblock ProbeFS reads (btrfs's ends at 68 KiB).
const probeLen = 0x10000 + 0x1000

// heldSwapMagic marks a swap area that holds a khib image
// (internal/blockmap.HeldSwapMagic): still the same swap area, by UUID.
const heldSwapMagic = "KHIBSWAPSP"

// ProbeFS reads the filesystem (or swap) signature at the start of r.
// Nothing in r is trusted: every field read lies inside one fixed-size
// buffer.
func ProbeFS(r io.ReaderAt) (FS, error) {
	b := make([]byte, probeLen)
	n, err := r.ReadAt(b, 0)
	if n < 1024+512 {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return FS{}, fmt.Errorf("reading the superblock: %w", err)
	}
	b = b[:n]
	le16 := binary.LittleEndian.Uint16
	switch {
	case len(b) >= 0x10000+0x200 && string(b[0x10040:0x10048]) == "_BHRfS_M":
		return FS{"btrfs", fmtUUID(b[0x10020:0x10030]), cstr(b[0x1012b : 0x1012b+256])}, nil
	case le16(b[1024+0x38:]) == 0xEF53:
		return FS{"ext4", fmtUUID(b[1024+0x68 : 1024+0x78]), cstr(b[1024+0x78 : 1024+0x88])}, nil
	case string(b[0:4]) == "XFSB":
		return FS{"xfs", fmtUUID(b[32:48]), cstr(b[108:120])}, nil
	case len(b) >= 4096 && (string(b[4096-10:4096]) == "SWAPSPACE2" || string(b[4096-10:4096]) == heldSwapMagic):
		return FS{"swap", fmtUUID(b[1024+12 : 1024+28]), cstr(b[1024+28 : 1024+44])}, nil
	case b[510] == 0x55 && b[511] == 0xAA && string(b[0x52:0x57]) == "FAT32":
		return FS{"vfat", fatID(b[0x43:0x47]), fatLabel(b[0x47 : 0x47+11])}, nil
	case b[510] == 0x55 && b[511] == 0xAA && (string(b[0x36:0x3b]) == "FAT12" || string(b[0x36:0x3b]) == "FAT16"):
		return FS{"vfat", fatID(b[0x27:0x2b]), fatLabel(b[0x2b : 0x2b+11])}, nil
	}
	return FS{}, ErrUnknownFS
}

func fmtUUID(b []byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// fmtGUID formats a GPT GUID, whose first three fields are little-endian.
func fmtGUID(b []byte) string {
	le := binary.LittleEndian
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", le.Uint32(b[0:4]), le.Uint16(b[4:6]), le.Uint16(b[6:8]), b[8:10], b[10:16])
}

func fatID(b []byte) string {
	v := binary.LittleEndian.Uint32(b)
	return fmt.Sprintf("%04X-%04X", v>>16, v&0xffff)
}

func fatLabel(b []byte) string {
	s := strings.TrimRight(string(b), " \x00")
	if s == "NO NAME" {
		return ""
	}
	return s
}

// cstr returns the NUL-terminated string at the start of b.
func cstr(b []byte) string {
	if i := strings.IndexByte(string(b), 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimSpace(string(b))
}

// Partition is what a disk's partition table says about one partition.
type Partition struct {
	Table string // "gpt" or "dos"
	UUID  string // PARTUUID: the GPT unique GUID, or <disk signature>-<number> (msdos)
	Label string // PARTLABEL (GPT only)
}

// ErrNoTable means the disk has no GPT or msdos partition table, or not
// the partition asked for.
var ErrNoTable = errors.New("no partition table entry")

// maxGPTEntries bounds the GPT entry array; the specification's minimum
// array holds 128, and nothing real uses more than a few thousand.
const maxGPTEntries = 1 << 14

// ProbePartition reads partition number n (1-based, as the kernel counts)
// from the partition table of the disk r with the given logical sector
// size. As the kernel does, it prefers GPT when a GPT header is found.
func ProbePartition(r io.ReaderAt, sector, n int) (Partition, error) {
	if n <= 0 {
		return Partition{}, fmt.Errorf("partition number %d: %w", n, ErrNoTable)
	}
	hdr := make([]byte, 92)
	if _, err := r.ReadAt(hdr, int64(sector)); err == nil && string(hdr[0:8]) == "EFI PART" {
		le := binary.LittleEndian
		lba, count, size := le.Uint64(hdr[72:80]), le.Uint32(hdr[80:84]), le.Uint32(hdr[84:88])
		if size < 128 || size > 4096 || size%8 != 0 || count > maxGPTEntries || lba > 1<<40 {
			return Partition{}, fmt.Errorf("GPT header at sector 1: %d entries of %d bytes at LBA %d make no sense: %w", count, size, lba, ErrNoTable)
		}
		if uint32(n) > count {
			return Partition{}, fmt.Errorf("GPT has %d entries, not %d: %w", count, n, ErrNoTable)
		}
		e := make([]byte, 128)
		off := int64(lba)*int64(sector) + int64(n-1)*int64(size)
		if _, err := r.ReadAt(e, off); err != nil {
			return Partition{}, fmt.Errorf("reading GPT entry %d at offset %#x: %w", n, off, err)
		}
		if allZero(e[0:16]) {
			return Partition{}, fmt.Errorf("GPT entry %d is unused: %w", n, ErrNoTable)
		}
		u := make([]uint16, 36)
		for i := range u {
			u[i] = le.Uint16(e[56+2*i:])
		}
		name := string(utf16.Decode(u))
		if i := strings.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		return Partition{"gpt", fmtGUID(e[16:32]), name}, nil
	}
	mbr := make([]byte, 512)
	if _, err := r.ReadAt(mbr, 0); err != nil {
		return Partition{}, fmt.Errorf("reading the partition table: %w", err)
	}
	if mbr[510] != 0x55 || mbr[511] != 0xAA {
		return Partition{}, fmt.Errorf("no GPT header and no msdos signature: %w", ErrNoTable)
	}
	if n > 255 {
		return Partition{}, fmt.Errorf("partition number %d: %w", n, ErrNoTable)
	}
	// Linux names msdos partitions (primary 1-4, logical from 5) by the
	// disk signature and the partition number: block/partitions/msdos.c.
	sig := binary.LittleEndian.Uint32(mbr[440:444])
	return Partition{Table: "dos", UUID: fmt.Sprintf("%08x-%02x", sig, n)}, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// PartUUID returns the PARTUUID of the partition whose /dev node (under
// root) is node, for naming a target by something an image does not
// overwrite.
func PartUUID(root, node string) (string, error) {
	devs, err := blockDevs(root)
	if err != nil {
		return "", err
	}
	name := filepath.Base(node)
	for _, d := range devs {
		if d.name != name && d.node != node {
			continue
		}
		if d.part == 0 || d.disk == "" {
			return "", fmt.Errorf("%s is a whole disk, which has no PARTUUID: %w", node, ErrNoTable)
		}
		p, err := partitionOf(root, d)
		if err != nil {
			return "", err
		}
		return p.UUID, nil
	}
	return "", fmt.Errorf("%s is not in /sys/class/block: %w", node, ErrNotFound)
}
