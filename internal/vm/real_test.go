package vm

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// realKernel finds khib's kernel for tests that boot it: $KHIB_KERNEL, else
// what kernel/build.sh --path names. Such tests are skipped under -short,
// without QEMU, or before the kernel was built.
func realKernel(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a real kernel; skipped with -short")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil && os.Getenv("KHIB_QEMU") == "" {
		t.Skip("no qemu-system-x86_64: ", err)
	}
	if _, err := os.Stat(DefaultBusybox); err != nil {
		t.Skip("no static busybox: ", err)
	}
	k := os.Getenv("KHIB_KERNEL")
	if k == "" {
		out, err := exec.Command("sh", "../../kernel/build.sh", "--path").Output()
		if err != nil {
			t.Skip("kernel/build.sh --path: ", err)
		}
		k = strings.TrimSpace(string(out))
	}
	if _, err := os.Stat(k); err != nil {
		t.Skip("kernel not built yet (run kernel/build.sh): ", err)
	}
	return k
}

func realConfig(t *testing.T, kernel, init string) Config {
	t.Helper()
	dir := t.TempDir()
	r := NewRootfs()
	if err := r.AddBusybox(""); err != nil {
		t.Fatal(err)
	}
	r.SetInit(init)
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := r.WriteFile(initrd); err != nil {
		t.Fatal(err)
	}
	// TCG always: tests must not wait for a KVM probe.
	return Config{
		Kernel: kernel, Initrd: initrd, Append: DefaultAppend, MemMiB: 256, Accel: "tcg",
		ConsoleLog: filepath.Join(dir, "console.log"),
	}
}

const realTimeout = 60 * time.Second

func TestRealPanic(t *testing.T) {
	k := realKernel(t)
	// init exits, so the kernel panics; panic=-1 and -no-reboot end QEMU.
	m := startT(t, realConfig(t, k, "#!/bin/sh\necho bye\nexit 3\n"))
	_, err := m.WaitFor(context.Background(), regexp.MustCompile(`never printed`), realTimeout)
	if err == nil || !strings.Contains(err.Error(), "panicked") || !strings.Contains(err.Error(), "Kernel panic") {
		t.Fatalf("panic not reported: %v", err)
	}
	e := m.Exit()
	if !e.Panicked || e.PoweredOff || e.Killed {
		t.Errorf("exit %+v", e)
	}
}

// TestRealDiskPersists writes to a disk in one boot and reads it back in
// the next, the pattern a resume test follows.
func TestRealDiskPersists(t *testing.T) {
	k := realKernel(t)
	disk := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	const mark = "KHIB-DISK-MARK-0123456789"
	write := realConfig(t, k, `#!/bin/sh
export PATH=/bin
mount -t devtmpfs dev /dev
echo `+mark+` > /dev/vda
sync
echo KHIBVM:written
poweroff -f
`)
	write.Disks = []Disk{{Path: disk}}
	m := startT(t, write)
	if _, err := m.WaitPowerOff(realTimeout); err != nil {
		t.Fatal(err)
	}
	m.Close()
	b, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte(mark)) {
		t.Fatalf("disk starts with %q after a clean exit", b[:32])
	}

	read := realConfig(t, k, `#!/bin/sh
export PATH=/bin
mount -t devtmpfs dev /dev
echo "KHIBVM:read=$(head -c 25 /dev/vda)"
poweroff -f
`)
	read.Disks = []Disk{{Path: disk, ReadOnly: true}}
	m2 := startT(t, read)
	if _, err := m2.WaitFor(context.Background(), regexp.MustCompile(`KHIBVM:read=`+mark), realTimeout); err != nil {
		t.Fatal(err)
	}
	if e, err := m2.WaitPowerOff(realTimeout); err != nil || !e.PoweredOff {
		t.Fatalf("%+v %v", e, err)
	}
	if got := Figures(m2.Lines())["read"]; got != mark {
		t.Errorf("figure read = %v", got)
	}
}
