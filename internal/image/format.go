// Package image reads and writes khib hibernation images.
//
// An image holds the physical pages of a hibernated system A: a superblock
// at offset 0, then the data area (compressed chunks of pages), the index
// (page runs and the chunk table) and the metadata (A's identity). The
// superblock is written twice: first in state Writing, before any data, and
// last in state Complete, after everything else has been synced. A Reader
// trusts nothing it has not checked against a hash the superblock holds.
// docs/image-format.md is the specification.
package image

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
)

// Format constants of version 1.
const (
	Version = 1 // the format version of unencrypted images
	// VersionEncrypted is version 1 with every chunk, the index and the
	// metadata sealed, and the cipher and key slots in the superblock.
	// This package reads and writes both.
	VersionEncrypted = 2
	PageSize         = 4096 // bytes per page; the only page size version 1 knows
	SuperblockSize   = 4096 // the superblock fills the first page of the image

	// DefaultChunkPages pages (256 KiB) go into one chunk unless told
	// otherwise: big enough for the codecs to find matches, small enough
	// that random access (ReadPage) decodes little and a bad chunk loses
	// little.
	DefaultChunkPages = 64
	// MaxChunkPages bounds the chunk size a reader accepts (4 MiB), which
	// bounds the buffers it allocates per chunk.
	MaxChunkPages = 1024

	// MaxMetaSize bounds the metadata blob (JSON).
	MaxMetaSize = 1 << 20
	// MaxIndexSize bounds the index a reader loads into memory. 1 GiB of
	// index describes at least 64 Mi runs, far beyond any machine khib runs
	// on; the limit only keeps hostile input from allocating more.
	MaxIndexSize = 1 << 30

	// MaxPFN bounds page frame numbers so that pfn*PageSize fits in 64 bits.
	MaxPFN = 1 << 52

	chunkHeaderSize = 32
	indexHeaderSize = 32
	runEntrySize    = 16
	chunkEntrySize  = 32
	maxRunPages     = math.MaxUint32
)

// Magic opens every superblock.
var Magic = [8]byte{'K', 'H', 'I', 'B', 'I', 'M', 'G', 0}

var (
	indexMagic = [4]byte{'K', 'H', 'I', 'X'}
	chunkMagic = [4]byte{'K', 'H', 'C', 'K'}
)

// HashName names the checksum every hash field of version 1 holds:
// xxhash64 with seed 0. Under QEMU TCG it ran at 1.8 GB/s where CRC32C,
// without its hardware instruction, ran at 0.1 GB/s (design/measurements.md).
const HashName = "xxhash64"

// State says whether an image may be restored.
type State uint32

const (
	// StateWriting marks a reservation, or an image being written. It is
	// also what a crashed or failed save leaves behind: such an image is
	// incomplete and is never restored.
	StateWriting State = 1
	// StateComplete is written last, after all data, the index and the
	// metadata are durable.
	StateComplete State = 2
	// StateInvalidated marks an image that must not be restored again: it
	// has been resumed from, or a resume failed after writing pages.
	StateInvalidated State = 3
	// StateFailed marks a save that gave up (for example, the device was
	// too small). Like Writing, it is never restored; it tells a later
	// status check that the save ended on purpose.
	StateFailed State = 4
)

var stateNames = map[State]string{
	StateWriting:     "writing",
	StateComplete:    "complete",
	StateInvalidated: "invalidated",
	StateFailed:      "failed",
}

func (s State) String() string {
	if n, ok := stateNames[s]; ok {
		return n
	}
	return fmt.Sprintf("State(%d)", uint32(s))
}

// Codec names how a chunk's pages are stored.
type Codec uint8

const (
	// CodecNone stores pages as they are. The writer uses it for any chunk
	// whose compressed form is not smaller.
	CodecNone Codec = 0
	// CodecS2 is klauspost/compress/s2's block format, the default: under
	// TCG it compressed at 241–248 MB/s to 0.340 of the input, where zstd
	// managed 33–37 MB/s for 0.314–0.324.
	CodecS2 Codec = 1
	// CodecZstd is a zstd frame (klauspost/compress/zstd), for the
	// smallest image when time matters less.
	CodecZstd Codec = 2
)

var codecNames = map[Codec]string{CodecNone: "none", CodecS2: "s2", CodecZstd: "zstd"}

func (c Codec) String() string {
	if n, ok := codecNames[c]; ok {
		return n
	}
	return fmt.Sprintf("Codec(%d)", uint8(c))
}

func (c Codec) known() bool {
	_, ok := codecNames[c]
	return ok
}

// ParseCodec returns the codec of that name; "" is the default, s2.
func ParseCodec(name string) (Codec, error) {
	if name == "" {
		return CodecS2, nil
	}
	for c, n := range codecNames {
		if n == name {
			return c, nil
		}
	}
	return 0, fmt.Errorf("image: unknown codec %q (want s2, zstd or none)", name)
}

// Kind says what a run of pages holds.
type Kind uint8

