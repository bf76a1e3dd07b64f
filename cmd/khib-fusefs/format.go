// The on-device format of khib-fusefs.
//
// A khib-fusefs device is a raw block device (or a regular file standing
// for one) that holds a flat directory of at most 31 files, each stored in
// one contiguous region of the device. All integers are little-endian.
//
//	Offset  Size  Contents
//	0       4096  header copy A
//	4096    4096  header copy B
//	8192    ...   file regions, each starting and ending on a multiple of
//	              4096 (the alignment recorded in the header)
//
// Both header copies have the same layout (a "header page"):
//
//	Offset  Size   Field
//	0       8      magic "KHIBFUSE"
//	8       4      format version, 1
//	12      4      header page size, 4096
//	16      8      generation: bumped by every rewrite of the header
//	24      8      device size in bytes, as formatted; files end at or below
//	               it (a device found smaller than this is refused)
//	32      8      data start, the device offset of the first region, 8192
//	40      4      region alignment in bytes, 4096
//	44      4      number of files n, 0..31
//	48      16     reserved, zero
//	64      31*128 file table: entries 0..n-1 are files, the rest are zero
//	4032    60     reserved, zero
//	4092    4      CRC-32C (Castagnoli) of bytes 0..4091
//
// A file table entry is 128 bytes:
//
//	Offset  Size  Field
//	0       64    name, 1 to 64 bytes padded with NUL bytes; no "/" and no
//	              NUL inside, not "." or ".."; unique in the table
//	64      8     size in bytes (at most the capacity)
//	72      8     start: device offset of the region (aligned, >= data start)
//	80      8     capacity: region length in bytes (aligned, not 0); regions
//	              of different files do not overlap and end within the device
//	88      8     modification time, nanoseconds since 1970 UTC (signed)
//	96      4     permission bits (at most 07777)
//	100     28    reserved, zero
//
// Byte i of a file is at device offset start+i. The bytes of a region past
// the file's size are undefined (stale data of earlier files): they are never
// read, and are zeroed before a file grows over them.
//
// Updates: file data is written in place. The header is rewritten, as a
// whole page, into the copy that does not hold the newest generation, with
// generation+1; before and after it the device is synced, so a header never
// describes data that is not yet on the device. A reader takes the valid copy
// (magic, version, checksum and every rule above hold) with the highest
// generation, so a header write torn by a crash leaves the previous state.
// Copy A's first 8 bytes always hold the magic, so the device can be found
// by its first 8 bytes alone. A format writes both copies, generations 1
// (copy B) and 2 (copy A).
//
// A reader refuses any other version; a later version that changes the
// layout gets a new version number.

package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
)

