package image

import (
	"errors"
	"fmt"
	"io"
)

// Errors a caller can branch on with errors.Is.
var (
	// ErrNotImage: the bytes do not start with a khib superblock.
	ErrNotImage = errors.New("image: not a khib image")
	// ErrVersion: a khib image of a format version this package cannot read.
	ErrVersion = errors.New("image: unsupported format version")
	// ErrIncomplete: the save never finished (state Writing) or gave up
	// (state Failed). There is nothing to restore.
	ErrIncomplete = errors.New("image: incomplete image")
	// ErrInvalidated: the image was resumed from already, or a resume from
	// it failed after writing pages; restoring it again would bring back a
	// stale system.
	ErrInvalidated = errors.New("image: invalidated image")
	// ErrCorrupt is wrapped by every *FormatError: a checksum mismatch, a
	// truncated image, a value out of range.
	ErrCorrupt = errors.New("image: corrupt image")
	// ErrTooSmall is wrapped by *TooSmallError: the image does not fit.
	ErrTooSmall = errors.New("image: device too small")
	// ErrNoReservation: the device holds no superblock with the nonce looked for.
	ErrNoReservation = errors.New("image: no reservation with this nonce")
	// ErrNoPage: ReadPage was asked for a page the image does not hold.
	ErrNoPage = errors.New("image: page not in image")
	// ErrForeignKernel: the image was saved by another kernel than the one
	// that would resume it.
	ErrForeignKernel = errors.New("image: made by a different kernel")
)

// FormatError says where an image is malformed. It wraps ErrCorrupt.
type FormatError struct {
	Off   int64 // byte offset in the image; -1 if the problem has no place
	Chunk int   // chunk number, or -1 if the problem is not in a chunk
	Msg   string
}

func (e *FormatError) Error() string {
	switch {
	case e.Chunk >= 0 && e.Off >= 0:
		return fmt.Sprintf("image: chunk %d at offset %#x: %s", e.Chunk, e.Off, e.Msg)
	case e.Chunk >= 0:
		return fmt.Sprintf("image: chunk %d: %s", e.Chunk, e.Msg)
	case e.Off >= 0:
		return fmt.Sprintf("image: offset %#x: %s", e.Off, e.Msg)
	}
	return "image: " + e.Msg
}

func (e *FormatError) Unwrap() error { return ErrCorrupt }

// formatErr builds a FormatError that is not about a chunk.
func formatErr(off uint64, format string, args ...any) error {
	return &FormatError{Off: clampOff(off), Chunk: -1, Msg: fmt.Sprintf(format, args...)}
}

func chunkErr(i int, off uint64, format string, args ...any) error {
	return &FormatError{Off: clampOff(off), Chunk: i, Msg: fmt.Sprintf(format, args...)}
}

func clampOff(off uint64) int64 {
	if off > 1<<62 {
		return -1
	}
	return int64(off)
}

// TooSmallError says that an image does not fit on its device, and how much
// space it needs. It wraps ErrTooSmall.
type TooSmallError struct {
	Capacity int64 // bytes the device offers
	Need     int64 // bytes the image needs, exact or estimated
	// Estimated is set when Need was extrapolated from the progress so far
	// (the fraction of A's RAM saved), rather than counted.
	Estimated bool
	// AtLeast is set when Need is only a lower bound: the writer did not
	// know how much RAM remained to be saved.
	AtLeast bool
}

func (e *TooSmallError) Error() string {
	how := "needs"
	switch {
	case e.AtLeast:
		how = "needs more than"
	case e.Estimated:
		how = "needs about"
	}
	return fmt.Sprintf("image: device too small: device holds %s; this image %s %s",
		mib(e.Capacity), how, mibUp(e.Need))
}

func (e *TooSmallError) Unwrap() error { return ErrTooSmall }

// mib formats a size for people, rounded down.
func mib(n int64) string {
	const m = 1 << 20
	if n >= 10*m {
		return fmt.Sprintf("%d MiB", n/m)
	}
	return fmt.Sprintf("%.1f MiB", float64(n/(m/10))/10)
}

// mibUp formats a size for people, rounded up: a need must never read as
// less than it is.
func mibUp(n int64) string {
	const m = 1 << 20
	if n >= 10*m {
		return fmt.Sprintf("%d MiB", (n+m-1)/m)
	}
	return fmt.Sprintf("%.1f MiB", float64((n+m/10-1)/(m/10))/10)
}

// errShort reports that a ReaderAt returned fewer bytes than asked.
var errShort = errors.New("short read")

// readFull reads len(b) bytes at off. A short read, whether the ReaderAt
// says EOF or not, gives errShort; other errors pass through.
func readFull(r io.ReaderAt, b []byte, off uint64) error {
	if off > math64 || uint64(len(b)) > math64-off {
		return errShort
	}
	n, err := r.ReadAt(b, int64(off))
	if n == len(b) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errShort
	}
	return err
}

const math64 = 1<<63 - 1
