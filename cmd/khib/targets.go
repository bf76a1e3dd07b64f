package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/blockmap"
	"github.com/khib/khib/internal/config"
	"github.com/khib/khib/internal/elfdeps"
	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/kexec"
	"github.com/khib/khib/internal/mailbox"
	"github.com/khib/khib/internal/netconf"
	"github.com/khib/khib/internal/objstore"
	"github.com/khib/khib/internal/store"
	"github.com/khib/khib/internal/target"
)

// prepared is a target made ready for one hibernation: reserved (the
// nonce written where the helper looks), with what to tell the helper,
// what to tell the next boot, and what to undo when this system goes on.
type prepared struct {
	dev    string      // the block device A writes and the helper finds
	where  store.Where // where on it
	size   int64       // bytes the image may take
	name   string      // for people
	resume string      // the spec stage 1 needs (khib.resume=)
	// undo runs when this system goes on after the jump (a failed save,
	// a wake from hybrid sleep, a resume from disk): it gives back swap
	// slots and the swap signature. Nil for nothing to undo.
	undo func() error
	// swapMap: the helper writes the block map (a swap target).
	swapMap *mailbox.SwapMap
	// reservation: the physical address of a page of A's RAM holding
	// the image reservation the helper writes first (a dir target).
	reservation uint64
	// extra: files of A's the helper needs (a FUSE program).
	extra []string
	// s3: an object store target.
	s3 *mailbox.S3Target
}

// prepareTarget checks spec (a device, swap: or file:) and writes the
// reservation that the helper finds by nonce. Refusals are one line that
// says what to do; nothing is left half-done behind one.
func prepareTarget(spec string, nonce image.Nonce, k *saveKey) (*prepared, error) {
	sp, err := target.ParseSpec(spec)
	if err != nil {
		return nil, err
	}
	switch sp.Kind {
	case target.SpecFile:
		if sp.Located {
			return nil, fmt.Errorf("target %s is the form stage 1 reads; to hibernate, give the file's path: file:/PATH", spec)
		}
		return prepareFile(sp.Value, nonce, k)
	case target.SpecDir:
		return prepareDir(sp, nonce, k)
	case target.SpecS3:
		return prepareS3(sp, nonce, k)
	case target.SpecSwap:
		path := sp.Value
		if strings.Contains(path, "=") {
			p, err := config.Resolve("/", path)
			if err != nil {
				return nil, fmt.Errorf("target %s: %w", spec, err)
			}
			path = p
		}
		return prepareSwap(path, nonce, k)
	}
	return prepareDevice(spec, nonce, k)
}

// precheckTarget applies the checks of prepareTarget that change
// nothing, so that a bad target is refused before anything else (such as
// a missing reservation) is looked at.
func precheckTarget(spec string) error {
	sp, err := target.ParseSpec(spec)
	if err != nil {
		return err
	}
	switch sp.Kind {
	case target.SpecDevice:
		dev, err := resolveDevice(spec)
		if err != nil {
			return err
		}
		_, err = usableTarget(dev)
		return err
	case target.SpecSwap:
		if strings.Contains(sp.Value, "=") {
			return nil
		}
		_, err := target.FindSwap(sp.Value)
		return err
	case target.SpecFile:
		if _, err := os.Stat(sp.Value); err == nil && !sp.Located {
			_, err = target.InspectFile(sp.Value)
			return err
		}
	}
	return nil
}

// resolveDevice finds the device a device spec names, refusing a spec
// that names the filesystem the image would overwrite.
func resolveDevice(spec string) (string, error) {
	// A target that does not resolve goes on to target.Inspect under its
	// own name, which says what is wrong with it in the usual words.
	dev := spec
	if p, err := config.Resolve("/", spec); err == nil {
		dev = p
	} else if kind, _, perr := config.ParseSpec(spec); perr != nil || kind != config.KindPath {
		return "", fmt.Errorf("target %s: %v", spec, err)
	}
	if kind, _, _ := config.ParseSpec(spec); kind == config.KindUUID || kind == config.KindLabel {
		// The reservation overwrites the start of the device, and with it
		// the superblock that spec names: stage 1 would not find the image.
		hint := "a /dev/disk/by-id/ path"
		if pu, err := config.PartUUID("/", dev); err == nil {
			hint = "PARTUUID=" + pu
		}
		return "", fmt.Errorf("target %s names the filesystem on %s, which the image overwrites, so the next boot could not find it; name the device by %s (khib configure --target %s)", spec, dev, hint, hint)
	}
	return dev, nil
}

