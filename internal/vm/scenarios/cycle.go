package scenarios

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "cycle",
		Description: "hibernate, power off, resume in a new QEMU process on the same disks: the workload's memory and counter, " +
			"and a file appended to on ext4, carry on; the next boot is normal. --overlay/--before/--after run your own software",
		Timeout: 20 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			return runCycles(ctx, env, cycleRun{cycles: 1})
		},
	})
	scenario.Register(scenario.Scenario{
		Name: "cycle-loopback",
		Description: "cycle with a server on loopback started by --before (busybox httpd on 127.0.0.1:8080, " +
			"reached by name through /etc/hosts) that answers with the same page after the resume (--after)",
		Timeout: 20 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			if env.Before == "" && env.After == "" {
				env.Before = loopbackBefore
				env.After = loopbackAfter
			}
			return runCycles(ctx, env, cycleRun{cycles: 1})
		},
	})
	scenario.Register(scenario.Scenario{
		Name: "cycle-armed",
		Description: "cycle with the helper armed (khib arm) before hibernating: the image resumes. A save from the parked " +
			"helper once stored a stale copy of A's kexec control page, and the resumed A triple-faulted",
		Timeout: 20 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			if env.Before == "" {
				env.Before = "khib arm"
			}
			return runCycles(ctx, env, cycleRun{cycles: 1})
		},
	})
	scenario.Register(scenario.Scenario{
		Name: "soak",
		Description: "50 hibernate/resume cycles in a row (--cycles N), each resume in a new QEMU process, under a write-heavy " +
			"workload: 1 KiB records fdatasync'ed to ext4 and acknowledged on the console, and an unsynced bulk writer. " +
			"After every resume each acknowledged record is in the file and the sequence goes on; e2fsck -fn is clean at the end",
		Timeout: 90 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			n := env.Cycles
			if n <= 0 {
				n = 50
			}
			return runCycles(ctx, env, cycleRun{cycles: n, acked: true})
		},
	})
	scenario.Register(scenario.Scenario{
		Name: "resume-corrupt",
		Description: "one byte of page data in the image is flipped, and stage 1 reads every chunk first (khib.verify=full): " +
			"it says so and the machine boots normally, no page restored",
		Timeout: 20 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			return runCycles(ctx, env, cycleRun{cycles: 1, full: true, tp: &tamper{name: "corrupt", fn: corruptChunk, want: "checksum mismatch"}})
		},
	})
	scenario.Register(scenario.Scenario{
		Name: "resume-corrupt-restore",
		Description: "one byte of page data in the image is flipped, and the image is read once (the default): stage 1 finds " +
			"the header, index and metadata intact, the restore helper finds the bad chunk as it restores, says so, marks the " +
			"image used and reboots; the next boot says the image was used and is normal",
		Timeout: 20 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			return runCycles(ctx, env, cycleRun{cycles: 1, tp: &tamper{name: "corrupt", fn: corruptChunk, want: "checksum mismatch", byRestore: true}})
		},
	})
	scenario.Register(scenario.Scenario{
		Name: "resume-foreign",
		Description: "the machine boots another build of the same kernel release (kernel/build.sh's bzImage-rebuilt, " +
			"another build-id): the image is refused and the machine boots normally",
		Timeout: 20 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			other, err := rebuiltKernel(env.Kernel)
			if err != nil {
				return nil, err
			}
			return runCycles(ctx, env, cycleRun{cycles: 1, tp: &tamper{name: "foreign", kernel: other, want: "different kernel"}})
		},
	})
}