const (
	// KindZero pages are all zero bytes. They are recorded in the index and
	// not stored: restore writes zeros.
	KindZero Kind = 1
	// KindData pages are stored in chunks, in physical order.
	KindData Kind = 2
)

func (k Kind) String() string {
	switch k {
	case KindZero:
		return "zero"
	case KindData:
		return "data"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Run is one index entry for physically consecutive pages of one kind.
// On disk: Start u64, Count u32, Kind u8, 3 reserved bytes.
type Run struct {
	Start uint64 // page frame number of the first page
	Count uint32 // pages, at least 1
	Kind  Kind
}

// End is the page frame number after the run.
func (r Run) End() uint64 { return r.Start + uint64(r.Count) }

// Chunk is one entry of the chunk table: where a chunk is and what it must
// hash to. On disk: Offset u64, Stored u32, Pages u16, Codec u8, 1 reserved
// byte, RawHash u64, StoredHash u64.
type Chunk struct {
	Offset     uint64 // of the chunk header in the image
	Stored     uint32 // payload bytes after the header
	Pages      uint16 // pages the payload decodes to
	Codec      Codec
	RawHash    uint64 // xxhash64 of the decoded pages
	StoredHash uint64 // xxhash64 of the payload
}

// UUID identifies one image.
type UUID [16]byte

// NewUUID returns a random (version 4) UUID.
func NewUUID() (UUID, error) {
	var u UUID
	if _, err := rand.Read(u[:]); err != nil {
		return u, fmt.Errorf("image: generating UUID: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u, nil
}

func (u UUID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}

// IsZero reports whether u is all zeros, which no written image has.
func (u UUID) IsZero() bool { return u == UUID{} }

// MarshalText formats u the usual way, 8-4-4-4-12 hex digits.
func (u UUID) MarshalText() ([]byte, error) { return []byte(u.String()), nil }

// UnmarshalText parses the form MarshalText writes.
func (u *UUID) UnmarshalText(b []byte) error {
	if len(b) != 36 || b[8] != '-' || b[13] != '-' || b[18] != '-' || b[23] != '-' {
		return fmt.Errorf("malformed UUID %q", b)
	}
	var h [32]byte
	copy(h[0:8], b[0:8])
	copy(h[8:12], b[9:13])
	copy(h[12:16], b[14:18])
	copy(h[16:20], b[19:23])
	copy(h[20:32], b[24:36])
	var v UUID
	if _, err := hex.Decode(v[:], h[:]); err != nil {
		return fmt.Errorf("malformed UUID %q", b)
	}
	*u = v
	return nil
}

// Nonce identifies one hibernation request. A writes it into the
// reservation before the jump; B scans block devices for it.
type Nonce [16]byte

// NewNonce returns a random nonce.
func NewNonce() (Nonce, error) {
	var n Nonce
	if _, err := rand.Read(n[:]); err != nil {
		return n, fmt.Errorf("image: generating nonce: %w", err)
	}
	return n, nil
}

func (n Nonce) String() string { return hex.EncodeToString(n[:]) }

// Range is a span of physical addresses, End exclusive.
type Range struct {
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
}

// Size is the number of bytes in r; an inverted range has size 0.
func (r Range) Size() uint64 {
	if r.End <= r.Start {
		return 0
	}
	return r.End - r.Start
}

func (r Range) String() string {
	if r.End <= r.Start {
		return fmt.Sprintf("%#x-(empty)", r.Start)
	}
	return fmt.Sprintf("%#x-%#x", r.Start, r.End-1)
}

// pages returns the page frames r touches, [first, end): a page partly in r
// counts as in r.
func (r Range) pages() (uint64, uint64) {
	if r.End <= r.Start {
		return 0, 0
	}
	end := r.End / PageSize
	if r.End%PageSize != 0 {
		end++
	}
	return r.Start / PageSize, end
}

// Stats are the figures of an image.
type Stats struct {
	Pages       uint64 // pages recorded, zero and data
	ZeroPages   uint64 // recorded, not stored
	DataPages   uint64 // stored in chunks
	Runs        uint64
	Chunks      uint64
	RawChunks   uint64 // chunks stored uncompressed because compression did not help
	RawBytes    uint64 // DataPages * PageSize: what went into the codec
	StoredBytes uint64 // bytes of all chunks, headers included
	ImageBytes  uint64 // the whole image; 0 while a Writer is still writing
}

// Ratio is StoredBytes / RawBytes, 0 when no page was stored.
func (s Stats) Ratio() float64 {
	if s.RawBytes == 0 {
		return 0
	}
	return float64(s.StoredBytes) / float64(s.RawBytes)
}

// alignUp rounds n up to a multiple of PageSize; n must be far from the
// top of its range, which every caller checks first.
func alignUp(n uint64) uint64 { return (n + PageSize - 1) &^ (PageSize - 1) }

// indexLen is the size of an index with that many entries.
func indexLen(runs, chunks uint64) uint64 {
	return indexHeaderSize + runs*runEntrySize + chunks*chunkEntrySize
}
