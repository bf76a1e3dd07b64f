package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

// Full and failing targets: the image device breaks while the helper
// writes to it. In each case the helper must jump back with a reason, khib
// hibernate must exit 1 and say what happened to which device, and A must
// go on: its workload and tmpfs intact, and a second hibernation, to a
// good disk with --return, saving a complete image.

func init() {
	scenario.Register(scenario.Scenario{
		Name: "hibernate-lying-device",
		Description: "the image device claims 256 MiB but holds 16 MiB: every write past 16 MiB fails with ENOSPC " +
			"(QEMU blkdebug, one rule per 4 KiB block, werror=report; virtio-blk hands the guest an I/O error). " +
			"The helper jumps back, khib hibernate names the device and where the write failed, " +
			"A's workload and tmpfs are intact, and a second hibernate --return to a good disk saves a complete image",
		Timeout: 15 * time.Minute,
		Run:     runLyingDevice,
	})
	scenario.Register(scenario.Scenario{
		Name: "hibernate-disk-vanishes",
		Description: "the image disk goes away while the helper writes to it: QEMU's device_del is tried first and refused " +
			"(q35 puts the disk on pcie.0, which has no hotplug, and on a hotplug port the helper kernel, without " +
			"CONFIG_HOTPLUG_PCI, could not acknowledge the unplug), so HMP drive_del (through QMP) removes the disk's " +
			"backend and every further I/O fails, as with a yanked USB stick. The helper jumps back, khib hibernate says " +
			"the write failed, A's workload and tmpfs are intact, and a second hibernate --return to a good disk saves a complete image",
		Timeout: 15 * time.Minute,
		Run:     runDiskVanishes,
	})
}

// failingScript hibernates to @BAD@, which fails, then checks that A goes
// on: the workload verifies, tmpfs holds what was written before the
// jump and takes new writes, and a second hibernation to @GOOD@ with
// --return saves an image and comes back.
const failingScript = guestPrelude + `
khib check >/dev/null || fail check
khib-workload start --mib @MIB@ --seed @SEED@ --mixed || fail workload
echo "before the jump" > /tmp/khibvm-note || fail tmpfs
echo "khibvm-hibernate-start"
khib hibernate --target @BAD@ >/tmp/h.out 2>/tmp/h.err
echo "KHIBVM:hibernate_rc=$?"
sed 's/^/khibvm-stderr hibernate: /' /tmp/h.err
khib-workload verify || fail verify
[ "$(cat /tmp/khibvm-note)" = "before the jump" ] || fail tmpfs-kept
echo "after the jump" > /tmp/khibvm-note2 && [ "$(cat /tmp/khibvm-note2)" = "after the jump" ] || fail tmpfs-write
echo "khibvm-second-start"
khib hibernate --target @GOOD@ --return >/tmp/h2.out 2>/tmp/h2.err
echo "KHIBVM:second_rc=$?"
sed 's/^/khibvm-stderr second: /' /tmp/h2.err
sed 's/^/khibvm-stderr second-stdout: /' /tmp/h2.out
khib-workload verify || fail verify-second
echo "KHIBVM:guest_done=ok"
poweroff -f
`

// failingRun is one boot of A whose first hibernation must fail.
type failingRun struct {
	bad, good string // the targets in A
	badDisk   string // the bad target's file on the host
	goodDisk  string
	cfg       vm.Config // Initrd and Append are filled in
	// during, when set, runs once A has started hibernating (it breaks the
	// disk); its figures go into the result. Its waits on the console
	// must stop before A's "KHIBVM:hibernate_rc".
	during func(ctx context.Context, m *vm.Machine) (scenario.Result, error)
	// want are words the reason must hold.
	want []string
}

var (
	hibernateReasonRE = regexp.MustCompile(`^khib: hibernate: `)
	secondStartRE     = regexp.MustCompile(`^khibvm-second-start`)
	hibernateRCRE     = regexp.MustCompile(`KHIBVM:hibernate_rc=`)
	secondRCRE        = regexp.MustCompile(`KHIBVM:second_rc=`)
)

