package target

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/blockmap"
)

// Swap is one of A's active swap areas, as /proc/swaps lists it.
type Swap struct {
	Path    string // as /proc/swaps names it
	File    bool   // a swap file, not a partition
	Type    int    // its index among the active areas: the swap type in page tables
	Size    int64  // bytes
	Used    int64  // bytes
	Prio    int
	Dev     string // the block device that holds it
	Header  int64  // the device offset of its header page (slot 0)
	extents []blockmap.Extent
}

// Swaps lists A's active swap areas. Type is the area's position in
// /proc/swaps, which lists swap_info[] in order; that is the swap type
// only while no earlier area was switched off, so a reservation checks
// the types it gets (Reserve).
func Swaps() ([]Swap, error) {
	f, err := os.Open(filepath.Join(Root, "proc/swaps"))
	if err != nil {
		return nil, fmt.Errorf("reading swaps: %w", err)
	}
	defer f.Close()
	var out []Swap
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		if len(fl) < 5 || fl[0] == "Filename" {
			continue
		}
		size, err1 := strconv.ParseInt(fl[2], 10, 64)
		used, err2 := strconv.ParseInt(fl[3], 10, 64)
		prio, err3 := strconv.Atoi(fl[4])
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("reading swaps: bad line %q", s.Text())
		}
		// Paths with blanks are octal-escaped (\040).
		path := strings.ReplaceAll(fl[0], `\040`, " ")
		out = append(out, Swap{Path: path, File: fl[1] == "file", Type: len(out), Size: size << 10, Used: used << 10, Prio: prio})
	}
	return out, s.Err()
}

// FindSwap returns the active swap area at path (a /dev node, a link to
// one, or a swap file), with where its slots lie on its block device.
func FindSwap(path string) (*Swap, error) {
	all, err := Swaps()
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("swap target %s: %w", path, err)
	}
	var sw *Swap
	for i := range all {
		var s2 unix.Stat_t
		if unix.Stat(filepath.Join(Root, all[i].Path), &s2) != nil {
			continue
		}
		if (st.Mode&unix.S_IFMT == unix.S_IFBLK && s2.Rdev == st.Rdev) || (s2.Dev == st.Dev && s2.Ino == st.Ino) {
			sw = &all[i]
		}
	}
	if sw == nil {
		return nil, fmt.Errorf("swap target %s is not an active swap area (swapon %s first; /proc/swaps lists the active ones)", path, path)
	}
	if len(all) > 1 {
		var others []string
		for _, o := range all {
			if o.Path != sw.Path {
				others = append(others, o.Path)
			}
		}
		return nil, fmt.Errorf("swap target %s is one of %d active swap areas (also %s): khib can hold the image only in the one swap area A uses; swapoff the others first", path, len(all), strings.Join(others, ", "))
	}
	if !sw.File {
		sw.Dev, err = filepath.EvalSymlinks(filepath.Join(Root, sw.Path))
		if err != nil {
			return nil, fmt.Errorf("swap target %s: %w", path, err)
		}
		// Slot n is page n of the partition (mm/swapfile.c: setup_swap_extents).
		sw.extents = []blockmap.Extent{{Off: 0, Len: 1 << 62}}
		return sw, nil
	}
	// A swap file: its blocks on the device of its filesystem. swapon
	// made sure it has no holes, and the kernel keeps it from being
	// written or moved while it is active (S_SWAPFILE).
	ff, err := InspectSwapFile(filepath.Join(Root, sw.Path))
	if err != nil {
		return nil, err
	}
	sw.Dev, sw.extents = ff.Dev, ff.Extents
	sw.Header = ff.Extents[0].Off
	return sw, nil
}

// InspectSwapFile is InspectFile for an active swap file: the immutable
// attribute does not matter (the kernel pins a swap file), unwritten
// extents do not either (swapon accepted them and writes them raw).
func InspectSwapFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("swap file %s: %w", path, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("swap file %s: %w", path, err)
	}
	dev, err := fsDevice(Dev{unix.Major(st.Dev), unix.Minor(st.Dev)})
	if err != nil {
		return nil, fmt.Errorf("swap file %s: %w", path, err)
	}
	out := &File{Path: path, Dev: dev, Size: st.Size}
	// swapon accepted the file and writes it raw; only what cannot be
	// written raw is refused.
	rawOnly := func(flags uint32) string {
		if flags&(ExtentShared|ExtentUnknown|ExtentDelalloc|ExtentEncoded|ExtentDataInline|ExtentDataTail|ExtentNotAligned) != 0 {
			return fmt.Sprintf("(flags %#x) cannot be written raw", flags)
		}
		return ""
	}
	if out.Extents, err = deviceExtents(f, "swap file", st.Size, rawOnly, "recreate it with dd and mkswap"); err != nil {
		return nil, err
	}
	return out, nil
}

