package scenarios

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"regexp"
	"time"

	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

// Power cuts are QEMU killed with SIGKILL: the guest's RAM, CPUs and every
// write still inside the guest are gone at once. Writes QEMU has already
// issued to the disk files survive (they sit in the host's page cache),
// which a real disk's volatile cache would not promise; khib's flushes are
// what the guest can control, and those are what the cuts exercise.

func init() {
	scenario.Register(scenario.Scenario{
		Name: "powercut-save",
		Description: "power cuts (QEMU killed) at 20 seeded random points between khib hibernate and power-off: during A's " +
			"preparation, the helper's boot, mid-write, just before and just after the commit. After each, the image is " +
			"complete and verifies and the next boot resumes it, or it is not complete and the next boot is normal; " +
			"every acknowledged write is on disk and e2fsck -fn is clean after the journal replays (--seed repeats a run)",
		Timeout: 45 * time.Minute,
		Run:     runPowercutSave,
	})
	scenario.Register(scenario.Scenario{
		Name: "powercut-resume",
		Description: "power cuts at 12 seeded random points between power-on and A running again (stage 1's check, the " +
			"restore helper's boot, mid-restore, around the mark-used, A running): before the restore helper marks the " +
			"image used the next boot resumes it, after that the next boot is normal, and A is never resumed twice",
		Timeout: 30 * time.Minute,
		Run:     runPowercutResume,
	})
}

// powercutScript is A's init for the power-cut scenarios. Every boot that
// runs it checks the appended file first (mounting replays the journal of
// a cut). With khibvm.mode=check on the command line that is all it
// does; otherwise it starts the workload and the acknowledged appender and
// hibernates, and, if it comes back (resumed), checks both and powers off.
const powercutScript = guestPrelude + `
mkdir -p /data
mount -t ext4 /dev/vdb /data || fail mount
[ -e /data/log ] || touch /data/log
out=$(khib-workload append-check --file /data/log) || fail append-check-boot
echo "khibvm-boot-check $out"
if grep -q khibvm.mode=check /proc/cmdline; then
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

var bootCheckRE = regexp.MustCompile(`^khibvm-boot-check appender: \S+ holds lines 1\.\.(\d+) in order`)

// phase is a step of a hibernation or resume, known by the first console
// line that shows it has begun.
type phase struct {
	name string
	re   *regexp.Regexp
}

var (
	// savePhases follow one another on A's console from khib hibernate
	// to the power-off. The helper's boot begins with its decompressor's
	// nokaslr line, or its kernel's banner, which a quiet helper (the
	// default helper loglevel) does not print.
	savePhases = []phase{
		{"A prepares", regexp.MustCompile(`^khibvm-hibernate-start`)},
		{"helper boots", regexp.MustCompile(`KASLR disabled|Linux version`)},
		{"helper writes", regexp.MustCompile(`^khib-helper: saving A `)},
		{"helper commits", regexp.MustCompile(`^khib-helper: saving 100%`)},
		{"image committed", regexp.MustCompile(`^khib-helper: image complete on`)},
	}
	// resumePhases follow one another from power-on to A running again.
	resumePhases = []phase{
		{"kernel boots", nil},
		{"stage 1 verifies", regexp.MustCompile(`^khib: found a hibernation image`)},
		{"restore helper boots", regexp.MustCompile(`^khib: restoring A through the restore helper`)},
		{"restore writes A", regexp.MustCompile(`^khib-restore: restoring \d+ MiB`)},
		{"restore done, marking used", regexp.MustCompile(`^khib-restore: A's memory restored`)},
		{"marked used, jumping", regexp.MustCompile(`^khib-restore: image marked used`)},
		{"A running", regexp.MustCompile(`^khibvm-resumed`)},
	}
)

// cut is one power cut: after the console shows phase anchor of phases,
// wait delay, then kill QEMU.
type cut struct {
	anchor int
	delay  time.Duration
}

// cutPlan spreads n cuts over the phases, each phase's delays drawn up to
// its limit, in a seeded random order.
func cutPlan(rng *rand.Rand, n int, limits []time.Duration) []cut {
	plan := make([]cut, n)
	for i := range plan {
		a := i % len(limits)
		plan[i] = cut{anchor: a, delay: time.Duration(rng.Int63n(int64(limits[a]) + 1))}
	}
	rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	return plan
}

