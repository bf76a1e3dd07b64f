package scenarios

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/khib/khib/internal/corrupt"
	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/vm"
	"github.com/khib/khib/internal/vm/scenario"
)

func init() {
	scenario.Register(scenario.Scenario{
		Name: "corrupt-images",
		Description: "two real images from two hibernations (96 MiB workload); on the host, 1000 seeded random corruptions of the " +
			"first (byte flips weighted to the superblock, chunk headers, index and metadata; truncations; zeroed tails, pages " +
			"and index; swapped and duplicated chunks; the second image's superblock and pages; a rewritten state) go through " +
			"stage 1's own check (image.Check): every one is refused, both unchanged images pass (--seed repeats a run)",
		Timeout: 30 * time.Minute,
		Run:     runCorruptImages,
	})
	scenario.Register(scenario.Scenario{
		Name: "resume-corrupt-kinds",
		Description: "one hibernation (64 MiB workload), then boots with the image truncated, its index zeroed, another " +
			"image's superblock in front of it, and two of its chunks swapped, one at a time: stage 1 refuses each with its " +
			"reason, the restore helper never runs and the boot is normal; with the image and the data disk put back, the " +
			"last boot resumes",
		Timeout: 30 * time.Minute,
		Run:     runResumeCorruptKinds,
	})
}

// corruptMutations is how many mutations corrupt-images checks.
const corruptMutations = 1000

// corruptSeed is the run's seed: --seed, or one from the clock.
func corruptSeed(env *scenario.Env) uint64 {
	if env.Seed != 0 {
		return uint64(env.Seed)
	}
	return uint64(time.Now().UnixNano() % 1_000_000_007)
}

// openImage opens a disk read-only as a corrupt.Image of the disk's size,
// as stage 1 would see it.
func openImage(disk string) (*os.File, corrupt.Image, error) {
	f, err := os.Open(disk)
	if err != nil {
		return nil, corrupt.Image{}, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, corrupt.Image{}, err
	}
	return f, corrupt.Image{R: f, Size: st.Size()}, nil
}

// checkIntact runs stage 1's check over an image that must pass it, and
// returns its stats: the control that shows the check can say yes.
func checkIntact(img corrupt.Image, name string) (image.Stats, error) {
	rd, err := image.Check(img.R, img.Size, image.CheckOptions{})
	if err != nil {
		return image.Stats{}, fmt.Errorf("control: the unchanged %s image is refused: %w", name, err)
	}
	defer rd.Close()
	return rd.Stats(), nil
}

func runCorruptImages(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	if env.WorkloadMiB == 0 {
		env.WorkloadMiB = 96
	}
	seed := corruptSeed(env)
	res := scenario.Result{"workload_mib": env.WorkloadMiB, "seed": seed}
	env.Logf("corrupt-images: seed %d (--seed %d makes the same mutations of the same images)", seed, seed)
	var imgs []corrupt.Image
	for _, name := range []string{"first", "second"} {
		disk, err := env.NewDisk(name+".img", 1024)
		if err != nil {
			return res, err
		}
		_, r, err := hibernateOnce(ctx, env, name, false, disk)
		if err != nil {
			return res, err
		}
		res[name+"_hibernate_s"] = r["hibernate_s"]
		f, img, err := openImage(disk)
		if err != nil {
			return res, err
		}
		defer f.Close()
		t0 := time.Now()
		st, err := checkIntact(img, name)
		if err != nil {
			return res, err
		}
		res[name+"_check_s"] = scenario.Round3(time.Since(t0).Seconds())
		res[name+"_image_mib"] = scenario.Round3(float64(st.ImageBytes) / (1 << 20))
		res[name+"_chunks"] = st.Chunks
		imgs = append(imgs, img)
	}
	res["control"] = "both unchanged images pass"

	g, err := corrupt.New(imgs[0], seed, imgs[1])
	if err != nil {
		return res, err
	}
	env.Logf("corrupt-images: %d mutations of the first image (%.1f MiB) through image.Check", corruptMutations, float64(g.ImageSize())/(1<<20))
	rep, err := corrupt.Run(g, corrupt.Options{N: corruptMutations, ProbeEvery: 25, Logf: env.Logf})
	if rep != nil {
		refused := 0
		for _, n := range rep.Refused {
			refused += n
		}
		res["mutations"], res["refused"], res["accepted"] = rep.Mutations, refused, len(rep.Accepted)
		res["tried_by_kind"], res["refused_by_kind"], res["refusals_by_error"] = rep.Tried, rep.Refused, rep.Errors
		res["mutations_by_region"], res["flips_by_region"] = rep.ByRegion, rep.FlipsByRegion
		res["check_all_s"], res["slowest_check_s"], res["slowest_check"] = scenario.Round3(rep.Seconds), scenario.Round3(rep.SlowestSeconds), rep.Slowest
		res["restore_probed"], res["restore_probe_opened"] = rep.Probed, rep.ProbeOpened
		res["restore_probe_pages_before_error"], res["restore_probe_completed"] = rep.ProbeLeaked, rep.ProbeCompleted
		res["restore_probe_pages"], res["restore_probe_wrong_pages"] = rep.ProbePages, rep.ProbeWrong
		if len(rep.Accepted) > 0 {
			res["accepted_mutations"] = rep.Accepted[:min(len(rep.Accepted), 10)]
		}
		env.Logf("corrupt-images: %d mutations in %.1f s: tried %v; refused %v; accepted %d; refusals by error %v; flips by region %v",
			rep.Mutations, rep.Seconds, rep.Tried, rep.Refused, len(rep.Accepted), rep.Errors, rep.FlipsByRegion)
		env.Logf("corrupt-images: Restore alone (no Verify first) on %d of them: %d opened, %d handed out pages before failing, "+
			"%d ran to the end %v; %d pages handed out, %d of them not the original's",
			rep.Probed, rep.ProbeOpened, rep.ProbeLeaked, len(rep.ProbeCompleted), rep.ProbeCompleted, rep.ProbePages, rep.ProbeWrong)
	}
	if err != nil {
		return res, err
	}
	if len(rep.Accepted) > 0 {
		return res, fmt.Errorf("seed %d: %d of %d mutations got through stage 1's check, the first: %s", seed, len(rep.Accepted), rep.Mutations, rep.Accepted[0])
	}
	if rep.ProbeWrong != 0 {
		return res, fmt.Errorf("seed %d: Restore handed out %d pages of mutated images that are not the original's", seed, rep.ProbeWrong)
	}
	for _, k := range corrupt.Kinds() {
		if rep.Tried[k] == 0 {
			return res, fmt.Errorf("seed %d: no %s mutation among %d", seed, k, rep.Mutations)
		}
	}
	// The files were only read: the images still pass.
	for i, name := range []string{"first", "second"} {
		if _, err := checkIntact(imgs[i], name); err != nil {
			return res, err
		}
	}
	return res, nil
}

