package check

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/khib/khib/internal/config"
	"github.com/khib/khib/internal/cpio"
)

// Names of the system-integration checks, in the order System makes them.
const (
	NamePackage   = "package" // the one verdict when khib's package is not installed
	NameGrub      = "grub"
	NameInitramfs = "initramfs"
	NameArm       = "arm"
	NameSleepUnit = "sleep_unit"
	NameLogind    = "logind"
	NameConfig    = "config"
)

// Paths the system checks read, relative to SysEnv.Root.
const (
	pathGrubDropIn   = "/etc/default/grub.d/khib.cfg"
	pathGrubDefault  = "/etc/default/grub"
	pathGrubCfg      = "/boot/grub/grub.cfg"
	pathHookFuncs    = "/usr/share/initramfs-tools/hook-functions"
	pathKhibHook     = "/usr/share/initramfs-tools/hooks/khib"
	pathDpkgList     = "/var/lib/dpkg/info/khib.list"
	pathSystemdRun   = "/run/systemd/system"
	pathArmWants     = "/etc/systemd/system/multi-user.target.wants/khib-arm.service"
	pathPowerState   = "/sys/power/state"
	pathPowerDisk    = "/sys/power/disk"
	khibBinary       = "usr/sbin/khib"
	sleepUnitCommand = "khib hibernate --systemd"
	bypassEnv        = "SYSTEMD_BYPASS_HIBERNATION_MEMORY_CHECK=1"
)

// unitDirs are systemd's system unit directories, highest priority first.
var unitDirs = []string{"/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"}

// SysEnv is what System examines: how khib is wired into an installed
// Debian system. Tests point Root at a fake tree and leave the functions
// nil, which skips what they would tell.
type SysEnv struct {
	Root    string // filesystem root; "" means "/"
	Release string // the running kernel's release, for /boot/initrd.img-RELEASE
	Config  string // the configuration file, default /etc/khib.conf
	// Systemctl runs systemctl with args and returns its standard output.
	Systemctl func(args ...string) (string, error)
	// HelperParked reports whether a helper is loaded and parked.
	HelperParked func() (bool, error)
	// CheckTarget applies khib hibernate's checks to a resolved device.
	CheckTarget func(dev string) error
	// Lsinitramfs lists an initramfs khib cannot decompress itself.
	Lsinitramfs func(path string) ([]string, error)
}

type sysRun struct {
	env       SysEnv
	installed bool
	systemd   bool
}

// System makes the system-integration checks. Each is skipped (OK, with
// Skipped set) when the machine lacks what it is about: khib's package, a
// running systemd, GRUB, initramfs-tools; the busybox test rig has none.
func System(env SysEnv) []Verdict {
	if env.Root == "" {
		env.Root = "/"
	}
	if env.Config == "" {
		env.Config = config.Path
	}
	s := &sysRun{env: env}
	s.installed = s.exists(pathDpkgList) || s.exists(pathKhibHook) || s.exists(config.DefaultHelperKernel)
	s.systemd = s.exists(pathSystemdRun)
	checks := []struct {
		name string
		run  func() Verdict
	}{
		{NameGrub, s.grub}, {NameInitramfs, s.initramfs}, {NameArm, s.arm},
		{NameSleepUnit, s.sleepUnit}, {NameLogind, s.logind}, {NameConfig, s.config},
	}
	if !s.installed {
		return []Verdict{skipped(NamePackage, "khib is not installed as a system tool; install khib_VERSION_amd64.deb (scripts/build-deb.sh) to hibernate with systemctl hibernate and resume from the initramfs")}
	}
	var out []Verdict
	for _, c := range checks {
		out = append(out, c.run())
	}
	return out
}

// Add appends verdicts to rep and updates its overall verdict.
func (rep *Report) Add(vs ...Verdict) {
	for _, v := range vs {
		if v.Unknown {
			v.OK = false
		}
		if !v.OK {
			rep.OK = false
		}
		rep.Checks = append(rep.Checks, v)
	}
}

func skipped(name, why string) Verdict {
	return Verdict{Name: name, OK: true, Skipped: true, Detail: why}
}

func (s *sysRun) path(p string) string { return path.Join(s.env.Root, p) }

func (s *sysRun) exists(p string) bool {
	_, err := os.Stat(s.path(p))
	return err == nil
}

