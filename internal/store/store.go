// Package store opens the place where an image lives, whatever kind of
// target holds it, as one io.ReaderAt and io.WriterAt: a whole block
// device, or a block map on a device (a file on a filesystem of A's, or
// free slots of A's swap; internal/blockmap).
//
// The helpers and stage 1 see devices by other names than A does, so a
// store is found by what its device holds: A's reservation nonce (helper
// B, Find), the image's UUID (helper C, Find), or a device spec and an
// anchor offset that A recorded for stage 1 (Open).
package store

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/khib/khib/internal/blockmap"
	"github.com/khib/khib/internal/target"
)

// Store is an image's place.
type Store interface {
	io.ReaderAt
	io.WriterAt
	// Size is how many bytes the image may take.
	Size() int64
	// Sync makes what was written durable.
	Sync() error
	Close() error
	// Name says where the image is, for people.
	Name() string
	// Device is the block device behind the store.
	Device() *os.File
	// Spent is called once the image is marked used, or when stage 1
	// will not resume it: a swap area gets its signature back so that
	// the system can swap to it again. It syncs.
	Spent() error
	// Kind is "device", "file" or "swap".
	Kind() string
}

// Where tells the helpers how to find a store: a whole device (Mapped
// false), the block map whose anchor lies at Anchor on some device, or a
// file on a filesystem they mount (Dir).
type Where struct {
	Mapped bool
	Anchor int64
	Dir    *target.Spec
	S3     string // an s3:// URL
}

// String is the form that goes on a helper's command line.
func (w Where) String() string {
	switch {
	case w.S3 != "":
		return w.S3
	case w.Dir != nil:
		return w.Dir.String()
	case !w.Mapped:
		return "device"
	}
	return "map@" + strconv.FormatInt(w.Anchor, 10)
}

// ParseWhere reads Where.String's form.
func ParseWhere(s string) (Where, error) {
	if s == "" || s == "device" {
		return Where{}, nil
	}
	if strings.HasPrefix(s, "s3://") {
		return Where{S3: s}, nil
	}
	if strings.HasPrefix(s, target.SpecDir+":") {
		sp, err := target.ParseSpec(s)
		if err != nil {
			return Where{}, fmt.Errorf("store: %w", err)
		}
		return Where{Dir: &sp}, nil
	}
	v, ok := strings.CutPrefix(s, "map@")
	if ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err == nil && n >= 0 && n%blockmap.PageSize == 0 {
			return Where{Mapped: true, Anchor: n}, nil
		}
	}
	return Where{}, fmt.Errorf("store: bad location %q (want device or map@OFFSET)", s)
}

type device struct {
	*directIO
	size int64
	name string
}

func (d *device) Size() int64      { return d.size }
func (d *device) Name() string     { return d.name }
func (d *device) Device() *os.File { return d.File }
func (d *device) Spent() error     { return nil }
func (d *device) Kind() string     { return "device" }
func (d *device) Close() error     { return d.directIO.Close() }
func (d *device) Sync() error      { return d.File.Sync() }

type mapped struct {
	*blockmap.View
	f    *os.File
	io   *directIO
	m    *blockmap.Map
	name string
}

func (m *mapped) Name() string     { return m.name }
func (m *mapped) Device() *os.File { return m.f }
func (m *mapped) Sync() error      { return m.f.Sync() }
func (m *mapped) Close() error     { return m.io.Close() }
func (m *mapped) Kind() string     { return m.m.Kind.String() }
func (m *mapped) Map() *blockmap.Map {
	return m.m
}

func (m *mapped) Spent() error {
	if m.m.Kind != blockmap.KindSwap {
		return nil
	}
	if _, err := blockmap.RestoreSwap(m.f, m.m.Self); err != nil {
		return err
	}
	return m.f.Sync()
}

// OnDevice returns the whole device f (of size bytes) as a store.
// Large aligned transfers bypass the page cache (directIO).
func OnDevice(f *os.File, size int64) Store {
	return &device{directIO: newDirectIO(f, writable(f)), size: size, name: f.Name()}
}

// writable says whether f was opened for writing.
func writable(f *os.File) bool {
	fl, err := unix.FcntlInt(f.Fd(), unix.F_GETFL, 0)
	return err == nil && fl&unix.O_ACCMODE != unix.O_RDONLY
}

// Mapped opens the block map anchored at anchor on the open device f.
func Mapped(f *os.File, anchor int64) (Store, error) {
	size, err := target.DeviceSize(f)
	if err != nil {
		if st, serr := f.Stat(); serr == nil && st.Mode().IsRegular() {
			size, err = st.Size(), nil // a disk image, in tests and inspection
		} else {
			return nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
	}
	m, err := blockmap.Read(f, anchor, size)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	d := newDirectIO(f, writable(f))
	return &mapped{View: m.View(d), f: f, io: d, m: m,
		name: fmt.Sprintf("%s on %s (anchor at %d, %d extents)", m.Kind, f.Name(), anchor, len(m.List))}, nil
}

// MapOf returns the block map behind a mapped store, or nil.
func MapOf(s Store) *blockmap.Map {
	if m, ok := s.(*mapped); ok {
		return m.m
	}
	return nil
}

// Open opens the store at where on the device at path, read-write or
// read-only.
func Open(path string, where Where, writable bool) (Store, error) {
	flag := os.O_RDONLY
	if writable {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	if where.Mapped {
		s, err := Mapped(f, where.Anchor)
		if err != nil {
			f.Close()
			return nil, err
		}
		return s, nil
	}
	size, err := target.DeviceSize(f)
	if err != nil {
		st, serr := f.Stat()
		if serr != nil || !st.Mode().IsRegular() {
			f.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		size = st.Size()
	}
	return OnDevice(f, size), nil
}

// Find opens, read-write, the store at where on the first block device
// on which match accepts it. It is how the helpers find their image
// whatever A or stage 1 called the device.
func Find(where Where, match func(Store) bool) (Store, error) {
	paths, err := target.BlockDevices()
	if err != nil {
		return nil, err
	}
	for _, p := range paths {
		s, err := Open(p, where, true)
		if err != nil {
			continue
		}
		if match(s) {
			return s, nil
		}
		s.Close()
	}
	looked := "no block devices at all"
	if len(paths) > 0 {
		looked = "looked at " + strings.Join(paths, " ")
	}
	what := "khib's reservation"
	if where.Mapped {
		what = fmt.Sprintf("khib's block map at offset %d", where.Anchor)
	}
	return nil, fmt.Errorf("no block device carries %s (%s): the helper kernel cannot read the target "+
		"or has no driver for it; choose a target on a disk the helper kernel supports", what, looked)
}
