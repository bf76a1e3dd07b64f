// Package fsstate reads the on-disk change counters of ext2, ext3 and ext4 file systems (their superblock and the superblock of their jbd2 journal), so that a resume can tell whether a file system was mounted or written since its hibernation image was made.
package fsstate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Byte offsets and values from the kernel's fs/ext4/ext4.h,
// fs/ext4/ext4_extents.h and include/linux/jbd2.h (Linux 6.12).
const (
	superOffset = 1024 // the primary superblock, whatever the block size
	superSize   = 1024

	extMagic = 0xEF53

	compatHasJournal = 0x0004 // EXT4_FEATURE_COMPAT_HAS_JOURNAL
	incompatRecover  = 0x0004 // EXT4_FEATURE_INCOMPAT_RECOVER: the journal needs replaying
	incompatJournal  = 0x0008 // EXT4_FEATURE_INCOMPAT_JOURNAL_DEV: this is an external journal
	incompat64Bit    = 0x0080 // EXT4_FEATURE_INCOMPAT_64BIT: 64-byte group descriptors

	extentsFlag  = 0x00080000 // EXT4_EXTENTS_FL in i_flags
	extentMagic  = 0xF30A     // EXT4_EXT_MAGIC
	maxDepth     = 5          // EXT4_MAX_EXTENT_DEPTH
	unwrittenLen = 32768      // ee_len above this marks an unwritten extent (EXT_INIT_MAX_LEN)

	jbd2Magic = 0xC03B3998 // JBD2_MAGIC_NUMBER
	jbd2SBv1  = 3          // JBD2_SUPERBLOCK_V1
	jbd2SBv2  = 4          // JBD2_SUPERBLOCK_V2

	// s_state bits.
	stateValid  = 0x0001 // EXT4_VALID_FS: unmounted cleanly
	stateErrors = 0x0002 // EXT4_ERROR_FS
)

// ErrNotExt means the device holds no ext2/3/4 superblock.
var ErrNotExt = errors.New("no ext2/3/4 file system")

// UUID is a file system's 128-bit UUID (s_uuid).
type UUID [16]byte

// String formats u the way blkid and /dev/disk/by-uuid do.
func (u UUID) String() string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// ParseUUID reads the form String writes (case-insensitive).
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("not a UUID: %q", s)
	}
	j := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			continue
		}
		hi, ok1 := unhex(s[i])
		lo, ok2 := unhex(s[i+1])
		if !ok1 || !ok2 {
			return UUID{}, fmt.Errorf("not a UUID: %q", s)
		}
		u[j] = hi<<4 | lo
		j++
		i++
	}
	return u, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// FormatError says where in the device a value was wrong.
type FormatError struct {
	Off int64  // byte offset of the structure or field
	Msg string // what was wrong
}

func (e *FormatError) Error() string { return fmt.Sprintf("offset %#x: %s", e.Off, e.Msg) }

func formatErr(off int64, format string, a ...any) error {
	return &FormatError{Off: off, Msg: fmt.Sprintf(format, a...)}
}

// Superblock is what khib reads of an ext2/3/4 superblock: the file
// system's identity, where its journal is, and the values that change
// whenever a kernel mounts or writes it.
type Superblock struct {
	UUID            UUID
	Label           string // s_volume_name
	BlockSize       int64  // 1024 << s_log_block_size
	BlocksCount     uint64 // s_blocks_count_lo/hi
	FirstDataBlock  uint32
	InodesPerGroup  uint32
	InodeSize       uint16 // 128 for revision 0
	DescSize        uint16 // 32 unless 64bit, then s_desc_size
	FeatureCompat   uint32
	FeatureIncompat uint32
	JournalInum     uint32 // s_journal_inum: the journal's inode, 8 by default
	JournalDev      uint32 // s_journal_dev: non-zero for an external journal
	JournalUUID     UUID   // s_journal_uuid: an external journal's UUID

	Counters Counters // Journal* are zero: ReadState fills them
}

