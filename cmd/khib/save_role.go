package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/elfcore"
	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/mailbox"
	"github.com/khib/khib/internal/netconf"
	"github.com/khib/khib/internal/objstore"
	"github.com/khib/khib/internal/pages"
	"github.com/khib/khib/internal/store"
	"github.com/khib/khib/internal/target"
)

// mapWindow is how much of /proc/vmcore the helper maps at a time: large
// enough that mapping costs nothing, small enough to keep page tables small.
const mapWindow = 64 << 20

// saveBufferBudget bounds the memory of B's image writer (its chunks and
// output buffers, image.WriterOptions.BufferBytes), so that B saves within
// a 128 MiB region whatever the number of CPUs. B's kernel, its initramfs
// and the rest of khib need the remaining 90 MiB or so.
const saveBufferBudget = 40 << 20

// saveWriterShape picks the chunk size and the number of compressing
// goroutines of a save on cpus CPUs. Each chunk passes through four
// goroutines of the writer (this one, a compressor, the sequencer, the
// writer's), and under TCG a hand-off to a goroutine on the other CPU
// costs far more than on real hardware: in a 4 GiB guest with 1 GiB in
// use and 2 CPUs, B's save took 3.30-3.70 s with 64-page chunks and
// 2.79-2.90 s with 256 (3 runs each; 512 gave 2.85 s). So chunks are 256
// pages (1 MiB) when the budget allows it, which it does up to 5 CPUs,
// else the default 64, and one compressing goroutine per CPU up to what
// the budget allows (25).
func saveWriterShape(cpus int) (chunkPages, workers int) {
	workers = max(cpus, 1)
	fits := func(cp, n int) bool {
		return image.WriterOptions{ChunkPages: cp, Workers: n}.BufferBytes() <= saveBufferBudget
	}
	if fits(256, workers) {
		return 256, workers
	}
	for workers > 1 && !fits(image.DefaultChunkPages, workers) {
		workers--
	}
	return image.DefaultChunkPages, workers
}

// progressPages is how many pages the save hands to the image writer at a
// time, so that the progress display moves.
const progressPages = 256

