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
if grep -q "khibvm.boot=2" /proc/cmdline; then
	fail resume-$phase
fi
khib-workload start --mib @MIB@ --seed @SEED@ --mixed --garbage @GARBAGE@ || fail workload
khib-workload verify || fail verify-before
if [ "$phase" = swsusp ]; then
	mkswap /dev/vdb >/dev/null || fail mkswap
	swapon /dev/vdb || fail swapon
	echo shutdown > /sys/power/disk
fi
echo "khibvm-hibernate-start $phase"
if [ "$phase" = swsusp ]; then
	echo disk > /sys/power/state
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
	script := workloadScript(benchHibScript, mib)
	rfs, err := khibGuest(env, script)
	if err != nil {
		return nil, err
	}
	initrd, err := env.WriteRootfs("a.cpio", rfs)
	if err != nil {
		return nil, err
	}
	imgDisk, err := env.NewDisk("image.img", 1024)
	if err != nil {
		return nil, err
	}
	swapDisk, err := env.NewDisk("swap.img", 1024)
	if err != nil {
		return nil, err
	}
	res := scenario.Result{"workload_mib": mib, "smp": env.SMP}
	for _, phase := range []string{"khib", "swsusp"} {
		cfg := env.Config()
		cfg.Initrd = initrd
		cfg.Disks = []vm.Disk{{Path: imgDisk}, {Path: swapDisk}}
		// The same machine and command line for both, but for the phase;
		// each resume path ignores the other's device.
		base := khibAppend(RegionSize) + " khib.resume=/dev/vda resume=/dev/vdb khibvm.phase=" + phase
		cfg.Append = base
		m, err := env.Start(ctx, phase+"-boot1", cfg)
		if err != nil {
			return res, err
		}
		start, err := m.WaitFor(ctx, regexp.MustCompile(`^khibvm-hibernate-start`), env.Remaining())
		if err != nil {
			return res, fmt.Errorf("%s: %w", phase, err)
		}
		exit, err := m.WaitPowerOff(env.Remaining())
		if err != nil {
			return res, fmt.Errorf("%s hibernate: %w", phase, err)
		}
		hib := (exit.At - start.At).Seconds()
		var sizeMiB float64
		for _, l := range m.Lines() {
			if mm := khibImageRE.FindStringSubmatch(l.Text); mm != nil {
				fmt.Sscan(mm[1], &sizeMiB)
			}
			if mm := swsuspImageRE.FindStringSubmatch(l.Text); mm != nil {
				var kb float64
				fmt.Sscan(mm[1], &kb)
				sizeMiB = kb / 1024
			}
		}
		cfg.Append = base + " khibvm.boot=2"
		m, err = env.Start(ctx, phase+"-boot2", cfg)
		if err != nil {
			return res, err
		}
		v, err := m.WaitFor(ctx, regexp.MustCompile(`^khibvm-workload-verified`), env.Remaining())
		if err != nil {
			return res, fmt.Errorf("%s resume: %w", phase, err)
		}
		if _, err := m.WaitPowerOff(time.Minute); err != nil {
			return res, err
		}
		swapped := 0.0
		if n, ok := scenario.Figures(m)["swap_used_kb"]; ok {
			fmt.Sscan(fmt.Sprint(n), &swapped)
			swapped /= 1024
		}
		res[phase+"_hibernate_s"] = scenario.Round3(hib)
		res[phase+"_resume_s"] = scenario.Round3(v.At.Seconds())
		res[phase+"_image_mib"] = scenario.Round3(sizeMiB)
		res[phase+"_swapped_out_mib"] = scenario.Round3(swapped)
		res[phase+"_written_mib"] = scenario.Round3(sizeMiB + swapped)
		env.Logf("%-6s: hibernate %.1f s (command to power-off), resume %.1f s (power-on to workload verified), image %.1f MiB + %.1f MiB swapped out first",
			phase, hib, v.At.Seconds(), sizeMiB, swapped)
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