func (s *sysRun) grub() Verdict {
	v := Verdict{Name: NameGrub}
	if !s.exists(pathGrubDefault) && !s.exists(pathGrubCfg) {
		return skipped(v.Name, "no GRUB here (neither /etc/default/grub nor /boot/grub/grub.cfg): the boot loader must pass crashkernel=256M itself")
	}
	dropIn := s.exists(pathGrubDropIn)
	b, err := os.ReadFile(s.path(pathGrubCfg))
	if err != nil {
		v.Unknown = true
		v.Detail = fmt.Sprintf("cannot read %s: %v", pathGrubCfg, err)
		v.Fix = "run khib check as root; if grub.cfg is missing, run update-grub"
		return v
	}
	ck := grubCrashkernel(b)
	switch {
	case ck != "" && dropIn:
		v.OK = true
		v.Detail = fmt.Sprintf("%s is applied: grub.cfg boots Linux with crashkernel=%s", pathGrubDropIn, ck)
	case ck != "":
		v.OK = true
		v.Detail = fmt.Sprintf("grub.cfg boots Linux with crashkernel=%s, set outside khib's drop-in (%s is missing)", ck, pathGrubDropIn)
	case dropIn:
		v.Detail = fmt.Sprintf("%s is installed but not applied: no crashkernel= in %s", pathGrubDropIn, pathGrubCfg)
		v.Fix = "run update-grub and reboot"
	default:
		v.Detail = fmt.Sprintf("no %s and no crashkernel= in %s", pathGrubDropIn, pathGrubCfg)
		v.Fix = "reinstall khib (dpkg -i khib_*.deb puts the drop-in back), then run update-grub and reboot"
	}
	return v
}

// grubCrashkernel returns the crashkernel= value of the first Linux entry
// of a grub.cfg that has one.
func grubCrashkernel(cfg []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(cfg))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || (f[0] != "linux" && f[0] != "linux16" && f[0] != "linuxefi") {
			continue
		}
		for _, w := range f[1:] {
			if v, ok := strings.CutPrefix(w, "crashkernel="); ok {
				return v
			}
		}
	}
	return ""
}

func (s *sysRun) initramfs() Verdict {
	v := Verdict{Name: NameInitramfs}
	if !s.exists(pathHookFuncs) {
		return skipped(v.Name, "initramfs-tools is not installed: stage 1 of a resume lives in its initramfs")
	}
	rel := s.env.Release
	if rel == "" {
		rel = "$(uname -r)"
	}
	img := "/boot/initrd.img-" + rel
	fix := "update-initramfs -u -k " + rel
	names, err := ListInitramfs(s.path(img))
	if errors.Is(err, ErrCompression) && s.env.Lsinitramfs != nil {
		names, err = s.env.Lsinitramfs(s.path(img))
	}
	if errors.Is(err, os.ErrNotExist) {
		v.Detail = fmt.Sprintf("the running kernel has no initramfs %s", img)
		v.Fix = "update-initramfs -c -k " + rel
		return v
	}
	if err != nil {
		v.Unknown = true
		v.Detail = fmt.Sprintf("cannot list %s: %v", img, err)
		v.Fix = "run khib check as root (or install lsinitramfs from initramfs-tools-core)"
		return v
	}
	have := map[string]bool{}
	for _, n := range names {
		have[strings.TrimPrefix(strings.TrimPrefix(n, "./"), "/")] = true
	}
	want := []string{khibBinary, strings.TrimPrefix(config.DefaultHelperKernel, "/")}
	if cfg, err := config.Load(s.path(s.env.Config)); err == nil {
		want = []string{khibBinary, strings.TrimPrefix(cfg.HelperKernel, "/"), strings.TrimPrefix(s.env.Config, "/")}
	}
	var missing []string
	for _, w := range want {
		if !have[w] {
			missing = append(missing, "/"+w)
		}
	}
	if len(missing) > 0 {
		v.Detail = fmt.Sprintf("%s lacks %s, so stage 1 cannot resume", img, strings.Join(missing, ", "))
		v.Fix = fix
		return v
	}
	v.OK = true
	v.Detail = fmt.Sprintf("%s holds khib, the helper kernel and the configuration", img)
	return v
}

func (s *sysRun) arm() Verdict {
	v := Verdict{Name: NameArm}
	if !s.systemd {
		return skipped(v.Name, "systemd is not running here; park the helper with khib arm")
	}
	if _, err := os.Lstat(s.path(pathArmWants)); err != nil {
		v.Detail = "khib-arm.service is not enabled, so no helper is parked at boot"
		v.Fix = "systemctl enable --now khib-arm.service"
		return v
	}
	var notes []string
	if s.env.Systemctl != nil {
		state, _ := s.env.Systemctl("is-active", "khib-arm.service")
		if state = strings.TrimSpace(state); state != "active" {
			v.Detail = fmt.Sprintf("khib-arm.service is enabled but %s", orUnknown(state))
			v.Fix = "systemctl status khib-arm.service says why (often: no crashkernel= region yet, reboot), then systemctl restart khib-arm.service"
			return v
		}
		notes = append(notes, "active")
	}
	if s.env.HelperParked != nil {
		parked, err := s.env.HelperParked()
		if err != nil || !parked {
			v.Detail = "khib-arm.service is enabled, but no helper is parked now (a resume from disk unloads it until it is re-armed)"
			if err != nil {
				v.Detail += ": " + err.Error()
			}
			v.Fix = "systemctl restart khib-arm.service (or khib arm)"
			return v
		}
		notes = append(notes, "helper parked")
	}
	v.OK = true
	v.Detail = "khib-arm.service is enabled"
	if len(notes) > 0 {
		v.Detail += ", " + strings.Join(notes, ", ")
	}
	return v
}

