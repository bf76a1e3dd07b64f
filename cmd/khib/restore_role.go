package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/mailbox"
	"github.com/khib/khib/internal/netconf"
	"github.com/khib/khib/internal/objstore"
	"github.com/khib/khib/internal/store"
)

// runRestore is the restore helper C. It runs inside R only, writes every
// page of A from the image back to its physical address, and kexec-jumps
// to A's jump-back entry, where A carries on as if its jump into B had
// just returned. C marks the image used just before that jump, once all
// of A's pages are back, so that a power cut during the restore leaves the
// image resumable. If anything fails, C marks the image used (a failure
// must not repeat at every boot), says why and reboots into a normal boot.
func runRestore(params map[string]string) {
	err := restore(params["khib.image"], params["khib.where"], params["khib.net"], params[stage1Param])
	console("khib-restore: NOT resuming: %v\n"+
		"  A cannot be resumed: its memory may be partly written, and the image is marked used so that\n"+
		"  this does not repeat; rebooting into a normal boot in 5 s. (khib.verify=full on the kernel\n"+
		"  command line makes stage 1 check every chunk before it writes anything.)", err)
	time.Sleep(5 * time.Second)
	unix.Sync()
	kexec.Restart()
	select {}
}

func restore(uuid, whereSpec, netSpec, stage1 string) error {
	up := upTime()
	t0 := time.Now()
	// An encrypted image's key, which stage 1 put into this initramfs:
	// read and removed before anything else.
	key, err := restoreKey()
	if err != nil {
		return err
	}
	defer clear(key)
	where, err := store.ParseWhere(whereSpec)
	if err != nil {
		return err
	}
	var found image.UUID
	matches := func(s store.Store) bool {
		sb, err := image.ReadSuperblock(s)
		if err == nil && sb.UUID.String() == uuid {
			found = sb.UUID
			return true
		}
		return false
	}
	var f store.Store
	if where.S3 != "" {
		if f, err = openRestoreS3(where.S3, netSpec); err == nil && !matches(f) {
			f.Close()
			err = fmt.Errorf("%s holds another image", f.Name())
		}
	} else if where.Dir != nil {
		// A file on a filesystem C mounts itself (not one of A's).
		if f, err = store.OpenDir(*where.Dir, "/mnt/khib-target", true, false); err == nil && !matches(f) {
			f.Close()
			err = fmt.Errorf("%s holds another image", f.Name())
		}
	} else {
		f, err = store.Find(where, matches)
	}
	if err != nil {
		return fmt.Errorf("finding image %s: %w", uuid, err)
	}
	defer f.Close()
	path := f.Name()
	// Whatever goes wrong from here, this image is not tried again: a
	// restore that failed once fails the same way at the next boot.
	spent := false
	defer func() {
		if !spent {
			if err := markUsed(f); err != nil {
				console("khib-restore: %v", err)
			}
		}
	}()
	size := f.Size()
	rd, err := image.OpenWith(f, size, image.OpenOptions{Key: key})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	meta := rd.Meta()
	if meta.UUID != found {
		return fmt.Errorf("%s: image UUID changed under us", path)
	}
	st := rd.Stats()
	console("khib-restore: restoring %d MiB of A from %s (%d chunks)", st.Pages*image.PageSize>>20, path, st.Chunks)

	low := kexec.DefaultLowWindow
	lowBuf := make([]byte, low.Size())
	// C's own RAM, which /dev/mem will not map: the low window and R.
	// RestoreConcurrent's workers write through w at once.
	w, err := kexec.NewPhysWriter([]kexec.Range{low, {Start: meta.Region.Start, End: meta.Region.End}})
	if err != nil {
		return err
	}
	defer w.Close()
	p := newProgress("khib-restore", "restoring", st.Pages*image.PageSize)
	var pmu sync.Mutex
	var inPlace int // chunks decoded straight into A's memory
	// Chunks of consecutive pages decode straight into A's memory. Those
	// w declines (any page in the low window, which is C's own RAM now)
	// or cannot map (Write then says why) go through the function below.
	rd.Direct = func(pfn uint64, n int) ([]byte, func()) {
		mem, done, err := w.Direct(pfn*image.PageSize, n)
		if err != nil || mem == nil {
			return nil, nil
		}
		return mem, func() {
			done()
			pmu.Lock()
			p.add(uint64(n))
			inPlace++
			pmu.Unlock()
		}
	}
	prof := startProfile("restore")
	err = rd.RestoreConcurrent(func(pfn uint64, pages []byte, zero bool) error {
		got := kexec.Range{Start: pfn * image.PageSize, End: pfn*image.PageSize + uint64(len(pages))}
		for _, part := range kexec.Subtract(got, []kexec.Range{low}) {
			if err := w.Write(part.Start, pages[part.Start-got.Start:part.End-got.Start], zero); err != nil {
				return err
			}
		}
		// A's low window is the helper's own RAM now; it goes back with
		// the final jump, as a kexec segment. Calls cover disjoint pages.
		if a, b := max(got.Start, low.Start), min(got.End, low.End); a < b {
			copy(lowBuf[a-low.Start:b-low.Start], pages[a-got.Start:b-got.Start])
		}
		pmu.Lock()
		p.add(uint64(len(pages)))
		pmu.Unlock()
		return nil
	})
	if err != nil {
		return fmt.Errorf("restoring from %s (A's memory is now partly overwritten): %w", path, err)
	}
	prof.stop()
	if err := w.Close(); err != nil {
		return fmt.Errorf("restoring A's memory: %w", err)
	}
	p.print()
	restored := time.Since(t0)
	console("khib-restore: A's memory restored in %.1f s (%d of %d chunks decoded in place); jumping to A at %#x",
		restored.Seconds(), inPlace, st.Chunks, meta.JumpBack)
	// Where the time went, into the answer A reads when it runs again.
	resumePhases := append(stage1Phases(stage1),
		newPhase("C: its kernel boots to khib", up),
		newPhase("C: finds the image, restores A's pages", restored))
	if err := tellA(meta, lowBuf, low, map[string]any{
		savePhasesFigure:   decodePhases(meta.Notes[phasesNote]),
		resumePhasesFigure: resumePhases,
	}); err != nil {
		console("khib-restore: A will not see the resume's figures: %v", err)
	}
	console("khib-restore: %s", memoryUse())

	jb := meta.JumpBack
	page := jb &^ (kexec.PageSize - 1)
	jbBuf, err := kexec.ReadPhys(page, kexec.PageSize)
	if err != nil {
		return fmt.Errorf("reading A's jump-back page: %w", err)
	}
	// The jump-back page, with its own (restored) bytes, so that C's
	// identity map for the jump covers it; A's low window, which the jump
	// swaps into place.
	segs := []kexec.Segment{
		{Name: "A's low memory", Buf: lowBuf, Mem: low.Start, Memsz: low.Size()},
		{Name: "jump-back page", Buf: jbBuf, Mem: page, Memsz: kexec.PageSize},
	}
	if err := kexec.Load(jb, segs, true); err != nil {
		return fmt.Errorf("loading the jump to A: %w", err)
	}
	// The last moment: every page of A is written and the jump is loaded.
	// Once the image says used, a power cut gives a normal boot, never a
	// second resume of the same A; before, it gave a resume of this image.
	spent = true
	if err := markUsed(f); err != nil {
		kexec.Unload()
		return fmt.Errorf("not jumping to A: %w (resuming an image that is not marked used could resume the same A twice)", err)
	}
	// A filesystem C mounted (a dir: target) is unmounted clean before
	// A runs again: A may mount it later.
	if err := f.Close(); err != nil {
		console("khib-restore: %v", err)
	}
	console("khib-restore: image marked used; jumping to A")
	if err := kexec.Jump(); err != nil {
		return fmt.Errorf("jumping to A: %w", err)
	}
	return fmt.Errorf("A jumped back into the restore helper, which is not meant to happen")
}

