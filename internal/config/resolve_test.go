package config

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf16"
)

var testUUID = []byte{0x0b, 0x8e, 0x2b, 0x52, 0x1f, 0x7a, 0x4b, 0x7e, 0x9c, 0x59, 0x2e, 0x4d, 0x3c, 0x0a, 0x9f, 0x11}

const testUUIDString = "0b8e2b52-1f7a-4b7e-9c59-2e4d3c0a9f11"

func ext4Image(uuid []byte, label string) []byte {
	b := make([]byte, 8192)
	binary.LittleEndian.PutUint16(b[1024+0x38:], 0xEF53)
	copy(b[1024+0x68:], uuid)
	copy(b[1024+0x78:1024+0x88], label)
	return b
}

func swapImage(uuid []byte, label string) []byte {
	b := make([]byte, 8192)
	copy(b[4096-10:], "SWAPSPACE2")
	copy(b[1024+12:], uuid)
	copy(b[1024+28:1024+44], label)
	return b
}

func xfsImage(uuid []byte, label string) []byte {
	b := make([]byte, 4096)
	copy(b, "XFSB")
	copy(b[32:], uuid)
	copy(b[108:120], label)
	return b
}

func btrfsImage(uuid []byte, label string) []byte {
	b := make([]byte, probeLen)
	copy(b[0x10040:], "_BHRfS_M")
	copy(b[0x10020:], uuid)
	copy(b[0x1012b:], label)
	return b
}

func fat32Image(id uint32, label string) []byte {
	b := make([]byte, 4096)
	copy(b[0x52:], "FAT32   ")
	binary.LittleEndian.PutUint32(b[0x43:], id)
	copy(b[0x47:0x47+11], label+strings.Repeat(" ", 11-len(label)))
	b[510], b[511] = 0x55, 0xAA
	return b
}

func mbrDisk(sig uint32) []byte {
	b := make([]byte, 4096)
	binary.LittleEndian.PutUint32(b[440:], sig)
	b[446+4] = 0x83
	b[510], b[511] = 0x55, 0xAA
	return b
}

// gptDisk has one entry per GUID (16 bytes, on-disk order) and name.
func gptDisk(sector int, guids [][]byte, names []string) []byte {
	b := make([]byte, sector*40)
	b[510], b[511] = 0x55, 0xAA
	b[446+4] = 0xEE
	h := b[sector:]
	copy(h, "EFI PART")
	le := binary.LittleEndian
	le.PutUint64(h[72:], 2)
	le.PutUint32(h[80:], 128)
	le.PutUint32(h[84:], 128)
	for i, g := range guids {
		e := b[2*sector+128*i:]
		e[0] = 0xaf // any non-zero type GUID
		copy(e[16:32], g)
		for j, c := range utf16.Encode([]rune(names[i])) {
			le.PutUint16(e[56+2*j:], c)
		}
	}
	return b
}

// fakeDev describes a block device of the fake root.
type fakeDev struct {
	name, disk string // disk: "" for a whole disk
	part       string // partition number
	content    []byte
	size       string // /sys size; "" means 1000
	sector     string // logical_block_size of a disk
}

func fakeRoot(t *testing.T, devs ...fakeDev) string {
	t.Helper()
	root := t.TempDir()
	write := func(p string, b []byte) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(root, "sys/class/block"), 0o755)
	for _, d := range devs {
		rel := filepath.Join("devices/virtual/block", d.name)
		if d.disk != "" {
			rel = filepath.Join("devices/virtual/block", d.disk, d.name)
			write(filepath.Join(root, "sys", rel, "partition"), []byte(d.part+"\n"))
		}
		size := d.size
		if size == "" {
			size = "1000"
		}
		write(filepath.Join(root, "sys", rel, "size"), []byte(size+"\n"))
		if d.sector != "" {
			write(filepath.Join(root, "sys", rel, "queue/logical_block_size"), []byte(d.sector+"\n"))
		}
		if err := os.Symlink(filepath.Join("../..", rel), filepath.Join(root, "sys/class/block", d.name)); err != nil {
			t.Fatal(err)
		}
		write(filepath.Join(root, "dev", d.name), d.content)
	}
	return root
}

