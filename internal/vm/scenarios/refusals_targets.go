package scenarios

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"time"

	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

// targetRefusals is the guest side of target-refusals: A tries each bad
// target in turn and reports khib's exit status and its last line; the
// workload must verify after every attempt, and the swap area must
// still be a swap area after the helper jumped back from it.
const targetRefusalsScript = guestPrelude + `
mkdir -p /data /mnt/usb
mount -t ext4 /dev/vdb /data || fail mount
mount -t vfat /dev/vde /mnt/usb || fail mount-usb
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 || fail net
swapon /dev/vdc || fail swapon
khib-workload start --mib @MIB@ --seed @SEED@ --mixed || fail workload
attempt() {
	name=$1; shift
	echo "khibvm-attempt-start $name"
	khib hibernate --target "$@" >/tmp/h.out 2>/tmp/h.err
	rc=$?
	n=$(grep -c '^khib: hibernate:' /tmp/h.err)
	echo "khibvm-attempt $name rc=$rc lines=$n $(grep '^khib: hibernate:' /tmp/h.err | tail -n 1)"
	khib-workload verify >/dev/null || fail verify-after-$name
}
attempt swap-too-small swap:/dev/vdc
swapoff /dev/vdc && swapon /dev/vdc && echo "khibvm-swap-usable after swap-too-small" || fail swap-reuse
attempt swap-not-active swap:/dev/vdf
attempt file-too-big file:/data/khib.img
attempt file-on-tmpfs file:/run/khib.img
attempt file-on-vfat file:/mnt/usb/khib.img
attempt dir-mounted dir:/dev/vde:/khib.img
attempt dir-full dir:/dev/vdd:/khib.img
attempt s3-unreachable 's3://khib/refusals?endpoint=10.0.2.2:1&tls=0&creds=/etc/khib/s3.creds'
attempt s3-bad-credentials 's3://khib/refusals?endpoint=10.0.2.2:@PORT@&tls=0&creds=/etc/khib/bad.creds'
attempt s3-no-bucket 's3://nosuchbucket/refusals?endpoint=10.0.2.2:@PORT@&tls=0&creds=/etc/khib/s3.creds'
khib-workload verify || fail verify-end
echo "KHIBVM:guest_done=ok"
poweroff -f
`

// targetRefusal is what one attempt must end with.
type targetRefusal struct {
	name string
	want *regexp.Regexp // the one line
	inB  bool           // found by the helper, which jumped back
}

var targetRefusalCases = []targetRefusal{
	{"swap-too-small", regexp.MustCompile(`the helper could not save; this system keeps running: save to swap on /dev/vdc .*: not enough free swap slots: \d+ MiB; this image needs about \d+ MiB; free some swap`), true},
	{"swap-not-active", regexp.MustCompile(`swap target /dev/vdf is not an active swap area \(swapon /dev/vdf first`), false},
	{"file-too-big", regexp.MustCompile(`image file /data/khib.img: /data has \d+ MiB free, the file needs \d+ MiB; free some space or give a smaller --size`), false},
	{"file-on-tmpfs", regexp.MustCompile(`image file /run/khib.img would be on tmpfs, where khib cannot keep an image: it lives in RAM`), false},
	{"file-on-vfat", regexp.MustCompile(`image file /mnt/usb/khib.img would be on vfat, .*immutable attribute`), false},
	{"dir-mounted", regexp.MustCompile(`/dev/vde is mounted on /mnt/usb: device in use; unmount it first`), false},
	{"dir-full", regexp.MustCompile(`the helper could not save; this system keeps running: save to /khib.img on /dev/vdd \(vfat\): not enough free space on the filesystem: \d+ MiB; this image needs`), true},
	{"s3-unreachable", regexp.MustCompile(`cannot reach 10.0.2.2:1 \(http\): .*; check the endpoint and the network`), false},
	{"s3-bad-credentials", regexp.MustCompile(`the store refused the credentials in /etc/khib/bad.creds: .*; fix the access key and secret key`), false},
	{"s3-no-bucket", regexp.MustCompile(`bucket nosuchbucket does not exist on 10.0.2.2:\d+; create it first`), false},
}

var attemptRE = regexp.MustCompile(`^khibvm-attempt (\S+) rc=(\d+) lines=(\d+) (.*)$`)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "target-refusals",
		Description: "bad targets, one boot of A: a swap area too small for the image (the helper finds it, jumps back and " +
			"gives the swap area back), a swap area not in use, a file too big for its filesystem, files on tmpfs and on " +
			"vfat, a dir: device A has mounted, a full vfat disk (the helper finds it), an unreachable S3 endpoint, bad " +
			"credentials, a missing bucket. Each ends in exit 1 and one line that says what to do; A's workload verifies after each",
		Timeout: 25 * time.Minute,
		Run:     runTargetRefusals,
	})
}