// openRestoreS3 brings up the network stage 1 had and opens the object
// with the credentials stage 1 put into C's initramfs.
func openRestoreS3(url, netSpec string) (store.Store, error) {
	loc, err := objstore.ParseURL(url)
	if err != nil {
		return nil, err
	}
	nc, err := netconf.Parse(netSpec)
	if err != nil {
		return nil, err
	}
	if _, err := netconf.Apply(nc, 10*time.Second); err != nil {
		return nil, fmt.Errorf("the network: %w", err)
	}
	b, err := os.ReadFile(loc.Creds)
	if err != nil {
		return nil, fmt.Errorf("the credentials stage 1 passed: %w", err)
	}
	creds, err := objstore.ParseCredentials(b)
	clear(b)
	if err != nil {
		return nil, err
	}
	return store.OpenS3(context.Background(), loc, creds)
}

// markUsed sets the image's state to Invalidated and makes it durable,
// then gives the store back (a swap area gets its signature again).
func markUsed(s store.Store) error {
	if u, ok := s.(store.UsedMarker); ok {
		// An object: a marker beside it says it was used.
		if err := u.MarkUsed(); err != nil {
			return fmt.Errorf("marking the image used: %w", err)
		}
		return nil
	}
	if err := image.SetState(s, image.StateInvalidated); err != nil {
		return fmt.Errorf("marking the image used: %w", err)
	}
	if err := s.Sync(); err != nil {
		return fmt.Errorf("marking the image used: %w", err)
	}
	if err := s.Spent(); err != nil {
		return fmt.Errorf("the image is marked used, but %w", err)
	}
	return nil
}

// tellA adds figs to the answer in A's mailbox page, now that the page is
// back in A's memory (in lowBuf, when it lies in A's low window, which
// the final jump puts in place). The page's address is the one B noted.
func tellA(meta image.Meta, lowBuf []byte, low kexec.Range, figs map[string]any) error {
	addr, err := strconv.ParseUint(strings.TrimPrefix(meta.Notes[mailboxNote], "0x"), 16, 64)
	if err != nil || addr%kexec.PageSize != 0 {
		return fmt.Errorf("no mailbox address in the image's notes (%q)", meta.Notes[mailboxNote])
	}
	if addr >= low.Start && addr+kexec.PageSize <= low.End {
		return mailbox.AddFigures(lowBuf[addr-low.Start:addr-low.Start+kexec.PageSize], figs)
	}
	page, err := kexec.ReadPhys(addr, kexec.PageSize)
	if err != nil {
		return err
	}
	if err := mailbox.AddFigures(page, figs); err != nil {
		return err
	}
	return kexec.WritePhys(addr, page)
}