// prepareDevice is a whole device: the reservation at its start.
func prepareDevice(spec string, nonce image.Nonce, k *saveKey) (*prepared, error) {
	dev, err := resolveDevice(spec)
	if err != nil {
		return nil, err
	}
	info, err := usableTarget(dev)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", dev, err)
	}
	err = reserve(f, nonce, info.Size, k)
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("reserving %s: %w", dev, err)
	}
	return &prepared{dev: dev, size: info.Size, name: fmt.Sprintf("%s (%d MiB)", dev, info.Size>>20), resume: spec}, nil
}

// prepareFile is a file on one of A's filesystems: khib prepare makes it
// (here too, the first time), and each hibernation reads its extents
// again and writes the block map into its first blocks.
func prepareFile(path string, nonce image.Nonce, k *saveKey) (*prepared, error) {
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		size := defaultFileSize()
		fmt.Fprintf(os.Stderr, "khib: preparing the image file %s (%d MiB, once; khib prepare --size changes it)\n", path, size>>20)
		p := newProgress("khib", "preparing", uint64(size))
		if err := target.PrepareFile(path, size, func(done, total int64) { p.set(uint64(done)) }); err != nil {
			return nil, err
		}
		p.print()
	}
	fi, err := target.InspectFile(path)
	if err != nil {
		return nil, err
	}
	if !fi.Immutable {
		if f, err := os.Open(path); err == nil {
			err = target.SetImmutable(f, true)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("image file %s: %w (khib keeps it immutable so that nothing moves its blocks)", path, err)
			}
		}
	}
	// The first block is the anchor; the map and the image follow.
	first := fi.Extents[0]
	rest := append([]blockmap.Extent{{Off: first.Off + blockmap.PageSize, Len: first.Len - blockmap.PageSize}}, fi.Extents[1:]...)
	if rest[0].Len == 0 {
		rest = rest[1:]
	}
	m, err := blockmap.Plan(blockmap.KindFile, nonce, first.Off, rest)
	if err != nil {
		return nil, fmt.Errorf("image file %s: %w", path, err)
	}
	p, err := writeMapped(fi.Dev, m, false, nonce, k)
	if err != nil {
		return nil, fmt.Errorf("image file %s: %w", path, err)
	}
	p.name = fmt.Sprintf("the file %s (%d MiB, %d extents on %s)", path, fi.Size>>20, len(fi.Extents), fi.Dev)
	p.resume = "file:" + stage1Dev(fi.Dev) + fmt.Sprintf("@%d", first.Off)
	return p, nil
}

// defaultFileSize is A's RAM: an image never holds more than the pages A
// has in use, and most hold a third of them.
func defaultFileSize() int64 {
	kib := meminfoKiB("MemTotal")
	if kib <= 0 {
		return 1 << 30
	}
	return (kib<<10 + (1<<20 - 1)) &^ (1<<20 - 1)
}