// corruptKind is one corruption a resume-corrupt-kinds boot meets, and
// what stage 1's refusal must say about it.
type corruptKind struct {
	name, want string
	make       func(g *corrupt.Generator) (*corrupt.Mutation, error)
}

var corruptKinds = []corruptKind{
	{"truncated", "truncated", func(g *corrupt.Generator) (*corrupt.Mutation, error) {
		// Half the image, on a page boundary: a partition too short.
		return g.Truncated(g.ImageSize() / 2 &^ (image.PageSize - 1)), nil
	}},
	{"zeroed_index", "index checksum mismatch", func(g *corrupt.Generator) (*corrupt.Mutation, error) {
		return g.ZeroedIndex(), nil
	}},
	{"foreign_superblock", "metadata checksum mismatch", func(g *corrupt.Generator) (*corrupt.Mutation, error) {
		return g.ForeignSuperblock(0)
	}},
	// The one that only the read of every chunk finds: the others are
	// refused when the image is opened.
	{"swapped_chunks", "image: chunk ", func(g *corrupt.Generator) (*corrupt.Mutation, error) {
		return g.NextOf(corrupt.SwapChunks)
	}},
}

func runResumeCorruptKinds(ctx context.Context, env *scenario.Env) (scenario.Result, error) {
	if env.WorkloadMiB == 0 {
		env.WorkloadMiB = 64
	}
	seed := corruptSeed(env)
	res := scenario.Result{"workload_mib": env.WorkloadMiB, "seed": seed}
	env.Logf("resume-corrupt-kinds: seed %d (--seed %d picks the same chunks to swap in the same image)", seed, seed)
	initrd, err := cycleRootfs(env, 1, false, nil)
	if err != nil {
		return res, err
	}
	imgDisk, err := env.NewDisk("image.img", 1024)
	if err != nil {
		return res, err
	}
	dataDisk, err := newDataDisk(env, 0)
	if err != nil {
		return res, err
	}
	cfg := env.Config()
	cfg.Initrd = initrd
	// khib.verify=full: stage 1 reads every chunk before it loads C, so
	// that each kind here is refused before any page is written. By
	// default C finds a bad chunk as it restores (resume-corrupt-restore).
	cfg.Append = khibAppend(RegionSize) + " khib.resume=/dev/vda khib.verify=full"
	cfg.Disks = []vm.Disk{{Path: imgDisk}, {Path: dataDisk}}

	m, err := env.Start(ctx, "hibernate", cfg)
	if err != nil {
		return res, err
	}
	if _, err := m.WaitFor(ctx, regexp.MustCompile(`^khib: no hibernation image on /dev/vda`), env.Remaining()); err != nil {
		return res, fmt.Errorf("boot 1: stage 1 did not report an empty resume device: %w", err)
	}
	start, err := m.WaitFor(ctx, hibStartRE, env.Remaining())
	if err != nil {
		return res, err
	}
	exit, err := m.WaitPowerOff(env.Remaining())
	if err != nil {
		return res, fmt.Errorf("hibernation: %w", err)
	}
	if countLines(m, imageCompleted) != 1 {
		return res, errors.New("hibernation: the helper did not report a complete image")
	}
	res["hibernate_s"] = scenario.Round3((exit.At - start.At).Seconds())

	// The disks as A left them. Each refused boot below is a normal one,
	// which mounts the data disk; the last boot resumes from both copies.
	imgOrig, dataOrig := env.Path("image.orig"), env.Path("data.orig")
	for _, c := range [][2]string{{imgDisk, imgOrig}, {dataDisk, dataOrig}} {
		if err := copySparse(c[0], c[1]); err != nil {
			return res, err
		}
	}
	other := env.Path("other.img")
	if err := resave(imgOrig, other); err != nil {
		return res, err
	}

	for _, k := range corruptKinds {
		// Both disks as A left them: the refused boot before mounted the
		// data disk, and stage 1 would now refuse that change first.
		for _, c := range [][2]string{{imgOrig, imgDisk}, {dataOrig, dataDisk}} {
			if err := copySparse(c[0], c[1]); err != nil {
				return res, err
			}
		}
		what, err := writeMutation(imgDisk, other, seed, k)
		if err != nil {
			return res, fmt.Errorf("%s: %w", k.name, err)
		}
		res[k.name+"_mutation"] = what
		env.Logf("resume-corrupt-kinds: %s: %s", k.name, what)
		kcfg := cfg
		kcfg.ConsoleLog = env.Path("refused-" + k.name + ".console.log")
		r := scenario.Result{}
		err = checkRefused(ctx, env, kcfg, &tamper{name: k.name, want: k.want}, r)
		res[k.name+"_message"] = r["message"]
		if err != nil {
			return res, fmt.Errorf("%s: %w", k.name, err)
		}
	}
	res["refused"], res["restore_helper_runs"] = len(corruptKinds), 0

	// Control: the original image and data disk back, the next boot resumes.
	for _, c := range [][2]string{{imgOrig, imgDisk}, {dataOrig, dataDisk}} {
		if err := copySparse(c[0], c[1]); err != nil {
			return res, err
		}
	}
	m, err = env.Start(ctx, "resume", cfg)
	if err != nil {
		return res, err
	}
	v, err := m.WaitFor(ctx, verifiedRE, env.Remaining())
	if err != nil {
		return res, fmt.Errorf("control: the restored image did not resume: %w", err)
	}
	res["resume_s"] = scenario.Round3(v.At.Seconds())
	if countLines(m, restoreRE) == 0 {
		return res, errors.New("control: the workload verified but no restore helper ran")
	}
	if _, err := m.WaitFor(ctx, guestDoneRE, env.Remaining()); err != nil {
		return res, err
	}
	if _, err := m.WaitPowerOff(time.Minute); err != nil {
		return res, err
	}
	if fig := scenario.Figures(m); figureString(fig, "guest_done") != "ok" {
		return res, fmt.Errorf("control: A failed at %q after resuming", figureString(fig, "failed_step"))
	}
	if err := fsckClean(dataDisk); err != nil {
		return res, err
	}
	res["control"] = "the image put back resumed, workload verified"
	return res, nil
}