func (s *sysRun) sleepUnit() Verdict {
	v := Verdict{Name: NameSleepUnit}
	if !s.systemd {
		return skipped(v.Name, "systemd is not running here; hibernate with khib hibernate")
	}
	fix := "systemctl daemon-reload; if that does not help, reinstall khib (its drop-in is /usr/lib/systemd/system/systemd-hibernate.service.d/khib.conf) and look for an ExecStart= in /etc/systemd/system/systemd-hibernate.service.d/ that overrides it"
	if s.env.Systemctl != nil {
		out, err := s.env.Systemctl("show", "-p", "ExecStart", "systemd-hibernate.service")
		if err == nil {
			if strings.Contains(out, sleepUnitCommand) {
				v.OK = true
				v.Detail = "systemd-hibernate.service runs " + sleepUnitCommand + ", so systemctl hibernate uses khib"
				return v
			}
			v.Detail = fmt.Sprintf("systemd-hibernate.service does not run khib: %s", clip(strings.TrimSpace(out)))
			v.Fix = fix
			return v
		}
	}
	// Without systemctl: the last ExecStart= of the drop-ins decides.
	for _, d := range unitDirs {
		b, err := os.ReadFile(s.path(d + "/systemd-hibernate.service.d/khib.conf"))
		if err == nil && strings.Contains(string(b), "ExecStart=/usr/sbin/"+sleepUnitCommand) {
			v.OK = true
			v.Detail = fmt.Sprintf("the drop-in %s/systemd-hibernate.service.d/khib.conf makes systemctl hibernate run khib (systemctl not asked)", d)
			return v
		}
	}
	v.Detail = "no drop-in makes systemd-hibernate.service run khib"
	v.Fix = fix
	return v
}

func (s *sysRun) logind() Verdict {
	v := Verdict{Name: NameLogind}
	if !s.systemd {
		return skipped(v.Name, "systemd is not running here, so logind does not decide")
	}
	// logind's CanHibernate (sleep-config.c, systemd 252): "disk" in
	// /sys/power/state, a HibernateMode= of /sys/power/disk, and swap for
	// the kernel's image unless SYSTEMD_BYPASS_HIBERNATION_MEMORY_CHECK.
	state, err := os.ReadFile(s.path(pathPowerState))
	if err != nil || !hasWord(string(state), "disk") {
		v.Detail = fmt.Sprintf("%s offers no \"disk\", so logind refuses systemctl hibernate (Sleep verb \"hibernate\" not supported)", pathPowerState)
		v.Fix = "boot without nohibernate on the kernel command line (and without kernel lockdown, which also forbids kexec_load); the kernel needs CONFIG_HIBERNATION=y, which CONFIG_KEXEC_JUMP implies"
		return v
	}
	disk, err := os.ReadFile(s.path(pathPowerDisk))
	if err != nil || !(hasWord(string(disk), "platform") || hasWord(string(disk), "shutdown")) {
		v.Detail = fmt.Sprintf("%s offers neither platform nor shutdown (systemd's default HibernateMode=), so logind refuses systemctl hibernate", pathPowerDisk)
		v.Fix = "set HibernateMode= in /etc/systemd/sleep.conf to a mode that " + pathPowerDisk + " lists"
		return v
	}
	if s.env.Systemctl == nil {
		v.OK = true
		v.Detail = "the kernel offers hibernation to logind (systemctl not asked about the swap bypass)"
		return v
	}
	env, _ := s.env.Systemctl("show", "-p", "Environment", "systemd-logind.service")
	if !strings.Contains(env, bypassEnv) {
		v.Detail = "systemd-logind.service lacks " + bypassEnv + ", so logind refuses systemctl hibernate when swap is small"
		v.Fix = "systemctl daemon-reload and reboot; reinstall khib if /usr/lib/systemd/system/systemd-logind.service.d/khib.conf is missing"
		return v
	}
	pid, _ := s.env.Systemctl("show", "-p", "MainPID", "--value", "systemd-logind.service")
	pid = strings.TrimSpace(pid)
	if pid != "" && pid != "0" {
		if b, err := os.ReadFile(s.path("/proc/" + pid + "/environ")); err == nil && !bytes.Contains(b, []byte(bypassEnv)) {
			v.Detail = "the running logind started before khib's drop-in and lacks " + bypassEnv
			v.Fix = "reboot (systemctl restart systemd-logind also works, but may end graphical sessions)"
			return v
		}
	}
	v.OK = true
	v.Detail = "logind allows hibernation without swap (" + bypassEnv + ") and the kernel offers it"
	return v
}

