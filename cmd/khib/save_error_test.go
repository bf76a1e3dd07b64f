package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/image"
)

// Messages as the helper kernel logs them when QEMU's blkdebug fails a
// write (from a hibernate-write-error console).
var kmsgWriteError = []string{
	"virtio_blk virtio0: [vda] 2097152 512-byte logical blocks (1.07 GB/1.00 GiB)",
	"I/O error, dev vda, sector 130952 op 0x1:(WRITE) flags 0x100000 phys_seg 16 prio class 2",
	"Buffer I/O error on dev vda, logical block 16369, lost async page write",
	"I/O error, dev vda, sector 131200 op 0x1:(WRITE) flags 0x100000 phys_seg 16 prio class 2",
}

func TestFirstWriteError(t *testing.T) {
	for _, tc := range []struct {
		name       string
		msgs       []string
		disk       string
		wantKind   string
		wantSector uint64
		wantOK     bool
	}{
		{"first of several", kmsgWriteError, "vda", "I/O", 130952, true},
		{"other disk", kmsgWriteError, "vdb", "", 0, false},
		{"reads do not count", []string{"I/O error, dev vda, sector 0 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2"}, "vda", "", 0, false},
		{"out of space", []string{"critical space allocation error, dev sdb, sector 2048 op 0x1:(WRITE) flags 0x0 phys_seg 1 prio class 0"}, "sdb", "critical space allocation", 2048, true},
		{"prefix of a name", []string{"I/O error, dev vda1, sector 8 op 0x1:(WRITE) flags 0x0"}, "vda", "", 0, false},
		{"nothing", nil, "vda", "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kind, sector, ok := firstWriteError(tc.msgs, tc.disk)
			if kind != tc.wantKind || sector != tc.wantSector || ok != tc.wantOK {
				t.Errorf("got %q %d %v, want %q %d %v", kind, sector, ok, tc.wantKind, tc.wantSector, tc.wantOK)
			}
		})
	}
}

func TestDescribeDeviceFailure(t *testing.T) {
	syncErr := fmt.Errorf("image: sync: %w", &fs.PathError{Op: "sync", Path: "/dev/vda", Err: unix.EIO})
	for _, tc := range []struct {
		name  string
		dev   blockDev
		errno unix.Errno
		msgs  []string
		want  []string
		not   []string
	}{
		{
			name: "failed write, offset from the log", dev: blockDev{Path: "/dev/vda", Size: 1 << 30, Disk: "vda"}, errno: unix.EIO, msgs: kmsgWriteError,
			want: []string{"save to /dev/vda failed: the device failed a write (input/output error) at 63.9 MiB of the 1024 MiB it reports",
				"the kernel's I/O error at sector 130952 of vda", "smaller than it claims", "was removed", "choose another target",
				"no usable image was written (image: sync: sync /dev/vda: input/output error)"},
		},
		{
			name: "no log", dev: blockDev{Path: "/dev/vda", Size: 1 << 30, Disk: "vda"}, errno: unix.EIO,
			want: []string{"the device failed a write (input/output error): it is failing"}, not: []string{" at "},
		},
		{
			name: "partition", dev: blockDev{Path: "/dev/vda3", Size: 512 << 20, Disk: "vda", Start: 2048}, errno: unix.EIO, msgs: kmsgWriteError,
			want: []string{"save to /dev/vda3 failed", "at 62.9 MiB of the 512 MiB it reports", "sector 130952 of vda"},
		},
		{
			name: "full", dev: blockDev{Path: "/dev/sdb", Size: 256 << 20, Disk: "sdb"}, errno: unix.ENOSPC,
			msgs: []string{"critical space allocation error, dev sdb, sector 32768 op 0x1:(WRITE) flags 0x0"},
			want: []string{"the device is full (no space left on device) at 16.0 MiB of the 256 MiB it reports", "holds less than it claims", "holds the whole image"},
		},
		{
			name: "unplugged", dev: blockDev{Path: "/dev/sdc", Size: 8 << 30, Disk: "sdc", Gone: true}, errno: unix.ENODEV,
			want: []string{"the device disappeared during the save (no such device); reconnect it"},
		},
		{
			name: "read-only", dev: blockDev{Path: "/dev/mmcblk0", Size: 8 << 30, Disk: "mmcblk0"}, errno: unix.EROFS,
			want: []string{"turned read-only (read-only file system)"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := describeDeviceFailure(tc.dev, tc.errno, syncErr, tc.msgs)
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("%q lacks %q", got, w)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(got, n) {
					t.Errorf("%q has %q", got, n)
				}
			}
			if strings.Contains(got, "\n") {
				t.Errorf("more than one line: %q", got)
			}
		})
	}
}

