package scenarios

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "bench-hibernate",
		Description: "benchmark, not a test: khib against Linux's own hibernation (swsusp, lzo, to swap) in the same VM " +
			"and the same run: hibernate and resume times, image sizes, and their ratios",
		Timeout: 30 * time.Minute,
		Run:     runBenchHibernate,
	})
}

// benchHibScript hibernates A with khib or with swsusp, by the phase on
// the command line. After a resume the script goes on from the hibernate
// command; a script that starts on a resume boot means the resume failed.
const benchHibScript = guestPrelude + `
phase=$(sed -n 's/.*khibvm.phase=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
mib=$(sed -n 's/.*khibvm.mib=\([0-9]*\).*/\1/p' /proc/cmdline)
if grep -q "khibvm.boot=2" /proc/cmdline; then
	fail resume-$phase
fi
khib-workload start --mib $mib --seed @SEED@ --mixed --garbage @GARBAGE@ || fail workload
khib-workload verify || fail verify-before
if [ "$phase" = swsusp ]; then
	mkswap /dev/vdb >/dev/null || fail mkswap
	swapon /dev/vdb || fail swapon
	echo shutdown > /sys/power/disk
fi
echo "khibvm-hibernate-start $phase"
if [ "$phase" = swsusp ]; then
	echo disk > /sys/power/state || echo "khibvm-swsusp-error $?"
else
	khib hibernate --target /dev/vda
fi
echo "khibvm-resumed $phase rc=$?"
# swsusp first makes room by swapping memory out; that is written too.
# (No /proc/vmstat event counters in this kernel: read swap in use.)
echo "KHIBVM:swap_used_kb=$(awk '/^SwapTotal/{t=$2} /^SwapFree/{f=$2} END{print t-f}' /proc/meminfo)"
khib-workload verify || fail verify-after
echo "khibvm-workload-verified $phase"
echo "KHIBVM:guest_done=ok"
poweroff -f
`

var (
	swsuspImageRE = regexp.MustCompile(`PM: Image size after compression: (\d+) kbytes`)
	khibImageRE   = regexp.MustCompile(`image complete on .*, ([0-9.]+) MiB stored`)
)

func runBenchHibernate(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	mib := workloadMiB(env, 400)
	b, err := newBenchHib(env, mib)
	if err != nil {
		return nil, err
	}
	res := scenario.Result{"workload_mib": mib, "smp": env.SMP}
	for _, system := range []string{"khib", "swsusp"} {
		r, err := b.run(ctx, env, system, mib, system)
		if err != nil {
			return res, err
		}
		if r.failed != "" {
			return res, fmt.Errorf("%s: %s", system, r.failed)
		}
		res[system+"_hibernate_s"] = scenario.Round3(r.hibernateS)
		res[system+"_resume_s"] = scenario.Round3(r.resumeS)
		res[system+"_resume_verified_s"] = scenario.Round3(r.verifiedS)
		res[system+"_image_mib"] = scenario.Round3(r.imageMiB)
		res[system+"_swapped_out_mib"] = scenario.Round3(r.swappedMiB)
		res[system+"_written_mib"] = scenario.Round3(r.imageMiB + r.swappedMiB)
		res[system+"_hibernate_phases"], res[system+"_resume_phases"] = r.hibPhases, r.resPhases
		env.Logf("%-6s: hibernate %.1f s (command to power-off), resume %.1f s (power-on to tasks running; %.1f s to the workload verified), image %.1f MiB + %.1f MiB swapped out first",
			system, r.hibernateS, r.resumeS, r.verifiedS, r.imageMiB, r.swappedMiB)
	}
	ratio := func(k string) {
		a, b := res["khib_"+k].(float64), res["swsusp_"+k].(float64)
		if b > 0 {
			res["khib_vs_swsusp_"+k] = scenario.Round3(a / b)
		}
	}
	ratio("hibernate_s")
	ratio("resume_s")
	ratio("written_mib")
	env.Logf("khib / swsusp: hibernate %.2f, resume %.2f, bytes written %.2f",
		res["khib_vs_swsusp_hibernate_s"], res["khib_vs_swsusp_resume_s"], res["khib_vs_swsusp_written_mib"])
	return res, nil
}

// benchHib is the machine both systems hibernate on: the same initramfs,
// disks and command line but for the system and the size.
type benchHib struct {
	initrd, imgDisk, swapDisk string
}