func runFailing(ctx context.Context, env *scenario.Env, fr failingRun, res scenario.Result) error {
	mib := workloadMiB(env, 64)
	res["workload_mib"] = mib
	rfs, err := khibGuest(env, workloadScript(failingScript, mib, "@BAD@", fr.bad, "@GOOD@", fr.good))
	if err != nil {
		return err
	}
	initrd, err := env.WriteRootfs("a.cpio", rfs)
	if err != nil {
		return err
	}
	cfg := fr.cfg
	cfg.Initrd = initrd
	cfg.Append = khibAppend(RegionSize)
	m, err := env.Start(ctx, "a", cfg)
	if err != nil {
		return err
	}
	start, err := m.WaitFor(ctx, hibernateRE, env.Remaining())
	if err != nil {
		return err
	}
	if fr.during != nil {
		r, err := fr.during(ctx, m)
		res.Merge(r)
		if err != nil {
			return err
		}
	}
	back, err := m.WaitFor(ctx, hibernateRCRE, env.Remaining())
	if err != nil {
		return err
	}
	res["failed_hibernate_s"] = scenario.Round3((back.At - start.At).Seconds())
	second, err := m.WaitFor(ctx, secondStartRE, env.Remaining())
	if err != nil {
		return err
	}
	secondBack, err := m.WaitFor(ctx, secondRCRE, env.Remaining())
	if err != nil {
		return err
	}
	res["second_hibernate_s"] = scenario.Round3((secondBack.At - second.At).Seconds())
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return err
	}

	fig := scenario.Figures(m)
	if figureString(fig, "guest_done") != "ok" {
		return fmt.Errorf("A failed at %q after the failed hibernation (console log %s)", figureString(fig, "failed_step"), m.LogPath())
	}
	tagged := taggedLines(stderrLineRE, m)
	var reasons []string
	for _, l := range tagged["hibernate"] {
		if hibernateReasonRE.MatchString(l) {
			reasons = append(reasons, l)
		}
	}
	reason := strings.Join(reasons, " | ")
	res["reason"] = reason
	res["hibernate_rc"] = figureString(fig, "hibernate_rc")
	if figureString(fig, "hibernate_rc") != "1" || len(reasons) != 1 {
		return fmt.Errorf("khib hibernate exited %s with %d reason lines (%q); want 1 and one line", figureString(fig, "hibernate_rc"), len(reasons), reason)
	}
	for _, w := range append([]string{fr.bad, "this system keeps running"}, fr.want...) {
		if !strings.Contains(reason, w) {
			return fmt.Errorf("khib hibernate's reason %q does not say %q", reason, w)
		}
	}
	res["second_rc"] = figureString(fig, "second_rc")
	out := strings.Join(tagged["second-stdout"], " | ")
	if figureString(fig, "second_rc") != "0" || !strings.Contains(out, "back after") {
		return fmt.Errorf("the second hibernation, to the good disk, exited %s: %q %q", figureString(fig, "second_rc"), out, strings.Join(tagged["second"], " | "))
	}
	// The helper completed the good image only.
	if n := countLines(m, imageCompleted); n != 1 {
		return fmt.Errorf("the helper reported %d complete images; want 1 (the good disk's)", n)
	}
	khib, err := env.Bin("khib")
	if err != nil {
		return err
	}
	if out, err := exec.Command(khib, "image", "verify", fr.badDisk).CombinedOutput(); err == nil {
		return fmt.Errorf("the failed save left an image that verifies:\n%s", out)
	}
	if out, err := exec.Command(khib, "image", "verify", fr.goodDisk).CombinedOutput(); err != nil {
		return fmt.Errorf("the good disk's image does not verify: %v\n%s", err, out)
	}
	ins, err := inspectImage(env, fr.goodDisk)
	if err != nil {
		return err
	}
	if ins.State != "complete" {
		return fmt.Errorf("the good disk's image is %s, not complete", ins.State)
	}
	res["good_image_mib"] = scenario.Round3(float64(ins.ImageBytes) / (1 << 20))
	return nil
}

// Geometry of the lying device: what it claims, and where its writes
// start failing.
const (
	lyingClaimMiB = 256
	lyingHoldsMiB = 16
)

// lyingRules makes blkdebug fail with ENOSPC every write that touches
// [from, to): blkdebug's inject-error matches the requests that cover one
// given sector, so there is one rule per 4 KiB block (the guest writes no
// less than a page), each for writes only, so reads keep working.
func lyingRules(from, to int64) string {
	var b strings.Builder
	for off := from; off < to; off += 4096 {
		fmt.Fprintf(&b, "[inject-error]\nevent = \"write_aio\"\niotype = \"write\"\nerrno = \"28\"\nsector = \"%d\"\n\n", off/512)
	}
	return b.String()
}