// save is the helper's save role: it finds the device A reserved, streams
// A's memory from /proc/vmcore into an image there, and marks it complete.
// Any error is returned to A, which keeps running.
func save(h *helperEnv, req mailbox.Request) (resp mailbox.Response) {
	// saved: the image is complete and stays; set just before returning.
	saved := false
	tStart := time.Now()
	// The profile covers the save up to the complete image, not what
	// follows it (a suspend, a benchmark's baselines).
	prof := startProfile("save")
	defer prof.stop()
	fail := func(format string, a ...any) mailbox.Response {
		return mailbox.Response{Error: fmt.Sprintf(format, a...)}
	}
	var nonce image.Nonce
	if b, err := hex.DecodeString(req.Nonce); err != nil || len(b) != len(nonce) {
		return fail("save: bad nonce %q in the request", req.Nonce)
	} else {
		copy(nonce[:], b)
	}
	sleepMode := ""
	if req.Suspend {
		var err error
		if sleepMode, err = canSuspend(); err != nil {
			return fail("save: %v", err)
		}
	}
	where, err := store.ParseWhere(req.Where)
	if err != nil {
		return fail("save: %v", err)
	}
	if req.SwapMap != nil {
		// A's swap: the helper writes the map A could not (swap_role.go).
		// From here on a failure gives the swap area back before the jump
		// back, so that A can go on swapping to it.
		swapDev, err := writeSwapMap(req.SwapMap, nonce)
		if err != nil {
			giveBackSwap("khib-helper", swapDev, req.SwapMap.Anchor)
			return fail("save: %v", err)
		}
		defer func() {
			if !saved {
				giveBackSwap("khib-helper", swapDev, req.SwapMap.Anchor)
			}
		}()
	}
	// The device A reserved, by the nonce A wrote there: at its start, or
	// at the start of the image space of the block map A wrote. A dir or
	// s3 target the helper makes itself, with the reservation that A
	// left in its RAM as the first page.
	var tg store.Store
	var rsv *image.Superblock
	if where.S3 != "" || where.Dir != nil {
		var page []byte
		if page, rsv, err = reservationInRAM(req.Reservation, nonce); err != nil {
			return fail("save: %v", err)
		}
		if where.S3 != "" {
			tg, err = openS3Target(req, page)
		} else {
			tg, err = openDirTarget(*where.Dir, page)
		}
	} else {
		tg, err = store.Find(where, func(s store.Store) bool {
			_, err := image.FindReservation(s, nonce)
			return err == nil
		})
	}
	if err != nil {
		return fail("save: finding the target: %v", err)
	}
	defer tg.Close()
	dev, path, size := tg.Device(), tg.Name(), tg.Size()
	if dev != nil {
		path = dev.Name()
	}
	// An encrypted save: the reservation carries the key slots, the
	// mailbox carried the key (serve took it out).
	if rsv == nil {
		if rsv, err = image.FindReservation(tg, nonce); err != nil {
			return fail("save: %s: %v", path, err)
		}
	}
	enc, err := saveEncryption(rsv, h.key)
	if err != nil {
		return fail("save: %v", err)
	}
	core, err := elfcore.Open("/proc/vmcore")
	if err != nil {
		return fail("save: A's memory is not readable: %v", err)
	}
	defer core.Close()
	meta, err := describeA(h, core, req)
	if err != nil {
		return fail("save: %v", err)
	}
	// A's file systems as A left them: A is stopped and synced, so what
	// their devices hold now is what A expects to find when it resumes.
	if meta.Filesystems, err = recordFilesystems(req.Filesystems); err != nil {
		return fail("save: %v", err)
	}
	// The answer A finds after a resume is the one in the image, so it is
	// written before the mailbox page is saved. On failure it is replaced.
	if err := writeResponse(h, mailbox.Response{Seq: req.Seq, OK: true, Figures: map[string]any{"from_image": true}}); err != nil {
		return fail("save: writing the mailbox: %v", err)
	}
	sealed := ""
	if enc != nil {
		sealed = ", encrypted (aes-256-gcm)"
	}
	console("khib-helper: saving A (%s, %d MiB of RAM) to %s (%d MiB), codec %s%s",
		meta.KernelRelease, totalRAM(meta.RAM)>>20, tg.Name(), size>>20, codecName(req.Codec), sealed)

	phases := []phase{
		newPhase("B: its kernel boots to khib", h.up),
		newPhase("B: finds the target, reads A's layout", time.Since(tStart)),
	}
	t0 := time.Now()
	chunkPages, workers := saveWriterShape(runtime.NumCPU())
	w, err := image.NewWriter(tg, size, image.WriterOptions{ChunkPages: chunkPages,
		Codec: req.Codec, Workers: workers, Sync: tg.Sync, Meta: meta, Nonce: nonce, Encryption: enc,
	})
	if err != nil {
		return fail("%s", targetFailure(tg, path, size, err))
	}
	free := freePages(core, req)
	var nfree uint64
	for _, f := range free {
		nfree += f.Count
	}
	w.SetNote("free_pages", strconv.FormatUint(nfree, 10))
	tSave := time.Now()
	phases = append(phases, newPhase("B: classifies A's pages", tSave.Sub(t0)))
	if err := streamCore(core, w, totalRAM(meta.RAM), free); err != nil {
		w.Close()
		return fail("%s", targetFailure(tg, path, size, err))
	}
	// Where the time went so far, and where A's mailbox is: C adds its own
	// phases to A's answer there (restore_role.go). The commit that
	// follows cannot be in the image it completes.
	phases = append(phases, newPhase("B: saves (read, compress, hash, write)", time.Since(tSave)))
	w.SetNote(phasesNote, encodePhases(phases))
	w.SetNote(mailboxNote, fmt.Sprintf("%#x", h.mailbox))
	if err := w.Close(); err != nil {
		return fail("%s", targetFailure(tg, path, size, err))
	}
	if f, ok := tg.(store.Finisher); ok {
		// An object upload: completing it is what makes the image exist.
		if err := f.Finish(); err != nil {
			return fail("save to %s: completing the upload: %v", tg.Name(), err)
		}
	}
	d := time.Since(t0)
	st := w.Stats()
	mb := float64(totalRAM(meta.RAM)) / 1e6 // A's RAM processed, saved or skipped as free
	prof.stop()
	writing, waiting := w.IOTimes()
	console("khib-helper: image complete on %s: %d pages (%d zero), %d free pages skipped, %.1f MiB stored, ratio %.3f, %.1f s, %.0f MB/s; writes took %.1f s, %.1f s of it waited for",
		path, st.Pages, st.ZeroPages, nfree, float64(st.ImageBytes)/(1<<20), st.Ratio(), d.Seconds(), mb/d.Seconds(), writing.Seconds(), waiting.Seconds())
	figs := map[string]any{
		"power_off":    !req.Return,
		"device":       path,
		"store":        tg.Kind(),
		"pages":        st.Pages,
		"zero_pages":   st.ZeroPages,
		"image_bytes":  st.ImageBytes,
		"save_s":       d.Seconds(),
		"save_mb_s":    mb / d.Seconds(),
		"write_s":      writing.Seconds(),
		"write_wait_s": waiting.Seconds(),
		"uuid":         w.UUID().String(),
		"stored_ratio": st.Ratio(),
		"free_pages":   nfree,
		"encrypted":    enc != nil,
		// After --return A reads them here; after a resume, from C.
		savePhasesFigure: phases,
	}
	if req.Suspend {
		// Hybrid sleep (hybrid.go). Should the image stay complete
		// after the wake, A must not run on: power off, and the next
		// boot resumes it.
		if err := suspendAfterSave(tg, path, sleepMode, figs); err != nil {
			console("khib-helper: %v; powering off instead of going back to A, so that the next boot resumes the image", err)
			figs["power_off"] = true
		}
	}
	if req.Cmd == mailbox.CmdBenchSave {
		figs["power_off"] = false
		if err := benchBaselines(core, dev, figs); err != nil {
			return fail("bench: %v", err)
		}
	}
	saved = figs["power_off"] == true
	return mailbox.Response{OK: true, Figures: figs}
}

