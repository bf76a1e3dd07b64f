package scenarios

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
	"github.com/khib/khib/internal/workload"
)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "cycle-encrypted",
		Description: "A saves its memory twice in one boot: in clear (--return) and encrypted with a passphrase from a file " +
			"(--encrypt, power off). On the host, the workload's pattern and a marker string kept in A's tmpfs are in the clear " +
			"image and nowhere on the encrypted disk, which verifies with the passphrase only. The next boot is typed three " +
			"wrong passphrases on the serial console: refused, normal boot, nothing restored. The one after is typed a wrong " +
			"one, then the right one: it resumes, workload and marker intact. A last boot resumes the clear image, for its " +
			"restore time. Figures: save and restore time and throughput, encrypted against clear, and the key derivations",
		Timeout: 30 * time.Minute,
		Run:     runCycleEncrypted,
	})
}

// encryptedScript is A's init. On the first boot (khibvm.first=1 on the
// command line) it fills its memory and saves it twice; on any other
// boot that runs it, the resume was refused: it says so and powers off.
// A resumed A carries on after the khib hibernate that saved it.
const encryptedScript = guestPrelude + `
if ! grep -q 'khibvm.first=1' /proc/cmdline; then
	echo "KHIBVM:normal_boot=1"
	echo "KHIBVM:guest_done=ok"
	poweroff -f
fi
# A secret of A's that only its memory holds: a tmpfs file.
m=@MARKER@
i=0; while [ $i -lt 200 ]; do echo "$m $i"; i=$((i+1)); done >/tmp/marker.txt
printf '%s\n' '@PASSPHRASE@' >/tmp/passphrase
khib-workload start --mib @MIB@ --seed @SEED@ --mixed --garbage @GARBAGE@ || fail workload
sleep 1
khib-workload verify || fail verify-before
meminfo() { echo "khibvm-meminfo $1 $(grep -E '^(MemFree|AnonPages|Shmem|Slab|PageTables|KernelStack|Buffers|Cached):' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"; }
# A round trip first, so that both saves start from the same state: a
# parked helper, which each save replaces (a save after a jump found
# about 30 MiB more of A's memory in use than the first jump of a boot).
khib check --jump >/dev/null || fail jump
meminfo before-plain
echo "khibvm-hibernate-start plain"
khib hibernate --target /dev/vda --return >/tmp/p.out 2>/tmp/p.err
rc=$?
sed 's/^/khibvm-out plain: /' /tmp/p.out; sed 's/^/khibvm-stderr plain: /' /tmp/p.err
[ $rc = 0 ] || fail hibernate-plain
if grep -q 'resumed;' /tmp/p.out; then
	# The last boot: the image in clear was resumed.
	khib-workload verify || fail verify-plain
	grep -q "$m 199" /tmp/marker.txt || fail marker-plain
	echo "khibvm-resumed plain"
	echo "KHIBVM:guest_done=ok"
	poweroff -f
fi
khib-workload verify || fail verify-between
meminfo before-encrypted
echo "khibvm-hibernate-start encrypted"
khib hibernate --target /dev/vdb --encrypt --passphrase-file /tmp/passphrase >/tmp/e.out 2>/tmp/e.err
rc=$?
echo "khibvm-resumed encrypted"
sed 's/^/khibvm-out encrypted: /' /tmp/e.out; sed 's/^/khibvm-stderr encrypted: /' /tmp/e.err
[ $rc = 0 ] || fail hibernate-encrypted
grep -q 'resumed;' /tmp/e.out || fail not-resumed-from-disk
khib-workload verify || fail verify-encrypted
grep -q "$m 199" /tmp/marker.txt || fail marker
echo "khibvm-workload-verified encrypted"
echo "KHIBVM:guest_done=ok"
poweroff -f
`

