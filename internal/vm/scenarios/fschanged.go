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
		Name: "resume-fs-changed",
		Description: "A hibernates with its ext4 data disk mounted and written; a normal boot of the same disks with " +
			"khib.resume=off mounts the disk and writes a file; the resume boot then refuses the image, naming the " +
			"file system (UUID, A's mount point) and the counters that changed, restores nothing and boots normally. " +
			"With the data disk put back as A left it, the same image resumes (no false refusal)",
		Timeout: 20 * time.Minute,
		Run:     runFSChanged,
	})
}

// fsChangedScript is A's init. khibvm.mode=write is another system's
// boot of the same disks: it mounts A's file system (replaying its
// journal) and writes a file. khibvm.mode=check only looks. Otherwise A
// starts the workload and the acknowledged appender and hibernates, and
// if it comes back checks both.
const fsChangedScript = guestPrelude + `
mkdir -p /data
mount -t ext4 /dev/vdb /data || fail mount
if grep -q khibvm.mode=write /proc/cmdline; then
	echo "another system was here" >>/data/elsewhere || fail write
	sync
	umount /data || fail umount
	echo "khibvm-wrote-elsewhere"
	echo "KHIBVM:normal_boot=1"
	echo "KHIBVM:guest_done=ok"
	poweroff -f
fi
if grep -q khibvm.mode=check /proc/cmdline; then
	[ -e /data/elsewhere ] && echo "khibvm-sees-elsewhere"
	umount /data || fail umount
	echo "KHIBVM:normal_boot=1"
	echo "KHIBVM:guest_done=ok"
	poweroff -f
fi
khib-workload start --mib @MIB@ --seed @SEED@ --mixed || fail workload
khib-workload append-start --file /data/log ` + ackFlag + ` || fail appender
sleep 1
echo "khibvm-hibernate-start 1"
khib hibernate --target /dev/vda >/tmp/h.out 2>/tmp/h.err
rc=$?
echo "khibvm-resumed 1"
sed 's/^/khibvm-out: /' /tmp/h.out; sed 's/^/khibvm-stderr hibernate: /' /tmp/h.err
[ $rc = 0 ] || fail hibernate
khib-workload verify || fail verify
echo "khibvm-workload-verified 1"
out=$(khib-workload append-check --file /data/log) || fail append-check
echo "khibvm-append-check 1 $out"
khib-workload append-stop || fail append-stop
umount /data || fail umount
echo "KHIBVM:guest_done=ok"
poweroff -f
`

var (
	// The helper's record of the data disk, and stage 1's verdict.
	fsRecordRE    = regexp.MustCompile(`^khib-helper: ext4 file system ([0-9a-f-]{36}) \(A had it on (\S+), from (\S+)\) is (\S+) here`)
	fsUnchangedRE = regexp.MustCompile(`^khib: the ext4 file system ([0-9a-f-]{36}) .* is unchanged since the hibernation`)
	fsChangeRE    = regexp.MustCompile(`(journal s_\w+|s_\w+) [^,→]+ → `)
)

