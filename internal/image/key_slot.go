package image

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/crypto/argon2"
)

// A key slot is one way to recover an encrypted image's master key, kept in
// the superblock: a passphrase (Argon2id, then AES-256-GCM unwraps the key)
// or a TPM 2.0 object sealed to PCRs (opaque to this package). An image has
// one to MaxSlots of them. On disk each is Kind u8, a reserved byte, Len
// u16 and Len bytes of body.

// SlotKind says how a key slot's master key is recovered.
type SlotKind uint8

const (
	// SlotPassphrase: the key wrapped under a key derived from a passphrase
	// with Argon2id (body: PassphraseSlot).
	SlotPassphrase SlotKind = 1
	// SlotTPM: the key sealed to a TPM 2.0, bound to PCRs. The body belongs
	// to the package that seals and unseals it.
	SlotTPM SlotKind = 2
)

func (k SlotKind) String() string {
	switch k {
	case SlotPassphrase:
		return "passphrase"
	case SlotTPM:
		return "tpm2"
	}
	return fmt.Sprintf("SlotKind(%d)", uint8(k))
}

// KeySlot is one key slot: its kind and body as stored.
type KeySlot struct {
	Kind SlotKind
	Body []byte
}

// Limits of the key slots, which bound what a reader parses and derives.
const (
	MaxSlots        = 4
	slotHeaderSize  = 4
	maxTPMSlotBody  = 2048
	passphraseBody  = 76
	saltSize        = 16
	wrappedKeySize  = KeySize + sealOverhead
	MaxArgon2Time   = 64      // passes
	MaxArgon2Memory = 1 << 20 // KiB: 1 GiB
	MaxArgon2Lanes  = 16
)

// Argon2Params are Argon2id's cost parameters, as kept in a passphrase slot.
type Argon2Params struct {
	Time      uint32 // passes over the memory, 1 to MaxArgon2Time
	MemoryKiB uint32 // 8·Threads to MaxArgon2Memory KiB
	Threads   uint8  // lanes, 1 to MaxArgon2Lanes
}

// DefaultArgon2 is RFC 9106's second recommended setting: 3 passes over
// 64 MiB in 4 lanes.
var DefaultArgon2 = Argon2Params{Time: 3, MemoryKiB: 64 << 10, Threads: 4}

func (p Argon2Params) String() string {
	return fmt.Sprintf("argon2id t=%d m=%d MiB p=%d", p.Time, p.MemoryKiB>>10, p.Threads)
}

// Validate says what is wrong with p for a passphrase slot, if anything.
func (p Argon2Params) Validate() error {
	if msg := p.check(); msg != "" {
		return errors.New("image: " + msg)
	}
	return nil
}

// check reports what is wrong with p, or "".
func (p Argon2Params) check() string {
	switch {
	case p.Time < 1 || p.Time > MaxArgon2Time:
		return fmt.Sprintf("argon2 time %d, want 1 to %d", p.Time, MaxArgon2Time)
	case p.Threads < 1 || p.Threads > MaxArgon2Lanes:
		return fmt.Sprintf("argon2 lanes %d, want 1 to %d", p.Threads, MaxArgon2Lanes)
	case p.MemoryKiB < 8*uint32(p.Threads) || p.MemoryKiB > MaxArgon2Memory:
		return fmt.Sprintf("argon2 memory %d KiB, want %d to %d", p.MemoryKiB, 8*uint32(p.Threads), MaxArgon2Memory)
	}
	return ""
}

// PassphraseSlot is the body of a SlotPassphrase key slot:
//
//	0   u32       Argon2id time
//	4   u32       Argon2id memory, KiB
//	8   u8        Argon2id lanes
//	9   [3]byte   reserved
//	12  [16]byte  salt
//	28  [48]byte  the master key sealed with AES-256-GCM under
//	              Argon2id(passphrase, salt), nonce zero, the bytes 0–27
//	              as associated data
//
// The wrapping key is used once (its salt is fresh), so a zero nonce is
// safe, and the parameters cannot be changed without the unwrap failing.
type PassphraseSlot struct {
	Params  Argon2Params
	Salt    [saltSize]byte
	Wrapped [wrappedKeySize]byte
}

