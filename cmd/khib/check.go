package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/check"
	"github.com/khib/khib/internal/helper"
	"github.com/khib/khib/internal/kconfig"
	"github.com/khib/khib/internal/kexec"
)

const checkHelp = `Usage: khib check [--json] [--kernel FILE]
       khib check --jump [--json] [--fresh] [--kernel FILE]

Without --jump, check whether this machine can use khib: kernel support
(CONFIG_KEXEC_JUMP, CONFIG_CRASH_DUMP, CONFIG_PROC_VMCORE, read from
/proc/config.gz or /boot/config-RELEASE), a reserved region large enough for
the helper (crashkernel=), vmcoreinfo, kexec_load allowed, and root. For
every missing piece it says what to do. Nothing is changed.

Where khib's package is installed it also checks each piece of the system
integration: the GRUB drop-in applied (grub.cfg has crashkernel=), the
running kernel's initramfs holding khib, the helper kernel and
/etc/khib.conf, khib-arm.service enabled and active with a helper parked,
systemd-hibernate.service running khib, logind allowing hibernation without
swap, and /etc/khib.conf's target resolving to a usable device. A piece the
machine has no use for (no systemd, no GRUB, no initramfs-tools) is shown
as "--" and skipped, not failed.

With --jump, prove it live: load the helper kernel (FILE plus khib's own
initramfs) into the reserved region, kexec-jump into it and come back.
Nothing is written to disk. The helper prints its jump-back entry and its
view of RAM on the console. If a helper is already loaded and parked by an
earlier jump, the jump resumes it instead of booting it (about 5x faster
under emulation); --fresh unloads it and boots a new one.

Options:
`

func cmdCheck(args []string) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print one JSON object instead of text")
	jump := fs.Bool("jump", false, "jump into the helper kernel and back")
	fresh := fs.Bool("fresh", false, "with --jump: unload a parked helper and boot a new one")
	kernel := fs.String("kernel", defaultHelperKernel(), "the helper kernel (bzImage)")
	fs.Usage = func() { fmt.Fprint(os.Stderr, checkHelp); fs.PrintDefaults() }
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if *jump {
		return checkJump(*kernel, *fresh, *asJSON)
	}
	rep := check.Run(check.Env{Root: "/", Euid: os.Geteuid(), Release: release(), MinRegion: minRegion(*kernel)})
	rep.Add(check.System(systemEnv())...)
	rep.Add(filesystemsVerdict())
	if *asJSON {
		rep.WriteJSON(os.Stdout)
	} else {
		rep.WriteText(os.Stdout)
	}
	if !rep.OK {
		return 1
	}
	return 0
}

// systemEnv wires the system-integration checks to this machine.
func systemEnv() check.SysEnv {
	env := check.SysEnv{
		Root: "/", Release: release(),
		HelperParked: func() (bool, error) {
			st, err := helper.Current()
			return st != nil && st.Parked(), err
		},
		CheckTarget: func(dev string) error {
			_, err := usableTarget(dev)
			return err
		},
	}
	if _, err := exec.LookPath("systemctl"); err == nil {
		env.Systemctl = func(args ...string) (string, error) {
			out, err := exec.Command("systemctl", args...).Output()
			return string(out), err
		}
	}
	if _, err := exec.LookPath("lsinitramfs"); err == nil {
		env.Lsinitramfs = func(p string) ([]string, error) {
			out, err := exec.Command("lsinitramfs", p).Output()
			if err != nil {
				return nil, fmt.Errorf("lsinitramfs %s: %w", p, err)
			}
			return strings.Fields(string(out)), nil
		}
	}
	return env
}

// minRegion is how much of R the helper built from kernel and this
// binary needs. Without a readable kernel, assume a typical one.
func minRegion(kernel string) uint64 {
	exe, err := os.Stat("/proc/self/exe")
	size := uint64(16 << 20)
	if err == nil {
		size = uint64(exe.Size()) + 4096
	}
	k, err := helper.OpenKernel(kernel)
	if err != nil {
		return 192 << 20
	}
	return kexec.RegionNeeded(k, size)
}

func release() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

type jumpResult struct {
	OK     bool    `json:"ok"`
	Error  string  `json:"error,omitempty"`
	Mode   string  `json:"mode,omitempty"` // "fresh" or "resumed"
	Round  int     `json:"round,omitempty"`
	AwayS  float64 `json:"away_s,omitempty"`
	Kernel string  `json:"kernel,omitempty"`
	Region string  `json:"region,omitempty"`
}

