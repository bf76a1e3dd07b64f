package helper

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/cpio"
	"github.com/khib/khib/internal/elfcore"
	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/memmap"
)

// TestCoreHeadersHere builds the ELF core headers for this machine, as A
// would, with R placed inside its largest RAM range, and checks what the
// helper would see: no page of R, the low window read from the backup,
// every other RAM page where it is.
func TestCoreHeadersHere(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: /proc/iomem hides addresses from other users")
	}
	f, err := os.Open("/proc/iomem")
	if err != nil {
		t.Skip(err)
	}
	io, err := memmap.ParseIomem(f)
	f.Close()
	if err != nil {
		t.Skip(err)
	}
	if _, _, err := elfcore.ReadVmcoreinfoSysfs("/sys/kernel/vmcoreinfo"); err != nil {
		t.Skipf("no vmcoreinfo here (CONFIG_VMCORE_INFO): %v", err)
	}
	var big memmap.Range
	for _, r := range io.SystemRAM() {
		if r.Size() > big.Size() {
			big = r
		}
	}
	if big.Size() < 512<<20 {
		t.Skip("no RAM range large enough to place a test R in")
	}
	r := kexec.Range{Start: (big.Start + 256<<20) &^ (16<<20 - 1), End: (big.Start+256<<20)&^(16<<20-1) + 128<<20}
	backup := kexec.BackupRange(r, kexec.DefaultReserveTop, kexec.DefaultLowWindow)
	hdr, err := CoreHeaders(r, backup)
	if err != nil {
		t.Fatal(err)
	}
	// Lay the headers out the way the helper's kernel does.
	vm, err := elfcore.EmulateVmcore(hdr, zeroMem{})
	if err != nil {
		t.Fatalf("the helper's kernel would refuse these headers: %v", err)
	}
	core, err := elfcore.NewFile(vm, vm.Size())
	if err != nil {
		t.Fatal(err)
	}
	var sawLow bool
	for _, l := range core.Loads() {
		if l.PhysAddr < r.End && r.Start < l.End() {
			t.Errorf("load %v overlaps R %v", l, r)
		}
		if l.PhysAddr%kexec.PageSize != 0 || l.Size%kexec.PageSize != 0 {
			t.Errorf("load %v is not whole pages", l)
		}
		if l.PhysAddr == kexec.DefaultLowWindow.Start {
			sawLow = true
		}
	}
	if !sawLow {
		t.Errorf("no load for the low window %v", kexec.DefaultLowWindow)
	}
}

// zeroMem stands in for A's memory when only the headers matter.
type zeroMem struct{}

func (zeroMem) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	// A plausible vmcoreinfo note wherever the note is read.
	copy(p, noteBytes())
	return len(p), nil
}

func noteBytes() []byte {
	desc := []byte("OSRELEASE=test\nPAGESIZE=4096\n")
	var b bytes.Buffer
	le := func(v uint32) { b.Write([]byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}) }
	le(11)
	le(uint32(len(desc)))
	le(0)
	b.WriteString("VMCOREINFO\x00\x00")
	b.Write(desc)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return b.Bytes()
}

func TestInitramfsHoldsInitAndConsole(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	b, err := Initramfs(exe)
	if err != nil {
		t.Fatal(err)
	}
	r := cpio.NewReader(bytes.NewReader(b))
	var names []string
	for {
		h, err := r.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	got := strings.Join(names, " ")
	for _, want := range []string{"init", "dev/console", "proc", "sys"} {
		if !strings.Contains(" "+got+" ", " "+want+" ") {
			t.Errorf("initramfs lacks %s: %s", want, got)
		}
	}
}

// TestInitramfsExtra: extra files land at their own paths, each parent
// directory once and before its contents, with their bytes.
func TestInitramfsExtra(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "x", "tool"), filepath.Join(dir, "x", "lib", "libt.so")
	for _, p := range []string{a, b} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("bytes of "+filepath.Base(p)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img, err := Initramfs(exe, a, b)
	if err != nil {
		t.Fatal(err)
	}
	r := cpio.NewReader(bytes.NewReader(img))
	seen := map[string]int{}
	dirs := map[string]bool{"": true}
	for {
		h, err := r.Next()
		if err != nil {
			break
		}
		seen[h.Name]++
		if parent := filepath.Dir(h.Name); parent != "." && !dirs[parent] {
			t.Errorf("%s comes before its directory %s", h.Name, parent)
		}
		if h.IsDir() {
			dirs[h.Name] = true
		}
		if "/"+h.Name == a || "/"+h.Name == b {
			data, err := io.ReadAll(r)
			if err != nil || string(data) != "bytes of "+filepath.Base(h.Name) {
				t.Errorf("%s holds %q, %v", h.Name, data, err)
			}
		}
	}
	for _, p := range []string{a[1:], b[1:], filepath.Dir(b)[1:], "init"} {
		if seen[p] != 1 {
			t.Errorf("%s appears %d times, want once", p, seen[p])
		}
	}
	for _, bad := range []string{"relative/path", filepath.Join(dir, "missing")} {
		if _, err := Initramfs(exe, bad); err == nil {
			t.Errorf("extra file %s: no error", bad)
		}
	}
}

func TestHelperCmdline(t *testing.T) {
	s := HelperCmdline("restore", "khib.image=abc")
	for _, want := range []string{"nokaslr", "khib.role=restore", "khib.image=abc"} {
		if !strings.Contains(s, want) {
			t.Errorf("%q lacks %q", s, want)
		}
	}
	if strings.Contains(s, "crashkernel") || strings.Contains(s, "khib.resume") {
		t.Errorf("%q carries parameters that are A's alone", s)
	}
}

// TestJumpRetrying: only EBUSY is tried again, at most tries calls in all,
// and the last error is what the caller gets.
func TestJumpRetrying(t *testing.T) {
	busy := fmt.Errorf("reboot(LINUX_REBOOT_CMD_KEXEC): %w", unix.EBUSY)
	other := fmt.Errorf("reboot(LINUX_REBOOT_CMD_KEXEC): %w", unix.EINVAL)
	tests := []struct {
		name      string
		results   []error // what the jump returns, call by call
		tries     int
		wantCalls int
		wantErr   error
	}{
		{"first jump works", []error{nil}, 2, 1, nil},
		{"busy once, then works", []error{busy, nil}, 2, 2, nil},
		{"busy every time", []error{busy, busy, busy}, 2, 2, unix.EBUSY},
		{"another error is not retried", []error{other, nil}, 2, 1, unix.EINVAL},
		{"busy, then another error", []error{busy, other}, 3, 2, unix.EINVAL},
		{"one try only", []error{busy, nil}, 1, 1, unix.EBUSY},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls, reported := 0, 0
			err := jumpRetrying(func() error {
				calls++
				return tt.results[calls-1]
			}, tt.tries, time.Millisecond, func(error) { reported++ })
			if calls != tt.wantCalls {
				t.Errorf("%d calls, want %d", calls, tt.wantCalls)
			}
			if reported != calls-1 {
				t.Errorf("%d retries reported, want %d", reported, calls-1)
			}
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v, want %v", err, tt.wantErr)
			}
		})
	}
}
