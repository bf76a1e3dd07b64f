package main

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"syscall"
	"time"
)

// device is what a store keeps its files on: the block device, or a
// regular file standing for one, or a test's stand-in.
type device interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// file is one file of a store. Its fields are guarded by the store's mutex;
// the FUSE layer holds *file as an opaque handle.
type file struct {
	name     string
	size     int64
	start    int64
	capacity int64
	mtime    int64 // nanoseconds since 1970
	mode     uint32
	ino      uint64 // in memory only: unique while this store lives

	opens    int  // open handles
	unlinked bool // removed from the table, kept while opens > 0
}

// fileInfo is a copy of a file's attributes.
type fileInfo struct {
	name     string
	size     int64
	start    int64
	capacity int64
	mtime    time.Time
	mode     uint32
	ino      uint64
}

// spaceInfo is what statfs reports, in bytes.
type spaceInfo struct {
	total int64 // all space for file data
	free  int64 // not holding file data: unallocated, and the unused tails of regions
	avail int64 // how much one file can still grow (see store.space)
	files int   // files in the table
}

// store is a khib-fusefs filesystem on a device. Its methods are safe for
// concurrent use; they run one at a time, device I/O included.
//
// Errors that describe the request (no such file, no space, ...) are
// syscall.Errno values; device errors are passed on wrapped.
type store struct {
	mu      sync.Mutex
	dev     device
	devSize int64 // from the header
	end     int64 // devSize rounded down to the alignment: regions end at or below it
	gen     uint64
	slot    int     // the header copy (0 or 1) that holds generation gen
	files   []*file // the table, in order
	orphans []*file // unlinked but still open
	nextIno uint64
	dirty   bool // the header on the device is not the in-memory table
	closed  bool
	now     func() time.Time
}

// formatDevice writes an empty filesystem for a device of size bytes.
func formatDevice(dev device, size int64) error {
	if size < minDevSize {
		return fmt.Errorf("the device has %d bytes; khib-fusefs needs at least %d", size, minDevSize)
	}
	size = min(size, maxDevSize)
	h := &header{devSize: size}
	if _, err := dev.WriteAt(h.encode(1), pageSize); err != nil {
		return fmt.Errorf("writing the header: %w", err)
	}
	if _, err := dev.WriteAt(h.encode(2), 0); err != nil {
		return fmt.Errorf("writing the header: %w", err)
	}
	if err := dev.Sync(); err != nil {
		return fmt.Errorf("syncing the device: %w", err)
	}
	return nil
}

// hasMagic reports whether dev starts with the khib-fusefs magic.
func hasMagic(dev io.ReaderAt) (bool, error) {
	b := make([]byte, len(magic))
	if _, err := dev.ReadAt(b, 0); err != nil {
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		return false, err
	}
	return string(b) == magic, nil
}

// openStore reads the filesystem on dev, a device of size bytes.
func openStore(dev device, size int64) (*store, error) {
	if size < dataStart {
		return nil, fmt.Errorf("%w: the device has only %d bytes", errNoMagic, size)
	}
	buf := make([]byte, 2*pageSize)
	if _, err := dev.ReadAt(buf, 0); err != nil {
		return nil, fmt.Errorf("reading the header: %w", err)
	}
	if string(buf[:len(magic)]) != magic {
		return nil, errNoMagic
	}
	var hs [2]*header
	var errs [2]error
	for i := range hs {
		hs[i], errs[i] = decodeHeader(buf[i*pageSize : (i+1)*pageSize])
	}
	slot := -1
	for i, h := range hs {
		if h != nil && (slot < 0 || h.gen > hs[slot].gen) {
			slot = i
		}
	}
	if slot < 0 {
		return nil, fmt.Errorf("corrupt khib-fusefs header: copy A (offset 0): %v; copy B (offset %d): %v", errs[0], pageSize, errs[1])
	}
	h := hs[slot]
	if h.devSize > size {
		return nil, fmt.Errorf("the khib-fusefs header is for a device of %d bytes but this one has %d (truncated, or a copy of another device's start?)", h.devSize, size)
	}
	s := &store{
		dev:     dev,
		devSize: h.devSize,
		end:     h.devSize &^ (regionAlign - 1),
		gen:     h.gen,
		slot:    slot,
		nextIno: 2, // 1 is the root directory
		now:     time.Now,
	}
	for _, e := range h.files {
		s.files = append(s.files, &file{name: e.name, size: e.size, start: e.start, capacity: e.capacity,
			mtime: e.mtime, mode: e.mode, ino: s.newIno()})
	}
	return s, nil
}

