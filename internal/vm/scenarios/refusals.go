package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/khib/khib/internal/check"
	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "check-refusals",
		Description: "A booted without a reserved region: khib check says no and why, khib check --jump " +
			"refuses (no region, not a bzImage, not root) and khib hibernate refuses targets (mounted, swap, too small, " +
			"missing, not a device) with one line each, loading nothing",
		Timeout: 5 * time.Minute,
		Run:     runRefusals,
	})
}

const refusalsScript = guestPrelude + `
khib check >/tmp/out; echo "KHIBVM:check_rc=$?"; sed 's/^/khibvm-stdout check: /' /tmp/out
khib check --json >/tmp/out; echo "KHIBVM:check_json_rc=$?"; echo "khibvm-json $(cat /tmp/out)"
try() {
	name=$1; shift
	"$@" 2>/tmp/err; echo "KHIBVM:${name}_rc=$? ${name}_lines=$(wc -l </tmp/err)"; sed "s/^/khibvm-stderr $name: /" /tmp/err
}
try no_region khib check --jump
try bad_kernel khib check --jump --kernel /bin/busybox
try nonroot khib-workload runas 65534 /bin/khib check --jump
# khib hibernate refuses targets A uses, or that are too small, before
# anything is loaded. vda: ext4, mounted; vdb: swap in use; vdc: 8 MiB.
mkdir -p /mnt/a && mount -t ext4 /dev/vda /mnt/a || fail mount
mkswap /dev/vdb >/dev/null && swapon /dev/vdb || fail swapon
try target_mounted khib hibernate --target /dev/vda
try target_swap khib hibernate --target /dev/vdb
try target_small khib hibernate --target /dev/vdc
try target_missing khib hibernate --target /dev/vdz
try target_file khib hibernate --target /etc/passwd
echo "KHIBVM:loaded=$(cat /sys/kernel/kexec_loaded)"
echo "KHIBVM:guest_done=ok"
poweroff -f
`

func runRefusals(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	rfs, err := khibGuest(env, refusalsScript)
	if err != nil {
		return nil, err
	}
	initrd, err := env.WriteRootfs("a.cpio", rfs)
	if err != nil {
		return nil, err
	}
	// No crashkernel=: no region R.
	var disks []vm.Disk
	for _, d := range []struct {
		name string
		mib  int
	}{{"mounted.img", 64}, {"swap.img", 64}, {"small.img", 8}} {
		p, err := env.NewDisk(d.name, d.mib)
		if err != nil {
			return nil, err
		}
		disks = append(disks, vm.Disk{Path: p})
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", disks[0].Path).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.ext4: %v\n%s", err, out)
	}
	m, err := runGuest(ctx, env, "a", initrd, khibAppend(""), disks...)
	if err != nil {
		return nil, err
	}
	fig := scenario.Figures(m)
	res := scenario.Result{}
	out := taggedLines(stderrLineRE, m)
	var checkJSON string
	for _, l := range m.Lines() {
		if _, rest, ok := strings.Cut(l.Text, "khibvm-json "); ok {
			checkJSON = rest
		}
		if _, rest, ok := strings.Cut(l.Text, "khibvm-stdout check: "); ok {
			out["check"] = append(out["check"], rest)
		}
	}
	// khib check: no, exit 1, and the region line says what to do.
	if figureString(fig, "check_rc") != "1" || figureString(fig, "check_json_rc") != "1" {
		return res, fmt.Errorf("khib check exited %s (--json: %s) without a region, want 1", figureString(fig, "check_rc"), figureString(fig, "check_json_rc"))
	}
	text := strings.Join(out["check"], "\n")
	if !strings.Contains(text, "region") || !strings.Contains(text, "crashkernel=") {
		return res, fmt.Errorf("khib check does not name the missing region and its fix:\n%s", text)
	}
	var rep check.Report
	if err := json.Unmarshal([]byte(checkJSON), &rep); err != nil {
		return res, fmt.Errorf("khib check --json: %w", err)
	}
	var bad []string
	for _, c := range rep.Checks {
		if !c.OK {
			bad = append(bad, c.Name)
		}
	}
	if rep.OK || strings.Join(bad, ",") != "region" {
		return res, fmt.Errorf("khib check --json: ok=%v, failing checks %v; want only region", rep.OK, bad)
	}
	res["check_failing"] = strings.Join(bad, ",")
	// Each refusal: non-zero, one line, saying why.
	if err := checkRefusals(fig, out, res,
		refusal{"no_region", "crashkernel"}, refusal{"bad_kernel", "not a bzImage"}, refusal{"nonroot", "root"},
		refusal{"target_mounted", "is mounted on /mnt/a"}, refusal{"target_swap", "in use as swap"},
		refusal{"target_small", "too small: 8 MiB"}, refusal{"target_missing", "no such file"},
		refusal{"target_file", "not a block device"}); err != nil {
		return res, err
	}
	if figureString(fig, "loaded") != "0" {
		return res, fmt.Errorf("a refused jump left a kexec image loaded")
	}
	return res, nil
}