func seedOf(env *scenario.Env) int64 {
	if env.Seed != 0 {
		return env.Seed
	}
	return time.Now().UnixNano() % 1_000_000_007
}

// cutAt waits on m's console for the phases up to c.anchor in order, then
// for c.delay, and kills QEMU. It reports the last phase the console had
// shown when QEMU died, and whether QEMU ended first (the guest powered
// off before the cut).
func cutAt(ctx context.Context, env *scenario.Env, m *vm.Machine, phases []phase, c cut) (shown int, early bool, err error) {
	for _, p := range phases[:c.anchor+1] {
		if p.re == nil {
			continue
		}
		if _, err := m.WaitFor(ctx, p.re, env.Remaining()); err != nil {
			return 0, false, fmt.Errorf("waiting for %q: %w", p.name, err)
		}
	}
	select {
	case <-time.After(c.delay):
	case <-m.Done():
		early = true
	}
	if err := m.Close(); err != nil {
		return 0, false, err
	}
	return lastPhase(m, phases), early, nil
}

// lastPhase is the last of phases, taken in order, that m's console showed
// (all of it: QEMU has exited). A first phase without a pattern has begun
// with the machine.
func lastPhase(m *vm.Machine, phases []phase) int {
	shown := -1
	if phases[0].re == nil {
		shown = 0
	}
	for _, l := range m.Lines() {
		if shown+1 < len(phases) && phases[shown+1].re.MatchString(l.Text) {
			shown++
		}
	}
	return max(shown, 0)
}

// imageState reads the image disk's state after a cut: Complete only if
// the whole image also verifies (a cut must never leave a complete image
// that does not).
func imageState(disk string) (image.State, image.UUID, error) {
	f, err := os.Open(disk)
	if err != nil {
		return 0, image.UUID{}, err
	}
	defer f.Close()
	sb, err := image.ReadSuperblock(f)
	if errors.Is(err, image.ErrNotImage) {
		return 0, image.UUID{}, nil
	}
	if err != nil {
		return 0, image.UUID{}, fmt.Errorf("the image disk's superblock after the cut: %w", err)
	}
	if sb.State != image.StateComplete {
		return sb.State, sb.UUID, nil
	}
	st, err := f.Stat()
	if err != nil {
		return 0, image.UUID{}, err
	}
	rd, err := image.Open(f, st.Size())
	if err == nil {
		err = rd.Verify(nil)
	}
	if err != nil {
		return 0, image.UUID{}, fmt.Errorf("a complete image that does not verify after the cut: %w", err)
	}
	return sb.State, sb.UUID, nil
}

// afterCut boots once more after a cut and checks that boot: a resume of
// the image if wantResume, a normal boot otherwise. Either way every
// record acknowledged before the cut must be in the file, and e2fsck -fn
// must be clean once the guest has powered off. It returns the records
// found.
func afterCut(ctx context.Context, env *scenario.Env, name string, cfg vm.Config, wantResume bool, acked int, dataDisk string) (int, error) {
	cfg.Append += " khibvm.mode=check"
	m, err := env.Start(ctx, name, cfg)
	if err != nil {
		return 0, err
	}
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return 0, err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return 0, err
	}
	if fig := scenario.Figures(m); figureString(fig, "guest_done") != "ok" {
		return 0, fmt.Errorf("%s: A failed at %q", name, figureString(fig, "failed_step"))
	}
	resumed := countLines(m, restoreRE) > 0 || countLines(m, resumedRE) > 0
	got := -1
	if wantResume {
		if !resumed || countLines(m, verifiedRE) != 1 {
			return 0, fmt.Errorf("%s: the image was complete, but A did not resume and verify", name)
		}
		if n, ok := appendChecks(m)[1]; ok {
			got = n
		}
	} else {
		if resumed || countLines(m, normalBootRE) != 1 {
			return 0, fmt.Errorf("%s: the image was not complete (or was used), but the boot was not a normal one", name)
		}
		for _, l := range m.Lines() {
			if mm := bootCheckRE.FindStringSubmatch(l.Text); mm != nil {
				fmt.Sscan(mm[1], &got)
			}
		}
	}
	if got < acked {
		return got, fmt.Errorf("%s: the file holds records 1..%d, but %d were acknowledged before the cut", name, got, acked)
	}
	return got, fsckClean(dataDisk)
}

