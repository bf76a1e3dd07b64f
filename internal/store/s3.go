package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/cespare/xxhash/v2"

	"github.com/khib/khib/internal/image"
	"github.com/khib/khib/internal/objstore"
)

// s3Upload is an image being written to an object store: writes only,
// in the image writer's order (objstore.Upload). Close aborts the upload
// unless Finish completed it: completing it is the commit, so a save
// that fails leaves no object behind.
type s3Upload struct {
	up       *objstore.Upload
	loc      *objstore.Location
	finished bool
}

// CreateS3 starts writing an image to loc.
func CreateS3(ctx context.Context, loc *objstore.Location, creds *objstore.Credentials) (Store, error) {
	// 8 MiB parts, two in flight: the helper runs in R, as small as
	// 128 MiB, and a part is held in memory until it is stored.
	up, err := objstore.Create(ctx, loc, creds, objstore.Options{PartSize: 8 << 20, Concurrency: 2})
	if err != nil {
		return nil, err
	}
	return &s3Upload{up: up, loc: loc}, nil
}

func (s *s3Upload) ReadAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("%s: an upload is written, not read", s.loc.Object())
}
func (s *s3Upload) WriteAt(p []byte, off int64) (int, error) { return s.up.WriteAt(p, off) }
func (s *s3Upload) Size() int64                              { return s.up.Capacity() }
func (s *s3Upload) Sync() error                              { return s.up.Sync() }
func (s *s3Upload) Name() string                             { return s.loc.Object() }
func (s *s3Upload) Device() *os.File                         { return nil }
func (s *s3Upload) Spent() error                             { return nil }
func (s *s3Upload) Kind() string                             { return "s3" }

// Finish completes the upload: the object exists from now on, whole.
func (s *s3Upload) Finish() error {
	s.finished = true
	return s.up.Close()
}

func (s *s3Upload) Close() error {
	if s.finished {
		return nil
	}
	return s.up.Abort()
}

// Finisher is a store whose writes become visible only when finished.
type Finisher interface {
	Finish() error
}

// s3Object is an image read from an object store. An object cannot be
// rewritten in place, so "used" is a marker object beside it
// (objstore.MarkUsed); the store shows an image whose UUID the marker
// names with its superblock in state Invalidated, as a device would hold
// it, so that every reader refuses it the usual way.
type s3Object struct {
	obj   *objstore.Object
	loc   *objstore.Location
	creds *objstore.Credentials
	ctx   context.Context
	head  []byte // the first page as it is to be read
	uuid  string
}

// OpenS3 opens the image at loc for reading.
func OpenS3(ctx context.Context, loc *objstore.Location, creds *objstore.Credentials) (Store, error) {
	obj, err := objstore.Open(ctx, loc, creds)
	if err != nil {
		return nil, err
	}
	s := &s3Object{obj: obj, loc: loc, creds: creds, ctx: ctx}
	head := make([]byte, image.SuperblockSize)
	if n, err := obj.ReadAt(head, 0); n < len(head) {
		obj.Close()
		if err == nil {
			err = errors.New("short object")
		}
		return nil, fmt.Errorf("%s: reading the superblock: %w", loc.Object(), err)
	}
	if sb, err := image.ReadSuperblock(bytes.NewReader(head)); err == nil {
		s.uuid = sb.UUID.String()
		used, found, err := objstore.UsedMarker(ctx, loc, creds)
		if err != nil {
			obj.Close()
			return nil, err
		}
		if found && used == s.uuid {
			// As SetState would have written it on a device.
			head[12], head[13], head[14], head[15] = byte(image.StateInvalidated), 0, 0, 0
			sum := xxhash.Sum64(head[:image.SuperblockSize-8])
			for i := 0; i < 8; i++ {
				head[image.SuperblockSize-8+i] = byte(sum >> (8 * i))
			}
		}
	}
	s.head = head
	return s, nil
}

func (s *s3Object) ReadAt(p []byte, off int64) (int, error) {
	if off < int64(len(s.head)) {
		n := copy(p, s.head[off:])
		if n == len(p) {
			return n, nil
		}
		m, err := s.obj.ReadAt(p[n:], off+int64(n))
		return n + m, err
	}
	return s.obj.ReadAt(p, off)
}

func (s *s3Object) WriteAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("%s: an object is not rewritten in place", s.loc.Object())
}
func (s *s3Object) Size() int64      { return s.obj.Size() }
func (s *s3Object) Sync() error      { return nil }
func (s *s3Object) Name() string     { return s.loc.Object() }
func (s *s3Object) Device() *os.File { return nil }
func (s *s3Object) Spent() error     { return nil }
func (s *s3Object) Kind() string     { return "s3" }
func (s *s3Object) Close() error     { return s.obj.Close() }

// MarkUsed writes the marker object that names this image as used.
func (s *s3Object) MarkUsed() error {
	if s.uuid == "" {
		return fmt.Errorf("%s: no image to mark", s.loc.Object())
	}
	return objstore.MarkUsed(s.ctx, s.loc, s.creds, s.uuid)
}

// UsedMarker is a store that marks an image used some other way than
// rewriting its superblock.
type UsedMarker interface {
	MarkUsed() error
}
