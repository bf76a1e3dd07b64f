package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/khib/khib/internal/vm/scenario"
)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "cycle-tpm",
		Description: "Debian guest with a TPM 2.0 (swtpm): encrypt = tpm in khib.conf, `systemctl hibernate`; the image is " +
			"encrypted with its key sealed to the TPM (PCRs 0,2,4,7); the next boot resumes through the initramfs with " +
			"nobody at the console, the workload intact. Hibernated again, the machine boots with another option ROM " +
			"(a VGA card: PCR 2 changes): the TPM does not release the key, the image is refused, the boot goes on normally",
		Timeout: 20 * time.Minute,
		Run:     runCycleTPM,
	})
}

var (
	tpmReleasedRE = regexp.MustCompile(`^khib: the TPM released the image's key`)
	tpmRefusedRE  = regexp.MustCompile(`khib: the TPM does not release the image's key`)
	notResumingRE = regexp.MustCompile(`khib: NOT resuming`)
)

// softTPM runs swtpm, a software TPM 2.0, for QEMU: one process per boot
// (--terminate: it ends with its QEMU), all of them on the same state
// directory, as one machine's TPM keeps its seeds across power cycles.
type softTPM struct {
	dir string
	cmd *exec.Cmd
}

func newSoftTPM(dir string) (*softTPM, error) {
	if _, err := exec.LookPath("swtpm"); err != nil {
		return nil, fmt.Errorf("cycle-tpm needs swtpm, a software TPM 2.0 for QEMU: apt-get install swtpm swtpm-tools")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &softTPM{dir: dir}, nil
}

// args starts a fresh swtpm on the state directory and returns QEMU's
// arguments for it, and for the boot named changed a VGA card, whose
// option ROM SeaBIOS runs and measures into PCR 2.
func (s *softTPM) args(name string, changed bool) ([]string, error) {
	s.stop()
	sock := filepath.Join(s.dir, "ctrl.sock")
	os.Remove(sock)
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+s.dir,
		"--ctrl", "type=unixio,path="+sock, "--terminate",
		"--log", "file="+filepath.Join(s.dir, name+".log")+",level=1")
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	s.cmd = cmd
	for i := 0; i < 100; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	a := []string{"-chardev", "socket,id=chrtpm,path=" + sock, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"}
	if changed {
		a = append(a, "-device", "VGA")
	}
	return a, nil
}

func (s *softTPM) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
	}
	s.cmd = nil
}

// pcrScript prints the SHA-256 PCRs 0-7 as the kernel shows them.
const pcrScript = `for i in 0 1 2 3 4 5 6 7; do printf '%s=%s ' $i $(cut -c1-16 /sys/class/tpm/tpm0/pcr-sha256/$i); done`

