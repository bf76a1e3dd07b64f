package kexec

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
)

// qemuFirmware is the e820 map SeaBIOS gives a 1 GiB q35 guest.
var qemuFirmware = []E820Entry{
	{0, 0x9fc00, E820RAM},
	{0x9fc00, 0x400, E820Reserved},
	{0xf0000, 0x10000, E820Reserved},
	{0x100000, 0x3fee0000, E820RAM},
	{0x3ffe0000, 0x20000, E820Reserved},
	{0xb0000000, 0x10000000, E820Reserved},
	{0xfed1c000, 0x4000, E820Reserved},
	{0xfeffc000, 0x4000, E820Reserved},
	{0xfffc0000, 0x40000, E820Reserved},
}

func testKernel(t *testing.T) *BzImage {
	t.Helper()
	img := fakeBzImage(3 << 20)
	k, err := ParseBzImage(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestPlanHelper(t *testing.T) {
	k := testKernel(t)
	r := Range{0x25000000, 0x35000000}
	initrd := bytes.Repeat([]byte{7}, 5<<20+123)
	p, err := PlanHelper(HelperSpec{Kernel: k, Initrd: initrd, Cmdline: "console=ttyS0 khib.role=helper",
		Region: r, LowWindow: DefaultLowWindow, ReserveTop: DefaultReserveTop, Firmware: qemuFirmware})
	if err != nil {
		t.Fatal(err)
	}
	// Every segment lies inside the helper's RAM, page aligned, with no overlap.
	for i, s := range p.Segments {
		if s.Mem < p.HelperRAM.Start || s.Mem+s.Memsz > p.HelperRAM.End {
			t.Errorf("segment %s %#x+%#x outside the helper's RAM %v", s.Name, s.Mem, s.Memsz, p.HelperRAM)
		}
		if s.Mem%PageSize != 0 || s.Memsz%PageSize != 0 || uint64(len(s.Buf)) > s.Memsz {
			t.Errorf("segment %s misaligned", s.Name)
		}
		for _, o := range p.Segments[i+1:] {
			if s.Mem < o.Mem+o.Memsz && o.Mem < s.Mem+s.Memsz {
				t.Errorf("segments %s and %s overlap", s.Name, o.Name)
			}
		}
	}
	if p.Kernel.Start%uint64(k.KernelAlignment) != 0 {
		t.Errorf("kernel at %#x not aligned", p.Kernel.Start)
	}
	if p.Backup.Start < p.HelperRAM.End || p.Backup.End > r.End {
		t.Errorf("backup %v not in the reserved top of R", p.Backup)
	}
	if !strings.HasSuffix(p.Cmdline, jumpBackPlaceholder) {
		t.Errorf("command line %q lacks the jump-back placeholder", p.Cmdline)
	}
	// The boot segment holds boot_params whose pointers lead to the
	// command line and initramfs.
	boot := p.Segments[1]
	bp := boot.Buf[:bootParamsSize]
	le := binary.LittleEndian
	cmd := uint64(le.Uint32(bp[offCmdLinePtr:])) | uint64(le.Uint32(bp[offExtCmdLine:]))<<32
	got := boot.Buf[cmd-boot.Mem:]
	if string(got[:len(p.Cmdline)]) != p.Cmdline || got[len(p.Cmdline)] != 0 {
		t.Errorf("command line at %#x is not NUL-terminated %q", cmd, p.Cmdline)
	}
	if le.Uint32(bp[offRamdiskImage:]) != uint32(p.Initrd.Start) || le.Uint32(bp[offRamdiskSize:]) != uint32(len(initrd)) {
		t.Errorf("initrd fields wrong")
	}
	if bp[0x1ef] != 0 {
		t.Errorf("sentinel set: the kernel would wipe boot_params")
	}
	if p.Entry < boot.Mem || p.Entry >= boot.Mem+boot.Memsz {
		t.Errorf("entry %#x is not in the boot segment", p.Entry)
	}
	// The purgatory's parameters point at the kernel's 64-bit entry and
	// at the 16 zeros of the placeholder.
	purg := boot.Buf[p.Entry-boot.Mem:]
	at := bytes.Index(purg, []byte(purgMagic))
	if at < 0 {
		t.Fatal("no purgatory parameter block")
	}
	if e := le.Uint64(purg[at+purgEntry:]); e != p.Kernel.Start+0x200 {
		t.Errorf("purgatory enters %#x, want %#x", e, p.Kernel.Start+0x200)
	}
	hex := le.Uint64(purg[at+purgHexDst:])
	if s := string(boot.Buf[hex-boot.Mem : hex-boot.Mem+16]); s != strings.Repeat("0", 16) {
		t.Errorf("hex destination holds %q", s)
	}
	c := purg[at+purgCopies:]
	if le.Uint64(c) != DefaultLowWindow.Start || le.Uint64(c[8:]) != p.Backup.Start || le.Uint64(c[16:]) != DefaultLowWindow.Size() {
		t.Errorf("low window copy wrong")
	}
}

func TestHelperE820(t *testing.T) {
	ram := Range{0x25000000, 0x34e00000}
	got := HelperE820(qemuFirmware, DefaultLowWindow, ram)
	var usable []Range
	var total uint64
	for i, e := range got {
		if i > 0 && got[i-1].Addr+got[i-1].Size > e.Addr {
			t.Errorf("entries %d and %d overlap or are unsorted", i-1, i)
		}
		if e.Type == E820RAM {
			usable = append(usable, Range{e.Addr, e.Addr + e.Size})
		}
		if e.Addr < 0x40000000 {
			total += e.Size
		}
	}
	if len(usable) != 2 || usable[0] != DefaultLowWindow || usable[1] != ram {
		t.Errorf("usable RAM %v, want only the low window and %v", usable, ram)
	}
	// Below 1 GiB, the map still covers exactly what the firmware's did.
	var fw uint64
	for _, e := range qemuFirmware {
		if e.Addr < 0x40000000 {
			fw += e.Size
		}
	}
	if total != fw {
		t.Errorf("helper map covers %#x bytes below 1 GiB, firmware %#x", total, fw)
	}
}

func TestPlanHelperRefuses(t *testing.T) {
	k := testKernel(t)
	tests := []struct {
		name string
		spec HelperSpec
		want string
	}{
		{"region too small", HelperSpec{Kernel: k, Region: Range{0x1000000, 0x2000000}, ReserveTop: DefaultReserveTop, LowWindow: DefaultLowWindow}, "needs"},
		{"unaligned region", HelperSpec{Kernel: k, Region: Range{0x1000001, 0x20000000}, ReserveTop: DefaultReserveTop, LowWindow: DefaultLowWindow}, "aligned"},
		{"long command line", HelperSpec{Kernel: k, Region: Range{0x10000000, 0x20000000}, ReserveTop: DefaultReserveTop, LowWindow: DefaultLowWindow,
			Cmdline: strings.Repeat("x", 3000)}, "command line"},
		{"no kernel", HelperSpec{}, "no kernel"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := PlanHelper(tc.spec)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
		})
	}
}

func TestPlanHelperCoreHeaders(t *testing.T) {
	k := testKernel(t)
	r := Range{0x25000000, 0x35000000}
	var gotBackup Range
	p, err := PlanHelper(HelperSpec{Kernel: k, Initrd: make([]byte, 4096), Region: r,
		LowWindow: DefaultLowWindow, ReserveTop: DefaultReserveTop, Firmware: qemuFirmware,
		CoreHeadersFor: func(b Range) ([]byte, error) { gotBackup = b; return bytes.Repeat([]byte{1}, 5000), nil }})
	if err != nil {
		t.Fatal(err)
	}
	if gotBackup != p.Backup {
		t.Errorf("headers built for backup %v, plan has %v", gotBackup, p.Backup)
	}
	// Outside the helper's RAM, after the backup, inside R, and named on
	// the command line.
	if p.Core.Start < p.Backup.End || p.Core.End > r.End || p.Core.Start < p.HelperRAM.End {
		t.Errorf("core headers at %v; helper RAM %v, backup %v, R %v", p.Core, p.HelperRAM, p.Backup, r)
	}
	if !strings.Contains(p.Cmdline, fmt.Sprintf("elfcorehdr=%#x", p.Core.Start)) {
		t.Errorf("command line %q lacks elfcorehdr=%#x", p.Cmdline, p.Core.Start)
	}
	last := p.Segments[len(p.Segments)-1]
	if last.Name != "elfcorehdr" || last.Mem != p.Core.Start || len(last.Buf) != 5000 {
		t.Errorf("last segment %s at %#x, %d bytes", last.Name, last.Mem, len(last.Buf))
	}
	for _, e := range p.E820 {
		if e.Type == E820RAM && e.Addr < p.Core.End && p.Core.Start < e.Addr+e.Size {
			t.Errorf("core headers lie in the helper's RAM %#x+%#x", e.Addr, e.Size)
		}
	}
}