var (
	// khib-helper: image complete on /dev/vda: 81234 pages (1234 zero), 9876 free pages skipped, 123.4 MiB stored, ratio 0.512, 3.4 s, 297 MB/s
	imageCompleteRE = regexp.MustCompile(`khib-helper: image complete on (\S+): (\d+) pages .* ([0-9.]+) MiB stored, ratio ([0-9.]+), ([0-9.]+) s, ([0-9]+) MB/s`)
	promptRE        = func(try int) *regexp.Regexp {
		return regexp.MustCompile(fmt.Sprintf(`^khib: the hibernation image on /dev/vdb is encrypted; type its passphrase \(try %d of 3`, try))
	}
	wrongRE     = regexp.MustCompile(`^khib: wrong passphrase \(try (\d) of 3, key derived in ([0-9.]+) s\)`)
	acceptedRE  = regexp.MustCompile(`^khib: passphrase accepted \(key derived in ([0-9.]+) s\)`)
	restoredRE  = regexp.MustCompile(`^khib-restore: A's memory restored in ([0-9.]+) s`)
	intactRE    = regexp.MustCompile(`^khib: image intact \((?:.*, )?([0-9.]+) s\)`)
	kdfARE      = regexp.MustCompile(`khib: the image will be encrypted .* took ([0-9.]+) s\)`)
	notResuming = regexp.MustCompile(`^khib: NOT resuming from the hibernation image on /dev/vdb`)
)

// saveFigures reads the helper's line about the save to dev.
func saveFigures(m *vm.Machine, dev string) (pages uint64, mib, ratio, secs, mbs float64, err error) {
	for _, l := range m.Lines() {
		mm := imageCompleteRE.FindStringSubmatch(l.Text)
		if mm == nil || mm[1] != dev {
			continue
		}
		pages, _ = strconv.ParseUint(mm[2], 10, 64)
		mib, _ = strconv.ParseFloat(mm[3], 64)
		ratio, _ = strconv.ParseFloat(mm[4], 64)
		secs, _ = strconv.ParseFloat(mm[5], 64)
		mbs, _ = strconv.ParseFloat(mm[6], 64)
		return pages, mib, ratio, secs, mbs, nil
	}
	return 0, 0, 0, 0, 0, fmt.Errorf("the helper reported no complete image on %s", dev)
}

// firstFloat returns the first group of the first line re matches, as a number.
func firstFloat(m *vm.Machine, re *regexp.Regexp) (float64, bool) {
	for _, l := range m.Lines() {
		if mm := re.FindStringSubmatch(l.Text); mm != nil {
			f, err := strconv.ParseFloat(mm[len(mm)-1], 64)
			return f, err == nil
		}
	}
	return 0, false
}