// writeMutation writes corruption k into the image on disk, other being
// another image, and checks on the host that stage 1's check refuses it
// for the reason the boot must give.
func writeMutation(disk, other string, seed uint64, k corruptKind) (string, error) {
	f, img, err := openImage(disk)
	if err != nil {
		return "", err
	}
	defer f.Close()
	of, oimg, err := openImage(other)
	if err != nil {
		return "", err
	}
	defer of.Close()
	g, err := corrupt.New(img, seed, oimg)
	if err != nil {
		return "", err
	}
	mu, err := k.make(g)
	if err != nil {
		return "", err
	}
	w, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer w.Close()
	if err := mu.WriteTo(w); err != nil {
		return "", err
	}
	if err := w.Sync(); err != nil {
		return "", err
	}
	// What the boot will meet, checked here first.
	cf, now, err := openImage(disk)
	if err != nil {
		return "", err
	}
	defer cf.Close()
	rd, err := image.Check(now.R, now.Size, image.CheckOptions{})
	if err == nil {
		rd.Close()
		return "", fmt.Errorf("%v: stage 1's check accepts it on the host", mu)
	}
	if !strings.Contains(err.Error(), k.want) {
		return "", fmt.Errorf("%v: stage 1's check refuses it on the host with %q, not %q", mu, err, k.want)
	}
	return mu.String(), nil
}

// resave writes the pages of the image in src again, in chunks of 32
// pages, to dst: another save of the same memory, with the same metadata
// but another UUID and another layout.
func resave(src, dst string) error {
	f, img, err := openImage(src)
	if err != nil {
		return err
	}
	defer f.Close()
	rd, err := image.Open(img.R, img.Size)
	if err != nil {
		return fmt.Errorf("resave: %w", err)
	}
	defer rd.Close()
	meta := rd.Meta()
	meta.UUID, meta.Created = image.UUID{}, time.Time{}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	w, err := image.NewWriter(out, img.Size, image.WriterOptions{Codec: meta.Codec, ChunkPages: 32, Meta: meta})
	if err != nil {
		return fmt.Errorf("resave: %w", err)
	}
	err = rd.Restore(func(pfn uint64, pages []byte, _ bool) error { return w.AddPages(pfn, pages) })
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("resave: %w", err)
	}
	return out.Close()
}
