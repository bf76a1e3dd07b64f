package scenarios

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/memmap"
	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
	"github.com/khib/khib/internal/workload"
)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "hibernate",
		Description: "khib hibernate writes A's memory (a ~400 MiB mixed workload) as an image and the VM powers off; " +
			"once with an armed helper (which the save unloads: saves always boot the helper fresh), once without. The host verifies both images and finds 1000 workload pages in each",
		Timeout: 20 * time.Minute,
		Run:     runHibernate,
	})
	scenario.Register(scenario.Scenario{
		Name:        "hibernate-too-small",
		Description: "the image device is too small: the helper jumps back, khib hibernate prints its reason, and A's workload verifies intact",
		Timeout:     15 * time.Minute,
		Run:         runTooSmall,
	})
	scenario.Register(scenario.Scenario{
		Name: "hibernate-write-error",
		Description: "the image device fails writes past 64 MiB (QEMU blkdebug): the helper jumps back with the I/O error, " +
			"and A's workload verifies intact",
		Timeout: 15 * time.Minute,
		Run:     runWriteError,
	})
	scenario.Register(scenario.Scenario{
		Name: "hibernate-no-device",
		Description: "the helper cannot find the image device, because every read of its first sector fails (QEMU blkdebug), " +
			"as when the helper lacks its driver: the helper jumps back, khib hibernate names the devices it looked at, " +
			"and A's workload verifies intact",
		Timeout: 15 * time.Minute,
		Run:     runNoDevice,
	})
}

const workloadSeed = 42

// garbageMiB is memory the workload fills with random bytes and frees
// before it starts: free pages that are not zero, which the helper must
// recognise as free from A's struct pages and leave out.
const garbageMiB = 128

// hibernateScript runs in A: a mixed workload, optionally an armed
// helper, then khib hibernate. It only gets past hibernate if the helper
// came back, which in this scenario is a failure.
const hibernateScript = guestPrelude + `
grep -e "System RAM" -e "Crash kernel" /proc/iomem | sed 's/^/khibvm-iomem /'
khib check >/dev/null || fail check
khib-workload start --mib @MIB@ --seed @SEED@ --mixed --garbage @GARBAGE@ || fail workload
echo "KHIBVM:pfns=$(khib-workload pfns --count 1000)"
@ARM@
khib status
echo "khibvm-hibernate-start"
khib hibernate --target /dev/vda --json >/tmp/h.json 2>/tmp/h.err
echo "KHIBVM:hibernate_rc=$?"
sed 's/^/khibvm-stderr hibernate: /' /tmp/h.err
@AFTER@
`

const hibernateFail = `fail hibernate-returned`

const tooSmallAfter = `khib-workload verify || fail verify
echo "KHIBVM:guest_done=ok"
poweroff -f
`

var (
	hibernateRE    = regexp.MustCompile(`^khibvm-hibernate-start`)
	imageCompleted = regexp.MustCompile(`khib-helper: image complete on`)
)

func hibernateGuest(env *scenario.Env, name string, arm bool, after string) (string, error) {
	script := workloadScript(hibernateScript, workloadMiB(env, 400),
		"@ARM@", map[bool]string{true: "khib arm || fail arm", false: ""}[arm], "@AFTER@", after)
	rfs, err := khibGuest(env, script)
	if err != nil {
		return "", err
	}
	return env.WriteRootfs(name+".cpio", rfs)
}

// hibernateOnce boots A with an image disk, hibernates it and returns the
// figures; the machine has powered off when it returns.
func hibernateOnce(ctx context.Context, env *scenario.Env, name string, arm bool, disk string) (*vm.Machine, scenario.Result, error) {
	initrd, err := hibernateGuest(env, name, arm, hibernateFail)
	if err != nil {
		return nil, nil, err
	}
	cfg := env.Config()
	cfg.Initrd = initrd
	cfg.Append = khibAppend(RegionSize)
	cfg.Disks = []vm.Disk{{Path: disk}}
	m, err := env.Start(ctx, name, cfg)
	if err != nil {
		return nil, nil, err
	}
	start, err := m.WaitFor(ctx, hibernateRE, env.Remaining())
	if err != nil {
		return m, nil, err
	}
	exit, err := m.WaitPowerOff(env.Remaining())
	if err != nil {
		return m, nil, err
	}
	fig := scenario.Figures(m)
	if fs := figureString(fig, "failed_step"); fs != "" {
		return m, nil, fmt.Errorf("%s: the guest failed at %s", name, fs)
	}
	if countLines(m, imageCompleted) != 1 {
		return m, nil, fmt.Errorf("%s: the helper did not report a complete image", name)
	}
	res := scenario.Result{"hibernate_s": scenario.Round3((exit.At - start.At).Seconds())}
	return m, res, nil
}