// Counters are the on-disk values of a file system that a mount or a
// write by any kernel changes. Two readings that differ in any of them
// mean that something mounted or wrote the file system in between.
type Counters struct {
	MountTime       int64  `json:"mtime"`            // s_mtime (with s_mtime_hi): last mount, Unix seconds
	WriteTime       int64  `json:"wtime"`            // s_wtime (with s_wtime_hi): last superblock write
	MountCount      uint16 `json:"mnt_count"`        // s_mnt_count: mounts since the last check
	KBytesWritten   uint64 `json:"kbytes_written"`   // s_kbytes_written: lifetime KiB written
	State           uint16 `json:"state"`            // s_state: clean, errors
	FeatureIncompat uint32 `json:"feature_incompat"` // s_feature_incompat, whose RECOVER bit says the journal needs replaying
	// Journal is set when the file system has an internal journal and
	// its superblock was read.
	Journal *Journal `json:"journal,omitempty"`
}

// Journal is what changes in a jbd2 journal's superblock when the log is
// checkpointed, replayed or emptied: at every unmount, at a mount that
// replays it, and as a mounted file system runs.
type Journal struct {
	Sequence uint32 `json:"sequence"` // s_sequence: first commit ID expected in the log
	Start    uint32 `json:"start"`    // s_start: block of the log's start, 0 when the log is empty
}

