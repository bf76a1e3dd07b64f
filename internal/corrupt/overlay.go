// Package corrupt makes seeded, reproducible corruptions of khib images, as overlays on the image that copy nothing of it, and runs them through the check a resume makes.
package corrupt

import (
	"errors"
	"fmt"
	"io"
)

// patch replaces n bytes of the image at off: with data if it is set,
// else with the bytes of src at srcOff if src is set, else with zeros.
type patch struct {
	off, n int64
	data   []byte
	src    io.ReaderAt
	srcOff int64
}

// overlay reads an image through its patches, cut to size. It holds no
// state that reads change, so it is as safe for concurrent use as its
// readers are.
type overlay struct {
	base    io.ReaderAt
	size    int64
	patches []patch
}

func (o *overlay) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("corrupt: read at negative offset %d", off)
	}
	if off >= o.size {
		return 0, io.EOF
	}
	short := false
	if int64(len(p)) > o.size-off {
		p, short = p[:o.size-off], true
	}
	n, err := o.base.ReadAt(p, off)
	if n == len(p) {
		err = nil
	} else if err == nil {
		err = io.ErrUnexpectedEOF
	}
	if perr := o.apply(p[:n], off); perr != nil {
		return 0, perr
	}
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

// apply overwrites b, the bytes at off, with the patches in order: a
// later patch wins where two overlap.
func (o *overlay) apply(b []byte, off int64) error {
	end := off + int64(len(b))
	for _, pt := range o.patches {
		lo, hi := max(off, pt.off), min(end, pt.off+pt.n)
		if lo >= hi {
			continue
		}
		dst := b[lo-off : hi-off]
		switch {
		case pt.data != nil:
			copy(dst, pt.data[lo-pt.off:])
		case pt.src != nil:
			if err := readFull(pt.src, dst, pt.srcOff+(lo-pt.off)); err != nil {
				return fmt.Errorf("corrupt: reading the bytes patched in at %#x: %w", lo, err)
			}
		default:
			clear(dst)
		}
	}
	return nil
}

// readFull reads len(b) bytes at off; a short read is an error.
func readFull(r io.ReaderAt, b []byte, off int64) error {
	n, err := r.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
