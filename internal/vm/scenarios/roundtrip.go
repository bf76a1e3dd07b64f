package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "roundtrip",
		Description: "A -> helper -> A kexec-jump round trips, 5 in one boot (fresh, 3 resumes of the parked helper, " +
			"fresh after unload), with a workload whose memory and counter must survive",
		Timeout: 15 * time.Minute,
		Run:     runRoundtrip,
	})
}

const roundtripRounds = 5

// roundtripScript runs in A. Round 1 boots the helper, rounds 2-4 resume
// it where it parked, round 5 unloads it first and boots a new one.
const roundtripScript = guestPrelude + `
set -- $(grep "Crash kernel" /proc/iomem)
echo "KHIBVM:region=$1"
echo "KHIBVM:cpus0=$(cat /sys/devices/system/cpu/online)"
khib check || fail check
# Bad input is refused with one line and leaves nothing loaded.
khib check --jump --kernel /bin/busybox 2>/tmp/err; echo "KHIBVM:bad_kernel_rc=$? bad_kernel_lines=$(wc -l </tmp/err)"; sed 's/^/khibvm-stderr bad_kernel: /' /tmp/err
khib-workload runas 65534 /bin/khib check --jump 2>/tmp/err; echo "KHIBVM:nonroot_rc=$? nonroot_lines=$(wc -l </tmp/err)"; sed 's/^/khibvm-stderr nonroot: /' /tmp/err
echo "KHIBVM:loaded_after_bad_input=$(cat /sys/kernel/kexec_loaded)"
khib-workload start --mib @MIB@ --seed @SEED@ || fail workload
for i in 1 2 3 4 5; do
	if [ $i = 5 ]; then khib disarm || fail disarm; fi
	khib check --jump --json >/tmp/jump.json || { cat /tmp/jump.json; fail jump$i; }
	echo "KHIBVM:jump$i=$(cat /tmp/jump.json)"
	khib-workload verify || fail verify$i
	echo "KHIBVM:cpus$i=$(cat /sys/devices/system/cpu/online)"
done
khib status
echo "KHIBVM:guest_done=ok"
poweroff -f
`

var (
	helperRAMRE   = regexp.MustCompile(`khib-helper: System RAM (.*)$`)
	helperUpRE    = regexp.MustCompile(`khib-helper: up, jump-back entry (0x[0-9a-f]+)`)
	helperBackRE  = regexp.MustCompile(`khib-helper: resumed by A`)
	jumpStartRE   = regexp.MustCompile(`^khib: jumping into the`)
	jumpDoneRE    = regexp.MustCompile(`KHIBVM:jump(\d)=`)
	guestDoneRE   = regexp.MustCompile(`KHIBVM:guest_done=`)
	workloadVerRE = regexp.MustCompile(`workload: verified`)
)

type jumpJSON struct {
	OK    bool    `json:"ok"`
	Error string  `json:"error"`
	Mode  string  `json:"mode"`
	Round int     `json:"round"`
	AwayS float64 `json:"away_s"`
}

func runRoundtrip(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	mib := workloadMiB(env, 256)
	rfs, err := khibGuest(env, workloadScript(roundtripScript, mib))
	if err != nil {
		return nil, err
	}
	initrd, err := env.WriteRootfs("a.cpio", rfs)
	if err != nil {
		return nil, err
	}
	cfg := env.Config()
	cfg.Initrd = initrd
	cfg.Append = khibAppend(RegionSize)
	if env.Demo {
		env.Logf("booting A (%d MiB, %d CPU) with %s reserved for the helper; workload: %d MiB", env.MemMiB, env.SMP, RegionSize, mib)
	}
	m, err := env.Start(ctx, "a", cfg)
	if err != nil {
		return nil, err
	}
	res := scenario.Result{"workload_mib": mib, "smp": env.SMP}
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return res, err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return res, err
	}
	fig := scenario.Figures(m)
	for _, k := range []string{"a_up_s", "region", "bad_kernel_rc", "nonroot_rc", "failed_step"} {
		if v, ok := fig[k]; ok {
			res[k] = v
		}
	}
	if figureString(fig, "guest_done") != "ok" {
		return res, fmt.Errorf("the guest failed at step %q", figureString(fig, "failed_step"))
	}
	return res, checkRoundtrip(env, m, fig, res)
}

