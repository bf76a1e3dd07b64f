package scenarios

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

// RegionSize is what the scenarios reserve for the helper with crashkernel=.
const RegionSize = "256M"

// BenchRegion is R in the benchmarks: crashkernel=128M, the size the
// helper is meant to fit, which leaves A of a 4 GiB guest room for 3.6 GiB
// in use (with 256M, A's kernel OOM-killed such a workload as khib
// hibernate loaded the helper). swsusp runs with the same command line.
const BenchRegion = "128M"

// khibGuest builds the root filesystem of a system A that runs khib: khib
// is /init and hands over to script (khib.init=/scenario.sh) after
// mounting the basics, the way it would hand over to /sbin/init on a real
// system. The helper kernel is the guest's own kernel, at the path khib
// looks for by default.
func khibGuest(env *scenario.Env, script string) (*vm.Rootfs, error) {
	rfs, err := env.NewRootfs()
	if err != nil {
		return nil, err
	}
	khib, err := env.Bin("khib")
	if err != nil {
		return nil, err
	}
	wl, err := env.Bin("khib-workload")
	if err != nil {
		return nil, err
	}
	for _, p := range []struct{ guest, host string }{{"/init", khib}, {"/bin/khib", khib}, {"/bin/khib-workload", wl}} {
		if err := rfs.AddHostBinary(p.guest, p.host); err != nil {
			return nil, err
		}
	}
	release, err := kernelRelease(env.Kernel)
	if err != nil {
		return nil, err
	}
	if err := rfs.AddHostFile("/boot/vmlinuz-"+release, env.Kernel); err != nil {
		return nil, err
	}
	rfs.AddFile("/etc/hosts", 0o644, []byte("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tkhib-a\n"))
	rfs.AddFile("/etc/hostname", 0o644, []byte("khib-a\n"))
	rfs.AddFile("/etc/passwd", 0o644, []byte("root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"))
	rfs.AddFile("/scenario.sh", 0o755, []byte(script))
	return rfs, nil
}

// workloadMiB is the workload size the scenario was asked for, or def.
func workloadMiB(env *scenario.Env, def int) int {
	if env.WorkloadMiB > 0 {
		return env.WorkloadMiB
	}
	return def
}

// workloadScript fills a guest script's placeholders: @MIB@ with mib,
// @SEED@ and @GARBAGE@ with the scenarios' workload seed and freed
// garbage, and any more old, new pairs given.
func workloadScript(tmpl string, mib int, more ...string) string {
	pairs := append([]string{"@MIB@", fmt.Sprint(mib), "@SEED@", fmt.Sprint(workloadSeed), "@GARBAGE@", fmt.Sprint(garbageMiB)}, more...)
	return strings.NewReplacer(pairs...).Replace(tmpl)
}

// runGuest boots A once from initrd with the given command line and
// disks, and waits until its script reports it is done and the machine
// has powered off.
func runGuest(ctx context.Context, env *scenario.Env, name, initrd, appendLine string, disks ...vm.Disk) (*vm.Machine, error) {
	cfg := env.Config()
	cfg.Initrd = initrd
	cfg.Append = appendLine
	cfg.Disks = disks
	return runGuestConfig(ctx, env, name, cfg)
}

// runGuestConfig is runGuest for a machine configured in full.
func runGuestConfig(ctx context.Context, env *scenario.Env, name string, cfg vm.Config) (*vm.Machine, error) {
	m, err := env.Start(ctx, name, cfg)
	if err != nil {
		return nil, err
	}
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return m, err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return m, err
	}
	return m, nil
}

// khibAppend is the command line of A: khib as init, handing over to the
// scenario, and R reserved unless region is empty.
func khibAppend(region string) string {
	s := vm.DefaultAppend + " rdinit=/init khib.init=/scenario.sh"
	if region != "" {
		s += " crashkernel=" + region
	}
	return s
}

func kernelRelease(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading kernel: %w", err)
	}
	k, err := kexec.ParseBzImage(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return "", err
	}
	return k.Release(), nil
}

// guestPrelude is shared by the guest scripts: a fail function that
// reports the failing step and powers off, so a failure never hangs.
const guestPrelude = `#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
fail() { echo "KHIBVM:failed_step=$1"; echo "KHIBVM:guest_done=fail"; poweroff -f; sleep 30; }
read up idle < /proc/uptime
echo "KHIBVM:a_up_s=$up"
# Loopback, as any real system has it: servers started by --before listen
# on 127.0.0.1 (the kernel gives lo its address when it comes up).
ip link set lo up || fail loopback
`

var iomemRangeRE = regexp.MustCompile(`^([0-9a-f]+)-([0-9a-f]+)$`)

