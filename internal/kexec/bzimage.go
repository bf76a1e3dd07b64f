// Package kexec loads kernels for kexec-jumps and issues the kexec_load,
// reboot and /dev/mem calls that khib needs; it is the only package that
// does.
package kexec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Offsets into a bzImage's first sector and setup header
// (Documentation/arch/x86/boot.rst, arch/x86/include/uapi/asm/bootparam.h).
const (
	offSetupSects      = 0x1f1
	offBootFlag        = 0x1fe
	offJump            = 0x200
	offHeaderMagic     = 0x202
	offVersion         = 0x206
	offKernelVersion   = 0x20e
	offTypeOfLoader    = 0x210
	offLoadFlags       = 0x211
	offRamdiskImage    = 0x218
	offRamdiskSize     = 0x21c
	offCmdLinePtr      = 0x228
	offInitrdAddrMax   = 0x22c
	offKernelAlignment = 0x230
	offRelocatable     = 0x234
	offXLoadFlags      = 0x236
	offCmdlineSize     = 0x238
	offPrefAddress     = 0x258
	offInitSize        = 0x260

	headerMagic = 0x53726448 // "HdrS"

	// xloadflags bits.
	xlfKernel64    = 1 << 0 // has the 64-bit entry at load address + 0x200
	xlfCanBeAbove4 = 1 << 1

	// The protocol version that introduced init_size and pref_address.
	minProtocol = 0x020a

	maxSetupSects = 64 // the real-mode setup code is at most 32 KiB
	maxKernelSize = 512 << 20
)

// ErrNotBzImage means the file does not have a bzImage's boot sector and
// setup header.
var ErrNotBzImage = errors.New("not a bzImage")

// BzImage is a parsed x86 Linux kernel image in the bzImage format.
type BzImage struct {
	// Setup is the real-mode part: the boot sector and setup code. Its
	// setup header is what a boot loader copies into boot_params.
	Setup []byte
	// Kernel is the protected-mode part, loaded at the kernel's load
	// address. It holds the compressed kernel and its decompressor.
	Kernel []byte

	Protocol        uint16 // boot protocol version, e.g. 0x020f
	Version         string // the kernel's version string
	KernelAlignment uint32 // required alignment of the load address
	Relocatable     bool
	XLoadFlags      uint16
	CmdlineSize     uint32 // maximum command line length, without the NUL
	InitSize        uint32 // memory the kernel needs from its load address
	PrefAddress     uint64
	InitrdAddrMax   uint32
}

// FormatError reports where in a bzImage a value was wrong.
type FormatError struct {
	Off int64
	Msg string
	Val any
}

func (e *FormatError) Error() string {
	msg := fmt.Sprintf("not a bzImage: %s at offset %#x", e.Msg, e.Off)
	if e.Val != nil {
		msg += fmt.Sprintf(": %v", e.Val)
	}
	return msg
}

func (e *FormatError) Unwrap() error { return ErrNotBzImage }