// NewPassphraseSlot wraps key under a key derived from passphrase with
// Argon2id and a fresh salt. It takes as long as one unlock.
func NewPassphraseSlot(key, passphrase []byte, p Argon2Params) (KeySlot, error) {
	if len(key) != KeySize {
		return KeySlot{}, fmt.Errorf("image: a key of %d bytes, want %d", len(key), KeySize)
	}
	if msg := p.check(); msg != "" {
		return KeySlot{}, errors.New("image: " + msg)
	}
	if len(passphrase) == 0 {
		return KeySlot{}, errors.New("image: empty passphrase")
	}
	ps := PassphraseSlot{Params: p}
	if _, err := rand.Read(ps.Salt[:]); err != nil {
		return KeySlot{}, fmt.Errorf("image: generating a salt: %w", err)
	}
	body := ps.marshal()
	g, err := ps.kek(passphrase)
	if err != nil {
		return KeySlot{}, err
	}
	var zero [12]byte
	g.Seal(body[28:28], zero[:], key, body[:28])
	return KeySlot{Kind: SlotPassphrase, Body: body}, nil
}

func (ps *PassphraseSlot) marshal() []byte {
	b := make([]byte, passphraseBody)
	le := binary.LittleEndian
	le.PutUint32(b[0:], ps.Params.Time)
	le.PutUint32(b[4:], ps.Params.MemoryKiB)
	b[8] = ps.Params.Threads
	copy(b[12:28], ps.Salt[:])
	copy(b[28:], ps.Wrapped[:])
	return b
}

// kek derives the wrapping key from a passphrase.
func (ps *PassphraseSlot) kek(passphrase []byte) (cipher.AEAD, error) {
	p := ps.Params
	if msg := p.check(); msg != "" {
		return nil, errors.New("image: " + msg)
	}
	k := argon2.IDKey(passphrase, ps.Salt[:], p.Time, p.MemoryKiB, p.Threads, KeySize)
	defer clear(k)
	b, err := aes.NewCipher(k)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	return cipher.NewGCM(b)
}

// Passphrase parses a SlotPassphrase body.
func (s KeySlot) Passphrase() (*PassphraseSlot, error) {
	if s.Kind != SlotPassphrase {
		return nil, fmt.Errorf("image: a %v key slot, not a passphrase slot", s.Kind)
	}
	ps, msg := parsePassphrase(s.Body)
	if msg != "" {
		return nil, errors.New("image: passphrase slot: " + msg)
	}
	return ps, nil
}

// parsePassphrase decodes a passphrase slot's body, or says what is wrong.
func parsePassphrase(b []byte) (*PassphraseSlot, string) {
	if len(b) != passphraseBody {
		return nil, fmt.Sprintf("%d bytes, want %d", len(b), passphraseBody)
	}
	le := binary.LittleEndian
	ps := &PassphraseSlot{Params: Argon2Params{Time: le.Uint32(b[0:]), MemoryKiB: le.Uint32(b[4:]), Threads: b[8]}}
	if b[9] != 0 || b[10] != 0 || b[11] != 0 {
		return nil, "reserved bytes set"
	}
	if msg := ps.Params.check(); msg != "" {
		return nil, msg
	}
	copy(ps.Salt[:], b[12:28])
	copy(ps.Wrapped[:], b[28:])
	return ps, ""
}

// Unwrap derives the wrapping key from passphrase and returns the master
// key, or ErrWrongKey.
func (ps *PassphraseSlot) Unwrap(passphrase []byte) ([]byte, error) {
	g, err := ps.kek(passphrase)
	if err != nil {
		return nil, err
	}
	body := ps.marshal()
	var zero [12]byte
	key, err := g.Open(nil, zero[:], body[28:], body[:28])
	if err != nil {
		return nil, fmt.Errorf("%w: the passphrase does not open the key slot", ErrWrongKey)
	}
	return key, nil
}