// parseRange reads "25000000-34ffffff" (inclusive end, as iomem prints).
func parseRange(s string) (kexec.Range, error) {
	m := iomemRangeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return kexec.Range{}, fmt.Errorf("not a memory range: %q", s)
	}
	a, _ := strconv.ParseUint(m[1], 16, 64)
	b, _ := strconv.ParseUint(m[2], 16, 64)
	return kexec.Range{Start: a, End: b + 1}, nil
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// figureString returns a figure as text, whatever type it parsed as.
func figureString(r scenario.Result, key string) string {
	v, ok := r[key]
	if !ok {
		return ""
	}
	return fmt.Sprint(v)
}

// stderrLineRE marks what a guest script relays from a command's stderr:
// "khibvm-stderr NAME: line".
var stderrLineRE = regexp.MustCompile(`khibvm-stderr (\S+): (.*)$`)

// taggedLines collects, from the consoles of machines, the lines that re
// matches, keyed by its first group and holding its second.
func taggedLines(re *regexp.Regexp, machines ...*vm.Machine) map[string][]string {
	out := map[string][]string{}
	for _, m := range machines {
		for _, l := range m.Lines() {
			if mm := re.FindStringSubmatch(l.Text); mm != nil {
				out[mm[1]] = append(out[mm[1]], mm[2])
			}
		}
	}
	return out
}

// refusal is a command a guest ran through its try function, which must
// fail with one line on stderr that says want.
type refusal struct{ name, want string }

// checkRefusals checks each refusal's exit status (NAME_rc), stderr line
// count (NAME_lines) and reason, and records the reasons in res.
func checkRefusals(fig scenario.Result, stderr map[string][]string, res scenario.Result, refusals ...refusal) error {
	for _, r := range refusals {
		rc, lines := figureString(fig, r.name+"_rc"), figureString(fig, r.name+"_lines")
		reason := strings.Join(stderr[r.name], " | ")
		res[r.name+"_reason"] = reason
		if rc == "0" || rc == "" || lines != "1" || !strings.Contains(reason, r.want) {
			return fmt.Errorf("%s: exit %s, %s lines %q; want non-zero, one line mentioning %q", r.name, rc, lines, reason, r.want)
		}
	}
	return nil
}

// newSwapDisk makes a swap area of mib MiB (mkswap, with uuid if not
// empty) in the work directory.
func newSwapDisk(env *scenario.Env, name string, mib int, uuid string) (string, error) {
	p, err := env.NewDisk(name, mib)
	if err != nil {
		return "", err
	}
	args := []string{p}
	if uuid != "" {
		args = []string{"-U", uuid, p}
	}
	if out, err := exec.Command("mkswap", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mkswap: %v\n%s", err, out)
	}
	return p, nil
}

// newVfatDisk makes a vfat filesystem of mib MiB in the work directory,
// with mkfs.vfat's further args.
func newVfatDisk(env *scenario.Env, name string, mib int, args ...string) (string, error) {
	p := env.Path(name)
	args = append(append([]string{"-C"}, args...), p, fmt.Sprint(mib*1024))
	if out, err := exec.Command("mkfs.vfat", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mkfs.vfat (apt-get install dosfstools): %v\n%s", err, out)
	}
	return p, nil
}

// extractRange copies size bytes at off of disk into the work directory
// as name, sparse: an image partition, or a file of khib-fusefs's store.
func extractRange(env *scenario.Env, disk, name string, off, size int64) (string, error) {
	out := env.Path(name)
	cmd := exec.Command("dd", "if="+disk, "of="+out, "bs=1M", "iflag=skip_bytes,count_bytes",
		"skip="+strconv.FormatInt(off, 10), "count="+strconv.FormatInt(size, 10), "conv=sparse", "status=none")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("copying %d bytes at %d of %s: %v: %s", size, off, disk, err, b)
	}
	return out, nil
}

// inspection is what the scenarios read of khib image inspect --json.
type inspection struct {
	Meta struct {
		Notes map[string]string `json:"notes"`
	} `json:"meta"`
	State      string  `json:"state"`
	Pages      uint64  `json:"pages"`
	ZeroPages  uint64  `json:"zero_pages"`
	DataPages  uint64  `json:"data_pages"`
	ImageBytes uint64  `json:"image_bytes"`
	Ratio      float64 `json:"ratio"`
}

// inspectImage runs khib's own inspect on an image on the host.
func inspectImage(env *scenario.Env, disk string) (*inspection, error) {
	khib, err := env.Bin("khib")
	if err != nil {
		return nil, err
	}
	out, err := exec.Command(khib, "image", "inspect", "--json", disk).Output()
	if err != nil {
		return nil, fmt.Errorf("khib image inspect: %w", err)
	}
	var ins inspection
	if err := json.Unmarshal(out, &ins); err != nil {
		return nil, fmt.Errorf("khib image inspect --json: %w", err)
	}
	return &ins, nil
}
