package kexec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// fakeBzImage builds the smallest image ParseBzImage accepts: a boot
// sector, a setup header and a protected-mode part of payload bytes.
func fakeBzImage(payload int) []byte {
	const setupSects = 4
	b := make([]byte, (setupSects+1)*512+payload)
	le := binary.LittleEndian
	b[offSetupSects] = setupSects
	le.PutUint16(b[offBootFlag:], 0xaa55)
	b[offJump] = 0xeb
	b[offJump+1] = 0x6a // header ends at 0x26c
	le.PutUint32(b[offHeaderMagic:], headerMagic)
	le.PutUint16(b[offVersion:], 0x020f)
	le.PutUint32(b[offKernelAlignment:], 0x200000)
	b[offRelocatable] = 1
	le.PutUint16(b[offXLoadFlags:], xlfKernel64|xlfCanBeAbove4)
	le.PutUint32(b[offCmdlineSize:], 2047)
	le.PutUint32(b[offInitSize:], uint32(payload)*4)
	le.PutUint32(b[offInitrdAddrMax:], 0x7fffffff)
	le.PutUint16(b[offKernelVersion:], 0x300)
	copy(b[0x500:], "6.12.117 (test@host) #1 SMP\x00")
	for i := (setupSects + 1) * 512; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

func TestParseBzImage(t *testing.T) {
	good := fakeBzImage(8192)
	k, err := ParseBzImage(bytes.NewReader(good), int64(len(good)))
	if err != nil {
		t.Fatalf("ParseBzImage: %v", err)
	}
	if k.Release() != "6.12.117" || k.Protocol != 0x020f || len(k.Kernel) != 8192 || len(k.Setup) != 5*512 {
		t.Fatalf("parsed %+v", k)
	}
	if h := k.setupHeader(); len(h) != 0x26c-offSetupSects {
		t.Fatalf("setup header is %d bytes, want %d", len(h), 0x26c-offSetupSects)
	}

	mutate := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	le := binary.LittleEndian
	tests := []struct {
		name string
		img  []byte
		want string
	}{
		{"empty", nil, "too small"},
		{"text file", []byte(strings.Repeat("root:x:0:0:root:/root:/bin/sh\n", 100)), "boot flag"},
		{"no HdrS", mutate(func(b []byte) { b[offHeaderMagic] = 'X' }), "HdrS"},
		{"old protocol", mutate(func(b []byte) { le.PutUint16(b[offVersion:], 0x0204) }), "too old"},
		{"32-bit only", mutate(func(b []byte) { le.PutUint16(b[offXLoadFlags:], 0) }), "64-bit entry"},
		{"not relocatable", mutate(func(b []byte) { b[offRelocatable] = 0 }), "relocatable"},
		{"odd alignment", mutate(func(b []byte) { le.PutUint32(b[offKernelAlignment:], 3) }), "power of two"},
		{"setup past end", mutate(func(b []byte) { b[offSetupSects] = 60 }), "past the end"},
		{"init_size too small", mutate(func(b []byte) { le.PutUint32(b[offInitSize:], 10) }), "init_size"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseBzImage(bytes.NewReader(tc.img), int64(len(tc.img)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if !errors.Is(err, ErrNotBzImage) {
				t.Fatalf("error %v does not match ErrNotBzImage", err)
			}
		})
	}
}

// TestParseBuiltKernel checks the parser against the kernel khib builds,
// when it has been built on this machine.
func TestParseBuiltKernel(t *testing.T) {
	out, err := exec.Command("../../kernel/build.sh", "--path").Output()
	if err != nil {
		t.Skipf("kernel/build.sh --path: %v", err)
	}
	path := strings.TrimSpace(string(out))
	b, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("khib's kernel is not built yet (%v); run make kernel", err)
	}
	k, err := ParseBzImage(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !strings.HasPrefix(k.Release(), "6.12") || k.InitSize < uint32(len(k.Kernel)) || k.CmdlineSize < 255 {
		t.Fatalf("%s parsed as %q, init_size %d, cmdline_size %d", path, k.Version, k.InitSize, k.CmdlineSize)
	}
}