func runCycleEncrypted(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	mib := workloadMiB(env, 128)
	res := scenario.Result{"workload_mib": mib}
	say := func(format string, a ...any) {
		if env.Demo {
			env.Logf(format, a...)
		}
	}
	var rnd [12]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return res, err
	}
	marker := "KHIBVM-MARKER-" + hex.EncodeToString(rnd[:])
	pass := "khib test passphrase " + hex.EncodeToString(rnd[:4])
	script := workloadScript(encryptedScript, mib, "@MARKER@", marker, "@PASSPHRASE@", pass)
	rfs, err := khibGuest(env, script)
	if err != nil {
		return res, err
	}
	initrd, err := env.WriteRootfs("a.cpio", rfs)
	if err != nil {
		return res, err
	}
	plainDisk, err := env.NewDisk("plain.img", 768)
	if err != nil {
		return res, err
	}
	encDisk, err := env.NewDisk("encrypted.img", 768)
	if err != nil {
		return res, err
	}
	cfg := env.Config()
	cfg.Initrd = initrd
	cfg.Disks = []vm.Disk{{Path: plainDisk}, {Path: encDisk}}
	base := khibAppend(RegionSize)

	// Boot 1: two saves of the same A, in clear and encrypted.
	say("boot 1: A fills %d MiB, saves in clear to vda (--return), then encrypted to vdb and powers off", mib)
	cfg.Append = base + " khib.resume=/dev/vdb khibvm.first=1"
	m, err := env.Start(ctx, "boot1", cfg)
	if err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, regexp.MustCompile(`^khib: no hibernation image on /dev/vdb`), env.Remaining()); err != nil {
		return res, fmt.Errorf("boot 1: stage 1 did not report an empty resume device: %w", err)
	}
	if _, err := m.WaitFor(ctx, regexp.MustCompile(`^khibvm-hibernate-start encrypted`), env.Remaining()); err != nil {
		return res, err
	}
	if _, err := m.WaitPowerOff(env.Remaining()); err != nil {
		return res, fmt.Errorf("encrypted hibernation: %w", err)
	}
	if fs := figureString(scenario.Figures(m), "failed_step"); fs != "" {
		return res, fmt.Errorf("boot 1: the guest failed at %s", fs)
	}
	pPages, pMiB, pRatio, pSecs, pMBs, err := saveFigures(m, "/dev/vda")
	if err != nil {
		return res, err
	}
	ePages, eMiB, eRatio, eSecs, eMBs, err := saveFigures(m, "/dev/vdb")
	if err != nil {
		return res, err
	}
	res["plain_pages"], res["plain_image_mib"], res["plain_ratio"], res["plain_save_s"], res["plain_save_mb_s"] = pPages, pMiB, pRatio, pSecs, pMBs
	res["enc_pages"], res["enc_image_mib"], res["enc_ratio"], res["enc_save_s"], res["enc_save_mb_s"] = ePages, eMiB, eRatio, eSecs, eMBs
	if pMBs > 0 {
		res["save_throughput_cost_pct"] = scenario.Round3(100 * (1 - eMBs/pMBs))
	}
	// Per MiB stored, which leaves out that the encrypted save found more
	// of A's memory in use: the key derivation's 64 MiB, freed, wait on
	// the per-CPU free lists, which the helper cannot tell from used
	// memory (see the meminfo lines before each save).
	if pSecs > 0 && eSecs > 0 {
		res["plain_stored_mib_s"], res["enc_stored_mib_s"] = scenario.Round3(pMiB/pSecs), scenario.Round3(eMiB/eSecs)
	}
	say("saves: in clear %.1f s, %.0f MB/s, %.1f MiB; encrypted %.1f s, %.0f MB/s, %.1f MiB", pSecs, pMBs, pMiB, eSecs, eMBs, eMiB)

	// The host's view of both disks.
	if err := checkEncryptedDisks(env, plainDisk, encDisk, pass, marker, mib, res); err != nil {
		return res, err
	}

	// Boot 2: three wrong passphrases.
	say("boot 2: three wrong passphrases typed on the serial console")
	cfg.Append = base + " khib.resume=/dev/vdb"
	m, err = env.Start(ctx, "boot2", cfg)
	if err != nil {
		return res, err
	}
	for try := 1; try <= 3; try++ {
		if _, err := m.WaitFor(ctx, promptRE(try), env.Remaining()); err != nil {
			return res, fmt.Errorf("boot 2: no passphrase prompt %d: %w", try, err)
		}
		if err := m.Send(fmt.Sprintf("not the passphrase %d\n", try)); err != nil {
			return res, err
		}
	}
	if _, err := m.WaitFor(ctx, notResuming, env.Remaining()); err != nil {
		return res, fmt.Errorf("boot 2: three wrong passphrases were not refused: %w", err)
	}
	if _, err := m.WaitFor(ctx, normalBootRE, env.Remaining()); err != nil {
		return res, fmt.Errorf("boot 2: no normal boot after the refusal: %w", err)
	}
	if _, err := m.WaitPowerOff(env.Remaining()); err != nil {
		return res, err
	}
	if n := countLines(m, wrongRE); n != 3 {
		return res, fmt.Errorf("boot 2: %d wrong-passphrase lines, want 3", n)
	}
	if countLines(m, restoreRE) != 0 || countLines(m, intactRE) != 0 {
		return res, fmt.Errorf("boot 2: the image was read or restored despite three wrong passphrases")
	}
	res["refusal"] = strings.TrimSpace(lastLine(m, `^  [0-9] wrong passphrases|^  .*wrong passphrases`))
	if f, ok := firstFloat(m, wrongRE); ok {
		res["stage1_kdf_s"] = f
	}
	say("boot 2: refused (%v), normal boot, nothing restored", res["refusal"])

	// Boot 3: a wrong passphrase, then the right one.
	say("boot 3: a wrong passphrase, then the right one")
	m, err = env.Start(ctx, "boot3", cfg)
	if err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, promptRE(1), env.Remaining()); err != nil {
		return res, err
	}
	t0 := time.Now()
	if err := m.Send("wrong again\n"); err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, promptRE(2), env.Remaining()); err != nil {
		return res, err
	}
	if err := m.Send(pass + "\n"); err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, regexp.MustCompile(`^khibvm-workload-verified encrypted`), env.Remaining()); err != nil {
		return res, fmt.Errorf("boot 3: A did not come back: %w", err)
	}
	res["enc_resume_after_passphrase_s"] = scenario.Round3(time.Since(t0).Seconds())
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return res, err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return res, err
	}
	fig := scenario.Figures(m)
	if figureString(fig, "guest_done") != "ok" {
		return res, fmt.Errorf("boot 3: A failed at %q after resuming", figureString(fig, "failed_step"))
	}
	if countLines(m, restoreRE) == 0 {
		return res, fmt.Errorf("boot 3: A came back, but no restore helper ran")
	}
	for key, re := range map[string]*regexp.Regexp{"enc_restore_s": restoredRE, "enc_stage1_verify_s": intactRE, "stage1_kdf_ok_s": acceptedRE, "a_kdf_s": kdfARE} {
		if f, ok := firstFloat(m, re); ok {
			res[key] = f
		}
	}
	sb, err := readSuperblock(encDisk)
	if err != nil || sb.State != image.StateInvalidated {
		return res, fmt.Errorf("after the resume the encrypted image is %v (%v), want invalidated", sb, err)
	}
	say("boot 3: resumed; workload and marker intact; the image is marked used")

	// Boot 4: the image in clear, for its restore figures.
	say("boot 4: the image in clear resumes, for comparison")
	cfg.Append = base + " khib.resume=/dev/vda"
	m, err = env.Start(ctx, "boot4", cfg)
	if err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, regexp.MustCompile(`^khibvm-resumed plain`), env.Remaining()); err != nil {
		return res, fmt.Errorf("boot 4: the image in clear did not resume: %w", err)
	}
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return res, err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return res, err
	}
	if figureString(scenario.Figures(m), "guest_done") != "ok" {
		return res, fmt.Errorf("boot 4: A failed at %q", figureString(scenario.Figures(m), "failed_step"))
	}
	for key, re := range map[string]*regexp.Regexp{"plain_restore_s": restoredRE, "plain_stage1_verify_s": intactRE} {
		if f, ok := firstFloat(m, re); ok {
			res[key] = f
		}
	}
	say("restore: encrypted %v s, in clear %v s; stage 1's verify: encrypted %v s, in clear %v s",
		res["enc_restore_s"], res["plain_restore_s"], res["enc_stage1_verify_s"], res["plain_stage1_verify_s"])
	return res, nil
}

