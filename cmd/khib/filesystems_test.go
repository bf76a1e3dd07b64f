package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/khib/khib/internal/fsstate"
	"github.com/khib/khib/internal/target"
)

// fsMachine is a fake /proc, /sys and /dev whose block devices are files:
// vdb holds ext4, vda1 vfat-ish bytes, as the three sides of the
// file-system check see them.
func fsMachine(t *testing.T) (root string) {
	t.Helper()
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Skip("mke2fs not installed (apt-get install e2fsprogs)")
	}
	root = t.TempDir()
	mk := func(p, content string) {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("proc/self/mountinfo", `1 0 0:1 / / rw - rootfs rootfs rw
22 1 0:5 / /dev rw - devtmpfs devtmpfs rw
30 1 254:16 / /data rw,relatime - ext4 /dev/vdb rw
31 1 254:1 / /boot/efi rw,relatime - vfat /dev/vda1 rw
`)
	for name, dev := range map[string]string{"vdb": "254:16", "vda1": "254:1"} {
		mk("sys/dev/block/"+dev+"/uevent", "MAJOR=254\nDEVNAME="+name+"\nDEVTYPE=disk\n")
		mk("sys/class/block/"+name+"/dev", dev+"\n")
		mk("dev/"+name, "")
		if err := os.Truncate(filepath.Join(root, "dev", name), 16<<20); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", filepath.Join(root, "dev/vdb")).CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v\n%s", err, out)
	}
	oldM, oldD, oldT, oldW := fsMountinfo, fsDevRoot, target.Root, fsWait
	fsMountinfo, fsDevRoot, target.Root, fsWait = filepath.Join(root, "proc/self/mountinfo"), root, root, 0
	t.Cleanup(func() { fsMountinfo, fsDevRoot, target.Root, fsWait = oldM, oldD, oldT, oldW })
	return root
}

func debugfsSet(t *testing.T, dev, cmd string) {
	t.Helper()
	if out, err := exec.Command("debugfs", "-w", "-R", cmd, dev).CombinedOutput(); err != nil {
		t.Fatalf("debugfs %s: %v\n%s", cmd, err, out)
	}
}

func TestFilesystemsRoundTrip(t *testing.T) {
	root := fsMachine(t)
	vdb := filepath.Join(root, "dev/vdb")

	// A: both mounts, the ext4 one identified.
	mounts, err := mountedFilesystems()
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 2 || mounts[0].Dir != "/data" || mounts[0].UUID == "" || mounts[0].Source != vdb || mounts[0].Size != 16<<20 ||
		mounts[1].Type != "vfat" || mounts[1].UUID != "" {
		t.Fatalf("mounts %+v", mounts)
	}
	// B: ext4 checked, vfat not.
	recs, err := recordFilesystems(mounts)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || !recs[0].Checked() || recs[0].Device != vdb || recs[0].State.Journal == nil || recs[1].Checked() ||
		!strings.Contains(recs[1].Unchecked, "ext2/3/4 only") {
		t.Fatalf("records %+v", recs)
	}
	// Stage 1, nothing changed.
	if err := checkFilesystems(recs); err != nil {
		t.Fatalf("unchanged file systems refused: %v", err)
	}
	// Another system mounts it.
	debugfsSet(t, vdb, "ssv mnt_count 1")
	err = checkFilesystems(recs)
	var ce *fsstate.ChangedError
	if !errors.As(err, &ce) || !errors.Is(err, fsstate.ErrChanged) {
		t.Fatalf("changed file system: err = %v", err)
	}
	for _, w := range []string{mounts[0].UUID, "/data", "s_mnt_count 0 → 1"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("refusal %q does not say %q", err, w)
		}
	}
	// The device is gone.
	os.Rename(vdb, vdb+".away")
	os.Rename(filepath.Join(root, "sys/class/block/vdb"), filepath.Join(root, "sys/class/block-vdb"))
	if err := checkFilesystems(recs); err == nil || !strings.Contains(err.Error(), "on no device here") {
		t.Fatalf("missing file system: err = %v", err)
	}
}

func TestFilesystemsHelperSide(t *testing.T) {
	root := fsMachine(t)
	vdb := filepath.Join(root, "dev/vdb")
	mounts, err := mountedFilesystems()
	if err != nil {
		t.Fatal(err)
	}
	// Another size: not the same device, so not found.
	other := mounts[:1:1]
	other[0].Size++
	recs, err := recordFilesystems(other)
	if err != nil || recs[0].Checked() || !strings.Contains(recs[0].Unchecked, "found no device") {
		t.Fatalf("records %+v, %v", recs, err)
	}
	other[0].Size--
	// Two devices with one UUID: the helper cannot tell which.
	b, _ := os.ReadFile(vdb)
	os.WriteFile(filepath.Join(root, "dev/vdc"), b, 0o644)
	os.MkdirAll(filepath.Join(root, "sys/class/block/vdc"), 0o755)
	recs, err = recordFilesystems(other)
	if err != nil || recs[0].Checked() || !strings.Contains(recs[0].Unchecked, "2 devices") {
		t.Fatalf("records %+v, %v", recs, err)
	}
	os.Remove(filepath.Join(root, "dev/vdc"))
	// A found one whose journal cannot be read fails the save.
	f, _ := os.OpenFile(vdb, os.O_RDWR, 0)
	sb, _ := fsstate.ReadSuperblock(f, 16<<20)
	f.Close()
	if sb == nil || !sb.InternalJournal() {
		t.Fatal("mke2fs made no internal journal")
	}
	debugfsSet(t, vdb, "ssv journal_inum 9")
	if _, err := recordFilesystems(other); err == nil || !strings.Contains(err.Error(), "journal") {
		t.Fatalf("unreadable journal: err = %v", err)
	}
	// A: an ext4 mount whose device does not hold ext4 cannot be
	// identified, and hibernate refuses.
	os.WriteFile(vdb, make([]byte, 4096), 0o644)
	if _, err := mountedFilesystems(); err == nil || !strings.Contains(err.Error(), "cannot identify the ext4 file system on /data") {
		t.Fatalf("unidentifiable: err = %v", err)
	}
}

func TestFilesystemsVerdict(t *testing.T) {
	fsMachine(t)
	v := filesystemsVerdict()
	if !v.OK || !strings.Contains(v.Detail, "checks ext4 on /data") || !strings.Contains(v.Detail, "cannot check vfat on /boot/efi") {
		t.Fatalf("verdict %+v", v)
	}
}