// SlotOffset returns the device offset of swap slot n (slot 0 is the
// header), and how many slots from n on lie contiguous on the device.
func (s *Swap) SlotOffset(n int64) (off, run int64, err error) {
	at := n * PageSize
	for _, e := range s.extents {
		if at < e.Len {
			return e.Off + at, (e.Len - at) / PageSize, nil
		}
		at -= e.Len
	}
	return 0, 0, fmt.Errorf("swap slot %d is past the end of %s", n, s.Path)
}

// Reservation is a set of swap slots that A holds for an image: the
// slots of pages of A's own, swapped out and never touched again, so
// that A's kernel hands them to nobody else. Release gives them back.
type Reservation struct {
	mem   []byte
	Slots []int64 // in increasing order
}

// Reserve takes up to want bytes of free slots of s, keeping keep bytes
// free for A. It maps anonymous memory in batches, writes zeros to it
// (Linux 6.12 swaps out a zero-filled page without writing it: the
// swap_info zeromap) and pages it out with MADV_PAGEOUT, then reads from
// /proc/self/pagemap which slot each page went to. The pages are never
// touched again while A runs, so their slots stay theirs; huge pages are
// turned off on the mapping so that khugepaged does not swap them back
// in to collapse them.
func (s *Swap) Reserve(want, keep int64) (*Reservation, error) {
	free := s.Size - s.Used - keep
	if free < want {
		want = free
	}
	want &^= PageSize - 1
	r := &Reservation{}
	if want <= 0 {
		return r, nil
	}
	mem, err := unix.Mmap(-1, 0, int(want), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("reserving swap: mapping %d MiB: %w", want>>20, err)
	}
	r.mem = mem
	_ = unix.Madvise(mem, unix.MADV_NOHUGEPAGE)
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		r.Release()
		return nil, fmt.Errorf("reserving swap: %w", err)
	}
	defer pm.Close()
	base := addrOf(mem)
	const batch = 16 << 20
	for lo := 0; lo < len(mem); lo += batch {
		hi := min(lo+batch, len(mem))
		for i := lo; i < hi; i += PageSize {
			mem[i] = 0 // a private page of zeros, not the shared zero page
		}
		for try := 0; try < 4; try++ {
			if err := unix.Madvise(mem[lo:hi], unix.MADV_PAGEOUT); err != nil {
				r.Release()
				return nil, fmt.Errorf("reserving swap: MADV_PAGEOUT (Linux 5.4 or later): %w", err)
			}
			if n, err := r.collect(pm, base, lo, hi, s.Type, false); err != nil {
				r.Release()
				return nil, err
			} else if n == (hi-lo)/PageSize {
				break
			}
		}
	}
	r.Slots = r.Slots[:0]
	if _, err := r.collect(pm, base, 0, len(mem), s.Type, true); err != nil {
		r.Release()
		return nil, err
	}
	return r, nil
}

// collect reads the pagemap of mem[lo:hi] and counts the pages swapped
// out to swap type typ; with record it appends their slots.
func (r *Reservation) collect(pm *os.File, base uintptr, lo, hi, typ int, record bool) (int, error) {
	n := (hi - lo) / PageSize
	b := make([]byte, 8*n)
	if _, err := pm.ReadAt(b, int64((base+uintptr(lo))/PageSize*8)); err != nil {
		return 0, fmt.Errorf("reserving swap: reading pagemap: %w", err)
	}
	got := 0
	for i := 0; i < n; i++ {
		e := binary.LittleEndian.Uint64(b[8*i:])
		const present, swapped = 1 << 63, 1 << 62
		if e&present != 0 || e&swapped == 0 {
			continue
		}
		t := int(e & 0x1f)
		off := int64((e >> 5) & (1<<50 - 1))
		if t != typ {
			return 0, fmt.Errorf("reserving swap: a page went to swap type %d, not %d: the swap areas changed; try again", t, typ)
		}
		if off == 0 {
			return 0, fmt.Errorf("reserving swap: pagemap shows no swap offsets (khib needs CAP_SYS_ADMIN)")
		}
		got++
		if record {
			r.Slots = append(r.Slots, off)
		}
	}
	return got, nil
}

// Bytes is how much the reservation holds.
func (r *Reservation) Bytes() int64 { return int64(len(r.Slots)) * PageSize }

// Extents returns the reserved slots as extents of s's device, in slot
// order, merged where they touch.
func (r *Reservation) Extents(s *Swap) ([]blockmap.Extent, error) {
	slots := append([]int64(nil), r.Slots...)
	sortInt64(slots)
	var out []blockmap.Extent
	for _, n := range slots {
		off, _, err := s.SlotOffset(n)
		if err != nil {
			return nil, err
		}
		if k := len(out); k > 0 && out[k-1].End() == off {
			out[k-1].Len += PageSize
			continue
		}
		out = append(out, blockmap.Extent{Off: off, Len: PageSize})
	}
	return out, nil
}

// Release unmaps the reserved pages, which frees their slots without
// reading them.
func (r *Reservation) Release() error {
	if r == nil || r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	r.mem = nil
	return err
}