func TestResolve(t *testing.T) {
	gpt1 := []byte{0x78, 0x56, 0x34, 0x12, 0x34, 0x12, 0x78, 0x56, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78}
	gpt2 := bytes.Repeat([]byte{0x11}, 16)
	root := fakeRoot(t,
		fakeDev{name: "sda", content: mbrDisk(0x1234abcd)},
		fakeDev{name: "sda1", disk: "sda", part: "1", content: ext4Image(testUUID, "root")},
		fakeDev{name: "sda3", disk: "sda", part: "3", content: make([]byte, 4096)},
		fakeDev{name: "sda5", disk: "sda", part: "5", content: swapImage(bytes.Repeat([]byte{0x22}, 16), "swap")},
		fakeDev{name: "nvme0n1", content: gptDisk(4096, [][]byte{gpt1, gpt2}, []string{"EFI", "khib image"}), sector: "4096"},
		fakeDev{name: "nvme0n1p1", disk: "nvme0n1", part: "1", content: fat32Image(0x1a2b3c4d, "EFI")},
		fakeDev{name: "nvme0n1p2", disk: "nvme0n1", part: "2", content: xfsImage(bytes.Repeat([]byte{0x33}, 16), "data")},
		fakeDev{name: "vdb", content: btrfsImage(bytes.Repeat([]byte{0x44}, 16), "pool")},
		fakeDev{name: "sr0", size: "0"},
		fakeDev{name: "vdc", content: ext4Image(bytes.Repeat([]byte{0x55}, 16), "twin")},
		fakeDev{name: "vdd", content: ext4Image(bytes.Repeat([]byte{0x66}, 16), "twin")},
	)
	dev := func(n string) string { return filepath.Join(root, "dev", n) }
	os.MkdirAll(filepath.Join(root, "dev/disk/by-id"), 0o755)
	os.Symlink("../../sda3", filepath.Join(root, "dev/disk/by-id/ata-khib-part3"))
	os.MkdirAll(filepath.Join(root, "dev/disk/by-partuuid"), 0o755)
	os.Symlink("../../vdb", filepath.Join(root, "dev/disk/by-partuuid/cafe0000-01"))

	for _, tc := range []struct{ spec, want, err string }{
		{"UUID=" + testUUIDString, dev("sda1"), ""},
		{"UUID=" + strings.ToUpper(testUUIDString), dev("sda1"), ""},
		{"LABEL=root", dev("sda1"), ""},
		{"LABEL=ROOT", "", "no block device has LABEL=ROOT"},
		{"PARTUUID=1234abcd-03", dev("sda3"), ""},
		{"PARTUUID=1234ABCD-05", dev("sda5"), ""},
		{"UUID=22222222-2222-2222-2222-222222222222", dev("sda5"), ""},
		{"PARTUUID=12345678-1234-5678-9abc-def012345678", dev("nvme0n1p1"), ""},
		{"PARTUUID=11111111-1111-1111-1111-111111111111", dev("nvme0n1p2"), ""},
		{"PARTLABEL=khib image", dev("nvme0n1p2"), ""},
		{"UUID=1A2B-3C4D", dev("nvme0n1p1"), ""},
		{"LABEL=EFI", dev("nvme0n1p1"), ""},
		{"UUID=33333333-3333-3333-3333-333333333333", dev("nvme0n1p2"), ""},
		{"LABEL=pool", dev("vdb"), ""},
		{"UUID=44444444-4444-4444-4444-444444444444", dev("vdb"), ""},
		{"PARTUUID=cafe0000-01", dev("vdb"), ""}, // udev's link wins
		{"/dev/disk/by-id/ata-khib-part3", dev("sda3"), ""},
		{"/dev/sda3", dev("sda3"), ""},
		{"/dev/sdz", "", "no such device"},
		{"LABEL=twin", "", "several devices match"},
		{"PARTUUID=1234abcd-07", "", "no block device has PARTUUID=1234abcd-07 (looked at: nvme0n1, nvme0n1p1"},
		{"sda3", "", "neither"},
	} {
		got, err := Resolve(root, tc.spec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Resolve(%q) = %q, %v; want an error with %q", tc.spec, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", tc.spec, got, err, tc.want)
		}
	}
	if _, err := Resolve(root, "LABEL=nothing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a missing label: %v, want ErrNotFound", err)
	}
	if _, err := Resolve(root, "LABEL=twin"); !errors.Is(err, ErrAmbiguous) {
		t.Errorf("two labels: %v, want ErrAmbiguous", err)
	}
}