func runHibernate(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	res := scenario.Result{"workload_mib": workloadMiB(env, 400)}
	for _, armed := range []bool{true, false} {
		name := map[bool]string{true: "armed", false: "fresh"}[armed]
		disk, err := env.NewDisk(name+".img", 1024)
		if err != nil {
			return res, err
		}
		if env.Demo {
			env.Logf("%s: booting A, starting a %d MiB workload, hibernating to a 1 GiB virtio disk", name, workloadMiB(env, 400))
		}
		m, r, err := hibernateOnce(ctx, env, name, armed, disk)
		if err != nil {
			return res, err
		}
		res[name+"_hibernate_s"] = r["hibernate_s"]
		if err := checkImage(env, m, disk, name, res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// checkImage verifies an image on the host with khib's own CLI, checks its
// page counts against A's memory map, and compares workload pages found
// in it with the workload's pattern.
func checkImage(env *scenario.Env, m *vm.Machine, disk, name string, res scenario.Result) error {
	khib, err := env.Bin("khib")
	if err != nil {
		return err
	}
	if out, err := exec.Command(khib, "image", "verify", disk).CombinedOutput(); err != nil {
		return fmt.Errorf("%s: khib image verify: %v\n%s", name, err, out)
	}
	ins, err := inspectImage(env, disk)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	// A's RAM outside R, in whole pages, as A's /proc/iomem showed it.
	var iomem strings.Builder
	for _, l := range m.Lines() {
		if rest, ok := strings.CutPrefix(l.Text, "khibvm-iomem "); ok {
			iomem.WriteString(rest + "\n")
		}
	}
	io, err := memmap.ParseIomem(strings.NewReader(iomem.String()))
	if err != nil {
		return fmt.Errorf("%s: A's /proc/iomem: %w", name, err)
	}
	r, ok := io.CrashKernel()
	if !ok {
		return fmt.Errorf("%s: A reported no reserved region", name)
	}
	region := kexec.Range{Start: r.Start, End: r.End}
	var want uint64
	for _, r := range io.SystemRAM() {
		ram := kexec.Range{Start: r.Start &^ 4095, End: (r.End + 4095) &^ 4095}
		for _, p := range kexec.Subtract(ram, []kexec.Range{region}) {
			want += p.Size() / 4096
		}
	}
	var free uint64
	fmt.Sscan(ins.Meta.Notes["free_pages"], &free)
	if ins.State != "complete" || ins.Pages+free != want || ins.ZeroPages+ins.DataPages != ins.Pages {
		return fmt.Errorf("%s: image %s has %d pages (%d zero + %d data) and skipped %d free ones; A has %d pages of RAM outside R",
			name, ins.State, ins.Pages, ins.ZeroPages, ins.DataPages, free, want)
	}
	// The garbage the workload freed is in A's free lists, not in the image.
	if free*4096 < garbageMiB<<20 {
		return fmt.Errorf("%s: only %d MiB of A's free memory was recognised as free; the workload alone freed %d MiB", name, free*4096>>20, garbageMiB)
	}
	res[name+"_free_mib"] = free * 4096 >> 20
	res[name+"_image_mib"] = scenario.Round3(float64(ins.ImageBytes) / (1 << 20))
	res[name+"_pages"] = ins.Pages
	res[name+"_zero_pages"] = ins.ZeroPages
	res[name+"_ratio"] = scenario.Round3(ins.Ratio)
	n, err := checkWorkloadPages(disk, figureString(scenario.Figures(m), "pfns"), true)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	res[name+"_pages_checked"] = n
	if env.Demo {
		env.Logf("%s: image verified: %d pages (%d zero), %.1f MiB on disk; %d workload pages found intact in it",
			name, ins.Pages, ins.ZeroPages, float64(ins.ImageBytes)/(1<<20), n)
	}
	return nil
}

// checkWorkloadPages reads the pages named by pfns ("index:pfn,...") from
// the image and compares each with the workload's pattern.
func checkWorkloadPages(disk, pfns string, mixed bool) (int, error) {
	f, err := os.Open(disk)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	rd, err := image.Open(f, st.Size())
	if err != nil {
		return 0, fmt.Errorf("opening the image: %w", err)
	}
	defer rd.Close()
	scratch := make([]byte, workload.PageSize)
	n := 0
	for _, pair := range strings.Split(pfns, ",") {
		a, b, ok := strings.Cut(pair, ":")
		idx, err1 := strconv.ParseUint(a, 10, 64)
		pfn, err2 := strconv.ParseUint(b, 10, 64)
		if !ok || err1 != nil || err2 != nil || pfn == 0 {
			return n, fmt.Errorf("bad workload page %q (the workload must run as root to see its PFNs)", pair)
		}
		page, err := rd.ReadPage(pfn)
		if err != nil {
			return n, fmt.Errorf("workload page %d at pfn %#x: %w", idx, pfn, err)
		}
		if !workload.Check(page, workloadSeed, idx, mixed, scratch) {
			return n, fmt.Errorf("workload page %d at pfn %#x differs in the image (%v page)", idx, pfn, workload.KindOf(workloadSeed, idx, mixed))
		}
		n++
	}
	if n < 1000 {
		return n, fmt.Errorf("only %d workload pages to check", n)
	}
	return n, nil
}

func runTooSmall(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	disk, err := env.NewDisk("small.img", 40)
	if err != nil {
		return nil, err
	}
	res := scenario.Result{"disk_mib": 40}
	return res, saveMustFail(ctx, env, vm.Disk{Path: disk}, "needs about", res)
}

// runWriteError puts QEMU's blkdebug driver under the image disk: every
// write that touches the sector at 64 MiB fails with EIO, as a dying disk
// would, after A's reservation and the first part of the image succeeded.
func runWriteError(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	disk, err := env.NewDisk("failing.img", 1024)
	if err != nil {
		return nil, err
	}
	conf := env.Path("blkdebug.conf")
	rule := "[inject-error]\nevent = \"write_aio\"\nerrno = \"5\"\nsector = \"131072\"\nonce = \"off\"\n"
	if err := os.WriteFile(conf, []byte(rule), 0o644); err != nil {
		return nil, err
	}
	res := scenario.Result{"fail_at_mib": 64}
	return res, saveMustFail(ctx, env, vm.Disk{Path: disk, Blkdebug: conf}, "input/output error", res)
}

// runNoDevice makes reads of the image disk's first sector fail from the
// first cache flush on, which is A syncing its reservation: A gets as far
// as the jump, and the helper, which reads each block device's first
// sector to find the reservation, finds none.
func runNoDevice(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	disk, err := env.NewDisk("unreadable.img", 1024)
	if err != nil {
		return nil, err
	}
	conf := env.Path("blkdebug.conf")
	rules := "[set-state]\nstate = \"1\"\nevent = \"flush_to_disk\"\nnew_state = \"2\"\n\n" +
		"[inject-error]\nstate = \"2\"\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"0\"\nonce = \"off\"\n"
	if err := os.WriteFile(conf, []byte(rules), 0o644); err != nil {
		return nil, err
	}
	res := scenario.Result{}
	return res, saveMustFail(ctx, env, vm.Disk{Path: disk, Blkdebug: conf}, "no block device carries khib's reservation", res)
}

// saveMustFail boots A with the image device spec, hibernates, and checks
// that the helper came back with a reason containing want, that A's
// workload is intact, and that nothing on the device reads as an image.
func saveMustFail(ctx context.Context, env *scenario.Env, disk vm.Disk, want string, res scenario.Result) error {
	initrd, err := hibernateGuest(env, "a", false, tooSmallAfter)
	if err != nil {
		return err
	}
	m, err := runGuest(ctx, env, "a", initrd, khibAppend(RegionSize), disk)
	if err != nil {
		return err
	}
	fig := scenario.Figures(m)
	res["workload_mib"] = workloadMiB(env, 400)
	if figureString(fig, "guest_done") != "ok" {
		return fmt.Errorf("the guest failed at %q", figureString(fig, "failed_step"))
	}
	reason := strings.Join(taggedLines(stderrLineRE, m)["hibernate"], " | ")
	res["reason"] = reason
	if figureString(fig, "hibernate_rc") != "1" || !strings.Contains(reason, want) {
		return fmt.Errorf("khib hibernate exited %s with %q; want 1 and the helper's reason containing %q", figureString(fig, "hibernate_rc"), reason, want)
	}
	// The image on the device must not read as complete.
	if out, err := exec.Command(filepath.Join(env.BinDir, "khib"), "image", "verify", disk.Path).CombinedOutput(); err == nil {
		return fmt.Errorf("a failed save left an image that verifies:\n%s", out)
	}
	return nil
}
