package image

import (
	"bytes"
	"errors"
	"io"
	"math/rand"
	"testing"
)

// failAt is a ReaderAt over data that fails every read reaching past bad.
type failAt struct {
	data []byte
	bad  int64
}

var errDisk = errors.New("disk error")

func (f failAt) ReadAt(p []byte, off int64) (int, error) {
	if f.bad >= 0 && off+int64(len(p)) > f.bad {
		return 0, errDisk
	}
	return bytes.NewReader(f.data).ReadAt(p, off)
}

func TestReadAhead(t *testing.T) {
	data := make([]byte, 5*raBlockSize+12345)
	rand.New(rand.NewSource(1)).Read(data)
	tests := []struct {
		name       string
		start, end int64
		bad        int64 // -1: none
		wantErrAt  int64 // reads ending past this fail; -1: none
	}{
		{"whole span", PageSize, int64(len(data)), -1, -1},
		{"span ends inside a block", PageSize, int64(len(data)) - 999, -1, -1},
		{"a failing block", PageSize, int64(len(data)), 3*raBlockSize + 77, PageSize + 2*raBlockSize},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ra := newReadAhead(failAt{data, tc.bad}, tc.start, tc.end)
			defer ra.stop()
			rng := rand.New(rand.NewSource(2))
			for off := tc.start; off < tc.end; {
				n := min(int64(1+rng.Intn(300<<10)), tc.end-off)
				p := make([]byte, n)
				got, err := ra.ReadAt(p, off)
				if tc.wantErrAt >= 0 && off+n > tc.wantErrAt {
					if !errors.Is(err, errDisk) {
						t.Fatalf("read [%d,+%d): err %v, want the disk's", off, n, err)
					}
					return
				}
				if err != nil || int64(got) != n || !bytes.Equal(p, data[off:off+n]) {
					t.Fatalf("read [%d,+%d): %d bytes, err %v, equal %v", off, n, got, err, bytes.Equal(p[:got], data[off:off+int64(got)]))
				}
				off += n
				ra.release(off)
			}
			if tc.wantErrAt >= 0 {
				t.Fatal("no read failed")
			}
			// Released and outside the span: straight from the source.
			p := make([]byte, 100)
			if _, err := ra.ReadAt(p, tc.start); err != nil || !bytes.Equal(p, data[tc.start:tc.start+100]) {
				t.Fatalf("released block: err %v", err)
			}
			if _, err := ra.ReadAt(p, 0); err != nil || !bytes.Equal(p, data[:100]) {
				t.Fatalf("before the span: err %v", err)
			}
		})
	}
}

// A read past the source's end inside the span reads short, not forever.
func TestReadAheadShortSource(t *testing.T) {
	data := make([]byte, raBlockSize+PageSize)
	ra := newReadAhead(bytes.NewReader(data), PageSize, int64(len(data))+3*raBlockSize)
	defer ra.stop()
	p := make([]byte, 2*PageSize)
	n, err := ra.ReadAt(p, int64(len(data))-PageSize)
	if n != PageSize || err != io.EOF {
		t.Fatalf("got %d, %v; want %d, EOF", n, err, PageSize)
	}
}

// stop releases a reader that waits for a block that will not come.
func TestReadAheadStop(t *testing.T) {
	data := make([]byte, (raDepth+4)*raBlockSize)
	ra := newReadAhead(bytes.NewReader(data), 0, int64(len(data)))
	errc := make(chan error)
	go func() {
		_, err := ra.ReadAt(make([]byte, 10), int64(raDepth+2)*raBlockSize) // beyond the ring: waits
		errc <- err
	}()
	ra.stop()
	if err := <-errc; !errors.Is(err, errReadAheadStopped) {
		t.Fatalf("err %v, want errReadAheadStopped", err)
	}
}