// checkJump refuses early, before anything is loaded, whenever the jump
// cannot work: not root, no region, not a bzImage, no KEXEC_JUMP.
func checkJump(kernel string, fresh, asJSON bool) int {
	res := jumpResult{Kernel: kernel}
	done := func(err error) int {
		if err != nil {
			res.OK, res.Error = false, err.Error()
		} else {
			res.OK = true
		}
		if asJSON {
			json.NewEncoder(os.Stdout).Encode(res)
		}
		if err != nil {
			return fail("check --jump: %v", err)
		}
		if !asJSON {
			fmt.Printf("khib: round trip %d (%s helper): %.3f s in the helper, A is back\n", res.Round, res.Mode, res.AwayS)
		}
		return 0
	}
	if os.Geteuid() != 0 {
		return done(errors.New("must run as root: it loads a kernel with kexec_load and jumps into it"))
	}
	if _, err := helper.OpenKernel(kernel); err != nil {
		return done(err)
	}
	r, err := jumpable()
	if err != nil {
		return done(err)
	}
	res.Region = r.String()
	st, booted, err := helper.Ready(helper.Options{Kernel: kernel}, fresh)
	if err != nil {
		return done(err)
	}
	res.Mode = map[bool]string{true: "fresh", false: "resumed"}[booted]
	res.Round = st.Jumps + 1
	// On stderr even with --json: the console shows when A left.
	fmt.Fprintf(os.Stderr, "khib: jumping into the %s helper (region %s)\n", res.Mode, res.Region)
	away, err := helper.RoundTrip(st)
	res.AwayS = away.Seconds()
	return done(err)
}

// jumpable checks what every jump needs from the running kernel, before
// anything is loaded: a reserved region R, and KEXEC_JUMP when the kernel
// config says.
func jumpable() (kexec.Range, error) {
	r, err := helper.Region()
	if err != nil {
		return r, err
	}
	if cfg, src, err := kconfig.Load(); err == nil && !cfg.Enabled("CONFIG_KEXEC_JUMP") {
		return r, fmt.Errorf("the running kernel has no CONFIG_KEXEC_JUMP (%s); build one with kernel/build.sh", src)
	}
	return r, nil
}

const armHelp = `Usage: khib arm [--kernel FILE]

Boot the helper kernel ahead of time and park it: khib loads it into the
reserved region, jumps into it, and the helper initialises and jumps
straight back. A later jump resumes the parked helper instead of booting it.
The parked helper costs A the memory of its loaded segments (see khib status).

Options:
`

func cmdArm(args []string) int {
	fs := flag.NewFlagSet("arm", flag.ContinueOnError)
	kernel := fs.String("kernel", defaultHelperKernel(), "the helper kernel (bzImage)")
	fs.Usage = func() { fmt.Fprint(os.Stderr, armHelp); fs.PrintDefaults() }
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if os.Geteuid() != 0 {
		return fail("arm: must run as root")
	}
	st, booted, err := helper.Ready(helper.Options{Kernel: *kernel}, false)
	if err != nil {
		return fail("arm: %v", err)
	}
	if !booted {
		fmt.Println("khib: a helper is already armed")
		return 0
	}
	away, err := helper.RoundTrip(st)
	if err != nil {
		return fail("arm: %v", err)
	}
	fmt.Printf("khib: helper armed (booted and parked in %.3f s)\n", away.Seconds())
	return 0
}

func cmdDisarm(args []string) int {
	if len(args) > 0 {
		fmt.Fprintln(os.Stderr, "Usage: khib disarm\n\nUnload the helper kernel, parked or not, and give its memory back to A.")
		if args[0] == "--help" || args[0] == "-h" {
			return 0
		}
		return 2
	}
	if os.Geteuid() != 0 {
		return fail("disarm: must run as root")
	}
	if err := helper.Unload(); err != nil {
		return fail("disarm: %v", err)
	}
	fmt.Println("khib: helper unloaded")
	return 0
}

func cmdStatus(args []string) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print one JSON object")
	fs.Usage = func() {
		fmt.Fprint(os.Stderr, "Usage: khib status [--json]\n\nSay whether a helper is loaded or parked (armed), and how much of A's memory its loaded segments cost.\n\nOptions:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	st, err := helper.Current()
	if err != nil {
		return fail("status: %v", err)
	}
	out := struct {
		Loaded bool          `json:"loaded"`
		Armed  bool          `json:"armed"`
		Helper *helper.State `json:"helper,omitempty"`
	}{st != nil, st != nil && st.Parked(), st}
	if *asJSON {
		json.NewEncoder(os.Stdout).Encode(out)
		return 0
	}
	switch {
	case st == nil:
		fmt.Println("khib: no helper loaded")
	default:
		state := "loaded, not yet booted"
		if st.Parked() {
			state = "armed (parked after " + fmt.Sprint(st.Jumps) + " jumps)"
		}
		fmt.Printf("khib: helper %s\n  kernel   %s\n  region   %s\n  cost     %.1f MiB of A's memory in %d segments\n",
			state, st.Kernel, st.Region, float64(st.LoadedByte)/(1<<20), st.Segments)
	}
	return 0
}
