// Package check decides whether a machine can use khib, and says what to do about each missing piece.
package check

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/khib/khib/internal/kconfig"
	"github.com/khib/khib/internal/memmap"
	"golang.org/x/sys/unix"
)

// Verdict is the outcome of one check. Unknown means the check could not be
// made (a file it needs is missing or unreadable); an unknown verdict is not
// OK.
type Verdict struct {
	Name    string `json:"name"`
	OK      bool   `json:"ok"`
	Unknown bool   `json:"unknown"`
	Skipped bool   `json:"skipped,omitempty"` // not applicable here (no systemd, no GRUB...); counts as OK
	Detail  string `json:"detail"`            // one sentence: what was found
	Fix     string `json:"fix"`               // what to do, when not OK
}

// Report is the outcome of every check, in a fixed order.
type Report struct {
	OK     bool      `json:"ok"` // every check passed
	Checks []Verdict `json:"checks"`
}

// Env is what Run examines. Tests point Root at a directory of fake files.
type Env struct {
	Root      string // filesystem root; "" means "/"
	Euid      int    // effective user id of the process that will run khib
	Release   string // kernel release, as uname -r prints it
	MinRegion uint64 // bytes the helper kernel needs in the crashkernel region
}

// LocalEnv describes this process on this machine.
func LocalEnv(minRegion uint64) Env {
	env := Env{Root: "/", Euid: os.Geteuid(), MinRegion: minRegion}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		env.Release = unix.ByteSliceToString(u.Release[:])
	}
	return env
}

// Names of the checks, in the order Run makes them.
const (
	NameRoot       = "root"
	NameKexecJump  = "kexec_jump"
	NameCrashDump  = "crash_dump"
	NameProcVmcore = "proc_vmcore"
	NameRegion     = "region"
	NameVmcoreinfo = "vmcoreinfo"
	NameKexecLoad  = "kexec_load"
)

// Paths Run reads, relative to Env.Root.
const (
	pathIomem          = "/proc/iomem"
	pathLoadDisabled   = "/proc/sys/kernel/kexec_load_disabled"
	pathLoadLimit      = "/proc/sys/kernel/kexec_load_limit_reboot"
	pathSysKernel      = "/sys/kernel"
	pathKexecLoaded    = "/sys/kernel/kexec_loaded"
	pathKexecCrashSize = "/sys/kernel/kexec_crash_size"
	pathVmcoreinfo     = "/sys/kernel/vmcoreinfo"
	pathLockdown       = "/sys/kernel/security/lockdown"
)

const mib = 1 << 20

// buildFix is the common remedy for a kernel option that is off.
const buildFix = "boot a kernel built with %s; khib's kernel/build.sh builds one with everything khib needs"

// run holds what several checks share.
type run struct {
	env    Env
	cfg    kconfig.Config
	cfgSrc string
	cfgErr error
}

// Run makes every check against env and reports the outcome.
func Run(env Env) Report {
	if env.Root == "" {
		env.Root = "/"
	}
	r := &run{env: env}
	r.cfg, r.cfgSrc, r.cfgErr = kconfig.LoadFrom(env.Root, env.Release)
	checks := []Verdict{
		r.root(),
		r.kexecJump(),
		r.option(NameCrashDump, "CONFIG_CRASH_DUMP", "CONFIG_CRASH_DUMP=y"),
		r.option(NameProcVmcore, "CONFIG_PROC_VMCORE", "CONFIG_PROC_VMCORE=y (which needs CONFIG_CRASH_DUMP=y)"),
		r.region(),
		r.vmcoreinfo(),
		r.kexecLoad(),
	}
	rep := Report{OK: true, Checks: checks}
	for i := range checks {
		if checks[i].Unknown {
			checks[i].OK = false
		}
		if !checks[i].OK {
			rep.OK = false
		}
	}
	return rep
}

// path maps a path on the examined system to one this process can open.
func (r *run) path(p string) string {
	return filepath.Join(r.env.Root, p)
}

// exists reports whether p exists on the examined system.
func (r *run) exists(p string) bool {
	_, err := os.Stat(r.path(p))
	return err == nil
}

// readSmall reads a short /proc or /sys file, trimmed of surrounding space.
func (r *run) readSmall(p string) (string, error) {
	f, err := os.Open(r.path(p))
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 4096))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func (r *run) root() Verdict {
	v := Verdict{Name: NameRoot}
	if r.env.Euid == 0 {
		v.OK = true
		v.Detail = "running as root (euid 0)"
		return v
	}
	v.Detail = fmt.Sprintf("running as euid %d, but loading a kernel and reading /proc/iomem need root", r.env.Euid)
	v.Fix = "run khib as root, for example with sudo"
	return v
}