func readSuperblock(disk string) (*image.Superblock, error) {
	f, err := os.Open(disk)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return image.ReadSuperblock(f)
}

// checkEncryptedDisks greps both raw disks for what A held in clear: the
// workload's pattern and the marker must be in the image in clear (else
// the test could not fail) and nowhere on the encrypted disk. The
// encrypted image must show its header only, and verify with the
// passphrase and not without it.
func checkEncryptedDisks(env *scenario.Env, plainDisk, encDisk, pass, marker string, mib int, res scenario.Result) error {
	khib, err := env.Bin("khib")
	if err != nil {
		return err
	}
	passFile := env.Path("passphrase")
	if err := os.WriteFile(passFile, []byte(pass+"\n"), 0o600); err != nil {
		return err
	}
	wrongFile := env.Path("wrong-passphrase")
	if err := os.WriteFile(wrongFile, []byte(pass+"x\n"), 0o600); err != nil {
		return err
	}
	if out, err := exec.Command(khib, "image", "verify", "--passphrase-file", passFile, encDisk).CombinedOutput(); err != nil {
		return fmt.Errorf("khib image verify of the encrypted image with its passphrase: %v\n%s", err, out)
	}
	if out, err := exec.Command(khib, "image", "verify", "--passphrase-file", wrongFile, encDisk).CombinedOutput(); err == nil || !strings.Contains(string(out), "wrong key") {
		return fmt.Errorf("khib image verify of the encrypted image with a wrong passphrase: %v\n%s", err, out)
	}
	if out, err := exec.Command(khib, "image", "verify", plainDisk).CombinedOutput(); err != nil {
		return fmt.Errorf("khib image verify of the image in clear: %v\n%s", err, out)
	}
	out, err := exec.Command(khib, "image", "inspect", encDisk).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "format version 2") || strings.Contains(string(out), "kernel ") {
		return fmt.Errorf("khib image inspect of the encrypted image shows more than its header (%v):\n%s", err, out)
	}

	// The needles: the marker, and 64 bytes from the middle of each of
	// the first 32 random pages of the workload's pattern (random, so
	// that the codec stores them as they are in the image in clear).
	needles := map[string][]byte{"marker": []byte(marker)}
	page := make([]byte, workload.PageSize)
	for idx := uint64(0); len(needles) < 33 && idx < uint64(mib)<<8; idx++ {
		if workload.KindOf(workloadSeed, idx, true) != workload.Random {
			continue
		}
		workload.Fill(page, workloadSeed, idx, true)
		needles[fmt.Sprintf("workload page %d", idx)] = bytes.Clone(page[2048 : 2048+64])
	}
	found := map[string]map[string]bool{}
	for name, disk := range map[string]string{"plain": plainDisk, "enc": encDisk} {
		f, err := grepDisk(disk, needles)
		if err != nil {
			return err
		}
		found[name] = f
	}
	count := func(disk string, pattern bool) int {
		n := 0
		for k := range found[disk] {
			if strings.HasPrefix(k, "workload") == pattern {
				n++
			}
		}
		return n
	}
	res["needles_pattern"] = len(needles) - 1
	res["plain_pattern_found"], res["plain_marker_found"] = count("plain", true), found["plain"]["marker"]
	res["enc_pattern_found"], res["enc_marker_found"] = count("enc", true), found["enc"]["marker"]
	// The control: without it the test could not fail.
	if !found["plain"]["marker"] || count("plain", true) < (len(needles)-1)/2 {
		return fmt.Errorf("control failed: the image in clear holds the marker %v and %d of %d workload needles", found["plain"]["marker"], count("plain", true), len(needles)-1)
	}
	if len(found["enc"]) != 0 {
		var what []string
		for k := range found["enc"] {
			what = append(what, k)
		}
		return fmt.Errorf("the encrypted disk holds A's memory in clear: %s", strings.Join(what, ", "))
	}
	if env.Demo {
		env.Logf("grep of the raw disks: in clear, the marker and %d of %d workload needles; encrypted, none", count("plain", true), len(needles)-1)
	}
	// Nor is the image's own key among the pages it holds: A put it in
	// the mailbox page only, and the helper cleared that before saving.
	in, err := keyInImage(encDisk, pass)
	if err != nil {
		return err
	}
	res["key_in_image"] = in
	if in {
		return fmt.Errorf("the encrypted image holds its own master key among A's pages")
	}
	return nil
}

