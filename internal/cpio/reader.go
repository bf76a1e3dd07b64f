package cpio

import (
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Limits that keep the Reader from allocating on the say-so of a header.
// A name longer than PATH_MAX is refused by the kernel too.
const (
	MaxNameSize = 4096
	// DefaultMaxFileSize is the largest entry a Reader accepts unless told
	// otherwise. Data is streamed, never buffered here, but callers often
	// read an entry whole, and no initramfs member is anywhere near 1 GiB.
	DefaultMaxFileSize = 1 << 30
)

// Header describes one archive entry.
type Header struct {
	Name     string
	Ino      uint32
	Mode     uint32 // type and permission bits
	UID, GID uint32
	Nlink    uint32
	Mtime    uint32
	Size     int64
	DevMajor uint32
	DevMinor uint32
	// RdevMajor and RdevMinor are the device numbers of a device node.
	RdevMajor uint32
	RdevMinor uint32
	Offset    int64 // of the header in the archive, for error messages
}

// IsDir and friends test the type bits.
func (h *Header) IsDir() bool     { return h.Mode&TypeMask == TypeDir }
func (h *Header) IsRegular() bool { return h.Mode&TypeMask == TypeReg }
func (h *Header) IsSymlink() bool { return h.Mode&TypeMask == TypeSymlink }
func (h *Header) IsCharDev() bool { return h.Mode&TypeMask == TypeChar }

// ErrFormat is wrapped by every error about malformed input.
var ErrFormat = errors.New("cpio: malformed archive")

// Reader reads a newc archive entry by entry. After Next, Reader reads the
// entry's data.
type Reader struct {
	// MaxFileSize bounds the data size a header may announce; larger
	// entries are rejected as malformed. NewReader sets DefaultMaxFileSize.
	MaxFileSize int64

	r      io.Reader
	off    int64
	remain int64 // data bytes of the current entry not yet read
	pad    int64 // padding after the current entry's data
	done   bool
	err    error
}

// NewReader returns a Reader reading an archive from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r, MaxFileSize: DefaultMaxFileSize} }

// Next advances to the next entry, skipping unread data of the current one.
// It returns io.EOF after the trailer entry.
func (r *Reader) Next() (*Header, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.done {
		return nil, io.EOF
	}
	if err := r.skip(r.remain + r.pad); err != nil {
		return nil, r.fail(err)
	}
	r.remain, r.pad = 0, 0
	start := r.off
	var raw [headerLen]byte
	if err := r.full(raw[:]); err != nil {
		if err == io.EOF {
			return nil, r.fail(fmt.Errorf("%w: archive ends at offset %d without a trailer", ErrFormat, start))
		}
		return nil, r.fail(fmt.Errorf("reading header at offset %d: %w", start, err))
	}
	if string(raw[:6]) != magicNewc {
		return nil, r.fail(fmt.Errorf("%w: bad magic %q at offset %d", ErrFormat, raw[:6], start))
	}
	var f [13]uint32
	for i := range f {
		v, err := strconv.ParseUint(string(raw[6+8*i:14+8*i]), 16, 32)
		if err != nil {
			return nil, r.fail(fmt.Errorf("%w: header field %d at offset %d is not hex: %q", ErrFormat, i, start, raw[6+8*i:14+8*i]))
		}
		f[i] = uint32(v)
	}
	h := &Header{
		Ino: f[0], Mode: f[1], UID: f[2], GID: f[3], Nlink: f[4], Mtime: f[5],
		Size: int64(f[6]), DevMajor: f[7], DevMinor: f[8], RdevMajor: f[9], RdevMinor: f[10],
		Offset: start,
	}
	if h.Size > r.MaxFileSize {
		return nil, r.fail(fmt.Errorf("%w: entry at offset %d announces %d bytes of data (limit %d)", ErrFormat, start, h.Size, r.MaxFileSize))
	}
	namesize := int64(f[11])
	if namesize == 0 || namesize > MaxNameSize {
		return nil, r.fail(fmt.Errorf("%w: name size %d at offset %d (allowed 1..%d)", ErrFormat, namesize, start, MaxNameSize))
	}
	name := make([]byte, namesize)
	if err := r.full(name); err != nil {
		return nil, r.fail(fmt.Errorf("%w: reading name at offset %d: %v", ErrFormat, start, noEOF(err)))
	}
	if name[namesize-1] != 0 {
		return nil, r.fail(fmt.Errorf("%w: name at offset %d is not NUL-terminated", ErrFormat, start))
	}
	h.Name = string(name[:namesize-1])
	if err := r.skip(pad4(headerLen + namesize)); err != nil {
		return nil, r.fail(err)
	}
	if h.Name == trailer {
		r.done = true
		return nil, io.EOF
	}
	r.remain = h.Size
	r.pad = pad4(h.Size)
	return h, nil
}

// Read reads the current entry's data.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.remain == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remain {
		p = p[:r.remain]
	}
	n, err := r.r.Read(p)
	r.off += int64(n)
	r.remain -= int64(n)
	if err == io.EOF && r.remain > 0 {
		return n, r.fail(fmt.Errorf("%w: data ends %d bytes early at offset %d", ErrFormat, r.remain, r.off))
	}
	if err != nil && err != io.EOF {
		return n, r.fail(fmt.Errorf("reading data at offset %d: %w", r.off, err))
	}
	return n, nil
}

func (r *Reader) fail(err error) error {
	r.err = err
	return err
}

func (r *Reader) full(p []byte) error {
	n, err := io.ReadFull(r.r, p)
	r.off += int64(n)
	return err
}

// skip discards n bytes without buffering more than a small block at a time.
func (r *Reader) skip(n int64) error {
	if n == 0 {
		return nil
	}
	got, err := io.CopyN(io.Discard, r.r, n)
	r.off += got
	if err != nil {
		return fmt.Errorf("%w: skipping %d bytes at offset %d: %v", ErrFormat, n, r.off-got, noEOF(err))
	}
	return nil
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