// noConfig fills v for a kernel option when no config could be read.
func (r *run) noConfig(v Verdict, probed string) Verdict {
	v.Unknown = true
	rel := r.env.Release
	if rel == "" {
		rel = "$(uname -r)"
	}
	if errors.Is(r.cfgErr, kconfig.ErrNoConfig) {
		v.Detail = fmt.Sprintf("no kernel config to read (neither /proc/config.gz nor /boot/config-%s exists)", rel)
	} else {
		v.Detail = fmt.Sprintf("the kernel config could not be read: %v", r.cfgErr)
	}
	if probed != "" {
		v.Detail += "; " + probed
	}
	v.Fix = fmt.Sprintf("enable CONFIG_IKCONFIG_PROC or install /boot/config-%s", rel)
	return v
}

// fromConfig fills v from option opt of the loaded config.
func (r *run) fromConfig(v Verdict, opt, want string) Verdict {
	val, _ := r.cfg.Get(opt)
	switch val {
	case "y":
		v.OK = true
		v.Detail = fmt.Sprintf("%s=y (from %s)", opt, r.cfgSrc)
	case "", "n":
		v.Detail = fmt.Sprintf("%s is not set (from %s)", opt, r.cfgSrc)
		v.Fix = fmt.Sprintf(buildFix, want)
	default:
		v.Detail = fmt.Sprintf("%s=%s, but khib needs y (from %s)", opt, val, r.cfgSrc)
		v.Fix = fmt.Sprintf(buildFix, want)
	}
	return v
}

func (r *run) kexecJump() Verdict {
	const opt = "CONFIG_KEXEC_JUMP"
	want := "CONFIG_KEXEC_JUMP=y (which needs CONFIG_HIBERNATION=y)"
	v := Verdict{Name: NameKexecJump}
	if r.cfgErr != nil {
		// KEXEC_JUMP depends on kexec, whose presence sysfs shows.
		switch {
		case !r.exists(pathSysKernel):
			return r.noConfig(v, "")
		case !r.exists(pathKexecLoaded):
			v.Detail = "the kernel has no kexec support (no /sys/kernel/kexec_loaded), so it cannot have CONFIG_KEXEC_JUMP either"
			v.Fix = fmt.Sprintf(buildFix, want)
			return v
		default:
			return r.noConfig(v, "/sys shows that kexec is built in (CONFIG_KEXEC_CORE), but "+opt+" itself cannot be probed")
		}
	}
	v = r.fromConfig(v, opt, want)
	if !v.OK {
		v.Fix = "boot a kernel built with " + want + "; Debian's stock kernels do not set it, but khib's kernel/build.sh builds one that does"
	}
	return v
}

// option checks a kernel option that must be "y".
func (r *run) option(name, opt, want string) Verdict {
	v := Verdict{Name: name}
	if r.cfgErr != nil {
		// Sysfs shows some related options but not this one; say what
		// it shows so that the user can judge.
		probed := ""
		if r.exists(pathSysKernel) {
			facts := "kexec is not built in (CONFIG_KEXEC_CORE)"
			if r.exists(pathKexecLoaded) {
				facts = "kexec is built in (CONFIG_KEXEC_CORE)"
			}
			if r.exists(pathVmcoreinfo) {
				facts += " and vmcoreinfo is published (CONFIG_VMCORE_INFO)"
			}
			probed = "/sys shows that " + facts + ", but " + opt + " itself cannot be probed"
		}
		return r.noConfig(v, probed)
	}
	return r.fromConfig(v, opt, want)
}

// CrashkernelMiB is the size, in MiB, to ask for with crashkernel= so that the
// helper gets minRegion bytes: minRegion rounded up to 64 MiB, and at least
// 256 MiB.
func CrashkernelMiB(minRegion uint64) uint64 {
	const step = 64
	n := minRegion / mib
	if minRegion%mib != 0 {
		n++
	}
	n = (n + step - 1) / step * step
	return max(n, 256)
}

// fmtMiB formats a byte count in MiB.
func fmtMiB(b uint64) string {
	if b%mib == 0 {
		return fmt.Sprintf("%d MiB", b/mib)
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/mib)
}

