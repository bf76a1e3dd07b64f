package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/khib/khib/internal/blockmap"
	"github.com/khib/khib/internal/config"
	"github.com/khib/khib/internal/elfcore"
	"github.com/khib/khib/internal/elfdeps"
	"github.com/khib/khib/internal/helper"
	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/netconf"
	"github.com/khib/khib/internal/objstore"
	"github.com/khib/khib/internal/store"
	"github.com/khib/khib/internal/target"
)

// resumeStage1 is stage 1 as PID 1 in the test rig (khib.resume=SPEC on
// the command line), with the helper kernel found where A keeps it.
func resumeStage1(spec string) {
	dev, sp, err := locateResume(spec, 5*time.Second)
	if err != nil {
		console("khib: NOT resuming: cannot find the hibernation target %s: %v; booting normally.", spec, err)
		return
	}
	resumeFrom(dev, sp, helper.DefaultKernel())
}

// locateResume reads a resume spec (a device, or a located swap: or
// file: target) and finds its device, waiting up to timeout for it.
func locateResume(spec string, timeout time.Duration) (string, target.Spec, error) {
	sp, err := target.ParseSpec(spec)
	if err != nil {
		return "", sp, err
	}
	if sp.Kind == target.SpecS3 {
		return "", sp, nil
	}
	if sp.Kind == target.SpecDir {
		if _, _, ok := sp.FUSE(); ok {
			return "", sp, nil
		}
		dev, err := config.ResolveWait("/", sp.Value, timeout)
		return dev, sp, err
	}
	if !sp.Located {
		return "", sp, fmt.Errorf("stage 1 finds a %s target by its device and offset (%s:DEV@OFFSET, which khib hibernate --json reports as resume and khib configure records), not by a path on a filesystem it does not mount", sp.Kind, sp.Kind)
	}
	dev, err := config.ResolveWait("/", sp.Value, timeout)
	return dev, sp, err
}

