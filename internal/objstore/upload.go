package objstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"
)

// Sizes of an upload. S3 wants every part but the last to hold at least
// 5 MiB, at most 5 GiB, and at most 10000 parts in all.
const (
	MinPartSize          = 5 << 20
	MaxPartSize          = 5 << 30
	MaxParts             = 10000
	DefaultFirstPartSize = 8 << 20
	DefaultPartSize      = 16 << 20
	DefaultConcurrency   = 2
	DefaultCapacity      = 1 << 40
)

// cleanupTimeout bounds the requests that tidy up after a failure, which
// run even when the caller's context is done.
const cleanupTimeout = 30 * time.Second

// Options configure Create. The zero value takes the defaults.
type Options struct {
	// FirstPartSize is the head of the object kept in memory until Close,
	// since it is written again at the end (the image's superblock). At
	// least MinPartSize; default DefaultFirstPartSize.
	FirstPartSize int64
	// PartSize is the size of each later part. At least MinPartSize;
	// default DefaultPartSize.
	PartSize int64
	// Concurrency is how many parts may be uploading at once; memory is
	// about FirstPartSize + (Concurrency+1)·PartSize. Default 2.
	Concurrency int
	// Capacity is the most bytes the object may take. Default
	// DefaultCapacity, cut to what MaxParts parts hold; a Capacity over
	// that is refused.
	Capacity int64
	// Attempts is how often each request is tried; default 10.
	Attempts int
	// Logf, if set, is told of a failure that does not fail the upload
	// (removing a stale used marker).
	Logf func(format string, args ...any)
}

// normalized fills in the defaults, checks the options and returns the
// capacity.
func (o Options) normalized() (Options, int64, error) {
	if o.FirstPartSize == 0 {
		o.FirstPartSize = DefaultFirstPartSize
	}
	if o.PartSize == 0 {
		o.PartSize = DefaultPartSize
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	switch {
	case o.FirstPartSize < MinPartSize || o.FirstPartSize > MaxPartSize:
		return o, 0, fmt.Errorf("objstore: first part of %d bytes; want %d to %d", o.FirstPartSize, MinPartSize, MaxPartSize)
	case o.PartSize < MinPartSize || o.PartSize > MaxPartSize:
		return o, 0, fmt.Errorf("objstore: parts of %d bytes; want %d to %d", o.PartSize, MinPartSize, MaxPartSize)
	case o.Concurrency < 1 || o.Concurrency > 64:
		return o, 0, fmt.Errorf("objstore: concurrency %d; want 1 to 64", o.Concurrency)
	case o.Capacity < 0:
		return o, 0, fmt.Errorf("objstore: negative capacity %d", o.Capacity)
	}
	most := o.FirstPartSize + (MaxParts-1)*o.PartSize
	capacity := o.Capacity
	if capacity == 0 {
		capacity = min(DefaultCapacity, most)
	} else if capacity > most {
		return o, 0, fmt.Errorf("objstore: capacity of %d bytes, but %d parts of %d bytes hold only %d; raise PartSize", capacity, MaxParts, o.PartSize, most)
	}
	return o, capacity, nil
}

// Upload writes one object as a multipart upload. It is an io.WriterAt
// for the image writer's order of writes: the first FirstPartSize bytes
// may be written anywhere and again (they stay in memory until Close);
// every byte after them must come in order, each write starting where the
// previous one ended, and is uploaded part by part as it fills.
//
// Nothing is visible in the store until Close completes the upload: the
// completion is the commit, so an object never exists half-written, and
// an upload that fails or is aborted leaves the previous object, if any,
// as it was. Its methods may be called from several goroutines.
type Upload struct {
	core     *minio.Core
	loc      Location
	name     string // s3://BUCKET/KEY
	opts     Options
	capacity int64
	parent   context.Context // for cleanup after ctx is cancelled
	ctx      context.Context
	cancel   context.CancelFunc
	uploadID string

	mu      sync.Mutex // over everything below but the results
	head    []byte     // the first part, FirstPartSize bytes
	headEnd int64      // end of the highest write into head
	next    int64      // where the next write past head must start
	cur     []byte     // the part being filled, or nil
	partNo  int        // the number cur will have
	bufs    chan []byte
	nbufs   int // part buffers made
	wg      sync.WaitGroup
	state   uploadState
	result  error       // of Close
	stored  atomic.Bool // Close succeeded

	resMu sync.Mutex // over parts and err
	parts []minio.CompletePart
	err   error // the first failure of a part
}

type uploadState int

const (
	uploadOpen uploadState = iota
	uploadClosed
	uploadAborted
)

// Create starts a multipart upload of loc's object. ctx bounds the whole
// upload: when it is done, writes fail and Close aborts. The store is
// asked to start the upload at once, so that a store that refuses is
// known before anything is written.
func Create(ctx context.Context, loc *Location, creds *Credentials, opts Options) (*Upload, error) {
	o, capacity, err := opts.normalized()
	if err != nil {
		return nil, err
	}
	core, err := newCore(loc, creds, o.Attempts)
	if err != nil {
		return nil, err
	}
	id, err := core.NewMultipartUpload(ctx, loc.Bucket, loc.Key, minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return nil, fmt.Errorf("%s: starting the upload: %w", loc.Object(), wrapStore(err))
	}
	uctx, cancel := context.WithCancel(ctx)
	return &Upload{
		core:     core,
		loc:      *loc,
		name:     loc.Object(),
		opts:     o,
		capacity: capacity,
		parent:   ctx,
		ctx:      uctx,
		cancel:   cancel,
		uploadID: id,
		head:     make([]byte, o.FirstPartSize),
		next:     o.FirstPartSize,
		partNo:   2,
		bufs:     make(chan []byte, o.Concurrency+1),
	}, nil
}

// Capacity is the most bytes the object may take; give it to the image
// writer as its capacity.
func (u *Upload) Capacity() int64 { return u.capacity }

// WriteAt writes p at off: anywhere in the first part, in order after it.
func (u *Upload) WriteAt(p []byte, off int64) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.usable(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("%s: a write at negative offset %d", u.name, off)
	}
	end := off + int64(len(p))
	if end > u.capacity || end < off {
		return 0, fmt.Errorf("%s: a write of %d bytes at offset %d goes past the capacity of %d bytes", u.name, len(p), off, u.capacity)
	}
	fps := int64(len(u.head))
	if end > fps {
		if s := max(off, fps); s != u.next {
			return 0, fmt.Errorf("%s: a write at offset %d, but past the first %d bytes an object is written in order and the next write must start at %d", u.name, s, fps, u.next)
		}
	}
	if off < fps {
		n := copy(u.head[off:], p)
		u.headEnd = max(u.headEnd, off+int64(n))
	}
	if end <= fps {
		return len(p), nil
	}
	rest := p[max(fps-off, 0):]
	for len(rest) > 0 {
		if u.cur == nil {
			buf, err := u.buffer()
			if err != nil {
				return len(p) - len(rest), err
			}
			u.cur = buf[:0]
		}
		k := min(len(rest), cap(u.cur)-len(u.cur))
		u.cur = append(u.cur, rest[:k]...)
		rest = rest[k:]
		u.next += int64(k)
		if len(u.cur) == cap(u.cur) {
			u.send()
		}
	}
	return len(p), nil
}

