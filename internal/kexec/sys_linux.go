package kexec

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kexec_load flags (include/uapi/linux/kexec.h).
const (
	flagPreserveContext = 0x2
	archX86_64          = 62 << 16
	maxSegments         = 16
)

// kexecSegment mirrors struct kexec_segment.
type kexecSegment struct {
	buf   uintptr
	bufsz uintptr
	mem   uintptr
	memsz uintptr
}

// Load calls kexec_load(2) with the given entry point and segments. With
// preserveContext the loaded image is entered by a *jump* that can come
// back: only kexec_load supports that flag, kexec_file_load has none.
func Load(entry uint64, segs []Segment, preserveContext bool) error {
	if len(segs) > maxSegments {
		return fmt.Errorf("kexec_load: %d segments, the kernel takes at most %d", len(segs), maxSegments)
	}
	ks := make([]kexecSegment, len(segs))
	for i, s := range segs {
		if s.Mem%PageSize != 0 || s.Memsz%PageSize != 0 || uint64(len(s.Buf)) > s.Memsz {
			return fmt.Errorf("kexec_load: segment %q at %#x is not page aligned or larger than its memsz", s.Name, s.Mem)
		}
		ks[i] = kexecSegment{bufsz: uintptr(len(s.Buf)), mem: uintptr(s.Mem), memsz: uintptr(s.Memsz)}
		if len(s.Buf) > 0 {
			ks[i].buf = uintptr(unsafe.Pointer(&s.Buf[0]))
		}
	}
	flags := uintptr(archX86_64)
	if preserveContext {
		flags |= flagPreserveContext
	}
	var p uintptr
	if len(ks) > 0 {
		p = uintptr(unsafe.Pointer(&ks[0]))
	}
	_, _, errno := unix.Syscall6(unix.SYS_KEXEC_LOAD, uintptr(entry), uintptr(len(ks)), p, flags, 0, 0)
	runtime.KeepAlive(segs)
	runtime.KeepAlive(ks)
	if errno != 0 {
		return fmt.Errorf("kexec_load: %w%s", errno, loadHint(errno))
	}
	return nil
}

func loadHint(errno unix.Errno) string {
	switch errno {
	case unix.EPERM:
		return " (needs root and CAP_SYS_BOOT; also refused once /proc/sys/kernel/kexec_load_disabled is 1)"
	case unix.EINVAL:
		return " (segments overlap, are misaligned, or exceed half of RAM; or the kernel lacks CONFIG_KEXEC_JUMP)"
	case unix.EBUSY:
		return " (another kexec operation is in progress)"
	case unix.ENOSYS:
		return " (kernel built without CONFIG_KEXEC)"
	}
	return ""
}

// Unload removes the loaded kexec image, if any.
func Unload() error {
	_, _, errno := unix.Syscall6(unix.SYS_KEXEC_LOAD, 0, 0, 0, archX86_64, 0, 0)
	if errno != 0 {
		return fmt.Errorf("kexec unload: %w", errno)
	}
	return nil
}

// Loaded reports whether a kexec image is loaded (/sys/kernel/kexec_loaded).
func Loaded() (bool, error) {
	b, err := os.ReadFile("/sys/kernel/kexec_loaded")
	if err != nil {
		return false, fmt.Errorf("reading kexec state: %w", err)
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// Jump enters the loaded image with reboot(LINUX_REBOOT_CMD_KEXEC). For a
// preserve-context image the call returns when the peer jumps back: the
// kernel has by then resumed its devices and thawed tasks.
func Jump() error {
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC)
	switch {
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("reboot(LINUX_REBOOT_CMD_KEXEC): %w (a task refused to freeze, the kernel log names it, or another kexec was running)", err)
	case err != nil:
		return fmt.Errorf("reboot(LINUX_REBOOT_CMD_KEXEC): %w", err)
	}
	return nil
}

// PowerOff syncs nothing and powers the machine off.
func PowerOff() error {
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

// Restart syncs nothing and reboots the machine.
func Restart() error {
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}

// ErrRAM means /dev/mem refused a page because the running kernel counts
// it as its own RAM (CONFIG_STRICT_DEVMEM).
var ErrRAM = errors.New("page is RAM of the running kernel; /dev/mem refuses it")

// PhysAddr returns the physical address of the page that backs the given
// virtual address in this process, from /proc/self/pagemap. The page must
// be present (touched and locked); reading PFNs needs CAP_SYS_ADMIN.
func PhysAddr(va uintptr) (uint64, error) {
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return 0, fmt.Errorf("opening pagemap: %w", err)
	}
	defer f.Close()
	var e [8]byte
	if _, err := f.ReadAt(e[:], int64(va/PageSize)*8); err != nil {
		return 0, fmt.Errorf("reading pagemap: %w", err)
	}
	v := uint64(e[0]) | uint64(e[1])<<8 | uint64(e[2])<<16 | uint64(e[3])<<24 |
		uint64(e[4])<<32 | uint64(e[5])<<40 | uint64(e[6])<<48 | uint64(e[7])<<56
	if v&(1<<63) == 0 {
		return 0, fmt.Errorf("page at %#x is not present", va)
	}
	pfn := v & (1<<55 - 1)
	if pfn == 0 {
		return 0, errors.New("pagemap hides physical addresses (needs CAP_SYS_ADMIN)")
	}
	return pfn*PageSize + uint64(va%PageSize), nil
}