// targetFailure is saveFailure, in the words of the kind of target for
// an image that did not fit: what there was, and what to do.
func targetFailure(tg store.Store, path string, size int64, err error) string {
	var ts *image.TooSmallError
	if !errors.As(err, &ts) || tg.Kind() == "device" {
		return saveFailure(path, size, err)
	}
	what, todo := "", ""
	switch tg.Kind() {
	case "swap":
		what, todo = "free swap slots", "free some swap, use a larger swap area, or another target"
	case "file":
		what, todo = "room in the image file", "make the file larger (remove it, khib prepare --size)"
	case "dir":
		what, todo = "free space on the filesystem", "free some space there, or use another target"
	default:
		what, todo = "room", "use another target"
	}
	msg := strings.TrimPrefix(ts.Error(), "image: ")
	if _, after, ok := strings.Cut(msg, "; "); ok {
		msg = after
	}
	return fmt.Sprintf("save to %s: not enough %s: %d MiB; %s; %s", tg.Name(), what, ts.Capacity>>20, msg, todo)
}

// reservationInRAM reads the reservation A left at the physical
// address rsv, for a target A could not write (swap, dir, s3): the page,
// to be written as the image's first, and its superblock.
func reservationInRAM(rsv uint64, nonce image.Nonce) ([]byte, *image.Superblock, error) {
	page, err := kexec.ReadPhys(rsv, image.SuperblockSize)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the reservation in A's RAM: %w", err)
	}
	sb, err := image.FindReservation(bytes.NewReader(page), nonce)
	if err == nil && sb.State != image.StateWriting {
		err = fmt.Errorf("state %v", sb.State)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("the reservation in A's RAM is not this request's: %w", err)
	}
	return page, sb, nil
}