// qemuValue quotes commas the way QEMU's option parser wants them.
func qemuValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

func runLyingDevice(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	good, err := env.NewDisk("good.img", 1024)
	if err != nil {
		return nil, err
	}
	lying, err := env.NewDisk("lying.img", lyingClaimMiB)
	if err != nil {
		return nil, err
	}
	conf := env.Path("blkdebug.conf")
	if err := os.WriteFile(conf, []byte(lyingRules(lyingHoldsMiB<<20, lyingClaimMiB<<20)), 0o644); err != nil {
		return nil, err
	}
	res := scenario.Result{"claims_mib": lyingClaimMiB, "holds_mib": lyingHoldsMiB}
	cfg := env.Config()
	cfg.Disks = []vm.Disk{{Path: good}} // vda
	// vdb, by hand: vm.Disk has no werror, and QEMU's default for
	// virtio-blk (werror=enospc) would pause the whole machine on
	// ENOSPC, waiting for the host to make room, instead of failing the
	// write in the guest as a real device would.
	cfg.Extra = append(cfg.Extra, "-drive",
		"file="+qemuValue("blkdebug:"+conf+":"+lying)+",format=raw,if=virtio,cache=writeback,werror=report")
	err = runFailing(ctx, env, failingRun{
		bad: "/dev/vdb", good: "/dev/vda", badDisk: lying, goodDisk: good, cfg: cfg,
		want: []string{"failed a write", fmt.Sprintf("MiB of the %d MiB it reports", lyingClaimMiB)},
	}, res)
	if err != nil {
		return res, err
	}
	// Where the helper says the write failed: the request that reached
	// past 16 MiB, which starts at most a request's length before it.
	m := regexp.MustCompile(`at ([0-9.]+) MiB of the`).FindStringSubmatch(figureString(res, "reason"))
	if m == nil {
		return res, fmt.Errorf("the reason names no offset: %q", res["reason"])
	}
	at, _ := strconv.ParseFloat(m[1], 64)
	res["failed_at_mib"] = at
	if at < lyingHoldsMiB-4 || at >= lyingClaimMiB {
		return res, fmt.Errorf("the reason puts the failed write at %.1f MiB; the device fails writes from %d MiB", at, lyingHoldsMiB)
	}
	return res, nil
}

var (
	// The helper has read A's free lists and starts writing pages.
	helperWritingRE = regexp.MustCompile(`khib-helper: A has .* free|khib-helper: not filtering free pages`)
	helperProgress  = regexp.MustCompile(`khib-helper: saving +(\d+)%`)
)

// The image disk's writes are throttled (QMP block_set_io_throttle) so
// that the image takes seconds to reach it on any host, and the disk is
// pulled removalDelay after the helper starts writing: part of the image
// is on the disk then, the rest still in the helper's page cache.
const (
	removalDelay  = time.Second
	throttleBytes = 8 << 20 // per second
)

func runDiskVanishes(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	bad, err := env.NewDisk("vanishing.img", 1024)
	if err != nil {
		return nil, err
	}
	good, err := env.NewDisk("good.img", 1024)
	if err != nil {
		return nil, err
	}
	cfg := env.Config()
	cfg.Disks = []vm.Disk{{Path: bad}, {Path: good}} // vda, vdb
	cfg.QMP = true
	res := scenario.Result{}
	err = runFailing(ctx, env, failingRun{
		bad: "/dev/vda", good: "/dev/vdb", badDisk: bad, goodDisk: good, cfg: cfg,
		during: func(ctx context.Context, m *vm.Machine) (scenario.Result, error) {
			return pullDisk(ctx, env, m, vm.DriveID(0), bad)
		},
		want: []string{"failed a write (input/output error)", "was removed"},
	}, res)
	if err != nil {
		return res, err
	}
	// Mid-write: some of the image had reached the disk, not all of it.
	var st unix.Stat_t
	if err := unix.Stat(bad, &st); err != nil {
		return res, fmt.Errorf("the vanished disk's file: %w", err)
	}
	written := float64(st.Blocks*512) / (1 << 20)
	res["written_before_removal_mib"] = scenario.Round3(written)
	if good, _ := res["good_image_mib"].(float64); written < 1 || written >= good {
		return res, fmt.Errorf("%.1f MiB reached the disk before it went away, of a %.1f MiB image: the removal did not land mid-write", written, good)
	}
	return res, nil
}