func runFSChanged(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	res := scenario.Result{}
	rfs, err := khibGuest(env, workloadScript(fsChangedScript, workloadMiB(env, 64)))
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
	say := env.Logf

	// Boot 1: A hibernates with /data mounted and being written.
	m, err := env.Start(ctx, "hibernate", cfg)
	if err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, hibStartRE, env.Remaining()); err != nil {
		return res, err
	}
	if _, err := m.WaitPowerOff(env.Remaining()); err != nil {
		return res, err
	}
	if state, _, err := imageState(imgDisk); err != nil || state != image.StateComplete {
		return res, fmt.Errorf("the hibernation left no complete image (state %v): %v", state, err)
	}
	rec := lastLine(m, fsRecordRE.String())
	mm := fsRecordRE.FindStringSubmatch(rec)
	if mm == nil || mm[2] != "/data" {
		return res, fmt.Errorf("the helper did not record A's /data: %q", rec)
	}
	uuid := mm[1]
	res["uuid"], res["helper_record"] = uuid, strings.TrimPrefix(rec, "khib-helper: ")
	acked := maxAck(m)
	say("hibernated: the helper recorded %s", res["helper_record"])
	// The file system as A left it, for the last boot.
	saved := env.Path("data.saved")
	if err := copySparse(dataDisk, saved); err != nil {
		return res, err
	}

	// Boot 2: another system's boot of the same disks, resume off.
	ocfg := cfg
	ocfg.Append = khibAppend(RegionSize) + " khib.resume=off khibvm.mode=write"
	m, err = env.Start(ctx, "elsewhere", ocfg)
	if err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return res, err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return res, err
	}
	if countLines(m, regexp.MustCompile(`^khib: not resuming: khib.resume=off`)) != 1 || countLines(m, restoreRE) != 0 ||
		countLines(m, regexp.MustCompile(`^khibvm-wrote-elsewhere`)) != 1 {
		return res, fmt.Errorf("the other boot was not a normal one that skipped the resume and wrote to /data")
	}
	if state, _, err := imageState(imgDisk); err != nil || state != image.StateComplete {
		return res, fmt.Errorf("the image is no longer complete after the other boot (state %v): %v", state, err)
	}
	say("another boot (khib.resume=off) mounted /data and wrote to it")

	// Boot 3: the resume must be refused, with its reasons, and nothing
	// restored.
	ccfg := cfg
	ccfg.Append += " khibvm.mode=check"
	m, err = env.Start(ctx, "refused", ccfg)
	if err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return res, err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return res, err
	}
	msg := refusalMessage(m)
	res["message"] = msg
	for _, want := range []string{uuid, "A had it on /data", "changed since the hibernation", "Nothing of the image was restored"} {
		if !strings.Contains(msg, want) {
			return res, fmt.Errorf("stage 1 did not refuse saying %q; it said %q", want, msg)
		}
	}
	var changed []string
	for _, c := range fsChangeRE.FindAllStringSubmatch(msg, -1) {
		changed = append(changed, c[1])
	}
	if len(changed) == 0 {
		return res, fmt.Errorf("the refusal names no counter that changed: %q", msg)
	}
	res["changed"] = changed
	if countLines(m, restoreRE) != 0 || countLines(m, resumedRE) != 0 || countLines(m, normalBootRE) != 1 ||
		countLines(m, regexp.MustCompile(`^khibvm-sees-elsewhere`)) != 1 {
		return res, fmt.Errorf("the refused boot restored something or was not a normal boot of the changed disk")
	}
	if countLines(m, regexp.MustCompile(`^khib: found a hibernation image`)) != 0 {
		return res, fmt.Errorf("stage 1 went on to verify the chunks of an image it should have refused first")
	}
	if state, _, err := imageState(imgDisk); err != nil || state != image.StateComplete {
		return res, fmt.Errorf("stage 1 changed the image when it refused it (state %v): %v", state, err)
	}
	say("refused: %s", msg)

	// Boot 4: the data disk as A left it: the same image resumes.
	if err := copySparse(saved, dataDisk); err != nil {
		return res, err
	}
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
	if fig := scenario.Figures(m); figureString(fig, "guest_done") != "ok" {
		return res, fmt.Errorf("after the resume A failed at %q", figureString(fig, "failed_step"))
	}
	if countLines(m, restoreRE) == 0 || countLines(m, verifiedRE) != 1 || countLines(m, fsUnchangedRE) != 1 {
		return res, fmt.Errorf("with the data disk as A left it, the image did not resume with /data found unchanged")
	}
	got := appendChecks(m)[1]
	if got < acked {
		return res, fmt.Errorf("after the resume the file holds records 1..%d, but %d were acknowledged", got, acked)
	}
	res["acked"], res["records_on_disk"] = acked, got
	if err := fsckClean(dataDisk); err != nil {
		return res, err
	}
	res["fsck"] = "clean"
	say("with /data put back as A left it, the image resumed: %d records on disk, %d acknowledged, fsck clean", got, acked)
	return res, nil
}

// refusalMessage is stage 1's paragraph that starts "khib: NOT resuming",
// joined into one line.
func refusalMessage(m *vm.Machine) string { return paragraph(m, "khib: NOT resuming") }

// paragraph is the first console line of m that starts with prefix and
// the three after it, trimmed and joined into one line: a refusal's
// paragraph.
func paragraph(m *vm.Machine, prefix string) string {
	var msg []string
	in := false
	for _, l := range m.Lines() {
		if strings.HasPrefix(l.Text, prefix) {
			in = true
		}
		if in {
			msg = append(msg, strings.TrimSpace(l.Text))
			if len(msg) == 4 {
				break
			}
		}
	}
	return strings.Join(msg, " ")
}
