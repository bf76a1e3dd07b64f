package objstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/minio/minio-go/v7"

	"github.com/khib/khib/internal/image"
)

// imageLike writes data the way the image writer does: a superblock at 0,
// the data area in order from 4096 in uneven writes, the index and
// metadata after it, a sync, the superblock again, a sync. It returns the
// bytes the object must hold.
func imageLike(t *testing.T, w interface {
	WriteAt([]byte, int64) (int, error)
	Sync() error
}, dataLen int, seed uint64) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	fill := func(b []byte) {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
	}
	const page = 4096
	tail := 3*page + 123 // index and metadata
	want := make([]byte, page+dataLen+tail)
	fill(want)
	write := func(b []byte, off int) {
		t.Helper()
		if n, err := w.WriteAt(b, int64(off)); err != nil || n != len(b) {
			t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", len(b), off, n, err)
		}
	}
	// The superblock in state Writing first: different bytes from the
	// final one, which must win.
	first := bytes.Repeat([]byte{0xee}, page)
	write(first, 0)
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	for off := page; off < page+dataLen; {
		n := min(1+rng.IntN(3<<20), page+dataLen-off)
		write(want[off:off+n], off)
		off += n
	}
	write(want[page+dataLen:page+dataLen+2*page], page+dataLen)
	write(want[page+dataLen+2*page:], page+dataLen+2*page)
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	write(want[:page], 0)
	if err := w.Sync(); err != nil {
		t.Fatal(err)
	}
	return want
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		dataLen int
	}{
		{"defaults", Options{}, 40 << 20},
		{"small parts, one at a time", Options{FirstPartSize: MinPartSize, PartSize: MinPartSize, Concurrency: 1}, 40<<20 + 5},
		{"small parts, four at a time", Options{FirstPartSize: MinPartSize, PartSize: MinPartSize, Concurrency: 4}, 23 << 20},
		{"data ends on a part boundary", Options{FirstPartSize: 8 << 20, PartSize: 8 << 20}, 32<<20 - 4096 - (3*4096 + 123)},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestStore(t, nil)
			ctx := testCtx(t)
			up, err := Create(ctx, s.loc, s.creds, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer up.Abort()
			want := imageLike(t, up, tt.dataLen, uint64(i))
			if s.exists(s.loc.Key) {
				t.Fatal("the object exists before Close")
			}
			if err := up.Close(); err != nil {
				t.Fatal(err)
			}
			if err := up.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
			if err := up.Abort(); err != nil {
				t.Fatalf("Abort after Close: %v", err)
			}
			if n := s.uploads(s.loc.Key); n != 0 {
				t.Errorf("%d unfinished uploads after Close", n)
			}

			obj, err := Open(ctx, s.loc, s.creds)
			if err != nil {
				t.Fatal(err)
			}
			defer obj.Close()
			if obj.Size() != int64(len(want)) {
				t.Fatalf("Size() = %d, want %d", obj.Size(), len(want))
			}
			// In order, in reads of the restore's size.
			got := make([]byte, len(want))
			for off := 0; off < len(got); off += 256 << 10 {
				end := min(off+256<<10, len(got))
				if n, err := obj.ReadAt(got[off:end], int64(off)); err != nil || n != end-off {
					t.Fatalf("ReadAt(%d at %d) = %d, %v", end-off, off, n, err)
				}
			}
			if i := firstDiff(got, want); i >= 0 {
				t.Fatalf("sequential reads differ first at byte %d", i)
			}
			// All at once, past the end.
			all := make([]byte, len(want)+10)
			n, err := obj.ReadAt(all, 0)
			if n != len(want) || err != io.EOF {
				t.Fatalf("ReadAt(all) = %d, %v; want %d, EOF", n, err, len(want))
			}
			if i := firstDiff(all[:n], want); i >= 0 {
				t.Fatalf("one large read differs first at byte %d", i)
			}
			// At random.
			rng := rand.New(rand.NewPCG(7, 7))
			for range 50 {
				off := rng.IntN(len(want))
				buf := make([]byte, min(1+rng.IntN(100<<10), len(want)-off))
				if _, err := obj.ReadAt(buf, int64(off)); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf, want[off:off+len(buf)]) {
					t.Fatalf("a random read at %d differs", off)
				}
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// The real image writer and checker, through the store.
func TestImageWriterRoundTrip(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := testCtx(t)
	up, err := Create(ctx, s.loc, s.creds, Options{FirstPartSize: MinPartSize, PartSize: MinPartSize})
	if err != nil {
		t.Fatal(err)
	}
	defer up.Abort()
	w, err := image.NewWriter(up, up.Capacity(), image.WriterOptions{
		Codec: "none",
		Sync:  up.Sync,
		Meta: image.Meta{
			RAM:      []image.Range{{Start: 0, End: 64 << 20}},
			Region:   image.Range{Start: 64 << 20, End: 80 << 20},
			JumpBack: 0x1000,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	pages := make([]byte, 24<<20)
	for i := range pages {
		pages[i] = byte(rng.Uint32())
	}
	clear(pages[4<<20 : 5<<20]) // some zero pages
	if err := w.AddPages(0x100, pages); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	uuid := w.UUID().String()
	if err := up.Close(); err != nil {
		t.Fatal(err)
	}

	obj, err := Open(ctx, s.loc, s.creds)
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	rd, err := image.Check(obj, obj.Size(), image.CheckOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if got := rd.Meta().UUID.String(); got != uuid {
		t.Fatalf("UUID %s, want %s", got, uuid)
	}
	restored := make([]byte, len(pages))
	err = rd.Restore(func(pfn uint64, p []byte, zero bool) error {
		off := int(pfn-0x100) * image.PageSize
		if !zero {
			copy(restored[off:], p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(restored, pages); i >= 0 {
		t.Fatalf("restored pages differ first at byte %d", i)
	}
}

func TestWriteRefusals(t *testing.T) {
	const fps = MinPartSize
	tests := []struct {
		name    string
		before  [][2]int64 // writes that succeed: offset, length
		off     int64
		n       int64
		wantErr string
	}{
		{"gap after the first part", nil, fps + 4096, 10, "next write must start at 5242880"},
		{"gap across the boundary", [][2]int64{{0, fps + 100}}, fps + 200, 10, "must start at 5242980"},
		{"rewrite after the first part", [][2]int64{{0, fps + 100}}, fps + 50, 10, "must start at 5242980"},
		{"negative offset", nil, -1, 10, "negative offset"},
		{"past the capacity", nil, 64 << 20, 10, "past the capacity"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestStore(t, nil)
			up, err := Create(testCtx(t), s.loc, s.creds, Options{FirstPartSize: fps, PartSize: MinPartSize, Capacity: 64 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer up.Abort()
			for _, w := range tt.before {
				if _, err := up.WriteAt(make([]byte, w[1]), w[0]); err != nil {
					t.Fatal(err)
				}
			}
			n, err := up.WriteAt(make([]byte, tt.n), tt.off)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || n != 0 {
				t.Fatalf("WriteAt = %d, %v; want 0 and an error with %q", n, err, tt.wantErr)
			}
			oneLineErr(t, err)
			if !strings.Contains(err.Error(), s.loc.Object()) {
				t.Errorf("error %q does not name the object", err)
			}
			// Anywhere in the first part is still fine.
			if _, err := up.WriteAt([]byte("x"), 17); err != nil {
				t.Fatalf("a write into the first part after a refusal: %v", err)
			}
		})
	}
}

func TestSmallObjects(t *testing.T) {
	const fps = MinPartSize
	for _, size := range []int{1, 4096, 100 << 10, fps - 1, fps, fps + 1, fps + MinPartSize + 1} {
		s := newTestStore(t, nil)
		up, err := Create(testCtx(t), s.loc, s.creds, Options{FirstPartSize: fps, PartSize: MinPartSize})
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, size)
		for i := range want {
			want[i] = byte(i*7 + size)
		}
		// A hole at the start, filled last, as the superblock is.
		head := min(size, 4096)
		if _, err := up.WriteAt(want[head:], int64(head)); err != nil {
			t.Fatal(err)
		}
		if _, err := up.WriteAt(want[:head], 0); err != nil {
			t.Fatal(err)
		}
		if err := up.Close(); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if got := s.readAll(s.loc); !bytes.Equal(got, want) {
			t.Fatalf("size %d: read back %d bytes, differing at %d", size, len(got), firstDiff(got, want))
		}
	}
}

func TestEmptyObjectRefused(t *testing.T) {
	s := newTestStore(t, nil)
	up, err := Create(testCtx(t), s.loc, s.creds, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Close(); err == nil || !strings.Contains(err.Error(), "nothing was written") {
		t.Fatalf("Close of an empty upload: %v", err)
	}
	if s.exists(s.loc.Key) || s.uploads(s.loc.Key) != 0 {
		t.Fatal("an empty upload left something behind")
	}
}

func TestAbort(t *testing.T) {
	s := newTestStore(t, nil)
	old := []byte("the previous image")
	s.put(s.loc.Key, old)

	up, err := Create(testCtx(t), s.loc, s.creds, Options{FirstPartSize: MinPartSize, PartSize: MinPartSize})
	if err != nil {
		t.Fatal(err)
	}
	// Enough for some parts to be uploaded before the abort.
	if _, err := up.WriteAt(make([]byte, 4*MinPartSize+1), 0); err != nil {
		t.Fatal(err)
	}
	if err := up.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := up.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := up.Abort(); err != nil {
		t.Fatalf("second Abort: %v", err)
	}
	if _, err := up.WriteAt([]byte("x"), 0); err == nil {
		t.Error("WriteAt after Abort succeeded")
	}
	if err := up.Close(); err == nil {
		t.Error("Close after Abort succeeded")
	}
	if n := s.uploads(s.loc.Key); n != 0 {
		t.Errorf("%d unfinished uploads after Abort", n)
	}
	if got := s.readAll(s.loc); !bytes.Equal(got, old) {
		t.Fatalf("after Abort the object holds %q, want the previous %q", got, old)
	}

	// An aborted upload of a new key leaves no object.
	loc := s.location("images/never.img")
	up, err = Create(testCtx(t), loc, s.creds, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.WriteAt(make([]byte, 100), 0); err != nil {
		t.Fatal(err)
	}
	if err := up.Abort(); err != nil {
		t.Fatal(err)
	}
	if s.exists(loc.Key) {
		t.Fatal("an aborted upload left an object")
	}
}

// A context that ends mid-upload fails it and leaves nothing.
func TestCancel(t *testing.T) {
	s := newTestStore(t, nil)
	ctx, cancel := context.WithCancel(testCtx(t))
	up, err := Create(ctx, s.loc, s.creds, Options{FirstPartSize: MinPartSize, PartSize: MinPartSize})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.WriteAt(make([]byte, 2*MinPartSize+1), 0); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := up.WriteAt(make([]byte, 1), 2*MinPartSize+1); !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteAt after cancel: %v", err)
	}
	if err := up.Close(); err == nil {
		t.Fatal("Close after cancel succeeded")
	}
	if s.exists(s.loc.Key) || s.uploads(s.loc.Key) != 0 {
		t.Fatal("a cancelled upload left something behind")
	}
}

// failPart makes the store answer 500 to every upload of one part number
// while armed.
func failPart(part string, armed *atomic.Bool, hits *atomic.Int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if armed.Load() && r.Method == http.MethodPut && r.URL.Query().Get("partNumber") == part {
				hits.Add(1)
				w.Header().Set("Content-Type", "application/xml")
				w.WriteHeader(http.StatusInternalServerError)
				io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>InternalError</Code><Message>injected failure
of a part</Message></Error>`)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

func TestServerFailsMidway(t *testing.T) {
	tests := []struct {
		part string
		// where the failure shows: a write (while streaming) or Close
		// (part 1 and the last part are sent there)
		inClose bool
	}{
		{"3", false},
		{"1", true},
	}
	for _, tt := range tests {
		t.Run("part "+tt.part, func(t *testing.T) {
			var hits atomic.Int64
			var armed atomic.Bool
			s := newTestStore(t, failPart(tt.part, &armed, &hits))
			old := []byte("the previous image")
			s.put(s.loc.Key, old)
			armed.Store(true)

			up, err := Create(testCtx(t), s.loc, s.creds, Options{FirstPartSize: MinPartSize, PartSize: MinPartSize, Attempts: 2})
			if err != nil {
				t.Fatal(err)
			}
			var werr error
			data := make([]byte, 1<<20)
			for off := int64(0); off < 8*MinPartSize && werr == nil; off += int64(len(data)) {
				_, werr = up.WriteAt(data, off)
			}
			if werr == nil {
				werr = up.Sync()
			}
			cerr := up.Close()
			if cerr == nil {
				t.Fatal("Close succeeded though the store failed a part")
			}
			if !tt.inClose && werr == nil {
				t.Error("the writes went on after a part failed")
			}
			for _, err := range []error{werr, cerr} {
				if err == nil {
					continue
				}
				oneLineErr(t, err)
				for _, want := range []string{"part " + tt.part, "InternalError", "500", "injected failure of a part", "s3://khib/images/host-a.img"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not say %q", err, want)
					}
				}
			}
			if hits.Load() != 2 {
				t.Errorf("part %s was tried %d times, want 2 (Attempts)", tt.part, hits.Load())
			}
			if got := s.readAll(s.loc); !bytes.Equal(got, old) {
				t.Fatalf("after a failed upload the object holds %d bytes, want the previous image", len(got))
			}
			if n := s.uploads(s.loc.Key); n != 0 {
				t.Errorf("%d unfinished uploads after the failure", n)
			}
		})
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		opts    Options
		wantCap int64
		wantErr string
	}{
		{Options{}, DefaultFirstPartSize + (MaxParts-1)*DefaultPartSize, ""},
		{Options{PartSize: 128 << 20}, DefaultCapacity, ""},
		{Options{Capacity: 1 << 30}, 1 << 30, ""},
		{Options{Capacity: 1 << 40}, 0, "raise PartSize"},
		{Options{FirstPartSize: 1 << 20}, 0, "first part"},
		{Options{PartSize: 6 << 30}, 0, "parts of"},
		{Options{Concurrency: -1}, 0, "concurrency"},
		{Options{Capacity: -1}, 0, "negative capacity"},
	}
	for _, tt := range tests {
		_, c, err := tt.opts.normalized()
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%+v: error %v, want %q", tt.opts, err, tt.wantErr)
			}
			continue
		}
		if err != nil || c != tt.wantCap {
			t.Errorf("%+v: capacity %d, %v; want %d", tt.opts, c, err, tt.wantCap)
		}
	}
}

func TestCreateRefusals(t *testing.T) {
	s := newTestStore(t, nil)
	loc := *s.loc
	loc.Bucket = "nobucket"
	_, err := Create(testCtx(t), &loc, s.creds, Options{})
	if err == nil || !strings.Contains(err.Error(), "NoSuchBucket") || !strings.Contains(err.Error(), "starting the upload") {
		t.Fatalf("Create in a missing bucket: %v", err)
	}
	oneLineErr(t, err)
	if _, err := Create(testCtx(t), s.loc, nil, Options{}); err == nil || !strings.Contains(err.Error(), "no credentials") {
		t.Fatalf("Create without credentials: %v", err)
	}
	bad := *s.creds
	bad.SecretKey = "wrong"
	if _, err := Create(testCtx(t), s.loc, &bad, Options{}); err == nil || !strings.Contains(err.Error(), "SignatureDoesNotMatch") {
		t.Fatalf("Create with a wrong secret: %v", err)
	}
}

func TestStoreError(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{minio.ErrorResponse{Code: "NoSuchBucket", Message: "The specified bucket\ndoes not exist", StatusCode: 404}, "the store said NoSuchBucket (HTTP 404 Not Found): The specified bucket does not exist"},
		{minio.ErrorResponse{Code: "503 Service Unavailable", Message: "503 Service Unavailable", StatusCode: 503}, "the store said HTTP 503 Service Unavailable"},
		{minio.ErrorResponse{Code: "502 Bad Gateway", Message: "<html>bad\ngateway</html>", StatusCode: 502}, "the store said HTTP 502 Bad Gateway: <html>bad gateway</html>"},
		{minio.ErrorResponse{Code: "InvalidArgument", Message: "Bucket name cannot be empty."}, "the store said InvalidArgument: Bucket name cannot be empty."},
		{errors.New("dial tcp: connection\nrefused"), "dial tcp: connection refused"},
	}
	for _, tt := range tests {
		err := wrapStore(tt.err)
		if err.Error() != tt.want {
			t.Errorf("wrapStore(%v) = %q, want %q", tt.err, err, tt.want)
		}
		if !errors.Is(err, tt.err) && errors.Unwrap(err) != tt.err {
			t.Errorf("wrapStore(%v) does not unwrap to it", tt.err)
		}
	}
	if wrapStore(nil) != nil {
		t.Error("wrapStore(nil) is not nil")
	}
}