// pullDisk waits until the helper writes, then removes drive: device_del
// first, and HMP drive_del when the device is still there after it.
func pullDisk(ctx context.Context, env *scenario.Env, m *vm.Machine, drive, file string) (scenario.Result, error) {
	res := scenario.Result{}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	q, err := m.QMP(qctx)
	cancel()
	if err != nil {
		return res, err
	}
	defer q.Close()
	res["qemu"] = q.Version()
	qdev, inserted, err := driveDevice(ctx, q, drive)
	if err != nil {
		return res, err
	}
	if qdev == "" || !inserted {
		return res, fmt.Errorf("QEMU shows no drive %s with a medium", drive)
	}
	if err := q.Execute(ctx, "block_set_io_throttle", map[string]any{
		"device": drive, "bps": 0, "bps_rd": 0, "bps_wr": throttleBytes, "iops": 0, "iops_rd": 0, "iops_wr": 0,
	}, nil); err != nil {
		return res, err
	}
	res["throttle_mib_s"] = throttleBytes >> 20
	writing, err := m.WaitFor(ctx, helperWritingRE, env.Remaining())
	if err != nil {
		return res, err
	}
	time.Sleep(removalDelay)
	// Under load the helper's first writes may still sit in its page
	// cache after the delay: wait until the disk file (sparse) holds 2 MiB.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var st unix.Stat_t
		if err := unix.Stat(file, &st); err == nil && st.Blocks*512 >= 2<<20 {
			break
		}
	}
	qctx, cancel = context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	method := "drive_del"
	if err := q.Execute(qctx, "device_del", map[string]any{"id": qdev}, nil); err != nil {
		res["device_del_error"] = err.Error()
	} else if deviceDeleted(qctx, q, qdev, 2*time.Second) {
		method = "device_del"
	} else {
		res["device_del_error"] = "accepted, but the guest did not release the device within 2 s"
	}
	if method == "drive_del" {
		if err := q.HMPQuiet(qctx, "drive_del "+drive); err != nil {
			return res, fmt.Errorf("removing the disk: %w", err)
		}
	}
	removed := time.Since(m.Started())
	res["removed_by"] = method
	res["removed_after_writing_s"] = scenario.Round3((removed - writing.At).Seconds())
	// How far the helper had got through A's memory (into its page cache;
	// the disk, throttled, lags behind): its last progress line before.
	progress := "no progress line yet"
	for _, l := range m.Lines() {
		if l.At > removed {
			break
		}
		if p := helperProgress.FindStringSubmatch(l.Text); p != nil {
			progress = p[1] + "%"
		}
	}
	res["helper_progress_at_removal"] = progress
	if method == "drive_del" {
		if _, inserted, err := driveDevice(qctx, q, drive); err != nil {
			return res, err
		} else if inserted {
			return res, fmt.Errorf("%s still has a medium after drive_del", drive)
		}
	}
	env.Logf("disk %s removed by %s %.2f s after the helper started writing (helper progress: %s)", drive, method, (removed - writing.At).Seconds(), progress)
	return res, nil
}

// driveDevice returns the QOM path of the device that holds drive, which
// device_del takes, and whether the drive has its medium; "" when QEMU
// knows no such drive (after drive_del the device stays, nameless).
func driveDevice(ctx context.Context, q *vm.QMP, drive string) (qdev string, inserted bool, err error) {
	var blocks []struct {
		Device   string          `json:"device"`
		Qdev     string          `json:"qdev"`
		Inserted json.RawMessage `json:"inserted"`
	}
	if err := q.Execute(ctx, "query-block", nil, &blocks); err != nil {
		return "", false, err
	}
	for _, b := range blocks {
		if b.Device == drive {
			// query-block names the virtio device inside its PCI proxy.
			return strings.TrimSuffix(b.Qdev, "/virtio-backend"), b.Inserted != nil, nil
		}
	}
	return "", false, nil
}

// deviceDeleted polls for QEMU's DEVICE_DELETED event for path.
func deviceDeleted(ctx context.Context, q *vm.QMP, path string, wait time.Duration) bool {
	end := time.Now().Add(wait)
	for time.Now().Before(end) {
		// Any command brings in the events sent before its answer.
		if err := q.Execute(ctx, "query-status", nil, nil); err != nil {
			return false
		}
		for _, e := range q.Events() {
			if e.Name == "DEVICE_DELETED" && strings.Contains(string(e.Data), path) {
				return true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}