// loopbackBefore starts a web server on 127.0.0.1 and fetches a page
// from it by the name localhost; loopbackAfter, after the resume, fetches
// it again from the same server process and checks it is the same page.
const (
	loopbackBefore = `set -e
mkdir -p /tmp/www
head -c 4096 /dev/urandom | md5sum | cut -d' ' -f1 >/tmp/www/index.html
httpd -p 127.0.0.1:8080 -h /tmp/www
sleep 1
wget -q -O /tmp/page.before http://localhost:8080/index.html
cmp /tmp/page.before /tmp/www/index.html
echo "served $(cat /tmp/page.before) on 127.0.0.1:8080"`
	loopbackAfter = `set -e
wget -q -O /tmp/page.after http://127.0.0.1:8080/index.html
cmp /tmp/page.before /tmp/page.after
echo "still served $(cat /tmp/page.after) after the resume"`
)

// tamper changes the image, or the kernel that boots, between
// hibernation and resume; the resume must then be refused with a message
// containing want.
type tamper struct {
	name   string
	fn     func(disk string) (string, error) // changes the image, if set
	kernel string                            // the kernel of the next boot, if set
	want   string
	// byRestore: the restore helper refuses (it reads the chunks), not
	// stage 1; it reboots, and the boot after it must be normal.
	byRestore bool
}

// rebuiltKernel returns the second build kernel/build.sh leaves next to
// the kernel: same source, config and release, another build-id.
func rebuiltKernel(kernel string) (string, error) {
	p := filepath.Join(filepath.Dir(kernel), "bzImage-rebuilt")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no second build of the kernel next to %s (%w): run kernel/build.sh, which makes it", kernel, err)
	}
	return p, nil
}

// cycleScript is A's init. On the first boot it starts the workload and
// an appender on ext4 and hibernates @CYCLES@ times, checking everything
// after each resume. Any later boot that runs this script is a normal
// boot (the resume was refused, or the image was spent): it says so.
const cycleScript = guestPrelude + `
mkdir -p /data
mount -t ext4 /dev/vdb /data || fail mount
if [ -e /data/booted ]; then
	echo "KHIBVM:normal_boot=1"
	@NORMAL_BOOT@
	n=$(khib-workload append-check --file /data/log) && echo "khibvm-normal-boot $n"
	umount /data
	echo "KHIBVM:guest_done=ok"
	poweroff -f
fi
touch /data/booted
@PREPARE@
khib-workload start --mib @MIB@ --seed @SEED@ --mixed --garbage @GARBAGE@ @WORKLOAD_FLAGS@ || fail workload
khib-workload append-start --file /data/log @ACK@ || fail appender
if [ -x /khibvm/before.sh ]; then
	/khibvm/before.sh >/tmp/before.out 2>&1; echo "KHIBVM:before_rc=$?"; tail -n 5 /tmp/before.out | sed 's/^/khibvm-before: /'
fi
sleep 1
for c in $(seq 1 @CYCLES@); do
	# Verified just before, so that the check after resuming also shows
	# the counter went on from where it was.
	khib-workload verify || fail verify-before$c
	echo "khibvm-swapped-out $(awk '/^SwapTotal/{t=$2} /^SwapFree/{f=$2} END{print t-f}' /proc/meminfo)"
	echo "khibvm-hibernate-start $c"
	khib hibernate --target '@TARGET@' >/tmp/h.out 2>/tmp/h.err
	rc=$?
	echo "khibvm-resumed $c"
	echo "KHIBVM:hibernate${c}_rc=$rc"
	sed 's/^/khibvm-out: /' /tmp/h.out; sed 's/^/khibvm-stderr hibernate: /' /tmp/h.err
	[ $rc = 0 ] || fail hibernate$c
	khib-workload verify || fail verify$c
	echo "khibvm-workload-verified $c"
	sleep 1
	out=$(khib-workload append-check --file /data/log) || fail append-check$c
	echo "khibvm-append-check $c $out"
	echo "a" > /tmp/probe && cat /tmp/probe >/dev/null || fail tmpfs$c
	@AFTER_RESUME@
done
# The file survives a clean unmount and can still be appended to.
khib-workload append-stop || fail append-stop
umount /data || fail umount
mount -t ext4 /dev/vdb /data || fail remount
khib-workload append-check --file /data/log || fail append-check-remount
khib-workload append-start --file /data/log || fail append-restart
sleep 1
khib-workload append-stop || fail append-stop2
out=$(khib-workload append-check --file /data/log) || fail append-check-final
echo "khibvm-append-final $out"
umount /data
if [ -x /khibvm/after.sh ]; then
	/khibvm/after.sh >/tmp/after.out 2>&1; echo "KHIBVM:after_rc=$?"; tail -n 5 /tmp/after.out | sed 's/^/khibvm-after: /'
fi
echo "KHIBVM:guest_done=ok"
poweroff -f
`