func (r *run) region() Verdict {
	v := Verdict{Name: NameRegion}
	n := CrashkernelMiB(r.env.MinRegion)
	addFix := fmt.Sprintf("add crashkernel=%dM to the kernel command line (on Debian: append it to GRUB_CMDLINE_LINUX in /etc/default/grub and run update-grub) and reboot", n)
	raiseFix := fmt.Sprintf("raise the reservation to crashkernel=%dM on the kernel command line (on Debian: in GRUB_CMDLINE_LINUX in /etc/default/grub, then run update-grub) and reboot", n)
	need := ""
	if r.env.MinRegion > 0 {
		need = fmt.Sprintf("; the helper needs %s", fmtMiB(r.env.MinRegion))
	}

	f, err := os.Open(r.path(pathIomem))
	if err != nil {
		v.Unknown = true
		v.Detail = fmt.Sprintf("cannot read %s: %v", pathIomem, err)
		v.Fix = "mount proc on /proc and run khib check again"
		return v
	}
	defer f.Close()
	m, err := memmap.ParseIomem(f)
	hidden := errors.Is(err, memmap.ErrAddressesHidden)
	if err != nil && !hidden {
		v.Unknown = true
		v.Detail = fmt.Sprintf("cannot parse %s: %v", pathIomem, err)
		v.Fix = "report this as a khib bug, with a copy of /proc/iomem"
		return v
	}
	// Names survive even when addresses are hidden, so absence is certain.
	if len(m.Find("Crash kernel")) == 0 {
		v.Detail = "no crashkernel region reserved (no \"Crash kernel\" in /proc/iomem)"
		v.Fix = addFix
		return v
	}
	if hidden {
		// kexec_crash_size is world-readable, so the size may still be
		// known; a region that is too small is then a certain NO.
		sizeNote := ""
		if s, err := r.readSmall(pathKexecCrashSize); err == nil {
			if size, err := strconv.ParseUint(s, 10, 64); err == nil {
				if size < r.env.MinRegion {
					v.Detail = fmt.Sprintf("the crashkernel region is %s (from %s)%s", fmtMiB(size), pathKexecCrashSize, need)
					v.Fix = raiseFix
					return v
				}
				sizeNote = fmt.Sprintf(" (%s, per %s)", fmtMiB(size), pathKexecCrashSize)
			}
		}
		v.Unknown = true
		v.Detail = "a crashkernel region is reserved" + sizeNote + ", but /proc/iomem hides its address from non-root users"
		v.Fix = "run khib check as root"
		return v
	}
	ck, _ := m.CrashKernel()
	if ck.Size() < r.env.MinRegion {
		v.Detail = fmt.Sprintf("the crashkernel region %v is %s%s", ck, fmtMiB(ck.Size()), need)
		v.Fix = raiseFix
		return v
	}
	v.OK = true
	v.Detail = fmt.Sprintf("crashkernel region %v, %s%s", ck, fmtMiB(ck.Size()), need)
	return v
}

func (r *run) vmcoreinfo() Verdict {
	v := Verdict{Name: NameVmcoreinfo}
	s, err := r.readSmall(pathVmcoreinfo)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !r.exists(pathSysKernel):
		v.Unknown = true
		v.Detail = "sysfs is not mounted at /sys"
		v.Fix = "mount sysfs on /sys and run khib check again"
		return v
	case errors.Is(err, fs.ErrNotExist):
		v.Detail = "no /sys/kernel/vmcoreinfo, so the kernel was built without CONFIG_VMCORE_INFO"
		v.Fix = fmt.Sprintf(buildFix, "CONFIG_VMCORE_INFO=y (CONFIG_CRASH_DUMP=y selects it)")
		return v
	case err != nil:
		v.Unknown = true
		v.Detail = fmt.Sprintf("cannot read %s: %v", pathVmcoreinfo, err)
		v.Fix = "run khib check as root"
		return v
	}
	addr, size, ok := parseVmcoreinfo(s)
	switch {
	case s == "":
		v.Detail = pathVmcoreinfo + " is empty"
		v.Fix = "report this as a khib bug, with the kernel version"
	case !ok:
		v.Detail = fmt.Sprintf("%s holds %q, not \"<address> <size>\"", pathVmcoreinfo, clip(s))
		v.Fix = "report this as a khib bug, with the kernel version"
	case addr == 0 || size == 0:
		v.Detail = fmt.Sprintf("the kernel published no vmcoreinfo note (%s holds %q)", pathVmcoreinfo, s)
		v.Fix = "report this as a khib bug, with the kernel version"
	default:
		v.OK = true
		v.Detail = fmt.Sprintf("vmcoreinfo note at %#x, %d bytes", addr, size)
	}
	return v
}

// parseVmcoreinfo parses /sys/kernel/vmcoreinfo, which the kernel writes as
// "%pa %x": the note's physical address (with 0x) and its size in hex
// without a prefix.
func parseVmcoreinfo(s string) (addr, size uint64, ok bool) {
	f := strings.Fields(s)
	if len(f) != 2 {
		return 0, 0, false
	}
	addr, err1 := strconv.ParseUint(strings.TrimPrefix(f[0], "0x"), 16, 64)
	size, err2 := strconv.ParseUint(strings.TrimPrefix(f[1], "0x"), 16, 64)
	return addr, size, err1 == nil && err2 == nil
}