func TestResolveWait(t *testing.T) {
	root := fakeRoot(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(300 * time.Millisecond)
		os.MkdirAll(filepath.Join(root, "dev"), 0o755)
		os.WriteFile(filepath.Join(root, "dev/late"), nil, 0o644)
	}()
	p, err := ResolveWait(root, "/dev/late", 5*time.Second)
	<-done
	if err != nil || p != filepath.Join(root, "dev/late") {
		t.Errorf("ResolveWait = %q, %v", p, err)
	}
	t0 := time.Now()
	_, err = ResolveWait(root, "LABEL=never", 600*time.Millisecond)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "waited") || time.Since(t0) < 500*time.Millisecond {
		t.Errorf("ResolveWait for nothing: %v after %v", err, time.Since(t0))
	}
	t0 = time.Now()
	if _, err := ResolveWait(root, "bogus", time.Minute); err == nil || time.Since(t0) > time.Second {
		t.Errorf("a bad spec must fail at once: %v", err)
	}
}

func TestProbeFSShort(t *testing.T) {
	if _, err := ProbeFS(bytes.NewReader(make([]byte, 100))); err == nil {
		t.Error("a 100-byte device probed without error")
	}
	if _, err := ProbeFS(bytes.NewReader(make([]byte, 1<<17))); !errors.Is(err, ErrUnknownFS) {
		t.Errorf("zeros: %v, want ErrUnknownFS", err)
	}
}

func TestProbePartitionLimits(t *testing.T) {
	d := gptDisk(512, [][]byte{testUUID}, []string{"a"})
	if _, err := ProbePartition(bytes.NewReader(d), 512, 2); !errors.Is(err, ErrNoTable) {
		t.Errorf("unused GPT entry: %v", err)
	}
	if _, err := ProbePartition(bytes.NewReader(d), 512, 129); !errors.Is(err, ErrNoTable) {
		t.Errorf("entry past the array: %v", err)
	}
	binary.LittleEndian.PutUint32(d[512+80:], 1<<30)
	if _, err := ProbePartition(bytes.NewReader(d), 512, 1); !errors.Is(err, ErrNoTable) {
		t.Errorf("a huge entry count: %v", err)
	}
	if _, err := ProbePartition(bytes.NewReader(make([]byte, 4096)), 512, 1); !errors.Is(err, ErrNoTable) {
		t.Errorf("no table: %v", err)
	}
}

func TestPartUUID(t *testing.T) {
	root := fakeRoot(t,
		fakeDev{name: "sda", content: mbrDisk(0x1234abcd)},
		fakeDev{name: "sda2", disk: "sda", part: "2", content: ext4Image(testUUID, "x")},
	)
	if got, err := PartUUID(root, filepath.Join(root, "dev/sda2")); err != nil || got != "1234abcd-02" {
		t.Errorf("PartUUID(sda2) = %q, %v", got, err)
	}
	if _, err := PartUUID(root, filepath.Join(root, "dev/sda")); !errors.Is(err, ErrNoTable) {
		t.Errorf("PartUUID(sda) = %v, want ErrNoTable", err)
	}
	if _, err := PartUUID(root, "/dev/vdq"); !errors.Is(err, ErrNotFound) {
		t.Errorf("PartUUID(vdq) = %v, want ErrNotFound", err)
	}
}

// TestProbeHeldSwap: a swap area that holds a khib image (its signature
// changed so that no swapon uses it) is still found by its UUID.
func TestProbeHeldSwap(t *testing.T) {
	b := swapImage(testUUID, "swap")
	copy(b[4096-10:], heldSwapMagic)
	fs, err := ProbeFS(bytes.NewReader(b))
	if err != nil || fs.Type != "swap" || fs.UUID != testUUIDString {
		t.Fatalf("ProbeFS = %+v, %v; want swap %s", fs, err, testUUIDString)
	}
}