var (
	hibStartRE   = regexp.MustCompile(`^khibvm-hibernate-start (\d+)`)
	resumedRE    = regexp.MustCompile(`^khibvm-resumed (\d+)`)
	verifiedRE   = regexp.MustCompile(`^khibvm-workload-verified (\d+)`)
	normalBootRE = regexp.MustCompile(`KHIBVM:normal_boot=1`)
	stage1RE     = regexp.MustCompile(`^khib: (NOT resuming|no hibernation image|the hibernation image .* used by an earlier boot)`)
	restoreRE    = regexp.MustCompile(`^khib-restore: `)
	backAfterRE  = regexp.MustCompile(`khibvm-out: khib: .*back after ([0-9.]+) s away`)
	khibPhasesRE = regexp.MustCompile(`^khibvm-stderr hibernate: khib: phases: (.*)`)
	userLineRE   = regexp.MustCompile(`^khibvm-(before|after): (.*)$`)
)

// ackFlag makes the appender acknowledge each fdatasync'ed record on the
// console, where the host reads it (ackRE).
const ackFlag = "--ack /dev/console"

var (
	ackRE         = regexp.MustCompile(`^khib-ack (\d+)$`)
	appendCheckRE = regexp.MustCompile(`^khibvm-append-(check (\d+)|final) appender: \S+ holds lines 1\.\.(\d+) in order`)
)

// maxAck is the highest record acknowledged on the machines' consoles.
func maxAck(machines ...*vm.Machine) int {
	top := 0
	for _, m := range machines {
		for _, l := range m.Lines() {
			if mm := ackRE.FindStringSubmatch(l.Text); mm != nil {
				var n int
				fmt.Sscan(mm[1], &n)
				top = max(top, n)
			}
		}
	}
	return top
}

// appendChecks returns the records the guest found in its file after
// resume c (key c), and at the end (key 0).
func appendChecks(m *vm.Machine) map[int]int {
	out := map[int]int{}
	for _, l := range m.Lines() {
		if mm := appendCheckRE.FindStringSubmatch(l.Text); mm != nil {
			var c, n int
			if mm[2] != "" {
				fmt.Sscan(mm[2], &c)
			}
			fmt.Sscan(mm[3], &n)
			out[c] = n
		}
	}
	return out
}

// fsckClean runs e2fsck -fn on an ext4 image the guest has unmounted and
// whose QEMU has exited.
func fsckClean(disk string) error {
	out, err := exec.Command("e2fsck", "-fn", disk).CombinedOutput()
	if err != nil {
		return fmt.Errorf("e2fsck -fn %s: %v\n%s", disk, err, out)
	}
	return nil
}