// ParseBzImage reads a bzImage of the given size from r. It refuses
// images that cannot be entered through the 64-bit boot protocol, which is
// the only way khib enters a kernel.
func ParseBzImage(r io.ReaderAt, size int64) (*BzImage, error) {
	if size < 1024 {
		return nil, &FormatError{0, "file too small for a boot sector and setup header", size}
	}
	if size > maxKernelSize {
		return nil, &FormatError{0, "file too large for a kernel", size}
	}
	hdr := make([]byte, 1024)
	if _, err := r.ReadAt(hdr, 0); err != nil {
		return nil, fmt.Errorf("reading bzImage header: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(hdr[offBootFlag:]) != 0xaa55 {
		return nil, &FormatError{offBootFlag, "missing boot flag 0xaa55", fmt.Sprintf("%#04x", le.Uint16(hdr[offBootFlag:]))}
	}
	if le.Uint32(hdr[offHeaderMagic:]) != headerMagic {
		return nil, &FormatError{offHeaderMagic, "missing setup header magic \"HdrS\"", nil}
	}
	b := &BzImage{
		Protocol:        le.Uint16(hdr[offVersion:]),
		KernelAlignment: le.Uint32(hdr[offKernelAlignment:]),
		Relocatable:     hdr[offRelocatable] != 0,
		XLoadFlags:      le.Uint16(hdr[offXLoadFlags:]),
		CmdlineSize:     le.Uint32(hdr[offCmdlineSize:]),
		InitSize:        le.Uint32(hdr[offInitSize:]),
		PrefAddress:     le.Uint64(hdr[offPrefAddress:]),
		InitrdAddrMax:   le.Uint32(hdr[offInitrdAddrMax:]),
	}
	if b.Protocol < minProtocol {
		return nil, &FormatError{offVersion, "boot protocol too old (need 2.10 or later)", fmt.Sprintf("%#x", b.Protocol)}
	}
	if b.XLoadFlags&xlfKernel64 == 0 {
		return nil, &FormatError{offXLoadFlags, "kernel has no 64-bit entry point", fmt.Sprintf("xloadflags %#x", b.XLoadFlags)}
	}
	if !b.Relocatable {
		return nil, &FormatError{offRelocatable, "kernel is not relocatable (CONFIG_RELOCATABLE)", nil}
	}
	if b.KernelAlignment == 0 || b.KernelAlignment&(b.KernelAlignment-1) != 0 {
		return nil, &FormatError{offKernelAlignment, "kernel_alignment is not a power of two", b.KernelAlignment}
	}
	setupSects := int64(hdr[offSetupSects])
	if setupSects == 0 {
		setupSects = 4 // boot.rst: "if this field is 0, the real value is 4"
	}
	if setupSects > maxSetupSects {
		return nil, &FormatError{offSetupSects, "setup_sects too large", setupSects}
	}
	setupLen := (setupSects + 1) * 512
	if setupLen >= size {
		return nil, &FormatError{offSetupSects, "setup code extends past the end of the file", setupLen}
	}
	kernLen := size - setupLen
	if int64(b.InitSize) < kernLen {
		return nil, &FormatError{offInitSize, "init_size smaller than the kernel itself", b.InitSize}
	}
	b.Setup = make([]byte, setupLen)
	if _, err := r.ReadAt(b.Setup, 0); err != nil {
		return nil, fmt.Errorf("reading bzImage setup code: %w", err)
	}
	b.Kernel = make([]byte, kernLen)
	if _, err := r.ReadAt(b.Kernel, setupLen); err != nil {
		return nil, fmt.Errorf("reading bzImage kernel: %w", err)
	}
	// kernel_version points 0x200 before the NUL-terminated version
	// string, which lives in the setup code.
	if kv := int64(le.Uint16(hdr[offKernelVersion:])); kv != 0 && kv+0x200 < setupLen {
		s := b.Setup[kv+0x200:]
		if i := bytes.IndexByte(s, 0); i >= 0 {
			s = s[:i]
		}
		if len(s) > 256 {
			s = s[:256]
		}
		b.Version = string(s)
	}
	return b, nil
}

// Release returns the first word of the version string, which is what
// `uname -r` prints for that kernel.
func (b *BzImage) Release() string {
	if i := bytes.IndexByte([]byte(b.Version), ' '); i >= 0 {
		return b.Version[:i]
	}
	return b.Version
}

// setupHeader returns the bytes of the setup header that a boot loader
// copies into boot_params: from 0x1f1 to the end given by the jump at 0x200.
func (b *BzImage) setupHeader() []byte {
	end := offJump + 2 + int(b.Setup[offJump+1])
	if end > len(b.Setup) || end < offHeaderMagic+4 {
		end = offInitSize + 4
	}
	return b.Setup[offSetupSects:end]
}
