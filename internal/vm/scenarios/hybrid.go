package scenarios

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "hybrid-wake",
		Description: "khib hibernate --then suspend: the helper saves the image and suspends the machine to RAM (ACPI S3, " +
			"QEMU's status \"suspended\"); QMP system_wakeup wakes it, the helper marks the image used and jumps back, and " +
			"A's workload and acknowledged ext4 appender go on; the next boot is normal",
		Timeout: 20 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			return runHybrid(ctx, env, false)
		},
	})
	scenario.Register(scenario.Scenario{
		Name: "hybrid-powerloss",
		Description: "khib hibernate --then suspend, and QEMU is killed while the machine sleeps in RAM: a new QEMU " +
			"process resumes from the image (its ext4 file system found unchanged), A's workload and every acknowledged " +
			"record are there; the next boot is normal",
		Timeout: 20 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			return runHybrid(ctx, env, true)
		},
	})
}

// hybridScript is A's init for the hybrid-sleep scenarios: a first boot
// starts the workload and the acknowledged appender and sleeps with
// --then suspend; when it comes back (woken, or resumed after a power
// loss) it checks both and whether the image is still resumable. Any
// later boot is a normal one.
const hybridScript = guestPrelude + `
mkdir -p /data
mount -t ext4 /dev/vdb /data || fail mount
if [ -e /data/booted ]; then
	echo "KHIBVM:normal_boot=1"
	n=$(khib-workload append-check --file /data/log) && echo "khibvm-normal-boot $n"
	umount /data
	echo "KHIBVM:guest_done=ok"
	poweroff -f
fi
touch /data/booted
khib-workload start --mib @MIB@ --seed @SEED@ --mixed || fail workload
khib-workload append-start --file /data/log ` + ackFlag + ` || fail appender
sleep 1
khib-workload verify || fail verify-before
echo "khibvm-hibernate-start 1"
khib hibernate --target /dev/vda --then suspend >/tmp/h.out 2>/tmp/h.err
rc=$?
echo "khibvm-resumed 1"
echo "KHIBVM:hibernate1_rc=$rc"
sed 's/^/khibvm-out: /' /tmp/h.out; sed 's/^/khibvm-stderr hibernate: /' /tmp/h.err
[ $rc = 0 ] || fail hibernate
khib-workload verify || fail verify
echo "khibvm-workload-verified 1"
sleep 1
out=$(khib-workload append-check --file /data/log) || fail append-check
echo "khibvm-append-check 1 $out"
khib image verify /dev/vda >/dev/null 2>&1; echo "KHIBVM:image_verify_rc=$?"
khib-workload append-stop || fail append-stop
umount /data || fail umount
echo "KHIBVM:guest_done=ok"
poweroff -f
`

var (
	suspendingRE = regexp.MustCompile(`^khib-helper: image complete; suspending to RAM \((\w+)\)`)
	helperWokeRE = regexp.MustCompile(`^khib-helper: woke after ([0-9.]+) s asleep`)
	aWokeRE      = regexp.MustCompile(`^khibvm-out: khib: woke after ([0-9.]+) s asleep`)
	aResumedRE   = regexp.MustCompile(`^khibvm-out: khib: resumed; back after`)
)

