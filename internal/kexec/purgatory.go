package kexec

import (
	"bytes"
	_ "embed"
	"encoding/binary"
	"errors"
	"fmt"
)

//go:generate ./purgatory/build.sh

// purgatoryBin is purgatory/purgatory.S assembled; see that file for what
// it does and why.
//
//go:embed purgatory/purgatory.bin
var purgatoryBin []byte

// Offsets in the purgatory's parameter block, relative to its magic.
const (
	purgMagic     = "KHIBPURG"
	purgEntry     = 0x08
	purgBootParam = 0x10
	purgHexDst    = 0x18
	purgJumpBack  = 0x20
	purgCopies    = 0x28
	purgMaxCopies = 4
)

// Copy is a memory range the purgatory copies before entering the kernel.
type Copy struct{ Src, Dst, Len uint64 }

// Purgatory holds the parameters patched into the purgatory blob.
type Purgatory struct {
	Entry      uint64 // the kernel's 64-bit entry point
	BootParams uint64 // physical address of boot_params
	HexDst     uint64 // where to write the jump-back entry as 16 hex digits; 0: nowhere
	Copies     []Copy
}

// Build returns the purgatory code with its parameters filled in.
func (p Purgatory) Build() ([]byte, error) {
	if len(p.Copies) > purgMaxCopies {
		return nil, fmt.Errorf("purgatory: %d copies, at most %d", len(p.Copies), purgMaxCopies)
	}
	blob := bytes.Clone(purgatoryBin)
	at := bytes.Index(blob, []byte(purgMagic))
	if at < 0 || at+purgCopies+24*purgMaxCopies > len(blob) {
		return nil, errors.New("purgatory: parameter block not found in the embedded blob")
	}
	le := binary.LittleEndian
	le.PutUint64(blob[at+purgEntry:], p.Entry)
	le.PutUint64(blob[at+purgBootParam:], p.BootParams)
	le.PutUint64(blob[at+purgHexDst:], p.HexDst)
	for i, c := range p.Copies {
		o := at + purgCopies + 24*i
		le.PutUint64(blob[o:], c.Src)
		le.PutUint64(blob[o+8:], c.Dst)
		le.PutUint64(blob[o+16:], c.Len)
	}
	return blob, nil
}