func (s *store) newIno() uint64 {
	s.nextIno++
	return s.nextIno - 1
}

func (s *store) header() *header {
	h := &header{devSize: s.devSize, files: make([]entry, len(s.files))}
	for i, f := range s.files {
		h.files[i] = entry{name: f.name, size: f.size, start: f.start, capacity: f.capacity, mtime: f.mtime, mode: f.mode}
	}
	return h
}

// commitLocked makes the device hold what the store holds. With force, the
// device is synced even if the table did not change (fsync: file data was
// written). Order: data, then the table that describes it.
func (s *store) commitLocked(force bool) error {
	if s.closed {
		return syscall.EIO
	}
	if !s.dirty && !force {
		return nil
	}
	if s.dirty {
		if err := s.dev.Sync(); err != nil {
			return fmt.Errorf("syncing the device: %w", err)
		}
		other := 1 - s.slot
		if _, err := s.dev.WriteAt(s.header().encode(s.gen+1), int64(other)*pageSize); err != nil {
			return fmt.Errorf("writing the header: %w", err)
		}
		s.gen++
		s.slot = other
		s.dirty = false
	}
	if err := s.dev.Sync(); err != nil {
		return fmt.Errorf("syncing the device: %w", err)
	}
	return nil
}

// commit writes the table if it changed, then syncs the device (flush,
// release).
func (s *store) commit() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commitLocked(false)
}

// fsync syncs the device, and writes the table first if it changed.
func (s *store) fsync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.commitLocked(true)
}

// close commits and makes every later call fail with EIO. It does not
// close the device.
func (s *store) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	err := s.commitLocked(true)
	s.closed = true
	return err
}

func (s *store) info(f *file) fileInfo {
	return fileInfo{name: f.name, size: f.size, start: f.start, capacity: f.capacity,
		mtime: time.Unix(0, f.mtime), mode: f.mode, ino: f.ino}
}

// lookup returns the file called name, or nil.
func (s *store) lookup(name string) *file {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lookupLocked(name)
}

func (s *store) lookupLocked(name string) *file {
	for _, f := range s.files {
		if f.name == name {
			return f
		}
	}
	return nil
}

// stat returns f's attributes.
func (s *store) stat(f *file) fileInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info(f)
}

// list returns the files in table order.
func (s *store) list() []fileInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]fileInfo, len(s.files))
	for i, f := range s.files {
		out[i] = s.info(f)
	}
	return out
}

// create makes an empty file called name and returns it, opened once if
// open is set (release it with release). EEXIST if the name is taken,
// ENOSPC if the table is full or no region can be had.
func (s *store) create(name string, mode uint32, open bool) (*file, error) {
	if err := checkName(name); err != nil {
		if len(name) > maxNameLen {
			return nil, syscall.ENAMETOOLONG
		}
		return nil, syscall.EINVAL
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, syscall.EIO
	}
	if s.lookupLocked(name) != nil {
		return nil, syscall.EEXIST
	}
	if len(s.files) >= maxFiles {
		return nil, syscall.ENOSPC
	}
	start, capacity, from := s.allocLocked()
	if capacity == 0 {
		return nil, syscall.ENOSPC
	}
	if from != nil {
		from.capacity -= capacity
	}
	f := &file{name: name, start: start, capacity: capacity, mtime: s.now().UnixNano(), mode: mode & 0o7777, ino: s.newIno()}
	if open {
		f.opens = 1
	}
	s.files = append(s.files, f)
	s.dirty = true
	if err := s.commitLocked(false); err != nil {
		// Undo, so that the name stays free; the table stays dirty and
		// the next commit tries again.
		s.files = remove(s.files, f)
		if from != nil {
			from.capacity += capacity
		}
		s.dirty = true
		return nil, err
	}
	return f, nil
}