// waitSuspended polls QEMU until the guest is in S3 (status "suspended").
func waitSuspended(ctx context.Context, q *vm.QMP, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	last := ""
	for time.Now().Before(deadline) {
		var st struct {
			Status  string `json:"status"`
			Running bool   `json:"running"`
		}
		if err := q.Execute(ctx, "query-status", nil, &st); err != nil {
			return err
		}
		if st.Status == "suspended" {
			return nil
		}
		last = st.Status
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("the guest did not reach S3 in %s (QEMU status %q)", wait, last)
}

func runHybrid(ctx context.Context, env *scenario.Env, powerLoss bool) (scenario.Result, error) {
	res := scenario.Result{}
	rfs, err := khibGuest(env, workloadScript(hybridScript, workloadMiB(env, 128)))
	if err != nil {
		return res, err
	}
	initrd, err := env.WriteRootfs("a.cpio", rfs)
	if err != nil {
		return res, err
	}
	imgDisk, err := env.NewDisk("image.img", 512)
	if err != nil {
		return res, err
	}
	dataDisk, err := newDataDisk(env, 0)
	if err != nil {
		return res, err
	}
	cfg := env.Config()
	cfg.Initrd = initrd
	cfg.Append = khibAppend(RegionSize) + " khib.resume=/dev/vda"
	cfg.Disks = []vm.Disk{{Path: imgDisk}, {Path: dataDisk}}
	// S3, and QMP to see the guest asleep and to wake it. On the PIIX4
	// machine: on q35 (QEMU 7.2, SeaBIOS) a guest that woke from S3 can no
	// longer power off through ACPI ("reboot: Power down", and nothing),
	// khib or not (a bare echo mem >/sys/power/state, system_wakeup,
	// poweroff -f does it); on pc it powers off.
	cfg.Machine = "pc"
	cfg.Extra = append(cfg.Extra, "-global", "PIIX4_PM.disable_s3=0")
	cfg.QMP = true

	m, err := env.Start(ctx, "sleep", cfg)
	if err != nil {
		return res, err
	}
	start, err := m.WaitFor(ctx, hibStartRE, env.Remaining())
	if err != nil {
		return res, err
	}
	l, err := m.WaitFor(ctx, suspendingRE, env.Remaining())
	if err != nil {
		return res, fmt.Errorf("the helper did not suspend: %w", err)
	}
	res["sleep_mode"] = suspendingRE.FindStringSubmatch(l.Text)[1]
	qctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	q, err := m.QMP(qctx)
	if err != nil {
		return res, err
	}
	defer q.Close()
	if err := waitSuspended(qctx, q, 45*time.Second); err != nil {
		return res, err
	}
	asleep := time.Since(m.Started())
	res["save_to_sleep_s"] = scenario.Round3((asleep - start.At).Seconds())
	env.Logf("the guest sleeps in RAM, %.1f s after khib hibernate --then suspend", (asleep - start.At).Seconds())
	// Asleep for a while: nothing may happen meanwhile.
	time.Sleep(3 * time.Second)
	if countLines(m, helperWokeRE) != 0 {
		return res, fmt.Errorf("the helper woke by itself")
	}
	acked := maxAck(m)

	if powerLoss {
		// The power goes: QEMU is killed in S3, RAM and all.
		if err := m.Close(); err != nil {
			return res, err
		}
		state, _, err := imageState(imgDisk)
		if err != nil || state != image.StateComplete {
			return res, fmt.Errorf("after the power loss in S3 the image is %v, not complete and intact: %v", state, err)
		}
		env.Logf("QEMU killed while the guest slept; the image is complete and verifies")
		m, err = env.Start(ctx, "resume", cfg)
		if err != nil {
			return res, err
		}
		if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
			return res, err
		}
		if _, err := m.WaitPowerOff(time.Minute); err != nil {
			return res, err
		}
		if countLines(m, restoreRE) == 0 || countLines(m, aResumedRE) != 1 || countLines(m, fsUnchangedRE) != 1 {
			return res, fmt.Errorf("the boot after the power loss did not resume from the image with /data found unchanged")
		}
	} else {
		if err := q.Execute(qctx, "system_wakeup", nil, nil); err != nil {
			return res, err
		}
		if _, err := m.WaitFor(ctx, helperWokeRE, env.Remaining()); err != nil {
			return res, fmt.Errorf("the helper did not wake: %w", err)
		}
		if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
			return res, err
		}
		if _, err := m.WaitPowerOff(time.Minute); err != nil {
			return res, err
		}
		l := lastLine(m, aWokeRE.String())
		mm := aWokeRE.FindStringSubmatch(l)
		if mm == nil {
			return res, fmt.Errorf("khib hibernate did not say it woke: %q", l)
		}
		var slept float64
		fmt.Sscan(mm[1], &slept)
		res["slept_s"] = slept
		if countLines(m, restoreRE) != 0 {
			return res, fmt.Errorf("a restore helper ran in a boot that only slept")
		}
		if state, _, _ := imageState(imgDisk); state != image.StateInvalidated {
			return res, fmt.Errorf("after the wake the image is %v, not marked used", state)
		}
	}
	fig := scenario.Figures(m)
	if figureString(fig, "guest_done") != "ok" {
		return res, fmt.Errorf("A failed at %q after coming back", figureString(fig, "failed_step"))
	}
	if rc := figureString(fig, "image_verify_rc"); rc == "0" || rc == "" {
		return res, fmt.Errorf("after coming back, khib image verify still accepts the image (exit %q)", rc)
	}
	if countLines(m, verifiedRE) != 1 {
		return res, fmt.Errorf("A's workload did not verify after coming back")
	}
	got, ok := appendChecks(m)[1]
	if !ok || got < acked {
		return res, fmt.Errorf("after coming back the file holds records 1..%d, but %d were acknowledged before the sleep", got, acked)
	}
	res["acked_before_sleep"], res["records_after"] = acked, got
	for _, p := range []string{`^khibvm-out: `, `^khib: the ext4 file system`} {
		if l := lastLine(m, p); l != "" {
			env.Logf("  %s", strings.TrimPrefix(l, "khibvm-out: "))
		}
	}

	// The image is spent either way: the next boot is a normal one.
	m, err = env.Start(ctx, "after", cfg)
	if err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, normalBootRE, env.Remaining()); err != nil {
		return res, fmt.Errorf("the boot after coming back was not a normal one: %w", err)
	}
	if _, err := m.WaitPowerOff(env.Remaining()); err != nil {
		return res, err
	}
	if countLines(m, restoreRE) != 0 {
		return res, fmt.Errorf("the boot after coming back restored the image again")
	}
	if err := fsckClean(dataDisk); err != nil {
		return res, err
	}
	res["fsck"] = "clean"
	return res, nil
}
