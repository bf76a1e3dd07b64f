package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cespare/xxhash/v2"
)

// Superblock is the first page of an image. Fields appear in on-disk order;
// the offset of each is in the comment. Integers are little-endian, and
// bytes not named here are reserved and written as zero.
type Superblock struct {
	Magic      [8]byte // 0: "KHIBIMG\x00"
	Version    uint32  // 8: format version: 1, or 2 for an encrypted image
	State      State   // 12
	UUID       UUID    // 16: this image; zero in a bare reservation
	Nonce      Nonce   // 32: the hibernation request that reserved the device
	PageSize   uint32  // 48: 4096
	ChunkPages uint32  // 52: most pages in one chunk
	Codec      Codec   // 56: the codec the writer was asked for (a chunk may still be stored raw)
	// 57–63 reserved
	Capacity  uint64 // 64: bytes the writer was allowed to use
	ImageSize uint64 // 72: bytes from offset 0 to the end of the metadata's padding
	Created   int64  // 80: Unix nanoseconds when the save started

	// Each region starts on a page boundary, and its hash covers the region
	// with its zero padding up to the next page boundary, so that every
	// byte below ImageSize is covered by some hash.
	DataOff   uint64 // 88: always SuperblockSize
	DataLen   uint64 // 96: bytes of chunks (headers and payloads)
	DataHash  uint64 // 104
	IndexOff  uint64 // 112: DataOff + DataLen rounded up to a page
	IndexLen  uint64 // 120
	IndexHash uint64 // 128
	MetaOff   uint64 // 136: IndexOff + IndexLen rounded up to a page
	MetaLen   uint64 // 144: bytes of JSON
	MetaHash  uint64 // 152

	Pages     uint64 // 160: ZeroPages + DataPages
	ZeroPages uint64 // 168
	DataPages uint64 // 176
	Runs      uint64 // 184: entries in the index's run table
	Chunks    uint64 // 192: entries in the index's chunk table

	// Version 2 only (reserved, zero, in version 1): how the image is
	// sealed and the key slots its master key is recovered from.
	Cipher Cipher    // 200
	Slots  []KeySlot // 201: count u8; 202: bytes u16; 204–207 reserved; 208: the slots

	// the rest up to 4087 reserved
	Checksum uint64 // 4088: xxhash64 of bytes 0–4087
}

// Offsets of the version-2 fields, and the room the key slots have.
const (
	sbCipherOff   = 200
	sbNSlotsOff   = 201
	sbSlotsLenOff = 202
	sbSlotsOff    = 208
	maxSlotArea   = sbChecksumOff - sbSlotsOff
)

// Encrypted reports whether the image is sealed (version 2).
func (sb *Superblock) Encrypted() bool { return sb.Cipher != CipherNone }

const sbChecksumOff = SuperblockSize - 8

// CreatedTime returns Created as a time.
func (sb *Superblock) CreatedTime() time.Time { return time.Unix(0, sb.Created) }

// Marshal encodes sb into a page and sets sb.Checksum (and the magic and
// version: 1, or 2 when sb.Cipher is set). Key slots that do not encode
// (EncodeSlots) are left out; NewWriter has checked them.
func (sb *Superblock) Marshal() []byte {
	sb.Magic = Magic
	sb.Version = Version
	if sb.Encrypted() {
		sb.Version = VersionEncrypted
	}
	b := make([]byte, SuperblockSize)
	le := binary.LittleEndian
	copy(b[0:8], sb.Magic[:])
	le.PutUint32(b[8:], sb.Version)
	le.PutUint32(b[12:], uint32(sb.State))
	copy(b[16:32], sb.UUID[:])
	copy(b[32:48], sb.Nonce[:])
	le.PutUint32(b[48:], sb.PageSize)
	le.PutUint32(b[52:], sb.ChunkPages)
	b[56] = byte(sb.Codec)
	for i, v := range []uint64{
		sb.Capacity, sb.ImageSize, uint64(sb.Created),
		sb.DataOff, sb.DataLen, sb.DataHash,
		sb.IndexOff, sb.IndexLen, sb.IndexHash,
		sb.MetaOff, sb.MetaLen, sb.MetaHash,
		sb.Pages, sb.ZeroPages, sb.DataPages, sb.Runs, sb.Chunks,
	} {
		le.PutUint64(b[64+8*i:], v)
	}
	if sb.Encrypted() {
		b[sbCipherOff] = byte(sb.Cipher)
		if area, err := EncodeSlots(sb.Slots); err == nil {
			b[sbNSlotsOff] = byte(len(sb.Slots))
			le.PutUint16(b[sbSlotsLenOff:], uint16(len(area)))
			copy(b[sbSlotsOff:], area)
		}
	}
	sb.Checksum = xxhash.Sum64(b[:sbChecksumOff])
	le.PutUint64(b[sbChecksumOff:], sb.Checksum)
	return b
}

