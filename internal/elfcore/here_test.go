package elfcore

import (
	"errors"
	"io/fs"
	"os"
	"testing"
)

// TestHere reads this machine's own build-id and vmcoreinfo location.
func TestHere(t *testing.T) {
	t.Run("notes", func(t *testing.T) {
		id, err := ReadKernelBuildID("/sys/kernel/notes")
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission):
			t.Skipf("cannot read /sys/kernel/notes (sysfs not mounted, or not permitted): %v", err)
		case errors.Is(err, ErrNoBuildID):
			t.Skipf("this kernel was linked without a build-id (--build-id): %v", err)
		case err != nil:
			t.Fatal(err)
		}
		if len(id) != 2*BuildIDSize {
			t.Errorf("build-id %q is not %d hex digits", id, 2*BuildIDSize)
		}
		t.Logf("running kernel's build-id %s", id)
	})
	t.Run("vmcoreinfo", func(t *testing.T) {
		addr, size, err := ReadVmcoreinfoSysfs("/sys/kernel/vmcoreinfo")
		switch {
		case errors.Is(err, fs.ErrNotExist):
			t.Skipf("no /sys/kernel/vmcoreinfo: kernel without CONFIG_VMCORE_INFO, or no sysfs: %v", err)
		case errors.Is(err, fs.ErrPermission):
			t.Skipf("cannot read /sys/kernel/vmcoreinfo: %v", err)
		case err != nil:
			t.Fatal(err)
		}
		// VMCOREINFO_NOTE_SIZE: two note headers, "VMCOREINFO\0" padded,
		// one page of text.
		if want := uint64(2*nhdrSize + 12 + os.Getpagesize()); size != want {
			t.Errorf("note size %#x, want %#x", size, want)
		}
		t.Logf("vmcoreinfo note at %#x, %d bytes", addr, size)
		// The location is what Build needs from A.
		if _, err := Build(Headers{RAM: []Load{{PhysAddr: addr &^ 0xfff, Size: 0x2000, Offset: addr &^ 0xfff}}, VmcoreinfoAddr: addr, VmcoreinfoSize: size}); err != nil {
			t.Errorf("Build with this machine's note: %v", err)
		}
	})
	t.Run("vmcore", func(t *testing.T) {
		// Only in a helper kernel: then the real thing must parse.
		f, err := Open("/proc/vmcore")
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			t.Skipf("no readable /proc/vmcore: not running in a kernel started with elfcorehdr=: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		v, err := f.Vmcoreinfo()
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := v.OSRelease()
		t.Logf("/proc/vmcore: %d loads, OSRELEASE=%s", len(f.Loads()), rel)
	})
}
