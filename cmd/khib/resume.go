package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/khib/khib/internal/elfcore"
	"github.com/khib/khib/internal/helper"
	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/kexec"
)

// resumeStage1 is stage 1 as PID 1 in the test rig (khib.resume=DEV on
// the command line), with the helper kernel found where A keeps it.
func resumeStage1(dev string) { resumeFrom(dev, helper.DefaultKernel()) }

// resumeFrom runs at boot, before the system's root filesystem is in
// use: as init in the test rig (khib.resume=DEV), or from the initramfs
// (khib resume-stage1). It checks the image on dev and, if everything
// holds, kexecs the restore helper C (the bzImage at kernel), which never
// returns here. Otherwise it says why in one paragraph and returns, and the
// boot goes on as normal without a single page of the image written. It
// writes to nothing but the console: C marks the image used, once A's
// pages are all back.
func resumeFrom(dev, kernel string) {
	t0 := time.Now()
	f, size, err := openResumeDevice(dev)
	if err != nil {
		console("khib: no hibernation image on %s (%v); booting normally.", dev, err)
		return
	}
	defer f.Close()
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
	rd, err := image.Check(f, size, image.CheckOptions{
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
			refuse(dev, err)
		}
		return
	}
	meta := rd.Meta()
	what := "header, index and metadata"
	if full {
		what = "every chunk"
	}
	console("khib: image intact (%s, %.1f s); loading the restore helper into %s", what, time.Since(t0).Seconds(), meta.Region)
	plan, err := helper.LoadRestore(kernel, kexec.Range{Start: meta.Region.Start, End: meta.Region.End}, meta.UUID.String(), key)
	if err != nil {
		refuse(dev, fmt.Errorf("loading the restore helper: %w", err))
		return
	}
	// The image stays resumable until C has written every page of A: C
	// marks it used at the last moment before its jump into A. A power
	// cut before that leaves a good image behind, and the next boot
	// resumes it; a cut after it, a normal boot. Stage 1 itself writes
	// nothing.
	console("khib: restoring A through the restore helper (%d segments); stage 1 took %.1f s", len(plan.Segments), time.Since(t0).Seconds())
	if err := kexec.Jump(); err != nil {
		console("khib: kexec into the restore helper failed: %v; booting normally (the image was not touched)", err)
	}
}

func refuse(dev string, err error) {
	console("khib: NOT resuming from the hibernation image on %s:\n  %v\n"+
		"  Nothing of the image was restored; booting normally. The image stays on %s for inspection\n"+
		"  (khib image inspect %s); it is overwritten by the next hibernation.", dev, err, dev, dev)
}

// openResumeDevice opens dev read-only, waiting a few seconds for the
// device to appear, and returns its size.
func openResumeDevice(dev string) (*os.File, int64, error) {
	var f *os.File
	var err error
	for i := 0; i < 50; i++ {
		if f, err = os.OpenFile(dev, os.O_RDONLY, 0); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return nil, 0, err
	}
	size, err := fileSize(f)
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, size, nil
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