// openS3Target brings up the network as A had it and starts the upload,
// with rsv, the reservation A left in its RAM, as the object's first page.
func openS3Target(req mailbox.Request, rsv []byte) (store.Store, error) {
	if req.S3 == nil {
		return nil, fmt.Errorf("an s3 target without its credentials and network in the request")
	}
	loc, err := objstore.ParseURL(req.S3.URL)
	if err != nil {
		return nil, err
	}
	nc, err := netconf.Parse(req.S3.Net)
	if err != nil {
		return nil, err
	}
	ifname, err := netconf.Apply(nc, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("the network: %w", err)
	}
	console("khib-helper: network up: %s %s, %s", ifname, nc.Addr, gatewayText(nc))
	creds := &objstore.Credentials{AccessKey: req.S3.AccessKey, SecretKey: req.S3.SecretKey, File: "A's " + loc.Creds}
	st, err := store.CreateS3(context.Background(), loc, creds)
	if err != nil {
		return nil, err
	}
	if _, err := st.WriteAt(rsv, 0); err != nil {
		st.Close()
		return nil, fmt.Errorf("%s: %w", st.Name(), err)
	}
	return st, nil
}

// openDirTarget mounts a dir: target's filesystem (or starts its FUSE
// program), makes the file and writes into it rsv, the reservation that
// A left in its RAM.
func openDirTarget(sp target.Spec, rsv []byte) (store.Store, error) {
	st, err := store.OpenDir(sp, "/mnt/khib-target", true, true)
	if err != nil {
		return nil, err
	}
	if st.Size() < 1<<20 {
		st.Close()
		return nil, fmt.Errorf("%s: the filesystem is full: %d KiB free", st.Name(), st.Size()>>10)
	}
	if _, err := st.WriteAt(rsv, 0); err != nil {
		st.Close()
		return nil, fmt.Errorf("%s: writing the reservation: %w", st.Name(), err)
	}
	return st, nil
}

func codecName(c string) string {
	if c == "" {
		return "s2"
	}
	return c
}

// describeA builds the image's identity of A from A's own vmcoreinfo and
// the helper's view of A's memory.
func describeA(h *helperEnv, core *elfcore.File, req mailbox.Request) (image.Meta, error) {
	info, err := core.Vmcoreinfo()
	if err != nil {
		return image.Meta{}, fmt.Errorf("A's vmcoreinfo: %w", err)
	}
	release, err := info.OSRelease()
	if err != nil {
		return image.Meta{}, err
	}
	buildID, err := info.BuildID()
	if err != nil {
		return image.Meta{}, err
	}
	m := image.Meta{KernelRelease: release, BuildID: buildID, JumpBack: h.jumpBack, Created: req.Time,
		Host: map[string]string{"firmware_ram": req.FirmwareRAM}}
	for _, l := range sortedLoads(core) {
		m.RAM = append(m.RAM, image.Range{Start: l.PhysAddr, End: l.End()})
	}
	m.Region = image.Range{Start: h.region.Start, End: h.region.End}
	return m, nil
}

func sortedLoads(core *elfcore.File) []elfcore.Load {
	loads := core.Loads()
	sort.Slice(loads, func(i, j int) bool { return loads[i].PhysAddr < loads[j].PhysAddr })
	return loads
}

func totalRAM(rs []image.Range) uint64 {
	var n uint64
	for _, r := range rs {
		n += r.End - r.Start
	}
	return n
}

