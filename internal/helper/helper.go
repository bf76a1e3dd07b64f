// Package helper places khib's helper kernel in the reserved region R of
// the running system A, loads it for a kexec jump, and jumps into it.
package helper

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/cpio"
	"github.com/khib/khib/internal/elfcore"
	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/mailbox"
	"github.com/khib/khib/internal/memmap"
)

// StatePath is where A records what it has loaded, so that a later khib
// process knows whether the loaded image is a parked helper.
var StatePath = "/run/khib/helper.json"

// State describes the helper loaded in this boot of A.
type State struct {
	Kernel     string    `json:"kernel"`
	LoadedAt   time.Time `json:"loaded_at"`
	Region     string    `json:"region"`
	Segments   int       `json:"segments"`
	LoadedByte uint64    `json:"loaded_bytes"` // memory the loaded segments cost A
	Entry      uint64    `json:"entry"`
	Jumps      int       `json:"jumps"`   // round trips since the load; 0: the next jump boots it
	Mailbox    uint64    `json:"mailbox"` // physical address of the mailbox page
	Token      string    `json:"token"`   // the mailbox token, hex
	Seq        int       `json:"seq"`     // last request number
	JumpBack   uint64    `json:"jump_back,omitempty"`
}

// Parked reports whether the next jump resumes a helper that already ran.
func (s *State) Parked() bool { return s.Jumps > 0 }

// Options say which helper to load.
type Options struct {
	Kernel  string // the helper's bzImage
	Exe     string // the binary that becomes the helper's /init; default: this one
	Cmdline string // extra helper command line
	// Extra files of A's, by absolute path, copied into the helper's
	// initramfs at the same paths (a benchmark's baseline tool, say).
	Extra []string
}

// PackagedKernel is where khib's Debian package installs the helper
// kernel. A distribution's kernel cannot be the helper: it needs modules
// that the helper's initramfs (khib alone) does not carry.
const PackagedKernel = "/usr/lib/khib/bzImage"

// DefaultKernel returns the helper kernel to use when none is named: the
// packaged one if installed, else the bzImage of the running kernel (the
// test rig boots the helper kernel as A too), else /boot/khib/bzImage.
// /etc/khib.conf's helper_kernel, when set, overrides it (cmd/khib).
func DefaultKernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		rel := unix.ByteSliceToString(u.Release[:])
		for _, p := range []string{PackagedKernel, "/boot/vmlinuz-" + rel, "/boot/khib/bzImage"} {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
		return "/boot/vmlinuz-" + rel
	}
	return "/boot/khib/bzImage"
}

// OpenKernel parses the helper kernel.
func OpenKernel(path string) (*kexec.BzImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("helper kernel: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("helper kernel: %w", err)
	}
	k, err := kexec.ParseBzImage(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("helper kernel %s: %w", path, err)
	}
	return k, nil
}

