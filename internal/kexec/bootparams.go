package kexec

import (
	"encoding/binary"
	"fmt"
)

// E820 memory types (arch/x86/include/asm/e820/types.h).
const (
	E820RAM      = 1
	E820Reserved = 2
	E820ACPI     = 3
	E820NVS      = 4
	E820Unusable = 5
	E820PMEM     = 7
)

// E820Entry is one entry of the BIOS memory map handed to a kernel.
type E820Entry struct {
	Addr, Size uint64
	Type       uint32
}

const (
	bootParamsSize  = 4096
	offAcpiRsdpAddr = 0x070
	offExtRamdisk   = 0x0c0
	offExtRamdiskSz = 0x0c4
	offExtCmdLine   = 0x0c8
	offE820Entries  = 0x1e8
	offE820Table    = 0x2d0
	maxE820Zeropage = 128

	loaderUndefined    = 0xff // type_of_loader for a loader without an assigned ID
	loadFlagLoadedHigh = 0x01
	loadFlagKeepSegs   = 0x40
	loadFlagCanUseHeap = 0x80
)

// BootParams builds the "zero page" for entering b through the 64-bit
// boot protocol: a clean page, the image's setup header, and what the
// loader fills in (command line, initrd, memory map).
func (b *BzImage) BootParams(cmdlineAddr uint64, initrdAddr, initrdSize uint64, e820 []E820Entry) ([]byte, error) {
	if len(e820) > maxE820Zeropage {
		return nil, fmt.Errorf("boot_params: %d e820 entries, at most %d fit", len(e820), maxE820Zeropage)
	}
	bp := make([]byte, bootParamsSize)
	// Only the setup header is copied, into an otherwise zero page, so
	// that the sentinel at 0x1ef stays 0 and the kernel trusts the rest.
	copy(bp[offSetupSects:], b.setupHeader())
	le := binary.LittleEndian
	bp[offTypeOfLoader] = loaderUndefined
	// KEEP_SEGMENTS is obsolete since 5.8; LOADED_HIGH is what a 64-bit
	// entry implies. CAN_USE_HEAP does not apply to the 64-bit entry.
	bp[offLoadFlags] = (bp[offLoadFlags] | loadFlagLoadedHigh) &^ (loadFlagKeepSegs | loadFlagCanUseHeap)
	le.PutUint32(bp[offCmdLinePtr:], uint32(cmdlineAddr))
	le.PutUint32(bp[offExtCmdLine:], uint32(cmdlineAddr>>32))
	le.PutUint32(bp[offRamdiskImage:], uint32(initrdAddr))
	le.PutUint32(bp[offExtRamdisk:], uint32(initrdAddr>>32))
	le.PutUint32(bp[offRamdiskSize:], uint32(initrdSize))
	le.PutUint32(bp[offExtRamdiskSz:], uint32(initrdSize>>32))
	bp[offE820Entries] = byte(len(e820))
	for i, e := range e820 {
		o := offE820Table + 20*i
		le.PutUint64(bp[o:], e.Addr)
		le.PutUint64(bp[o+8:], e.Size)
		le.PutUint32(bp[o+16:], e.Type)
	}
	return bp, nil
}