// cutRecord is one point of the JSON result.
type cutRecord struct {
	Point   int     `json:"point"`
	Anchor  string  `json:"anchor"`
	DelayMS float64 `json:"delay_ms"`
	Shown   string  `json:"phase_at_cut"`
	State   string  `json:"image_state"`
	Next    string  `json:"next_boot"`
	Acked   int     `json:"acked"`
	OnDisk  int     `json:"records_on_disk"`
	Early   bool    `json:"powered_off_first,omitempty"`
}

func powercutSetup(env *scenario.Env) (vm.Config, string, string, error) {
	rfs, err := khibGuest(env, workloadScript(powercutScript, workloadMiB(env, 128)))
	if err != nil {
		return vm.Config{}, "", "", err
	}
	initrd, err := env.WriteRootfs("a.cpio", rfs)
	if err != nil {
		return vm.Config{}, "", "", err
	}
	imgDisk, err := env.NewDisk("image.img", 512)
	if err != nil {
		return vm.Config{}, "", "", err
	}
	dataDisk, err := newDataDisk(env, 0)
	if err != nil {
		return vm.Config{}, "", "", err
	}
	cfg := env.Config()
	cfg.Initrd = initrd
	cfg.Append = khibAppend(RegionSize) + " khib.resume=/dev/vda"
	cfg.Disks = []vm.Disk{{Path: imgDisk}, {Path: dataDisk}}
	return cfg, imgDisk, dataDisk, nil
}

func runPowercutSave(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	seed := seedOf(env)
	env.Logf("powercut-save: seed %d (--seed %d repeats these points)", seed, seed)
	res := scenario.Result{"seed": seed}
	cfg, imgDisk, dataDisk, err := powercutSetup(env)
	if err != nil {
		return res, err
	}
	limits := []time.Duration{1500 * time.Millisecond, 700 * time.Millisecond, 2000 * time.Millisecond, 150 * time.Millisecond, 40 * time.Millisecond}
	rng := rand.New(rand.NewSource(seed))
	plan := cutPlan(rng, 20, limits)
	var recs []cutRecord
	seen := map[image.UUID]bool{}
	partial, resumes, normals, early := 0, 0, 0, 0
	for i := 0; i < len(plan); i++ {
		c := plan[i]
		name := fmt.Sprintf("cut%02d", i+1)
		m, err := env.Start(ctx, name, cfg)
		if err != nil {
			return res, err
		}
		if _, err := m.WaitFor(ctx, regexp.MustCompile(`^khibvm-boot-check `), env.Remaining()); err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
		shown, wasEarly, err := cutAt(ctx, env, m, savePhases, c)
		if err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
		state, uuid, err := imageState(imgDisk)
		if err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
		complete := state == image.StateComplete
		if complete && seen[uuid] {
			return res, fmt.Errorf("%s: the image disk holds image %v again, which an earlier boot resumed from", name, uuid)
		}
		seen[uuid] = true
		// Complete is written after everything else, so before the last
		// chunk is out it cannot be; once the helper said so, it must be.
		if complete && shown < 3 {
			partial++
			return res, fmt.Errorf("%s: the image is complete although the cut came while %s", name, savePhases[shown].name)
		}
		if !complete && shown == len(savePhases)-1 {
			return res, fmt.Errorf("%s: the helper reported the image complete, but after the cut it is %v", name, state)
		}
		acked := maxAck(m)
		next := map[bool]string{true: "resumed", false: "normal"}[complete]
		got, err := afterCut(ctx, env, name+"-next", cfg, complete, acked, dataDisk)
		if err != nil {
			return res, err
		}
		if complete {
			resumes++
		} else {
			normals++
		}
		if wasEarly {
			// The guest powered off before the cut: a complete save, not a
			// cut point. Draw another at the same phase, sooner, so that
			// 20 cuts land (at most 10 more tries).
			early++
			if early <= 10 {
				plan = append(plan, cut{anchor: c.anchor, delay: time.Duration(rng.Int63n(int64(c.delay)/2 + 1))})
			}
		}
		r := cutRecord{Point: i + 1, Anchor: savePhases[c.anchor].name, DelayMS: float64(c.delay.Microseconds()) / 1000,
			Shown: savePhases[shown].name, State: fmt.Sprint(state), Next: next, Acked: acked, OnDisk: got, Early: wasEarly}
		recs = append(recs, r)
		env.Logf("%s: cut %.0f ms after %q, while %s: image %s, next boot %s, %d acknowledged, %d on disk, fsck clean",
			name, r.DelayMS, r.Anchor, r.Shown, r.State, next, acked, got)
	}
	res["points"] = recs
	res["points_tried"] = len(plan) - early
	res["powered_off_before_cut"] = early
	res["resumes_from_partial_images"] = partial
	res["resumed_after_cut"], res["normal_after_cut"] = resumes, normals
	res["lost_writes"] = 0
	res["fsck"] = "clean after every cut"
	if len(plan)-early < 20 {
		return res, fmt.Errorf("only %d of %d cuts landed before the guest powered off", len(plan)-early, len(plan))
	}
	res["points_drawn"] = len(plan)
	return res, nil
}

