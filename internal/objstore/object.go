package objstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7"
)

// Defaults of OpenOptions.
const (
	DefaultWindow  = 8 << 20
	DefaultWindows = 3
	minWindow      = 64 << 10
)

// bodyAttempts is how often a ranged read is tried when its body breaks
// off (minio-go retries the request itself, not the reading of its body).
const bodyAttempts = 3

// OpenOptions configure OpenWith. The zero value takes the defaults.
type OpenOptions struct {
	// Window is the size of each ranged GET for small reads, and of the
	// cache's windows. At least 64 KiB; default DefaultWindow.
	Window int64
	// Windows is how many windows the cache keeps, the one being read
	// ahead included. At least 2; default DefaultWindows.
	Windows int
	// Attempts is how often each request is tried; default 10.
	Attempts int
}

// Object reads one object with ranged GETs. It is an io.ReaderAt whose
// methods may be called from several goroutines. Reads smaller than a
// window go through a small cache of windows; a read of window i after
// one of window i-1 or i fetches window i+1 ahead, so that reading in
// order is streamed. Every GET asks for the ETag that Open saw, so an
// object replaced while it is read fails the read rather than mixing two
// objects.
type Object struct {
	core   *minio.Core
	loc    Location
	name   string
	size   int64
	etag   string
	opts   OpenOptions
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	cache  []*window // least recently used first
	last   int64     // the window the previous small read ended in
	closed bool
}

// window is one cached range of the object; done is closed when data or
// err is set.
type window struct {
	idx  int64
	data []byte
	err  error
	done chan struct{}
}

// Open opens loc's object for reading with the default options.
func Open(ctx context.Context, loc *Location, creds *Credentials) (*Object, error) {
	return OpenWith(ctx, loc, creds, OpenOptions{})
}

// OpenWith opens loc's object for reading. ctx bounds the Object's
// reads, as ReadAt takes none. An object that does not exist is an
// error that matches ErrNotFound.
func OpenWith(ctx context.Context, loc *Location, creds *Credentials, opts OpenOptions) (*Object, error) {
	if opts.Window == 0 {
		opts.Window = DefaultWindow
	}
	if opts.Windows == 0 {
		opts.Windows = DefaultWindows
	}
	if opts.Window < minWindow || opts.Window > MaxPartSize {
		return nil, fmt.Errorf("objstore: a read window of %d bytes; want %d to %d", opts.Window, minWindow, MaxPartSize)
	}
	if opts.Windows < 2 || opts.Windows > 64 {
		return nil, fmt.Errorf("objstore: %d read windows; want 2 to 64", opts.Windows)
	}
	core, err := newCore(loc, creds, opts.Attempts)
	if err != nil {
		return nil, err
	}
	info, err := core.StatObject(ctx, loc.Bucket, loc.Key, minio.StatObjectOptions{})
	if err != nil {
		if c := errCode(err); c == "NoSuchKey" || c == "NoSuchBucket" {
			return nil, fmt.Errorf("%s: %w (%w)", loc.Object(), ErrNotFound, wrapStore(err))
		}
		return nil, fmt.Errorf("%s: %w", loc.Object(), wrapStore(err))
	}
	octx, cancel := context.WithCancel(ctx)
	return &Object{
		core:   core,
		loc:    *loc,
		name:   loc.Object(),
		size:   info.Size,
		etag:   info.ETag,
		opts:   opts,
		ctx:    octx,
		cancel: cancel,
		last:   -2,
	}, nil
}

// Size is the object's size in bytes.
func (o *Object) Size() int64 { return o.size }

// ReadAt reads len(p) bytes at off, or up to the end of the object with
// io.EOF.
func (o *Object) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: a read at negative offset %d", o.name, off)
	}
	o.mu.Lock()
	closed := o.closed
	o.mu.Unlock()
	if closed {
		return 0, fmt.Errorf("%s: read after Close", o.name)
	}
	if off >= o.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := p
	if rest := o.size - off; int64(len(p)) > rest {
		want = p[:rest]
	}
	var n int
	var err error
	if int64(len(want)) >= o.opts.Window {
		// Large reads go straight into p.
		err = o.fetch(want, off)
		if err == nil {
			n = len(want)
		}
	} else {
		n, err = o.readCached(want, off)
	}
	if err != nil {
		return n, err
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readCached reads p at off through the windows.
func (o *Object) readCached(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		idx := pos / o.opts.Window
		w := o.window(idx)
		select {
		case <-w.done:
		case <-o.ctx.Done():
			return n, fmt.Errorf("%s: %w", o.name, o.ctx.Err())
		}
		if w.err != nil {
			return n, w.err
		}
		n += copy(p[n:], w.data[pos-idx*o.opts.Window:])
	}
	return n, nil
}

