// Package tpmkey seals an encrypted image's master key to a TPM 2.0,
// bound to the values of some of its PCRs, and unseals it again: the body
// of an image's TPM key slot (internal/image, SlotTPM).
//
// The key is the data of a keyed-hash object with a policy that only the
// same PCR values satisfy (TPM2_PolicyPCR) and no password, created under
// a primary storage key of the owner hierarchy that has the same policy:
// whoever runs on this machine with these PCR values gets the key, and
// nobody else, not even with the disk in hand; and only code that ran
// with these PCR values can have sealed it. The parent is not stored: it
// is created again from the TPM's seed and its template (the TCG's ECC
// P-256 SRK template with the PCR policy) at every seal and unseal,
// which gives the same key. The sessions are salted with the parent and
// encrypt the response, so the key never crosses the bus in clear.
package tpmkey

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// DefaultPCRs are the PCRs a key is bound to unless told otherwise: the
// firmware's code (0), option ROMs (2), the boot loader (4) and the
// secure boot policy (7). They change with the firmware or the boot
// loader, not with a kernel update or the kernel command line: resuming
// needs the same kernel anyway, which stage 1 checks itself.
var DefaultPCRs = []int{0, 2, 4, 7}

// Devices are where Open looks for the TPM: the kernel's resource manager
// first, which lets more than one user share the TPM.
var Devices = []string{"/dev/tpmrm0", "/dev/tpm0"}

// ErrNoTPM: no TPM device.
var ErrNoTPM = errors.New("tpmkey: no TPM 2.0 device")

// ErrPolicy: the TPM refused to unseal, because a PCR has another value
// than when the key was sealed (another firmware, boot loader, machine).
var ErrPolicy = errors.New("tpmkey: the TPM does not release the key: the PCRs differ from when it was sealed")

// Open opens the machine's TPM.
func Open() (transport.TPMCloser, error) {
	var errs []error
	for _, d := range Devices {
		if _, err := os.Stat(d); err != nil {
			errs = append(errs, err)
			continue
		}
		t, err := linuxtpm.Open(d)
		if err != nil {
			return nil, fmt.Errorf("tpmkey: %s: %w", d, err)
		}
		return t, nil
	}
	return nil, fmt.Errorf("%w (%v)", ErrNoTPM, errors.Join(errs...))
}

// Slot is a sealed key: which PCRs of which bank it is bound to, and the
// sealed object as the TPM created it. On disk (an image's TPM slot body):
//
//	0  u16  PCR bank: the TPM algorithm ID of its hash (0x000b SHA-256)
//	2  u32  PCR mask: bit i set binds PCR i (0 to 23)
//	6  u16  length of Public, 1 to 1024
//	8  ...  Public: the object's TPMT_PUBLIC as the TPM marshals it
//	   u16  length of Private, 1 to 1024
//	   ...  Private: the object's TPM2B_PRIVATE contents, sealed by the TPM
//
// The TPM checks Public and Private itself when they are loaded; Parse
// only bounds them.
type Slot struct {
	Bank    uint16
	PCRs    uint32
	Public  []byte
	Private []byte
}

const (
	maxBlob  = 1024
	pcrCount = 24
)

// Marshal encodes s.
func (s *Slot) Marshal() []byte {
	le := binary.LittleEndian
	b := le.AppendUint16(nil, s.Bank)
	b = le.AppendUint32(b, s.PCRs)
	b = le.AppendUint16(b, uint16(len(s.Public)))
	b = append(b, s.Public...)
	b = le.AppendUint16(b, uint16(len(s.Private)))
	return append(b, s.Private...)
}

// Parse decodes a slot body; it is untrusted input.
func Parse(b []byte) (*Slot, error) {
	le := binary.LittleEndian
	if len(b) < 8 {
		return nil, fmt.Errorf("tpmkey: slot of %d bytes, too short", len(b))
	}
	s := &Slot{Bank: le.Uint16(b), PCRs: le.Uint32(b[2:])}
	if s.Bank != uint16(tpm2.TPMAlgSHA256) {
		return nil, fmt.Errorf("tpmkey: PCR bank %#04x, this khib uses SHA-256 (%#04x)", s.Bank, uint16(tpm2.TPMAlgSHA256))
	}
	if s.PCRs == 0 || s.PCRs>>pcrCount != 0 {
		return nil, fmt.Errorf("tpmkey: PCR mask %#x, want PCRs 0 to %d and at least one", s.PCRs, pcrCount-1)
	}
	rest := b[6:]
	for _, p := range []*[]byte{&s.Public, &s.Private} {
		if len(rest) < 2 {
			return nil, errors.New("tpmkey: slot truncated")
		}
		n := int(le.Uint16(rest))
		if n == 0 || n > maxBlob || n > len(rest)-2 {
			return nil, fmt.Errorf("tpmkey: a sealed object part of %d bytes (%d left, at most %d)", n, len(rest)-2, maxBlob)
		}
		*p = append([]byte(nil), rest[2:2+n]...)
		rest = rest[2+n:]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("tpmkey: %d bytes after the sealed object", len(rest))
	}
	return s, nil
}