// checkRoundtrip checks what the console shows against what must hold,
// and computes the figures.
func checkRoundtrip(env *scenario.Env, m *vm.Machine, fig, res scenario.Result) error {
	region, err := parseRange(figureString(fig, "region"))
	if err != nil {
		return fmt.Errorf("A reported no reserved region: %w", err)
	}
	// Bad input: refused with exactly one line, nothing loaded.
	if err := checkRefusals(fig, taggedLines(stderrLineRE, m), res,
		refusal{"bad_kernel", "not a bzImage"}, refusal{"nonroot", "root"}); err != nil {
		return err
	}
	if figureString(fig, "loaded_after_bad_input") != "0" {
		return fmt.Errorf("bad input left a kexec image loaded")
	}

	// The helper's view of RAM: inside R and the low window only, at
	// every entry.
	entries, ups, resumes := 0, 0, 0
	for _, l := range m.Lines() {
		if mm := helperRAMRE.FindStringSubmatch(l.Text); mm != nil {
			entries++
			for _, f := range strings.Fields(mm[1]) {
				r, err := parseRange(f)
				if err != nil {
					return fmt.Errorf("helper printed a bad RAM range: %w", err)
				}
				inR := r.Start >= region.Start && r.End <= region.End
				inLow := r.Start >= kexec.DefaultLowWindow.Start && r.End <= kexec.DefaultLowWindow.End
				if !inR && !inLow {
					return fmt.Errorf("helper has System RAM %v outside R %v and the low window %v", r, region, kexec.DefaultLowWindow)
				}
			}
		}
		if helperUpRE.MatchString(l.Text) {
			ups++
		}
		if helperBackRE.MatchString(l.Text) {
			resumes++
		}
	}
	if entries != roundtripRounds || ups != 2 || resumes != 3 {
		return fmt.Errorf("helper entries: %d RAM reports, %d fresh boots, %d resumes; want 5, 2, 3", entries, ups, resumes)
	}

	// Each round: the mode it must have had, A's CPUs all back, and the
	// time A spent away, as A measured it and as the host saw it.
	cpus0 := figureString(fig, "cpus0")
	var freshA, resumedA, freshHost, resumedHost []float64
	var start time.Duration
	for _, l := range m.Lines() {
		if jumpStartRE.MatchString(l.Text) {
			start = l.At
		}
		if mm := jumpDoneRE.FindStringSubmatch(l.Text); mm != nil && start > 0 {
			host := (l.At - start).Seconds()
			if mm[1] == "1" || mm[1] == "5" {
				freshHost = append(freshHost, host)
			} else {
				resumedHost = append(resumedHost, host)
			}
			start = 0
		}
	}
	for i := 1; i <= roundtripRounds; i++ {
		var j jumpJSON
		if err := json.Unmarshal([]byte(figureString(fig, fmt.Sprintf("jump%d", i))), &j); err != nil {
			return fmt.Errorf("round %d: no result from khib check --jump: %w", i, err)
		}
		want := "resumed"
		if i == 1 || i == roundtripRounds {
			want = "fresh"
		}
		if !j.OK || j.Mode != want {
			return fmt.Errorf("round %d: ok=%v mode=%q, want a %s round trip (%s)", i, j.OK, j.Mode, want, j.Error)
		}
		if got := figureString(fig, fmt.Sprintf("cpus%d", i)); got != cpus0 {
			return fmt.Errorf("round %d: A's online CPUs are %q after the jump, were %q", i, got, cpus0)
		}
		if want == "fresh" {
			freshA = append(freshA, j.AwayS)
		} else {
			resumedA = append(resumedA, j.AwayS)
		}
	}
	if n := countLines(m, workloadVerRE); n != roundtripRounds {
		return fmt.Errorf("workload verified %d times, want %d", n, roundtripRounds)
	}
	res["roundtrips"] = roundtripRounds
	res["fresh_median_s"] = scenario.Round3(median(freshHost))
	res["resumed_median_s"] = scenario.Round3(median(resumedHost))
	res["fresh_median_a_s"] = scenario.Round3(median(freshA))
	res["resumed_median_a_s"] = scenario.Round3(median(resumedA))
	res["cpus"] = cpus0
	if env.Demo {
		env.Logf("5 round trips A -> helper -> A passed; workload memory and counter verified after each")
		env.Logf("fresh helper boot round trip: %.2f s (median, host clock); parked helper resumed: %.2f s", median(freshHost), median(resumedHost))
	}
	return nil
}

func countLines(m *vm.Machine, re *regexp.Regexp) int {
	n := 0
	for _, l := range m.Lines() {
		if re.MatchString(l.Text) {
			n++
		}
	}
	return n
}
