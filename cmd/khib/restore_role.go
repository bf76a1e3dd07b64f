package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/target"
)

// runRestore is the restore helper C. It runs inside R only, writes every
// page of A from the image back to its physical address, and kexec-jumps
// to A's jump-back entry, where A carries on as if its jump into B had
// just returned. If anything fails, the image is already marked used by
// stage 1; C says why and reboots into a normal boot.
func runRestore(params map[string]string) {
	err := restore(params["khib.image"])
	console("khib-restore: error: %v", err)
	console("khib-restore: A cannot be resumed; rebooting into a normal boot in 5 s")
	time.Sleep(5 * time.Second)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

func restore(uuid string) error {
	t0 := time.Now()
	var found image.UUID
	f, path, err := target.Find(func(r io.ReaderAt) bool {
		sb, err := image.ReadSuperblock(r)
		if err == nil && sb.UUID.String() == uuid {
			found = sb.UUID
			return true
		}
		return false
	})
	if err != nil {
		return fmt.Errorf("finding image %s: %w", uuid, err)
	}
	defer f.Close()
	size, err := fileSize(f)
	if err != nil {
		return err
	}
	// Stage 1 marked the image used; C reads it all the same, once.
	rd, err := openSpent(f, size)
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
	w := &physWriter{avoid: []kexec.Range{low, {Start: meta.Region.Start, End: meta.Region.End}}}
	defer w.close()
	p := newProgress("khib-restore", "restoring", st.Pages*image.PageSize)
	err = rd.Restore(func(pfn uint64, pages []byte, zero bool) error {
		addr := pfn * image.PageSize
		end := addr + uint64(len(pages))
		if addr < meta.Region.End && meta.Region.Start < end {
			return fmt.Errorf("page %#x lies in the helper region", addr)
		}
		// A's low window is the helper's own RAM now; it goes back with
		// the final jump, as a kexec segment.
		for a := addr; a < end; a += image.PageSize {
			if a >= low.Start && a < low.End {
				copy(lowBuf[a-low.Start:], pages[a-addr:a-addr+image.PageSize])
				continue
			}
			// Consecutive pages outside the window in one go.
			b := a
			for b < end && !(b >= low.Start && b < low.End) {
				b += image.PageSize
			}
			if err := w.write(a, pages[a-addr:b-addr], zero); err != nil {
				return err
			}
			a = b - image.PageSize
		}
		p.add(uint64(len(pages)))
		return nil
	})
	if err != nil {
		return fmt.Errorf("restoring from %s (A's memory is now partly overwritten): %w", path, err)
	}
	w.close()
	p.print()
	console("khib-restore: A's memory restored in %.1f s; jumping to A at %#x", time.Since(t0).Seconds(), meta.JumpBack)

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
	if err := kexec.Jump(); err != nil {
		return fmt.Errorf("jumping to A: %w", err)
	}
	return fmt.Errorf("A jumped back into the restore helper, which is not meant to happen")
}

// openSpent opens an image that stage 1 has already marked as used.
func openSpent(f *os.File, size int64) (*image.Reader, error) {
	return image.OpenInvalidated(f, size)
}

// physWriter writes A's memory through windows of /dev/mem mapped with
// mmap: read/write(2) on /dev/mem stop at the helper's own top of RAM.
type physWriter struct {
	fd         int
	base, size uint64
	m          []byte
	// avoid is the helper's own RAM. /dev/mem refuses a mapping that
	// touches any page of it, so windows stop at its edges.
	avoid []kexec.Range
}

const physWindow = 64 << 20

func (w *physWriter) write(addr uint64, b []byte, zero bool) error {
	for len(b) > 0 {
		if w.m == nil || addr < w.base || addr >= w.base+w.size {
			if err := w.mapAt(addr); err != nil {
				return err
			}
		}
		n := min(uint64(len(b)), w.base+w.size-addr)
		dst := w.m[addr-w.base : addr-w.base+n]
		if zero {
			clear(dst)
		} else {
			copy(dst, b[:n])
		}
		addr += n
		b = b[n:]
	}
	return nil
}

func (w *physWriter) mapAt(addr uint64) error {
	if w.m != nil {
		unix.Munmap(w.m)
		w.m = nil
	}
	if w.fd == 0 {
		fd, err := unix.Open("/dev/mem", unix.O_RDWR, 0)
		if err != nil {
			return fmt.Errorf("opening /dev/mem: %w", err)
		}
		w.fd = fd
	}
	w.base = addr &^ (kexec.PageSize - 1)
	end := w.base + physWindow
	for _, r := range w.avoid {
		if r.Start > w.base && r.Start < end {
			end = r.Start
		}
	}
	w.size = end - w.base
	m, err := unix.Mmap(w.fd, int64(w.base), int(w.size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mapping A's memory at %#x (%d MiB) through /dev/mem: %w", w.base, w.size>>20, err)
	}
	w.m = m
	return nil
}

func (w *physWriter) close() {
	if w.m != nil {
		unix.Munmap(w.m)
		w.m = nil
	}
	if w.fd != 0 {
		unix.Close(w.fd)
		w.fd = 0
	}
}