// regionsLocked returns every file's region, orphans' too, by start.
func (s *store) regionsLocked() []*file {
	rs := make([]*file, 0, len(s.files)+len(s.orphans))
	rs = append(rs, s.files...)
	rs = append(rs, s.orphans...)
	sort.Slice(rs, func(i, j int) bool { return rs[i].start < rs[j].start })
	return rs
}

// gapAfterLocked is the unallocated space right after f's region: up to the
// next region or the end of the device.
func (s *store) gapAfterLocked(f *file) int64 {
	end := f.start + f.capacity
	next := s.end
	for _, r := range s.regionsLocked() {
		if r != f && r.start >= end && r.start < next {
			next = r.start
		}
	}
	return max(next-end, 0)
}

// allocLocked picks a region for a new file: the largest unallocated
// stretch, or, if splitting gives more, the upper half of the largest unused
// tail of a file's region (returned as from: its capacity shrinks by the
// new region's). capacity 0 means there is no room.
func (s *store) allocLocked() (start, capacity int64, from *file) {
	pos := int64(dataStart)
	for _, r := range s.regionsLocked() {
		if gap := r.start - pos; gap > capacity {
			start, capacity = pos, gap
		}
		pos = max(pos, r.start+r.capacity)
	}
	if gap := s.end - pos; gap > capacity {
		start, capacity = pos, gap
	}
	for _, f := range s.files {
		tail := f.capacity - alignUp(f.size)
		half := (tail / 2) &^ (regionAlign - 1)
		if half > capacity {
			start, capacity, from = f.start+f.capacity-half, half, f
		}
	}
	return start, capacity, from
}

func alignUp(n int64) int64 { return (n + regionAlign - 1) &^ (regionAlign - 1) }

// growLocked makes f's region at least need bytes long, taking all the
// unallocated space right after it; ENOSPC if that is not enough.
func (s *store) growLocked(f *file, need int64) error {
	if need <= f.capacity {
		return nil
	}
	gap := s.gapAfterLocked(f)
	if need > f.capacity+gap {
		return syscall.ENOSPC
	}
	f.capacity += gap
	s.dirty = true
	return nil
}

// zeroLocked writes zeros to f's bytes [from, to).
func (s *store) zeroLocked(f *file, from, to int64) error {
	if to <= from {
		return nil
	}
	zeros := make([]byte, min(to-from, 1<<20))
	for off := from; off < to; {
		n := min(int64(len(zeros)), to-off)
		if _, err := s.dev.WriteAt(zeros[:n], f.start+off); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// writeAt writes p at offset off of f, in one device write. A gap between
// the file's end and off is zeroed first. ENOSPC, and nothing written, if
// the file's region cannot hold off+len(p) bytes.
func (s *store) writeAt(f *file, p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, syscall.EIO
	}
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off > s.devSize {
		return 0, syscall.ENOSPC // and off+len(p) cannot overflow below
	}
	if len(p) == 0 {
		return 0, nil
	}
	end := off + int64(len(p))
	if err := s.growLocked(f, end); err != nil {
		return 0, err
	}
	if off > f.size {
		if err := s.zeroLocked(f, f.size, off); err != nil {
			return 0, err
		}
		f.size = off
		s.dirty = true
	}
	n, err := s.dev.WriteAt(p, f.start+off)
	if n > 0 {
		f.size = max(f.size, off+int64(n))
		f.mtime = s.now().UnixNano()
		s.dirty = true
	}
	return n, err
}

// readAt reads from f at off into p. It returns io.EOF when off is at or
// past the end of the file, and fewer bytes than len(p) (with a nil error)
// where the file ends within p.
func (s *store) readAt(f *file, p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, syscall.EIO
	}
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if off >= f.size {
		return 0, io.EOF
	}
	n := min(int64(len(p)), f.size-off)
	return s.dev.ReadAt(p[:n], f.start+off)
}