// resumeFrom runs at boot, before the system's root filesystem is in
// use: as init in the test rig (khib.resume=SPEC), or from the initramfs
// (khib resume-stage1). It checks the image on dev (at the start of the
// device, or in the block map sp locates there) and, if everything
// holds, kexecs the restore helper C (the bzImage at kernel), which never
// returns here. Otherwise it says why in one paragraph and returns, and the
// boot goes on as normal without a single page of the image written. It
// writes nothing, with one exception: a swap area that it does not resume
// from gets its swap signature back (giveBack), so that the system can
// swap to it; the image there is then given up. C marks the image used,
// once A's pages are all back.
func resumeFrom(dev string, sp target.Spec, kernel string) {
	up := upTime()
	t0 := time.Now()
	where := store.Where{Mapped: sp.Kind != target.SpecDevice, Anchor: sp.Anchor}
	var extra []string
	if sp.Kind == target.SpecDir {
		where = store.Where{Dir: &sp}
		if prog, _, ok := sp.FUSE(); ok {
			// C runs the same FUSE program: it goes into C's initramfs.
			files, err := elfdeps.Closure(os.DirFS("/"), prog)
			if err != nil && !errors.Is(err, elfdeps.ErrStatic) {
				console("khib: NOT resuming: the FUSE program %s: %v; booting normally.", prog, err)
				return
			}
			if extra = files; len(extra) == 0 {
				extra = []string{prog}
			}
		}
	}
	resuming := false
	if sp.Kind == target.SpecSwap {
		swapDev := dev
		defer func() {
			if !resuming {
				giveBackSwap("khib", swapDev, sp.Anchor)
			}
		}()
	}
	cParams := ""
	var f store.Store
	var err error
	if sp.Kind == target.SpecS3 {
		var s3extra []string
		f, cParams, s3extra, err = openResumeS3(sp.Value)
		extra = append(extra, s3extra...)
		where = store.Where{S3: sp.Value}
	} else {
		f, err = openResumeStore(dev, where)
	}
	cParams = "khib.where=" + where.String() + cParams
	if err != nil {
		if dev == "" {
			dev = sp.String()
		}
		if errors.Is(err, blockmap.ErrCorrupt) {
			refuse(dev, sp, err)
			return
		}
		console("khib: no hibernation image on %s (%v); booting normally.", dev, err)
		return
	}
	defer f.Close()
	dev = f.Name()
	key, ok := unlockImage(f, dev)
	if !ok {
		return
	}
	if key != nil {
		defer clear(key)
		t0 = time.Now() // the figures below leave out the wait for a person
	}
	// image.Check is everything about the image's bytes, the very check
	// internal/corrupt runs its mutations through; the machine's checks
	// go in before any chunk is read. By default the chunks are read once,
	// by C as it restores them (image.Restore checks each one before its
	// pages are written, and the data area's hash at the end); with
	// khib.verify=full stage 1 reads them all first, so that a bad chunk
	// is refused before any page is written, at the cost of a second read.
	full := kernelParams()["khib.verify"] == "full"
	var p *progress
	rd, err := image.Check(f, f.Size(), image.CheckOptions{
		Before: func(rd *image.Reader) error {
			if err := checkResumable(rd); err != nil {
				return err
			}
			meta := rd.Meta()
			how := "the restore helper checks every chunk as it restores it"
			if full {
				how = "verifying every chunk (khib.verify=full)"
			}
			console("khib: found a hibernation image on %s: %s, made %s, %d MiB; %s",
				dev, meta.KernelRelease, meta.Created.Format(time.RFC3339), rd.Stats().ImageBytes>>20, how)
			if full {
				p = newProgress("khib", "verifying", uint64(rd.Stats().Chunks))
				p.items = "chunks"
			}
			return nil
		},
		Progress:   func(done, total int) { p.set(uint64(done)) },
		Key:        key,
		SkipChunks: !full,
	})
	if err != nil {
		if errors.Is(err, image.ErrNotImage) || errors.Is(err, image.ErrIncomplete) {
			console("khib: no hibernation image on %s (%v); booting normally.", dev, err)
		} else if errors.Is(err, image.ErrInvalidated) {
			console("khib: the hibernation image on %s was used by an earlier boot (resumed from, or refused by the restore helper), and a system is never resumed twice; booting normally.", dev)
		} else {
			refuse(dev, sp, err)
		}
		return
	}
	meta := rd.Meta()
	what := "header, index and metadata"
	if full {
		what = "every chunk"
	}
	checked := time.Since(t0)
	console("khib: image intact (%s, %.1f s); loading the restore helper into %s", what, checked.Seconds(), meta.Region)
	plan, err := helper.LoadRestore(kernel, kexec.Range{Start: meta.Region.Start, End: meta.Region.End}, meta.UUID.String(),
		cParams+" "+stage1Value(up, checked), key, extra...)
	if err != nil {
		refuse(dev, sp, fmt.Errorf("loading the restore helper: %w", err))
		return
	}
	// The image stays resumable until C has written every page of A: C
	// marks it used at the last moment before its jump into A. A power
	// cut before that leaves a good image behind, and the next boot
	// resumes it; a cut after it, a normal boot. Stage 1 itself writes
	// nothing.
	console("khib: restoring A through the restore helper (%d segments); stage 1 took %.1f s", len(plan.Segments), time.Since(t0).Seconds())
	resuming = true
	if err := kexec.Jump(); err != nil {
		resuming = false
		console("khib: kexec into the restore helper failed: %v; booting normally (the image was not touched)", err)
	}
}

func refuse(dev string, sp target.Spec, err error) {
	tail := fmt.Sprintf("The image stays for inspection (khib image inspect %s); it is overwritten by the next hibernation.", sp)
	if sp.Kind == target.SpecSwap {
		tail = "The swap area gets its swap signature back, and the image in it is given up."
	}
	console("khib: NOT resuming from the hibernation image on %s:\n  %v\n"+
		"  Nothing of the image was restored; booting normally. %s", dev, err, tail)
}