// parseSuperblock decodes a superblock page: magic, version, checksum.
func parseSuperblock(b []byte) (*Superblock, error) {
	if len(b) < len(Magic) || [8]byte(b[:8]) != Magic {
		return nil, ErrNotImage
	}
	if len(b) < SuperblockSize {
		return nil, formatErr(uint64(len(b)), "truncated superblock: %d of %d bytes", len(b), SuperblockSize)
	}
	le := binary.LittleEndian
	sum := xxhash.Sum64(b[:sbChecksumOff])
	version := le.Uint32(b[8:])
	// The checksum is judged first so that a flipped bit in the version of
	// a version-1 or -2 superblock reads as corruption. A superblock whose
	// checksum does not match and that names another version may be laid
	// out differently altogether.
	known := version == Version || version == VersionEncrypted
	if sum != le.Uint64(b[sbChecksumOff:]) {
		if !known {
			return nil, fmt.Errorf("%w: version %d (this khib reads versions %d and %d)", ErrVersion, version, Version, VersionEncrypted)
		}
		return nil, formatErr(sbChecksumOff, "superblock checksum mismatch")
	}
	if !known {
		return nil, fmt.Errorf("%w: version %d (this khib reads versions %d and %d)", ErrVersion, version, Version, VersionEncrypted)
	}
	sb := &Superblock{
		Magic:      Magic,
		Version:    version,
		State:      State(le.Uint32(b[12:])),
		UUID:       UUID(b[16:32]),
		Nonce:      Nonce(b[32:48]),
		PageSize:   le.Uint32(b[48:]),
		ChunkPages: le.Uint32(b[52:]),
		Codec:      Codec(b[56]),
		Checksum:   sum,
	}
	f := []*uint64{
		&sb.Capacity, &sb.ImageSize, nil,
		&sb.DataOff, &sb.DataLen, &sb.DataHash,
		&sb.IndexOff, &sb.IndexLen, &sb.IndexHash,
		&sb.MetaOff, &sb.MetaLen, &sb.MetaHash,
		&sb.Pages, &sb.ZeroPages, &sb.DataPages, &sb.Runs, &sb.Chunks,
	}
	for i, p := range f {
		if p != nil {
			*p = le.Uint64(b[64+8*i:])
		}
	}
	sb.Created = int64(le.Uint64(b[80:]))
	if _, ok := stateNames[sb.State]; !ok {
		return nil, formatErr(12, "unknown state %d", uint32(sb.State))
	}
	if version == VersionEncrypted {
		if err := parseEncryption(sb, b); err != nil {
			return nil, err
		}
	}
	return sb, nil
}

// parseEncryption reads a version-2 superblock's cipher and key slots.
func parseEncryption(sb *Superblock, b []byte) error {
	sb.Cipher = Cipher(b[sbCipherOff])
	if sb.Cipher != CipherAES256GCM {
		return formatErr(sbCipherOff, "version 2 with cipher %d (this khib knows %d, %v)", uint8(sb.Cipher), uint8(CipherAES256GCM), CipherAES256GCM)
	}
	n := int(b[sbNSlotsOff])
	l := int(binary.LittleEndian.Uint16(b[sbSlotsLenOff:]))
	if l > maxSlotArea {
		return formatErr(sbSlotsLenOff, "key slots of %d bytes, at most %d fit", l, maxSlotArea)
	}
	slots, err := ParseSlots(b[sbSlotsOff:sbSlotsOff+l], n)
	if err != nil {
		return formatErr(sbSlotsOff, "%v", err)
	}
	sb.Slots = slots
	return nil
}