func cycleRootfs(env *scenario.Env, cycles int, acked bool, tgt *cycleTarget) (string, error) {
	if tgt == nil {
		tgt = deviceTarget
	}
	script := workloadScript(cycleScript, workloadMiB(env, tgt.workload), "@CYCLES@", fmt.Sprint(cycles),
		"@ACK@", map[bool]string{true: ackFlag}[acked], "@TARGET@", tgt.guest, "@PREPARE@", tgt.prepare,
		"@AFTER_RESUME@", tgt.afterResume, "@WORKLOAD_FLAGS@", tgt.workloadFlags,
		"@NORMAL_BOOT@", tgt.normalBoot)
	rfs, err := khibGuest(env, script)
	if err != nil {
		return "", err
	}
	if env.Overlay != "" {
		if err := addOverlay(rfs, env.Overlay); err != nil {
			return "", err
		}
	}
	if tgt.rootfs != nil {
		tgt.rootfs(rfs)
	}
	for name, cmd := range map[string]string{"before": env.Before, "after": env.After} {
		if cmd != "" {
			rfs.AddFile("/khibvm/"+name+".sh", 0o755, []byte("#!/bin/sh\n"+cmd+"\n"))
		}
	}
	return env.WriteRootfs("a.cpio", rfs)
}

// addOverlay adds every file under dir to the root filesystem at the same
// path relative to dir.
func addOverlay(rfs *vm.Rootfs, dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		guest := "/" + filepath.ToSlash(rel)
		switch {
		case d.IsDir():
			rfs.AddDir(guest, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			rfs.AddSymlink(guest, t)
		default:
			return rfs.AddHostFile(guest, p)
		}
		return nil
	})
}

func newDataDisk(env *scenario.Env, mib int) (string, error) {
	p, err := env.NewDisk("data.img", max(mib, 64))
	if err != nil {
		return "", err
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", p).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mkfs.ext4 (apt-get install e2fsprogs): %v\n%s", err, out)
	}
	return p, nil
}

// runCycles drives the boots of a hibernate/resume scenario: boot 1 starts
// the workload and hibernates; each later boot resumes (or, with tamper,
// must refuse to); a last boot must be normal.
// cycleRun says what runCycles does: how many cycles, with what tamper
// before the first resume, and whether the appender acknowledges fsync'ed
// records (which every later check then holds it to).
type cycleRun struct {
	cycles int
	tp     *tamper
	acked  bool
	full   bool // khib.verify=full: stage 1 reads every chunk before it loads C
	tgt    *cycleTarget
}