const (
	magic         = "KHIBFUSE"
	formatVersion = 1
	pageSize      = 4096         // size of one header copy
	dataStart     = 2 * pageSize // the first region's offset
	regionAlign   = 4096         // regions start and end on multiples of this
	maxFiles      = 31
	maxNameLen    = 64
	entryOffset   = 64
	entrySize     = 128
	crcOffset     = pageSize - 4
	// maxDevSize keeps every offset sum below 2^63.
	maxDevSize = 1 << 62
	// minDevSize is the smallest device --format accepts: the headers and
	// room for at least a little data.
	minDevSize = dataStart + 16*regionAlign
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errNoMagic means the bytes do not start with the magic: not a
// khib-fusefs device (as opposed to a damaged one).
var errNoMagic = errors.New("no khib-fusefs header (the first 8 bytes are not \"" + magic + "\")")

// header is the decoded content of one header page.
type header struct {
	gen     uint64
	devSize int64
	files   []entry
}

// entry is one file of the table.
type entry struct {
	name     string
	size     int64
	start    int64
	capacity int64
	mtime    int64 // nanoseconds since 1970
	mode     uint32
}

// encode returns the header page for h with generation gen. h must be valid
// (decodeHeader would accept the result); encode does not check.
func (h *header) encode(gen uint64) []byte {
	b := make([]byte, pageSize)
	le := binary.LittleEndian
	copy(b[0:8], magic)
	le.PutUint32(b[8:], formatVersion)
	le.PutUint32(b[12:], pageSize)
	le.PutUint64(b[16:], gen)
	le.PutUint64(b[24:], uint64(h.devSize))
	le.PutUint64(b[32:], dataStart)
	le.PutUint32(b[40:], regionAlign)
	le.PutUint32(b[44:], uint32(len(h.files)))
	for i, e := range h.files {
		p := b[entryOffset+i*entrySize : entryOffset+(i+1)*entrySize]
		copy(p[0:maxNameLen], e.name)
		le.PutUint64(p[64:], uint64(e.size))
		le.PutUint64(p[72:], uint64(e.start))
		le.PutUint64(p[80:], uint64(e.capacity))
		le.PutUint64(p[88:], uint64(e.mtime))
		le.PutUint32(p[96:], e.mode)
	}
	le.PutUint32(b[crcOffset:], crc32.Checksum(b[:crcOffset], castagnoli))
	return b
}

// decodeHeader parses and checks one header page. It reads only b[:4096]
// and allocates at most one table of 31 entries, whatever b holds.
func decodeHeader(b []byte) (*header, error) {
	if len(b) < pageSize {
		return nil, fmt.Errorf("header page is %d bytes, want %d", len(b), pageSize)
	}
	b = b[:pageSize]
	if string(b[0:8]) != magic {
		return nil, errNoMagic
	}
	le := binary.LittleEndian
	if sum, want := crc32.Checksum(b[:crcOffset], castagnoli), le.Uint32(b[crcOffset:]); sum != want {
		return nil, fmt.Errorf("header checksum mismatch (stored %#08x, computed %#08x)", want, sum)
	}
	if v := le.Uint32(b[8:]); v != formatVersion {
		return nil, fmt.Errorf("format version %d; this program reads version %d", v, formatVersion)
	}
	if v := le.Uint32(b[12:]); v != pageSize {
		return nil, fmt.Errorf("header page size %d, want %d", v, pageSize)
	}
	if v := le.Uint64(b[32:]); v != dataStart {
		return nil, fmt.Errorf("data start %d, want %d", v, dataStart)
	}
	if v := le.Uint32(b[40:]); v != regionAlign {
		return nil, fmt.Errorf("region alignment %d, want %d", v, regionAlign)
	}
	h := &header{gen: le.Uint64(b[16:])}
	devSize := le.Uint64(b[24:])
	if devSize < dataStart || devSize > maxDevSize {
		return nil, fmt.Errorf("device size %d out of range [%d, 2^62]", devSize, dataStart)
	}
	h.devSize = int64(devSize)
	n := le.Uint32(b[44:])
	if n > maxFiles {
		return nil, fmt.Errorf("%d files in the table, at most %d fit", n, maxFiles)
	}
	if !allZero(b[48:entryOffset]) || !allZero(b[entryOffset+maxFiles*entrySize:crcOffset]) {
		return nil, errors.New("reserved header bytes are not zero")
	}
	h.files = make([]entry, 0, n)
	names := make(map[string]bool, n)
	for i := 0; i < maxFiles; i++ {
		p := b[entryOffset+i*entrySize : entryOffset+(i+1)*entrySize]
		if uint32(i) >= n {
			if !allZero(p) {
				return nil, fmt.Errorf("unused table entry %d is not zero", i)
			}
			continue
		}
		nameBytes := p[0:maxNameLen]
		if j := bytes.IndexByte(nameBytes, 0); j >= 0 {
			if !allZero(nameBytes[j:]) {
				return nil, fmt.Errorf("file %d: name has bytes after its NUL padding", i)
			}
			nameBytes = nameBytes[:j]
		}
		e := entry{
			name:     string(nameBytes),
			size:     int64(le.Uint64(p[64:])),
			start:    int64(le.Uint64(p[72:])),
			capacity: int64(le.Uint64(p[80:])),
			mtime:    int64(le.Uint64(p[88:])),
			mode:     le.Uint32(p[96:]),
		}
		if err := checkName(e.name); err != nil {
			return nil, fmt.Errorf("file %d: %v", i, err)
		}
		if names[e.name] {
			return nil, fmt.Errorf("file %d: name %q appears twice", i, e.name)
		}
		names[e.name] = true
		if !allZero(p[100:entrySize]) {
			return nil, fmt.Errorf("file %q: reserved bytes are not zero", e.name)
		}
		// The uint64 fields were converted to int64: a value >= 2^63 is
		// negative here, and caught by the range checks.
		switch {
		case e.start < dataStart || e.start > h.devSize || e.start%regionAlign != 0:
			return nil, fmt.Errorf("file %q: region start %d is not an aligned offset in [%d, %d]", e.name, e.start, dataStart, h.devSize)
		case e.capacity <= 0 || e.capacity > h.devSize-e.start || e.capacity%regionAlign != 0:
			return nil, fmt.Errorf("file %q: region of %d bytes at %d does not fit the %d-byte device aligned", e.name, e.capacity, e.start, h.devSize)
		case e.size < 0 || e.size > e.capacity:
			return nil, fmt.Errorf("file %q: size %d exceeds its region of %d bytes", e.name, e.size, e.capacity)
		case e.mode&^0o7777 != 0:
			return nil, fmt.Errorf("file %q: mode %#o has bits beyond 07777", e.name, e.mode)
		}
		h.files = append(h.files, e)
	}
	// Regions must not overlap.
	byStart := make([]entry, len(h.files))
	copy(byStart, h.files)
	sort.Slice(byStart, func(i, j int) bool { return byStart[i].start < byStart[j].start })
	for i := 1; i < len(byStart); i++ {
		prev, cur := byStart[i-1], byStart[i]
		if prev.start+prev.capacity > cur.start {
			return nil, fmt.Errorf("files %q and %q overlap on the device", prev.name, cur.name)
		}
	}
	return h, nil
}

// checkName reports whether name may be a file's name.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > maxNameLen:
		return fmt.Errorf("name of %d bytes, at most %d", len(name), maxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("name %q is reserved", name)
	case bytes.ContainsAny([]byte(name), "/\x00"):
		return fmt.Errorf("name %q contains / or NUL", name)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