// ReadSuperblock reads the primary ext2/3/4 superblock of the device r,
// size bytes long. It returns an error wrapping ErrNotExt if there is
// none, and a FormatError if one is there but makes no sense.
func ReadSuperblock(r io.ReaderAt, size int64) (*Superblock, error) {
	if size < superOffset+superSize {
		return nil, fmt.Errorf("%w: device of %d bytes is too small for a superblock", ErrNotExt, size)
	}
	b := make([]byte, superSize)
	if _, err := r.ReadAt(b, superOffset); err != nil {
		return nil, fmt.Errorf("reading the superblock at %#x: %w", superOffset, err)
	}
	le := binary.LittleEndian
	if m := le.Uint16(b[0x38:]); m != extMagic {
		return nil, fmt.Errorf("%w: magic %#04x at %#x", ErrNotExt, m, superOffset+0x38)
	}
	at := func(field int) int64 { return superOffset + int64(field) }
	sb := &Superblock{
		BlocksCount:     uint64(le.Uint32(b[0x04:])),
		FirstDataBlock:  le.Uint32(b[0x14:]),
		InodesPerGroup:  le.Uint32(b[0x28:]),
		FeatureCompat:   le.Uint32(b[0x5C:]),
		FeatureIncompat: le.Uint32(b[0x60:]),
		JournalInum:     le.Uint32(b[0xE0:]),
		JournalDev:      le.Uint32(b[0xE4:]),
		InodeSize:       128,
		DescSize:        32,
	}
	copy(sb.UUID[:], b[0x68:0x78])
	copy(sb.JournalUUID[:], b[0xD0:0xE0])
	sb.Label = cString(b[0x78:0x88])
	logBS := le.Uint32(b[0x18:])
	if logBS > 6 { // 64 KiB, the largest block size ext4 knows (EXT4_MAX_BLOCK_LOG_SIZE 16)
		return nil, formatErr(at(0x18), "block size 1024<<%d is out of range", logBS)
	}
	sb.BlockSize = 1024 << logBS
	if rev := le.Uint32(b[0x4C:]); rev >= 1 {
		sb.InodeSize = le.Uint16(b[0x58:])
		if sb.InodeSize < 128 || sb.InodeSize&(sb.InodeSize-1) != 0 || int64(sb.InodeSize) > sb.BlockSize {
			return nil, formatErr(at(0x58), "inode size %d is not a power of two from 128 to the block size", sb.InodeSize)
		}
	}
	if sb.FeatureIncompat&incompat64Bit != 0 {
		sb.BlocksCount |= uint64(le.Uint32(b[0x150:])) << 32
		sb.DescSize = le.Uint16(b[0xFE:])
		if sb.DescSize < 64 || sb.DescSize&(sb.DescSize-1) != 0 || int64(sb.DescSize) > sb.BlockSize {
			return nil, formatErr(at(0xFE), "group descriptor size %d is not a power of two from 64 to the block size", sb.DescSize)
		}
	}
	sb.Counters = Counters{
		MountTime:       int64(le.Uint32(b[0x2C:])) | int64(b[0x275])<<32,
		WriteTime:       int64(le.Uint32(b[0x30:])) | int64(b[0x274])<<32,
		MountCount:      le.Uint16(b[0x34:]),
		State:           le.Uint16(b[0x3A:]),
		FeatureIncompat: sb.FeatureIncompat,
		KBytesWritten:   le.Uint64(b[0x178:]),
	}
	return sb, nil
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// HasJournal reports whether the file system keeps a journal.
func (sb *Superblock) HasJournal() bool { return sb.FeatureCompat&compatHasJournal != 0 }

// InternalJournal reports whether its journal lives in an inode of the
// file system itself (the default), rather than on another device.
func (sb *Superblock) InternalJournal() bool {
	return sb.HasJournal() && sb.JournalInum != 0 && sb.JournalDev == 0 && sb.JournalUUID == UUID{}
}

// ReadState reads the superblock and, for an internal journal, the
// journal's superblock, and returns the superblock with its Counters
// complete. A file system without a journal, or with an external one,
// has no Counters.Journal: the external journal's device is another
// file system's business, and its changes show in this superblock's
// counters too.
func ReadState(r io.ReaderAt, size int64) (*Superblock, error) {
	sb, err := ReadSuperblock(r, size)
	if err != nil {
		return nil, err
	}
	if sb.FeatureIncompat&incompatJournal != 0 {
		return nil, formatErr(superOffset+0x60, "this is an external journal device, not a file system")
	}
	if !sb.InternalJournal() {
		return sb, nil
	}
	d := &device{r: r, bs: sb.BlockSize, blocks: min(sb.BlocksCount, uint64(size/sb.BlockSize))}
	ino, err := d.inode(sb, sb.JournalInum)
	if err != nil {
		return nil, fmt.Errorf("the journal's inode %d: %w", sb.JournalInum, err)
	}
	blk, err := d.firstBlock(ino)
	if err != nil {
		return nil, fmt.Errorf("the journal's inode %d: %w", sb.JournalInum, err)
	}
	j, err := d.journal(blk)
	if err != nil {
		return nil, err
	}
	sb.Counters.Journal = j
	return sb, nil
}

// device reads blocks of one file system, refusing block numbers past
// its end (the smaller of the superblock's count and the device's size).
type device struct {
	r      io.ReaderAt
	bs     int64
	blocks uint64
}

func (d *device) read(blk uint64, off, n int64, what string) ([]byte, error) {
	if blk >= d.blocks {
		return nil, formatErr(int64(min(blk, 1<<40))*d.bs, "%s in block %d, past the file system's %d blocks", what, blk, d.blocks)
	}
	b := make([]byte, n)
	pos := int64(blk)*d.bs + off
	if _, err := d.r.ReadAt(b, pos); err != nil {
		return nil, fmt.Errorf("reading %s at %#x: %w", what, pos, err)
	}
	return b, nil
}

// inode is the part of an on-disk inode that locates its data.
type inode struct {
	off   int64  // where it was read
	flags uint32 // i_flags
	block []byte // i_block, 60 bytes: block map or extent tree root
}

// inode reads inode number n, which must lie in block group 0 (the
// journal's does: it is one of the reserved inodes below s_first_ino).
func (d *device) inode(sb *Superblock, n uint32) (*inode, error) {
	if n == 0 || sb.InodesPerGroup == 0 || n > sb.InodesPerGroup {
		return nil, formatErr(superOffset+0x28, "inode %d is not in block group 0 (%d inodes per group)", n, sb.InodesPerGroup)
	}
	// Group 0's descriptor opens the block after the superblock's
	// (s_first_data_block + 1), with or without meta_bg: group 0 always
	// carries the superblock and the first descriptor block.
	gdBlk := uint64(sb.FirstDataBlock) + 1
	gd, err := d.read(gdBlk, 0, int64(sb.DescSize), "group descriptor 0")
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	table := uint64(le.Uint32(gd[0x08:]))
	if sb.DescSize >= 64 {
		table |= uint64(le.Uint32(gd[0x28:])) << 32
	}
	idx := int64(n-1) * int64(sb.InodeSize)
	blk := table + uint64(idx/d.bs)
	b, err := d.read(blk, idx%d.bs, 128, fmt.Sprintf("inode %d", n))
	if err != nil {
		return nil, err
	}
	return &inode{off: int64(blk)*d.bs + idx%d.bs, flags: le.Uint32(b[0x20:]), block: b[0x28:0x64]}, nil
}

// firstBlock returns the physical block that holds logical block 0 of
// the inode, through its extent tree or, for ext2/3-style inodes, its
// block map (whose first entry is the first block directly).
func (d *device) firstBlock(ino *inode) (uint64, error) {
	le := binary.LittleEndian
	if ino.flags&extentsFlag == 0 {
		b := uint64(le.Uint32(ino.block))
		if b == 0 {
			return 0, formatErr(ino.off+0x28, "block 0 is a hole")
		}
		return b, nil
	}
	node, off := ino.block, ino.off+0x28
	depth := -1
	for {
		if le.Uint16(node) != extentMagic {
			return 0, formatErr(off, "extent header magic %#04x, want %#04x", le.Uint16(node), extentMagic)
		}
		entries, maxEntries, dep := le.Uint16(node[2:]), le.Uint16(node[4:]), int(le.Uint16(node[6:]))
		if int(maxEntries) > (len(node)-12)/12 || entries > maxEntries {
			return 0, formatErr(off, "extent node claims %d of %d entries, room for %d", entries, maxEntries, (len(node)-12)/12)
		}
		if dep > maxDepth || (depth >= 0 && dep != depth-1) {
			return 0, formatErr(off, "extent tree depth %d out of order (parent %d, at most %d)", dep, depth, maxDepth)
		}
		if entries == 0 {
			return 0, formatErr(off, "empty extent node: block 0 is a hole")
		}
		depth = dep
		e := node[12:24]
		if dep == 0 {
			lblk, n := le.Uint32(e), uint32(le.Uint16(e[4:]))
			if n > unwrittenLen {
				return 0, formatErr(off+12, "block 0 lies in an unwritten extent")
			}
			if lblk != 0 || n == 0 {
				return 0, formatErr(off+12, "first extent covers blocks %d..%d: block 0 is a hole", lblk, int64(lblk)+int64(n)-1)
			}
			return uint64(le.Uint16(e[6:]))<<32 | uint64(le.Uint32(e[8:])), nil
		}
		// The first index covers block 0 if anything does: the kernel's
		// binary search (ext4_ext_binsearch_idx) settles on it too.
		leaf := uint64(le.Uint16(e[8:]))<<32 | uint64(le.Uint32(e[4:]))
		b, err := d.read(leaf, 0, d.bs, fmt.Sprintf("extent node at depth %d", dep-1))
		if err != nil {
			return 0, err
		}
		node, off = b, int64(leaf)*d.bs
	}
}

// journal reads the jbd2 superblock in block blk. It is big-endian.
func (d *device) journal(blk uint64) (*Journal, error) {
	b, err := d.read(blk, 0, 0x24, "the journal superblock")
	if err != nil {
		return nil, err
	}
	off := int64(blk) * d.bs
	be := binary.BigEndian
	if m := be.Uint32(b); m != jbd2Magic {
		return nil, formatErr(off, "journal superblock magic %#08x, want %#08x", m, uint32(jbd2Magic))
	}
	if t := be.Uint32(b[4:]); t != jbd2SBv1 && t != jbd2SBv2 {
		return nil, formatErr(off+4, "journal block type %d is not a superblock", t)
	}
	return &Journal{Sequence: be.Uint32(b[0x18:]), Start: be.Uint32(b[0x1C:])}, nil
}