// PCRList returns the PCRs in the mask, in order.
func (s *Slot) PCRList() []int {
	var out []int
	for i := 0; i < pcrCount; i++ {
		if s.PCRs&(1<<i) != 0 {
			out = append(out, i)
		}
	}
	return out
}

// ParsePCRs reads a list like "0,2,4,7".
func ParsePCRs(list string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 0 || n >= pcrCount {
			return nil, fmt.Errorf("tpmkey: PCR %q: want numbers 0 to %d, separated by commas", f, pcrCount-1)
		}
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

func mask(pcrs []int) (uint32, error) {
	var m uint32
	for _, p := range pcrs {
		if p < 0 || p >= pcrCount {
			return 0, fmt.Errorf("tpmkey: PCR %d out of range", p)
		}
		m |= 1 << p
	}
	if m == 0 {
		return 0, errors.New("tpmkey: no PCR to bind the key to")
	}
	return m, nil
}

func selection(pcrs []int) tpm2.TPMLPCRSelection {
	sel := make([]uint, len(pcrs))
	for i, p := range pcrs {
		sel[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(sel...),
	}}}
}

// policyDigest is the digest of "these PCRs have their current values",
// computed by the TPM in a trial session.
func policyDigest(t transport.TPM, pcrs []int) ([]byte, error) {
	trial, closeTrial, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, 16, tpm2.Trial())
	if err != nil {
		return nil, fmt.Errorf("tpmkey: trial session: %w", err)
	}
	defer closeTrial()
	if _, err := (tpm2.PolicyPCR{PolicySession: trial.Handle(), Pcrs: selection(pcrs)}).Execute(t); err != nil {
		return nil, fmt.Errorf("tpmkey: PolicyPCR: %w", err)
	}
	dg, err := tpm2.PolicyGetDigest{PolicySession: trial.Handle()}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("tpmkey: PolicyGetDigest: %w", err)
	}
	return dg.PolicyDigest.Buffer, nil
}

// parent creates the key's parent: a primary storage key of the owner
// hierarchy, from the standard ECC P-256 SRK template but usable only
// under the PCR policy (digest). A primary key follows from the TPM's
// seed and its template, so the same PCR policy gives the same key every
// time, and nothing is stored in the TPM. Because only code that runs
// with these PCR values can use it as a parent, only such code can have
// made the sealed object: a key slot forged elsewhere (a live system on
// this machine, say) does not load. That makes the TPM slot an
// authenticator of the image as well as a lock on its key.
func parent(t transport.TPM, digest []byte) (*tpm2.CreatePrimaryResponse, func(), error) {
	tmpl := tpm2.ECCSRKTemplate
	tmpl.ObjectAttributes.UserWithAuth = false
	tmpl.AuthPolicy = tpm2.TPM2BDigest{Buffer: digest}
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHOwner,
		InPublic:      tpm2.New2B(tmpl),
	}.Execute(t)
	if err != nil {
		return nil, nil, fmt.Errorf("tpmkey: creating the storage key: %w", err)
	}
	return rsp, func() { tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(t) }, nil
}

// pcrSession starts a policy session satisfied by the PCRs' current
// values, salted with (and so encrypting the response under) salt. The
// TPM refuses the command it authorises (TPM_RC_POLICY_FAIL) if the PCRs
// differ from the object's policy.
func pcrSession(t transport.TPM, pcrs []int, salt *tpm2.CreatePrimaryResponse) (tpm2.Session, func() error, error) {
	saltPub, err := salt.OutPublic.Contents()
	if err != nil {
		return nil, nil, fmt.Errorf("tpmkey: the storage key: %w", err)
	}
	sess, closeSess, err := tpm2.PolicySession(t, tpm2.TPMAlgSHA256, 16,
		tpm2.Salted(salt.ObjectHandle, *saltPub), tpm2.AESEncryption(128, tpm2.EncryptOut))
	if err != nil {
		return nil, nil, fmt.Errorf("tpmkey: policy session: %w", err)
	}
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: selection(pcrs)}).Execute(t); err != nil {
		closeSess()
		return nil, nil, fmt.Errorf("tpmkey: PolicyPCR: %w", err)
	}
	return sess, closeSess, nil
}