// keyInImage opens the encrypted image with its passphrase and reports
// whether any of its pages (A's memory) holds the master key.
func keyInImage(disk, pass string) (bool, error) {
	f, err := os.Open(disk)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, err
	}
	sb, err := image.ReadSuperblock(f)
	if err != nil {
		return false, err
	}
	key, err := image.UnlockPassphrase(sb, []byte(pass))
	if err != nil {
		return false, fmt.Errorf("unlocking the encrypted image on the host: %w", err)
	}
	rd, err := image.OpenWith(f, st.Size(), image.OpenOptions{Key: key})
	if err != nil {
		return false, fmt.Errorf("opening the encrypted image on the host: %w", err)
	}
	defer rd.Close()
	found := false
	var tail []byte // the end of the piece before, for a key across pieces
	next := uint64(0)
	err = rd.Restore(func(pfn uint64, pages []byte, zero bool) error {
		if zero {
			tail, next = nil, 0
			return nil
		}
		if pfn != next {
			tail = nil
		}
		if bytes.Contains(pages, key) || (tail != nil && bytes.Contains(append(tail, pages[:len(key)-1]...), key)) {
			found = true
		}
		tail = bytes.Clone(pages[len(pages)-(len(key)-1):])
		next = pfn + uint64(len(pages)/image.PageSize)
		return nil
	})
	return found, err
}

// grepDisk reports which needles occur anywhere in the raw disk file.
func grepDisk(disk string, needles map[string][]byte) (map[string]bool, error) {
	f, err := os.Open(disk)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() == 0 {
		return map[string]bool{}, nil
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping %s: %w", disk, err)
	}
	defer unix.Munmap(b)
	found := map[string]bool{}
	for name, n := range needles {
		if bytes.Contains(b, n) {
			found[name] = true
		}
	}
	return found, nil
}
