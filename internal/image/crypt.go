package image

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Encrypted images (format version 2) seal every chunk, the index and the
// metadata with AES-256-GCM. docs/image-format.md, "Encryption", is the
// specification; this file holds the sealing, key_slot.go the key slots.

// Cipher names how an encrypted image is sealed.
type Cipher uint8

const (
	// CipherNone: a version-1 image, nothing sealed.
	CipherNone Cipher = 0
	// CipherAES256GCM seals with AES-256 in GCM mode (crypto/cipher), 12-byte
	// nonces and 16-byte tags. Every x86-64 CPU khib runs on has AES-NI and
	// PCLMULQDQ, which Go's GCM uses.
	CipherAES256GCM Cipher = 1
)

func (c Cipher) String() string {
	switch c {
	case CipherNone:
		return "none"
	case CipherAES256GCM:
		return "aes-256-gcm"
	}
	return fmt.Sprintf("Cipher(%d)", uint8(c))
}

// KeySize is the size of an image's master key.
const KeySize = 32

// sealOverhead is what sealing adds to every sealed piece: the GCM tag.
const sealOverhead = 16

// Encryption is what a Writer needs to write an encrypted image: the master
// key, and the key slots a reader recovers it from (a passphrase, a TPM).
// The key must be random and fresh for every hibernation; the writer
// derives the image's own key from it and the image's fresh UUID, so that
// no two images share a key even if a master key were used twice.
type Encryption struct {
	Key   []byte    // KeySize bytes
	Slots []KeySlot // at least one; they go into the superblock as they are
}

// ErrEncrypted: the image is encrypted and no key was given to read it.
var ErrEncrypted = errors.New("image: encrypted image: the key is needed to read it")

// ErrWrongKey: no key slot opens with the passphrase (or TPM) given, or the
// key given is not this image's.
var ErrWrongKey = errors.New("image: wrong key")

// Domains of the nonces and associated data: every sealed piece of an
// image has its own (domain, number), so that no nonce is used twice under
// the image's key and no piece can stand in for another.
const (
	domainChunk uint32 = 1 // number: the chunk's index in the chunk table
	domainIndex uint32 = 2 // number: 0
	domainMeta  uint32 = 3 // number: 0
)

// sealer seals and opens the pieces of one image.
type sealer struct {
	aead cipher.AEAD
	uuid UUID
}

// imageKeyInfo is the HKDF info string for the image key.
const imageKeyInfo = "khib image v2 aes-256-gcm"

// newSealer derives the image key from the master key and the image's
// UUID (HKDF-SHA256, the UUID as salt).
func newSealer(c Cipher, master []byte, u UUID) (*sealer, error) {
	if c != CipherAES256GCM {
		return nil, fmt.Errorf("image: unknown cipher %v", c)
	}
	if len(master) != KeySize {
		return nil, fmt.Errorf("image: a key of %d bytes, want %d", len(master), KeySize)
	}
	k, err := hkdf.Key(sha256.New, master, u[:], imageKeyInfo, 32)
	if err != nil {
		return nil, fmt.Errorf("image: deriving the image key: %w", err)
	}
	defer clear(k)
	b, err := aes.NewCipher(k)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	return &sealer{aead: g, uuid: u}, nil
}

// nonce is the domain (u32) and the number (u64), little-endian: unique
// for every piece of one image, and the image key is unique to the image.
func nonce(domain uint32, n uint64) [12]byte {
	var b [12]byte
	binary.LittleEndian.PutUint32(b[0:], domain)
	binary.LittleEndian.PutUint64(b[4:], n)
	return b
}

// adSize is the size of the associated data.
const adSize = 4 + 4 + 16 + 4 + 8 + 2 + 1

// ad is the associated data of a piece: "KHIB", the version, the image's
// UUID, the domain, the number and, for a chunk, its page count and codec.
// A piece moved to another place, another image or another role fails to
// open, as a flipped bit does.
func (s *sealer) ad(domain uint32, n uint64, pages uint16, codec Codec) [adSize]byte {
	var b [adSize]byte
	le := binary.LittleEndian
	copy(b[0:4], "KHIB")
	le.PutUint32(b[4:], VersionEncrypted)
	copy(b[8:24], s.uuid[:])
	le.PutUint32(b[24:], domain)
	le.PutUint64(b[28:], n)
	le.PutUint16(b[36:], pages)
	b[38] = byte(codec)
	return b
}

// seal appends the sealed form of plain to dst. plain[:0] may be dst, to
// seal in place (with room for the tag).
func (s *sealer) seal(dst, plain []byte, domain uint32, n uint64, pages uint16, codec Codec) []byte {
	nc := nonce(domain, n)
	ad := s.ad(domain, n, pages, codec)
	return s.aead.Seal(dst, nc[:], plain, ad[:])
}

// open appends the opened form of sealed to dst, or fails if anything about
// it, or its place, differs from what was sealed.
func (s *sealer) open(dst, sealed []byte, domain uint32, n uint64, pages uint16, codec Codec) ([]byte, error) {
	if len(sealed) < sealOverhead {
		return nil, errors.New("shorter than its tag")
	}
	nc := nonce(domain, n)
	ad := s.ad(domain, n, pages, codec)
	out, err := s.aead.Open(dst, nc[:], sealed, ad[:])
	if err != nil {
		return nil, errors.New("authentication failed")
	}
	return out, nil
}
