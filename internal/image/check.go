package image

import (
	"io"
)

// CheckOptions are the hooks of Check.
type CheckOptions struct {
	// Before, if set, runs once the image has opened and passed the
	// cheap checks, before any chunk is read: a resume checks the machine
	// here (kernel build, memory map), so that an image it could never
	// resume is refused without reading all of it. Its error is Check's.
	Before func(rd *Reader) error
	// Progress, if set, is passed to Verify.
	Progress func(done, total int)
	// Key is the master key of an encrypted image (OpenOptions.Key).
	Key []byte
	// SkipChunks leaves out Verify: the caller reads the chunks once, as
	// it restores them, with Restore, which checks each chunk before it
	// hands out its pages and the data area's hash at the end. The image
	// is then read once instead of twice, but a bad chunk is found after
	// some of A's pages are written: the restore helper then marks the
	// image used and reboots into a normal boot.
	SkipChunks bool
}

// Check is everything a resume checks about the bytes of an image before
// it writes a single page: Open (superblock, layout, index, metadata),
// that the image names a region R and a jump-back entry to resume
// through, and Verify over every chunk. Stage 1 of a resume and the
// corruption tests both call it, so that what the tests prove is what
// stage 1 does. Check never hands a page to anyone; it returns the Reader
// of an image that passed, and on failure closes it and returns nil.
func Check(r io.ReaderAt, size int64, opts CheckOptions) (*Reader, error) {
	rd, err := OpenWith(r, size, OpenOptions{Key: opts.Key})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Reader, error) {
		rd.Close()
		return nil, err
	}
	if err := rd.checkResumable(); err != nil {
		return fail(err)
	}
	if opts.Before != nil {
		if err := opts.Before(rd); err != nil {
			return fail(err)
		}
	}
	if opts.SkipChunks {
		return rd, nil
	}
	if err := rd.Verify(opts.Progress); err != nil {
		return fail(err)
	}
	return rd, nil
}

// checkResumable checks what a resume needs of the metadata beyond what
// the format requires: a region for the restore helper to run in, and an
// entry into A to jump back to.
func (rd *Reader) checkResumable() error {
	switch m := &rd.meta; {
	case m.Region.End <= m.Region.Start:
		return formatErr(rd.sb.MetaOff, "metadata names no region R for the restore helper (%v): the image cannot be resumed", m.Region)
	case m.JumpBack == 0:
		return formatErr(rd.sb.MetaOff, "metadata has no jump-back entry: the image cannot be resumed")
	}
	return nil
}