func runCycles(ctx context.Context, env *scenario.Env, run cycleRun) (scenario.Result, error) {
	cycles, tp := run.cycles, run.tp
	res := scenario.Result{"workload_mib": workloadMiB(env, 256), "cycles": cycles}
	tgt := run.tgt
	if tgt == nil {
		tgt = deviceTarget
	}
	res["workload_mib"] = workloadMiB(env, tgt.workload)
	if tgt != deviceTarget {
		res["target"] = tgt.name
	}
	initrd, err := cycleRootfs(env, cycles, run.acked, tgt)
	if err != nil {
		return res, err
	}
	// Sparse, and large enough for an image of all of A's RAM.
	imgDisk, err := env.NewDisk("image.img", max(1024, env.MemMiB+256))
	if err != nil {
		return res, err
	}
	dataDisk, err := newDataDisk(env, tgt.dataMiB)
	if err != nil {
		return res, err
	}
	cfg := env.Config()
	cfg.Initrd = initrd
	region := RegionSize
	if tgt.region != "" {
		region = tgt.region
	}
	if env.Region != "" {
		region = env.Region
		res["region"] = region
	}
	base := khibAppend(region) + tgt.extraAppend
	if tgt.netdev {
		cfg.Extra = append(cfg.Extra, "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac="+s3MAC)
	}
	if run.full {
		base += " khib.verify=full"
	}
	// The first boot resumes nothing; a target whose place A learns only
	// when it prepares it (a file's blocks) is named to the later boots.
	resumeSpec := tgt.resume
	cfg.Append = base + " khib.resume=" + resumeSpec
	if resumeSpec == "" {
		cfg.Append = base + " khib.resume=off"
	}
	cfg.Disks = []vm.Disk{{Path: imgDisk}, {Path: dataDisk}}
	if tgt.extraDisk != nil {
		d, err := tgt.extraDisk(env)
		if err != nil {
			return res, err
		}
		cfg.Disks = append(cfg.Disks, d)
	}
	say := func(format string, a ...any) {
		if env.Demo {
			env.Logf(format, a...)
		}
	}

	say("boot 1: A starts a %d MiB workload and appends to a file on ext4, then hibernates", workloadMiB(env, 256))
	m, err := env.Start(ctx, "boot1", cfg)
	if err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, tgt.firstBoot, env.Remaining()); err != nil {
		return res, fmt.Errorf("boot 1: stage 1 did not report an empty resume target: %w", err)
	}
	var hib, resume, away, sizes []float64
	var hibPhases, resPhases [][]Phase
	for c := 1; c <= cycles; c++ {
		start, err := m.WaitFor(ctx, hibStartRE, env.Remaining())
		if err != nil {
			return res, err
		}
		exit, err := m.WaitPowerOff(env.Remaining())
		if err != nil {
			return res, fmt.Errorf("hibernation %d: %w", c, err)
		}
		if countLines(m, imageCompleted) != 1 {
			return res, fmt.Errorf("hibernation %d: the helper did not report a complete image", c)
		}
		hib = append(hib, (exit.At - start.At).Seconds())
		if ph, err := splitPhases(m, regexp.MustCompile(fmt.Sprintf(`^khibvm-hibernate-start %d$`, c)), khibHibernateMarkers); err == nil {
			hibPhases = append(hibPhases, ph)
		} else {
			env.Logf("hibernation %d: %v", c, err)
		}
		if c == 1 {
			if l := lastLine(m, `^workload: pid`); l != "" {
				say("A: %s", l)
			}
		}
		if l := lastLine(m, `^khib-helper: image complete on`); l != "" {
			say("helper: %s", strings.TrimPrefix(l, "khib-helper: "))
		}
		if resumeSpec == "" {
			fig := scenario.Figures(m)
			if resumeSpec = figureString(fig, "resume"); resumeSpec == "" {
				return res, fmt.Errorf("hibernation %d: A did not report where the next boot finds the %s target (KHIBVM:resume=)", c, tgt.name)
			}
			res["resume_spec"] = resumeSpec
			cfg.Append = base + " khib.resume=" + resumeSpec
		}
		where := imgDisk
		if tgt.hostImage != nil {
			if where, err = tgt.hostImage(env, cfg.Disks, resumeSpec); err != nil {
				return res, fmt.Errorf("hibernation %d: %w", c, err)
			}
		}
		ins, err := inspectImage(env, where)
		if err != nil {
			return res, fmt.Errorf("hibernation %d: %w", c, err)
		}
		if tgt.checkImage != nil {
			if err := tgt.checkImage(m, res); err != nil {
				return res, fmt.Errorf("hibernation %d: %w", c, err)
			}
		}
		sizes = append(sizes, float64(ins.ImageBytes)/(1<<20))
		say("hibernation %d: %.1f s from command to power-off, image %.1f MiB", c, hib[c-1], sizes[c-1])

		if tp != nil {
			if tp.fn != nil {
				what, err := tp.fn(cfg.Disks[tgt.imageDisk].Path)
				if err != nil {
					return res, fmt.Errorf("%s: %w", tp.name, err)
				}
				res["tampered"] = what
				say("tampered with the image: %s", what)
			}
			if tp.kernel != "" {
				cfg.Kernel = tp.kernel
				res["next_kernel"] = tp.kernel
				say("the next boot runs another build of the kernel: %s", tp.kernel)
			}
			return res, checkRefused(ctx, env, cfg, tp, res)
		}

		if tgt.beforeResume != nil {
			if err := tgt.beforeResume(env, &cfg, res); err != nil {
				return res, err
			}
		}
		name := fmt.Sprintf("boot%d", c+1)
		say("%s: a new QEMU process powers on and resumes", name)
		m, err = env.Start(ctx, name, cfg)
		if err != nil {
			return res, err
		}
		v, err := m.WaitFor(ctx, verifiedRE, env.Remaining())
		if err != nil {
			return res, fmt.Errorf("resume %d: %w", c, err)
		}
		resume = append(resume, v.At.Seconds())
		if ph, err := splitPhases(m, nil, append(khibResumeMarkers, mk("khib hibernate returns", fmt.Sprintf(`^khibvm-resumed %d$`, c)))); err == nil {
			resPhases = append(resPhases, phaseAt(ph, "(the test's check of the workload)", 0, v.At))
		} else {
			env.Logf("resume %d: %v", c, err)
		}
		if countLines(m, restoreRE) == 0 {
			return res, fmt.Errorf("resume %d: the workload verified but no restore helper ran", c)
		}
		if run.acked {
			machines := env.Machines()
			acked := maxAck(machines[:len(machines)-1]...)
			if _, err := m.WaitFor(ctx, regexp.MustCompile(fmt.Sprintf(`^khibvm-append-check %d `, c)), env.Remaining()); err != nil {
				return res, fmt.Errorf("resume %d: no check of the appended file: %w", c, err)
			}
			got, ok := appendChecks(m)[c]
			if !ok || got < acked {
				return res, fmt.Errorf("resume %d: the file holds records 1..%d, but %d were acknowledged before the hibernation", c, got, acked)
			}
			say("resume %d: the file holds records 1..%d; %d were acknowledged before", c, got, acked)
		}
		backHere, khibPhases := false, ""
		for _, l := range m.Lines() {
			if mm := backAfterRE.FindStringSubmatch(l.Text); mm != nil {
				var f float64
				fmt.Sscan(mm[1], &f)
				away = append(away, f)
				backHere = true
			}
			if mm := khibPhasesRE.FindStringSubmatch(l.Text); mm != nil {
				khibPhases = mm[1]
			}
		}
		// khib's own account of where the time went, each phase timed by
		// the kernel that ran it: B's save and C's restore must be in it.
		if backHere {
			for _, want := range []string{"A: loads the helper", "B: saves", "stage 1: finds and checks the image", "C: finds the image, restores A's pages"} {
				if !strings.Contains(khibPhases, want) {
					return res, fmt.Errorf("resume %d: khib hibernate's phases lack %q: %q", c, want, khibPhases)
				}
			}
			res["khib_phases"] = khibPhases
		}
		for _, pat := range []string{`^khib: image intact`, `^khib-restore: A's memory restored`, `^khibvm-out: khib: resumed`, `^workload: verified`} {
			if l := lastLine(m, pat); l != "" {
				say("  %s", strings.TrimPrefix(l, "khibvm-out: "))
			}
		}
		say("resume %d: %.1f s from power-on to the workload verified (memory, counter)", c, resume[c-1])
	}
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return res, err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return res, err
	}
	fig := scenario.Figures(m)
	if figureString(fig, "guest_done") != "ok" {
		return res, fmt.Errorf("A failed at %q after resuming", figureString(fig, "failed_step"))
	}
	ok := userCommands(env.Machines(), res)
	if run.acked {
		acked := maxAck(env.Machines()...)
		got, have := appendChecks(m)[0]
		if !have || got < acked {
			return res, fmt.Errorf("at the end the file holds records 1..%d, but %d were acknowledged", got, acked)
		}
		res["acked_writes"], res["records_on_disk"], res["lost_writes"] = acked, got, 0
	}

	// One more boot: the image is spent, so it must be a normal one.
	say("boot %d: the image was used, so this boot must be normal", cycles+2)
	m, err = env.Start(ctx, fmt.Sprintf("boot%d", cycles+2), cfg)
	if err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, normalBootRE, env.Remaining()); err != nil {
		return res, fmt.Errorf("the boot after the resume was not a normal one: %w", err)
	}
	if _, err := m.WaitPowerOff(env.Remaining()); err != nil {
		return res, err
	}
	if countLines(m, restoreRE) != 0 || countLines(m, tgt.spentRE) != 1 {
		return res, fmt.Errorf("the boot after the resume did not say that the image was spent (%s)", tgt.spentRE)
	}
	if err := fsckClean(cfg.Disks[1].Path); err != nil {
		return res, err
	}
	if tgt.finalCheck != nil {
		if err := tgt.finalCheck(cfg.Disks); err != nil {
			return res, err
		}
	}
	res["fsck"] = "clean"
	res["hibernate_s"] = scenario.Round3(median(hib))
	res["resume_s"] = scenario.Round3(median(resume))
	res["away_s"] = scenario.Round3(median(away))
	res["image_mib"] = scenario.Round3(median(sizes))
	res["hibernate_phases"], res["resume_phases"] = medianPhases(hibPhases), medianPhases(resPhases)
	if env.Demo {
		env.Logf("%s", phaseTable("hibernate, command to power-off, by phase", medianPhases(hibPhases)))
		env.Logf("%s", phaseTable("resume, power-on to workload verified, by phase", medianPhases(resPhases)))
	}
	if cycles > 1 {
		res["hibernate_all_s"], res["resume_all_s"] = rounded(hib), rounded(resume)
		res["hibernate_dist_s"], res["resume_dist_s"] = distribution(hib), distribution(resume)
	}
	say("workload verified after every resume; the ext4 file is whole and still appendable; the next boot was normal")
	if !ok {
		return res, fmt.Errorf("a user command failed: before %v, after %v", res["before_rc"], res["after_rc"])
	}
	return res, nil
}