// UnlockPassphrase tries passphrase on every passphrase slot of sb and
// returns the master key of the first that opens, or an error wrapping
// ErrWrongKey. Each try costs one Argon2id derivation.
func UnlockPassphrase(sb *Superblock, passphrase []byte) ([]byte, error) {
	tried := 0
	for _, s := range sb.Slots {
		if s.Kind != SlotPassphrase {
			continue
		}
		ps, err := s.Passphrase()
		if err != nil {
			return nil, err
		}
		tried++
		if key, err := ps.Unwrap(passphrase); err == nil {
			return key, nil
		} else if !errors.Is(err, ErrWrongKey) {
			return nil, err
		}
	}
	if tried == 0 {
		return nil, fmt.Errorf("%w: the image has no passphrase slot", ErrWrongKey)
	}
	return nil, fmt.Errorf("%w: the passphrase does not open the image's key", ErrWrongKey)
}

// EncodeSlots encodes key slots as the superblock and A's request to the
// helper carry them.
func EncodeSlots(slots []KeySlot) ([]byte, error) {
	if len(slots) == 0 || len(slots) > MaxSlots {
		return nil, fmt.Errorf("image: %d key slots, want 1 to %d", len(slots), MaxSlots)
	}
	var b []byte
	for i, s := range slots {
		if msg := s.check(); msg != "" {
			return nil, fmt.Errorf("image: key slot %d: %s", i, msg)
		}
		b = append(b, byte(s.Kind), 0)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(s.Body)))
		b = append(b, s.Body...)
	}
	if len(b) > maxSlotArea {
		return nil, fmt.Errorf("image: key slots of %d bytes, at most %d fit in the superblock", len(b), maxSlotArea)
	}
	return b, nil
}

// ParseSlots decodes n key slots from b, which they must fill exactly.
// It is what a reader runs on the superblock's untrusted bytes.
func ParseSlots(b []byte, n int) ([]KeySlot, error) {
	if n < 1 || n > MaxSlots {
		return nil, fmt.Errorf("%d key slots, want 1 to %d", n, MaxSlots)
	}
	if len(b) > maxSlotArea {
		return nil, fmt.Errorf("key slots of %d bytes, at most %d", len(b), maxSlotArea)
	}
	slots := make([]KeySlot, 0, n)
	for i := 0; i < n; i++ {
		if len(b) < slotHeaderSize {
			return nil, fmt.Errorf("key slot %d: truncated", i)
		}
		s := KeySlot{Kind: SlotKind(b[0])}
		if b[1] != 0 {
			return nil, fmt.Errorf("key slot %d: reserved byte set", i)
		}
		l := int(binary.LittleEndian.Uint16(b[2:]))
		if l > len(b)-slotHeaderSize {
			return nil, fmt.Errorf("key slot %d: %d bytes, only %d left", i, l, len(b)-slotHeaderSize)
		}
		s.Body = append([]byte(nil), b[slotHeaderSize:slotHeaderSize+l]...)
		if msg := s.check(); msg != "" {
			return nil, fmt.Errorf("key slot %d: %s", i, msg)
		}
		slots = append(slots, s)
		b = b[slotHeaderSize+l:]
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%d bytes after the last key slot", len(b))
	}
	return slots, nil
}

// check reports what is wrong with a slot's kind and body, or "".
func (s KeySlot) check() string {
	switch s.Kind {
	case SlotPassphrase:
		if _, msg := parsePassphrase(s.Body); msg != "" {
			return "passphrase slot: " + msg
		}
	case SlotTPM:
		if len(s.Body) == 0 || len(s.Body) > maxTPMSlotBody {
			return fmt.Sprintf("TPM slot of %d bytes, want 1 to %d", len(s.Body), maxTPMSlotBody)
		}
	default:
		return fmt.Sprintf("unknown kind %d", uint8(s.Kind))
	}
	return ""
}

func cloneSlots(s []KeySlot) []KeySlot {
	if s == nil {
		return nil
	}
	out := make([]KeySlot, len(s))
	for i, k := range s {
		out[i] = KeySlot{Kind: k.Kind, Body: append([]byte(nil), k.Body...)}
	}
	return out
}