func runCycleTPM(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	res := scenario.Result{}
	tpm, err := newSoftTPM(env.Path("tpm"))
	if err != nil {
		return res, err
	}
	defer tpm.stop()
	g, err := newDistroGuest(ctx, env)
	if err != nil {
		return res, err
	}
	var qerr error
	g.qemu = func(name string) []string {
		a, err := tpm.args(name, strings.HasSuffix(name, "-changed"))
		if err != nil {
			qerr = err
		}
		return a
	}
	say := func(format string, a ...any) {
		if env.Demo {
			env.Logf(format, a...)
		}
	}
	if _, err := g.boot(ctx, "boot1"); err != nil {
		return res, errorsJoin(err, qerr)
	}
	if _, err := g.sh(ctx, "test -c /dev/tpmrm0"); err != nil {
		return res, fmt.Errorf("the guest has no /dev/tpmrm0: %w", err)
	}
	res["pcrs_boot1"], _ = g.sh(ctx, pcrScript)
	mib := workloadMiB(env, 64)
	if _, err := g.sh(ctx, fmt.Sprintf("khib-workload start --mib %d --seed %d --mixed", mib, workloadSeed)); err != nil {
		return res, err
	}
	// encrypt = tpm: systemctl hibernate (khib hibernate --systemd, with
	// no terminal) seals the key to the TPM.
	if _, err := g.sh(ctx, "echo 'encrypt = tpm' >>/etc/khib.conf && khib-workload verify"); err != nil {
		return res, err
	}
	bootID, err := g.sh(ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		return res, err
	}
	say("boot 1: %d MiB workload; systemctl hibernate with encrypt = tpm", mib)
	t0 := time.Now()
	if _, err := g.agent.Start(ctx, "systemctl hibernate"); err != nil {
		return res, err
	}
	if err := g.waitOff(5 * time.Minute); err != nil {
		return res, fmt.Errorf("after systemctl hibernate: %w", err)
	}
	res["hibernate_s"] = scenario.Round3(time.Since(t0).Seconds())
	hdr, err := inspectPartitionJSON(env, g)
	if err != nil {
		return res, err
	}
	if !hdr.Encrypted || hdr.State != "complete" || len(hdr.Slots) != 1 || hdr.Slots[0].Kind != "tpm2" {
		return res, fmt.Errorf("the image is not a complete image encrypted to the TPM: %+v", hdr)
	}
	res["image_mib"] = scenario.Round3(float64(hdr.ImageBytes) / (1 << 20))
	say("image: %s, encrypted, one TPM key slot, %.1f MiB", hdr.State, float64(hdr.ImageBytes)/(1<<20))

	// Boot 2: the same machine and boot chain: resume, nobody typing.
	t1 := time.Now()
	if _, err := g.bootAs(ctx, "boot2", false); err != nil {
		return res, errorsJoin(err, qerr)
	}
	id2, err := g.sh(ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		return res, err
	}
	res["resume_s"] = scenario.Round3(time.Since(t1).Seconds())
	if id2 != bootID {
		return res, g.errorf("the boot ID changed: the guest booted normally instead of resuming (console says %q)", lastLine(g.m, `khib: `))
	}
	if countLines(g.m, tpmReleasedRE) != 1 {
		return res, g.errorf("resumed, but stage 1 did not say the TPM released the key")
	}
	if countLines(g.m, regexp.MustCompile(`type its passphrase`)) != 0 {
		return res, g.errorf("stage 1 asked for a passphrase")
	}
	if _, err := g.sh(ctx, "khib-workload verify"); err != nil {
		return res, fmt.Errorf("the workload after the resume: %w", err)
	}
	say("boot 2: the TPM released the key; resumed in %.1f s, workload intact", time.Since(t1).Seconds())

	// Hibernated again; the next boot has another option ROM.
	if _, err := g.agent.Start(ctx, "systemctl hibernate"); err != nil {
		return res, err
	}
	if err := g.waitOff(5 * time.Minute); err != nil {
		return res, fmt.Errorf("after the second systemctl hibernate: %w", err)
	}
	if _, err := g.bootAs(ctx, "boot3-changed", true); err != nil {
		return res, errorsJoin(err, qerr)
	}
	id3, err := g.sh(ctx, "cat /proc/sys/kernel/random/boot_id")
	if err != nil {
		return res, err
	}
	res["pcrs_changed"], _ = g.sh(ctx, pcrScript)
	if id3 == bootID {
		return res, g.errorf("the guest resumed although PCR 2 changed")
	}
	if countLines(g.m, tpmRefusedRE) != 1 || countLines(g.m, notResumingRE) != 1 {
		return res, g.errorf("stage 1 did not say the TPM refused the key and the image was not resumed")
	}
	if countLines(g.m, restoreRE) != 0 {
		return res, g.errorf("the restore helper ran although the TPM kept the key")
	}
	res["refusal"] = strings.TrimSpace(lastLine(g.m, `khib: the TPM does not release`))
	if err := g.running(ctx, "after the refusal"); err != nil {
		return res, err
	}
	res["next_boot"] = "normal"
	say("boot 3 (another option ROM): %s; normal boot", res["refusal"])
	return res, g.poweroff(ctx)
}

func errorsJoin(err, qerr error) error {
	if qerr != nil {
		return fmt.Errorf("%w (swtpm: %v)", err, qerr)
	}
	return err
}

// encryptedHeader is what khib image inspect --json says of an encrypted
// image without its key.
type encryptedHeader struct {
	State      string `json:"state"`
	Encrypted  bool   `json:"encrypted"`
	ImageBytes uint64 `json:"image_bytes"`
	Slots      []struct {
		Kind string `json:"kind"`
	} `json:"key_slots"`
}

// inspectPartitionJSON runs khib image inspect --json on the guest's
// image partition, copied out.
func inspectPartitionJSON(env *scenario.Env, g *distroGuest) (*encryptedHeader, error) {
	p := g.parts[imagePartition-1]
	img := env.Path("image.part")
	defer os.Remove(img)
	if out, err := exec.Command("dd", "if="+g.disk, "of="+img, "bs=1M", "iflag=skip_bytes,count_bytes",
		"skip="+strconv.FormatInt(p.Start, 10), "count="+strconv.FormatInt(p.Size, 10), "conv=sparse", "status=none").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copying the image partition: %v: %s", err, out)
	}
	khib, err := env.Bin("khib")
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(khib, "image", "inspect", "--json", img).Output()
	if err != nil {
		return nil, fmt.Errorf("khib image inspect: %w", err)
	}
	var h encryptedHeader
	if err := json.Unmarshal(out, &h); err != nil {
		return nil, fmt.Errorf("khib image inspect --json: %w: %s", err, out)
	}
	return &h, nil
}
