// Package cpio writes archives in the newc (SVR4, no CRC) format that the Linux kernel unpacks as an initramfs.
package cpio

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
)

// File type bits of the mode field, as the kernel's init/initramfs.c expects them.
const (
	TypeMask    = 0o170000
	TypeDir     = 0o040000
	TypeReg     = 0o100000
	TypeSymlink = 0o120000
	TypeChar    = 0o020000
	TypeBlock   = 0o060000
	TypeFIFO    = 0o010000
	TypeSocket  = 0o140000
)

const (
	magicNewc  = "070701"
	headerLen  = 110
	trailer    = "TRAILER!!!"
	blockAlign = 512
)

// Writer appends entries to a newc archive. It is not safe for concurrent use.
type Writer struct {
	w      io.Writer
	n      int64 // bytes written so far; newc alignment is relative to the archive start
	ino    uint32
	closed bool
	err    error // sticky: once a write failed the archive is unusable
}

// NewWriter returns a Writer that writes an archive to w.
func NewWriter(w io.Writer) *Writer {
	// Inode 0 is avoided because some unpackers treat it as "no inode".
	return &Writer{w: w, ino: 1}
}

// Dir adds a directory. mode holds the permission bits; the type bits are set here.
func (w *Writer) Dir(name string, mode uint32) error {
	return w.entry(name, TypeDir|mode&0o7777, 2, 0, 0, 0, nil)
}

// File adds a regular file whose content is data.
func (w *Writer) File(name string, mode uint32, data []byte) error {
	return w.entry(name, TypeReg|mode&0o7777, 1, 0, 0, int64(len(data)), bytes.NewReader(data))
}

// FileFrom adds a regular file of exactly size bytes read from r. It fails
// if r ends early, because the header already promised size bytes.
func (w *Writer) FileFrom(name string, mode uint32, r io.Reader, size int64) error {
	if size < 0 || size > maxField {
		return fmt.Errorf("cpio: %s: size %d does not fit a newc header", name, size)
	}
	return w.entry(name, TypeReg|mode&0o7777, 1, 0, 0, size, r)
}

// Symlink adds a symbolic link at name pointing to target.
func (w *Writer) Symlink(name, target string) error {
	return w.entry(name, TypeSymlink|0o777, 1, 0, 0, int64(len(target)), strings.NewReader(target))
}

// CharDev adds a character device node.
func (w *Writer) CharDev(name string, mode uint32, major, minor uint32) error {
	return w.entry(name, TypeChar|mode&0o7777, 1, major, minor, 0, nil)
}

// Close writes the trailer entry and pads the archive to a multiple of 512
// bytes. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if err := w.entry(trailer, 0, 1, 0, 0, 0, nil); err != nil {
		return err
	}
	w.closed = true
	if pad := (blockAlign - w.n%blockAlign) % blockAlign; pad != 0 {
		w.write(make([]byte, pad))
	}
	return w.err
}

const maxField = 0xffffffff

func cleanName(name string) (string, error) {
	n := strings.TrimLeft(name, "/")
	if n == "" {
		if name == "" {
			return "", errors.New("cpio: empty name")
		}
		// "/" itself: the kernel knows the root directory as ".".
		n = "."
	}
	if strings.IndexByte(n, 0) >= 0 {
		return "", fmt.Errorf("cpio: name %q contains NUL", name)
	}
	return n, nil
}

func (w *Writer) entry(name string, mode, nlink, rmajor, rminor uint32, size int64, data io.Reader) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("cpio: write after Close")
	}
	if name != trailer {
		var err error
		if name, err = cleanName(name); err != nil {
			return err
		}
	}
	ino := w.ino
	w.ino++
	if name == trailer {
		ino = 0
	}
	fields := [13]uint32{
		ino, mode, 0, 0, nlink, 0, uint32(size),
		0, 0, rmajor, rminor, uint32(len(name) + 1), 0,
	}
	hdr := make([]byte, 0, headerLen+len(name)+4)
	hdr = append(hdr, magicNewc...)
	for _, f := range fields {
		hdr = fmt.Appendf(hdr, "%08x", f)
	}
	hdr = append(hdr, name...)
	hdr = append(hdr, 0)
	hdr = append(hdr, make([]byte, pad4(int64(len(hdr))))...)
	w.write(hdr)
	if size > 0 {
		n, err := io.Copy(countWriter{w}, io.LimitReader(data, size))
		if err == nil && n != size {
			err = fmt.Errorf("cpio: %s: source ended after %d of %d bytes", name, n, size)
		}
		if err != nil && w.err == nil {
			w.err = fmt.Errorf("cpio: writing data of %s: %w", name, err)
		}
		w.write(make([]byte, pad4(size)))
	}
	return w.err
}

func pad4(n int64) int64 { return (4 - n%4) % 4 }

func (w *Writer) write(p []byte) {
	if w.err != nil {
		return
	}
	n, err := w.w.Write(p)
	w.n += int64(n)
	if err != nil {
		w.err = fmt.Errorf("cpio: write at offset %d: %w", w.n, err)
	}
}

// countWriter lets io.Copy go through write so that the offset stays right.
type countWriter struct{ w *Writer }

func (c countWriter) Write(p []byte) (int, error) {
	c.w.write(p)
	if c.w.err != nil {
		return 0, c.w.err
	}
	return len(p), nil
}