// window returns window idx from the cache or starts fetching it, and
// fetches the next one ahead when the reads go in order.
func (o *Object) window(idx int64) *window {
	o.mu.Lock()
	defer o.mu.Unlock()
	w := o.lookup(idx)
	if idx == o.last || idx == o.last+1 {
		if next := idx + 1; next*o.opts.Window < o.size && o.find(next) < 0 {
			o.lookup(next)
			// Keep idx the most recently used.
			o.lookup(idx)
		}
	}
	o.last = idx
	return w
}

// lookup finds or starts window idx and makes it the most recently used.
// o.mu is held.
func (o *Object) lookup(idx int64) *window {
	if i := o.find(idx); i >= 0 {
		w := o.cache[i]
		o.cache = append(append(o.cache[:i:i], o.cache[i+1:]...), w)
		return w
	}
	w := &window{idx: idx, done: make(chan struct{})}
	if len(o.cache) >= o.opts.Windows {
		// Dropping a window that is still being fetched is fine: its
		// readers hold it, and the fetch ends on its own.
		o.cache = append(o.cache[:0:0], o.cache[1:]...)
	}
	o.cache = append(o.cache, w)
	go o.fill(w)
	return w
}

func (o *Object) find(idx int64) int {
	for i, w := range o.cache {
		if w.idx == idx {
			return i
		}
	}
	return -1
}

// fill fetches a window; a failed one leaves the cache, to be tried again
// by the next read.
func (o *Object) fill(w *window) {
	start := w.idx * o.opts.Window
	buf := make([]byte, min(o.opts.Window, o.size-start))
	err := o.fetch(buf, start)
	if err != nil {
		w.err = err
		o.mu.Lock()
		if i := o.find(w.idx); i >= 0 && o.cache[i] == w {
			o.cache = append(o.cache[:i:i], o.cache[i+1:]...)
		}
		o.mu.Unlock()
	} else {
		w.data = buf
	}
	close(w.done)
}

// fetch reads exactly len(p) bytes at off with one ranged GET.
func (o *Object) fetch(p []byte, off int64) error {
	var err error
	for range bodyAttempts {
		err = o.fetchOnce(p, off)
		if err == nil || o.ctx.Err() != nil || !errors.Is(err, errBody) {
			break
		}
	}
	return err
}

// errBody marks a body that broke off, which is worth another try.
var errBody = errors.New("the response body broke off")

func (o *Object) fetchOnce(p []byte, off int64) error {
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, off+int64(len(p))-1); err != nil {
		return fmt.Errorf("%s: %w", o.name, err)
	}
	if o.etag != "" {
		if err := opts.SetMatchETag(o.etag); err != nil {
			return fmt.Errorf("%s: %w", o.name, err)
		}
	}
	body, _, h, err := o.core.GetObject(o.ctx, o.loc.Bucket, o.loc.Key, opts)
	if err != nil {
		if errCode(err) == "PreconditionFailed" {
			return fmt.Errorf("%s: the object changed while it was read: %w", o.name, wrapStore(err))
		}
		return fmt.Errorf("%s: reading %d bytes at offset %d: %w", o.name, len(p), off, wrapStore(err))
	}
	defer body.Close()
	// Asked with If-Match, but a store may ignore that.
	if got := strings.Trim(h.Get("ETag"), `"`); o.etag != "" && got != "" && got != o.etag {
		return fmt.Errorf("%s: the object changed while it was read (ETag %s, was %s)", o.name, quoteShort(got), quoteShort(o.etag))
	}
	if err := checkRange(h.Get("Content-Range"), off, int64(len(p)), o.size); err != nil {
		return fmt.Errorf("%s: reading %d bytes at offset %d: %w", o.name, len(p), off, err)
	}
	if n, err := io.ReadFull(body, p); err != nil {
		return fmt.Errorf("%s: reading %d bytes at offset %d: got %d: %w: %w", o.name, len(p), off, n, errBody, err)
	}
	return nil
}

// Close ends the reads in flight and drops the cache.
func (o *Object) Close() error {
	o.cancel()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.closed = true
	o.cache = nil
	return nil
}

// checkRange checks that the store answered with the range asked for, not
// with another range or the whole object.
func checkRange(cr string, off, n, size int64) error {
	if cr == "" {
		if off == 0 && n == size {
			return nil
		}
		return errors.New("the store ignored the range asked for")
	}
	var start, end, total int64
	if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &start, &end, &total); err != nil {
		return fmt.Errorf("the store answered with a malformed Content-Range %s", quoteShort(cr))
	}
	if start != off || end != off+n-1 || total != size {
		return fmt.Errorf("the store answered with bytes %d-%d/%d, not %d-%d/%d", start, end, total, off, off+n-1, size)
	}
	return nil
}