// TestSaveFailureKeepsOtherErrors: only device errors are reworded.
func TestSaveFailureKeepsOtherErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"too small", &image.TooSmallError{Capacity: 40 << 20, Need: 300 << 20, Estimated: true}, "save to /dev/vda: image: "},
		{"not a device errno", fmt.Errorf("mapping A's memory at 0x1000: %w", unix.EINVAL), "save to /dev/vda: mapping A's memory at 0x1000: invalid argument"},
		{"device errno", fmt.Errorf("image: writing data at offset 0x4000000: %w", unix.EIO), "save to /dev/vda failed: the device "}, // what follows depends on this host's sysfs
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := saveFailure("/dev/vda", 1<<30, tc.err); !strings.HasPrefix(got, tc.want) {
				t.Errorf("got %q, want it to start with %q", got, tc.want)
			}
		})
	}
}

func TestSysfsBlockDev(t *testing.T) {
	sys := t.TempDir()
	// sysfs: class/block/NAME links into devices/.../block/DISK[/PART].
	devs := filepath.Join(sys, "devices", "pci0000:00", "block")
	mk := func(rel string, files map[string]string) {
		dir := filepath.Join(devs, rel)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for n, v := range files {
			if err := os.WriteFile(filepath.Join(dir, n), []byte(v), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		class := filepath.Join(sys, "class", "block")
		os.MkdirAll(class, 0o755)
		if err := os.Symlink(dir, filepath.Join(class, filepath.Base(rel))); err != nil {
			t.Fatal(err)
		}
	}
	mk("vda", map[string]string{"size": "2097152\n"})
	mk("vda/vda3", map[string]string{"partition": "3\n", "start": "2048\n"})
	for _, tc := range []struct {
		path string
		want blockDev
	}{
		{"/dev/vda", blockDev{Path: "/dev/vda", Size: 1, Disk: "vda"}},
		{"/dev/vda3", blockDev{Path: "/dev/vda3", Size: 1, Disk: "vda", Start: 2048}},
		{"/dev/sdz", blockDev{Path: "/dev/sdz", Size: 1, Disk: "sdz", Gone: true}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			if got := sysfsBlockDev(sys, tc.path, 1); got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestKmsg(t *testing.T) {
	for _, tc := range []struct{ rec, want string }{
		{"3,1234,5678901,-;I/O error, dev vda, sector 8 op 0x1:(WRITE)\n", "I/O error, dev vda, sector 8 op 0x1:(WRITE)"},
		{"6,1,0,-;virtio_blk virtio0: [vda]\n SUBSYSTEM=virtio\n DEVICE=+virtio:virtio0\n", "virtio_blk virtio0: [vda]"},
		{"no prefix", "no prefix"},
	} {
		if got := kmsgText(tc.rec); got != tc.want {
			t.Errorf("kmsgText(%q) = %q, want %q", tc.rec, got, tc.want)
		}
	}
	if _, err := readKmsg(filepath.Join(t.TempDir(), "none")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing kmsg: %v", err)
	}
	// The real log, where this test may read it.
	msgs, err := readKmsg("/dev/kmsg")
	if err != nil {
		t.Skipf("no readable /dev/kmsg here: %v", err)
	}
	for _, m := range msgs {
		if strings.Contains(m, "\n") {
			t.Fatalf("message with a newline: %q", m)
		}
	}
	t.Logf("%d kernel messages", len(msgs))
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512M": 512 << 20, "4G": 4 << 30, "64K": 64 << 10, "1048576": 1 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "G", "-1M", "1.5G", "9999999999G", "12T"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}