// prepareSwap is A's active swap area: khib takes its free slots
// (target.Swap.Reserve), so that every page A swapped out stays where it
// is. Linux refuses writes to an active swap device from user space
// (ETXTBSY), so A writes nothing there: it leaves the slots' extents and
// the image reservation in locked pages of its RAM, and the helper
// writes the block map into the first reserved slots and the anchor into
// the swap header, whose signature it changes so that no swapon uses the
// area until stage 1 has seen the image.
func prepareSwap(path string, nonce image.Nonce, k *saveKey) (*prepared, error) {
	sw, err := target.FindSwap(path)
	if err != nil {
		return nil, err
	}
	uuid, err := swapUUID(sw.Dev, sw.Header)
	if err != nil {
		return nil, err
	}
	free := sw.Size - sw.Used
	// A keeps some slots: it runs on between the reservation and the
	// freeze, and again after a jump back, and while it reserves, the
	// pages it touches before paging them out may push others to swap
	// (a reservation that took every free slot once left A's kernel no
	// way out but the OOM killer).
	keep := max(free/8, 64<<20)
	// The image never holds more than the pages A has in use.
	want := (meminfoKiB("MemTotal")-meminfoKiB("MemFree"))<<10 + 16<<20
	const least = 16 << 20
	if free-keep < least {
		return nil, fmt.Errorf("swap %s has %d MiB of free slots, and an image needs at least %d MiB; swapoff and swapon a larger area, or use a file: target", sw.Path, free>>20, least>>20)
	}
	fmt.Fprintf(os.Stderr, "khib: reserving up to %d MiB of the %d MiB free in swap %s\n", min(want, free-keep)>>20, free>>20, sw.Path)
	res, err := sw.Reserve(want, keep)
	if err != nil {
		return nil, fmt.Errorf("swap %s: %w", sw.Path, err)
	}
	ok := false
	defer func() {
		if !ok {
			res.Release()
		}
	}()
	if res.Bytes() < least {
		return nil, fmt.Errorf("swap %s: only %d MiB of free slots could be reserved; free some memory or swap, or use a file: target", sw.Path, res.Bytes()>>20)
	}
	ext, err := res.Extents(sw)
	if err != nil {
		return nil, fmt.Errorf("swap %s: %w", sw.Path, err)
	}
	// What the helper will make of them: checked here, so that a
	// reservation too fragmented for a map is refused before the jump.
	m, err := blockmap.Plan(blockmap.KindSwap, nonce, sw.Header, ext)
	if err != nil {
		return nil, fmt.Errorf("swap %s: %w", sw.Path, err)
	}
	ram, err := newRAMPages(1 + blockmap.ListPages(len(ext)))
	if err != nil {
		return nil, fmt.Errorf("swap %s: %w", sw.Path, err)
	}
	sb := &memWriter{b: ram.page(0)}
	if err := reserve(sb, nonce, m.Size, k); err != nil {
		ram.free()
		return nil, fmt.Errorf("swap %s: %w", sw.Path, err)
	}
	pages, list, err := blockmap.EncodeList(ext, ram.phys[1:])
	if err != nil {
		ram.free()
		return nil, fmt.Errorf("swap %s: %w", sw.Path, err)
	}
	for i, p := range pages {
		copy(ram.page(1+i), p)
	}
	p := &prepared{
		dev: sw.Dev, where: store.Where{Mapped: true, Anchor: sw.Header}, size: m.Size,
		name:    fmt.Sprintf("free slots of swap %s (%d MiB in %d extents)", sw.Path, res.Bytes()>>20, len(ext)),
		resume:  "swap:" + swapDev(sw),
		swapMap: &mailbox.SwapMap{Extents: list, Reservation: ram.phys[0], Anchor: sw.Header, UUID: uuid},
	}
	if sw.Header != 0 {
		p.resume += fmt.Sprintf("@%d", sw.Header)
	}
	// After the jump the helper, or the restore helper, has given the
	// swap header back; A gives back the slots (unmapping the pages that
	// hold them frees them unread) and the pages of the list.
	p.undo = func() error {
		ram.free()
		return res.Release()
	}
	ok = true
	return p, nil
}