// streamCore maps /proc/vmcore window by window and hands A's pages to the
// image writer in physical order. mmap, not read: read(2) of /proc/vmcore
// copies every page through a bounce buffer and ran at about half the speed.
func streamCore(core *elfcore.File, w *image.Writer, total uint64, free []pages.FreeRange) error {
	f, err := os.Open("/proc/vmcore")
	if err != nil {
		return err
	}
	defer f.Close()
	p := newProgress("khib-helper", "saving", total)
	for _, l := range sortedLoads(core) {
		if l.PhysAddr%image.PageSize != 0 || l.Size%image.PageSize != 0 || l.Offset%image.PageSize != 0 {
			return fmt.Errorf("A's memory range %v is not page aligned", l)
		}
		for off := uint64(0); off < l.Size; off += mapWindow {
			n := min(uint64(mapWindow), l.Size-off)
			base := (l.PhysAddr + off) / image.PageSize
			// Only the pages A has allocated: skip its free blocks, and
			// map only from the first allocated page of the window to
			// its last. Mapping /proc/vmcore fills in every page table
			// entry at once (remap_pfn_range), so a window that is all
			// free costs nothing if it is not mapped.
			spans := allocated(base, base+n/image.PageSize, &free)
			if len(spans) == 0 {
				p.add(n)
				continue
			}
			first, last := spans[0].Start, spans[len(spans)-1].Start+spans[len(spans)-1].Count
			m, err := mapLoad(int(f.Fd()), l, off+(first-base)*image.PageSize, (last-first)*image.PageSize)
			if err != nil {
				return err
			}
			done := uint64(0)
			for _, span := range spans {
				for pfn, end := span.Start, span.Start+span.Count; pfn < end; {
					k := min(end-pfn, progressPages)
					a := (pfn - first) * image.PageSize
					if err := w.AddPages(pfn, m[a:a+k*image.PageSize]); err != nil {
						unix.Munmap(m)
						return err
					}
					pfn += k
					p.add(k * image.PageSize)
					done += k * image.PageSize
				}
			}
			p.add(n - done)
			unix.Munmap(m)
		}
	}
	p.print()
	return nil
}

// freePages asks A's own page structures which pages are free. Any
// failure leaves the filter off: then every page is saved, which is
// always correct, only larger.
func freePages(core *elfcore.File, req mailbox.Request) []pages.FreeRange {
	if req.NoFilter {
		return nil
	}
	info, err := core.Vmcoreinfo()
	if err != nil {
		console("khib-helper: not filtering free pages: %v", err)
		return nil
	}
	in, err := pages.ReadInfo(info)
	if err != nil {
		console("khib-helper: not filtering free pages: %v", err)
		return nil
	}
	t0 := time.Now()
	mem, err := openMappedCore(core)
	if err != nil {
		console("khib-helper: not filtering free pages: %v", err)
		return nil
	}
	defer mem.Close()
	var out []pages.FreeRange
	for _, l := range sortedLoads(core) {
		f, err := pages.Free(mem, in, l.PhysAddr/image.PageSize, l.End()/image.PageSize)
		if err != nil {
			console("khib-helper: not filtering free pages: %v", err)
			return nil
		}
		out = append(out, f...)
	}
	var n uint64
	for _, f := range out {
		n += f.Count
	}
	console("khib-helper: A has %d MiB free in %d blocks (read from its struct pages in %.2f s); those are not saved",
		n*image.PageSize>>20, len(out), time.Since(t0).Seconds())
	return out
}

// allocated returns the parts of the page frames [lo, hi) outside the free
// blocks, consuming free blocks that end before hi.
func allocated(lo, hi uint64, free *[]pages.FreeRange) []pages.FreeRange {
	var out []pages.FreeRange
	cur := lo
	for len(*free) > 0 && cur < hi {
		f := (*free)[0]
		if f.Start+f.Count <= cur {
			*free = (*free)[1:]
			continue
		}
		if f.Start >= hi {
			break
		}
		if f.Start > cur {
			out = append(out, pages.FreeRange{Start: cur, Count: f.Start - cur})
		}
		cur = min(f.Start+f.Count, hi)
		if f.Start+f.Count <= hi {
			*free = (*free)[1:]
		}
	}
	if cur < hi {
		out = append(out, pages.FreeRange{Start: cur, Count: hi - cur})
	}
	return out
}