func (s *sysRun) config() Verdict {
	v := Verdict{Name: NameConfig}
	cfg, err := config.Load(s.path(s.env.Config))
	switch {
	case errors.Is(err, config.ErrNoFile):
		v.Detail = fmt.Sprintf("no %s, so khib does not know where images go", s.env.Config)
		v.Fix = "khib configure --target PARTUUID=... (a partition this system does not use; lsblk -o NAME,SIZE,PARTUUID,MOUNTPOINTS lists them)"
		return v
	case err != nil:
		v.Detail = err.Error()
		v.Fix = fmt.Sprintf("fix that line of %s, or rewrite it with khib configure --target SPEC", s.env.Config)
		return v
	case cfg.Target == "":
		v.Detail = fmt.Sprintf("%s names no target", s.env.Config)
		v.Fix = "khib configure --target PARTUUID=..."
		return v
	}
	if kind, _, _ := config.ParseSpec(cfg.Target); kind == config.KindUUID || kind == config.KindLabel {
		v.Detail = fmt.Sprintf("target %s names a filesystem, which the first image overwrites; the next boot could not find the image", cfg.Target)
		v.Fix = "khib configure --target " + cfg.Target + " (it writes the partition's PARTUUID= instead)"
		return v
	}
	if _, err := os.Stat(s.path(cfg.HelperKernel)); err != nil {
		v.Detail = fmt.Sprintf("the helper kernel %s is missing", cfg.HelperKernel)
		v.Fix = "reinstall khib, or set helper_kernel with khib configure --helper-kernel FILE"
		return v
	}
	dev, err := config.Resolve(s.env.Root, cfg.Target)
	if err != nil {
		v.Detail = fmt.Sprintf("target %s does not resolve: %v", cfg.Target, err)
		v.Fix = "khib configure --target SPEC with a device that exists"
		return v
	}
	if s.env.CheckTarget != nil {
		if err := s.env.CheckTarget(dev); err != nil {
			v.Detail = fmt.Sprintf("target %s (%s) cannot take an image: %v", cfg.Target, dev, err)
			v.Fix = "khib configure --target SPEC with a partition this system does not use"
			return v
		}
	}
	v.OK = true
	v.Detail = fmt.Sprintf("target %s is %s, codec %s", cfg.Target, strings.TrimPrefix(dev, strings.TrimSuffix(s.env.Root, "/")), cfg.Codec)
	return v
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if strings.Trim(f, "[]") == w {
			return true
		}
	}
	return false
}

func orUnknown(s string) string {
	if s == "" {
		return "in an unknown state"
	}
	return s
}

// ErrCompression means an initramfs segment is compressed with something
// ListInitramfs does not read (xz, lz4, lzma, bzip2, lzop).
var ErrCompression = errors.New("unsupported initramfs compression")

// ListInitramfs lists the names in an initramfs: uncompressed newc
// archives (early microcode) followed by at most one compressed one, gzip
// or zstd (Debian 12's default), as the kernel unpacks them
// (init/initramfs.c: unpack_to_rootfs).
func ListInitramfs(p string) ([]string, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 64<<10)
	var names []string
	for {
		// Archives are padded with NULs between them.
		for {
			b, err := br.Peek(1)
			if err == io.EOF {
				return names, nil
			}
			if err != nil {
				return nil, err
			}
			if b[0] != 0 {
				break
			}
			br.Discard(1)
		}
		magic, err := br.Peek(6)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		var r io.Reader
		last := true
		switch {
		case string(magic) == "070701" || string(magic) == "070702":
			r, last = br, false
		case magic[0] == 0x1f && magic[1] == 0x8b:
			gz, err := gzip.NewReader(br)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			r = gz
		case string(magic[:4]) == "\x28\xb5\x2f\xfd":
			zr, err := zstd.NewReader(br, zstd.WithDecoderMaxMemory(512<<20))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			defer zr.Close()
			r = zr
		default:
			return nil, fmt.Errorf("%s: segment starting % x: %w", p, magic[:4], ErrCompression)
		}
		cr := cpio.NewReader(r)
		for {
			h, err := cr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p, err)
			}
			names = append(names, h.Name)
		}
		if last {
			// Read the compressed stream to its end, which checks its
			// checksum: a truncated initramfs does not boot.
			if _, err := io.Copy(io.Discard, r); err != nil {
				return nil, fmt.Errorf("%s: after the archive: %w", p, err)
			}
			return names, nil
		}
	}
}