// prepareDir is a file on a filesystem that the helpers mount: a
// device A has not mounted (a USB stick, a second disk) with vfat or
// ext4, or a FUSE program's filesystem, the program carried into the
// helpers. A writes nothing there: it leaves the image reservation in a
// page of its RAM, and the helper writes it as the file's first page.
func prepareDir(sp target.Spec, nonce image.Nonce, k *saveKey) (*prepared, error) {
	p := &prepared{where: store.Where{Dir: &sp}, resume: sp.String()}
	if prog, _, ok := sp.FUSE(); ok {
		st, err := os.Stat(prog)
		if err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("target %s: the FUSE program %s is not an executable file (%v)", sp, prog, err)
		}
		files, err := elfdeps.Closure(os.DirFS("/"), prog)
		if err != nil && !errors.Is(err, elfdeps.ErrStatic) {
			return nil, fmt.Errorf("target %s: the FUSE program %s: %w", sp, prog, err)
		}
		if len(files) == 0 {
			files = []string{prog}
		}
		p.extra = files
		p.name = fmt.Sprintf("%s through the FUSE program %s", sp.Path, prog)
	} else {
		dev, err := config.Resolve("/", sp.Value)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", sp, err)
		}
		f, err := os.Open(dev)
		if err != nil {
			return nil, fmt.Errorf("target %s: %w", sp, err)
		}
		fs, err := config.ProbeFS(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("target %s: %s holds no filesystem khib knows (%v); make one (mkfs.vfat %s)", sp, dev, err, dev)
		}
		if !slices.Contains(store.DirFSTypes, fs.Type) {
			return nil, fmt.Errorf("target %s: %s holds %s, and the helper kernel mounts only %s; use file: for a filesystem of this system's", sp, dev, fs.Type, strings.Join(store.DirFSTypes, " and "))
		}
		info, err := target.Inspect(dev)
		if err != nil {
			return nil, err
		}
		if err := target.CheckUnused(info); err != nil {
			return nil, fmt.Errorf("target %s: %w; unmount it first: the helper mounts it itself, and a filesystem mounted by two kernels at once is corrupted", sp, err)
		}
		p.dev = dev
		p.name = fmt.Sprintf("%s on %s (%s, not mounted here)", sp.Path, dev, fs.Type)
	}
	ram, err := reservationPage(nonce, k)
	if err != nil {
		return nil, err
	}
	p.reservation = ram.phys[0]
	p.undo = func() error { ram.free(); return nil }
	return p, nil
}

// reservationPage is a locked page of A's RAM holding the image
// reservation, for a helper that writes it itself (dir, s3). Its
// capacity is left open: the helper knows the target's.
func reservationPage(nonce image.Nonce, k *saveKey) (*ramPages, error) {
	ram, err := newRAMPages(1)
	if err != nil {
		return nil, err
	}
	if err := reserve(&memWriter{b: ram.page(0)}, nonce, 1<<40, k); err != nil {
		ram.free()
		return nil, err
	}
	return ram, nil
}

// prepareS3 is an object in an S3-compatible store. A checks, before
// anything else, that the store answers, takes the credentials and has
// the bucket (each refusal one line), and hands the helper the URL, the
// credentials and its own network setup.
func prepareS3(sp target.Spec, nonce image.Nonce, k *saveKey) (*prepared, error) {
	loc, err := objstore.ParseURL(sp.Value)
	if err != nil {
		return nil, err
	}
	if loc.Anonymous() {
		return nil, fmt.Errorf("target %s: an image needs credentials (creds=FILE)", loc.Object())
	}
	creds, err := objstore.LoadCredentials(loc.Creds)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := objstore.Preflight(ctx, loc, creds); err != nil && !errors.Is(err, objstore.ErrNotFound) {
		return nil, err
	}
	host, _, err := net.SplitHostPort(loc.Endpoint)
	if err != nil {
		host = loc.Endpoint
	}
	nc, err := netconf.Route(host)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", loc.Object(), err)
	}
	ram, err := reservationPage(nonce, k)
	if err != nil {
		return nil, err
	}
	return &prepared{
		where: store.Where{S3: loc.String()}, resume: loc.String(), dev: loc.Object(),
		name:        fmt.Sprintf("%s (endpoint %s, through %s %s)", loc.Object(), loc.Endpoint, nc.Device, nc.Addr),
		reservation: ram.phys[0],
		s3:          &mailbox.S3Target{URL: loc.String(), AccessKey: creds.AccessKey, SecretKey: creds.SecretKey, Net: nc.String()},
		undo:        func() error { ram.free(); return nil },
	}, nil
}

