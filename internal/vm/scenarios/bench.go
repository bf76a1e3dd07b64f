package scenarios

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

// hostMakedumpfile is Debian's makedumpfile, which the benchmark copies
// into A with its libraries.
const hostMakedumpfile = "/usr/bin/makedumpfile"

func init() {
	scenario.Register(scenario.Scenario{
		Name: "bench-save",
		Description: "benchmark, not a test: the helper's save throughput and image size for a ~400 MiB mixed workload, " +
			"next to makedumpfile -d 17 (zero and free pages skipped, LZO), a plain copy of /proc/vmcore and raw direct writes, to the same disk from the same helper",
		Timeout: 20 * time.Minute,
		Run:     runBenchSave,
	})
	scenario.Register(scenario.Scenario{
		Name:        "bench-save-random",
		Description: "benchmark, not a test: bench-save with incompressible memory (a ~400 MiB random workload), as make bench runs it",
		Timeout:     20 * time.Minute,
		Run: func(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
			return benchSave(ctx, env, "a", workloadMiB(env, 400), false)
		},
	})
}

const benchScript = guestPrelude + `
khib-workload start --mib @MIB@ --seed @SEED@ @MIXED@ --garbage @GARBAGE@ || fail workload
for codec in s2 zstd; do
	khib hibernate --target /dev/vda --bench --codec $codec --json >/tmp/b.json 2>/tmp/b.err || { cat /tmp/b.err; fail bench-$codec; }
	echo "khibvm-bench $codec $(cat /tmp/b.json)"
done
khib-workload verify || fail verify
echo "KHIBVM:guest_done=ok"
poweroff -f
`

func runBenchSave(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	return benchSave(ctx, env, "a", workloadMiB(env, 400), true)
}

// benchSave boots A as name with a workload of mib MiB, mixed or all
// random (incompressible), and has the helper save it and run the
// baselines.
func benchSave(ctx context.Context, env *scenario.Env, name string, mib int, mixed bool) (scenario.Result, error) {
	script := workloadScript(benchScript, mib, "@MIXED@", map[bool]string{true: "--mixed"}[mixed])
	rfs, err := khibGuest(env, script)
	if err != nil {
		return nil, err
	}
	// makedumpfile is the third baseline: the helper runs A's copy.
	if _, err := os.Stat(hostMakedumpfile); err != nil {
		return nil, fmt.Errorf("makedumpfile, a baseline of this benchmark, is not on the host (%w): apt-get install makedumpfile, or run make bench, which installs it", err)
	}
	if err := rfs.AddHostProgram(hostMakedumpfile); err != nil {
		return nil, err
	}
	initrd, err := env.WriteRootfs(name+".cpio", rfs)
	if err != nil {
		return nil, err
	}
	// Sparse; the cp /proc/vmcore baseline writes all of A's RAM to it.
	disk, err := env.NewDisk(name+".img", max(1536, env.MemMiB+512))
	if err != nil {
		return nil, err
	}
	m, err := runGuest(ctx, env, name, initrd, khibAppend(BenchRegion), vm.Disk{Path: disk})
	if err != nil {
		return nil, err
	}
	res := scenario.Result{"workload_mib": mib, "smp": env.SMP}
	if fs := figureString(scenario.Figures(m), "failed_step"); fs != "" {
		return res, fmt.Errorf("the guest failed at %s", fs)
	}
	for _, l := range m.Lines() {
		rest, ok := strings.CutPrefix(l.Text, "khibvm-bench ")
		if !ok {
			continue
		}
		codec, js, _ := strings.Cut(rest, " ")
		var r struct {
			Figures map[string]any `json:"figures"`
		}
		if err := json.Unmarshal([]byte(js), &r); err != nil {
			return res, fmt.Errorf("bench %s: %w", codec, err)
		}
		f := map[string]float64{} // the numeric figures; others are text
		for k, v := range r.Figures {
			if x, ok := v.(float64); ok {
				f[k] = x
			}
		}
		res[codec+"_save_mb_s"] = scenario.Round3(f["save_mb_s"])
		if f["save_s"] > 0 {
			res[codec+"_write_mb_s"] = scenario.Round3(f["image_bytes"] / 1e6 / f["save_s"]) // image bytes written per second
		}
		res[codec+"_image_mib"] = scenario.Round3(f["image_bytes"] / (1 << 20))
		res[codec+"_saved_mib"] = scenario.Round3(f["pages"] * 4096 / (1 << 20))
		res[codec+"_cp_vmcore_mb_s"] = scenario.Round3(f["cp_vmcore_mb_s"])
		res[codec+"_dd_mb_s"] = scenario.Round3(f["dd_mb_s"])
		res[codec+"_free_mib"] = scenario.Round3(f["free_pages"] * 4096 / (1 << 20))
		if f["makedumpfile_mb_s"] > 0 {
			res[codec+"_makedumpfile_mb_s"] = scenario.Round3(f["makedumpfile_mb_s"])
			res[codec+"_makedumpfile_mib"] = scenario.Round3(f["makedumpfile_bytes"] / (1 << 20))
			res[codec+"_save_vs_makedumpfile"] = scenario.Round3(f["save_mb_s"] / f["makedumpfile_mb_s"])
			env.Logf("bench %-4s: makedumpfile %s: %.0f MB/s of A's RAM, %.1f MiB written",
				codec, r.Figures["makedumpfile_args"], f["makedumpfile_mb_s"], f["makedumpfile_bytes"]/(1<<20))
		} else {
			return res, fmt.Errorf("bench %s: the helper did not run makedumpfile (see the console log)", codec)
		}
		if f["cp_vmcore_mb_s"] > 0 && f["dd_mb_s"] > 0 {
			res[codec+"_save_vs_cp"] = scenario.Round3(f["save_mb_s"] / f["cp_vmcore_mb_s"])
			res[codec+"_save_vs_dd"] = scenario.Round3(f["save_mb_s"] / f["dd_mb_s"])
		}
		env.Logf("bench %-4s: save %.0f MB/s of A's RAM (%.0f MiB saved, %.0f MiB free skipped -> %.1f MiB image); cp /proc/vmcore %.0f MB/s; raw writes %.0f MB/s",
			codec, f["save_mb_s"], f["pages"]*4096/(1<<20), f["free_pages"]*4096/(1<<20), f["image_bytes"]/(1<<20), f["cp_vmcore_mb_s"], f["dd_mb_s"])
	}
	if _, ok := res["s2_save_mb_s"]; !ok {
		return res, fmt.Errorf("no bench results on the console")
	}
	return res, nil
}