// truncate sets f's size. Growing zeroes the new bytes (ENOSPC if the
// region cannot hold them); shrinking writes the table at once, so that
// a crash cannot bring back the old size over newer data.
func (s *store) truncate(f *file, size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return syscall.EIO
	}
	if size < 0 {
		return syscall.EINVAL
	}
	if size > s.devSize {
		return syscall.ENOSPC
	}
	if err := s.growLocked(f, size); err != nil {
		return err
	}
	shrink := size < f.size
	if size > f.size {
		if err := s.zeroLocked(f, f.size, size); err != nil {
			return err
		}
	}
	if size != f.size {
		f.size = size
		f.mtime = s.now().UnixNano()
		s.dirty = true
	}
	if shrink && !f.unlinked {
		return s.commitLocked(false)
	}
	return nil
}

// setattr changes f's permission bits and modification time, where given.
// The change reaches the device with the next commit.
func (s *store) setattr(f *file, mode *uint32, mtime *time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return syscall.EIO
	}
	if mode != nil {
		f.mode = *mode & 0o7777
		s.dirty = true
	}
	if mtime != nil {
		f.mtime = mtime.UnixNano()
		s.dirty = true
	}
	return nil
}

// open counts an open handle of f.
func (s *store) open(f *file) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f.opens++
}

// release ends an open handle of f: an unlinked file's region is freed
// with its last handle. The table is committed if it changed.
func (s *store) release(f *file) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.opens > 0 {
		f.opens--
	}
	if f.unlinked && f.opens == 0 {
		s.orphans = remove(s.orphans, f)
	}
	if s.closed {
		return nil
	}
	return s.commitLocked(false)
}

func remove(list []*file, f *file) []*file {
	for i, g := range list {
		if g == f {
			return append(list[:i:i], list[i+1:]...)
		}
	}
	return list
}

// unlinkLocked takes f out of the table; its region stays taken while it
// is open.
func (s *store) unlinkLocked(f *file) {
	s.files = remove(s.files, f)
	f.unlinked = true
	if f.opens > 0 {
		s.orphans = append(s.orphans, f)
	}
	s.dirty = true
}

// unlink removes the file called name.
func (s *store) unlink(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return syscall.EIO
	}
	f := s.lookupLocked(name)
	if f == nil {
		return syscall.ENOENT
	}
	s.unlinkLocked(f)
	return s.commitLocked(false)
}

// rename renames oldName to newName, replacing a file called newName
// unless noReplace (then EEXIST). With exchange, both must exist and they
// swap names.
func (s *store) rename(oldName, newName string, noReplace, exchange bool) error {
	if err := checkName(newName); err != nil {
		if len(newName) > maxNameLen {
			return syscall.ENAMETOOLONG
		}
		return syscall.EINVAL
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return syscall.EIO
	}
	f := s.lookupLocked(oldName)
	if f == nil {
		return syscall.ENOENT
	}
	g := s.lookupLocked(newName)
	switch {
	case f == g:
		return nil
	case exchange:
		if g == nil {
			return syscall.ENOENT
		}
		f.name, g.name = g.name, f.name
	case g != nil && noReplace:
		return syscall.EEXIST
	default:
		if g != nil {
			s.unlinkLocked(g)
		}
		f.name = newName
	}
	s.dirty = true
	return s.commitLocked(false)
}

// space reports the filesystem's space. avail is, for a file f, how much
// more it can hold (its region and the unallocated space right after it,
// less its size); for f nil, the most any one file, or a new one, can
// hold. So a program that sizes one file by fstatfs on it stays within it.
func (s *store) space(f *file) spaceInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	si := spaceInfo{total: s.end - dataStart, files: len(s.files)}
	used := int64(0)
	for _, r := range s.regionsLocked() {
		if r.unlinked {
			used += r.capacity
		} else {
			used += alignUp(r.size)
		}
	}
	si.free = max(si.total-used, 0)
	room := func(g *file) int64 { return max(g.capacity+s.gapAfterLocked(g)-g.size, 0) }
	if f != nil {
		si.avail = room(f)
		return si
	}
	if len(s.files) < maxFiles {
		_, si.avail, _ = s.allocLocked()
	}
	for _, g := range s.files {
		si.avail = max(si.avail, room(g))
	}
	return si
}