// Seal seals key to the TPM, bound to the current values of pcrs: the
// data of a keyed-hash object with the PCR policy and no password, under
// a parent with the same policy.
func Seal(t transport.TPM, key []byte, pcrs []int) (*Slot, error) {
	m, err := mask(pcrs)
	if err != nil {
		return nil, err
	}
	if len(key) == 0 || len(key) > 128 {
		return nil, fmt.Errorf("tpmkey: a key of %d bytes", len(key))
	}
	digest, err := policyDigest(t, pcrs)
	if err != nil {
		return nil, err
	}
	p, flush, err := parent(t, digest)
	if err != nil {
		return nil, err
	}
	defer flush()
	sess, closeSess, err := pcrSession(t, pcrs, p)
	if err != nil {
		return nil, err
	}
	defer closeSess()
	rsp, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: p.ObjectHandle, Name: p.Name, Auth: sess},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: key}),
		}},
		InPublic: tpm2.New2B(tpm2.TPMTPublic{
			Type:             tpm2.TPMAlgKeyedHash,
			NameAlg:          tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, NoDA: true},
			AuthPolicy:       tpm2.TPM2BDigest{Buffer: digest},
		}),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("tpmkey: sealing the key: %w", err)
	}
	return &Slot{
		Bank:    uint16(tpm2.TPMAlgSHA256),
		PCRs:    m,
		Public:  rsp.OutPublic.Bytes(),
		Private: rsp.OutPrivate.Buffer,
	}, nil
}

// Unseal asks the TPM for the key. PCRs that changed since the seal give
// ErrPolicy; an object this TPM did not seal with these PCRs does not
// load.
func (s *Slot) Unseal(t transport.TPM) ([]byte, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](s.Public)
	if err != nil {
		return nil, fmt.Errorf("tpmkey: the sealed object's public part: %w", err)
	}
	pcrs := s.PCRList()
	digest, err := policyDigest(t, pcrs)
	if err != nil {
		return nil, err
	}
	// The object says which policy it was sealed under; the PCRs as they
	// are now give another one if any of them changed.
	if !bytes.Equal(pub.AuthPolicy.Buffer, digest) {
		return nil, fmt.Errorf("%w (PCRs %v)", ErrPolicy, pcrs)
	}
	p, flush, err := parent(t, digest)
	if err != nil {
		return nil, err
	}
	defer flush()
	psess, closeP, err := pcrSession(t, pcrs, p)
	if err != nil {
		return nil, err
	}
	defer closeP()
	ld, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: p.ObjectHandle, Name: p.Name, Auth: psess},
		InPrivate:    tpm2.TPM2BPrivate{Buffer: s.Private},
		InPublic:     tpm2.New2B(*pub),
	}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCPolicyFail) {
			return nil, fmt.Errorf("%w (PCRs %v)", ErrPolicy, pcrs)
		}
		return nil, fmt.Errorf("tpmkey: loading the sealed key (sealed by another TPM or under other PCRs, or altered): %w", err)
	}
	defer tpm2.FlushContext{FlushHandle: ld.ObjectHandle}.Execute(t)
	sess, closeSess, err := pcrSession(t, pcrs, p)
	if err != nil {
		return nil, err
	}
	defer closeSess()
	rsp, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: ld.ObjectHandle, Name: ld.Name, Auth: sess}}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCPolicyFail) {
			return nil, fmt.Errorf("%w (PCRs %v)", ErrPolicy, pcrs)
		}
		return nil, fmt.Errorf("tpmkey: unsealing: %w", err)
	}
	return rsp.OutData.Buffer, nil
}

// ReadPCRs returns the current SHA-256 values of pcrs, for messages.
func ReadPCRs(t transport.TPM, pcrs []int) (map[int][]byte, error) {
	rsp, err := tpm2.PCRRead{PCRSelectionIn: selection(pcrs)}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("tpmkey: reading PCRs: %w", err)
	}
	out := map[int][]byte{}
	got := rsp.PCRSelectionOut.PCRSelections
	if len(got) != 1 {
		return out, nil
	}
	i := 0
	for p := 0; p < pcrCount && i < len(rsp.PCRValues.Digests); p++ {
		if got[0].PCRSelect[p/8]&(1<<(p%8)) != 0 {
			out[p] = rsp.PCRValues.Digests[i].Buffer
			i++
		}
	}
	return out, nil
}
