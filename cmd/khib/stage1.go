package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/khib/khib/internal/config"
	"github.com/khib/khib/internal/helper"
)

const resumeStage1Help = `Usage: khib resume-stage1 [--config FILE] [--timeout DURATION]

Stage 1 of a resume, run by khib's initramfs-tools boot script
(/usr/share/initramfs-tools/scripts/local-premount/khib) before the root
filesystem is mounted, the place where Debian's own resume script runs.

It finds the target device: khib.resume=SPEC on the kernel command line,
or else target in the configuration (FILE, default /etc/khib.conf, which
khib's hook copies into the initramfs). SPEC is UUID=, PARTUUID=, LABEL=,
PARTLABEL= or a /dev path; khib resolves it itself, waiting up to DURATION
for the device to appear. khib.resume=off or noresume on the command line
disables resuming.

If the device holds a complete image made by this very kernel build on
this machine, khib checks its header, index and metadata and kexecs the
restore helper (helper_kernel, default /usr/lib/khib/bzImage, also copied
into the initramfs). It writes A's memory back, checking every chunk as
it reads it, marks the image used at the last moment (a system is never
resumed twice, and a power cut during the restore leaves the image
resumable), and jumps into A, which carries on from its hibernation. This
command then never returns. If the restore helper finds a bad chunk, it
says so, marks the image used and reboots into a normal boot;
khib.verify=full on the kernel command line makes stage 1 read every chunk
first instead, so that such an image is refused before any page is
written, at the cost of reading the image twice.

In every other case it prints one paragraph saying why on the console and
exits 0, so that the boot goes on normally. It writes nothing at all: the
target is opened read-only, and the root filesystem is not even mounted
yet. It refuses to run outside an initramfs (when / is not the
initramfs's rootfs), since restoring an old memory image under a running
system would corrupt its filesystems.

Options:
`

func cmdResumeStage1(args []string) int {
	fs := flag.NewFlagSet("resume-stage1", flag.ContinueOnError)
	cfgPath := fs.String("config", config.Path, "the configuration file, as copied into the initramfs")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the target device to appear")
	fs.Usage = func() { fmt.Fprint(os.Stderr, resumeStage1Help); fs.PrintDefaults() }
	if code, ok := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "khib resume-stage1: takes no arguments (see khib resume-stage1 --help)")
		return 2
	}
	if os.Geteuid() != 0 {
		return fail("resume-stage1: must run as root, from the initramfs")
	}
	fstype, err := rootFSType("/proc/self/mountinfo")
	if err != nil {
		return fail("resume-stage1: cannot tell what / is: %v; this runs only in the initramfs, before the root filesystem is mounted", err)
	}
	if !initramfsRoot(fstype, "/") {
		return fail("resume-stage1: / is %s, not the initramfs's rootfs: this runs only in the initramfs, before the root filesystem is mounted", fstype)
	}
	cfg, cfgErr := config.Load(*cfgPath)
	if cfgErr != nil && !errors.Is(cfgErr, config.ErrNoFile) {
		console("khib: ignoring the configuration: %v", cfgErr)
	}
	spec, skip := stage1Spec(kernelParams(), cfg, *cfgPath)
	if skip != "" {
		console("khib: not resuming: %s.", skip)
		return 0
	}
	kernel := helper.DefaultKernel()
	if cfg != nil {
		kernel = cfg.HelperKernel
	}
	if cfg != nil {
		stage1Net = cfg.Net
	}
	dev, sp, err := locateResume(spec, *timeout)
	if err != nil {
		console("khib: NOT resuming: cannot find the hibernation target %s: %v\n"+
			"  Booting normally. Check the target with khib configure --target SPEC once the system is up.", spec, err)
		return 0
	}
	if _, err := os.Stat(kernel); err != nil {
		console("khib: NOT resuming from %s: the restore helper's kernel %s is not in this initramfs (%v).\n"+
			"  Booting normally; nothing of the image was touched. Run update-initramfs -u (khib's hook copies it) and hibernate again.", dev, kernel, err)
		return 0
	}
	resumeFrom(dev, sp, kernel)
	return 0
}

// stage1Spec decides what stage 1 resumes from: the kernel command line
// first (so that one boot can override or disable it from the boot
// loader), then the configuration. A non-empty skip says why not at all.
func stage1Spec(params map[string]string, cfg *config.Config, cfgPath string) (spec, skip string) {
	if _, ok := params["noresume"]; ok {
		return "", "noresume is on the kernel command line"
	}
	switch v, ok := params["khib.resume"]; {
	case ok && (v == "off" || v == "none" || v == "0"):
		return "", "khib.resume=" + v + " is on the kernel command line"
	case ok && v != "":
		return v, ""
	}
	if cfg != nil && cfg.Resume != "" {
		return cfg.Resume, ""
	}
	if cfg != nil && cfg.Target != "" {
		return cfg.Target, ""
	}
	return "", fmt.Sprintf("no target: neither khib.resume= on the kernel command line nor target in %s (khib configure --target SPEC writes it)", cfgPath)
}

// initramfsRoot reports whether a root of this type, with these files, is
// an initramfs: the kernel's rootfs, or a tmpfs or ramfs holding
// initramfs-tools' /scripts/local (should a kernel report it by its
// underlying type).
func initramfsRoot(fstype, root string) bool {
	if fstype == "rootfs" {
		return true
	}
	if fstype == "tmpfs" || fstype == "ramfs" {
		_, err := os.Stat(root + "scripts/local")
		return err == nil
	}
	return false
}

// rootFSType returns the filesystem type mounted on / in mountinfo. In an
// initramfs it is "rootfs" (the kernel's ramfs or tmpfs instance that the
// initramfs was unpacked into).
func rootFSType(mountinfo string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fstype := ""
	s := bufio.NewScanner(f)
	for s.Scan() {
		// 22 1 0:1 / / rw shared:1 - rootfs rootfs rw
		pre, post, ok := strings.Cut(s.Text(), " - ")
		fields, after := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(after) < 1 || fields[4] != "/" {
			continue
		}
		fstype = after[0] // the last mount on / is the one in use
	}
	if err := s.Err(); err != nil {
		return "", err
	}
	if fstype == "" {
		return "", fmt.Errorf("no mount on / in %s", mountinfo)
	}
	return fstype, nil
}