func (r *run) kexecLoad() Verdict {
	v := Verdict{Name: NameKexecLoad}
	kexecFix := fmt.Sprintf(buildFix, "CONFIG_KEXEC=y")
	if r.cfgErr == nil && !r.cfg.Enabled("CONFIG_KEXEC") {
		v.Detail = fmt.Sprintf("CONFIG_KEXEC is not set (from %s), so the kexec_load system call does not exist", r.cfgSrc)
		v.Fix = kexecFix
		return v
	}
	s, err := r.readSmall(pathLoadDisabled)
	switch {
	case errors.Is(err, fs.ErrNotExist) && !r.exists("/proc/sys/kernel"):
		v.Unknown = true
		v.Detail = "/proc/sys is not available"
		v.Fix = "mount proc on /proc and run khib check again"
		return v
	case errors.Is(err, fs.ErrNotExist):
		v.Detail = "no " + pathLoadDisabled + ", so the kernel has no kexec support"
		v.Fix = kexecFix
		return v
	case err != nil:
		v.Unknown = true
		v.Detail = fmt.Sprintf("cannot read %s: %v", pathLoadDisabled, err)
		v.Fix = "run khib check as root"
		return v
	case s == "1":
		v.Detail = "kernel.kexec_load_disabled is 1, so loading kernels is switched off until the next reboot"
		v.Fix = "find what sets kernel.kexec_load_disabled (grep -r kexec_load_disabled /etc/sysctl.conf /etc/sysctl.d /usr/lib/sysctl.d), remove it and reboot; only a reboot can clear it"
		return v
	case s != "0":
		v.Unknown = true
		v.Detail = fmt.Sprintf("%s holds %q, neither 0 nor 1", pathLoadDisabled, clip(s))
		v.Fix = "report this as a khib bug, with the kernel version"
		return v
	}
	// Kernels since 6.6 can also cap the number of further loads.
	if s, err := r.readSmall(pathLoadLimit); err == nil && s == "0" {
		v.Detail = "kernel.kexec_load_limit_reboot is 0, so no more kernels may be loaded until the next reboot"
		v.Fix = "find what sets kernel.kexec_load_limit_reboot (grep -r kexec_load_limit /etc/sysctl.conf /etc/sysctl.d /usr/lib/sysctl.d), remove it and reboot; it can only be lowered at run time"
		return v
	}
	// Lockdown (usually switched on by Secure Boot) refuses kexec_load
	// outright, since it cannot verify a signature on the image.
	if s, err := r.readSmall(pathLockdown); err == nil {
		if mode := lockdownMode(s); mode != "" && mode != "none" {
			v.Detail = fmt.Sprintf("kernel lockdown is in %s mode, which refuses kexec_load", mode)
			v.Fix = "turn off Secure Boot (in the firmware setup, or with mokutil --disable-validation) and reboot; lockdown cannot be lifted at run time"
			return v
		}
	}
	v.OK = true
	v.Detail = "kexec_load is allowed (kernel.kexec_load_disabled is 0)"
	return v
}

// lockdownMode returns the bracketed entry of /sys/kernel/security/lockdown,
// which reads like "none [integrity] confidentiality".
func lockdownMode(s string) string {
	for _, f := range strings.Fields(s) {
		if len(f) > 2 && f[0] == '[' && f[len(f)-1] == ']' {
			return f[1 : len(f)-1]
		}
	}
	return ""
}

// clip shortens s for a message.
func clip(s string) string {
	const n = 60
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Problems counts the checks that did not pass, and how many of those could
// not be made at all.
func (rep Report) Problems() (problems, unknown int) {
	for _, v := range rep.Checks {
		if !v.OK || v.Unknown {
			problems++
		}
		if v.Unknown {
			unknown++
		}
	}
	return problems, unknown
}

// WriteText writes rep for people: one line per check, a fix under each
// that failed, and a summary.
func (rep Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, v := range rep.Checks {
		status := "ok"
		switch {
		case v.Skipped:
			status = "--"
		case v.Unknown:
			status = "??"
		case !v.OK:
			status = "NO"
		}
		fmt.Fprintf(&b, "  %-6s%-13s%s\n", status, v.Name, v.Detail)
		if (!v.OK || v.Unknown) && v.Fix != "" {
			fmt.Fprintf(&b, "%21sfix: %s\n", "", v.Fix)
		}
	}
	problems, unknown := rep.Problems()
	switch {
	case rep.OK && problems == 0:
		b.WriteString("khib can run on this machine\n")
	default:
		plural := "s"
		if problems == 1 {
			plural = ""
		}
		fmt.Fprintf(&b, "khib cannot run here yet: %d problem%s", problems, plural)
		if unknown > 0 {
			fmt.Fprintf(&b, " (%d could not be checked)", unknown)
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes rep as one JSON object, {"ok":...,"checks":[...]}.
func (rep Report) WriteJSON(w io.Writer) error {
	if rep.Checks == nil {
		rep.Checks = []Verdict{}
	}
	return json.NewEncoder(w).Encode(rep)
}