// Initramfs builds the helper's initramfs: khib itself as /init and the
// mount points it needs. It is built from the running binary so that A
// and its helper always run the same khib. Each extra file of A's goes in
// at its own absolute path.
//
// The archive is built in one buffer of its final size, the files read
// straight into it: every megabyte of fresh memory costs (under the rig's
// QEMU TCG a process's first touch of a page, the kernel's fault and
// zeroing, ran at about 5 s per GiB, and a buffer grown by doubling plus
// a copy of the binary touched four times the archive's size; building
// the 10 MB archive took 0.28 s).
func Initramfs(exe string, extra ...string) ([]byte, error) {
	size := int64(64 << 10) // headers, names, directories
	for i, p := range append([]string{exe}, extra...) {
		st, err := os.Stat(p)
		if err != nil {
			if i == 0 {
				return nil, fmt.Errorf("reading khib binary for the helper's initramfs: %w", err)
			}
			return nil, fmt.Errorf("helper initramfs: %w", err)
		}
		size += st.Size() + 512
	}
	var buf bytes.Buffer
	buf.Grow(int(size))
	w := cpio.NewWriter(&buf)
	addFile := func(name, p string) error {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		return w.FileFrom(name, 0o755, f, st.Size())
	}
	dirs := map[string]bool{} // made so far, by absolute path
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "mnt"} {
		if err := w.Dir(d, 0o755); err != nil {
			return nil, err
		}
		dirs["/"+d] = true
	}
	// The kernel opens /dev/console for init before devtmpfs is mounted.
	if err := w.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return nil, err
	}
	if err := addFile("init", exe); err != nil {
		return nil, fmt.Errorf("reading khib binary for the helper's initramfs: %w", err)
	}
	for _, p := range extra {
		if !path.IsAbs(p) {
			return nil, fmt.Errorf("helper initramfs: %q is not an absolute path", p)
		}
		var parents []string
		for d := path.Dir(p); d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			parents = append(parents, d)
		}
		for _, d := range slices.Backward(parents) {
			if err := w.Dir(d[1:], 0o755); err != nil {
				return nil, err
			}
		}
		if err := addFile(p[1:], p); err != nil {
			return nil, fmt.Errorf("helper initramfs: %w", err)
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ReadIomem parses the running kernel's /proc/iomem.
func ReadIomem() (*memmap.Iomem, error) {
	f, err := os.Open("/proc/iomem")
	if err != nil {
		return nil, fmt.Errorf("reading memory map: %w", err)
	}
	defer f.Close()
	io, err := memmap.ParseIomem(f)
	if err != nil {
		return nil, fmt.Errorf("reading /proc/iomem: %w", err)
	}
	return io, nil
}

// Region returns R, the "Crash kernel" region of /proc/iomem.
func Region() (kexec.Range, error) {
	io, err := ReadIomem()
	if err != nil {
		return kexec.Range{}, err
	}
	r, ok := io.CrashKernel()
	if !ok {
		return kexec.Range{}, errors.New("no reserved region: boot with crashkernel=256M (see `khib check`)")
	}
	return kexec.Range{Start: r.Start, End: r.End}, nil
}

// Firmware returns the machine's firmware memory map as e820 entries.
func Firmware() ([]kexec.E820Entry, error) {
	ents, err := memmap.ReadFirmwareMemmap("/sys/firmware/memmap")
	if err != nil {
		return nil, fmt.Errorf("reading firmware memory map (CONFIG_FIRMWARE_MEMMAP): %w", err)
	}
	out := make([]kexec.E820Entry, 0, len(ents))
	for _, e := range ents {
		t := uint32(kexec.E820Reserved)
		switch e.Type {
		case "System RAM":
			t = kexec.E820RAM
		case "ACPI Tables":
			t = kexec.E820ACPI
		case "ACPI Non-volatile Storage":
			t = kexec.E820NVS
		case "Unusable memory":
			t = kexec.E820Unusable
		case "Persistent Memory":
			t = kexec.E820PMEM
		}
		out = append(out, kexec.E820Entry{Addr: e.Start, Size: e.End - e.Start, Type: t})
	}
	return out, nil
}

// CoreHeaders builds the ELF core headers through which the helper sees
// A's memory as /proc/vmcore: every System RAM range of A outside R, with
// the low window read from its backup in R (the helper reuses that low
// memory), and A's vmcoreinfo note.
func CoreHeaders(r, backup kexec.Range) ([]byte, error) {
	io, err := ReadIomem()
	if err != nil {
		return nil, err
	}
	low := kexec.DefaultLowWindow
	var loads []elfcore.Load
	for _, ram := range io.SystemRAM() {
		// Whole pages: the image and /proc/vmcore work in pages. A range
		// that ends mid-page (below the EBDA) takes the rest of the page
		// along; its content is restored as it was.
		ram := kexec.Range{Start: ram.Start &^ (kexec.PageSize - 1), End: (ram.End + kexec.PageSize - 1) &^ (kexec.PageSize - 1)}
		for _, piece := range kexec.Subtract(ram, []kexec.Range{r, low}) {
			loads = append(loads, elfcore.Load{PhysAddr: piece.Start, Size: piece.Size(), Offset: piece.Start})
		}
		if ram.Start <= low.Start && low.End <= ram.End {
			loads = append(loads, elfcore.Load{PhysAddr: low.Start, Size: low.Size(), Offset: backup.Start})
		}
	}
	addr, size, err := elfcore.ReadVmcoreinfoSysfs("/sys/kernel/vmcoreinfo")
	if err != nil {
		return nil, fmt.Errorf("vmcoreinfo: %w", err)
	}
	return elfcore.Build(elfcore.Headers{RAM: loads, VmcoreinfoAddr: addr, VmcoreinfoSize: size})
}

// FirmwareRAM summarises the RAM entries of the firmware memory map, as
// recorded in an image and compared at resume.
func FirmwareRAM() (string, error) {
	fw, err := Firmware()
	if err != nil {
		return "", err
	}
	return RAMSummary(fw), nil
}

// RAMSummary lists the RAM entries of a memory map, as FirmwareRAM does.
func RAMSummary(fw []kexec.E820Entry) string {
	var parts []string
	for _, e := range fw {
		if e.Type == kexec.E820RAM {
			parts = append(parts, kexec.Range{Start: e.Addr, End: e.Addr + e.Size}.String())
		}
	}
	return strings.Join(parts, ",")
}

// Load places the helper in R and loads it with KEXEC_PRESERVE_CONTEXT.
// Any image loaded before is replaced.
func Load(o Options) (*State, *kexec.HelperPlan, error) {
	if o.Exe == "" {
		o.Exe = "/proc/self/exe"
	}
	k, err := OpenKernel(o.Kernel)
	if err != nil {
		return nil, nil, err
	}
	r, err := Region()
	if err != nil {
		return nil, nil, err
	}
	fw, err := Firmware()
	if err != nil {
		return nil, nil, err
	}
	initrd, err := Initramfs(o.Exe, o.Extra...)
	if err != nil {
		return nil, nil, err
	}
	tok, tokHex, err := newToken()
	if err != nil {
		return nil, nil, err
	}
	b, err := openBox(true)
	if err != nil {
		return nil, nil, err
	}
	defer b.close()
	if err := mailbox.Init(b.page, tok); err != nil {
		return nil, nil, err
	}
	params := fmt.Sprintf("khib.mailbox=%#x khib.token=%s khib.region=%#x-%#x", b.phys, tokHex, r.Start, r.End)
	if o.Cmdline != "" {
		params += " " + o.Cmdline
	}
	plan, err := kexec.PlanHelper(kexec.HelperSpec{
		Kernel: k, Initrd: initrd, Cmdline: helperCmdline(params),
		Region: r, LowWindow: kexec.DefaultLowWindow, ReserveTop: kexec.DefaultReserveTop,
		Firmware:       fw,
		CoreHeadersFor: func(backup kexec.Range) ([]byte, error) { return CoreHeaders(r, backup) },
	})
	if err != nil {
		return nil, nil, err
	}
	if err := kexec.Load(plan.Entry, plan.Segments, true); err != nil {
		return nil, nil, err
	}
	st := &State{Kernel: o.Kernel, LoadedAt: time.Now().UTC(), Region: r.String(),
		Segments: len(plan.Segments), Entry: plan.Entry, Mailbox: b.phys, Token: tokHex}
	for _, s := range plan.Segments {
		st.LoadedByte += s.Memsz
	}
	if err := st.save(); err != nil {
		return nil, nil, err
	}
	return st, plan, nil
}

// Ready returns the helper to jump into: the parked one, unless fresh is
// asked for or o has extra files, which a parked helper lacks; otherwise,
// after unloading whatever is loaded, a newly loaded one. booted says
// whether the jump will boot it.
func Ready(o Options, fresh bool) (st *State, booted bool, err error) {
	if st, err = Current(); err != nil {
		return nil, false, err
	}
	if st != nil && !fresh && len(o.Extra) == 0 && st.Parked() {
		return st, false, nil
	}
	if st != nil {
		if err := Unload(); err != nil {
			return nil, false, err
		}
	}
	st, _, err = Load(o)
	return st, true, err
}

// RoundTrip jumps into the helper and back, writing nothing, and returns
// the time A was away.
func RoundTrip(st *State) (time.Duration, error) {
	resp, away, err := Jump(st, mailbox.Request{Cmd: mailbox.CmdRoundTrip})
	if err == nil && !resp.OK {
		err = fmt.Errorf("the helper: %s", resp.Error)
	}
	return away, err
}

// Current returns the state of the loaded helper, or nil when none is
// loaded (or the loaded image is not khib's).
func Current() (*State, error) {
	loaded, err := kexec.Loaded()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(StatePath)
	if errors.Is(err, os.ErrNotExist) || !loaded {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading helper state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("helper state %s: %w", StatePath, err)
	}
	return &st, nil
}

// Unload removes the loaded helper, parked or not.
func Unload() error {
	if err := kexec.Unload(); err != nil {
		return err
	}
	if err := os.Remove(StatePath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing helper state: %w", err)
	}
	return nil
}

// Jump hands req to the loaded helper through the mailbox, enters the
// helper and returns when it jumps back, with its answer and the time A
// spent away. CLOCK_BOOTTIME, because A's monotonic clock stands still
// while A is suspended for the jump.
func Jump(st *State, req mailbox.Request) (*mailbox.Response, time.Duration, error) {
	return JumpWithKey(st, req, nil)
}

// JumpWithKey is Jump for an encrypted save: key, the image's master key,
// goes into the mailbox page beside the request (mailbox.PutKey), the
// only way it reaches the helper, and is cleared from the page when the
// jump returns, whatever happened; the helper clears it as soon as it has
// read it. The page is locked in RAM while it holds the key, so the key
// never reaches swap. Once the key is in the page, JumpWithKey clears
// the caller's key too: the helper saves A's memory, and the page it
// clears first must be the key's only place in it.
func JumpWithKey(st *State, req mailbox.Request, key []byte) (*mailbox.Response, time.Duration, error) {
	tok, err := parseToken(st.Token)
	if err != nil {
		return nil, 0, err
	}
	b, err := openBox(false)
	if err != nil {
		return nil, 0, err
	}
	defer b.close()
	if b.phys != st.Mailbox {
		return nil, 0, fmt.Errorf("%w (%#x, now %#x)", ErrMailboxMoved, st.Mailbox, b.phys)
	}
	st.Seq++
	req.Seq = st.Seq
	req.Time = time.Now().UTC()
	req.Region = st.Region
	if err := mailbox.PutRequest(b.page, tok, req); err != nil {
		return nil, 0, err
	}
	mailbox.ClearKey(b.page)
	if key != nil {
		defer mailbox.ClearKey(b.page) // before b.close unmaps it
		if err := mailbox.PutKey(b.page, tok, key); err != nil {
			return nil, 0, err
		}
		clear(key)
	}
	// Save what can be saved before leaving: if the helper never comes
	// back, A's filesystems are at least consistent on disk.
	unix.Sync()
	var away time.Duration
	err = jumpRetrying(func() error {
		t0 := boottime()
		err := kexec.Jump()
		away = boottime() - t0
		return err
	}, busyTries, busyPause, func(err error) {
		fmt.Fprintf(os.Stderr, "khib: the kernel did not start the jump: %v; trying again in %s\n", err, busyPause)
	})
	if err != nil {
		return nil, away, err
	}
	st.Jumps++
	if err := st.save(); err != nil {
		return nil, away, err
	}
	resp, ok, err := mailbox.GetResponse(b.page, tok)
	if err != nil {
		return nil, away, fmt.Errorf("reading the helper's answer: %w", err)
	}
	if !ok {
		return nil, away, errors.New("the helper came back without an answer; its console says why")
	}
	if resp.Seq != req.Seq {
		return nil, away, fmt.Errorf("the helper answered request %d, not %d", resp.Seq, req.Seq)
	}
	return &resp, away, nil
}

// A jump the kernel refuses with EBUSY is tried again, busyTries times
// in all, busyPause apart. kernel_kexec answers EBUSY when a task did not
// freeze within freeze_timeout_msecs (20 s), or while another kexec
// runs, and both pass. Seen in the distro guest: a qemu-ga child in
// execve waited (de_thread, TASK_KILLABLE) for its sibling threads to
// die, and they were frozen already, so the freeze of khib arm's
// round trip failed once; after the thaw the execve went through.
const (
	busyTries = 2
	busyPause = 2 * time.Second
)

// jumpRetrying calls jump until it succeeds, fails other than with
// EBUSY, or has been called tries times, and reports each EBUSY it
// retries on to retrying. It returns jump's last error.
func jumpRetrying(jump func() error, tries int, pause time.Duration, retrying func(error)) error {
	for i := 1; ; i++ {
		err := jump()
		if err == nil || !errors.Is(err, unix.EBUSY) || i >= tries {
			return err
		}
		retrying(err)
		time.Sleep(pause)
	}
}

func boottime() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return time.Duration(ts.Nano())
}

func (st *State) save() error {
	if err := os.MkdirAll(filepath.Dir(StatePath), 0o755); err != nil {
		return fmt.Errorf("saving helper state: %w", err)
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := StatePath + ".tmp." + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("saving helper state: %w", err)
	}
	return os.Rename(tmp, StatePath)
}