// openResumeStore opens the store at where on dev read-only, waiting a
// few seconds for the device to appear.
func openResumeStore(dev string, where store.Where) (store.Store, error) {
	if where.Dir != nil {
		return store.OpenDir(*where.Dir, "/run/khib-stage1", false, false)
	}
	var err error
	for i := 0; i < 50; i++ {
		var f *os.File
		if f, err = os.OpenFile(dev, os.O_RDONLY, 0); err == nil {
			f.Close()
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, err
	}
	return store.Open(dev, where, false)
}

// stage1Net is the network of khib.conf's net, which stage 1 brings up
// for an s3 target when the kernel command line has no ip=.
var stage1Net string

// openResumeS3 brings the network up from ip= on the kernel command line
// (the helpers' kernels have no IP autoconfiguration), reads the
// credentials from the file the URL names and opens the object. It
// returns what C needs beside: its network on its command line, the
// credentials file in its initramfs.
func openResumeS3(url string) (store.Store, string, []string, error) {
	loc, err := objstore.ParseURL(url)
	if err != nil {
		return nil, "", nil, err
	}
	ip := kernelParams()["ip"]
	if ip == "" {
		ip = stage1Net
	}
	if ip == "" {
		return nil, "", nil, fmt.Errorf("an s3 target needs the network: put ip=CLIENT::GATEWAY:NETMASK::DEVICE:off on the kernel command line, or run khib configure, which records it")
	}
	nc, err := netconf.Parse(ip)
	if err != nil {
		return nil, "", nil, err
	}
	ifname, err := netconf.Apply(nc, 10*time.Second)
	if err != nil {
		return nil, "", nil, fmt.Errorf("the network: %w", err)
	}
	console("khib: network up for %s: %s %s, %s", loc.Object(), ifname, nc.Addr, gatewayText(nc))
	ok := false
	defer func() {
		if !ok {
			netconf.Remove(nc)
		}
	}()
	creds, err := objstore.LoadCredentials(loc.Creds)
	if err != nil {
		return nil, "", nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := objstore.Preflight(ctx, loc, creds); err != nil {
		return nil, "", nil, err
	}
	st, err := store.OpenS3(context.Background(), loc, creds)
	if err != nil {
		return nil, "", nil, err
	}
	ok = true
	return &netStore{Store: st, nc: nc}, " khib.net=" + nc.String(), []string{loc.Creds}, nil
}

// netStore takes the network stage 1 brought up down again when it is
// closed: a stage 1 that does not resume leaves the interface as it was.
type netStore struct {
	store.Store
	nc netconf.Config
}

func (n *netStore) Close() error {
	err := n.Store.Close()
	if rerr := netconf.Remove(n.nc); rerr != nil {
		console("khib: taking the network down again: %v", rerr)
	}
	return err
}

// checkResumable refuses an image that this machine and kernel cannot
// resume: another kernel build, another memory map, an R that is not
// free RAM here, or a file system of A's that changed since. It runs
// inside image.Check, before the chunks are read.
func checkResumable(rd *image.Reader) error {
	meta := rd.Meta()
	buildID, err := elfcore.ReadKernelBuildID("/sys/kernel/notes")
	if err != nil {
		return fmt.Errorf("cannot read this kernel's build-id: %w", err)
	}
	if err := meta.CheckKernel(release(), buildID); err != nil {
		return err // "made by a different kernel: saved by R build B, this is ..."
	}
	fw, err := helper.Firmware()
	if err != nil {
		return err
	}
	if want, have := meta.Host["firmware_ram"], helper.RAMSummary(fw); want == "" || want != have {
		return fmt.Errorf("the memory map differs: the image was made with RAM %s, this machine has %s", orNone(want), have)
	}
	// R must be RAM here: C runs there. (That R is not empty and that no
	// page of the image lies in it, image.Check has checked, as it has the
	// jump-back entry.)
	inRAM := false
	for _, e := range fw {
		if e.Type == kexec.E820RAM && e.Addr <= meta.Region.Start && meta.Region.End <= e.Addr+e.Size {
			inRAM = true
		}
	}
	if !inRAM {
		return fmt.Errorf("the image's helper region %s is not free RAM on this machine", meta.Region)
	}
	// Last of the cheap checks, and still before any page is written:
	// A's file systems must be as A left them (filesystems.go).
	return checkFilesystems(meta.Filesystems)
}

func orNone(s string) string {
	if s == "" {
		return "(not recorded)"
	}
	return s
}

// gatewayText says how a network setup reaches beyond its link.
func gatewayText(nc netconf.Config) string {
	if !nc.Gateway.IsValid() {
		return "no gateway (the endpoint is on the link)"
	}
	return "gateway " + nc.Gateway.String()
}