// userCommands puts the --before/--after exit statuses and last lines in
// the result, and reports whether both succeeded.
func userCommands(machines []*vm.Machine, res scenario.Result) bool {
	ok := true
	lines := taggedLines(userLineRE, machines...)
	fig := scenario.Result{}
	for _, m := range machines {
		fig.Merge(scenario.Figures(m))
	}
	for _, k := range []string{"before", "after"} {
		if v, have := fig[k+"_rc"]; have {
			res[k+"_rc"] = v
			res[k+"_tail"] = lines[k]
			ok = ok && fmt.Sprint(v) == "0"
		}
	}
	return ok
}

// foreignRE reads stage 1's reason for refusing another kernel's image.
var foreignRE = regexp.MustCompile(`saved by (\S+) build ([0-9a-f]+), this is (\S+) build ([0-9a-f]+)`)

// checkRefused boots after tampering: stage 1 must refuse with a reason
// containing tp.want, C must never start, and the boot must be normal.
func checkRefused(ctx context.Context, env *scenario.Env, cfg vm.Config, tp *tamper, res scenario.Result) error {
	if tp.byRestore {
		return checkRefusedByRestore(ctx, env, cfg, tp, res)
	}
	m, err := env.Start(ctx, "boot2", cfg)
	if err != nil {
		return err
	}
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return err
	}
	res["message"] = refusalMessage(m)
	if res["message"] == "" || !strings.Contains(res["message"].(string), tp.want) {
		return fmt.Errorf("stage 1 did not refuse with %q; it said %q", tp.want, res["message"])
	}
	if tp.kernel != "" {
		// Same release on both sides: the build-id alone told them apart.
		mm := foreignRE.FindStringSubmatch(res["message"].(string))
		if mm == nil || mm[1] != mm[3] || mm[2] == mm[4] {
			return fmt.Errorf("the refusal does not show one release with two build-ids: %q", res["message"])
		}
		res["release"], res["image_build_id"], res["kernel_build_id"] = mm[1], mm[2], mm[4]
	}
	if countLines(m, restoreRE) != 0 || countLines(m, resumedRE) != 0 {
		return fmt.Errorf("the restore helper ran or A came back despite the %s image", tp.name)
	}
	if countLines(m, normalBootRE) != 1 {
		return fmt.Errorf("the boot after the refusal was not normal")
	}
	return nil
}

