package target

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeRoot builds /proc and /sys for a machine with disk vda (254:0)
// and its partitions vda1 (254:1), vda2 (254:2), and disk vdb (254:16).
func fakeRoot(t *testing.T, mountinfo, swaps string, holders map[string]string) string {
	t.Helper()
	root := t.TempDir()
	mk := func(p, content string) {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	devs := map[string]string{"vda": "254:0", "vda/vda1": "254:1", "vda/vda2": "254:2", "vdb": "254:16"}
	for path, dev := range devs {
		dir := filepath.Join("sys/devices/virtio/block", path)
		mk(filepath.Join(dir, "dev"), dev+"\n")
		if strings.Contains(path, "/") {
			mk(filepath.Join(dir, "partition"), "1\n")
		}
		os.MkdirAll(filepath.Join(root, dir, "holders"), 0o755)
		link := filepath.Join(root, "sys/dev/block", dev)
		os.MkdirAll(filepath.Dir(link), 0o755)
		if err := os.Symlink(filepath.Join(root, dir), link); err != nil {
			t.Fatal(err)
		}
	}
	for dev, holder := range holders {
		mk(filepath.Join("sys/dev/block", dev, "holders", holder), "")
	}
	mk("proc/self/mountinfo", mountinfo)
	if swaps != "" {
		mk("proc/swaps", swaps)
	}
	return root
}

const baseMounts = `20 1 0:5 / / rw - rootfs rootfs rw
21 20 0:20 / /proc rw - proc proc rw
`

func TestCheckUnused(t *testing.T) {
	vda := &Info{Path: "/dev/vda", Dev: Dev{254, 0}, Disk: Dev{254, 0}}
	vda1 := &Info{Path: "/dev/vda1", Dev: Dev{254, 1}, Disk: Dev{254, 0}}
	vda2 := &Info{Path: "/dev/vda2", Dev: Dev{254, 2}, Disk: Dev{254, 0}}
	vdb := &Info{Path: "/dev/vdb", Dev: Dev{254, 16}, Disk: Dev{254, 16}}
	tests := []struct {
		name    string
		mounts  string
		holders map[string]string
		info    *Info
		want    string // "" for no error
	}{
		{"unused disk", baseMounts, nil, vdb, ""},
		{"mounted disk", baseMounts + "30 20 254:16 / /data rw - ext4 /dev/vdb rw\n", nil, vdb, "mounted on /data"},
		{"mounted partition", baseMounts + "30 20 254:1 / /data rw - ext4 /dev/vda1 rw\n", nil, vda1, "mounted on /data"},
		{"disk with a mounted partition", baseMounts + "30 20 254:1 / /data rw - ext4 /dev/vda1 rw\n", nil, vda, "has a partition mounted"},
		{"sibling partition mounted is fine", baseMounts + "30 20 254:1 / /data rw - ext4 /dev/vda1 rw\n", nil, vda2, ""},
		{"partition of a mounted disk", baseMounts + "30 20 254:0 / /data rw - ext4 /dev/vda rw\n", nil, vda2, "disk of /dev/vda2 is mounted"},
		{"held by device mapper", baseMounts, map[string]string{"254:16": "dm-0"}, vdb, "held by dm-0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			Root = fakeRoot(t, tc.mounts, "", tc.holders)
			defer func() { Root = "/" }()
			err := CheckUnused(tc.info)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("CheckUnused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInUse) {
				t.Fatalf("CheckUnused: %v, want ErrInUse mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParseDev(t *testing.T) {
	for _, s := range []string{"", "8", "a:b", "8:", ":1", "99999999999:1"} {
		if _, err := parseDev(s); err == nil {
			t.Errorf("parseDev(%q) accepted", s)
		}
	}
	if d, err := parseDev("254:17"); err != nil || d != (Dev{254, 17}) {
		t.Errorf("parseDev(254:17) = %v, %v", d, err)
	}
}

func TestInspectRefusesNonBlock(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, []byte("x"), 0o644)
	if _, err := Inspect(f); err == nil || !strings.Contains(err.Error(), "not a block device") {
		t.Fatalf("Inspect(regular file): %v", err)
	}
	if _, err := Inspect("/nonexistent"); err == nil {
		t.Fatal("Inspect(missing) succeeded")
	}
}