func runPowercutResume(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	seed := seedOf(env)
	env.Logf("powercut-resume: seed %d (--seed %d repeats these points)", seed, seed)
	res := scenario.Result{"seed": seed}
	cfg, imgDisk, dataDisk, err := powercutSetup(env)
	if err != nil {
		return res, err
	}
	// One hibernation, kept: every cut starts from the same saved A.
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
	ackedBefore := maxAck(m)
	saved := map[string]string{imgDisk: env.Path("image.saved"), dataDisk: env.Path("data.saved")}
	for from, to := range saved {
		if err := copySparse(from, to); err != nil {
			return res, err
		}
	}
	limits := []time.Duration{1000 * time.Millisecond, 900 * time.Millisecond, 1200 * time.Millisecond, 1800 * time.Millisecond,
		15 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond}
	plan := cutPlan(rand.New(rand.NewSource(seed)), 12, limits)
	var recs []cutRecord
	resumes, normals, early := 0, 0, 0
	for i, c := range plan {
		for to, from := range saved {
			if err := copySparse(from, to); err != nil {
				return res, err
			}
		}
		name := fmt.Sprintf("cut%02d", i+1)
		ccfg := cfg
		ccfg.Append += " khibvm.mode=check"
		m, err := env.Start(ctx, name, ccfg)
		if err != nil {
			return res, err
		}
		shown, wasEarly, err := cutAt(ctx, env, m, resumePhases, c)
		if err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
		state, _, err := imageState(imgDisk)
		if err != nil {
			return res, fmt.Errorf("%s: %w", name, err)
		}
		complete := state == image.StateComplete
		// Until C has written all of A, the image must stay resumable;
		// once C said it marked it used, it must be used.
		markIdx := len(resumePhases) - 2
		if !complete && shown < markIdx-1 {
			return res, fmt.Errorf("%s: the cut came while %s, and the image is %v, no longer resumable", name, resumePhases[shown].name, state)
		}
		if complete && shown >= markIdx {
			return res, fmt.Errorf("%s: the cut came after C marked the image used, but it is still complete: A could be resumed twice", name)
		}
		// A resumed before the cut acknowledged more records; those must
		// be on disk too.
		acked := max(ackedBefore, maxAck(m))
		next := map[bool]string{true: "resumed", false: "normal"}[complete]
		got, err := afterCut(ctx, env, name+"-next", cfg, complete, acked, dataDisk)
		if err != nil {
			return res, err
		}
		if complete {
			resumes++
		} else {
			normals++
		}
		if wasEarly {
			early++
		}
		r := cutRecord{Point: i + 1, Anchor: resumePhases[c.anchor].name, DelayMS: float64(c.delay.Microseconds()) / 1000,
			Shown: resumePhases[shown].name, State: fmt.Sprint(state), Next: next, Acked: acked, OnDisk: got, Early: wasEarly}
		recs = append(recs, r)
		env.Logf("%s: cut %.0f ms after %q, while %s: image %s, next boot %s, %d records on disk (%d acknowledged), fsck clean",
			name, r.DelayMS, r.Anchor, r.Shown, r.State, next, got, acked)
	}
	res["points"] = recs
	res["points_tried"] = len(plan) - early
	res["resumed_after_cut"], res["normal_after_cut"] = resumes, normals
	res["acked_before_hibernation"] = ackedBefore
	res["lost_writes"] = 0
	if len(plan)-early < 10 {
		return res, fmt.Errorf("only %d of %d cuts landed before A was up", len(plan)-early, len(plan))
	}
	return res, nil
}
