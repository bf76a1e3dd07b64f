package blockmap

import (
	"fmt"
	"io"
	"sort"
)

func sortExtents(es []Extent) {
	sort.Slice(es, func(i, j int) bool { return es[i].Off < es[j].Off })
}

// Device is what a View reads and writes through: the raw block device.
type Device interface {
	io.ReaderAt
	io.WriterAt
}

// View is the image that a map describes: its extents, concatenated, as
// one io.ReaderAt and io.WriterAt of Size bytes. Reads and writes past
// Size fail with io.EOF and io.ErrShortWrite (an image writer takes that
// as the target being full).
type View struct {
	dev    Device
	ext    []Extent
	starts []int64 // View offset of each extent
	size   int64
}

// NewView returns the view of extents on dev.
func NewView(dev Device, extents []Extent) *View {
	v := &View{dev: dev, ext: extents}
	for _, e := range extents {
		v.starts = append(v.starts, v.size)
		v.size += e.Len
	}
	return v
}

// View returns the map's image as a View on dev.
func (m *Map) View(dev Device) *View { return NewView(dev, m.List) }

// Size is the View's length in bytes.
func (v *View) Size() int64 { return v.size }

// Extents returns the device extents behind the View.
func (v *View) Extents() []Extent { return v.ext }

// each calls fn for the pieces of [off, off+n) on the device.
func (v *View) each(off int64, n int, fn func(devOff int64, lo, hi int) error) error {
	i := sort.Search(len(v.starts), func(i int) bool { return v.starts[i] > off }) - 1
	done := 0
	for done < n && i < len(v.ext) {
		if i < 0 {
			return fmt.Errorf("blockmap: negative offset %d", off)
		}
		in := off + int64(done) - v.starts[i]
		k := int(min(int64(n-done), v.ext[i].Len-in))
		if err := fn(v.ext[i].Off+in, done, done+k); err != nil {
			return err
		}
		done += k
		i++
	}
	return nil
}

func (v *View) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("blockmap: read at negative offset %d", off)
	}
	if off >= v.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(p)), v.size-off))
	got := 0
	err := v.each(off, n, func(d int64, lo, hi int) error {
		k, err := v.dev.ReadAt(p[lo:hi], d)
		got += k
		if err != nil {
			return fmt.Errorf("blockmap: reading the device at %d: %w", d, err)
		}
		return nil
	})
	if err == nil && n < len(p) {
		err = io.EOF
	}
	return got, err
}

func (v *View) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("blockmap: write at negative offset %d", off)
	}
	n := int(max(0, min(int64(len(p)), v.size-off)))
	put := 0
	err := v.each(off, n, func(d int64, lo, hi int) error {
		k, err := v.dev.WriteAt(p[lo:hi], d)
		put += k
		if err != nil {
			return fmt.Errorf("blockmap: writing the device at %d: %w", d, err)
		}
		return nil
	})
	if err == nil && n < len(p) {
		err = fmt.Errorf("blockmap: write of %d bytes at %d passes the end of the %d-byte image space: %w", len(p), off, v.size, io.ErrShortWrite)
	}
	return put, err
}

// Coalesce sorts page-aligned extents and merges those that touch.
func Coalesce(es []Extent) []Extent {
	es = append([]Extent(nil), es...)
	sortExtents(es)
	var out []Extent
	for _, e := range es {
		if n := len(out); n > 0 && out[n-1].End() == e.Off {
			out[n-1].Len += e.Len
			continue
		}
		out = append(out, e)
	}
	return out
}