func runTargetRefusals(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	res := scenario.Result{}
	srv, err := startS3(ctx, env)
	if err != nil {
		return res, err
	}
	defer srv.stop()
	script := workloadScript(targetRefusalsScript, workloadMiB(env, 256), "@PORT@", fmt.Sprint(srv.port))
	rfs, err := khibGuest(env, script)
	if err != nil {
		return res, err
	}
	rfs.AddDir("/etc/khib", 0o755)
	rfs.AddFile(guestCreds, 0o600, []byte(s3Creds))
	rfs.AddFile("/etc/khib/bad.creds", 0o600, []byte("access_key = khibtest\nsecret_key = not-the-secret\n"))
	initrd, err := env.WriteRootfs("a.cpio", rfs)
	if err != nil {
		return res, err
	}
	img, err := env.NewDisk("image.img", 64)
	if err != nil {
		return res, err
	}
	data, err := newDataDisk(env, 64)
	if err != nil {
		return res, err
	}
	// A swap area the image cannot fit in once A keeps its share, and
	// one that A does not use.
	swap, err := newSwapDisk(env, "swap.img", 160, "")
	if err != nil {
		return res, err
	}
	spare, err := newSwapDisk(env, "spare-swap.img", 32, "")
	if err != nil {
		return res, err
	}
	// A vfat disk with 2 MiB free, and one that A mounts.
	full, err := newVfatDisk(env, "full.img", 40)
	if err != nil {
		return res, err
	}
	filler := env.Path("filler")
	if out, err := exec.Command("sh", "-c", fmt.Sprintf("head -c %d /dev/urandom >%s && mcopy -i %s %s ::/filler", 37<<20, filler, full, filler)).CombinedOutput(); err != nil {
		return res, fmt.Errorf("filling the vfat disk: %v\n%s", err, out)
	}
	usb, err := newVfatDisk(env, "usb.img", 16)
	if err != nil {
		return res, err
	}
	cfg := env.Config()
	cfg.Initrd = initrd
	cfg.Append = khibAppend(RegionSize)
	cfg.Disks = []vm.Disk{{Path: img}, {Path: data}, {Path: swap}, {Path: full}, {Path: usb}, {Path: spare}}
	cfg.Extra = append(cfg.Extra, "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac="+s3MAC)
	m, err := runGuestConfig(ctx, env, "boot1", cfg)
	if err != nil {
		return res, err
	}
	fig := scenario.Figures(m)
	if figureString(fig, "guest_done") != "ok" {
		return res, fmt.Errorf("A failed at %q", figureString(fig, "failed_step"))
	}
	got := map[string][]string{}
	for _, l := range m.Lines() {
		if mm := attemptRE.FindStringSubmatch(l.Text); mm != nil {
			got[mm[1]] = mm[2:]
		}
	}
	lines := scenario.Result{}
	var bad []string
	for _, c := range targetRefusalCases {
		g, ok := got[c.name]
		switch {
		case !ok:
			bad = append(bad, c.name+": no attempt reported")
			continue
		case g[0] != "1":
			bad = append(bad, fmt.Sprintf("%s: exit %s, want 1", c.name, g[0]))
		case g[1] != "1":
			bad = append(bad, fmt.Sprintf("%s: %s lines of refusal, want one", c.name, g[1]))
		case !c.want.MatchString(g[2]):
			bad = append(bad, fmt.Sprintf("%s: %q does not match %s", c.name, g[2], c.want))
		}
		inB := helperBetween(m, c.name)
		if inB != c.inB {
			bad = append(bad, fmt.Sprintf("%s: found by the helper %v, want %v", c.name, inB, c.inB))
		}
		where := "A, before the jump"
		if inB {
			where = "the helper, which jumped back"
		}
		lines[c.name] = strings.TrimPrefix(g[2], "khib: hibernate: ") + " [" + where + "]"
	}
	res["refusals"] = lines
	if countLines(m, regexp.MustCompile(`^khibvm-swap-usable after swap-too-small`)) != 1 {
		bad = append(bad, "the swap area was not usable after the helper jumped back from it")
	}
	if len(bad) > 0 {
		return res, fmt.Errorf("%s", strings.Join(bad, "; "))
	}
	return res, nil
}

// helperBetween reports whether a helper kernel ran during attempt name.
func helperBetween(m *vm.Machine, name string) bool {
	in := false
	for _, l := range m.Lines() {
		switch {
		case l.Text == "khibvm-attempt-start "+name:
			in = true
		case strings.HasPrefix(l.Text, "khibvm-attempt "+name+" "):
			return false
		case in && strings.HasPrefix(l.Text, "khib-helper: up"):
			return true
		}
	}
	return false
}