// swapUUID reads the UUID in the swap header at off on dev (reading an
// active swap area is allowed; writing it is not).
func swapUUID(dev string, off int64) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", fmt.Errorf("reading the swap header: %w", err)
	}
	defer f.Close()
	b := make([]byte, blockmap.PageSize)
	if _, err := f.ReadAt(b, off); err != nil {
		return "", fmt.Errorf("reading the swap header on %s: %w", dev, err)
	}
	if string(b[blockmap.SwapMagicOff:]) != blockmap.SwapMagic {
		return "", fmt.Errorf("%s at %d has no swap signature (SWAPSPACE2): is an image of an earlier hibernation still marked there? boot once so that stage 1 gives it back, or run mkswap", dev, off)
	}
	return hex.EncodeToString(b[swapUUIDOff : swapUUIDOff+16]), nil
}

// swapUUIDOff is where a swap header keeps its UUID
// (include/linux/swap.h: union swap_header's info.sws_uuid).
const swapUUIDOff = 1024 + 12

// memWriter is an io.WriterAt over one buffer.
type memWriter struct{ b []byte }

func (w *memWriter) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(w.b)) {
		return 0, fmt.Errorf("write of %d bytes at %d past a %d-byte buffer", len(p), off, len(w.b))
	}
	return copy(w.b[off:], p), nil
}

// ramPages are pages of A's RAM, locked, whose physical addresses the
// helper is told: how A hands it more than the mailbox holds.
type ramPages struct {
	mem  []byte
	phys []uint64
}

func newRAMPages(n int) (*ramPages, error) {
	mem, err := unix.Mmap(-1, 0, n*blockmap.PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("pages for the helper: %w", err)
	}
	r := &ramPages{mem: mem}
	if err := unix.Mlock(mem); err != nil {
		r.free()
		return nil, fmt.Errorf("locking pages for the helper: %w", err)
	}
	for i := 0; i < n; i++ {
		r.page(i)[0] = 1 // a page of its own, not the shared zero page
		pa, err := kexec.PhysAddr(uintptr(unsafe.Pointer(&r.page(i)[0])))
		if err != nil {
			r.free()
			return nil, fmt.Errorf("pages for the helper: %w", err)
		}
		r.phys = append(r.phys, pa)
	}
	return r, nil
}

func (r *ramPages) page(i int) []byte {
	return r.mem[i*blockmap.PageSize : (i+1)*blockmap.PageSize]
}

func (r *ramPages) free() {
	if r.mem != nil {
		unix.Munmap(r.mem)
		r.mem = nil
	}
}

// writeMapped writes m's map pages and anchor on dev, then the image
// reservation at the start of the map's view, and syncs.
func writeMapped(dev string, m *blockmap.Map, held bool, nonce image.Nonce, k *saveKey) (*prepared, error) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", dev, err)
	}
	defer f.Close()
	// The reservation first: until the anchor is written no one looks
	// at it, and a stale image in the same place is invalidated.
	if err := reserve(m.View(f), nonce, m.Size, k); err != nil {
		return nil, fmt.Errorf("reserving: %w", err)
	}
	if err := m.Write(f, held); err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("syncing %s: %w", dev, err)
	}
	return &prepared{dev: dev, where: store.Where{Mapped: true, Anchor: m.Self}, size: m.Size}, nil
}

// swapDev names a swap area's device for stage 1: a partition by its
// PARTUUID, which does not depend on the swap header khib marks while it
// holds an image; a swap file's filesystem by its UUID.
func swapDev(sw *target.Swap) string {
	if !sw.File {
		if pu, err := config.PartUUID("/", sw.Dev); err == nil {
			return "PARTUUID=" + pu
		}
	}
	return stage1Dev(sw.Dev)
}

// stage1Dev names dev the way stage 1 can find it: by its filesystem's
// (or swap area's) UUID when it has one, which survives a renumbering of
// disks, else by PARTUUID, else by its path.
func stage1Dev(dev string) string {
	if f, err := os.Open(dev); err == nil {
		fs, err := config.ProbeFS(f)
		f.Close()
		if err == nil && fs.UUID != "" {
			return "UUID=" + fs.UUID
		}
	}
	if pu, err := config.PartUUID("/", dev); err == nil {
		return "PARTUUID=" + pu
	}
	return dev
}

// meminfoKiB reads one field of /proc/meminfo, 0 if missing.
func meminfoKiB(field string) int64 {
	return kib("/proc/meminfo", field)
}