// ReadSuperblock reads and checks the superblock at offset 0: magic
// (ErrNotImage), version (ErrVersion) and checksum (ErrCorrupt). It returns
// the superblock whatever its state; Open is what refuses images that are
// not complete.
func ReadSuperblock(r io.ReaderAt) (*Superblock, error) {
	b, err := readSuperblockPage(r)
	if err != nil {
		return nil, err
	}
	return parseSuperblock(b)
}

// readSuperblockPage reads the first page, or as much of it as there is.
func readSuperblockPage(r io.ReaderAt) ([]byte, error) {
	b := make([]byte, SuperblockSize)
	n, err := r.ReadAt(b, 0)
	if n < SuperblockSize {
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("image: reading superblock: %w", err)
		}
		b = b[:n]
	}
	return b, nil
}

// WriteReservation writes a superblock in state Writing that carries nonce,
// so that B, scanning devices, can tell the one A chose (FindReservation).
// It also invalidates whatever image the device held before. The caller
// syncs the device afterwards.
func WriteReservation(w io.WriterAt, nonce [16]byte, devSize int64) error {
	return writeReservation(w, nonce, devSize, nil)
}

// WriteEncryptedReservation is WriteReservation for an encrypted save: the
// reservation (version 2) also carries the cipher and the key slots, which
// the helper copies into the image it writes. A builds the slots, so that
// a passphrase never leaves A; the master key goes to the helper through
// memory only (internal/mailbox), never into a reservation.
func WriteEncryptedReservation(w io.WriterAt, nonce [16]byte, devSize int64, slots []KeySlot) error {
	if _, err := EncodeSlots(slots); err != nil {
		return err
	}
	return writeReservation(w, nonce, devSize, slots)
}

func writeReservation(w io.WriterAt, nonce [16]byte, devSize int64, slots []KeySlot) error {
	if devSize < minImageSize {
		return &TooSmallError{Capacity: devSize, Need: minImageSize}
	}
	sb := &Superblock{
		State:    StateWriting,
		Nonce:    nonce,
		PageSize: PageSize,
		Capacity: uint64(devSize),
		Created:  time.Now().UnixNano(),
	}
	if slots != nil {
		sb.Cipher, sb.Slots = CipherAES256GCM, slots
	}
	if _, err := w.WriteAt(sb.Marshal(), 0); err != nil {
		return fmt.Errorf("image: writing reservation: %w", err)
	}
	return nil
}

// minImageSize is the smallest image: a superblock, an empty data area, a
// page of index and a page of metadata.
const minImageSize = SuperblockSize + 2*PageSize

// FindReservation reads the superblock of a device and reports whether it
// carries nonce, in any state: a Complete image with the nonce means this
// request's save already finished. A device that is no image gives
// ErrNotImage, an image of another request ErrNoReservation.
func FindReservation(r io.ReaderAt, nonce [16]byte) (*Superblock, error) {
	sb, err := ReadSuperblock(r)
	if err != nil {
		return nil, err
	}
	if sb.Nonce != nonce {
		return nil, fmt.Errorf("%w: device holds nonce %v", ErrNoReservation, sb.Nonce)
	}
	return sb, nil
}

// ReadWriterAt is what SetState needs: it reads the superblock to keep its
// fields, and writes it back.
type ReadWriterAt interface {
	io.ReaderAt
	io.WriterAt
}

// SetState rewrites the superblock's state in place, with a new checksum;
// every other byte stays as it was. Only StateInvalidated and StateFailed
// may be set this way: marking an image complete is Writer.Close's job,
// after it has synced the data, and an image goes back to Writing only by
// being written again. The caller syncs the device afterwards.
func SetState(rw ReadWriterAt, state State) error {
	if state != StateInvalidated && state != StateFailed {
		return fmt.Errorf("image: SetState cannot set state %v", state)
	}
	b, err := readSuperblockPage(rw)
	if err != nil {
		return err
	}
	if _, err := parseSuperblock(b); err != nil {
		return err
	}
	binary.LittleEndian.PutUint32(b[12:], uint32(state))
	binary.LittleEndian.PutUint64(b[sbChecksumOff:], xxhash.Sum64(b[:sbChecksumOff]))
	if _, err := rw.WriteAt(b, 0); err != nil {
		return fmt.Errorf("image: writing superblock (state %v): %w", state, err)
	}
	return nil
}