// checkRefusedByRestore boots after tampering with a chunk: stage 1 must
// let the image through to C, C must refuse with a reason containing
// tp.want and reboot, and the boot after it must be normal, saying the
// image was used, with no restore helper and A not back.
func checkRefusedByRestore(ctx context.Context, env *scenario.Env, cfg vm.Config, tp *tamper, res scenario.Result) error {
	m, err := env.Start(ctx, "boot2", cfg)
	if err != nil {
		return err
	}
	if _, err := m.WaitFor(ctx, regexp.MustCompile(`^khib-restore: NOT resuming`), env.Remaining()); err != nil {
		return fmt.Errorf("the restore helper did not refuse the %s image: %w", tp.name, err)
	}
	exit, err := m.Wait(time.Minute)
	if err != nil {
		return err
	}
	if !exit.Rebooted {
		return fmt.Errorf("after refusing, the restore helper did not reboot: %s (console %s)", exit, m.LogPath())
	}
	res["message"] = paragraph(m, "khib-restore: NOT resuming")
	if !strings.Contains(res["message"].(string), tp.want) {
		return fmt.Errorf("the restore helper did not refuse with %q; it said %q", tp.want, res["message"])
	}
	if countLines(m, resumedRE) != 0 {
		return fmt.Errorf("A came back despite the %s image", tp.name)
	}
	res["refused_by"] = "restore helper"
	m, err = env.Start(ctx, "boot3", cfg)
	if err != nil {
		return err
	}
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return err
	}
	if countLines(m, usedRE) != 1 || countLines(m, restoreRE) != 0 || countLines(m, normalBootRE) != 1 {
		return fmt.Errorf("the boot after the restore helper's refusal was not a normal one that says the image was used (console %s)", m.LogPath())
	}
	return nil
}