// usable tells why the upload takes no more writes, if it does not.
func (u *Upload) usable() error {
	switch u.state {
	case uploadClosed:
		return fmt.Errorf("%s: the upload is closed", u.name)
	case uploadAborted:
		return fmt.Errorf("%s: the upload was aborted", u.name)
	}
	if err := u.failed(); err != nil {
		return err
	}
	if err := u.ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", u.name, err)
	}
	return nil
}

func (u *Upload) failed() error {
	u.resMu.Lock()
	defer u.resMu.Unlock()
	return u.err
}

// buffer returns an empty part buffer, waiting for one to come back from
// an upload when Concurrency+1 are in use. This bounds the memory.
func (u *Upload) buffer() ([]byte, error) {
	select {
	case b := <-u.bufs:
		return b, nil
	default:
	}
	if u.nbufs < u.opts.Concurrency+1 {
		u.nbufs++
		return make([]byte, 0, u.opts.PartSize), nil
	}
	select {
	case b := <-u.bufs:
		if err := u.failed(); err != nil {
			u.bufs <- b
			return nil, err
		}
		return b, nil
	case <-u.ctx.Done():
		if err := u.failed(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s: %w", u.name, u.ctx.Err())
	}
}

// send uploads cur as the next part in the background.
func (u *Upload) send() {
	buf, n := u.cur, u.partNo
	u.cur = nil
	u.partNo++
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		u.record(u.putPart(n, buf))
		u.bufs <- buf[:0]
	}()
}

// putPart uploads one part. The payload's SHA-256 is signed with the
// request, so the store can tell a part that was damaged on the way.
func (u *Upload) putPart(n int, data []byte) (minio.CompletePart, error) {
	sum := sha256.Sum256(data)
	var p minio.ObjectPart
	err := withRetry(u.ctx, u.opts.Attempts, func() error {
		body := newBodyReader(data)
		defer body.Close()
		var err error
		p, err = u.core.PutObjectPart(u.ctx, u.loc.Bucket, u.loc.Key, u.uploadID, n,
			body, int64(len(data)), minio.PutObjectPartOptions{
				Sha256Hex: hex.EncodeToString(sum[:]),
				// No streaming signature: the payload hash is in the header.
				DisableContentSha256: true,
			})
		return err
	})
	if err != nil {
		return minio.CompletePart{}, fmt.Errorf("%s: uploading part %d (%d bytes): %w", u.name, n, len(data), wrapStore(err))
	}
	return minio.CompletePart{PartNumber: n, ETag: p.ETag}, nil
}

