package scenarios

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "bench-targets",
		Description: "one hibernate/resume cycle into each kind of target in a row, in the same conditions (1 GiB guest, a " +
			"256 MiB mixed workload): a whole disk, swap in use, a file on ext4, a vfat disk, a FUSE filesystem and an S3 " +
			"store; the helper's write throughput and the restore helper's read throughput of each, side by side " +
			"(--results DIR writes targets.md there)",
		Timeout: 90 * time.Minute,
		Run:     runBenchTargets,
	})
}

// benchRow is one target's figures.
type benchRow struct {
	target                          string
	imageMiB, saveS, restoreS, hibS float64
	resumeS                         float64
	err                             string
}

func runBenchTargets(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	res := scenario.Result{}
	fusefs, err := env.Bin("khib-fusefs")
	if err != nil {
		return res, err
	}
	srv, err := startS3(ctx, env)
	if err != nil {
		return res, err
	}
	defer srv.stop()
	// The same workload everywhere; the swap target gets 64 MiB of it
	// paged out, so that its slots are in use as in cycle-swap.
	swap := *swapTarget
	swap.workload, swap.region, swap.workloadFlags = 256, "", "--page-out 64"
	fuse := *fuseTarget
	fuse.rootfs = func(rfs *vm.Rootfs) {
		rfs.AddDir("/usr/lib/khib", 0o755)
		rfs.AddHostFile("/usr/lib/khib/khib-fusefs", fusefs)
	}
	file := *fileTarget
	targets := []*cycleTarget{deviceTarget, &swap, &file, vfatTarget, &fuse, s3Target(srv, "bench/targets.khib", false)}
	var rows []benchRow
	failed := 0
	for _, t := range targets {
		env.Logf("bench-targets: %s", t.name)
		r, err := runCycles(ctx, env, cycleRun{cycles: 1, tgt: t})
		row := benchRow{target: t.name}
		if err != nil {
			row.err = err.Error()
			failed++
		}
		row.imageMiB = number(r["image_mib"])
		row.hibS, row.resumeS = number(r["hibernate_s"]), number(r["resume_s"])
		row.saveS = phaseSeconds(r["hibernate_phases"], "B saves")
		row.restoreS = phaseSeconds(r["resume_phases"], "C restores")
		rows = append(rows, row)
		// The next target starts from fresh disks and consoles.
		for _, n := range []string{"image.img", "data.img", "swap.img", "usb.img", "fusestore.img"} {
			os.Remove(env.Path(n))
		}
	}
	table := benchTargetsTable(rows, env)
	env.Logf("%s", table)
	res["table"] = table
	if env.Results != "" {
		if err := os.MkdirAll(env.Results, 0o755); err != nil {
			return res, err
		}
		if err := os.WriteFile(filepath.Join(env.Results, "targets.md"), []byte(table), 0o644); err != nil {
			return res, err
		}
	}
	if failed > 0 {
		return res, fmt.Errorf("%d of %d targets failed", failed, len(targets))
	}
	return res, nil
}

func benchTargetsTable(rows []benchRow, env *scenario.Env) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Throughput by target (make bench-targets, %s)\n\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(&b, "One cycle per target, one after another in one run: %d MiB guest, %d CPU, a %d MiB mixed workload, TCG. "+
		"\"write\" is the image's stored bytes over the helper's save phase (read A's memory, compress, hash, write); "+
		"\"read\" the same bytes over the restore helper's restore phase. Ratios are to the whole disk's.\n\n",
		max(env.MemMiB, 1024), max(env.SMP, 1), workloadMiB(env, 256))
	b.WriteString("| target | image MiB | save s | write MB/s | vs disk | restore s | read MB/s | vs disk | hibernate s | resume s |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	var w0, r0 float64
	for i, r := range rows {
		if r.err != "" {
			fmt.Fprintf(&b, "| %s | failed: %s |||||||||\n", r.target, strings.ReplaceAll(r.err, "|", "/"))
			continue
		}
		w, rd := mbps(r.imageMiB, r.saveS), mbps(r.imageMiB, r.restoreS)
		if i == 0 {
			w0, r0 = w, rd
		}
		fmt.Fprintf(&b, "| %s | %.1f | %.2f | %.1f | %.2f | %.2f | %.1f | %.2f | %.1f | %.1f |\n",
			r.target, r.imageMiB, r.saveS, w, ratio(w, w0), r.restoreS, rd, ratio(rd, r0), r.hibS, r.resumeS)
	}
	return b.String()
}

func mbps(mib, s float64) float64 {
	if s <= 0 {
		return 0
	}
	return mib * (1 << 20) / 1e6 / s
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

func number(v any) float64 {
	f, _ := v.(float64)
	return f
}

// phaseSeconds finds the phase whose name starts with prefix.
func phaseSeconds(v any, prefix string) float64 {
	ps, _ := v.([]Phase)
	for _, p := range ps {
		if strings.HasPrefix(p.Name, prefix) {
			return p.Seconds
		}
	}
	return 0
}