func newBenchHib(env *scenario.Env, maxMiB int) (*benchHib, error) {
	rfs, err := khibGuest(env, workloadScript(benchHibScript, 0))
	if err != nil {
		return nil, err
	}
	initrd, err := env.WriteRootfs("a.cpio", rfs)
	if err != nil {
		return nil, err
	}
	// Sparse, and large enough for all of A's RAM either way.
	size := max(1024, env.MemMiB+256)
	imgDisk, err := env.NewDisk("image.img", size)
	if err != nil {
		return nil, err
	}
	swapDisk, err := env.NewDisk("swap.img", size)
	if err != nil {
		return nil, err
	}
	return &benchHib{initrd, imgDisk, swapDisk}, nil
}

// benchRun is one hibernate and resume of one system.
type benchRun struct {
	hibernateS, resumeS, verifiedS float64
	imageMiB, swappedMiB           float64
	hibPhases, resPhases           []Phase
	failed                         string // why the system could not hibernate or resume at this size
}

var hibFailRE = regexp.MustCompile(`khibvm-resumed \S+ rc=[1-9]|PM: hibernation: .*[Ee]rror|Error -?\d+ creating image|KHIBVM:failed_step|khibvm-swsusp-error`)

// run hibernates system ("khib" or "swsusp") with a workload of mib MiB
// and resumes it in a new QEMU process. A system that cannot do it at
// this size (swsusp's image must fit in half of RAM) gives failed, not an
// error.
func (b *benchHib) run(ctx context.Context, env *scenario.Env, system string, mib int, name string) (benchRun, error) {
	var r benchRun
	cfg := env.Config()
	cfg.Initrd = b.initrd
	cfg.Disks = []vm.Disk{{Path: b.imgDisk}, {Path: b.swapDisk}}
	// The same machine and command line for both, but for the system;
	// each resume path ignores the other's device.
	base := khibAppend(BenchRegion) + fmt.Sprintf(" khib.resume=/dev/vda resume=/dev/vdb khibvm.phase=%s khibvm.mib=%d", system, mib)
	cfg.Append = base
	m, err := env.Start(ctx, name+"-boot1", cfg)
	if err != nil {
		return r, err
	}
	start, err := m.WaitFor(ctx, regexp.MustCompile(`^khibvm-hibernate-start`), env.Remaining())
	if err != nil {
		return r, fmt.Errorf("%s: %w", name, err)
	}
	exit, err := m.Wait(env.Remaining())
	if err != nil {
		return r, fmt.Errorf("%s hibernate: %w", name, err)
	}
	if !exit.PoweredOff || countLines(m, hibFailRE) > 0 {
		r.failed = "hibernation failed: " + lastLine(m, hibFailRE.String())
		if r.failed == "hibernation failed: " {
			r.failed += exit.String()
		}
		return r, nil
	}
	r.hibernateS = (exit.At - start.At).Seconds()
	markers := khibHibernateMarkers
	if system == "swsusp" {
		markers = swsuspHibernateMarkers
	}
	if ph, err := splitPhases(m, regexp.MustCompile(`^khibvm-hibernate-start`), markers); err == nil {
		r.hibPhases = ph
	}
	for _, l := range m.Lines() {
		if mm := khibImageRE.FindStringSubmatch(l.Text); mm != nil {
			fmt.Sscan(mm[1], &r.imageMiB)
		}
		if mm := swsuspImageRE.FindStringSubmatch(l.Text); mm != nil {
			var kb float64
			fmt.Sscan(mm[1], &kb)
			r.imageMiB = kb / 1024
		}
	}
	cfg.Append = base + " khibvm.boot=2"
	m, err = env.Start(ctx, name+"-boot2", cfg)
	if err != nil {
		return r, err
	}
	back, err := m.WaitFor(ctx, regexp.MustCompile(`^khibvm-resumed `), env.Remaining())
	if err != nil {
		r.failed = "resume failed"
		m.Close()
		return r, nil
	}
	v, err := m.WaitFor(ctx, regexp.MustCompile(`^khibvm-workload-verified`), env.Remaining())
	if err != nil {
		return r, fmt.Errorf("%s resume: %w", name, err)
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return r, err
	}
	r.resumeS, r.verifiedS = back.At.Seconds(), v.At.Seconds()
	rm := khibResumeMarkers
	if system == "swsusp" {
		rm = swsuspResumeMarkers
	}
	if ph, err := splitPhases(m, nil, append(rm, mk("the hibernate command returns", `^khibvm-resumed `))); err == nil {
		r.resPhases = ph
	}
	if n, ok := scenario.Figures(m)["swap_used_kb"]; ok {
		fmt.Sscan(fmt.Sprint(n), &r.swappedMiB)
		r.swappedMiB /= 1024
	}
	return r, nil
}