// corruptChunk flips one byte in the middle of a chunk's page data.
func corruptChunk(disk string) (string, error) {
	return corruptChunkIn(disk, 0, -1)
}

// corruptChunkIn is corruptChunk for an image that starts at byte base of
// disk and is size bytes long (-1: to the end), a partition say.
func corruptChunkIn(disk string, base, size int64) (string, error) {
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if size < 0 {
		st, err := f.Stat()
		if err != nil {
			return "", err
		}
		size = st.Size() - base
	}
	rd, err := image.Open(io.NewSectionReader(f, base, size), size)
	if err != nil {
		return "", err
	}
	chunks := rd.Chunks()
	if len(chunks) == 0 {
		return "", fmt.Errorf("image has no chunks")
	}
	k := len(chunks) / 2
	c := chunks[k]
	// The payload follows the 32-byte chunk header (docs/image-format.md);
	// flip a byte in its middle.
	off := base + int64(c.Offset) + 32 + int64(c.Stored)/2
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		return "", err
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		return "", err
	}
	return fmt.Sprintf("flipped byte at offset %#x in chunk %d", off, k), f.Sync()
}

// distribution is the minimum, median, 90th percentile and maximum of v.
func distribution(v []float64) map[string]float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return nil
	}
	p90 := s[min(len(s)-1, (len(s)*9+9)/10-1)]
	return map[string]float64{"min": scenario.Round3(s[0]), "median": scenario.Round3(median(s)),
		"p90": scenario.Round3(p90), "max": scenario.Round3(s[len(s)-1])}
}

func rounded(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = scenario.Round3(x)
	}
	return out
}

// lastLine returns the last console line matching pattern, or "".
func lastLine(m *vm.Machine, pattern string) string {
	re := regexp.MustCompile(pattern)
	out := ""
	for _, l := range m.Lines() {
		if re.MatchString(l.Text) {
			out = l.Text
		}
	}
	return out
}