// record keeps a part's result. The first failure cancels the parts in
// flight: the upload is lost anyway.
func (u *Upload) record(p minio.CompletePart, err error) {
	u.resMu.Lock()
	defer u.resMu.Unlock()
	if err != nil {
		if u.err == nil {
			u.err = err
			u.cancel()
		}
		return
	}
	u.parts = append(u.parts, p)
}

// Sync waits for the parts being uploaded and reports a failure of any of
// them. It does not make the object durable: nothing is stored until
// Close completes the upload.
func (u *Upload) Sync() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.state != uploadOpen {
		return u.usable()
	}
	u.wg.Wait()
	return u.usable()
}

// Close uploads the rest and the first part and completes the upload,
// which stores the object whole. If anything failed, now or before, Close
// aborts the upload and returns the error; the store then holds what it
// held before Create. Close may be called more than once.
//
// After the completion, Close removes a used marker KEY.used left by an
// earlier image of the same key (see MarkUsed). The order matters: had
// the marker gone first, a failed upload would leave the old, already
// resumed image in place with no marker, to be resumed a second time. A
// marker that outlives the new image is harmless, since it names the old
// image's UUID; so a failure to remove it does not fail Close (Logf is
// told).
func (u *Upload) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch u.state {
	case uploadClosed:
		return u.result
	case uploadAborted:
		return fmt.Errorf("%s: the upload was aborted", u.name)
	}
	u.state = uploadClosed
	u.result = u.finish()
	if u.result != nil {
		u.cancel()
		u.wg.Wait()
		if err := u.abortUpload(); err != nil {
			u.logf("%v", err)
		}
	}
	u.cancel()
	u.head = nil
	u.stored.Store(u.result == nil)
	return u.result
}

func (u *Upload) finish() error {
	u.wg.Wait()
	if err := u.failed(); err != nil {
		return err
	}
	if err := u.ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", u.name, err)
	}
	fps := int64(len(u.head))
	size := u.headEnd
	if u.next > fps {
		size = u.next
	}
	if size == 0 {
		return fmt.Errorf("%s: nothing was written; an empty object is not stored", u.name)
	}
	if u.cur != nil {
		u.send() // the last part, which may be short
	}
	// The first part goes last: it holds what was written last. When the
	// object is no bigger than it, it is the only part, and as the last
	// part it may be short.
	p, err := u.putPart(1, u.head[:min(size, fps)])
	u.record(p, err)
	u.wg.Wait()
	if err := u.failed(); err != nil {
		return err
	}
	u.resMu.Lock()
	parts := slices.Clone(u.parts)
	u.resMu.Unlock()
	slices.SortFunc(parts, func(a, b minio.CompletePart) int { return a.PartNumber - b.PartNumber })
	if len(parts) != u.partNo-1 {
		return fmt.Errorf("%s: %d parts uploaded, want %d", u.name, len(parts), u.partNo-1)
	}
	if _, err := u.core.CompleteMultipartUpload(u.ctx, u.loc.Bucket, u.loc.Key, u.uploadID, parts, minio.PutObjectOptions{}); err != nil {
		return fmt.Errorf("%s: completing the upload of %d parts: %w", u.name, len(parts), wrapStore(err))
	}
	if err := u.core.RemoveObject(u.ctx, u.loc.Bucket, u.loc.UsedKey(), minio.RemoveObjectOptions{}); err != nil && errCode(err) != "NoSuchKey" {
		u.logf("%s: the image is stored, but the stale used marker %s stays: %v", u.name, u.loc.UsedKey(), wrapStore(err))
	}
	return nil
}

// Abort abandons the upload and asks the store to drop its parts: the
// store keeps what it held before Create. After a Close that succeeded,
// Abort does nothing and returns nil, so it may be deferred.
func (u *Upload) Abort() error {
	if u.stored.Load() {
		return nil
	}
	// Cancel before taking the lock: a write may hold it while it waits
	// for a part buffer.
	u.cancel()
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.state != uploadOpen {
		return nil
	}
	u.state = uploadAborted
	u.wg.Wait()
	u.head, u.cur = nil, nil
	return u.abortUpload()
}

// abortUpload drops the upload's parts at the store, even when the
// caller's context is done.
func (u *Upload) abortUpload() error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(u.parent), cleanupTimeout)
	defer cancel()
	err := u.core.AbortMultipartUpload(ctx, u.loc.Bucket, u.loc.Key, u.uploadID)
	if err != nil && errCode(err) != "NoSuchUpload" {
		return fmt.Errorf("%s: aborting the upload (its parts may stay until the bucket's lifecycle rules remove them): %w", u.name, wrapStore(err))
	}
	return nil
}

func (u *Upload) logf(format string, args ...any) {
	if u.opts.Logf != nil {
		u.opts.Logf(format, args...)
	}
}

var _ interface {
	WriteAt([]byte, int64) (int, error)
	Sync() error
	Close() error
} = (*Upload)(nil)
